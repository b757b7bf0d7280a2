#!/usr/bin/env bash
# Cold fork over S3: server A holds a volume of SIZE random bytes in an
# S3-compatible server on loopback and snapshots it; servers B, C and D,
# each with an empty data dir over the same bucket, import the snapshot
# reference, fork it and read it cold:
#
#   - B: time to first byte, a 4 KiB read of the cold fork (qemu-io,
#     process start included; the same read again printed beside it), then
#     a sequential read while hydrating, one request at a time (read-ahead
#     only): nbdcopy --connections=1 --requests=1;
#   - C: a parallel read while hydrating, nbdcopy defaults (4 connections x
#     64 requests), then the same read again from C's local disk cache;
#   - D: `cairn volume warm` (background hydration, 16 fetches in flight).
#   - C again: what asking for hydration costs once the fork is local:
#     `GET /api/v1/volumes/f` (carries the hydration field) and `GET
#     /metrics` (a hydration ratio per volume), first and median of 20.
#
#   benches/cold_fork.sh                   # 1 GiB, s3s-fs if installed, else moto
#   SIZE=256M S3=moto benches/cold_fork.sh
#   CAIRN_BIN=path benches/cold_fork.sh    # another build (A/B against a commit)
#
# S3=s3s uses s3s-fs (`cargo install s3s-fs@0.14.1 --features binary`, a
# Rust S3 server over a directory); S3=moto the Python server the tests
# use. Both run on the same two cores as cairn and bound the cold numbers.
# A real S3 endpoint has more latency per request (tens of ms) and far
# more aggregate throughput.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE="${SIZE:-1G}"
bash scripts/setup.sh >/dev/null
if [ -z "${CAIRN_BIN:-}" ]; then cargo build --release --bin cairn -q; fi
CAIRN_BIN="${CAIRN_BIN:-./target/release/cairn}"
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

S3="${S3:-$(command -v s3s-fs >/dev/null && echo s3s || echo moto)}"
s3p=$(port)
export AWS_ENDPOINT_URL="http://127.0.0.1:$s3p" AWS_ALLOW_HTTP=true AWS_ACCESS_KEY_ID=bench \
  AWS_SECRET_ACCESS_KEY=benchsecret AWS_REGION=us-east-1
signed=(--aws-sigv4 "aws:amz:us-east-1:s3" --user "bench:benchsecret")
if [ "$S3" = s3s ]; then
  mkdir -p "$work/s3"
  s3s-fs --host 127.0.0.1 --port "$s3p" --access-key bench --secret-key benchsecret "$work/s3" >/dev/null 2>&1 & pids+=($!)
else
  moto_server -H 127.0.0.1 -p "$s3p" >/dev/null 2>&1 & pids+=($!)
fi
s3pid=$!
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.1f", ($14 + $15) / hz}' "/proc/$1/stat"; }
for _ in $(seq 100); do curl -sf "${signed[@]}" -X PUT "http://127.0.0.1:$s3p/bench" >/dev/null && break; sleep 0.1; done
echo "S3 server: $S3; volume size: $SIZE"

serve() { # name -> sets <name>_api, <name>_nbd
  local api nbd
  api=$(port); nbd=$(port)
  RUST_LOG=warn "$CAIRN_BIN" serve --data-dir "$work/$1" --object-store s3://bench/objects \
    --listen "127.0.0.1:$api" --nbd-listen "127.0.0.1:$nbd" & pids+=($!)
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$api/healthz" >/dev/null && break; sleep 0.1; done
  printf -v "${1}_api" '%s' "http://127.0.0.1:$api"
  printf -v "${1}_nbd" '%s' "nbd://127.0.0.1:$nbd"
  printf -v "${1}_pid" '%s' "${pids[-1]}"
}
cold() { # name: a fresh server over the bucket, the snapshot imported and forked as "f"
  serve "$1"
  local api="${1}_api"
  "$CAIRN_BIN" --server "${!api}" snapshot import-ref "$work/base.ref" >/dev/null
  "$CAIRN_BIN" --server "${!api}" fork vm@base f >/dev/null
}
ttfb() { local t; t=$(now); qemu-io -r -f raw "$1" -c "read 0 4k" >/dev/null; since "$t"; }

serve a
A() { "$CAIRN_BIN" --server "$a_api" "$@"; }
head -c "$bytes" /dev/urandom > "$work/image"
t=$(now); A import vm "$work/image" >/dev/null 2>&1; s=$(since "$t")
echo "A: import of $SIZE into S3: $s s, $(mibs "$bytes" "$s") MiB/s"
A snapshot create vm --tag base >/dev/null
A snapshot export-ref vm@base "$work/base.ref"

cold b
cold_ttfb=$(ttfb "$b_nbd/f")
warm_ttfb=$(ttfb "$b_nbd/f")
echo "B: time to first 4 KiB (qemu-io incl. start): cold fork ${cold_ttfb} s, same read again ${warm_ttfb} s"
t=$(now); nbdcopy --connections=1 --requests=1 "$b_nbd/f" null:; s=$(since "$t")
echo "B: sequential read (1 request at a time) of a cold fork: $s s, $(mibs "$bytes" "$s") MiB/s"

cold c
s3_before=$(cpu_s "$s3pid"); c_before=$(cpu_s "$c_pid")
t=$(now); nbdcopy "$c_nbd/f" null:; s=$(since "$t")
cold=$(mibs "$bytes" "$s")
echo "C: parallel read of a cold fork: $s s, $cold MiB/s"
echo "C: CPU seconds during it: cairn $(python3 -c "print(round($(cpu_s "$c_pid") - $c_before, 1))"), S3 server $(python3 -c "print(round($(cpu_s "$s3pid") - $s3_before, 1))")"
t=$(now); nbdcopy "$c_nbd/f" null:; s=$(since "$t")
warm=$(mibs "$bytes" "$s")
echo "C: parallel read again (local disk cache): $s s, $warm MiB/s"
nbdcopy "$c_nbd/f" - | cmp - "$work/image" && echo "C: content matches the image"
python3 -c "print(f'cold/warm parallel read throughput: {float($cold)/float($warm):.2f}')"
ms() { curl -s -o /dev/null -w '%{time_total}' "$1" | python3 -c 'import sys; print(f"{float(sys.stdin.read())*1000:.1f}")'; }
for p in /api/v1/volumes/f /metrics; do
  first=$(ms "$c_api$p")
  med=$(for _ in $(seq 20); do ms "$c_api$p"; done | sort -n | sed -n 10p)
  echo "C: GET $p with the fork local: first $first ms, median $med ms"
done
echo "C metrics:"
curl -s "$c_api/metrics" | grep -E '^cairn_(object_gets_total|chunk_fetch_joins_total|disk_cache_(hits|misses|inserts|evictions)_total|disk_cache_bytes) '

cold d
t=$(now); "$CAIRN_BIN" --server "$d_api" volume warm f 2>/dev/null; s=$(since "$t")
echo "D: cairn volume warm of $SIZE on a cold server: $s s, $(mibs "$bytes" "$s") MiB/s"
