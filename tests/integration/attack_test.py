#!/usr/bin/env python3
"""The HTTP front end under attack (issue 12), on loopback, stdlib only.

Usage: attack_test.py INFERD_BINARY GROUP
Groups:
  connections  2,000 idle sockets, from one address and from a hundred: the
               limits hold, and a real completion answers in its normal time.
  slowloris    headers and a body trickled at 1 byte/s are closed at the
               request deadline, while a real completion is served.
  bodies       8 concurrent 4 MiB bodies: the daemon's peak RSS stays within
               the parse budget plus the bodies themselves.
  limits       /tokenize over its cap, a 413 read by urllib, lingering
               connections that do not stall the others, JSON nested past
               the limit, --api-key on the command line, a group-readable key
               file.
Each group fails on the code before issue 12's HTTP fixes (see docs/security.md)."""
import json
import os
import resource
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

from daemon_test import TINY, Daemon
from harness import FAILURES, check, free_port, key_file, run_groups

COMPLETION = {"prompt": [1, 80, 147], "max_tokens": 16, "temperature": 0}


def config(**server):
    """A config file with these [server] keys; returns its path."""
    fd, path = tempfile.mkstemp(prefix="inferd-attack-", suffix=".conf")
    os.write(fd, ("[server]\n" + "".join("%s = %s\n" % kv for kv in server.items())).encode())
    os.close(fd)
    return path


def timed_completion(d, what):
    """One real request from 127.0.0.1; returns its wall time (inf on failure)."""
    t0 = time.time()
    try:
        st, r = d.json("POST", "/v1/completions", COMPLETION)
    except OSError as e:
        check(False, "%s: the real request failed: %r" % (what, e))
        return float("inf")
    dt = time.time() - t0
    check(st == 200 and r["usage"]["completion_tokens"] == 16, "%s: real request answered: %d %s" % (what, st, r))
    return dt


def baseline(d):
    return sorted(timed_completion(d, "baseline") for _ in range(3))[1]


def in_normal_time(dt, base, what):
    # "Normal" on a 2-core machine shared with other jobs: three times the
    # quiet median plus three seconds of scheduling noise; the failure this
    # guards against is a refused or hung request, not a slow one.
    check(dt <= base * 3 + 3.0, "%s: the real request took %.2fs (quiet: %.3fs)" % (what, dt, base))


def metric(d, name):
    try:
        st, _, body = d.request("GET", "/metrics")
    except OSError as e:
        check(False, "GET /metrics failed: %r" % e)
        return None
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None


def open_idle(n, sources, port):
    """n connections spread over the source addresses; refused ones included."""
    socks = []
    for i in range(n):
        s = socket.socket()
        s.bind((sources[i % len(sources)], 0))
        s.setblocking(False)
        try:
            s.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        socks.append(s)
    # Every connect completes (the backlog is the kernel's cap).
    # (poll, not select: these descriptors are above FD_SETSIZE.)
    deadline = time.time() + 20
    pending = {s.fileno() for s in socks}
    p = select.poll()
    for fd in pending:
        p.register(fd, select.POLLOUT)
    while pending and time.time() < deadline:
        for fd, ev in p.poll(1000):
            pending.discard(fd)
            p.unregister(fd)
    check(not pending, "%d of %d connects did not complete" % (len(pending), n))
    return socks


def count_held(socks, expect_at_most, wait=20):
    """(held, closed by the server), once at most expect_at_most are held or
    after `wait` seconds: on a loaded machine the server may take a while to
    accept and close 2,000 connections, and one not yet accepted looks held."""
    p = select.poll()
    by_fd = {}
    for s in socks:
        p.register(s, select.POLLIN | select.POLLHUP | select.POLLERR)
        by_fd[s.fileno()] = s
    closed = 0
    deadline = time.time() + wait
    while True:
        for fd, ev in p.poll(500):
            try:
                data = by_fd[fd].recv(1)
            except (ConnectionResetError, BlockingIOError):
                data = b""
            if data == b"":
                closed += 1
                p.unregister(fd)
        if len(socks) - closed <= expect_at_most or time.time() > deadline:
            break
    time.sleep(0.5)  # anything closed late still counts
    for fd, ev in p.poll(0):
        try:
            closed += by_fd[fd].recv(1) == b""
        except (ConnectionResetError, BlockingIOError):
            closed += 1
    return len(socks) - closed, closed


