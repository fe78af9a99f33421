#!/usr/bin/env node
// Pays an x402-protected URL with the official TypeScript client (@x402/fetch + @x402/evm).
//
//   node pay.mjs <url> <payer-private-key> <token-address> [--network eip155:31337] [--max 1000000]
//
// Prints one JSON object on stdout: { status, body, paymentResponse, paymentRequired }.
// `paymentResponse` is the decoded PAYMENT-RESPONSE header (or null). Exits non-zero only when
// the client itself fails (a non-2xx final status is reported, not an exit code).
import { wrapFetchWithPaymentFromConfig, decodePaymentResponseHeader } from "@x402/fetch";
import { ExactEvmScheme } from "@x402/evm/exact/client";
import { privateKeyToAccount } from "viem/accounts";

function die(msg) {
  process.stderr.write(`pay.mjs: ${msg}\n`);
  process.exit(1);
}
function arg(name, fallback) {
  const i = process.argv.indexOf(name);
  return i > 0 && process.argv[i + 1] ? process.argv[i + 1] : fallback;
}

const [url, key, token] = process.argv.slice(2, 5);
if (!url || !key || !token) die("usage: node pay.mjs <url> <payer-key> <token> [--network N] [--max N]");
const network = arg("--network", "eip155:31337");
const max = arg("--max", "1000000");

const paidFetch = wrapFetchWithPaymentFromConfig(fetch, {
  schemes: [{ network: "eip155:*", client: new ExactEvmScheme(privateKeyToAccount(key)) }],
  // Recent clients refuse unknown assets unless allowed explicitly.
  spendControls: { allowedAssets: [{ network, asset: token, maxAmountPerPayment: max }] },
});

const timeout = AbortSignal.timeout(Number(arg("--timeout-ms", "60000")));
let res;
try {
  res = await paidFetch(url, { signal: timeout });
} catch (e) {
  die(`request failed: ${e?.stack ?? e}`);
}
const text = await res.text();
let body;
try {
  body = JSON.parse(text);
} catch {
  body = text;
}
const header = res.headers.get("PAYMENT-RESPONSE") ?? res.headers.get("X-PAYMENT-RESPONSE");
let paymentResponse = null;
if (header) {
  try {
    paymentResponse = decodePaymentResponseHeader(header);
  } catch (e) {
    paymentResponse = { undecodable: header, error: String(e) };
  }
}
process.stdout.write(
  JSON.stringify({
    status: res.status,
    body,
    paymentResponse,
    paymentRequired: res.headers.get("PAYMENT-REQUIRED"),
  }) + "\n",
);
