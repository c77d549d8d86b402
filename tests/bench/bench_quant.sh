#!/bin/sh
# bench_quant.sh - quantized decode/prefill of inferd against llama.cpp, side by
# side in one run on the same weights: a Qwen2.5-0.5B-shaped random-weight
# model (BF16) quantized by inferd to MLX affine 4-bit and 8-bit (group 64) and
# by the oracle's hf_to_gguf.py to llama.cpp Q4_0 and Q8_0 (about the same bytes
# per weight). Prompt 512 tokens, 128 generated, 2 threads for both.
# A benchmark, not a test: figures depend on the machine and its load.
#
# usage: tests/bench/bench_quant.sh [BUILD_DIR] [WORK_DIR]
#   BUILD_DIR  meson build directory holding daemon/inferctl (default: build)
#   WORK_DIR   where the checkpoints are made once and kept (default:
#              /tmp/inferd-bench-quant)
# env: ORACLE_HOME (default /root/.cache/inferd-oracle), INFERD_SHARED (the
#      shared dir, for the Qwen tokenizer), THREADS (2), PROMPT (512), GEN (128),
#      BW_GBS (read bandwidth used for the bound, GB/s; default 26.8, which is
#      what the issue's bounds of ~97 tok/s at 4-bit and ~52 at 8-bit imply).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
BUILD=${1:-build}
WORK=${2:-/tmp/inferd-bench-quant}
ORACLE_HOME=${ORACLE_HOME:-/root/.cache/inferd-oracle}
SHARED=${INFERD_SHARED:-$here/../../../shared}
THREADS=${THREADS:-2}
PROMPT=${PROMPT:-512}
GEN=${GEN:-128}
BW_GBS=${BW_GBS:-26.8}
INFERCTL=$BUILD/daemon/inferctl
PY=/usr/bin/python3

[ -x "$INFERCTL" ] || { echo "bench_quant: no $INFERCTL (build first)" >&2; exit 1; }
[ -f "$ORACLE_HOME/hf_to_gguf.py" ] || { echo "bench_quant: no oracle in $ORACLE_HOME" >&2; exit 1; }
mkdir -p "$WORK"

if [ ! -f "$WORK/bf16/config.json" ]; then
    "$INFERCTL" model generate --preset qwen2.5-0.5b --dtype bf16 \
        --tokenizer-from "$SHARED/models/qwen2-tiny-random" "$WORK/bf16"
fi
for b in 4 8; do
    [ -f "$WORK/mlx$b/config.json" ] ||
        "$INFERCTL" model quantize "$WORK/bf16" "$WORK/mlx$b" --bits $b --group-size 64
done
for q in q4_0 q8_0; do
    [ -f "$WORK/$q.gguf" ] ||
        $PY "$ORACLE_HOME/hf_to_gguf.py" "$WORK/bf16" "$WORK/$q.gguf" --$q --tok-model gpt2 --pre qwen2 >/dev/null
done

# The llama.cpp bench's prompt: 1000 + (i * 7919) % 50000.
IDS=$($PY -c "print(','.join(str(1000 + (i * 7919) % 50000) for i in range($PROMPT)))")

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "prompt $PROMPT, generate $GEN, threads $THREADS, bandwidth for the bound $BW_GBS GB/s"
printf '%-22s %10s %10s %12s %8s\n' "engine / format" "prefill/s" "decode/s" "MB/token" "% bound"
for pair in "4 q4_0" "8 q8_0"; do
    set -- $pair
    b=$1
    q=$2
    mlx_bytes=$(cat "$WORK/mlx$b"/*.safetensors | wc -c)
    gguf_bytes=$(wc -c <"$WORK/$q.gguf")
    inferd_json=$("$INFERCTL" run "$WORK/mlx$b" --ids "$IDS" -n "$GEN" --threads "$THREADS" --json)
    llama_json=$(node "$ORACLE_HOME/llamacpp_bench.mjs" "$WORK/$q.gguf" "$PROMPT" "$GEN" "$THREADS")
    $PY - "$b" "$q" "$mlx_bytes" "$gguf_bytes" "$BW_GBS" "$inferd_json" "$llama_json" <<'PYEOF'
import json, sys
b, q, mlx_bytes, gguf_bytes, bw = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
t = json.loads(sys.argv[6])["timings"]
ll = json.loads(sys.argv[7])
ip = t["prompt_tokens"] / (t["prompt_ms"] / 1e3)
idc = t["generated_tokens"] / (t["generated_ms"] / 1e3)
lp, ld = ll["prefill_tok_s"], ll["decode_tok_s"]
bound_i = bw * 1e9 / mlx_bytes
bound_l = bw * 1e9 / gguf_bytes
print("%-22s %10.1f %10.1f %12.1f %7.0f%%" % ("inferd MLX %s-bit g64" % b, ip, idc, mlx_bytes / 1e6, 100 * idc / bound_i))
print("%-22s %10.1f %10.1f %12.1f %7.0f%%" % ("llama.cpp %s" % q.upper(), lp, ld, gguf_bytes / 1e6, 100 * ld / bound_l))
print("%-22s %9.2fx %9.2fx" % ("ratio inferd/llama", ip / lp, idc / ld))
PYEOF
done
