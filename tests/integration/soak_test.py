#!/usr/bin/env python3
"""Soak of a cluster (issue 12): 64 clients for 10 minutes of mixed streaming
and non-streaming chat and completion requests against a master with two
workers on loopback (tinystories-656k), each client from its own loopback
address (127.0.2.N, as 64 hosts), with random client disconnects and one
worker restart (SIGKILL, then the same port and cache) in the middle.

Usage: soak_test.py INFERD_BINARY [SECONDS]   (default $SOAK_SECONDS or 600)

Asserts:
- every request that finished (200 and, when streamed, no error event) is
  token-for-token the output of the same request computed first, alone, on the
  idle cluster (greedy, temperature 0);
- requests that did not finish did so only while the worker was down (503 or
  an error event naming a worker), or because the client hung up on purpose;
- the restart is a failover: the master moves the killed worker's layer
  (to itself: no standby, and its memory holds it) and the worker comes back
  as a standby holding nothing, so the layout changes in the middle; the
  leak checks therefore compare each half of the load with an idle reading
  taken at its start (clients paused): after the warm-up, and after the
  failover;
- fds and threads of every process, idle after each half, are exactly their
  values idle at its start (nothing may be left behind);
- RSS of each process idle after each half is within 10 % + 16 MiB of its
  value idle at its start (the warm-up has had every slot, the KV cache
  and the allocator arenas of 64 client connections in use already, so what
  grows beyond that margin over the run is a leak);
- a 429 (queue full) is an answer, not a failure: clients that hung up leave
  their request queued until it runs, so 64 clients can exceed the 64 places.
Prints the counts and the figures for docs/security.md."""
import http.client
import json
import os
import random
import signal
import sys
import threading
import time

import cluster_test as ct
from harness import FAILURES, MODELS, alloc_port, check, proc_counts

ct.free_port = alloc_port  # see alloc_port: no port race with other tests' connections

CLIENTS = 64
PROMPTS = ["Once upon a time", "The little dog", "Tom and Sue went to the park", "One day, a cat",
           "Lily had a red ball", "The sun was hot", "A big bird flew", "Ben liked to run"]
KINDS = ["complete", "complete-stream", "chat", "chat-stream"]
MAX_TOKENS = [8, 24, 40]


def request(port, kind, prompt, n, hang_up=False, timeout=120, source="127.0.0.1"):
    """One request from address `source`: ("done", text) | ("error", why) |
    ("hung-up", None)."""
    chat = kind.startswith("chat")
    streamed = kind.endswith("stream")
    body = {"max_tokens": n, "temperature": 0, "stream": streamed}
    if chat:
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout, source_address=(source, 0))
    try:
        c.request("POST", "/v1/chat/completions" if chat else "/v1/completions", body=json.dumps(body),
                  headers={"Content-Type": "application/json"})
        if hang_up and not streamed:
            return "hung-up", None  # gone before the answer
        r = c.getresponse()
        if r.status != 200:
            return "error", "%d %s" % (r.status, r.read()[:200])
        if not streamed:
            ch = json.loads(r.read())["choices"][0]
            return "done", ch["message"]["content"] if chat else ch["text"]
        text, events = "", 0
        while True:
            line = r.readline()
            if not line:
                return "error", "stream ended without [DONE]"
            if not line.startswith(b"data: "):
                continue
            if line.strip() == b"data: [DONE]":
                return "done", text
            ev = json.loads(line[6:])
            if "error" in ev:
                return "error", json.dumps(ev["error"])
            events += 1
            for ch in ev.get("choices", []):
                text += (ch.get("delta", {}).get("content") if chat else ch.get("text")) or ""
            if hang_up and events >= 2:
                return "hung-up", None  # gone in the middle of the stream
    except (OSError, http.client.HTTPException, ValueError) as e:
        return "error", repr(e)
    finally:
        c.close()


def sample(procs):
    return {name: proc_counts(p.proc.pid) for name, p in procs.items()}


