#!/usr/bin/env bash
# Runs the libFuzzer targets one after another (docs/fuzzing.md).
#   tests/fuzz/run-fuzzers.sh BUILD_DIR [SECONDS_EACH] [TARGET...]
# BUILD_DIR was set up with: CC=clang meson setup BUILD_DIR -Dfuzz=enabled -Dtests=enabled
# Each target starts from its committed corpus (tests/fuzz/corpus/<target>)
# plus the seeds its replay binary builds (--write-seeds), in a working corpus
# under BUILD_DIR/fuzz-work/<target> that grows across runs. Crashes, leaks
# and timeouts land in BUILD_DIR/fuzz-work/<target>/artifacts/.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=${1:?usage: run-fuzzers.sh BUILD_DIR [SECONDS_EACH] [TARGET...]}
secs=${2:-120}
shift $(( $# >= 2 ? 2 : 1 ))
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(safetensors model_config tokenizer_json tokenizer_encode chat_template chat_render api net_frame net_handshake)
fi
export INFERD_SHARED=${INFERD_SHARED:-$here/../../../shared}
# Leaks are bugs too; UBSan findings stop the run (-fno-sanitize-recover).
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
status=0
for t in "${targets[@]}"; do
  work=$build/fuzz-work/$t
  mkdir -p "$work/corpus" "$work/artifacts" "$work/seeds"
  if [ -d "$here/corpus/$t" ]; then cp -n "$here/corpus/$t"/* "$work/seeds/" 2>/dev/null || true; fi
  "$build/tests/fuzz/replay_$t" --write-seeds "$work/seeds" >/dev/null
  # tokenizer.json seeds are ~90 KB; the rest are small.
  maxlen=$([ "$t" = tokenizer_json ] && echo 262144 || echo 65536)
  echo "== fuzz_$t: ${secs}s"
  if ! "$build/tests/fuzz/fuzz_$t" "$work/corpus" "$work/seeds" \
      -max_total_time="$secs" -rss_limit_mb=2048 -timeout=20 -max_len="$maxlen" \
      -artifact_prefix="$work/artifacts/" -print_final_stats=1 > "$work/log.txt" 2>&1; then
    status=1
    echo "fuzz_$t FAILED: see $work/log.txt and $work/artifacts/"
  fi
  grep -E "^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss_mb)|cov:" "$work/log.txt" | tail -3 || true
done
exit $status
