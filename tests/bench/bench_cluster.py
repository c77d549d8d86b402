#!/usr/bin/env python3
"""bench_cluster.py - single-stream decode through master + 2 workers on
loopback against a single node, on the Qwen2.5-0.5B-shaped model.

usage: bench_cluster.py INFERD INFERCTL
  env: BENCH_MODEL  existing checkpoint dir (default: generated into BENCH_DIR with
                    `inferctl model generate --preset qwen2.5-0.5b --dtype bf16`)
       BENCH_DIR    work directory (default: a fresh temp dir, removed after)
       BENCH_THREADS threads per process (default 2)
       BENCH_GEN    tokens per timed generation (default 64)
       BENCH_RUNS   repetitions (default 3)
       INFERD_SHARED the shared models/goldens (set by meson; tests/integration/harness.py)

Runs a single node, a chain (master -> w1 -> w2 -> master) and a star
(master <-> w1, master <-> w2) side by side and measures them in turn, RUNS
rounds. Prints decode tok/s (median, min-max) and ratios of medians to single
node, bytes per token on each hop, each worker's first weight push (MiB, wire
MiB, MiB/s), and each worker's peak RSS against the bytes of its layers. A benchmark, not a test:
the figures move with whatever else the machine is doing."""
import json
import os
import shutil
import sys
import tempfile
import time

from bench_util import cluster_key, free_port, qwen_model, request, start, wait_health, wait_port

INFERD, INFERCTL = sys.argv[1], sys.argv[2]
THREADS = os.environ.get("BENCH_THREADS", "2")
GEN = int(os.environ.get("BENCH_GEN", "64"))
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
WORK = os.environ.get("BENCH_DIR") or tempfile.mkdtemp(prefix="inferd-bench-cluster-")
CLEAN = not os.environ.get("BENCH_DIR")
PROMPT = list(range(1000, 1032))


def decode_rate(port):
    """(GEN - 1) decode steps over the time a GEN-token request takes beyond a
    1-token one (prefill and HTTP cost cancel)."""
    body = {"prompt": PROMPT, "temperature": 0}
    t0 = time.time()
    request(port, "POST", "/v1/completions", dict(body, max_tokens=1))
    t1 = time.time()
    st, rn = request(port, "POST", "/v1/completions", dict(body, max_tokens=GEN))
    t2 = time.time()
    n = rn["usage"]["completion_tokens"]
    return (n - 1) / ((t2 - t1) - (t1 - t0))


def cur_rss(pid, field="VmRSS:"):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    return 0


