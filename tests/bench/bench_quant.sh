#!/bin/sh
# bench_quant.sh - inferd against llama.cpp, side by side in one run on the
# same weights, for every weight format: a Qwen2.5-0.5B-shaped random-weight
# model (BF16) quantized by inferd to MLX affine 4-bit and 8-bit (group 64) and
# by the oracle's hf_to_gguf.py to llama.cpp Q4_0 and Q8_0 (about the same bytes
# per weight); BF16 and F16 checkpoints against llama.cpp's F16 GGUF. Each pair
# runs RUNS times, alternated; the ratio is of the best of each.
# A benchmark, not a test: figures depend on the machine and its load.
#
# usage: tests/bench/bench_quant.sh [BUILD_DIR] [WORK_DIR]
#   BUILD_DIR  meson build directory holding daemon/inferctl (default: build)
#   WORK_DIR   where the checkpoints are made once and kept (default:
#              /tmp/inferd-bench-quant)
# env: ORACLE_HOME (default /root/.cache/inferd-oracle), INFERD_SHARED (the
#      shared dir, for the Qwen tokenizer), THREADS (2), PROMPT (512), GEN (128),
#      RUNS (2), FORMATS ("4 8 4-f16 8-f16 bf16 f16": 4 and 8 quantized from
#      the BF16 checkpoint keep BF16 scales, 4-f16 and 8-f16 from the F16 one
#      F16 scales),
#      SIMD (inferd's CPU kernels, `--simd`: auto, avx2, avx2-vnni, avx512),
#      LLAMA_CPU (llama.cpp's CPU variant, e.g. haswell for AVX2 + FMA + F16C
#      only; default: the best its loader picks for this CPU), so that an
#      AVX-512 machine also measures both engines as an AVX2-only CPU runs them;
#      BW_GBS (read bandwidth for the "% bound" column, GB/s; default: measured
#      with BUILD_DIR/tests/bench/bench_membw THREADS, the best of 5 passes
#      over 1 GiB; "% bound" = decode tok/s x checkpoint bytes / bandwidth).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
BUILD=${1:-build}
WORK=${2:-/tmp/inferd-bench-quant}
ORACLE_HOME=${ORACLE_HOME:-/root/.cache/inferd-oracle}
SHARED=${INFERD_SHARED:-$here/../../../shared}
THREADS=${THREADS:-2}
PROMPT=${PROMPT:-512}
GEN=${GEN:-128}
RUNS=${RUNS:-2}
FORMATS=${FORMATS:-4 8 4-f16 8-f16 bf16 f16}
SIMD=${SIMD:-auto}
LLAMA_CPU=${LLAMA_CPU:-}
BW_GBS=${BW_GBS:-}
INFERCTL=$BUILD/daemon/inferctl
PY=/usr/bin/python3

[ -x "$INFERCTL" ] || { echo "bench_quant: no $INFERCTL (build first)" >&2; exit 1; }
[ -f "$ORACLE_HOME/hf_to_gguf.py" ] || { echo "bench_quant: no oracle in $ORACLE_HOME" >&2; exit 1; }
mkdir -p "$WORK"

# llama.cpp loads the best of its CPU variants (libggml-cpu-*.so) that the
# CPU runs; a copy of the oracle (hard links) with only one of them pins it.
LLAMA_HOME=$ORACLE_HOME
if [ -n "$LLAMA_CPU" ]; then
    LLAMA_HOME=$WORK/oracle-$LLAMA_CPU
    if [ ! -d "$LLAMA_HOME" ]; then
        cp -al "$ORACLE_HOME" "$LLAMA_HOME.tmp"
        found=0
        for f in "$LLAMA_HOME.tmp"/node_modules/@node-llama-cpp/linux-x64/bins/*/libggml-cpu-*.so; do
            case $f in
            */libggml-cpu-$LLAMA_CPU.so) found=1 ;;
            *) rm "$f" ;;
            esac
        done
        [ $found = 1 ] || { rm -rf "$LLAMA_HOME.tmp"; echo "bench_quant: llama.cpp has no CPU variant '$LLAMA_CPU'" >&2; exit 1; }
        mv "$LLAMA_HOME.tmp" "$LLAMA_HOME"
    fi
fi

if [ ! -f "$WORK/bf16/config.json" ]; then
    "$INFERCTL" model generate --preset qwen2.5-0.5b --dtype bf16 \
        --tokenizer-from "$SHARED/models/qwen2-tiny-random" "$WORK/bf16"
fi
need_f16=0
for fmt in $FORMATS; do
    case $fmt in f16 | *-f16) need_f16=1 ;; esac
done
if [ $need_f16 = 1 ] && [ ! -f "$WORK/f16/config.json" ]; then
    # the same shapes, generated as F16 (F16 products, F16 scales)
    "$INFERCTL" model generate --preset qwen2.5-0.5b --dtype f16 \
        --tokenizer-from "$SHARED/models/qwen2-tiny-random" "$WORK/f16"