def close_all(socks):
    for s in socks:
        s.close()


def group_connections(binary):
    # 2,000 sockets open from this process: raise its descriptor limit.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    max_conn, per_ip = 300, 20
    conf = config(max_connections=max_conn, max_connections_per_ip=per_ip, request_timeout=30)
    with Daemon(binary, TINY, "--config", conf) as d:
        base = baseline(d)
        rss0 = rss_kb(d.proc.pid)
        # One address opens 2,000: it keeps its 20, the rest are closed at once.
        socks = open_idle(2000, ["127.0.0.2"], d.port)
        held, closed = count_held(socks, per_ip)
        print("one address: %d held, %d refused" % (held, closed))
        check(held == per_ip, "one address holds max_connections_per_ip=%d connections, not %d" % (per_ip, held))
        in_normal_time(timed_completion(d, "2,000 idle sockets from one address"), base, "one address")
        refused = metric(d, 'inferd_http_connections_refused_total{reason="per_ip"}')
        check(refused is not None and refused >= 2000 - per_ip, "refusals counted in /metrics: %s" % refused)
        close_all(socks)
        # A hundred addresses open 20 each: the server is full, and the ones
        # that have waited longest without a request make room for new ones.
        socks = open_idle(2000, ["127.0.1.%d" % i for i in range(1, 101)], d.port)
        held, closed = count_held(socks, max_conn)
        rss1 = rss_kb(d.proc.pid)
        print("100 addresses: %d held, %d closed; RSS %d -> %d KiB" % (held, closed, rss0, rss1))
        check(max_conn - 10 <= held <= max_conn, "max_connections=%d holds, not %d" % (max_conn, held))
        dt = timed_completion(d, "2,000 idle sockets from 100 addresses")
        in_normal_time(dt, base, "100 addresses")
        evicted = metric(d, 'inferd_http_connections_closed_total{reason="evicted"}')
        check(evicted is not None and evicted >= 2000 - max_conn - 10, "evictions counted: %s" % evicted)
        print("real request: %.3fs under attack, %.3fs quiet" % (dt, base))
        close_all(socks)
    os.unlink(conf)


def sanitized(binary):
    """True for an ASan build, whose allocator (quarantine, redzones) makes
    RSS bounds meaningless."""
    with open(binary, "rb") as f:
        return b"__asan_init" in f.read()


def rss_kb(pid, field="VmRSS"):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def trickle(port, head, t_max, result):
    """Sends head, then one byte per second; records when the server closed."""
    s = socket.create_connection(("127.0.0.1", port))
    t0 = time.time()
    s.sendall(head)
    closed_at = None
    filler = b"X-Slow: " + b"a" * 64
    i = 0
    while time.time() - t0 < t_max:
        r, _, _ = select.select([s], [], [], 1.0)
        if r:
            try:
                data = s.recv(4096)
            except ConnectionResetError:
                data = b""
            if data == b"":
                closed_at = time.time() - t0
                break
            result["answer"] = data
        try:
            s.send(filler[i % len(filler):i % len(filler) + 1])
        except (BrokenPipeError, ConnectionResetError):
            closed_at = time.time() - t0
            break
        i += 1
    s.close()
    result["closed_at"] = closed_at


