#!/usr/bin/env python3
"""Pays an x402-protected URL with the official Python client (PyPI `x402[evm,httpx]`).

    .venv/bin/python pay.py <url> <payer-private-key> <token-address> [--network eip155:31337] [--max 1000000]

Prints one JSON object on stdout: {status, body, paymentResponse}. Exits non-zero only when the
client itself fails.
"""
import asyncio
import json
import sys

import eth_account
from x402 import x402Client
from x402.http.clients import x402HttpxClient
from x402.http.utils import decode_payment_response_header
from x402.mechanisms.evm.exact.register import register_exact_evm_client
from x402.mechanisms.evm.signers import EthAccountSigner


def arg(name: str, default: str) -> str:
    if name in sys.argv:
        i = sys.argv.index(name)
        if i + 1 < len(sys.argv):
            return sys.argv[i + 1]
    return default


async def main() -> int:
    if len(sys.argv) < 4:
        print("usage: pay.py <url> <payer-key> <token> [--network N] [--max N]", file=sys.stderr)
        return 2
    url, key, token = sys.argv[1:4]
    network = arg("--network", "eip155:31337")
    client = x402Client()
    register_exact_evm_client(client, EthAccountSigner(eth_account.Account.from_key(key)))
    client.set_spend_controls(
        {"allowed_assets": [{"network": network, "asset": token,
                             "max_amount_per_payment": arg("--max", "1000000")}]}
    )
    async with x402HttpxClient(client, timeout=float(arg("--timeout", "60"))) as http:
        r = await http.get(url)
        await r.aread()
    try:
        body = r.json()
    except ValueError:
        body = r.text
    header = r.headers.get("PAYMENT-RESPONSE") or r.headers.get("X-PAYMENT-RESPONSE")
    payment_response = None
    if header:
        try:
            decoded = decode_payment_response_header(header)
            payment_response = (
                decoded.model_dump(by_alias=True, exclude_none=True)
                if hasattr(decoded, "model_dump") else decoded
            )
        except Exception as e:  # report, do not hide
            payment_response = {"undecodable": header, "error": str(e)}
    print(json.dumps({"status": r.status_code, "body": body, "paymentResponse": payment_response}))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
