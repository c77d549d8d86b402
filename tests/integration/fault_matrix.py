#!/usr/bin/env python3
"""The fault matrix of issue 12: {master, worker 1, worker 2} x {SIGKILL,
SIGSTOP for 40 s, connection reset mid-frame, ENOSPC in the cache, a corrupted
cached tensor} x {handshake, push, load, prefill, decode}, on loopback, with
tinystories-656k split over a master and a chain of two workers (stdlib only).

Usage: fault_matrix.py INFERD_BINARY [CASE-REGEX]
       (CASE-REGEX picks cases by id, e.g. 'w2/kill/' or 'stop'; default all)

Every case is its own cluster (own ports, own cache directories) and the
cases run concurrently, so the 40 s SIGSTOPs overlap. Each worker sits behind
a small TCP proxy (Proxy below) that reads the frame headers, which are clear
text even in a sealed session (docs/protocol.md section 1), and pauses in the
middle of the first frame of the phase's kind: HELLO (handshake),
TENSOR_CHUNK (push), LOAD (load), a FORWARD of a whole prompt chunk (prefill)
or of one token (decode). There it applies the fault: SIGKILL or SIGSTOP of
the target process, or a TCP reset of the connection (SO_LINGER 0) with half
the frame delivered. ENOSPC puts the worker's cache on a small tmpfs;
the corrupted tensor is a flipped byte in a cache file between two runs.

Each case asserts:
- a clear error: a request in flight gets 503 or an SSE error event naming
  the worker, or (faults during setup) the master logs the failure naming the
  worker and /health is 503 meanwhile; or recovery. A worker killed, stopped
  or reset under a request (prefill, decode) must not fail it: the master
  moves the layers of a worker that stays down to itself (failover,
  docs/operations.md), rebuilds the KV caches and answers the request with
  the fault-free text;
- recovery: after the fault is over (killed process restarted, SIGCONT),
  a request is answered with the golden text;
- no crash: every process that was not killed is alive throughout, and each
  exits 0 on SIGTERM at the end (under ASan this is also the leak check);
- no leak: fd and thread counts (/proc/PID/fd, /proc/PID/task) of every
  process return to their values before the fault (processes that were
  restarted: to those of a fault-free cluster's process of the same role).
  After a failover the layout differs (the master runs the failed worker's
  layer, the worker is a standby without connections, the chain is shorter):
  there no process may be above those values.
Cells that cannot apply (the master has no cache; the handshake touches no
file) are printed as n/a with the reason. Cases that fail because of a known
bug outside this test's scope are listed in XFAIL with the reason: they are
reported, not counted as failures, and an XPASS is reported too.
"""
import concurrent.futures
import http.client
import json
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback

import cluster_test as ct
from harness import MODELS, alloc_port, goldens, proc_counts

TMP = tempfile.mkdtemp(prefix="inferd-fault-matrix-")
os.rmdir(ct.TMP)
ct.TMP = TMP  # the process logs of cluster_test's Worker/Master go here

ct.free_port = alloc_port  # the masters that cluster_test.Master starts, too

MODEL = os.path.join(MODELS, "tinystories-656k")
TARGETS = ["master", "w1", "w2"]
FAULTS = ["kill", "stop", "reset", "enospc", "corrupt"]
PHASES = ["handshake", "push", "load", "prefill", "decode"]
STOP_S = 40           # SIGSTOP length: beyond the 30 s receive deadline of docs/protocol.md
CONCURRENCY = int(os.environ.get("FAULT_MATRIX_JOBS", "12"))

MSG_HELLO, MSG_TENSOR_CHUNK, MSG_LOAD, MSG_FORWARD = 1, 18, 19, 32
ROLE_MASTER, ROLE_PEER = 1, 3

GOLDEN = goldens("tinystories-656k")[0]
# A prompt long enough for two prefill chunks of 128 tokens (context 512).
LONG_PROMPT = ("Once upon a time, there was a little girl named Lily. She loved to play outside in the sun. "
               "One day, she saw a big red ball in the park. She ran to the ball and kicked it very hard. ") * 4
