#!/usr/bin/env bash
# Installs the local-chain e2e harness of tollgate-x402, idempotently:
#   - node_modules from package-lock.json (npm ci), redone when the lock file changes;
#   - .venv with the Python x402 client from requirements.txt, redone when it changes.
# Fails loudly (non-zero exit, message on stderr) when anything is missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

fail() { echo "x402-e2e setup: $*" >&2; exit 1; }
hash_of() { sha256sum "$1" | cut -d' ' -f1; }

command -v node >/dev/null || fail "node is not installed (need Node.js >= 20)"
command -v npm >/dev/null || fail "npm is not installed"
node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' \
  || fail "Node.js >= 20 required, found $(node --version)"
[[ -f package-lock.json ]] || fail "package-lock.json is missing"

want="$(hash_of package-lock.json)"
stamp=node_modules/.tollgate-lock-sha256
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  echo "x402-e2e setup: npm ci" >&2
  npm ci --no-audit --no-fund --loglevel=error >&2 || fail "npm ci failed"
  echo "$want" > "$stamp"
fi
[[ -x node_modules/.bin/anvil ]] || fail "anvil binary missing (node_modules/.bin/anvil)"
node_modules/.bin/anvil --version >/dev/null || fail "anvil does not run"

PY="${PYTHON:-python3}"
command -v "$PY" >/dev/null || fail "$PY is not installed"
want_py="$(hash_of requirements.txt)"
pystamp=.venv/.tollgate-requirements-sha256
if [[ ! -x .venv/bin/python || ! -f "$pystamp" || "$(cat "$pystamp")" != "$want_py" ]]; then
  echo "x402-e2e setup: python venv" >&2
  "$PY" -m venv .venv || fail "cannot create .venv (is python3-venv installed?)"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt >&2 \
    || fail "pip install -r requirements.txt failed"
  echo "$want_py" > "$pystamp"
fi
.venv/bin/python -c 'import x402, httpx, eth_account' || fail "python x402 client not importable"
echo "x402-e2e setup: ok" >&2
