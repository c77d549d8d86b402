#!/usr/bin/env python3
"""bench_pipeline.py - aggregate decode throughput of 16 concurrent streams
through master + 2 workers on loopback, pipelined micro-batches
(`[cluster] micro_batches = auto`, here 3: two workers and the master's head)
against one synchronous batch (`micro_batches = 1`), on the
Qwen2.5-0.5B-shaped model.

usage: bench_pipeline.py INFERD INFERCTL
  env: BENCH_MODEL   existing checkpoint dir (default: generated into BENCH_DIR with
                     `inferctl model generate --preset qwen2.5-0.5b --dtype bf16`)
       BENCH_DIR     work directory (default: a fresh temp dir, removed after)
       BENCH_STREAMS concurrent streams (default 16)
       BENCH_GEN     tokens per stream (default 32)
       BENCH_RUNS    rounds, each measuring both settings (default 3)
       BENCH_MICRO_BATCHES  the setting measured against 1 (default auto)
       BENCH_LINK    'loopback' (default) or 'slow': a user-space TCP relay in
                     front of each worker (every chunk 1 ms late, paced to
                     1 Gbit/s), so that every hop of the chain (master -> w1,
                     w1 -> w2, w2 -> master) is slowed; the master is given
                     the relays' addresses. (The kernel here has no sch_netem.)
       INFERD_SHARED the shared models (set by meson)

Worker 1 runs pinned to CPU 0 and worker 2 to CPU 1 (`taskset`), each with
one thread; the master (one thread, the head and the sampling) is not pinned.
The workers stay up; each round starts a master with each setting in turn
(the workers' tensor caches make the second push cheap). Prints the CPU and
its SIMD flags, decode tok/s of each setting (median, min-max), their ratio,
and the bytes per decoded token on each hop from /v1/status. A benchmark, not
a test: on a shared machine the figures are noisy."""
import asyncio
import json
import os
import shutil
import sys
import tempfile
import threading
import time

from bench_util import cluster_key, free_port, qwen_model, request, start, wait_health, wait_port

RELAY_DELAY_S = 0.001
RELAY_BYTES_PER_S = 1e9 / 8


# ---------------------------------------------------------------- the relay


async def relay_pipe(reader, writer):
    """Copies one direction: each chunk leaves 1 ms after it came, and no
    sooner than the 1 Gbit/s pacing of the chunks before it allows."""
    loop = asyncio.get_running_loop()
    q = asyncio.Queue()

    async def sender():
        free_at = 0.0
        while True:
            due, data = await q.get()
            if data is None:
                break
            start = max(due, free_at)
            free_at = start + len(data) / RELAY_BYTES_PER_S
            delay = free_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            writer.write(data)
            await writer.drain()
        writer.close()

    task = asyncio.create_task(sender())
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            q.put_nowait((loop.time() + RELAY_DELAY_S, data))
    except ConnectionError:
        pass
    q.put_nowait((0, None))
    try:
        await task
    except ConnectionError:
        pass


async def relay_main(listen_port, target_port):
    async def on_conn(r1, w1):
        try:
            r2, w2 = await asyncio.open_connection("127.0.0.1", target_port)
        except OSError:
            w1.close()
            return
        await asyncio.gather(relay_pipe(r1, w2), relay_pipe(r2, w1), return_exceptions=True)

    server = await asyncio.start_server(on_conn, "127.0.0.1", listen_port)
    async with server:
        await server.serve_forever()


# ---------------------------------------------------------------- the bench


def concurrent(port, n_streams, max_tokens):
    """Runs n_streams greedy requests at once; returns (seconds, completion tokens)."""
    out = [None] * n_streams

    def one(i):
        # distinct prompts, so that no stream is a copy of another
        body = {"prompt": list(range(1000 + 40 * i, 1032 + 40 * i)), "temperature": 0, "max_tokens": max_tokens}
        out[i] = request(port, "POST", "/v1/completions", body)

    ts = [threading.Thread(target=one, args=(i,)) for i in range(n_streams)]
    t0 = time.time()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    dt = time.time() - t0
    for st, r in out:
        if st != 200:
            sys.exit("request failed: %s %s" % (st, r))
    return dt, sum(r["usage"]["completion_tokens"] for _, r in out), [r["choices"][0]["text"] for _, r in out]