DECODE_PROMPT = "Once upon a time"
DECODE_N = 48
REF = {}          # fault-free outputs: "long", "decode"
REF_COUNTS = {}   # (fds, threads) of a fault-free ready, idle cluster: "master", "w1", "w2"

# Known bugs: case id -> (regex every failure of the case must match, the
# bug). A case is xfail only when each of its failures is the known one.
XFAIL = {}

NA = {
    ("master", "enospc"): "the master keeps no tensor cache (it reads the checkpoint read-only)",
    ("master", "corrupt"): "the master keeps no tensor cache (it reads the checkpoint read-only)",
    ("w", "enospc", "handshake"): "the handshake writes nothing; a full disk at every other phase is tested",
    ("w", "corrupt", "handshake"): "the handshake reads no cache file; the corrupt file is met at push and load",
}


# ---------------------------------------------------------------- the proxy


class Trigger:
    """Fires once, in the middle of the first frame that matches, on
    whichever proxy it is armed on; hook(conn) applies the fault and returns
    'reset' to reset that connection, None to deliver the rest. `fired` is
    set once the fault has been applied, not when the frame is claimed: the
    case's thread restarts a killed master on fired, and a hook that looked
    up the master after that would kill the new one."""

    def __init__(self, ftype, role, hook, min_len=0, max_len=1 << 32, skip=0):
        self.ftype, self.role, self.hook = ftype, role, hook
        self.min_len, self.max_len, self.skip = min_len, max_len, skip
        self.lock = threading.Lock()
        self.taken = False
        self.fired = threading.Event()
        self.when = None

    def take(self, ftype, plen, role):
        if ftype != self.ftype or role != self.role or not self.min_len <= plen <= self.max_len:
            return False
        with self.lock:
            if self.taken:
                return False
            if self.skip > 0:
                self.skip -= 1
                return False
            self.when = time.time()
            self.taken = True
            return True


class ProxyConn(threading.Thread):
    """One proxied connection, both directions in one thread (so a reset is
    never racing a blocked recv on the same socket)."""

    def __init__(self, proxy, csock, ssock):
        super().__init__(daemon=True)
        self.proxy, self.c, self.s = proxy, csock, ssock
        self.first = bytearray()  # first bytes client -> server: the HELLO, whose payload byte 2 is the role
        self.role = None
        self.want_reset = False
        self.st = {d: {"hdr": bytearray(), "total": None} for d in ("c2s", "s2c")}

    def rst(self):
        for s in (self.c, self.s):
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
            s.close()

    def feed(self, d, data):
        """Forwards data, stopping in the middle of a matching frame for the
        trigger; True when the connection was reset there."""
        out = self.s if d == "c2s" else self.c
        if d == "c2s" and self.role is None:
            self.first += data[:23 - len(self.first)]
            if len(self.first) >= 23:
                self.role = self.first[22]
        st = self.st[d]
        i = start = 0
        while i < len(data):
            if st["total"] is None:
                take = min(20 - len(st["hdr"]), len(data) - i)
                st["hdr"] += data[i:i + take]
                i += take
                if len(st["hdr"]) < 20:
                    continue
                ftype = struct.unpack_from("<H", st["hdr"], 6)[0]
                plen = struct.unpack_from("<I", st["hdr"], 12)[0]
                st.update(hdr=bytearray(), total=20 + plen, pos=20, ftype=ftype, plen=plen, armed=True)
            take = min(st["total"] - st["pos"], len(data) - i)
            cut = 20 + st["plen"] // 2
            if st["armed"] and d == "c2s" and st["pos"] <= cut <= st["pos"] + take:
                st["armed"] = False
                trig = self.proxy.trigger
                if trig and trig.take(st["ftype"], st["plen"], self.role):
                    at = i + (cut - st["pos"])
                    out.sendall(data[start:at])
                    start = at
                    try:
                        verdict = trig.hook(self)
                        if verdict == "reset":
                            self.rst()
                    finally:
                        trig.fired.set()
                    if verdict == "reset":
                        return True
            st["pos"] += take
            i += take
            if st["pos"] == st["total"]:
                st["total"] = None
        out.sendall(data[start:])
        return False

    def run(self):
        open_ = {self.c: True, self.s: True}
        try:
            while any(open_.values()):
                if self.want_reset:
                    self.rst()
                    return
                socks = [s for s, o in open_.items() if o]
                r, _, _ = select.select(socks, [], [], 0.1)
                for sock in r:
                    data = sock.recv(1 << 16)
                    other = self.s if sock is self.c else self.c
                    if not data:
                        open_[sock] = False
                        try:
                            other.shutdown(socket.SHUT_WR)
                        except OSError:
                            pass
                        continue
                    if self.feed("c2s" if sock is self.c else "s2c", data):
                        return
        except OSError:
            self.rst()  # one side reset or failed: so does the other
            return
        finally:
            with self.proxy.lock:
                self.proxy.conns.discard(self)
        self.c.close()
        self.s.close()


