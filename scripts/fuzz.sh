#!/usr/bin/env bash
# Coverage-guided fuzzing of the NBD request/option parsers and of whole
# NBD sessions against a RAM disk (fuzz/fuzz_targets), with cargo-fuzz.
#
#   scripts/fuzz.sh                  # each target for FUZZ_SECONDS (default 15)
#   FUZZ_SECONDS=3600 scripts/fuzz.sh nbd_session
#
# cargo-fuzz needs nightly-only flags; on the stable toolchain
# RUSTC_BOOTSTRAP=1 allows them. The sanitizer is off (-s none): the
# targets are safe Rust, and the coverage instrumentation is what finds
# inputs. Crashes land in fuzz/artifacts/<target>/ and fail the run.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH="${FUZZ_SECONDS:-15}"
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install cargo-fuzz --locked --quiet
fi
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(nbd_parsers nbd_session)
export RUSTC_BOOTSTRAP=1
for t in "${targets[@]}"; do
  corpus="fuzz/corpus/$t"
  mkdir -p "$corpus"
  if [ -d "fuzz/seeds/$t" ]; then cp -n "fuzz/seeds/$t"/* "$corpus"/ 2>/dev/null || true; fi
  echo "== fuzz $t for ${SECONDS_EACH}s"
  (cd fuzz && cargo fuzz run -s none "$t" "corpus/$t" -- \
      -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 2>&1) \
    | grep -E "^(Done|stat::number_of_executed_units|stat::peak_rss_mb)|ERROR|panicked|SUMMARY" || true
  if [ -n "$(ls -A "fuzz/artifacts/$t" 2>/dev/null)" ]; then
    echo "fuzz: $t found crashing inputs in fuzz/artifacts/$t" >&2
    exit 1
  fi
done
