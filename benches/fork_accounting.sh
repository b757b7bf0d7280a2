#!/usr/bin/env bash
# Space accounting with many forks: a 1 GiB image (random data, 16 Ki
# chunks), one snapshot, FORKS forks of it (default 10 and 1000), then the
# time of `GET /api/v1/volumes` (list), `GET /api/v1/volumes/f5` (show) and
# `GET /metrics`: the first request after the forks (computes), the median
# of 20 more (nothing changed), and the first after one fork wrote and
# sealed 1 MiB (one root changed), and how long that write's import took
# (its answer carries usage). Then every fork writes 1 MiB of its own
# (a fleet that diverged: as many distinct roots as forks) and the same
# three figures are taken again.
#
#   benches/fork_accounting.sh
#   FORKS="10 100" benches/fork_accounting.sh
#   CAIRN_BIN=path benches/fork_accounting.sh   # another build (A/B against a commit)
set -euo pipefail
cd "$(dirname "$0")/.."
FORKS="${FORKS:-10 1000}"
bash scripts/setup.sh >/dev/null
if [ -z "${CAIRN_BIN:-}" ]; then cargo build --release --bin cairn -q; fi
CAIRN_BIN="${CAIRN_BIN:-./target/release/cairn}"
work=$(mktemp -d)
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
head -c 1G /dev/urandom > "$work/image"

ms() { # path -> milliseconds of one GET
  curl -s -o /dev/null -w '%{time_total}' "http://127.0.0.1:$cp$1" | python3 -c 'import sys; print(f"{float(sys.stdin.read())*1000:.1f}")'
}
median() { # path -> median ms of 20 GETs
  for _ in $(seq 20); do ms "$1"; done | sort -n | sed -n 10p
}

figures() { # title: the three requests, first / median of 20 / after one fork wrote 1 MiB
  local p after
  declare -A first med
  echo "== $1"
  printf '%-10s %10s %10s %14s\n' request first_ms median_ms after_write_ms
  for p in /api/v1/volumes /api/v1/volumes/f5 /metrics; do
    first[$p]=$(ms "$p"); med[$p]=$(median "$p")
  done
  head -c 1M /dev/urandom > "$work/mib"
  local t0 import_ms
  t0=$(date +%s.%N)
  cairn import f1 "$work/mib" --offset 0 >/dev/null 2>&1
  import_ms=$(python3 -c "print(round(($(date +%s.%N) - $t0) * 1000, 1))")
  for p in /api/v1/volumes /api/v1/volumes/f5 /metrics; do
    after=$(ms "$p")
    printf '%-10s %10s %10s %14s\n' "$(basename "$p")" "${first[$p]}" "${med[$p]}" "$after"
  done
  # The import's own answer carries the volume's usage, so it pays for the
  # accounting after the change; the requests after it find it done.
  echo "(that write: cairn import of 1 MiB into f1, CLI start included: $import_ms ms)"
}

for n in $FORKS; do
  cp=$(port)
  rm -rf "$work/data"
  RUST_LOG=warn "$CAIRN_BIN" serve --data-dir "$work/data" --listen "127.0.0.1:$cp" \
    --nbd-listen "127.0.0.1:$(port)" & pid=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$cp/healthz" >/dev/null && break; sleep 0.1; done
  cairn() { "$CAIRN_BIN" --server "http://127.0.0.1:$cp" "$@"; }
  cairn import base "$work/image" >/dev/null 2>&1
  cairn snapshot create base --tag gold >/dev/null
  for i in $(seq "$n"); do
    curl -sf -X POST -H 'Content-Type: application/json' -d "{\"name\":\"f$i\"}" \
      "http://127.0.0.1:$cp/api/v1/volumes/base/snapshots/gold/fork" >/dev/null
  done
  figures "$n forks of a 1 GiB snapshot"
  # Every fork diverges: 1 MiB of its own data at its own offset.
  t0=$(date +%s.%N)
  for i in $(seq "$n"); do
    head -c 1M /dev/urandom > "$work/mib"
    cairn import "f$i" "$work/mib" --offset $(( (i % 1024) << 20 )) >/dev/null 2>&1
  done
  echo "($n imports of 1 MiB, one per fork, each answered with its usage: $(python3 -c "print(round($(date +%s.%N) - $t0, 1))") s)"
  figures "the same $n forks after each wrote 1 MiB of its own"
  echo "server peak RSS: $(grep VmHWM /proc/$pid/status | awk '{print $2/1024 " MiB"}')"
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
done