def idle_sample(procs, running, busy, lock, want=None, timeout=60):
    """Pauses the clients; once no request is open, the (fds, threads, RSS)
    of each process when two readings 1 s apart agree on fds and threads (or
    equal want's)."""
    running.clear()
    deadline = time.time() + timeout
    while time.time() < deadline:
        with lock:
            if busy[0] == 0:
                break
        time.sleep(0.1)
    last = None
    while True:
        now = sample(procs)
        same = {k: v[:2] for k, v in now.items()} == ({k: v[:2] for k, v in want.items()} if want else
                                                        last and {k: v[:2] for k, v in last.items()})
        if same or time.time() > deadline:
            return now
        last = now
        time.sleep(1)


def check_idle(before, after, half):
    """Nothing left behind over one half of the load (see the docstring)."""
    for name in before:
        check(after[name][:2] == before[name][:2], "%s (fds, threads) %s after the %s half, %s at its start" %
              (name, after[name][:2], half, before[name][:2]))
        limit = before[name][2] * 1.10 + 16 * 1024
        check(after[name][2] <= limit, "%s RSS %d KiB after the %s half, %d KiB at its start (limit %d)" %
              (name, after[name][2], half, before[name][2], limit))


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    binary = sys.argv[1]
    seconds = float(sys.argv[2] if len(sys.argv) == 3 else os.environ.get("SOAK_SECONDS", "600"))
    key = ct.key_file("soak.key")
    model = os.path.join(MODELS, "tinystories-656k")
    w1 = ct.Worker(binary, key, "soak-w1")
    w2 = ct.Worker(binary, key, "soak-w2")
    m = ct.Master(binary, model, [(w1.addr, "0-0"), (w2.addr, "1-1")], key, extra=("--max-sequences", "8"))
    procs = {"master": m, "w1": w1, "w2": w2}
    try:
        run(binary, key, seconds, procs)
    finally:
        for name in ("master", "w1", "w2"):
            rc = procs[name].stop()
            check(rc == 0, "%s exits 0 on SIGTERM (%s)" % (name, rc))
    if FAILURES:
        print("%d failure(s); logs in %s" % (len(FAILURES), ct.TMP))
        sys.exit(1)
    print("ok")


