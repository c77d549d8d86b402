#!/usr/bin/env bash
# Builds inferd and runs the whole test suite: once in a release build, once
# under AddressSanitizer + UndefinedBehaviorSanitizer. This is the command CI
# runs (.ci/run). Needs ../shared beside the checkout (the test models and goldens).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
if [ ! -d ../shared/models ]; then
  echo "test.sh: ../shared (test models and goldens) not found beside the checkout" >&2
  exit 1
fi
jobs=$(nproc)

[ -d build ] || meson setup build -Dtests=enabled
ninja -C build
meson test -C build --print-errorlogs --num-processes "$jobs"

# allocator_may_return_null: an allocation too large for the address space
# returns NULL as in production (the tests check that it is refused cleanly)
# instead of aborting the run.
[ -d build-asan ] || meson setup build-asan -Dtests=enabled -Dbuildtype=debugoptimized \
  -Db_sanitize=address,undefined -Db_lundef=false
ninja -C build-asan
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:allocator_may_return_null=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  LSAN_OPTIONS=suppressions=$PWD/tests/lsan.supp:print_suppressions=0 \
  meson test -C build-asan --print-errorlogs --num-processes "$jobs" --no-suite slow
