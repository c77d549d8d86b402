#!/bin/sh
# bench_daemon.sh - continuous batching: aggregate decode throughput of inferd
# with 1, 2, 4 and 8 concurrent streams on the Qwen2.5-0.5B-shaped model.
#
# usage: bench_daemon.sh INFERD INFERCTL [RUNS]
#   env: INFERD_SHARED, BENCH_MODEL (an existing checkpoint dir; default: made
#        with `inferctl model generate --preset qwen2.5-0.5b --dtype bf16` in
#        a temp dir), BENCH_THREADS (default 2), BENCH_GEN (tokens per stream, 64),
#        BENCH_SIMD (the CPU kernels, --simd: auto, avx2, avx2-vnni, avx512, scalar),
#        BENCH_QUANTIZE (--quantize: none, the default, q4 or q8: quantize a
#        float checkpoint while loading)
#
# A benchmark, not a test: figures move with whatever else the machine does.
set -eu
INFERD=$1
INFERCTL=$2
RUNS=${3:-2}
THREADS=${BENCH_THREADS:-2}
GEN=${BENCH_GEN:-64}
SIMD=${BENCH_SIMD:-auto}
QUANTIZE=${BENCH_QUANTIZE:-none}
SHARED=${INFERD_SHARED:-$(dirname "$0")/../../../shared}
HERE=$(cd "$(dirname "$0")" && pwd)

MODEL=${BENCH_MODEL:-}
if [ -z "$MODEL" ]; then
    TMP=$(mktemp -d /tmp/inferd-bench-daemon.XXXXXX)
    trap 'rm -rf "$TMP"' EXIT
    MODEL=$TMP/qwen2.5-0.5b-bf16
    "$INFERCTL" model generate --preset qwen2.5-0.5b --dtype bf16 \
        --tokenizer-from "$SHARED/models/qwen2-tiny-random" "$MODEL" >&2
fi
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
LOG=$(mktemp /tmp/inferd-bench-daemon-log.XXXXXX)
"$INFERD" --config /dev/null --model "$MODEL" --listen 127.0.0.1:$PORT --threads "$THREADS" --simd "$SIMD" --quantize "$QUANTIZE" \
    --max-sequences 8 --context-length 512 --prefill-chunk 128 --log-level warning 2>"$LOG" &
PID=$!
cleanup() { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; rm -f "$LOG"; }
trap 'cleanup; [ -n "${TMP:-}" ] && rm -rf "$TMP"' EXIT
i=0
until curl -sf "http://127.0.0.1:$PORT/health" >/dev/null; do
    i=$((i + 1))
    if [ $i -gt 600 ] || ! kill -0 "$PID" 2>/dev/null; then cat "$LOG" >&2; exit 1; fi
    sleep 0.2
done
echo "model $MODEL (quantize $QUANTIZE), $THREADS threads, simd $SIMD (CPU: $(grep -m1 -o -w 'avx512f\|avx2' /proc/cpuinfo | sort -u | tr '\n' ' ')), $GEN tokens per stream, best of $RUNS; $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
python3 "$HERE/bench_daemon.py" "$PORT" "$GEN" "$RUNS"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
