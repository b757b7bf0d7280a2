#!/usr/bin/env bash
# Installs what cairn needs to build and test on Debian: the system RocksDB
# (linked instead of compiling the bundled C++ library) with its compression
# libraries, libclang for the RocksDB bindings, a C compiler for the bundled
# zstd, and the real NBD clients the tests drive.
set -euo pipefail

packages=(
  librocksdb-dev libzstd-dev libsnappy-dev liblz4-dev libbz2-dev zlib1g-dev
  clang libclang-dev pkg-config
  qemu-utils libnbd-bin nbdkit fio fuse3 curl time
  chromium python3-venv
  libssl-dev gnutls-bin
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "setup: system packages present"
fi

# S3-compatible server for the S3 backend tests.
if ! command -v moto_server >/dev/null 2>&1; then
  echo "setup: installing moto[server]"
  python3 -m pip install -q "moto[server]"
fi
