#!/usr/bin/env bash
# NBD peer comparison: fio's nbd engine against cairn, qemu-nbd (raw file,
# writeback, io_uring), qemu-nbd (qcow2) and nbdkit memory (the protocol
# ceiling), all in one run on this machine, printing IOPS/MiB/s and the
# cairn/peer ratios. Client and server share the CPUs: compare only
# numbers from one run.
#
#   benches/nbd_peers.sh            # full: 20 s per test
#   RUNTIME=3 benches/nbd_peers.sh  # quick
set -euo pipefail
cd "$(dirname "$0")/.."
RUNTIME="${RUNTIME:-20}"
SIZE="${SIZE:-1G}"
bash scripts/setup.sh >/dev/null
cargo build --release --bin cairn -q
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_nbd() { for _ in $(seq 100); do nbdinfo --size "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "server at $1 did not start" >&2; return 1; }

# cairn
cp=$(port); cn=$(port)
RUST_LOG=warn ./target/release/cairn serve --data-dir "$work/cairn" --listen "127.0.0.1:$cp" --nbd-listen "127.0.0.1:$cn" & pids+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$cp/healthz" >/dev/null && break; sleep 0.1; done
./target/release/cairn --server "http://127.0.0.1:$cp" volume create bench --size "$SIZE" >/dev/null
# qemu-nbd raw (writeback cache, io_uring)
truncate -s "$SIZE" "$work/raw.img"; qr=$(port)
qemu-nbd -t -b 127.0.0.1 -p "$qr" -x bench -f raw --cache=writeback --aio=io_uring -e 8 "$work/raw.img" & pids+=($!)
# qemu-nbd qcow2 (the peer that also offers snapshots)
qemu-img create -q -f qcow2 "$work/q.qcow2" "$SIZE"; qq=$(port)
qemu-nbd -t -b 127.0.0.1 -p "$qq" -x bench -f qcow2 --cache=writeback --aio=io_uring -e 8 "$work/q.qcow2" & pids+=($!)
# nbdkit memory
nk=$(port)
nbdkit -f -i 127.0.0.1 -p "$nk" memory "$SIZE" & pids+=($!)

declare -A uri=(
  [cairn]="nbd://127.0.0.1:$cn/bench"
  [qemu-raw]="nbd://127.0.0.1:$qr/bench"
  [qemu-qcow2]="nbd://127.0.0.1:$qq/bench"
  [nbdkit-mem]="nbd://127.0.0.1:$nk/"
)
for s in "${!uri[@]}"; do wait_nbd "${uri[$s]}"; done

fio_run() { # name uri rw bs depth -> prints "iops mibs"
  local out="$work/$1-$3-$4-$5.json"
  fio --name=b --ioengine=nbd --uri="$2" --rw="$3" --bs="$4" --iodepth="$5" \
      --size="$SIZE" --runtime="$RUNTIME" --time_based --ramp_time=1 \
      --output-format=json --output="$out" >/dev/null
  python3 - "$out" "$3" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
side = "read" if "read" in sys.argv[2] else "write"
print(f'{j[side]["iops"]:.0f} {j[side]["bw"]/1024:.0f} {j["usr_cpu"]+j["sys_cpu"]:.0f}')
PY
}

# Fill every export first: holes are served without I/O.
for s in cairn qemu-raw qemu-qcow2 nbdkit-mem; do
  fio --name=fill --ioengine=nbd --uri="${uri[$s]}" --rw=write --bs=1M --iodepth=8 --size="$SIZE" >/dev/null
done

tests=("randread 4k 1" "randread 4k 32" "randwrite 4k 32" "read 1M 8" "write 1M 8")
printf '%-16s %-12s %10s %10s %8s\n' test server IOPS MiB/s fio_cpu%
declare -A res
for t in "${tests[@]}"; do
  set -- $t
  for s in cairn qemu-raw qemu-qcow2 nbdkit-mem; do
    read -r iops mibs cpu < <(fio_run "$s" "${uri[$s]}" "$1" "$2" "$3")
    res["$t/$s"]=$iops
    printf '%-16s %-12s %10s %10s %8s\n' "$1 $2 qd$3" "$s" "$iops" "$mibs" "$cpu"
  done
done
echo
echo "ratios (cairn / peer, IOPS):"
for t in "${tests[@]}"; do
  c=${res["$t/cairn"]}
  printf '%-16s' "$t"
  for s in qemu-raw qemu-qcow2 nbdkit-mem; do
    printf '  vs %-10s %5.2f' "$s" "$(python3 -c "print($c/max(1,${res["$t/$s"]}))")"
  done
  echo
done
