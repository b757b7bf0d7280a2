#!/usr/bin/env bash
# Runs the whole test suite: format and lint checks (clippy --all-targets
# also type-checks the benches), then every unit, property, integration,
# crash and NBD-client test of the workspace, then bounded API fuzzing
# and bounded NBD parser/session fuzzing.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi
echo "== schemathesis against a live server (bounded)"
bash scripts/schemathesis.sh
echo "== cargo fuzz, NBD parsers and sessions (bounded)"
bash scripts/fuzz.sh