def group_slowloris(binary):
    timeout = 3
    conf = config(request_timeout=timeout)
    with Daemon(binary, TINY, "--config", conf) as d:
        base = baseline(d)
        heads = {
            "headers": b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n",
            "body": b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 1000\r\n\r\n",
        }
        for what, head in heads.items():
            res = {}
            t = threading.Thread(target=trickle, args=(d.port, head, timeout + 10, res))
            t.start()
            time.sleep(1.0)
            in_normal_time(timed_completion(d, "slowloris (%s)" % what), base, "slowloris (%s)" % what)
            t.join()
            at = res.get("closed_at")
            print("slowloris (%s): closed after %s s (request_timeout %d)" % (what, at, timeout))
            check(at is not None and timeout - 0.5 <= at <= timeout + 4,
                  "a %s trickled at 1 byte/s is closed at the %ds deadline (closed at %s)" % (what, timeout, at))
            check("answer" not in res, "no answer to a trickled request: %r" % res.get("answer", b"")[:100])
        # A kept-alive connection whose next request takes longer than the
        # deadline is closed too (the deadline restarts after each answer).
        s = socket.create_connection(("127.0.0.1", d.port))
        req = json.dumps(COMPLETION).encode()
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (len(req), req))
        s.settimeout(30)
        got = s.recv(65536)
        check(got.startswith(b"HTTP/1.1 200"), "keep-alive request answered: %r" % got[:60])
        s.settimeout(timeout + 8)
        t0 = time.time()
        try:
            rest = s.recv(65536)
            while rest and b"}" not in rest[-5:]:
                rest = s.recv(65536)
            rest = s.recv(1)
        except (ConnectionResetError, socket.timeout):
            rest = None
        idle = time.time() - t0
        check(rest == b"" and idle <= timeout + 4, "an idle kept-alive connection closes at the deadline "
              "(%r after %.1fs)" % (rest, idle))
        s.close()
        timed = metric(d, 'inferd_http_connections_closed_total{reason="request_timeout"}')
        check(timed is not None and timed >= 3, "deadline closes counted: %s" % timed)
    os.unlink(conf)


def group_bodies(binary):
    # 4 MiB of token ids: about 2 M cJSON numbers, ~155 MB while parsed.
    # Under ASan (no RSS bound to check, parsing 5x slower) 1 MiB bodies
    # keep the group under a minute while still going through the budget.
    n_ids = ((1 if sanitized(binary) else 4) << 20) // 2 - 8
    body = ('{"prompt":[' + ",".join(["1"] * n_ids) + '],"max_tokens":1}').encode()
    budget = 256 << 20
    # request_timeout also bounds the wait for a parse share: generous, as
    # the 8 parses run one after the other on a loaded machine.
    conf = config(max_body_bytes="5M", parse_memory="256M", request_timeout=300)
    with Daemon(binary, TINY, "--config", conf) as d:
        timed_completion(d, "warm-up")
        hwm0 = rss_kb(d.proc.pid, "VmHWM")
        results = []

        def send():
            try:
                st, h, payload = d.request("POST", "/v1/completions", raw=body)
                results.append((st, payload[:200]))
            except OSError as e:
                results.append((None, repr(e)))

        threads = [threading.Thread(target=send) for _ in range(8)]
        t0 = time.time()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        dt = time.time() - t0
        hwm1 = rss_kb(d.proc.pid, "VmHWM")
        grew = (hwm1 - hwm0) * 1024
        # The bound: the parse budget, plus each body held twice (MHD's read
        # buffer and ours) while it waits, plus 64 MiB of allocator slack.
        bound = budget + 8 * 2 * len(body) + (64 << 20)
        print("8 x %d-byte bodies: peak RSS %d -> %d KiB (+%.0f MiB, bound %.0f MiB), %.1fs" %
              (len(body), hwm0, hwm1, grew / 2**20, bound / 2**20, dt))
        if sanitized(binary):
            print("ASan build: the RSS bound is not checked")
        else:
            check(grew <= bound, "peak RSS grew %.0f MiB under 8 concurrent 4 MiB bodies, bound %.0f MiB" %
                  (grew / 2**20, bound / 2**20))
        check(len(results) == 8 and all(st == 400 for st, _ in results),
              "every body answered (400: too many ids): %s" % [(st, p[:80]) for st, p in results])
        in_normal_time(timed_completion(d, "after the bodies"), 0.5, "after the bodies")
    os.unlink(conf)