def peak_rss(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def main():
    os.makedirs(WORK, exist_ok=True)
    model = qwen_model(WORK, INFERCTL)
    n_layers = json.load(open(os.path.join(model, "config.json")))["num_hidden_layers"]
    half = n_layers // 2
    common = ["--config", "/dev/null", "--threads", THREADS, "--max-sequences", "1"]
    procs = []
    try:
        key = cluster_key(WORK)
        # All three setups run side by side and are measured in turn, so that
        # the load of this shared machine hits them alike.
        setups = {}
        port = free_port()
        m = start([INFERD, *common, "--model", model, "--listen", "127.0.0.1:%d" % port], os.path.join(WORK, "single.log"))
        procs.append(m)
        setups["single"] = {"port": port, "master": m, "workers": []}
        for topo in ["chain", "star"]:
            wp = [free_port(), free_port()]
            ws = []
            for i in range(2):
                cache = os.path.join(WORK, "cache-%s-%d" % (topo, i))
                shutil.rmtree(cache, ignore_errors=True)  # a full first push
                w = start([INFERD, *common, "--role", "worker", "--listen", "127.0.0.1:%d" % wp[i], "--cache-dir", cache,
                           "--cluster-key-file", key], os.path.join(WORK, "w%d-%s.log" % (i, topo)))
                procs.append(w)
                ws.append(w)
                wait_port(wp[i])
            env = dict(os.environ, INFERD_CLUSTER_TOPOLOGY=topo)
            port = free_port()
            m = start([INFERD, *common, "--model", model, "--listen", "127.0.0.1:%d" % port, "--cluster-key-file", key,
                       "--worker", "127.0.0.1:%d=0-%d" % (wp[0], half - 1),
                       "--worker", "127.0.0.1:%d=%d-%d" % (wp[1], half, n_layers - 1)],
                      os.path.join(WORK, "master-%s.log" % topo), env=env)
            procs.append(m)
            setups[topo] = {"port": port, "master": m, "workers": ws}
        for name, su in setups.items():
            wait_health(su["port"], su["master"])
            request(su["port"], "POST", "/v1/completions", {"prompt": PROMPT, "temperature": 0, "max_tokens": 4})
        rates = {name: [] for name in setups}
        st0 = {n: request(setups[n]["port"], "GET", "/v1/status")[1]["workers"] for n in ("chain", "star")}
        for _ in range(RUNS):
            for name, su in setups.items():
                rates[name].append(decode_rate(su["port"]))
        st1 = {n: request(setups[n]["port"], "GET", "/v1/status")[1]["workers"] for n in ("chain", "star")}
        med = {n: sorted(r)[len(r) // 2] for n, r in rates.items()}
        print("model %s, %d layers; threads per process %s; %d-token greedy generations, %d rounds; load average "
              "%s" % (model, n_layers, THREADS, GEN, RUNS, os.getloadavg()))
        print("| setup | decode tok/s, median (min-max) | ratio of medians to single node |")
        print("|---|---|---|")
        for n, label in [("single", "single node"), ("chain", "master + 2 workers, chain"),
                         ("star", "master + 2 workers, star")]:
            print("| %s | %.2f (%.2f-%.2f) | %.2f |" % (label, med[n], min(rates[n]), max(rates[n]), med[n] / med["single"]))
        per = {}
        for n in ("chain", "star"):
            a, b = st0[n], st1[n]
            toks = b[0]["tokens"] - a[0]["tokens"]
            per[n] = [((b[i]["bytes_sent"] - a[i]["bytes_sent"]) / toks,
                       (b[i]["bytes_received"] - a[i]["bytes_received"]) / toks) for i in range(2)]
        c, s_ = per["chain"], per["star"]
        print("bytes per token (prefill tokens included): chain master->w1 %.0f, w1->master %.0f, master->w2 %.0f, "
              "w2->master %.0f (w1->w2 carries what master->w1 does); star master->w1 %.0f, w1->master %.0f, "
              "master->w2 %.0f, w2->master %.0f" % (c[0][0], c[0][1], c[1][0], c[1][1], s_[0][0], s_[0][1], s_[1][0],
                                                    s_[1][1]))
        print("master RSS now (peak): single node %.0f MiB (%.0f), chain %.0f MiB (%.0f), star %.0f MiB (%.0f)" %
              tuple(x / 1048576 for n in ("single", "chain", "star")
                    for x in (cur_rss(setups[n]["master"].pid), peak_rss(setups[n]["master"].pid))))
        for n in ("chain", "star"):
            for i, w in enumerate(st1[n]):
                p = w["weights"]
                mbps = p["bytes_sent_raw"] / 1048576 / (p["push_ms"] / 1000) if p["push_ms"] else 0
                rss = peak_rss(setups[n]["workers"][i].pid)
                print("%s worker %d: pushed %d tensors, %.1f MiB as %.1f MiB on the wire in %.0f ms (%.0f MiB/s), "
                      "stage built in %.0f ms; peak RSS %.1f MiB for %.1f MiB of weights (%.2fx)" %
                      (n, i + 1, p["tensors"], p["bytes_sent_raw"] / 1048576, p["bytes_sent_wire"] / 1048576,
                       p["push_ms"], mbps, p["load_ms"], rss / 1048576, p["bytes_sent_raw"] / 1048576,
                       rss / max(1, p["bytes_sent_raw"])))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        if CLEAN:
            shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
