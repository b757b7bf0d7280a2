#!/usr/bin/env bash
# NBD peer comparison: fio's nbd engine against cairn, qemu-nbd (raw file,
# writeback, io_uring), qemu-nbd (qcow2), nbdkit memory (the protocol
# ceiling) and cairn's protocol layer alone over RAM (`memory_server`
# example), and cairn and nbdkit again over TLS-PSK (the cost of TLS), all
# in one run on this machine. Prints IOPS, MiB/s, fio's CPU
# and the server's CPU time per I/O, then cairn/peer ratios. Client and
# server share the CPUs: compare only numbers from one run.
#
#   benches/nbd_peers.sh                      # full: 20 s per test
#   RUNTIME=3 benches/nbd_peers.sh            # quick
#   TRANSPORT=tokio benches/nbd_peers.sh      # cairn's portable transport
#
# cairn runs with a chunk cache larger than the volume (CACHE, default 2G),
# so reads are the "cached" case; set CACHE=64M to see the miss path.
# fio's nbd engine refuses `tls-psk-file=` in URIs (libnbd's default);
# benches/fio_allow_psk_file.c, preloaded into fio for the TLS servers,
# turns on the switch nbdinfo and nbdcopy turn on.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNTIME="${RUNTIME:-20}"
SIZE="${SIZE:-1G}"
CACHE="${CACHE:-2G}"
TRANSPORT="${TRANSPORT:-auto}"
bash scripts/setup.sh >/dev/null
cargo build --release --bin cairn -q
cargo build --release -p cairn-nbd-server --example memory_server -q
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_nbd() { for _ in $(seq 100); do nbdinfo --size "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "server at $1 did not start" >&2; return 1; }
declare -A pid uri
gcc -shared -fPIC -O2 -o "$work/allow_psk_file.so" benches/fio_allow_psk_file.c -ldl /usr/lib/x86_64-linux-gnu/libnbd.so.0
psktool -u default -p "$work/keys.psk" >/dev/null

# cairn
cp=$(port); cn=$(port)
RUST_LOG=warn ./target/release/cairn serve --data-dir "$work/cairn" --listen "127.0.0.1:$cp" \
  --nbd-listen "127.0.0.1:$cn" --memory-cache-size "$CACHE" --nbd-transport "$TRANSPORT" & pids+=($!); pid[cairn]=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$cp/healthz" >/dev/null && break; sleep 0.1; done
./target/release/cairn --server "http://127.0.0.1:$cp" volume create bench --size "$SIZE" >/dev/null
uri[cairn]="nbd://127.0.0.1:$cn/bench"
# cairn again, NBD over TLS-PSK (identity `default`: the namespace)
ctp=$(port); ctn=$(port)
RUST_LOG=warn ./target/release/cairn serve --data-dir "$work/cairn-tls" --listen "127.0.0.1:$ctp" \
  --nbd-listen "127.0.0.1:$ctn" --memory-cache-size "$CACHE" --nbd-transport "$TRANSPORT" \
  --nbd-tls-psk "$work/keys.psk" & pids+=($!); pid[cairn-tls]=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$ctp/healthz" >/dev/null && break; sleep 0.1; done
./target/release/cairn --server "http://127.0.0.1:$ctp" volume create bench --size "$SIZE" >/dev/null
uri[cairn-tls]="nbds://default@127.0.0.1:$ctn/bench?tls-psk-file=$work/keys.psk"
# cairn's protocol layer over RAM
cm=$(port)
./target/release/examples/memory_server "127.0.0.1:$cm" "$SIZE" 2>/dev/null & pids+=($!); pid[cairn-proto]=$!
uri[cairn-proto]="nbd://127.0.0.1:$cm/mem"
# qemu-nbd raw (writeback cache, io_uring)
truncate -s "$SIZE" "$work/raw.img"; qr=$(port)
qemu-nbd -t -b 127.0.0.1 -p "$qr" -x bench -f raw --cache=writeback --aio=io_uring -e 8 "$work/raw.img" & pids+=($!); pid[qemu-raw]=$!
uri[qemu-raw]="nbd://127.0.0.1:$qr/bench"
# qemu-nbd qcow2 (the peer that also offers snapshots)
qemu-img create -q -f qcow2 "$work/q.qcow2" "$SIZE"; qq=$(port)
qemu-nbd -t -b 127.0.0.1 -p "$qq" -x bench -f qcow2 --cache=writeback --aio=io_uring -e 8 "$work/q.qcow2" & pids+=($!); pid[qemu-qcow2]=$!
uri[qemu-qcow2]="nbd://127.0.0.1:$qq/bench"
# nbdkit memory
nk=$(port)
nbdkit -f -i 127.0.0.1 -p "$nk" memory "$SIZE" & pids+=($!); pid[nbdkit-mem]=$!
uri[nbdkit-mem]="nbd://127.0.0.1:$nk/"
# nbdkit memory over TLS-PSK (GnuTLS)
nt=$(port)
# (quiet: fio ends TLS sessions without close_notify, which nbdkit logs per connection)
nbdkit -f -i 127.0.0.1 -p "$nt" --tls=require --tls-psk="$work/keys.psk" memory "$SIZE" 2>/dev/null & pids+=($!); pid[nbdkit-tls]=$!
uri[nbdkit-tls]="nbds://default@127.0.0.1:$nt/?tls-psk-file=$work/keys.psk"

servers=(cairn cairn-proto qemu-raw qemu-qcow2 nbdkit-mem cairn-tls nbdkit-tls)
# fio for a server: TLS URIs need the preload.
fio_for() { if [[ "${uri[$1]}" == nbds://* ]]; then LD_PRELOAD="$work/allow_psk_file.so" fio "${@:2}"; else fio "${@:2}"; fi; }
for s in "${servers[@]}"; do wait_nbd "${uri[$s]}"; done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
fio_run() { # server rw bs depth -> prints "iops mibs fio_cpu% server_cpu_us_per_io"
  local out="$work/$1-$2-$3-$4.json" before after
  before=$(cpu_ticks "${pid[$1]}")
  fio_for "$1" --name=b --ioengine=nbd --uri="${uri[$1]}" --rw="$2" --bs="$3" --iodepth="$4" \
      --size="$SIZE" --runtime="$RUNTIME" --time_based --ramp_time=1 \
      --output-format=json --output="$out" >/dev/null
  after=$(cpu_ticks "${pid[$1]}")
  python3 - "$out" "$2" "$((after - before))" "$(getconf CLK_TCK)" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
side = "read" if "read" in sys.argv[2] else "write"
ios = max(1, j[side]["total_ios"])
server_us = int(sys.argv[3]) / int(sys.argv[4]) * 1e6 / ios
print(f'{j[side]["iops"]:.0f} {j[side]["bw"]/1024:.0f} {j["usr_cpu"]+j["sys_cpu"]:.0f} {server_us:.1f}')
PY
}

# Fill every export first (holes are served without I/O), then read it all
# once so cairn's cache and the page cache are warm.
for s in "${servers[@]}"; do
  fio_for "$s" --name=fill --ioengine=nbd --uri="${uri[$s]}" --rw=write --bs=1M --iodepth=8 --size="$SIZE" >/dev/null
  fio_for "$s" --name=warm --ioengine=nbd --uri="${uri[$s]}" --rw=read --bs=1M --iodepth=8 --size="$SIZE" >/dev/null
done

tests=("randread 4k 1" "randread 4k 32" "randwrite 4k 32" "read 1M 8" "write 1M 8")
printf '%-16s %-12s %10s %8s %8s %14s\n' test server IOPS MiB/s fio_cpu% server_us/io
declare -A res
for t in "${tests[@]}"; do
  set -- $t
  for s in "${servers[@]}"; do
    read -r iops mibs cpu server_us < <(fio_run "$s" "$1" "$2" "$3")
    res["$t/$s"]=$iops
    printf '%-16s %-12s %10s %8s %8s %14s\n' "$1 $2 qd$3" "$s" "$iops" "$mibs" "$cpu" "$server_us"
  done
done
echo
echo "ratios (cairn / peer, IOPS):"
for t in "${tests[@]}"; do
  c=${res["$t/cairn"]}
  printf '%-16s' "$t"
  for s in cairn-proto qemu-raw qemu-qcow2 nbdkit-mem; do
    printf '  vs %-11s %5.2f' "$s" "$(python3 -c "print($c/max(1,${res["$t/$s"]}))")"
  done
  echo
done
echo
echo "TLS cost (IOPS over TLS / plain, same server):"
for t in "${tests[@]}"; do
  printf '%-16s  cairn %5.2f  nbdkit %5.2f\n' "$t" \
    "$(python3 -c "print(${res["$t/cairn-tls"]}/max(1,${res["$t/cairn"]}))")" \
    "$(python3 -c "print(${res["$t/nbdkit-tls"]}/max(1,${res["$t/nbdkit-mem"]}))")"
done
echo "server RSS (MiB): cairn $(($(awk '/VmHWM/{print $2}' /proc/${pid[cairn]}/status) / 1024)) peak, cache $CACHE"
