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

Prints: decode tok/s single node, chain (master -> w1 -> w2 -> master) and
star (master <-> w1, master <-> w2), their ratios to single node, bytes per
token on each hop, the first weight push (MiB, wire MiB, MiB/s), and each
worker's peak RSS against the bytes of its layers. A benchmark, not a test:
the figures move with whatever else the machine is doing."""
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

INFERD, INFERCTL = sys.argv[1], sys.argv[2]
THREADS = os.environ.get("BENCH_THREADS", "2")
GEN = int(os.environ.get("BENCH_GEN", "64"))
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
SHARED = os.environ.get("INFERD_SHARED", os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared"))
WORK = os.environ.get("BENCH_DIR") or tempfile.mkdtemp(prefix="inferd-bench-cluster-")
CLEAN = not os.environ.get("BENCH_DIR")
PROMPT = list(range(1000, 1032))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def start(args, log, env=None):
    return subprocess.Popen(args, stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env)


def request(port, method, path, body=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    c.request(method, path, body=json.dumps(body) if body else None,
              headers={"Content-Type": "application/json"} if body else {})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, json.loads(data) if data else None


def wait_health(port, proc, timeout=600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit("process exited (%d)" % proc.returncode)
        try:
            if request(port, "GET", "/health")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    sys.exit("not ready")


def wait_port(port):
    for _ in range(600):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit("worker did not listen")


def decode_rate(port):
    """Best of RUNS: (GEN - 1) decode steps over the time a GEN-token request
    takes beyond a 1-token one (prefill and HTTP cost cancel)."""
    body = {"prompt": PROMPT, "temperature": 0}
    request(port, "POST", "/v1/completions", dict(body, max_tokens=4))  # warm up
    best = 0.0
    for _ in range(RUNS):
        t0 = time.time()
        st, r1 = request(port, "POST", "/v1/completions", dict(body, max_tokens=1))
        t1 = time.time()
        st, rn = request(port, "POST", "/v1/completions", dict(body, max_tokens=GEN))
        t2 = time.time()
        n = rn["usage"]["completion_tokens"]
        rate = (n - 1) / ((t2 - t1) - (t1 - t0))
        best = max(best, rate)
    return best


def peak_rss(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def main():
    os.makedirs(WORK, exist_ok=True)
    model = os.environ.get("BENCH_MODEL")
    if not model:
        model = os.path.join(WORK, "qwen2.5-0.5b-bf16")
        if not os.path.exists(os.path.join(model, "model.safetensors")):
            subprocess.run([INFERCTL, "model", "generate", "--preset", "qwen2.5-0.5b", "--dtype", "bf16",
                            "--tokenizer-from", os.path.join(SHARED, "models", "qwen2-tiny-random"), model], check=True)
    n_layers = json.load(open(os.path.join(model, "config.json")))["num_hidden_layers"]
    half = n_layers // 2
    common = ["--config", "/dev/null", "--threads", THREADS, "--max-sequences", "1"]
    procs = []
    try:
        # Single node.
        port = free_port()
        m = start([INFERD, *common, "--model", model, "--listen", "127.0.0.1:%d" % port], os.path.join(WORK, "single.log"))
        procs.append(m)
        wait_health(port, m)
        single = decode_rate(port)
        m.terminate()
        m.wait()

        key = os.path.join(WORK, "cluster.key")
        with open(key, "w") as f:
            f.write(os.urandom(32).hex())
        os.chmod(key, 0o600)
        results = {}
        for topo in ["chain", "star"]:
            wp = [free_port(), free_port()]
            ws = []
            for i in range(2):
                cache = os.path.join(WORK, "cache-%d" % i)
                if topo == "chain":
                    shutil.rmtree(cache, ignore_errors=True)  # the first push is a full one
                w = start([INFERD, *common, "--role", "worker", "--listen", "127.0.0.1:%d" % wp[i], "--cache-dir", cache,
                           "--cluster-key-file", key], os.path.join(WORK, "w%d-%s.log" % (i, topo)))
                procs.append(w)
                ws.append(w)
                wait_port(wp[i])
            env = dict(os.environ, INFERD_CLUSTER_TOPOLOGY=topo)
            port = free_port()
            mlog = os.path.join(WORK, "master-%s.log" % topo)
            t0 = time.time()
            m = start([INFERD, *common, "--model", model, "--listen", "127.0.0.1:%d" % port, "--cluster-key-file", key,
                       "--worker", "127.0.0.1:%d=0-%d" % (wp[0], half - 1),
                       "--worker", "127.0.0.1:%d=%d-%d" % (wp[1], half, n_layers - 1)], mlog, env=env)
            procs.append(m)
            wait_health(port, m)
            ready_s = time.time() - t0
            st0 = request(port, "GET", "/v1/status")[1]["workers"]
            rate = decode_rate(port)
            st1 = request(port, "GET", "/v1/status")[1]["workers"]
            toks = st1[0]["tokens"] - st0[0]["tokens"]
            res = {"rate": rate, "ready_s": ready_s,
                   "m_w1": (st1[0]["bytes_sent"] - st0[0]["bytes_sent"]) / toks,
                   "w1_m": (st1[0]["bytes_received"] - st0[0]["bytes_received"]) / toks,
                   "m_w2": (st1[1]["bytes_sent"] - st0[1]["bytes_sent"]) / toks,
                   "w2_m": (st1[1]["bytes_received"] - st0[1]["bytes_received"]) / toks,
                   "weights": [w.get("weights") for w in st1],
                   "rss": [peak_rss(w.pid) for w in ws]}
            results[topo] = res
            for p in [m, *ws]:
                p.terminate()
                p.wait()
        c, s = results["chain"], results["star"]
        print("model %s, %d layers; threads per process %s; %d-token greedy generations, best of %d" %
              (model, n_layers, THREADS, GEN, RUNS))
        print("| setup | decode tok/s | ratio to single node |")
        print("|---|---|---|")
        print("| single node | %.2f | 1.00 |" % single)
        print("| master + 2 workers, chain | %.2f | %.2f |" % (c["rate"], c["rate"] / single))
        print("| master + 2 workers, star | %.2f | %.2f |" % (s["rate"], s["rate"] / single))
        print("bytes per decoded token: chain master->w1 %.0f, w1->w2 (not seen by the master) ~%.0f, w2->master %.0f; "
              "star master->w1 %.0f, w1->master %.0f, master->w2 %.0f, w2->master %.0f" %
              (c["m_w1"], c["m_w1"], c["w2_m"], s["m_w1"], s["w1_m"], s["m_w2"], s["w2_m"]))
        for i, w in enumerate(c["weights"]):
            mbps = w["bytes_sent_raw"] / 1048576 / (w["push_ms"] / 1000) if w["push_ms"] else 0
            print("worker %d first push: %d tensors, %.1f MiB as %.1f MiB on the wire in %.0f ms (%.0f MiB/s), "
                  "stage built in %.0f ms; peak RSS %.1f MiB for %.1f MiB of weights (%.2fx)" %
                  (i + 1, w["tensors"], w["bytes_sent_raw"] / 1048576, w["bytes_sent_wire"] / 1048576, w["push_ms"],
                   mbps, w["load_ms"], c["rss"][i] / 1048576, w["bytes_sent_raw"] / 1048576,
                   c["rss"][i] / max(1, w["bytes_sent_raw"])))
        for i, w in enumerate(s["weights"]):
            print("worker %d restart with its cache (star run): %d tensors sent, %d cached, push %.0f ms" %
                  (i + 1, w["tensors_sent"], w["tensors_cached"], w["push_ms"]))
        print("master ready after %.1f s (first push) / %.1f s (cached)" % (c["ready_s"], s["ready_s"]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        if CLEAN:
            shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
