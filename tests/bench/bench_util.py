"""bench_util.py - what the Python benchmarks that run real inferd processes
share: starting them, waiting for them, plain HTTP requests, the generated
Qwen2.5-0.5B-shaped checkpoint and a cluster key. Not a benchmark itself."""
import http.client
import json
import os
import socket
import subprocess
import sys
import time

# The shared-data lookup and free ports are the integration harness's.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
from harness import SHARED, free_port  # noqa: E402,F401


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


def qwen_model(work, inferctl):
    """$BENCH_MODEL, else the Qwen2.5-0.5B-shaped bf16 checkpoint generated
    (random weights, qwen2-tiny-random's tokenizer) into work once."""
    model = os.environ.get("BENCH_MODEL")
    if not model:
        model = os.path.join(work, "qwen2.5-0.5b-bf16")
        if not os.path.exists(os.path.join(model, "model.safetensors")):
            subprocess.run([inferctl, "model", "generate", "--preset", "qwen2.5-0.5b", "--dtype", "bf16",
                            "--tokenizer-from", os.path.join(SHARED, "models", "qwen2-tiny-random"), model], check=True)
    return model


def cluster_key(work):
    key = os.path.join(work, "cluster.key")
    with open(key, "w") as f:
        f.write(os.urandom(32).hex())
    os.chmod(key, 0o600)
    return key