def cpu_seconds(pid):
    """User + system CPU seconds of a process so far (/proc/PID/stat)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_info():
    model, flags = "?", []
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name") and model == "?":
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = [x for x in line.split(":", 1)[1].split()
                         if x.startswith(("avx", "fma", "f16c", "sse4", "amx", "vnni"))]
    return model, " ".join(sorted(flags))


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--relay":
        asyncio.run(relay_main(int(sys.argv[2]), int(sys.argv[3])))
        return
    inferd, inferctl = sys.argv[1], sys.argv[2]
    streams = int(os.environ.get("BENCH_STREAMS", "16"))
    gen = int(os.environ.get("BENCH_GEN", "32"))
    runs = int(os.environ.get("BENCH_RUNS", "3"))
    link = os.environ.get("BENCH_LINK", "loopback")
    piped = os.environ.get("BENCH_MICRO_BATCHES", "auto")
    if link not in ("loopback", "slow"):
        sys.exit("BENCH_LINK must be loopback or slow")
    work = os.environ.get("BENCH_DIR") or tempfile.mkdtemp(prefix="inferd-bench-pipeline-")
    clean = not os.environ.get("BENCH_DIR")
    os.makedirs(work, exist_ok=True)
    model = qwen_model(work, inferctl)
    n_layers = json.load(open(os.path.join(model, "config.json")))["num_hidden_layers"]
    half = n_layers // 2
    procs = []
    try:
        key = cluster_key(work)
        addrs, workers = [], []
        for i in range(2):
            wp = free_port()
            cache = os.path.join(work, "cache-w%d" % i)
            procs.append(start(["taskset", "-c", str(i), inferd, "--config", "/dev/null", "--role", "worker",
                                "--threads", "1", "--listen", "127.0.0.1:%d" % wp, "--cache-dir", cache,
                                "--cluster-key-file", key], os.path.join(work, "w%d.log" % i)))
            workers.append(procs[-1])
            wait_port(wp)
            if link == "slow":
                rp = free_port()
                procs.append(start([sys.executable, os.path.abspath(__file__), "--relay", str(rp), str(wp)],
                                   os.path.join(work, "relay%d.log" % i)))
                wait_port(rp)
                wp = rp
            addrs.append("127.0.0.1:%d" % wp)

        def run_master(setting):
            port = free_port()
            m = start([inferd, "--config", "/dev/null", "--model", model, "--listen", "127.0.0.1:%d" % port,
                       "--threads", "1", "--max-sequences", str(streams), "--cluster-key-file", key,
                       "--micro-batches", setting, "--worker", "%s=0-%d" % (addrs[0], half - 1),
                       "--worker", "%s=%d-%d" % (addrs[1], half, n_layers - 1)],
                      os.path.join(work, "master-%s.log" % setting))
            try:
                wait_health(port, m)
                concurrent(port, streams, 2)  # warm up
                s0 = request(port, "GET", "/v1/status")[1]
                # Prefill and HTTP cost cancel: decode steps over the time a
                # gen-token round takes beyond a 1-token one.
                t1, _, _ = concurrent(port, streams, 1)
                c0 = [cpu_seconds(p.pid) for p in (m, *workers)]
                t2, n, texts = concurrent(port, streams, gen)
                cpu = [b - a for a, b in zip(c0, [cpu_seconds(p.pid) for p in (m, *workers)])]
                s1 = request(port, "GET", "/v1/status")[1]
                rate = (n - streams) / (t2 - t1)
                w0a, w0b = s0["workers"][0], s1["workers"][0]
                w1a, w1b = s0["workers"][1], s1["workers"][1]
                toks = w0b["tokens"] - w0a["tokens"]
                hops = ((w0b["bytes_sent"] - w0a["bytes_sent"]) / toks,
                        (w1b["bytes_received"] - w1a["bytes_received"]) / toks)
                return rate, s1["micro_batches"], hops, texts, (t2, cpu)
            finally:
                m.terminate()
                m.wait()

        rates = {piped: [], "1": []}
        depth, hops, texts, usage = {}, {}, {}, {}
        for _ in range(runs):
            for setting in rates:
                r, depth[setting], hops[setting], texts[setting], usage[setting] = run_master(setting)
                rates[setting].append(r)
        med = {k: sorted(v)[len(v) // 2] for k, v in rates.items()}
        cpu, simd = cpu_info()
        print("CPU: %s; SIMD: %s; %d cores; load average %s" % (cpu, simd, os.cpu_count(), os.getloadavg()))
        print("model %s, %d layers split %d + %d over two workers pinned to CPUs 0 and 1, 1 thread each; link %s; "
              "%d concurrent streams x %d tokens; %d rounds" % (model, n_layers, half, n_layers - half, link, streams,
                                                                gen, runs))
        print("| micro_batches | in flight | aggregate decode tok/s, median (min-max) |")
        print("|---|---|---|")
        for k in ("1", piped):
            print("| %s | %d | %.2f (%.2f-%.2f) |" % (k, depth[k], med[k], min(rates[k]), max(rates[k])))
        print("ratio of medians %s / 1: %.2fx" % (piped, med[piped] / med["1"]))
        for k in ("1", piped):
            print("micro_batches %s: bytes per token (prefill included) master->w1 %.0f, w2->master %.0f "
                  "(w1->w2 carries what master->w1 does)" % (k, hops[k][0], hops[k][1]))
        for k in ("1", piped):
            wall, cpu = usage[k]
            print("micro_batches %s, last %d-token round: %.2f s wall; CPU s master %.2f, w1 %.2f, w2 %.2f "
                  "(%.2f of the %d cores busy)" % (k, gen, wall, cpu[0], cpu[1], cpu[2], sum(cpu) / wall,
                                                    os.cpu_count()))
        print("same text with %s and 1: %s" % (piped, texts[piped] == texts["1"]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        if clean:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
