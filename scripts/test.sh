#!/usr/bin/env bash
# Runs the whole test suite: format and lint checks (clippy --all-targets
# also type-checks the benches), then every unit, property, integration,
# crash and NBD-client test of the workspace, then bounded API fuzzing,
# the Python SDK's and the web console's tests, and bounded NBD
# parser/session fuzzing.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

echo "== LazyFS (power-loss test)"
CAIRN_LAZYFS=$(bash tools/lazyfs-build.sh "$PWD/target/lazyfs")
export CAIRN_LAZYFS
echo "lazyfs: $CAIRN_LAZYFS"

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
echo "== end-to-end API and NBD tests again, objects in S3 (moto)"
# --workspace (not -p cairn) keeps feature unification, so nothing rebuilds.
e2e=(--test api_workflow --test api_chunks --test api_errors --test openapi --test nbd_clients --test nbd_protocol --test nbd_mount)
if cargo nextest --version >/dev/null 2>&1; then
  CAIRN_TEST_OBJECT_STORE=s3 cargo nextest run --workspace "${e2e[@]}" --no-fail-fast
else
  CAIRN_TEST_OBJECT_STORE=s3 cargo test --workspace "${e2e[@]}" --no-fail-fast
fi
# The server binary the test build made: a plain `cargo build` would
# build it again (dev-dependencies unify features differently).
export CAIRN_BIN="$PWD/target/debug/cairn"
echo "== schemathesis against a live server (bounded)"
bash scripts/schemathesis.sh
echo "== Python SDK and web console (pytest, mypy, headless Chromium)"
bash scripts/sdk.sh
echo "== cargo fuzz, NBD parsers and sessions (bounded)"
bash scripts/fuzz.sh
