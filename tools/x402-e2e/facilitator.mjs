#!/usr/bin/env node
// Runs the official TypeScript x402 facilitator (@x402/core/facilitator + @x402/evm exact) as an
// HTTP server on loopback, settling with the given key on the given local chain. An independent
// verifier/settler to test tollgate's facilitator client against.
//
//   node facilitator.mjs <rpc-url> <settler-key> [--port 0]
//
// Prints one JSON line {"url": "http://127.0.0.1:PORT"} once listening; serves
// POST /verify, POST /settle, GET /supported until killed.
import { createServer } from "node:http";
import { x402Facilitator } from "@x402/core/facilitator";
import { registerExactEvmScheme } from "@x402/evm/exact/facilitator";
import { toFacilitatorEvmSigner } from "@x402/evm";
import { createPublicClient, createWalletClient, defineChain, http, publicActions } from "viem";
import { privateKeyToAccount } from "viem/accounts";

function die(msg) {
  process.stderr.write(`facilitator.mjs: ${msg}\n`);
  process.exit(1);
}
const [rpcUrl, key] = process.argv.slice(2, 4);
if (!rpcUrl || !key) die("usage: node facilitator.mjs <rpc-url> <settler-key> [--port N]");
const portArg = process.argv.indexOf("--port");
const port = portArg > 0 ? Number(process.argv[portArg + 1]) : 0;

const chainId = await createPublicClient({ transport: http(rpcUrl) })
  .getChainId()
  .catch((e) => die(`cannot reach ${rpcUrl}: ${e.message}`));
const chain = defineChain({
  id: chainId,
  name: "local",
  nativeCurrency: { name: "Ether", symbol: "ETH", decimals: 18 },
  rpcUrls: { default: { http: [rpcUrl] } },
});
const account = privateKeyToAccount(key);
const client = createWalletClient({ account, chain, transport: http(rpcUrl) }).extend(publicActions);
const signer = toFacilitatorEvmSigner(
  {
    address: account.address,
    readContract: (a) => client.readContract({ ...a, args: a.args ?? [] }),
    verifyTypedData: (a) => client.verifyTypedData(a),
    writeContract: (a) => client.writeContract({ ...a, args: a.args ?? [] }),
    sendTransaction: (a) => client.sendTransaction(a),
    waitForTransactionReceipt: (a) => client.waitForTransactionReceipt(a),
    getCode: (a) => client.getCode(a),
  },
  { confirmationTimeoutMs: 30_000 },
);
const facilitator = new x402Facilitator();
registerExactEvmScheme(facilitator, { signer, networks: `eip155:${chainId}` });

const json = (res, status, body) => {
  const text = JSON.stringify(body, (_, v) => (typeof v === "bigint" ? v.toString() : v));
  res.writeHead(status, { "content-type": "application/json" }).end(text);
};
const server = createServer(async (req, res) => {
  try {
    const path = new URL(req.url, "http://x").pathname;
    if (req.method === "GET" && path.endsWith("/supported")) return json(res, 200, facilitator.getSupported());
    if (req.method !== "POST") return json(res, 404, { error: "not found" });
    let raw = "";
    for await (const chunk of req) raw += chunk;
    const body = JSON.parse(raw);
    if (path.endsWith("/verify")) {
      return json(res, 200, await facilitator.verify(body.paymentPayload, body.paymentRequirements));
    }
    if (path.endsWith("/settle")) {
      return json(res, 200, await facilitator.settle(body.paymentPayload, body.paymentRequirements));
    }
    return json(res, 404, { error: "not found" });
  } catch (e) {
    process.stderr.write(`facilitator.mjs: ${e?.stack ?? e}\n`);
    return json(res, 500, { error: String(e?.message ?? e) });
  }
});
server.listen(port, "127.0.0.1", () => {
  process.stdout.write(JSON.stringify({ url: `http://127.0.0.1:${server.address().port}` }) + "\n");
});
