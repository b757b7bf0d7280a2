#!/usr/bin/env bash
# Renders docs/console.png: a fresh server, the README tour's steps, then
# headless Chromium's screenshot of /ui/. Uses the release build.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin cairn -q
bin=$PWD/target/release/cairn
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
RUST_LOG=warn "$bin" serve --data-dir "$dir/data" --listen "127.0.0.1:$port" --nbd-listen 127.0.0.1:0 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
export CAIRN_SERVER="http://127.0.0.1:$port"
cd "$dir"
head -c 64M /dev/urandom > disk.raw
head -c 1M /dev/urandom > patch.raw
"$bin" import dev disk.raw >/dev/null
"$bin" snapshot create dev --tag golden --label kernel=6.1 >/dev/null
"$bin" fork dev@golden ci-1 --require-label kernel=6.1 >/dev/null
"$bin" clone dev --name dev-clone >/dev/null
"$bin" import dev patch.raw --offset 1048576 >/dev/null
"$bin" snapshot create dev --tag after >/dev/null
"$bin" rollback dev@golden >/dev/null
"$bin" fork dev@after ci-2 >/dev/null
"$bin" gc --dry-run --grace 0s >/dev/null
cd - >/dev/null
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$dir/chromium" --virtual-time-budget=10000 --hide-scrollbars \
  --window-size=1400,1250 --screenshot="$PWD/docs/console.png" "$CAIRN_SERVER/ui/" 2>/dev/null
echo "wrote docs/console.png"