def run(binary, key, seconds, procs):
    m = procs["master"]
    t_start = time.time()
    # What every request must answer: each one alone, first.
    want = {}
    for kind in KINDS:
        for p in PROMPTS:
            for n in MAX_TOKENS:
                st, text = request(m.port, kind, p, n)
                if not check(st == "done", "fault-free %s %r %d: %s" % (kind, p, n, text)):
                    return
                want[(kind, p, n)] = text
    stats = {"done": 0, "hung-up": 0, "queue-full": 0, "error-in-restart": 0, "wrong": 0, "error": 0}
    errors = []
    lock = threading.Lock()
    restart = {"down": None, "up": None}  # the window in which errors are expected
    stop_at = [time.time() + seconds]
    running = threading.Event()  # cleared: the clients pause between requests
    running.set()
    busy = [0]

    def client(seed):
        rnd = random.Random(seed)
        # Each client is its own host, as 64 users of a service are: the
        # default max_connections_per_ip (32) applies to each, not to all.
        source = "127.0.2.%d" % (seed + 1)
        while time.time() < stop_at[0]:
            running.wait()
            kind, p, n = rnd.choice(KINDS), rnd.choice(PROMPTS), rnd.choice(MAX_TOKENS)
            hang_up = rnd.random() < 0.1
            t0 = time.time()
            with lock:
                busy[0] += 1
            st, text = request(m.port, kind, p, n, hang_up, source=source)
            if st == "error":
                time.sleep(0.2)  # as a client would, before it retries
            with lock:
                busy[0] -= 1
                if st == "done":
                    if text == want[(kind, p, n)]:
                        stats["done"] += 1
                    else:
                        stats["wrong"] += 1
                        errors.append("wrong answer to %s %r %d: %r want %r" % (kind, p, n, text, want[(kind, p, n)]))
                elif st == "hung-up":
                    stats["hung-up"] += 1
                elif text.startswith("429 "):
                    stats["queue-full"] += 1
                else:
                    # Expected only while a worker is down (a 503 or an error event naming it),
                    # for requests that overlapped the window.
                    down, up = restart["down"], restart["up"]
                    in_window = down is not None and t0 < (up or time.time()) + 10 and time.time() > down - 1
                    named = "flag0" in text or "flag1" in text or "worker" in text or text.startswith("503")
                    if in_window and named:
                        stats["error-in-restart"] += 1
                    else:
                        stats["error"] += 1
                        errors.append("%s %r %d at +%.0fs: %s" % (kind, p, n, t0 - t_start, text[:300]))

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    # Warm-up: a tenth of the run (at least 10 s) at full load, then the
    # baseline, idle: clients paused, every request over (a hung-up one runs
    # to its end), two equal readings.
    warm_s = max(10.0, seconds / 10)
    time.sleep(warm_s)
    base = idle_sample(procs, running, busy, lock)
    running.set()
    print("idle after the warm-up (%.0fs): %s" % (warm_s, base), flush=True)
    peak = {k: list(v) for k, v in base.items()}
    # The restart in the middle.
    t_mid = time.time() - warm_s + seconds / 2
    while time.time() < t_mid:
        time.sleep(1)
        for k, v in sample(procs).items():
            peak[k] = [max(a, b) for a, b in zip(peak[k], v)]
    mid = idle_sample(procs, running, busy, lock, want=base)
    running.set()
    check_idle(base, mid, "first")
    w2 = procs["w2"]
    with lock:
        restart["down"] = time.time()
    w2.stop(signal.SIGKILL)
    time.sleep(2)
    procs["w2"] = ct.Worker(binary, key, "soak-w2-again", port=w2.port, cache=w2.cache)
    # Back when a request goes through the whole chain again (worker 1
    # reopens its link to the new worker 2 on its first forward).
    deadline = time.time() + 60
    while True:
        st, text = request(m.port, "complete", PROMPTS[0], 8)
        if st == "done" or time.time() > deadline:
            break
        time.sleep(0.2)
    check(st == "done" and text == want[("complete", PROMPTS[0], 8)],
          "served again after the worker restart: %s %r" % (st, text))
    with lock:
        restart["up"] = time.time()
    print("worker 2 restarted: down %.1fs" % (restart["up"] - restart["down"]), flush=True)
    # The failover has moved worker 2's layer: the second half's reference.
    fo = (m.status() or {}).get("failover", {})
    check(fo.get("count", 0) >= 1, "the restart was a failover: %s" % fo)
    after = idle_sample(procs, running, busy, lock)
    running.set()
    print("idle after the failover: %s (failover %s)" % (after, fo), flush=True)
    while time.time() < stop_at[0]:
        time.sleep(1)
        for k, v in sample(procs).items():
            peak[k] = [max(a, b) for a, b in zip(peak[k], v)]
    for t in threads:
        t.join(180)
    check(not any(t.is_alive() for t in threads), "every client finished")
    # Idle again: counts back, RSS within the margin.
    end = idle_sample(procs, running, busy, lock, want=after)
    for name, p in procs.items():
        check(p.proc.poll() is None, "%s is alive" % name)
    check_idle(after, end, "second")
    total = sum(stats.values())
    print("soak: %d clients, %.0fs, %d requests: %s" % (CLIENTS, time.time() - t_start, total,
          ", ".join("%s %d" % kv for kv in stats.items())))
    for name in ("master", "w1", "w2"):
        print("  %-6s fds %d -> %d | %d -> %d, threads %d -> %d | %d -> %d, RSS %.1f -> %.1f | %.1f -> %.1f MiB "
              "(first half | second half; peak fds %d, threads %d, RSS %.1f MiB)"
              % (name, base[name][0], mid[name][0], after[name][0], end[name][0], base[name][1], mid[name][1],
                 after[name][1], end[name][1], base[name][2] / 1024, mid[name][2] / 1024, after[name][2] / 1024,
                 end[name][2] / 1024, peak[name][0], peak[name][1], peak[name][2] / 1024))
    for e in errors[:20]:
        print("  ", e)
    check(stats["wrong"] == 0, "every finished request is correct (%d wrong)" % stats["wrong"])
    check(stats["error"] == 0, "no request failed outside the restart (%d did)" % stats["error"])
    check(stats["done"] > CLIENTS, "requests finished: %d" % stats["done"])
    check(stats["hung-up"] > 0, "some clients hung up")


if __name__ == "__main__":
    main()