class Proxy:
    """A TCP proxy on loopback in front of one worker."""

    def __init__(self, upstream_port):
        self.upstream = upstream_port
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", alloc_port()))
        self.lsock.listen(64)
        self.port = self.lsock.getsockname()[1]
        self.addr = "127.0.0.1:%d" % self.port
        self.trigger = None
        self.conns = set()
        self.lock = threading.Lock()
        self.closing = False
        threading.Thread(target=self.accept_loop, daemon=True).start()

    def accept_loop(self):
        while not self.closing:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            try:
                s = socket.create_connection(("127.0.0.1", self.upstream), timeout=5)
                s.settimeout(None)
            except OSError:
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                c.close()  # the worker is down: the master sees a reset
                continue
            pc = ProxyConn(self, c, s)
            with self.lock:
                self.conns.add(pc)
            pc.start()

    def reset_role(self, role):
        with self.lock:
            for pc in self.conns:
                if pc.role == role:
                    pc.want_reset = True

    def close(self):
        self.closing = True
        self.lsock.close()
        self.reset_role(ROLE_MASTER)
        self.reset_role(ROLE_PEER)


# ---------------------------------------------------------------- helpers


def settle_counts(pid, want=None, timeout=20.0):
    """(fds, threads) once two readings 1 s apart agree, or equal want;
    the last reading after timeout."""
    deadline = time.time() + timeout
    last = None
    while True:
        now = proc_counts(pid)[:2]
        if now == want or (want is None and now == last) or time.time() > deadline:
            return now
        last = now
        time.sleep(1.0 if want is None else 0.25)


def stream(port, prompt, n, timeout=90):
    """A streamed completion: (status, text, error message or None, raw)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("POST", "/v1/completions", body=json.dumps({"prompt": prompt, "max_tokens": n, "temperature": 0,
                                                              "stream": True}),
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        if r.status != 200:
            return r.status, "", r.read().decode(errors="replace"), ""
        text, error, raw = "", None, b""
        try:
            raw = r.read()
        except (http.client.IncompleteRead, ConnectionError) as e:
            raw = getattr(e, "partial", b"") or b""
            error = error or "connection broken: %r" % e
        for line in raw.split(b"\n"):
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            try:
                ev = json.loads(line[6:])
            except ValueError:
                error = "bad event %r" % line[:200]
                continue
            if "error" in ev:
                error = json.dumps(ev["error"])
            for ch in ev.get("choices", []):
                text += ch.get("text") or ""
        return 200, text, error, raw.decode(errors="replace")
    finally:
        c.close()


def complete(port, prompt, n, timeout=90):
    """A plain completion: (status, text or None, body)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("POST", "/v1/completions", body=json.dumps({"prompt": prompt, "max_tokens": n, "temperature": 0}),
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        body = r.read().decode(errors="replace")
        text = None
        if r.status == 200:
            text = json.loads(body)["choices"][0]["text"]
        return r.status, text, body
    finally:
        c.close()


def flip_byte(path):
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0x5A]))


def largest_bin(cache):
    bins = [os.path.join(cache, n) for n in os.listdir(cache) if n.endswith(".bin")]
    return max(bins, key=os.path.getsize) if bins else None


