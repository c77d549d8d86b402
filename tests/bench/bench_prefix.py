#!/usr/bin/env python3
"""bench_prefix.py - time to first token of each turn of a chat with
[server] prefix_cache on and off, on a single node and through master + 2
workers (a chain), on the Qwen2.5-0.5B-shaped model.

usage: bench_prefix.py INFERD INFERCTL
  env: BENCH_MODEL   existing checkpoint dir (default: generated into BENCH_DIR with
                     `inferctl model generate --preset qwen2.5-0.5b --dtype bf16`)
       BENCH_DIR     work directory (default: a fresh temp dir, removed after)
       BENCH_THREADS threads per process (default 2)
       BENCH_TURNS   turns of the chat (default 10)
       BENCH_GEN     tokens generated per turn (default 16)
       INFERD_SHARED the shared models/goldens (set by meson; tests/integration/harness.py)

Each turn is a streamed /v1/chat/completions request that repeats the
conversation so far, as chat clients do, with max_tokens BENCH_GEN and the
end-of-text tokens banned by logit_bias (random weights: every reply is
BENCH_GEN tokens long). The two daemons of a setup (prefix_cache on, off)
run side by side and take each turn in turn, so that the load of a shared
machine hits them alike. TTFT is measured by the client: from sending the
request to the first chunk with content. A benchmark, not a test: the
figures move with whatever else the machine is doing."""
import http.client
import json
import os
import platform
import shutil
import sys
import tempfile
import time

from bench_util import cluster_key, free_port, qwen_model, start, wait_health, wait_port

INFERD, INFERCTL = sys.argv[1], sys.argv[2]
THREADS = os.environ.get("BENCH_THREADS", "2")
TURNS = int(os.environ.get("BENCH_TURNS", "10"))
GEN = int(os.environ.get("BENCH_GEN", "16"))
WORK = os.environ.get("BENCH_DIR") or tempfile.mkdtemp(prefix="inferd-bench-prefix-")
CLEAN = not os.environ.get("BENCH_DIR")
SYSTEM = ("You are a careful assistant for a small engineering team. Answer in short paragraphs, name the "
          "assumptions you make, and say when a question cannot be answered from what you were told.")


def user_message(i):
    """A different question of about 40 tokens per turn."""
    topics = ["the build", "the test suite", "the release notes", "the cache", "the scheduler", "the workers",
              "the weights", "the tokenizer", "the metrics", "the documentation"]
    return ("Turn %d. We changed %s yesterday and two people disagree about whether the change is safe. "
            "List what you would check first, in order, and what each check would tell us about %s." %
            (i + 1, topics[i % len(topics)], topics[i % len(topics)]))


def end_tokens(model):
    """The ids a reply could end on (config.json's eos and the chat end
    tokens), banned so that every turn generates GEN tokens."""
    cfg = json.load(open(os.path.join(model, "config.json")))
    eos = cfg.get("eos_token_id")
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    tok = json.load(open(os.path.join(model, "tokenizer.json")))
    for t in tok.get("added_tokens", []):
        if t["content"] in ("<|im_end|>", "<|endoftext|>"):
            ids.add(t["id"])
    return {str(i): -100 for i in ids}


