"""Shared pieces of the integration test scripts (stdlib only): where the
shared models and goldens are, failure bookkeeping, free loopback ports,
waiting for a process to be ready, running a script's test groups."""
import json
import os
import socket
import sys
import threading
import time

SHARED = os.environ.get("INFERD_SHARED")
if not SHARED or not os.path.isdir(os.path.join(SHARED, "models")):
    sys.exit("INFERD_SHARED is not set or has no models/ (the shared test data beside the checkout)")
MODELS = os.path.join(SHARED, "models")
FAILURES = []


def check(cond, what):
    """Records a failure (the script exits non-zero at the end) and goes on."""
    if not cond:
        FAILURES.append(what)
        print("FAIL:", what, flush=True)
    return cond


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def goldens(model):
    """The lines of golden/models.jsonl for one model."""
    with open(os.path.join(SHARED, "golden", "models.jsonl")) as f:
        return [d for d in map(json.loads, f) if d["model"] == model]


def key_file(*keys):
    """A private (0600) API key file holding keys, for --api-key-file: keys on
    the command line are refused (visible in /proc/PID/cmdline)."""
    import tempfile
    fd, path = tempfile.mkstemp(prefix="inferd-keys-")
    os.write(fd, "".join(k + "\n" for k in keys).encode())
    os.close(fd)
    return path


def proc_counts(pid):
    """(open fds, threads, RSS KiB) of a live process, from /proc: what the
    fault and soak tests watch for leaks."""
    fds = len(os.listdir("/proc/%d/fd" % pid))
    threads = len(os.listdir("/proc/%d/task" % pid))
    rss = 0
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return fds, threads, rss


_ports = {"lock": threading.Lock(), "next": 21000 + (os.getpid() % 40) * 250}


def alloc_port():
    """A free port below the ephemeral range (32768+). With dozens of
    processes starting at once, a port that free_port() found free can be
    handed to someone's outgoing connection or port-0 bind before the worker
    binds it (the worker then exits and the port answers for someone else);
    ports below that range are only taken by a bind that names them."""
    with _ports["lock"]:
        while True:
            port = _ports["next"]
            _ports["next"] = 21000 + (port + 1 - 21000) % 11000
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
            finally:
                s.close()


def wait_ready(proc, ready, what, logtext, timeout=60):
    """Polls ready() every 50 ms until it is true. Raises, with the process's
    log (logtext()), when proc exits first or when timeout seconds pass."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("%s exited with %d:\n%s" % (what, proc.returncode, logtext()))
        if ready():
            return True
        time.sleep(0.05)
    raise RuntimeError("%s not ready after %gs:\n%s" % (what, timeout, logtext()))


def run_groups(script, groups):
    """The main of a script of test groups: `script INFERD GROUP` runs one
    group with the inferd binary and exits non-zero on any failure."""
    if len(sys.argv) != 3 or sys.argv[2] not in groups:
        sys.exit("usage: %s INFERD %s" % (script, "|".join(groups)))
    t0 = time.time()
    groups[sys.argv[2]](os.path.abspath(sys.argv[1]))
    print("%s: %d failures, %.1fs" % (sys.argv[2], len(FAILURES), time.time() - t0))
    sys.exit(1 if FAILURES else 0)


def chat_conversation(chat, turns, system="You answer questions about the weather in one short line."):
    """A multi-turn chat as clients run one: each request repeats the
    conversation so far (system, then user and assistant turns) and adds the
    next user message. chat(messages) -> (text, usage) sends one request.
    Returns [(text, usage)] per turn. What prefix_cache is for: every turn
    after the first begins with the cache the previous one left."""
    msgs = [{"role": "system", "content": system}]
    out = []
    for u in turns:
        msgs.append({"role": "user", "content": u})
        text, usage = chat(list(msgs))
        out.append((text, usage))
        msgs.append({"role": "assistant", "content": text})
    return out


def cached_tokens(usage):
    """usage.prompt_tokens_details.cached_tokens, or None when absent."""
    return ((usage or {}).get("prompt_tokens_details") or {}).get("cached_tokens")
