#!/usr/bin/env bash
# Import and export of a realistic disk image against zstd on the same file,
# in one run: an ext4 image (SIZE, default 4G) filled to about half with
# files from this machine's /usr (mkfs.ext4 -d, no mount needed), then
#
#   zstd -1 -T2 image       vs  cairn import VOLUME image
#   zstd -d -T2 image.zst   vs  cairn export VOLUME (both to /dev/null)
#
# in ROUNDS rounds (default 3), each on a fresh `cairn serve` (release
# build, local store, new data dir) right after zstd: this machine's speed
# moves by 20-25% from one minute to the next, so one pair says little.
# Prints each round's seconds, the ratios (cairn / zstd, as speed) and the
# server's peak RSS during each (and the client's), then the median ratios;
# checks in the first round that the export equals the image.
#
#   benches/import_export.sh              # 4 GiB image, 3 rounds
#   SIZE=1G ROUNDS=1 benches/import_export.sh      # quick
#   CAIRN_BIN=path benches/import_export.sh   # another build (A/B against a commit)
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE="${SIZE:-4G}"
ROUNDS="${ROUNDS:-3}"
bash scripts/setup.sh >/dev/null
if [ -z "${CAIRN_BIN:-}" ]; then cargo build --release --bin cairn -q; fi
CAIRN_BIN="${CAIRN_BIN:-./target/release/cairn}"
work=$(mktemp -d)
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
bytes=$(numfmt --from=iec "$SIZE")

# The image: files of /usr up to half the size, hard-linked into a staging
# tree where possible (copied otherwise), then written by mkfs.ext4 -d.
python3 - "$work/stage" "$((bytes / 2))" <<'PY'
import os, shutil, sys
stage, budget = sys.argv[1], int(sys.argv[2])
used = 0
for root, dirs, files in os.walk("/usr"):
    dirs.sort()
    for name in sorted(files):
        src = os.path.join(root, name)
        if os.path.islink(src) or not os.path.isfile(src):
            continue
        size = os.path.getsize(src)
        if used + size > budget:
            continue
        dst = os.path.join(stage, os.path.relpath(src, "/"))
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)
        used += size
print(f"staged {used / 2**20:.0f} MiB of /usr")
PY
mkfs.ext4 -q -F -d "$work/stage" "$work/image" "$SIZE"
rm -rf "$work/stage"
# Written back before timing: the image's 2 GiB of dirty pages would
# otherwise be flushed during whichever run comes first, and slow cairn's
# fsyncs (zstd makes none).
sync
cat "$work/image" > /dev/null   # in the page cache for both sides
echo "image: $SIZE ext4, $(du -m "$work/image" | cut -f1) MiB allocated"

timed() { # label command... -> prints seconds
  local t0 t1
  t0=$(date +%s.%N); "$@"; t1=$(date +%s.%N)
  python3 -c "print(f'{$t1 - $t0:.2f}')"
}
mibs() { python3 -c "print(f'{$bytes / 2**20 / $1:.0f}')"; }

ratio() { python3 -c "print(f'{$1 / $2:.2f}')"; }
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
hwm() { awk '/VmHWM/{print int($2/1024)}' "/proc/$pid/status"; }
reset_hwm() { echo 5 > "/proc/$pid/clear_refs"; }
client_rss() { echo $(( $(tail -1 "$work/client.rss") / 1024 )); }
in_ratios=() out_ratios=() same=yes
for round in $(seq "$ROUNDS"); do
  z_in=$(timed zstd -q -1 -T2 -f "$work/image" -o "$work/image.zst")
  z_out=$(timed sh -c "zstd -q -d -T2 -c '$work/image.zst' > /dev/null")
  z_mib=$(du -m "$work/image.zst" | cut -f1)
  rm -f "$work/image.zst"

  rm -rf "$work/cairn"
  cp=$(port)
  RUST_LOG=warn "$CAIRN_BIN" serve --data-dir "$work/cairn" --listen "127.0.0.1:$cp" \
    --nbd-listen "127.0.0.1:$(port)" & pid=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$cp/healthz" >/dev/null && break; sleep 0.1; done
  cairn() { "$CAIRN_BIN" --server "http://127.0.0.1:$cp" "$@"; }
  # The client's peak RSS too: an export decodes in the client.
  client="/usr/bin/time -f %M -o $work/client.rss $CAIRN_BIN --server http://127.0.0.1:$cp"
  reset_hwm
  c_in=$(timed sh -c "$client import img '$work/image' > /dev/null 2>&1")
  in_rss=$(hwm) in_client=$(client_rss)
  reset_hwm
  c_out=$(timed sh -c "$client export img - 2>/dev/null > /dev/null")
  out_rss=$(hwm) out_client=$(client_rss)
  stored=$(cairn --json volume show img | python3 -c 'import json,sys; print(json.load(sys.stdin)["stored_bytes"] >> 20)')
  if [ "$round" = 1 ]; then
    cmp -s <(cairn export img - 2>/dev/null) "$work/image" || same=NO
    echo "export equals the image: $same"
  fi
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
  in_ratios+=("$(ratio "$z_in" "$c_in")") out_ratios+=("$(ratio "$z_out" "$c_out")")
  echo "round $round: zstd -1 -T2 $z_in s ($(mibs "$z_in") MiB/s, $z_mib MiB), cairn import $c_in s ($(mibs "$c_in") MiB/s, stored $stored MiB, peak RSS server $in_rss MiB, client $in_client MiB): ${in_ratios[-1]}x"
  echo "         zstd -d -T2 $z_out s ($(mibs "$z_out") MiB/s), cairn export $c_out s ($(mibs "$c_out") MiB/s, peak RSS server $out_rss MiB, client $out_client MiB): ${out_ratios[-1]}x"
done
median() { python3 -c "import statistics, sys; print(f'{statistics.median(float(x) for x in sys.argv[1:]):.2f}')" "$@"; }
echo "ratios (speed, cairn / zstd), median of $ROUNDS rounds: import $(median "${in_ratios[@]}")x of zstd -1 -T2 (rounds ${in_ratios[*]}), export $(median "${out_ratios[@]}")x of zstd -d -T2 (rounds ${out_ratios[*]})"
[ "$same" = yes ]