def chat_turn(port, messages, bias):
    """One streamed turn: (text, seconds to the first content chunk, seconds in
    all, usage)."""
    body = {"messages": messages, "max_tokens": GEN, "temperature": 0, "logit_bias": bias, "stream": True,
            "stream_options": {"include_usage": True}}
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.time()
    c.request("POST", "/v1/chat/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        sys.exit("turn failed: %d %s" % (r.status, r.read()[:300]))
    text, ttft, usage = "", None, None
    for line in r:
        line = line.strip()
        if not line.startswith(b"data: ") or line == b"data: [DONE]":
            continue
        ev = json.loads(line[6:])
        if ev.get("usage"):
            usage = ev["usage"]
        for ch in ev.get("choices", []):
            piece = ch.get("delta", {}).get("content") or ""
            if (piece or ch.get("finish_reason")) and ttft is None:
                ttft = time.time() - t0
            text += piece
    total = time.time() - t0
    c.close()
    return text, ttft, total, usage


def cpu_info():
    name, flags = platform.processor() or "?", []
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name") and name in ("?", "", platform.machine()):
                name = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                have = line.split(":", 1)[1].split()
                flags = [x for x in ("sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw",
                                     "avx512vl", "avx512_vnni", "avx512_bf16") if x in have]
                break
    return name, flags


def run_setup(label, ports, procs, bias):
    """Runs the chat on the (on, off) pair, turn by turn. Returns the rows."""
    for port, p in zip(ports, procs):
        wait_health(port, p)
        # warm-up: first-use costs (pages of the weights, scratch) out of turn 1
        chat_turn(port, [{"role": "user", "content": "warm up"}], bias)
    convs = [[{"role": "system", "content": SYSTEM}] for _ in ports]
    rows = []
    for t in range(TURNS):
        row = {"turn": t + 1}
        for k, port in enumerate(ports):
            convs[k].append({"role": "user", "content": user_message(t)})
            text, ttft, total, usage = chat_turn(port, convs[k], bias)
            convs[k].append({"role": "assistant", "content": text})
            row[k] = (ttft, total, usage["prompt_tokens"], usage.get("prompt_tokens_details", {}).get("cached_tokens"),
                      text)
        row["same"] = row[0][4] == row[1][4]
        rows.append(row)
    print("\n%s: %d turns, %d tokens generated a turn" % (label, TURNS, GEN))
    print("| turn | prompt tokens | cached (on) | TTFT on, s | TTFT off, s | off / on | same text |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        on, off = r[0], r[1]
        print("| %d | %d | %s | %.3f | %.3f | %.2f | %s |" % (r["turn"], on[2], on[3], on[0], off[0], off[0] / on[0],
                                                           "yes" if r["same"] else "NO"))
    s_on, s_off = sum(r[0][0] for r in rows), sum(r[1][0] for r in rows)
    print("| all | | | %.3f | %.3f | %.2f | |" % (s_on, s_off, s_off / s_on))
    return rows


def main():
    os.makedirs(WORK, exist_ok=True)
    model = qwen_model(WORK, INFERCTL)
    n_layers = json.load(open(os.path.join(model, "config.json")))["num_hidden_layers"]
    half = n_layers // 2
    off = os.path.join(WORK, "prefix-off.conf")
    with open(off, "w") as f:
        f.write("[server]\nprefix_cache = false\n")
    confs = ["/dev/null", off]
    common = ["--threads", THREADS, "--max-sequences", "2", "--context-length", "2048"]
    bias = end_tokens(model)
    name, flags = cpu_info()
    print("CPU %s, %d cores online, SIMD flags: %s; load average %s" % (name, os.cpu_count(), " ".join(flags),
                                                                       os.getloadavg()))
    print("model %s, %d layers; threads per process %s" % (model, n_layers, THREADS))
    procs = []
    try:
        ports = [free_port(), free_port()]
        pair = [start([INFERD, "--config", confs[k], *common, "--model", model, "--listen", "127.0.0.1:%d" % ports[k]],
                      os.path.join(WORK, "single-%d.log" % k)) for k in range(2)]
        procs += pair
        run_setup("single node", ports, pair, bias)
        for p in pair:
            p.kill()
            p.wait()

        key = cluster_key(WORK)
        ports, masters = [], []
        for k in range(2):
            wp = [free_port(), free_port()]
            for i in range(2):
                cache = os.path.join(WORK, "cache-%d-%d" % (k, i))
                procs.append(start([INFERD, "--config", "/dev/null", *common, "--role", "worker", "--listen",
                                    "127.0.0.1:%d" % wp[i], "--cache-dir", cache, "--cluster-key-file", key],
                                   os.path.join(WORK, "w%d-%d.log" % (i, k))))
                wait_port(wp[i])
            port = free_port()
            m = start([INFERD, "--config", confs[k], *common, "--model", model, "--listen", "127.0.0.1:%d" % port,
                       "--cluster-key-file", key, "--worker", "127.0.0.1:%d=0-%d" % (wp[0], half - 1),
                       "--worker", "127.0.0.1:%d=%d-%d" % (wp[1], half, n_layers - 1)],
                      os.path.join(WORK, "master-%d.log" % k))
            procs.append(m)
            ports.append(port)
            masters.append(m)
        run_setup("master + 2 workers (chain)", ports, masters, bias)
        print("\nload average after: %s" % (os.getloadavg(),))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        if CLEAN:
            shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
