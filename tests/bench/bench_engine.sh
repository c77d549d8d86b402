#!/bin/sh
# bench_engine.sh - inferd's CPU engine against llama.cpp, side by side in one
# run, on the same Qwen2.5-0.5B-shaped random weights.
#
# usage: bench_engine.sh BENCH_ENGINE INFERCTL [RUNS]
#   env: ORACLE_HOME (default /root/.cache/inferd-oracle), INFERD_SHARED,
#        BENCH_DIR (work directory, default a fresh temp dir, removed after),
#        BENCH_THREADS (default 2), BENCH_PROMPT (512), BENCH_GEN (128)
#
# Makes the checkpoint with `inferctl model generate --preset qwen2.5-0.5b
# --dtype bf16`, converts it to an F16 GGUF with the oracle's hf_to_gguf.py,
# then alternates llama.cpp (llamacpp_bench.mjs) and inferd (bench_engine)
# RUNS times and prints each pair with the ratios. A benchmark, not a test:
# figures move with whatever else the machine is doing.
set -eu

BENCH_ENGINE=$1
INFERCTL=$2
RUNS=${3:-3}
ORACLE_HOME=${ORACLE_HOME:-/root/.cache/inferd-oracle}
THREADS=${BENCH_THREADS:-2}
PROMPT=${BENCH_PROMPT:-512}
GEN=${BENCH_GEN:-128}
SHARED=${INFERD_SHARED:-$(dirname "$0")/../../../shared}

if [ -z "${BENCH_DIR:-}" ]; then
    BENCH_DIR=$(mktemp -d /tmp/inferd-bench-engine.XXXXXX)
    trap 'rm -rf "$BENCH_DIR"' EXIT
fi
MODEL=$BENCH_DIR/qwen2.5-0.5b-bf16
GGUF=$BENCH_DIR/qwen2.5-0.5b-f16.gguf

if [ ! -f "$MODEL/model.safetensors" ]; then
    "$INFERCTL" model generate --preset qwen2.5-0.5b --dtype bf16 \
        --tokenizer-from "$SHARED/models/qwen2-tiny-random" "$MODEL" >&2
fi
if [ ! -f "$GGUF" ]; then
    /usr/bin/python3 "$ORACLE_HOME/hf_to_gguf.py" "$MODEL" "$GGUF" --f16 --tok-model gpt2 --pre qwen2 >&2
fi

echo "# inferd $(basename "$BENCH_ENGINE") vs llama.cpp (node-llama-cpp), prompt $PROMPT, gen $GEN, $THREADS threads"
echo "# run  llama_prefill  llama_decode  inferd_prefill  inferd_decode  prefill_ratio  decode_ratio  bw_GB/s  bound_tok/s  decode_%bound"
i=1
while [ "$i" -le "$RUNS" ]; do
    L=$(node "$ORACLE_HOME/llamacpp_bench.mjs" "$GGUF" "$PROMPT" "$GEN" "$THREADS" | tail -n 1)
    I=$("$BENCH_ENGINE" "$MODEL" "$PROMPT" "$GEN" "$THREADS" | tail -n 1)
    /usr/bin/python3 - "$i" "$L" "$I" <<'PY'
import json, sys
run, l, i = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
print("%5s  %13.1f  %12.1f  %14.1f  %13.1f  %13.2f  %12.2f  %7.1f  %11.1f  %13.1f" % (
    run, l["prefill_tok_s"], l["decode_tok_s"], i["prefill_tok_s"], i["decode_tok_s"],
    i["prefill_tok_s"] / l["prefill_tok_s"], i["decode_tok_s"] / l["decode_tok_s"],
    i["read_bw_gb_s"], i["bw_bound_tok_s"], i["decode_pct_of_bound"]))
PY
    i=$((i + 1))
done