def fill_fs(dirpath):
    """Fills the file system of dirpath to the last byte."""
    fd = os.open(os.path.join(dirpath, "filler"), os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(fd, b"\0" * 4096) > 0:
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    st = os.statvfs(dirpath)
    if st.f_bavail:
        raise RuntimeError("%s still has %d blocks free" % (dirpath, st.f_bavail))


# ---------------------------------------------------------------- one case


class Case:
    def __init__(self, binary, target, fault, phase):
        self.binary, self.target, self.fault, self.phase = binary, target, fault, phase
        self.id = "%s/%s/%s" % (target, fault, phase)
        self.slug = self.id.replace("/", "-")
        self.dir = os.path.join(TMP, self.slug)
        os.makedirs(self.dir)
        self.key = os.path.join(self.dir, "key")
        with open(self.key, "w") as f:
            f.write(os.urandom(32).hex())
        os.chmod(self.key, 0o600)
        self.fails, self.notes = [], []
        self.status, self.secs = None, 0.0
        self.w, self.p, self.m = [None, None], [None, None], None
        self.ports, self.caches, self.mounts = [0, 0], ["", ""], []
        self.killed = set()  # processes that were meant to die (Proc objects)
        self.base = {}       # role -> (fds, threads) before the fault, for processes that live through it
        self.logs = []

    def check(self, cond, what):
        if not cond:
            self.fails.append(what if len(what) < 1200 else what[:600] + " ... " + what[-600:])
        return cond

    # -- processes

    def start_worker(self, i):
        name = "%s-w%d" % (self.slug, i + 1)
        self.w[i] = ct.Worker(self.binary, self.key, name, port=self.ports[i] or None, cache=self.caches[i])
        self.ports[i] = self.w[i].port
        self.logs.append(self.w[i].log)

    def start_master(self, wait=True):
        self.m = ct.Master(self.binary, MODEL, [(self.p[0].addr, "0-0"), (self.p[1].addr, "1-1")], self.key,
                           wait=False)
        self.logs.append(self.m.log)
        if wait:
            self.m.wait_ready(90)

    def proc(self, role):
        return self.m if role == "master" else self.w[int(role[1]) - 1]

    def setup(self):
        for i in (0, 1):
            self.caches[i] = os.path.join(self.dir, "cache-w%d" % (i + 1))
            os.makedirs(self.caches[i])
        if self.fault == "enospc":
            i = int(self.target[1]) - 1
            size = "16m"
            r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s,mode=0700" % size, "tmpfs", self.caches[i]],
                               capture_output=True, text=True)
            if r.returncode != 0:
                raise SkipCase("cannot mount a tmpfs for the cache (%s): ENOSPC column not run" % r.stderr.strip())
            self.mounts.append(self.caches[i])
        for i in (0, 1):
            self.start_worker(i)
            self.p[i] = Proxy(self.ports[i])

    def teardown(self):
        procs = [self.m] + self.w
        for pr in procs:
            if pr and pr.proc.poll() is None and pr not in self.killed:
                try:
                    os.kill(pr.proc.pid, signal.SIGCONT)
                except OSError:
                    pass
        # The master first (it drains), then the workers: each must exit 0.
        for pr in procs:
            if not pr or pr in self.killed:
                continue
            alive = pr.proc.poll() is None
            rc = pr.stop()
            self.check(alive, "%s died during the case (exit %s)" % (pr.args[1:5], rc))
            if alive:
                self.check(rc == 0, "%s exited %s on SIGTERM" % (os.path.basename(pr.log), rc))
        for p in self.p:
            if p:
                p.close()
        for mnt in self.mounts:
            subprocess.run(["umount", "-l", mnt], capture_output=True)

    # -- checks

    def alive(self, what):
        for pr in [self.m] + self.w:
            if pr and pr not in self.killed:
                self.check(pr.proc.poll() is None, "%s: %s is not alive (exit %s)" % (what, os.path.basename(pr.log),
                                                                                     pr.proc.returncode))

    def measure_base(self):
        for role in TARGETS:
            self.base[role] = settle_counts(self.proc(role).proc.pid)

    def golden_served(self, timeout=90):
        """Recovery: the golden request answered correctly within timeout."""
        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            if self.m.proc.poll() is not None:
                break
            try:
                st, text, body = complete(self.m.port, GOLDEN["prompt_ids"], GOLDEN["stable_prefix_len"], 30)
            except OSError as e:
                st, text, body = None, None, repr(e)
            last = (st, body[:300])
            if st == 200:
                return self.check(text == GOLDEN["stable_completion_text"],
                                  "recovery: golden text %r, want %r" % (text, GOLDEN["stable_completion_text"]))
            time.sleep(0.5)
        return self.check(False, "no recovery within %ds: last answer %s" % (timeout, last))

    def failovers(self):
        try:
            st, body = self.m.request("GET", "/v1/status")
            return json.loads(body).get("failover", {}).get("count", 0) if st == 200 else 0
        except (OSError, ValueError):
            return 0

    def counts_back(self, restarted):
        """fd and thread counts of every process back to their start (after
        a failover, which drops connections: none above it)."""
        moved = self.failovers() > 0
        for role in TARGETS:
            pr = self.proc(role)
            want = REF_COUNTS[role] if role in restarted or role not in self.base else self.base[role]
            # after a failover the counts settle below want: wait for them to stop moving
            got = settle_counts(pr.proc.pid, None if moved else want, 30)
            if moved:
                self.check(got[0] <= want[0] and got[1] <= want[1], "%s: (fds, threads) %s after the fault and "
                           "a failover, above %s before" % (role, got, want))
            else:
                self.check(got == want, "%s: (fds, threads) %s after the fault, %s before" % (role, got, want))

    def names_worker(self, text, i):
        """The error names the worker: its configured name or address."""
        return ("flag%d" % i) in text or self.p[i].addr in text

    def master_logged(self, i, timeout):
        pat = r"Worker flag%d \(%s\): .*retrying" % (i, re.escape(self.p[i].addr))
        return self.m.wait_log(pat, timeout)

    # -- the fault

    def hook_for(self, i_target):
        """What the proxy does at the fault point."""
        def hook(conn):
            if self.fault == "enospc":
                # The disk fills up while the worker receives the weights.
                fill_fs(self.caches[i_target])
                return None
            if self.fault == "reset":
                if self.target == "master":
                    for p in self.p:
                        p.reset_role(ROLE_MASTER)
                return "reset"
            pr = self.proc(self.target)
            if self.fault == "kill":
                pr.proc.send_signal(signal.SIGKILL)
                pr.proc.wait()
                self.killed.add(pr)
            else:
                pr.proc.send_signal(signal.SIGSTOP)
            return None
        return hook

    def arm(self):
        i = 1 if self.target == "w2" else 0
        role = ROLE_PEER if self.target == "w2" and self.phase in ("prefill", "decode") else ROLE_MASTER
        spec = {
            "handshake": dict(ftype=MSG_HELLO),
            "push": dict(ftype=MSG_TENSOR_CHUNK, skip=1),
            "load": dict(ftype=MSG_LOAD),
            "prefill": dict(ftype=MSG_FORWARD, min_len=8 * 4 * 128),     # a chunk of many tokens
            "decode": dict(ftype=MSG_FORWARD, max_len=64 + 72 + 8 + 4 * 128 + 16, skip=2),  # one token
        }[self.phase]
        t = Trigger(role=role, hook=self.hook_for(i), **spec)
        self.p[i].trigger = t
        return t

    def recover(self, t):
        """Ends the fault: restart what was killed, SIGCONT what was stopped."""
        pr = self.proc(self.target)
        if self.fault == "kill":
            if self.target == "master":
                self.alive("after the master's death")
                self.start_master(wait=False)
            else:
                self.start_worker(int(self.target[1]) - 1)
        elif self.fault == "stop":
            time.sleep(max(0.0, t.when + STOP_S - time.time()))
            pr.proc.send_signal(signal.SIGCONT)

    def run_signal_or_reset(self):
        i = int(self.target[1]) - 1 if self.target != "master" else None
        restarted = {self.target} if self.fault == "kill" else set()
        if self.phase in ("handshake", "push", "load"):
            t = self.arm()
            self.start_master(wait=False)
            if not self.check(t.fired.wait(60), "the fault point (%s) was never reached" % self.phase):
                return
            if i is not None and self.fault == "stop":
                # The master waits on a frozen worker up to the deadline of the step (5 s for the
                # handshake, then it logs and retries; 30 s per push message, which the socket
                # buffers absorb here, and 300 s for LOAD): it must not be ready meanwhile, and
                # carry on once the worker does. (Before the first READY, /v1/status lists no
                # workers; the systemd STATUS line names the one it waits for.)
                time.sleep(max(0.0, t.when + STOP_S - 5 - time.time()))
                self.check(self.m.health() == 503, "/health is 503 while a worker is stopped")
                if self.phase == "handshake":
                    self.check(self.master_logged(i, 1), "the master logs the handshake timeout naming worker %d"
                               % (i + 1))
            elif i is not None:
                # A clear error: the master names the worker and is not ready.
                self.check(self.master_logged(i, 20), "the master logs the failure naming worker %d" % (i + 1))
                self.check(self.m.health() == 503, "/health is 503 while a worker is not set up")
            self.recover(t)
            self.m.wait_ready(120)
            restarted.add("master")  # no fault-free start to compare with: the reference master
            self.golden_served()
        else:
            self.start_master()
            self.golden_served()
            self.measure_base()
            t = self.arm()
            res = {}

            def request():
                try:
                    if self.phase == "prefill":
                        st, text, body = complete(self.m.port, LONG_PROMPT, 8, STOP_S + 60)
                        res["r"] = (st, text, body if st != 200 else None)
                    else:
                        st, text, error, raw = stream(self.m.port, DECODE_PROMPT, DECODE_N, STOP_S + 60)
                        res["r"] = (st, text, error)
                except OSError as e:
                    res["r"] = (None, None, "connection: %r" % e)
            th = threading.Thread(target=request)
            th.start()
            if not self.check(t.fired.wait(60), "the fault point (%s) was never reached" % self.phase):
                th.join()
                return
            if self.fault != "stop" or self.target != "master":
                # A worker stopped, or the frame to worker 2 lost on the reset link from worker 1
                # (worker 1 has already sent it, nobody is left to report): the forward's 30 s
                # deadline (docs/protocol.md 3.2), then an error. Otherwise at once.
                slow = self.fault == "stop" or (self.fault == "reset" and self.target == "w2")
                th.join(30 + 15 if slow else 15)
                self.check(not th.is_alive(), "the request in flight ended in bounded time")
            self.recover(t)
            th.join(STOP_S + 60)
            st, text, error = res.get("r", (None, None, "no answer"))
            want = REF["long" if self.phase == "prefill" else "decode"]
            if self.target == "master" and self.fault == "kill":
                pass  # the client's master died: a broken connection is the answer
            elif self.target != "master":
                # Recovery within the request: a reset peer link is retried
                # once; a worker that stays down has its layer moved to the
                # master (failover), which rebuilds the caches and goes on.
                self.check(error is None and st == 200 and text == want,
                           "the request through the worker's fault recovered: %s %r %s want %r" %
                           (st, text, error, want))
            elif error is None and st == 200:
                self.check(self.fault in ("reset", "stop") and text == want,
                           "the request through the fault was answered, wrongly: %r want %r" % (text, want))
            else:
                clear = st in (200, 503) and error and (self.target == "master" or
                                                        self.names_worker(error, i) or
                                                        self.names_worker(error, 0) or self.names_worker(error, 1))
                self.check(clear, "a clear error naming the worker: %s %s" % (st, error))
            if self.fault == "kill" and self.target == "master":
                self.m.wait_ready(120)
            self.golden_served()
        self.alive("after recovery")
        self.counts_back(restarted)

    def run_enospc(self):
        i = int(self.target[1]) - 1
        if self.phase == "push":
            # The cache has room when the master asks (quota and free space
            # are checked at ASSIGN); the disk fills up during the transfer:
            # the worker answers the chunk it cannot store with an ERROR and
            # lingers, so the master logs the worker's cause, not a reset.
            # The cause is either the room check before a tensor's first
            # chunk or a write() failing with ENOSPC; later retries are
            # refused at ASSIGN ("do not fit") until the disk has room.
            t = self.arm()
            self.start_master(wait=False)
            if not self.check(t.fired.wait(60), "the fault point (push) was never reached"):
                return
            self.check(self.m.wait_log(r"Worker flag%d \(%s\): .*(No space left on device|no room for tensor|do not fit on its file system).*retrying" %
                                       (i, re.escape(self.p[i].addr)), 30),
                       "the master logs ENOSPC naming the worker")
            self.check(self.m.health() == 503, "/health is 503 while the worker's cache is full")
            self.alive("with the cache full")
            os.unlink(os.path.join(self.caches[i], "filler"))
            self.m.wait_ready(120)
            self.golden_served()
            self.alive("after recovery")
            self.counts_back({"master", self.target})
            return
        self.start_master()
        self.golden_served()
        self.measure_base()
        fill_fs(self.caches[i])
        if self.phase == "load":
            # A new master: setup again (ASSIGN, HAVE, LOAD) with the disk full.
            rc = self.m.stop()
            self.check(rc == 0, "the first master exits 0 (%s)" % rc)
            self.start_master()
            self.golden_served()
            self.alive("after a setup with the cache full")
            self.counts_back({"master"})
            return
        self.serve_phase_request()
        self.alive("after serving with the cache full")
        self.counts_back(set())

    def serve_phase_request(self):
        """The phase's request, answered correctly."""
        if self.phase == "prefill":
            st, text, body = complete(self.m.port, LONG_PROMPT, 8)
            self.check(st == 200 and text == REF["long"], "long prompt: %s %r want %r" % (st, text or body,
                                                                                         REF["long"]))
        else:
            st, text, error, raw = stream(self.m.port, DECODE_PROMPT, DECODE_N)
            self.check(st == 200 and error is None and text == REF["decode"],
                       "decode stream: %s %r %s want %r" % (st, text, error, REF["decode"]))

    def run_corrupt(self):
        i = int(self.target[1]) - 1
        self.start_master()
        self.golden_served()
        self.measure_base()
        if self.phase in ("prefill", "decode"):
            # The worker serves from the image it loaded: a file spoiled under it changes nothing now.
            flip_byte(largest_bin(self.caches[i]))
            self.serve_phase_request()
            self.alive("after the cache file was spoiled")
            self.counts_back(set())
            return
        rc = self.w[i].stop()
        self.check(rc == 0, "worker %d exits 0 (%s)" % (i + 1, rc))
        path = largest_bin(self.caches[i])
        if self.phase == "load":
            flip_byte(path)
        else:
            # An interrupted push whose partial file was spoiled: the worker
            # removes partial files when it starts (nobody will finish them),
            # so the tensor is sent again whole and the spoiled bytes are never used.
            with open(path, "rb") as f:
                data = bytearray(f.read())
            half = data[:len(data) // 2]
            half[len(half) // 2] ^= 0x5A
            with open(path[:-4] + ".part", "wb") as f:
                f.write(half)
            os.unlink(path)
        self.start_worker(i)
        if self.phase == "load":
            self.check(self.master_logged(i, 30) or self.w[i].wait_log(r"corrupt|does not match", 1),
                       "the spoiled tensor is reported naming the worker")
            self.check(self.w[i].wait_log(r"does not match its hash|is corrupt", 5),
                       "the worker says which tensor is corrupt")
        else:
            self.check(self.w[i].wait_log(r"Assigned layers .* 8 already cached", 30),
                       "the worker restarted without the spoiled partial tensor (8 of 9 cached)")
        self.golden_served()
        if self.phase == "push":
            self.check(not os.path.exists(path[:-4] + ".part") and os.path.exists(path),
                       "the tensor was sent again whole (no .part left, the .bin back)")
        self.alive("after recovery")
        self.counts_back({self.target})

    def run(self):
        t0 = time.time()
        try:
            self.setup()
            if self.fault in ("kill", "stop", "reset"):
                self.run_signal_or_reset()
            elif self.fault == "enospc":
                self.run_enospc()
            else:
                self.run_corrupt()
        except SkipCase as e:
            self.status = "skip"
            self.notes.append(str(e))
        except Exception as e:  # noqa: BLE001 - a failed case, reported with the others
            self.check(False, "exception: %r\n%s" % (e, traceback.format_exc()))
        finally:
            try:
                self.teardown()
            except Exception as e:  # noqa: BLE001
                self.check(False, "teardown: %r" % e)
        self.secs = time.time() - t0
        if self.status != "skip":
            known = XFAIL.get(self.id)
            if known and self.fails and all(re.search(known[0], f) for f in self.fails):
                self.status = "xfail"
            elif known and not self.fails:
                self.status = "xpass"
            else:
                self.status = "FAIL" if self.fails else "ok"
        return self


class SkipCase(Exception):
    pass


def na_reason(target, fault, phase):
    return NA.get((target, fault)) or NA.get(("w" if target != "master" else "master", fault, phase))


def reference(binary):
    """A fault-free cluster: the outputs every case compares with, and the
    fd / thread counts of each process ready and idle."""
    c = Case(binary, "ref", "none", "none")
    try:
        c.setup()
        c.start_master()
        st, text, body = complete(c.m.port, GOLDEN["prompt_ids"], GOLDEN["stable_prefix_len"])
        if text != GOLDEN["stable_completion_text"]:
            sys.exit("the fault-free cluster does not give the golden: %s %s" % (st, body))
        st, REF["long"], body = complete(c.m.port, LONG_PROMPT, 8)
        st2, REF["decode"], error, raw = stream(c.m.port, DECODE_PROMPT, DECODE_N)
        if st != 200 or st2 != 200 or error:
            sys.exit("the fault-free cluster fails: %s %s %s" % (body, error, raw[-300:]))
        c.measure_base()
        REF_COUNTS.update(c.base)
    finally:
        c.teardown()
    if c.fails:
        sys.exit("the fault-free cluster: %s" % c.fails)


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    binary = sys.argv[1]
    pick = re.compile(sys.argv[2]) if len(sys.argv) == 3 else None
    t0 = time.time()
    reference(binary)
    print("reference: long prompt -> %r, decode -> %r, (fds, threads) %s (%.1fs)" %
          (REF["long"], REF["decode"], REF_COUNTS, time.time() - t0), flush=True)
    cases, na = [], []
    for target in TARGETS:
        for fault in FAULTS:
            for phase in PHASES:
                cid = "%s/%s/%s" % (target, fault, phase)
                if pick and not pick.search(cid):
                    continue
                why = na_reason(target, fault, phase)
                if why:
                    na.append((cid, why))
                else:
                    cases.append((target, fault, phase))
    # The 40 s stops first, so that they overlap each other and everything else.
    cases.sort(key=lambda c: c[1] != "stop")
    results = []
    with concurrent.futures.ThreadPoolExecutor(CONCURRENCY) as ex:
        futs = [ex.submit(lambda c=c: Case(binary, *c).run()) for c in cases]
        for f in concurrent.futures.as_completed(futs):
            r = f.result()
            results.append(r)
            line = "%-5s %-26s %5.1fs" % (r.status, r.id, r.secs)
            if r.status in ("xfail", "xpass"):
                line += "  (known bug: %s)" % XFAIL[r.id][1]
            print(line + "".join("\n      - " + m for m in r.fails + r.notes), flush=True)
            if r.status == "FAIL":
                for log in r.logs:
                    print("   ---- %s (tail)\n%s" % (os.path.basename(log), open(log, errors="replace").read()[-1500:]))
    for cid, why in na:
        print("n/a   %-26s %s" % (cid, why))
    counts = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    print("fault matrix: %d cases in %.0fs: %s; %d n/a" % (len(results), time.time() - t0,
          ", ".join("%d %s" % (v, k) for k, v in sorted(counts.items())), len(na)), flush=True)
    if counts.get("FAIL"):
        print("logs in", TMP)
        sys.exit(1)
    if not results:
        sys.exit("no case selected")
    shutil.rmtree(TMP, ignore_errors=True)


if __name__ == "__main__":
    main()
