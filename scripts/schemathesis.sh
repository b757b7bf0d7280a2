#!/usr/bin/env bash
# Property-based API testing: schemathesis generates requests from
# /api/v1/openapi.json against a live server and fails on any 5xx or
# schema violation. Bounded: MAX_EXAMPLES per operation (default 25).
# The two raw-data downloads are left out: a generated volume may be
# terabytes, which the server streams but the checker would hold in memory;
# tests/api_workflow.rs covers them. CAIRN_BIN picks the server binary
# (default: the workspace's debug build, built here).
set -euo pipefail
cd "$(dirname "$0")/.."
MAX_EXAMPLES="${MAX_EXAMPLES:-25}"
command -v schemathesis >/dev/null 2>&1 || python3 -m pip install -q schemathesis
if [ -z "${CAIRN_BIN:-}" ]; then
  cargo build --bin cairn -q
  CAIRN_BIN=./target/debug/cairn
fi
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
RUST_LOG=warn "$CAIRN_BIN" serve --data-dir "$dir/data" --listen "127.0.0.1:$port" --nbd-listen 127.0.0.1:0 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
# Seed a volume and a snapshot so that path parameters can hit real objects.
"$CAIRN_BIN" --server "http://127.0.0.1:$port" volume create seed --size 1M >/dev/null
"$CAIRN_BIN" --server "http://127.0.0.1:$port" snapshot create seed --tag base >/dev/null
schemathesis run "http://127.0.0.1:$port/api/v1/openapi.json" \
  --url "http://127.0.0.1:$port" \
  --checks not_a_server_error \
  --max-examples "$MAX_EXAMPLES" \
  --request-timeout 30 \
  --suppress-health-check all \
  --exclude-operation-id get_data --exclude-operation-id get_snapshot_data \
  --no-color
echo "schemathesis: no 5xx"
