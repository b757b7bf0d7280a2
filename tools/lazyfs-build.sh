#!/usr/bin/env bash
# Builds LazyFS (MIT, dsrhaslab/lazyfs, source in ./lazyfs, see its LICENSE) into OUT_DIR and
# prints the path of the binary. LazyFS is a FUSE
# filesystem with its own page cache: data not fsynced stays in that cache, and
# writing `lazyfs::clear-cache` to its fifo drops it -- a power cut for
# everything above it. Offline build: Debian's toml11/spdlog replace the
# upstream CMake downloads (same versions).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${1:?usage: lazyfs-build.sh OUT_DIR}
BIN=$OUT/src/lazyfs/build/lazyfs
if [ -x "$BIN" ]; then echo "$BIN"; exit 0; fi
pk=(libfuse3-dev fuse3 cmake g++ libtoml11-dev libspdlog-dev)
miss=(); for p in "${pk[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || miss+=("$p"); done
if [ ${#miss[@]} -gt 0 ]; then
  S=""; [ "$(id -u)" -eq 0 ] || S=sudo
  $S apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive $S apt-get install -y -qq --no-install-recommends "${miss[@]}" >/dev/null
fi
rm -rf "$OUT/src"; mkdir -p "$OUT"; cp -r "$HERE/lazyfs" "$OUT/src"
( cd "$OUT/src/libs/libpcache" && sh build.sh ) >"$OUT/build.log" 2>&1
( cd "$OUT/src/lazyfs" && sh build.sh ) >>"$OUT/build.log" 2>&1
[ -x "$BIN" ] || { tail -20 "$OUT/build.log" >&2; exit 1; }
echo "$BIN"