fi
for fmt in $FORMATS; do
    case $fmt in
    4 | 8 | 4-f16 | 8-f16)
        b=${fmt%-f16}
        src=bf16
        [ "$b" = "$fmt" ] || src=f16
        [ -f "$WORK/mlx$fmt/config.json" ] ||
            "$INFERCTL" model quantize "$WORK/$src" "$WORK/mlx$fmt" --bits "$b" --group-size 64
        q=q${b}_0
        [ -f "$WORK/$q.gguf" ] ||
            $PY "$ORACLE_HOME/hf_to_gguf.py" "$WORK/bf16" "$WORK/$q.gguf" --$q --tok-model gpt2 --pre qwen2 >/dev/null
        ;;
    bf16 | f16)
        [ -f "$WORK/f16.gguf" ] ||
            $PY "$ORACLE_HOME/hf_to_gguf.py" "$WORK/bf16" "$WORK/f16.gguf" --f16 --tok-model gpt2 --pre qwen2 >/dev/null
        ;;
    *) echo "bench_quant: unknown format '$fmt' (4, 8, 4-f16, 8-f16, bf16, f16)" >&2; exit 1 ;;
    esac
done

if [ -z "$BW_GBS" ]; then
    [ -x "$BUILD/tests/bench/bench_membw" ] || { echo "bench_quant: no $BUILD/tests/bench/bench_membw (or set BW_GBS)" >&2; exit 1; }
    BW_GBS=$("$BUILD/tests/bench/bench_membw" "$THREADS" 2>/dev/null)
fi

# The llama.cpp bench's prompt: 1000 + (i * 7919) % 50000.
IDS=$($PY -c "print(','.join(str(1000 + (i * 7919) % 50000) for i in range($PROMPT)))")

flags=$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -x 'avx2\|fma\|f16c\|avx_vnni\|avx512f\|avx512bw\|avx512_vnni\|avx512_bf16' | tr '\n' ' ')
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "CPU features: $flags"
echo "inferd kernels: --simd $SIMD; llama.cpp CPU variant: ${LLAMA_CPU:-its best}"
echo "prompt $PROMPT, generate $GEN, threads $THREADS, best of $RUNS alternated, read bandwidth ($THREADS threads) $BW_GBS GB/s"
printf '%-34s %10s %10s %12s %8s\n' "engine / format" "prefill/s" "decode/s" "MB/token" "% bound"
for fmt in $FORMATS; do
    case $fmt in
    4 | 8) dir=$WORK/mlx$fmt gguf=$WORK/q${fmt}_0.gguf name="MLX $fmt-bit g64 bf16" lname=Q${fmt}_0 ;;
    4-f16 | 8-f16) dir=$WORK/mlx$fmt gguf=$WORK/q${fmt%-f16}_0.gguf name="MLX ${fmt%-f16}-bit g64 f16" lname=Q${fmt%-f16}_0 ;;
    bf16) dir=$WORK/bf16 gguf=$WORK/f16.gguf name=BF16 lname=F16 ;;
    f16) dir=$WORK/f16 gguf=$WORK/f16.gguf name=F16 lname=F16 ;;
    esac
    inferd_bytes=$(cat "$dir"/*.safetensors | wc -c)
    gguf_bytes=$(wc -c <"$gguf")
    runs=""
    i=0
    while [ $i -lt "$RUNS" ]; do
        ij=$("$INFERCTL" run "$dir" --ids "$IDS" -n "$GEN" --threads "$THREADS" --simd "$SIMD" --json)
        lj=$(cd "$LLAMA_HOME" && node llamacpp_bench.mjs "$gguf" "$PROMPT" "$GEN" "$THREADS")
        runs="$runs$ij
$lj
"
        i=$((i + 1))
    done
    printf '%s' "$runs" | $PY -c '
import json, sys
name, lname, ib, gb, bw = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
lines = [json.loads(l) for l in sys.stdin if l.strip()]
ours = [l for l in lines if "timings" in l]
theirs = [l for l in lines if "prefill_tok_s" in l]
ip = max(l["timings"]["prompt_tokens"] / (l["timings"]["prompt_ms"] / 1e3) for l in ours)
idc = max(l["timings"]["generated_tokens"] / (l["timings"]["generated_ms"] / 1e3) for l in ours)
lp = max(l["prefill_tok_s"] for l in theirs)
ld = max(l["decode_tok_s"] for l in theirs)
simd = ours[0].get("simd", "?")
print("%-34s %10.1f %10.1f %12.1f %7.0f%%" % ("inferd %s (%s)" % (name, simd), ip, idc, ib / 1e6, 100 * idc / (bw * 1e9 / ib)))
print("%-34s %10.1f %10.1f %12.1f %7.0f%%" % ("llama.cpp %s" % lname, lp, ld, gb / 1e6, 100 * ld / (bw * 1e9 / gb)))
print("%-34s %9.2fx %9.2fx" % ("ratio inferd/llama", ip / lp, idc / ld))
' "$name" "$lname" "$inferd_bytes" "$gguf_bytes" "$BW_GBS"
done
