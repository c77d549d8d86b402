#!/bin/sh
# bench_grammar.sh - what a JSON Schema constraint costs decode: tokens per
# second with and without response_format json_schema on the
# Qwen2.5-0.5B-shaped model, then the mask's cost per state (bench_grammar).
#
# usage: bench_grammar.sh INFERD INFERCTL BENCH_GRAMMAR [RUNS]
#   env: INFERD_SHARED, BENCH_MODEL (an existing checkpoint dir; default: made
#        with `inferctl model generate --preset qwen2.5-0.5b` in a temp dir),
#        BENCH_THREADS (default 2), BENCH_GEN (tokens per request, 64)
#
# The schemas hold one string that the output stays in: with minLength 1000
# every step is in a bounded-repetition state (each position a new state: the
# mask's costliest walk) and the run decodes as many tokens as the free one;
# the free string is the common case (a random-weight model may close it early).
# Greedy decoding: sampling at a temperature costs the sampler a pass over the
# whole vocabulary per step, which a mask shrinks, and would flatter the
# constrained runs.
# A benchmark, not a test: figures move with whatever else the machine does.
set -eu
INFERD=$1
INFERCTL=$2
BENCH=$3
RUNS=${4:-3}
THREADS=${BENCH_THREADS:-2}
GEN=${BENCH_GEN:-64}
SHARED=${INFERD_SHARED:-$(dirname "$0")/../../../shared}

MODEL=${BENCH_MODEL:-}
TMP=$(mktemp -d /tmp/inferd-bench-grammar.XXXXXX)
if [ -z "$MODEL" ]; then
    MODEL=$TMP/qwen2.5-0.5b
    "$INFERCTL" model generate --preset qwen2.5-0.5b --tokenizer-from "$SHARED/models/qwen2-tiny-random" "$MODEL" >&2
fi
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$INFERD" --config /dev/null --model "$MODEL" --listen 127.0.0.1:$PORT --threads "$THREADS" \
    --max-sequences 1 --context-length 512 --log-level warning 2>"$TMP/log" &
PID=$!
cleanup() { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT
i=0
until curl -sf "http://127.0.0.1:$PORT/health" >/dev/null; do
    i=$((i + 1))
    if [ $i -gt 600 ] || ! kill -0 "$PID" 2>/dev/null; then cat "$TMP/log" >&2; exit 1; fi
    sleep 0.2
done
echo "model $MODEL, $THREADS threads, $GEN tokens per request, best of $RUNS; CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
echo "CPU flags: $(grep -m1 -o -w 'avx512f\|avx512_vnni\|avx_vnni\|avx2\|fma\|f16c' /proc/cpuinfo | sort -u | tr '\n' ' ')(nproc $(nproc), load $(cut -d' ' -f1-3 /proc/loadavg))"
python3 - "$PORT" "$GEN" "$RUNS" <<'PY'
import http.client, json, sys, time
port, gen, runs = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
def schema(string):
    return {"type": "json_schema", "json_schema": {"name": "b", "schema": {
        "type": "object", "properties": {"text": string}, "required": ["text"], "additionalProperties": False}}}

def timed(extra, max_tokens):
    body = {"messages": [{"role": "user", "content": "Write a long story."}], "max_tokens": max_tokens,
            "temperature": 0, **extra}
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.time()
    c.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    r = json.loads(c.getresponse().read())
    t = time.time() - t0
    c.close()
    return t, r["usage"]["completion_tokens"]

def decode_rate(extra):
    """Tokens after the first per second: a full request minus a 1-token one
    (the same prompt and prefill), so neither prefill nor how the text is
    chunked counts."""
    t1, _ = timed(extra, 1)
    tn, n = timed(extra, gen)
    return (n - 1) / max(tn - t1, 1e-9), n

configs = (("unconstrained", {}),
           ("json_schema, string minLength 1000", {"response_format": schema({"type": "string", "minLength": 1000})}),
           ("json_schema, free string", {"response_format": schema({"type": "string"})}))
for _, extra in configs:
    decode_rate(extra)  # warm-up (the first constrained request builds the vocabulary trie)
# interleaved, so that a neighbour's load hits every configuration alike
best = {name: (0.0, 0) for name, _ in configs}
for _ in range(runs):
    for name, extra in configs:
        best[name] = max(best[name], decode_rate(extra))
for name, _ in configs:
    print("%-36s %7.2f tok/s decode (%d tokens)" % (name, best[name][0], best[name][1]))
PY
echo "mask per state on this model's vocabulary:"
"$BENCH" "$MODEL" 100
