#!/usr/bin/env bash
# Write path against peers, in one run: fio's nbd engine with --fsync=256
# (a FLUSH every 256 writes asked; fio issues more at QD32, counted in the
# writes/flush column) against cairn, qemu-nbd raw and qemu-nbd qcow2 (writeback,
# io_uring); then snapshot, fork and clone latency right after random
# dirty data, and snapshot latency while a 1 GiB seal runs; then snapshot
# latency while 4 connections write 4 volumes; then cairn's peak RSS with
# 4 connections writing 4 volumes.
# Prints IOPS, MiB/s, server CPU per write, ratios, bytes sealed per byte
# written, and cairn's peak RSS in each phase and across the script.
#
#   benches/write_path.sh                 # 20 s per test, 1 GiB exports
#   RUNTIME=5 SNAPS=5 benches/write_path.sh
#   PHASES="writes ops load rss" SERVERS="cairn qemu-raw qemu-qcow2"   # (defaults) a subset
#   CAIRN_LAYOUT=files                    # local objects one file each (default: packs)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNTIME="${RUNTIME:-20}"
SIZE="${SIZE:-1G}"
SNAPS="${SNAPS:-20}"
CACHE="${CACHE:-256M}"
bash scripts/setup.sh >/dev/null
# CAIRN_BIN=path runs another build of cairn (A/B against a commit).
if [ -z "${CAIRN_BIN:-}" ]; then cargo build --release --bin cairn -q; fi
CAIRN_BIN="${CAIRN_BIN:-./target/release/cairn}"
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_nbd() { for _ in $(seq 100); do nbdinfo --size "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "no NBD server at $1" >&2; return 1; }
declare -A pid uri

cp=$(port); cn=$(port)
layout=()
if [ -n "${CAIRN_LAYOUT:-}" ]; then layout=(--object-store "file://$work/cairn/objects?layout=$CAIRN_LAYOUT"); fi
RUST_LOG=warn "$CAIRN_BIN" serve --data-dir "$work/cairn" --listen "127.0.0.1:$cp" \
  --nbd-listen "127.0.0.1:$cn" --memory-cache-size "$CACHE" "${layout[@]}" & pids+=($!); pid[cairn]=$!
api="http://127.0.0.1:$cp"
for _ in $(seq 100); do curl -sf "$api/healthz" >/dev/null && break; sleep 0.1; done
cli() { "$CAIRN_BIN" --server "$api" "$@"; }
for v in bench s1 s2 v1 v2 v3 v4; do cli volume create "$v" --size "$SIZE" >/dev/null; done
uri[cairn]="nbd://127.0.0.1:$cn/bench"
truncate -s "$SIZE" "$work/raw.img"; qr=$(port)
qemu-nbd -t -b 127.0.0.1 -p "$qr" -x bench -f raw --cache=writeback --aio=io_uring -e 8 "$work/raw.img" & pids+=($!); pid[qemu-raw]=$!
uri[qemu-raw]="nbd://127.0.0.1:$qr/bench"
qemu-img create -q -f qcow2 "$work/q.qcow2" "$SIZE"; qq=$(port)
qemu-nbd -t -b 127.0.0.1 -p "$qq" -x bench -f qcow2 --cache=writeback --aio=io_uring -e 8 "$work/q.qcow2" & pids+=($!); pid[qemu-qcow2]=$!
uri[qemu-qcow2]="nbd://127.0.0.1:$qq/bench"
read -r -a servers <<< "${SERVERS:-cairn qemu-raw qemu-qcow2}"
PHASES="${PHASES:-writes ops load rss}"
phase() { [[ " $PHASES " == *" $1 "* ]]; }
for s in "${servers[@]}"; do wait_nbd "${uri[$s]}"; done

# What a cron GC would give back between phases: without it the garbage
# of every phase stays on disk (tens of GiB over a full run). Then waits
# for the pack compactions the GC started, so they do not run during the
# next phase.
reclaim() {
  printf '%-16s gc: %s\n' "" "$(cli gc --grace 0s | tail -1)"
  local last="" now
  while now=$(metric cairn_pack_bytes); [ "$now" != "$last" ]; do last=$now; sleep 1; done
}
# Peak RSS of the phase that just ran, then the peak is reset (clear_refs
# 5), so each phase shows its own; the script's peak is the largest.
script_peak=0
peak_rss() {
  local mib=$(($(awk '/VmHWM/{print $2}' /proc/${pid[cairn]}/status) / 1024))
  [ "$mib" -gt "$script_peak" ] && script_peak=$mib
  echo "cairn peak RSS in this phase $mib MiB, across the script $script_peak MiB (memory cache $CACHE)"
  echo 5 > "/proc/${pid[cairn]}/clear_refs"
}
wait_sealed() { while [ "$(metric cairn_backlog_bytes)" != 0 ]; do sleep 0.2; done; }
# fio job options for v1..v4 in "${jobs[@]}"; `mixed`: odd ones 4 KiB
# random QD32, even ones 1 MiB sequential QD8.
volume_jobs() {
  jobs=()
  for i in 1 2 3 4; do
    jobs+=(--name="v$i" --uri="nbd://127.0.0.1:$cn/v$i")
    if [ "${1:-}" = mixed ]; then
      if [ $((i % 2)) -eq 1 ]; then jobs+=(--rw=randwrite --bs=4k --iodepth=32); else jobs+=(--rw=write --bs=1M --iodepth=8); fi
    fi
  done
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
metric() { curl -s "$api/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
# Steal and all ticks of the machine: time the host gave other guests
# while a run wanted the CPU (runs with steal are slower for every server).
machine_ticks() { awk '/^cpu /{print $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat; }
fio_run() { # server rw bs depth -> "iops mibs server_us_per_io ios writes_per_flush steal_percent"
  local out="$work/$1-$2-$3-$4.json" before after m0 m1
  before=$(cpu_ticks "${pid[$1]}") m0=$(machine_ticks)
  fio --name=b --ioengine=nbd --uri="${uri[$1]}" --rw="$2" --bs="$3" --iodepth="$4" \
      --size="$SIZE" --runtime="$RUNTIME" --time_based --fsync=256 \
      --output-format=json --output="$out" >/dev/null
  after=$(cpu_ticks "${pid[$1]}") m1=$(machine_ticks)
  python3 - "$out" "$((after - before))" "$(getconf CLK_TCK)" "$m0" "$m1" <<'PY'
import json, sys
job = json.load(open(sys.argv[1]))["jobs"][0]
j = job["write"]
ios = max(1, j["total_ios"])
# fio issues FLUSHes more often than --fsync asks at a queue depth above 1
# (about one per 8 writes at QD32): counted, not assumed.
flushes = max(1, job.get("sync", {}).get("total_ios", 0))
steal0, all0 = map(int, sys.argv[4].split())
steal1, all1 = map(int, sys.argv[5].split())
steal = 100 * (steal1 - steal0) / max(1, all1 - all0)
print(f'{j["iops"]:.0f} {j["bw"]/1024:.0f} {int(sys.argv[2]) / int(sys.argv[3]) * 1e6 / ios:.1f} {ios} {ios / flushes:.0f} {steal:.1f}')
PY
}

if phase writes; then
echo "== writes, fio --fsync=256 (server CPU includes cairn's sealer while it runs)"
tests=("randwrite 4k 32" "write 1M 8")
printf '%-16s %-12s %10s %8s %14s %12s %7s\n' test server IOPS MiB/s server_us/io writes/flush steal%
declare -A res
for t in "${tests[@]}"; do
  set -- $t
  for s in "${servers[@]}"; do
    read -r iops mibs us ios per_flush steal < <(fio_run "$s" "$1" "$2" "$3")
    res["$t/$s"]=$iops
    printf '%-16s %-12s %10s %8s %14s %12s %7s\n' "$1 $2 qd$3" "$s" "$iops" "$mibs" "$us" "$per_flush" "$steal"
    if [ "$s" = cairn ]; then
      # What the run left unsealed is sealed after it (idle): timed apart,
      # so it does not land in the next test's figures.
      t0=$(date +%s%N); c0=$(cpu_ticks "${pid[cairn]}")
      wait_sealed
      seal_s=$(python3 -c "print(($(cpu_ticks "${pid[cairn]}") - $c0) / $(getconf CLK_TCK))")
      printf '%-16s cairn sealed what the run left in %.1f s, %.1f CPU-s: %.1f us per write, %.1f in all\n' "" \
        "$(python3 -c "print(($(date +%s%N) - $t0) / 1e9)")" "$seal_s" \
        "$(python3 -c "print($seal_s * 1e6 / $ios)")" "$(python3 -c "print($us + $seal_s * 1e6 / $ios)")"
    fi
  done
  for peer in qemu-raw qemu-qcow2; do
    if [ -n "${res["$t/cairn"]:-}" ] && [ -n "${res["$t/$peer"]:-}" ]; then
      printf '%-16s cairn/%s %.2f\n' "" "${peer#qemu-}" "$(python3 -c "print(${res["$t/cairn"]}/max(1,${res["$t/$peer"]}))")"
    fi
  done
done
w=$(metric cairn_write_bytes_total); sl=$(metric cairn_sealed_bytes_total)
echo "bytes written $w, chunk bytes sealed $sl during the runs: $(python3 -c "print(round($sl/max(1,$w),2))") sealed per written"
peak_rss
reclaim
fi

# A snapshot makes the writes it holds durable: what the client has not
# flushed yet is fsynced by the snapshot. SNAP_FSYNC=0: nothing flushed.
SNAP_FSYNC="${SNAP_FSYNC:-256}"
phase ops && echo "== snapshot, fork (of that snapshot, still pending) and clone latency right after random 4 KiB writes, fio --fsync=$SNAP_FSYNC (ms)"
post_ms() { # path json -> milliseconds (fails on an HTTP error)
  local out
  out=$(curl -s -o "$work/post.out" -w '%{http_code} %{time_total}' -X POST -H 'Content-Type: application/json' \
      --data "$2" "$api/api/v1$1")
  case "$out" in 2*) ;; *) echo "POST $1 failed: $out $(cat "$work/post.out")" >&2; return 1 ;; esac
  python3 -c "print(int(${out#* } * 1e6))"
}
dirty() { # volume writes seed
  fio --name=d --ioengine=nbd --uri="nbd://127.0.0.1:$cn/$1" --rw=randwrite --bs=4k --iodepth=32 \
      --size="$SIZE" --number_ios="$2" --randseed="$3" --fsync="$SNAP_FSYNC" >/dev/null
}
stats() { python3 -c "import sys; t=sorted(int(x)/1000 for x in sys.argv[2:]); print(f'  {sys.argv[1]:9} n={len(t)} p50 {t[len(t)//2]:.1f} ms, p99 {t[min(len(t)-1, int(len(t)*0.99))]:.1f} ms, max {t[-1]:.1f} ms')" "$@"; }
op_bench() { # volume dirty_bytes label
  local v=$1 n=$(( $2 / 4096 )) snaps=() forks=() clones=()
  for i in $(seq "$SNAPS"); do
    dirty "$v" "$n" "$i"
    snaps+=("$(post_ms "/volumes/$v/snapshots" "{\"tag\":\"t$i\"}")")
    forks+=("$(post_ms "/volumes/$v/snapshots/t$i/fork" "{\"name\":\"f-$v-$i\"}")")
    dirty "$v" "$n" "$((i + 1000))"
    clones+=("$(post_ms "/volumes/$v/clone" "{\"name\":\"c-$v-$i\"}")")
  done
  echo "$3:"
  stats snapshot "${snaps[@]}"; stats fork "${forks[@]}"; stats clone "${clones[@]}"
}
# The server's own count of these answers within 10 ms and in all
# (cairn_http_request_duration_seconds), both phases together: time spent
# in the server, apart from curl's.
server_within_10ms() {
  local out="  server side, within 10 ms:" op key
  for op in snapshot=/api/v1/volumes/{name}/snapshots fork=/api/v1/volumes/{name}/snapshots/{tag}/fork \
            clone=/api/v1/volumes/{name}/clone; do
    key="cairn_http_request_duration_seconds_bucket{method=\"POST\",route=\"${op#*=}\""
    out+=" ${op%%=*} $(metric "$key,le=\"0.01\"}")/$(metric "$key,le=\"+Inf\"}"),"
  done
  echo "${out%,}"
}
if phase ops; then
op_bench s1 $((16 << 20)) "16 MiB dirty"
SNAPS_BIG="${SNAPS_BIG:-3}"
SNAPS=$SNAPS_BIG op_bench s2 $((1 << 30)) "1 GiB of random 4K writes"
server_within_10ms
# Snapshots every 0.3 s while the sealer seals 1 GiB of random writes:
# its object writes and a snapshot's syncs share the disk.
dirty s2 $((1 << 18)) 7; during=(); t0=$(date +%s%N)
while [ "$(metric cairn_backlog_bytes)" != 0 ]; do
  during+=("$(post_ms /volumes/s2/snapshots "{\"tag\":\"during-${#during[@]}\"}")"); sleep 0.3
done
echo "while the 1 GiB seal ran ($(( ($(date +%s%N) - t0) / 1000000 )) ms):"
if [ ${#during[@]} -gt 0 ]; then stats snapshot "${during[@]}"; fi
peak_rss
reclaim
fi

if phase load; then
echo "== snapshots of v1 every 0.5 s while 4 connections write v1..v4 (4k random QD32, fio --fsync=256)"
volume_jobs
fio --ioengine=nbd --rw=randwrite --bs=4k --iodepth=32 --size="$SIZE" --runtime="$RUNTIME" --time_based \
    --fsync=256 --group_reporting --output-format=json --output="$work/load.json" "${jobs[@]}" >/dev/null &
fio_pid=$!; sleep 2; during=()
while kill -0 "$fio_pid" 2>/dev/null; do
  during+=("$(post_ms /volumes/v1/snapshots "{\"tag\":\"load-${#during[@]}\"}")"); sleep 0.5
done
wait "$fio_pid"
python3 - "$work/load.json" <<'PY'
import json, sys
job = json.load(open(sys.argv[1]))["jobs"][0]
w, f = job["write"], job["sync"]["lat_ns"]
p = lambda d, q: d["percentile"][q] / 1e6
print(f'  writes: {w["iops"]:.0f} IOPS in all, latency p50 {p(w["clat_ns"], "50.000000"):.2f} ms, '
      f'p99 {p(w["clat_ns"], "99.000000"):.1f} ms; flushes: mean {f["mean"] / 1e6:.1f} ms')
PY
if [ ${#during[@]} -gt 0 ]; then stats snapshot "${during[@]}"; fi
wait_sealed
peak_rss
reclaim
fi

phase rss || exit 0
echo "== peak RSS, 4 connections writing 4 volumes (4k random QD32 + 1M sequential QD8 alternately)"
volume_jobs mixed
fio --ioengine=nbd --size="$SIZE" --runtime="$RUNTIME" --time_based --fsync=256 "${jobs[@]}" >/dev/null
peak_rss