def group_limits(binary):
    conf = config(max_body_bytes="1M", max_tokenize_bytes="64K")
    with Daemon(binary, TINY, "--config", conf) as d:
        # /tokenize: under the cap answers, over it is 413 naming the limit.
        st, r = d.json("POST", "/tokenize", {"content": "once upon a time " * 3000})
        check(st == 200 and r["count"] > 1000, "/tokenize under the cap: %d" % st)
        st, r = d.json("POST", "/tokenize", {"content": "once upon a time " * 5000})
        e = r.get("error", {})
        check(st == 413 and e.get("code") == "request_too_large" and e.get("param") == "content"
              and "65536" in e.get("message", "") and "max_tokenize_bytes" in e.get("message", ""),
              "/tokenize over 64K: %d %s" % (st, str(r)[:200]))
        # A 413 read by urllib, which writes its whole 8 MiB body before reading.
        url = "http://127.0.0.1:%d/v1/completions" % d.port
        big = b'{"prompt":"' + b"a" * (8 << 20) + b'"}'
        req = urllib.request.Request(url, data=big, headers={"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(req, timeout=30)
            check(False, "an 8 MiB body over a 1 MiB limit was accepted")
        except urllib.error.HTTPError as e:
            err = json.loads(e.read())["error"]
            check(e.code == 413 and err["code"] == "request_too_large" and "1048576" in err["message"],
                  "urllib reads the 413: %d %s" % (e.code, err))
        except (urllib.error.URLError, OSError) as e:
            check(False, "urllib got %r instead of the 413" % e)
        # Connections answered early that never send their body linger (up to
        # 5 s each) on their own threads: the server keeps accepting meanwhile
        # (draining in MHD's close notification stalled its accept thread
        # 5 s per such connection, 15 s for these three).
        held = []
        for _ in range(3):
            s = socket.create_connection(("127.0.0.1", d.port), timeout=10)
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 2097152\r\n\r\n")
            check(s.recv(4096).startswith(b"HTTP/1.1 413"), "an over-limit Content-Length is answered 413 at once")
            held.append(s)
        t0 = time.time()
        st, h, payload = d.request("GET", "/health")
        took = time.time() - t0
        check(st == 200 and took < 2.0, "/health beside 3 lingering connections: %d in %.2f s" % (st, took))
        print("health beside 3 lingering connections: %.3f s" % took)
        for s in held:
            s.close()
        # JSON nested past API_MAX_JSON_DEPTH (64): 400 naming the limit.
        deep = '{"prompt":[1],"metadata":' + "[" * 100 + "]" * 100 + "}"
        st, h, payload = d.request("POST", "/v1/completions", raw=deep.encode())
        msg = json.loads(payload).get("error", {}).get("message", "")
        check(st == 400 and "64" in msg and "deeper" in msg, "JSON nested 101 deep: %d %s" % (st, payload[:200]))
        ok = '{"prompt":[1],"max_tokens":1,"metadata":' + "[" * 63 + "]" * 63 + "}"
        st, h, payload = d.request("POST", "/v1/completions", raw=ok.encode())
        check(st == 200, "JSON nested 64 deep is served: %d %s" % (st, payload[:200]))
    os.unlink(conf)
    # Keys: never on the command line, never in a file others can read.
    # inferd must refuse to start; one that starts is stopped after 10 s.
    def start_fails(*args):
        p = subprocess.Popen([binary, "--model", TINY, "--config", "/dev/null", "--listen",
                              "127.0.0.1:%d" % free_port(), *args], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
        try:
            out, _ = p.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
        return p.returncode, out

    rc, out = start_fails("--api-key", "sk-visible")
    check(rc not in (0, -9) and "--api-key-file" in out and "sk-visible" not in out,
          "--api-key refused, pointing to --api-key-file: %d %r" % (rc, out[-300:]))
    path = key_file("sk-group")
    os.chmod(path, 0o640)
    rc, out = start_fails("--api-key-file", path)
    check(rc not in (0, -9) and path in out and "0640" in out,
          "a group-readable key file is refused: %d %r" % (rc, out[-300:]))
    os.unlink(path)


GROUPS = {
    "connections": group_connections,
    "slowloris": group_slowloris,
    "bodies": group_bodies,
    "limits": group_limits,
}

if __name__ == "__main__":
    run_groups("attack_test.py", GROUPS)
