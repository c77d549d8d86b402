#!/usr/bin/env python3
"""Aggregate decode throughput of a running inferd with 1, 2, 4 and 8 concurrent
streams (continuous batching). Usage: bench_daemon.py PORT GEN RUNS.

Each stream is a /v1/completions request (16 prompt tokens, GEN generated,
greedy, streaming). Reported per concurrency: generated tokens of all streams
divided by the wall time from the first token of the first stream to the last
token of the last (prefill excluded), the best of RUNS; also the server's own
decode tokens per second of forward-pass time from /metrics."""
import http.client
import json
import sys
import threading
import time

port, gen, runs = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])


def metrics():
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    c.request("GET", "/metrics")
    out = {}
    for line in c.getresponse().read().decode().splitlines():
        if line and not line.startswith("#") and "{" not in line:
            k, v = line.split()
            out[k] = float(v)
    return out


def stream(i, res):
    prompt = [(i * 7919 + k * 104729) % 30000 + 1000 for k in range(16)]
    body = json.dumps({"prompt": prompt, "max_tokens": gen, "temperature": 0, "stream": True})
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    c.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
    r = c.getresponse()
    first = last = None
    ntok = 0
    buf = b""
    while True:
        chunk = r.read1(65536)
        if not chunk:
            break
        buf += chunk
        while b"\n\n" in buf:
            ev, buf = buf.split(b"\n\n", 1)
            if ev.startswith(b"data: {"):
                now = time.perf_counter()
                if first is None:
                    first = now
                last = now
    # The token count comes from a non-streamed usage would need another
    # request: ask the server's counters instead (below); here only times.
    res[i] = (first, last)


def run(n):
    m0 = metrics()
    res = {}
    ts = [threading.Thread(target=stream, args=(i, res)) for i in range(n)]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    m1 = metrics()
    toks = m1["inferd_completion_tokens_total"] - m0["inferd_completion_tokens_total"]
    first = min(f for f, _ in res.values())
    last = max(l for _, l in res.values())
    # Tokens after each stream's first one were produced in [first, last].
    wall_tps = (toks - n) / (last - first)
    steps = m1["inferd_steps_total"] - m0["inferd_steps_total"]
    step_s = m1["inferd_step_seconds_total"] - m0["inferd_step_seconds_total"]
    dec = m1["inferd_decode_tokens_total"] - m0["inferd_decode_tokens_total"]
    return wall_tps, dec / step_s if step_s else 0, toks, steps, last - t0


print("streams  aggregate_tok/s  per_stream_tok/s  server_decode_tok/s  tokens  steps  wall_s")
base = None
for n in (1, 2, 4, 8):
    best = None
    for _ in range(runs):
        r = run(n)
        if best is None or r[0] > best[0]:
            best = r
    wall_tps, srv, toks, steps, wall = best
    base = base or wall_tps
    print("%7d  %15.2f  %16.2f  %19.2f  %6d  %5d  %6.1f   (x%.2f of one stream)" %
          (n, wall_tps, wall_tps / n, srv, toks, steps, wall, wall_tps / base), flush=True)
