#!/usr/bin/env bash
# Sustained mixed-write load for minutes (the test suite runs it for
# seconds): fio 4 KiB random QD32 + 1 MiB sequential QD8 with a FLUSH every
# 256 writes on two volumes, a small backlog so sealing holds writers back.
# Prints throughput per second, server RSS, and fails on any I/O error.
#   SECONDS_TO_RUN=300 benches/soak.sh
set -euo pipefail
cd "$(dirname "$0")/.."
CAIRN_SOAK_SECONDS=${SECONDS_TO_RUN:-300} cargo test --release --test sustained_load -- --nocapture
