#!/usr/bin/env bash
# Cold fork over S3: server A (moto S3 on loopback) holds a volume of SIZE
# random bytes and snapshots it; server B, with an empty data dir over the
# same bucket, imports the snapshot reference, forks it, and reads it:
#
#   - time to first byte: a 4 KiB read of the cold fork (qemu-io, process
#     start included; the same read on the warm fork is printed beside it);
#   - sequential read while hydrating, one request at a time (read-ahead):
#     nbdcopy --connections=1 --requests=1 of a cold fork;
#   - parallel read while hydrating: nbdcopy defaults (4 connections x 64
#     requests) of another cold fork;
#   - the same parallel read again, now from B's local disk cache (warm);
#   - `cairn volume warm` of a third cold fork (background hydration).
#
#   benches/cold_fork.sh             # 1 GiB
#   SIZE=256M benches/cold_fork.sh   # quick
#
# moto is an in-memory Python S3 server: its throughput bounds the cold
# numbers here; a real S3 endpoint has higher latency per request and
# much higher aggregate throughput.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE="${SIZE:-1G}"
bash scripts/setup.sh >/dev/null
cargo build --release --bin cairn -q
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.3f}')" "$1" "$(now)"; }
mibs() { python3 -c "import sys; print(f'{float(sys.argv[1]) / float(sys.argv[2]) / 1048576:.1f}')" "$1" "$2"; }
bytes=$(python3 -c "
s='$SIZE'; m={'K':1<<10,'M':1<<20,'G':1<<30}
print(int(s[:-1])*m[s[-1]] if s[-1] in m else int(s))")

s3p=$(port)
moto_server -H 127.0.0.1 -p "$s3p" >/dev/null 2>&1 & pids+=($!)
for _ in $(seq 100); do curl -sf -X PUT "http://127.0.0.1:$s3p/bench" >/dev/null && break; sleep 0.1; done
export AWS_ENDPOINT_URL="http://127.0.0.1:$s3p" AWS_ALLOW_HTTP=true AWS_ACCESS_KEY_ID=bench \
  AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1
serve() { # name -> sets <name>_api, <name>_nbd
  local api nbd
  api=$(port); nbd=$(port)
  RUST_LOG=warn ./target/release/cairn serve --data-dir "$work/$1" --object-store s3://bench/objects \
    --listen "127.0.0.1:$api" --nbd-listen "127.0.0.1:$nbd" & pids+=($!)
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$api/healthz" >/dev/null && break; sleep 0.1; done
  printf -v "${1}_api" '%s' "http://127.0.0.1:$api"
  printf -v "${1}_nbd" '%s' "nbd://127.0.0.1:$nbd"
}
serve a
serve b
A() { ./target/release/cairn --server "$a_api" "$@"; }
B() { ./target/release/cairn --server "$b_api" "$@"; }

head -c "$bytes" /dev/urandom > "$work/image"
t=$(now); A import vm "$work/image" >/dev/null 2>&1; echo "import of $SIZE into S3 through server A: $(since "$t") s"
A snapshot create vm --tag base >/dev/null
A snapshot export-ref vm@base "$work/base.ref"
B snapshot import-ref "$work/base.ref" >/dev/null
for f in seq par warm; do B fork vm@base "$f" >/dev/null; done

ttfb() { local t; t=$(now); qemu-io -r -f raw "$1" -c "read 0 4k" >/dev/null; since "$t"; }
cold_ttfb=$(ttfb "$b_nbd/seq")
warm_ttfb=$(ttfb "$b_nbd/seq")
echo "time to first 4 KiB (qemu-io incl. start): cold fork ${cold_ttfb} s, same read again ${warm_ttfb} s"

t=$(now); nbdcopy --connections=1 --requests=1 "$b_nbd/seq" null:; s=$(since "$t")
echo "sequential read (1 request at a time) of a cold fork: $s s, $(mibs "$bytes" "$s") MiB/s"
t=$(now); nbdcopy "$b_nbd/par" null:; s=$(since "$t")
cold=$(mibs "$bytes" "$s")
echo "parallel read of a cold fork: $s s, $cold MiB/s"
t=$(now); nbdcopy "$b_nbd/par" null:; s=$(since "$t")
warm=$(mibs "$bytes" "$s")
echo "parallel read again (local disk cache): $s s, $warm MiB/s"
nbdcopy "$b_nbd/par" - | cmp - "$work/image" && echo "content matches the image"
python3 -c "print(f'cold/warm read throughput: {float($cold)/float($warm):.2f}')"

# A third server, cold, warms a fork in the background.
serve c
C() { ./target/release/cairn --server "$c_api" "$@"; }
C snapshot import-ref "$work/base.ref" >/dev/null
C fork vm@base w >/dev/null
t=$(now); C volume warm w; s=$(since "$t")
echo "cairn volume warm of $SIZE on a cold server: $s s, $(mibs "$bytes" "$s") MiB/s"
curl -s "$b_api/metrics" | grep -E '^cairn_(object_gets_total|chunk_fetch_joins_total|disk_cache_(hits|misses|inserts|evictions)_total|disk_cache_bytes) '
