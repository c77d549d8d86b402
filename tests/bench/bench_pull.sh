#!/usr/bin/env bash
# bench_pull.sh - throughput and peak memory of `inferctl model pull` on a
# full-size checkpoint, served over loopback by the mock Hub.
#
#   tests/bench/bench_pull.sh [BUILD_DIR] [PRESET] [SHARDS]
#
# Generates PRESET (default qwen2.5-7b, ~15 GB in BF16) in SHARDS shards
# (default 4) under /tmp, serves it with tests/integration/mock_hub.py, pulls
# it into a fresh HF_HOME under /usr/bin/time -v, and prints peak RSS, MB/s
# and wall time. Needs about twice the checkpoint's size free in /tmp;
# everything is deleted on exit. The mock's hashing of the files is done
# before the timed pull (one API request), so the figure is the pull's own:
# HTTP over loopback, writing, and sha256 of every shard.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src_root=$(cd "$here/../.." && pwd)
build=${1:-$src_root/build}
preset=${2:-qwen2.5-7b}
shards=${3:-4}
inferctl=$build/daemon/inferctl
shared=${INFERD_SHARED:-$src_root/../shared}
[ -x "$inferctl" ] || { echo "no $inferctl: build first" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "needs /usr/bin/time (apt-get install time)" >&2; exit 1; }

work=$(mktemp -d /tmp/inferd-bench-pull-XXXXXX)
mock_pid=
cleanup() {
  [ -n "$mock_pid" ] && kill "$mock_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

tok=()
[ -d "$shared/models/qwen2-tiny-random" ] && tok=(--tokenizer-from "$shared/models/qwen2-tiny-random")
echo "generating $preset, BF16, $shards shards in $work/src ..."
"$inferctl" model generate --preset "$preset" --dtype bf16 --shards "$shards" "${tok[@]}" "$work/src"

python3 "$src_root/tests/integration/mock_hub.py" --repo "bench/$preset=$work/src" \
  --port-file "$work/port" --log "$work/mock.log" &
mock_pid=$!
for _ in $(seq 100); do [ -s "$work/port" ] && break; sleep 0.1; done
endpoint=http://127.0.0.1:$(cat "$work/port")
echo "hashing the checkpoint in the mock (not timed) ..."
curl -sf "$endpoint/api/models/bench/$preset/revision/main?blobs=true" >/dev/null

echo "pulling ..."
HF_HOME=$work/hf HF_ENDPOINT=$endpoint /usr/bin/time -v -o "$work/time.txt" \
  "$inferctl" model pull --quiet "bench/$preset" >"$work/snapshot.txt"
bytes=$(du -sb --apparent-size "$work/hf/hub" | cut -f1)
rss_kib=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$work/time.txt")
wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$work/time.txt")
secs=$(echo "$wall" | awk -F: '{ s = 0; for (i = 1; i <= NF; i++) s = s * 60 + $i; print s }')
cpu=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)
echo "snapshot: $(cat "$work/snapshot.txt")"
echo "files: $(ls "$work/hf/hub/models--bench--$preset/blobs" | wc -l), requests: $(wc -l <"$work/mock.log")"
awk -v p="$preset" -v n="$shards" -v b="$bytes" -v s="$secs" -v r="$rss_kib" -v cpu="$cpu" -v cores="$(nproc)" \
  'BEGIN { printf "bench_pull: %s BF16 %d shards, %.2f GB in %.1f s = %.0f MB/s, peak RSS %.1f MiB (CPU: %s, %s cores)\n",
           p, n, b / 1e9, s, b / 1e6 / s, r / 1024, cpu, cores }'
grep -E "User time|System time|Percent of CPU" "$work/time.txt"
