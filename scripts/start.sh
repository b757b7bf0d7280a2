#!/usr/bin/env bash
# Sets up, builds and starts cairn on its embedded defaults: data in
# ./cairn-data, objects in ./cairn-data/objects, RocksDB catalog,
# REST on 127.0.0.1:7878. Extra arguments go to `cairn serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --bin cairn
exec ./target/release/cairn serve "$@"
