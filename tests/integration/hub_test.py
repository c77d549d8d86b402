#!/usr/bin/env python3
"""`inferctl model pull|list|rm` against a mock Hugging Face Hub (mock_hub.py,
a real HTTP server on loopback), and the real inferd serving what was pulled.

Usage: hub_test.py INFERD_BINARY GROUP
Groups: layout, resume, concurrent, corrupt, hostile, errors, offline, disk, listrm, rss.
inferctl is found beside inferd in the build tree."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from harness import FAILURES, MODELS, check, free_port, goldens, run_groups, wait_ready
from mock_hub import MockHub, commit_sha

SHARDED = os.path.join(MODELS, "tinystories-656k-bf16-sharded")
REPO = "test-org/tinystories-sharded"
SHARDS = ["model-0000%d-of-00003.safetensors" % i for i in (1, 2, 3)]
# What inferd needs of that checkpoint: everything it has.
WANTED = sorted(os.listdir(SHARDED))


def inferctl_path(inferd):
    return os.path.join(os.path.dirname(inferd), "inferctl")  # both in build/daemon/


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def git_blob_sha1(path):
    with open(path, "rb") as f:
        data = f.read()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Env:
    """A temporary HF_HOME, a mock hub serving REPO, and an inferctl runner."""

    def __init__(self, inferd, token=None):
        self.inferctl = inferctl_path(inferd)
        self.tmp = tempfile.mkdtemp(prefix="inferd-hub-test-")
        self.home = os.path.join(self.tmp, "hf")
        self.hub = MockHub(token=token).start()
        self.hub.add_repo(REPO, SHARDED, revisions=("main", "v2"))
        self.repo_dir = os.path.join(self.home, "hub", "models--test-org--tinystories-sharded")

    def env(self, **extra):
        e = dict(os.environ)
        for k in ("HF_TOKEN", "HF_HUB_OFFLINE", "HF_HUB_CACHE", "HF_ENDPOINT"):
            e.pop(k, None)
        e.update(HF_HOME=self.home, HF_ENDPOINT=self.hub.url, INFERD_HUB_BACKOFF_S="0.1")
        e.update(extra)
        return e

    def run(self, *args, timeout=300, **extra):
        p = subprocess.run([self.inferctl, "model", *args], env=self.env(**extra), capture_output=True,
                           text=True, timeout=timeout)
        check("Sanitizer" not in p.stderr and "runtime error:" not in p.stderr,
              "sanitizer report from inferctl %s:\n%s" % (" ".join(args), p.stderr[-4000:]))
        return p

    def pull(self, ref=REPO, *args, **extra):
        return self.run("pull", ref, *args, **extra)

    def file_gets(self):
        """The content requests (resolve of a non-LFS file, or the CDN) that sent bytes."""
        return self.hub.requests(lambda e: e["method"] == "GET" and e["status"] in (200, 206) and
                                 ("/resolve/" in e["path"] or e["path"].startswith("/cdn/")))

    def close(self):
        self.hub.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


def expect_fail(p, needles, what):
    check(p.returncode == 1, "%s: exit status %d (want 1)\n%s" % (what, p.returncode, p.stderr))
    for n in needles:
        check(n in p.stderr, "%s: message lacks %r:\n%s" % (what, n, p.stderr))


def check_layout(env, revision="main"):
    """The cache exactly as huggingface_hub lays it out."""
    commit = commit_sha(REPO, revision)
    with open(os.path.join(env.repo_dir, "refs", revision)) as f:
        check(f.read() == commit, "refs/%s holds the commit %s" % (revision, commit))
    snap = os.path.join(env.repo_dir, "snapshots", commit)
    check(sorted(os.listdir(snap)) == WANTED, "snapshot files %s" % sorted(os.listdir(snap)))
    blobs = set()
    for name in WANTED:
        src = os.path.join(SHARDED, name)
        etag = sha256_file(src) if name.endswith(".safetensors") else git_blob_sha1(src)
        link = os.path.join(snap, name)
        check(os.path.islink(link) and os.readlink(link) == "../../blobs/" + etag,
              "%s is the relative symlink ../../blobs/%s (got %s)" % (name, etag,
                                                                      os.path.islink(link) and os.readlink(link)))
        with open(link, "rb") as a, open(src, "rb") as b:
            check(a.read() == b.read(), "%s content equals the served file" % name)
        blobs.add(etag)
    got = set(os.listdir(os.path.join(env.repo_dir, "blobs")))
    check(got == blobs, "blobs/ holds exactly the blobs, nothing partial: %s" % sorted(got - blobs))
    return snap


def serve_golden(inferd, env):
    """The real inferd, --model ORG/NAME with HF_HOME set: the golden greedy completion."""
    import http.client
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="inferd-hub-log-", delete=False)
    proc = subprocess.Popen([inferd, "--model", REPO, "--listen", "127.0.0.1:%d" % port, "--threads", "2",
                             "--config", "/dev/null"], stdout=log, stderr=subprocess.STDOUT, env=env.env())

    def logtext():
        with open(log.name, errors="replace") as f:
            return f.read()

    def ready():
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/health")
            return c.getresponse().status == 200
        except OSError:
            return False

    try:
        wait_ready(proc, ready, "inferd --model %s" % REPO, logtext)
        for g in goldens("tinystories-656k-bf16-sharded"):
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            c.request("POST", "/v1/completions", json.dumps(
                {"prompt": g["prompt_ids"], "max_tokens": g["stable_prefix_len"], "temperature": 0}),
                {"Content-Type": "application/json"})
            r = c.getresponse()
            body = json.loads(r.read())
            got = body["choices"][0]["text"] if r.status == 200 else body
            check(got == g["stable_completion_text"], "inferd on the pulled model, golden %s:\n got %r\nwant %r"
                  % (g.get("name"), got, g["stable_completion_text"]))
    finally:
        proc.terminate()
        proc.wait(30)
        check("Sanitizer" not in logtext(), "sanitizer report from inferd:\n%s" % logtext()[-4000:])
        os.unlink(log.name)


# ---------------------------------------------------------------- groups

def group_layout(inferd):
    env = Env(inferd)
    try:
        p = env.pull()
        check(p.returncode == 0, "pull: exit %d\n%s" % (p.returncode, p.stderr))
        snap = check_layout(env)
        check(p.stdout.strip().splitlines()[-1] == snap, "the last line is the snapshot path: %r" % p.stdout)
        check(len(env.file_gets()) == len(WANTED), "one download per file: %s" % env.file_gets())
        # LFS files went through the redirect to the CDN path.
        check(len([e for e in env.file_gets() if e["path"].startswith("/cdn/")]) == 3, "shards via the 302")
        serve_golden(inferd, env)
        # Again: nothing is downloaded, only the revision is asked for.
        env.hub.clear_log()
        p = env.pull()
        check(p.returncode == 0 and env.file_gets() == [], "second pull downloads nothing: %s %s"
              % (env.file_gets(), p.stderr))
        check("9 already cached" in p.stderr, "second pull says all files were cached:\n%s" % p.stderr)
        # Another revision with the same files: a new snapshot and ref, no download (blobs deduplicated).
        p = env.pull(REPO + "@v2")
        check(p.returncode == 0 and env.file_gets() == [], "@v2 reuses the blobs: %s" % p.stderr)
        check_layout(env, "v2")
        # A commit sha: the snapshot without a ref of that name.
        c = commit_sha(REPO, "main")
        p = env.pull(REPO + "@" + c)
        check(p.returncode == 0 and not os.path.exists(os.path.join(env.repo_dir, "refs", c)),
              "a pull by commit writes no ref: %s" % p.stderr)
        # inferd resolves a revision given with @.
        p2 = subprocess.run([inferd, "--model", REPO + "@nope", "--config", "/dev/null", "--check-config"],
                            env=env.env(), capture_output=True, text=True, timeout=60)
        check(p2.returncode != 0 and "inferctl model pull %s@nope" % REPO in p2.stderr,
              "inferd names the missing revision and the pull command:\n%s" % p2.stderr)
    finally:
        env.close()


def group_resume(inferd):
    env = Env(inferd)
    try:
        shard = SHARDS[0]
        size = os.path.getsize(os.path.join(SHARDED, shard))
        cut = size // 3
        # Within one run: the connection drops mid-shard, the retry asks for the rest.
        env.hub.faults["drop"][shard] = cut
        p = env.pull()
        check(p.returncode == 0, "pull with a dropped connection: %s" % p.stderr)
        ranged = env.hub.requests(lambda e: e["range"] == "bytes=%d-" % cut and e["status"] == 206)
        check(len(ranged) == 1, "one Range request from the drop point %d: %s" % (cut, env.hub.requests()))
        check("retry 1 of 5" in p.stderr, "the retry is reported:\n%s" % p.stderr)
        check_layout(env)
        # Across runs: a pull that gives up leaves .incomplete; the next resumes from it.
        shutil.rmtree(env.home)
        env.hub.clear_log()
        env.hub.faults["drop"][shard] = cut
        p = env.pull(REPO, "--retries", "0")
        expect_fail(p, [shard, "failed after 1 attempts"], "pull without retries")
        sha = sha256_file(os.path.join(SHARDED, shard))
        part = os.path.join(env.repo_dir, "blobs", sha + ".incomplete")
        check(os.path.exists(part) and os.path.getsize(part) == cut, "the partial blob is kept (%d bytes)" % cut)
        check(not os.path.exists(os.path.join(env.repo_dir, "refs", "main")), "no ref after a failed pull")
        p = env.pull()
        check(p.returncode == 0, "the resumed pull: %s" % p.stderr)
        ranged = env.hub.requests(lambda e: e["range"] == "bytes=%d-" % cut and e["status"] == 206)
        check(len(ranged) == 1, "the second run asked for bytes=%d-: %s" % (cut, env.hub.requests()))
        check("resuming at" in p.stderr, "the resume is reported:\n%s" % p.stderr)
        check_layout(env)
        # A stall (no byte for 5 s, stall limit 2 s) and a 503 on the API are retried too.
        # The limit counts from the request on, so it is 2 s rather than 1: a
        # loaded CI machine has been seen to take over a second to answer,
        # and a pull that gives up before the first 1000 bytes arrive has
        # nothing to resume from.
        shutil.rmtree(env.home)
        env.hub.clear_log()
        env.hub.faults["stall"][SHARDS[1]] = (1000, 5.0)
        env.hub.faults["status_once"]["/api/models/"] = 503
        p = env.pull(INFERD_HUB_STALL_S="2")
        check(p.returncode == 0, "pull through a stall and a 503: %s" % p.stderr)
        check("HTTP 503" in p.stderr, "the 503 is reported and retried:\n%s" % p.stderr)
        check("%s: Timeout was reached; retry 1 of" % SHARDS[1] in p.stderr,
              "the stall is reported and retried:\n%s" % p.stderr)

        def shard_gets():
            return env.hub.requests(lambda e: e["path"].startswith("/cdn/") and e["path"].endswith("=" + SHARDS[1]))
        # The mock logs a request when its handler is done with it, and the
        # stalled one is done only after its 5 s: wait for both.
        deadline = time.time() + 10
        while len(shard_gets()) < 2 and time.time() < deadline:
            time.sleep(0.05)
        gets = shard_gets()
        stalled = [e for e in gets if e["note"].startswith("stalled at 1000")]
        resumed = [e for e in gets if e["range"] == "bytes=1000-" and e["status"] == 206]
        check(len(stalled) == 1 and len(resumed) == 1 and len(gets) == 2,
              "the stalled shard was resumed with a Range from byte 1000: %s" % gets)
        check_layout(env)
    finally:
        env.close()


def group_concurrent(inferd):
    """Two pulls of the same repo at once: the flock per blob makes one of them
    download each file and the other wait and reuse it; neither corrupts the other."""
    env = Env(inferd)
    try:
        # Hold the first shard for a second so the two pulls overlap.
        env.hub.faults["stall"][SHARDS[0]] = (1000, 1.0)
        procs = [subprocess.Popen([env.inferctl, "model", "pull", REPO], env=env.env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
        outs = [p.communicate(timeout=120) for p in procs]
        for p, (out, err) in zip(procs, outs):
            check(p.returncode == 0, "concurrent pull: %s" % err)
        check_layout(env)
        check(len(env.file_gets()) == len(WANTED), "each file downloaded once by the two pulls: %d requests"
              % len(env.file_gets()))
        check(sum("already in the cache" in err for _, err in outs) >= 1, "one pull reused the other's blobs")
    finally:
        env.close()


def group_corrupt(inferd):
    env = Env(inferd)
    try:
        shard = SHARDS[1]
        want = sha256_file(os.path.join(SHARDED, shard))
        env.hub.faults["flip"][shard] = 12345
        p = env.pull()
        expect_fail(p, ["sha256 mismatch in %s: expected %s, got " % (shard, want)], "corrupted shard")
        blobs = os.listdir(os.path.join(env.repo_dir, "blobs"))
        check(want not in blobs and not [b for b in blobs if b.endswith(".incomplete")],
              "nothing bad left in blobs/: %s" % blobs)
        check(not os.path.exists(os.path.join(env.repo_dir, "refs", "main")), "no ref after a failed pull")
        # Served right again, the pull completes.
        del env.hub.faults["flip"][shard]
        p = env.pull()
        check(p.returncode == 0, "pull after the corruption is gone: %s" % p.stderr)
        check_layout(env)
    finally:
        env.close()


def group_errors(inferd):
    token = "hf_secret_token_123"
    env = Env(inferd, token=token)
    try:
        env.hub.add_repo("test-org/private", SHARDED, private=True)
        env.hub.add_repo("test-org/gated", SHARDED, gated=True)
        nosafe = os.path.join(env.tmp, "nosafe")
        os.makedirs(nosafe)
        shutil.copy(os.path.join(SHARDED, "config.json"), nosafe)
        with open(os.path.join(nosafe, "pytorch_model.bin"), "wb") as f:
            f.write(b"\0" * 100)
        env.hub.add_repo("test-org/bin-only", nosafe)
        url = env.hub.url
        expect_fail(env.pull("test-org/nothere"), ["test-org/nothere: repository not found",
                                                   url + "/api/models/test-org/nothere/revision/main"], "404 repo")
        expect_fail(env.pull(REPO + "@nope"), ["revision 'nope' not found", "/revision/nope"], "404 revision")
        expect_fail(env.pull("test-org/private"), ["repository not found or needs a token (set HF_TOKEN)",
                                                   "test-org/private"], "401 private without a token")
        expect_fail(env.pull("test-org/private", HF_TOKEN="wrong"), ["needs a token"], "401 with a wrong token")
        expect_fail(env.pull("test-org/gated"), ["gated: accept the license on the Hub and set HF_TOKEN",
                                                 "test-org/gated"], "403 gated")
        expect_fail(env.pull("test-org/bin-only"), ["no model.safetensors", "pytorch_model.bin"], "no safetensors")
        expect_fail(env.pull("test-org/../x"), ["model reference"], "a bad reference")
        expect_fail(env.pull("test-org/x@../../etc"), ["'..'"], "a revision with ..")
        env.hub.clear_log()
        # LFS redirects go to another host name ("localhost", the CDN): the
        # token must not follow them there.
        env.hub.cdn_base = "http://localhost:%d" % env.hub.port
        p = env.pull("test-org/private", HF_TOKEN=token)
        check(p.returncode == 0, "private with HF_TOKEN: %s" % p.stderr)
        check(token not in p.stderr + p.stdout, "the token is never printed")
        check(all(e["auth"] for e in env.hub.requests(lambda e: "/cdn/" not in e["path"])),
              "the token is sent to the endpoint")
        cdn = env.hub.requests(lambda e: "/cdn/" in e["path"])
        check(len(cdn) == 3 and not any(e["auth"] for e in cdn),
              "no Authorization header on the redirect to another host: %s" % cdn)
        # The endpoint is unreachable: retried, then a message naming the URL.
        dead = "http://127.0.0.1:%d" % free_port()
        expect_fail(env.pull(REPO, "--retries", "1", HF_ENDPOINT=dead),
                    ["failed after 2 attempts", dead + "/api/models/"], "unreachable endpoint")
    finally:
        env.close()


def group_hostile(inferd):
    """A server that lies: every answer it controls is checked and bounded."""
    env = Env(inferd)
    try:
        def set_api(fn):
            env.hub.api_override[REPO] = fn

        def sib(info, name):
            return next(x for x in info["siblings"] if x["rfilename"] == name)

        set_api(lambda info: b"{not json")
        expect_fail(env.pull(), ["revision info is not JSON"], "malformed JSON")
        set_api(lambda info: b" " * (9 << 20))
        expect_fail(env.pull(), ["over 8388608 bytes"], "a 9 MiB API answer")

        def escape(info):
            info["siblings"].append({"rfilename": "../../../../tmp/evil", "blobId": "0" * 40, "size": 1})
            return json.dumps(info).encode()
        set_api(escape)
        expect_fail(env.pull(), ["unsafe file list", "'..'"], "a sibling named ../../..")

        def bad_etag(info):
            sib(info, "config.json")["blobId"] = "../x"
            return json.dumps(info).encode()
        set_api(bad_etag)
        expect_fail(env.pull(), ["config.json", "blobId"], "a blobId that is not hex")

        def short(info):
            s = sib(info, SHARDS[0])
            s["lfs"]["size"] = s["size"] = 1000
            return json.dumps(info).encode()
        set_api(short)
        expect_fail(env.pull(), ["sent more than its listed size 1000"], "a file longer than listed")
        env.hub.api_override.clear()

        shutil.rmtree(env.home, ignore_errors=True)
        env.hub.faults["loop"].add("config.json")
        expect_fail(env.pull(REPO, "--retries", "0"), ["config.json", "redirect"], "a redirect loop")
        env.hub.faults["loop"].clear()

        # An index that names shards outside the repo or not in it.
        for shard, why in (("../escape.safetensors", "invalid shard name"), ("sub/x.safetensors", "invalid shard"),
                           ("model-missing.safetensors", "does not have"), ("model.bin", "invalid shard name")):
            d = os.path.join(env.tmp, "idx-%d" % len(why))
            shutil.rmtree(d, ignore_errors=True)
            shutil.copytree(SHARDED, d)
            with open(os.path.join(d, "model.safetensors.index.json")) as f:
                idx = json.load(f)
            idx["weight_map"][next(iter(idx["weight_map"]))] = shard
            with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
                json.dump(idx, f)
            env.hub.add_repo("test-org/idx", d)
            expect_fail(env.pull("test-org/idx"), [why], "index naming %s" % shard)
        check(not os.path.exists("/tmp/evil") and not os.path.exists(os.path.join(env.home, "escape.safetensors")),
              "nothing written outside the cache")
    finally:
        env.close()


def group_offline(inferd):
    env = Env(inferd)
    try:
        p = env.pull(HF_HUB_OFFLINE="1")
        expect_fail(p, ["HF_HUB_OFFLINE", "inferctl model pull"], "offline, nothing cached")
        check(env.hub.requests() == [], "offline makes no request")
        check(env.pull().returncode == 0, "online pull")
        env.hub.clear_log()
        p = env.pull(HF_HUB_OFFLINE="1")
        snap = os.path.join(env.repo_dir, "snapshots", commit_sha(REPO, "main"))
        check(p.returncode == 0 and p.stdout.strip() == snap, "offline with the snapshot: %s %s" % (p.stdout, p.stderr))
        check(env.hub.requests() == [], "offline makes no request")
        os.unlink(os.path.join(env.repo_dir, "blobs", sha256_file(os.path.join(SHARDED, SHARDS[2]))))
        expect_fail(env.pull(HF_HUB_OFFLINE="1"), ["incomplete", SHARDS[2]], "offline, a shard missing")
        p = env.run("list")
        check(p.returncode == 0 and " no " in p.stdout, "list marks the snapshot incomplete:\n%s" % p.stdout)
    finally:
        env.close()


def group_disk(inferd):
    env = Env(inferd)
    mnt = os.path.join(env.tmp, "small")
    os.makedirs(mnt)
    try:
        m = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", mnt], capture_output=True, text=True)
        if m.returncode != 0:
            print("SKIP: cannot mount a 1 MiB tmpfs (%s); the full-disk check needs root" % m.stderr.strip())
            env.close()
            sys.exit(77)
        try:
            p = env.pull(HF_HUB_CACHE=mnt)
            expect_fail(p, ["not enough space in " + mnt, "MB still needed", "MB free"], "1 MiB file system")
            blobs = os.path.join(mnt, "models--test-org--tinystories-sharded", "blobs")
            big = [b for b in os.listdir(blobs) if os.path.getsize(os.path.join(blobs, b)) > 64 << 10]
            check(big == [], "no weights were written before the space check: %s" % big)
        finally:
            subprocess.run(["umount", mnt])
    finally:
        env.close()


def group_listrm(inferd):
    env = Env(inferd)
    try:
        check(env.pull().returncode == 0 and env.pull(REPO + "@v2").returncode == 0, "pulls")
        conf = os.path.join(env.tmp, "inferd.conf")
        with open(conf, "w") as f:
            f.write("[model]\npath = %s\n[model.old]\npath = %s@v2\n" % (REPO, REPO))
        p = env.run("list", "--config", conf)
        rows = [l.split() for l in p.stdout.splitlines()[1:]]
        check(p.returncode == 0 and len(rows) == 2, "list: two snapshots\n%s%s" % (p.stdout, p.stderr))
        by_rev = {r[1]: r for r in rows}
        check(set(by_rev) == {"main", "v2"}, "revisions main and v2: %s" % rows)
        if "main" in by_rev and "v2" in by_rev:
            check(by_rev["main"][0] == REPO and by_rev["main"][4] == "bf16" and by_rev["main"][5] == "yes"
                  and by_rev["main"][6:] == [conf, "[model]"], "main row: %s" % by_rev["main"])
            check(by_rev["v2"][6:] == [conf, "[model.old]"], "v2 is the [model.old] one: %s" % by_rev["v2"])
        p = env.run("list", "--config", conf, "--json")
        j = json.loads(p.stdout)
        main = [r for r in j if r["revision"] == "main"]
        size = sum(os.path.getsize(os.path.join(SHARDED, n)) for n in WANTED)
        check(len(j) == 2 and main and main[0]["used_by"] == conf + " [model]" and main[0]["commit"] == commit_sha(REPO, "main")
              and size <= main[0]["size_bytes"] < size + 64 * 4096, "list --json: %s" % j)
        # --cache-dir instead of the environment: the same rows, and the configured
        # ORG/NAME is looked up in that cache (the daemon's is rarely the caller's).
        p2 = env.run("list", "--config", conf, "--json", "--cache-dir", os.path.join(env.home, "hub"),
                     HF_HOME=os.path.join(env.tmp, "elsewhere"))
        check(p2.stdout == p.stdout, "list --cache-dir:\n%s\nvs\n%s" % (p2.stdout, p.stdout))
        # The format of an MLX checkpoint comes from its quantization block.
        env.hub.add_repo("test-org/mlx4", os.path.join(MODELS, "tinystories-656k-mlx-4bit"))
        check(env.pull("test-org/mlx4").returncode == 0, "pull of the MLX model")
        j = json.loads(env.run("list", "--json").stdout)
        mlx = [r for r in j if r["name"] == "test-org/mlx4"]
        check(mlx and mlx[0]["format"] == "mlx 4-bit g64" and mlx[0]["complete"], "MLX row: %s" % mlx)
        check(env.run("rm", "test-org/mlx4").returncode == 0, "rm of the MLX model")
        # rm refuses what the configuration serves.
        p = env.run("rm", REPO, "--config", conf)
        expect_fail(p, [conf + " [model]", "--force"], "rm of the configured model")
        p = env.run("rm", REPO + "@v2", "--config", conf)
        expect_fail(p, [conf + " [model.old]", "--force"], "rm of a [model.NAME] model")
        with open(conf, "w") as f:
            f.write("[model]\npath = %s\n" % REPO)
        p = env.run("rm", REPO, "--config", conf, "--force")
        check(p.returncode == 0 and "removed ref main" in p.stdout and "freed 0.0 MB" in p.stdout,
              "rm --force main: v2 keeps the blobs\n%s%s" % (p.stdout, p.stderr))
        check(not os.path.exists(os.path.join(env.repo_dir, "snapshots", commit_sha(REPO, "main"))), "main gone")
        check(len(os.listdir(os.path.join(env.repo_dir, "blobs"))) == len(WANTED), "the blobs stay for v2")
        p = env.run("rm", REPO + "@v2", "--config", conf)
        check(p.returncode == 0 and "freed 1.4 MB" in p.stdout, "rm v2 frees the blobs:\n%s%s" % (p.stdout, p.stderr))
        check(not os.path.exists(env.repo_dir), "the repo dir is gone when nothing is left")
        p = env.run("list", "--config", conf)
        check(p.returncode == 0 and len(p.stdout.splitlines()) == 1, "list is empty:\n%s" % p.stdout)
        expect_fail(env.run("rm", REPO), ["not in the Hugging Face cache", "inferctl model pull"], "rm of nothing")
    finally:
        env.close()


def group_rss(inferd):
    """Peak RSS of a pull stays bounded whatever the checkpoint size: a
    ~300 MB generated checkpoint, ru_maxrss of the finished process."""
    env = Env(inferd)
    try:
        big = os.path.join(env.tmp, "big")
        g = subprocess.run([env.inferctl, "model", "generate", "--preset", "qwen2.5-0.5b", "--layers", "1", big],
                           capture_output=True, text=True, timeout=300)
        check(g.returncode == 0, "generate: %s" % g.stderr)
        env.hub.add_repo("test-org/big", big)
        proc = subprocess.Popen([env.inferctl, "model", "pull", "test-org/big"], env=env.env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _, status, ru = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err = proc.stderr.read().decode()
        check(proc.returncode == 0, "pull of the big checkpoint: %s" % err)
        size = os.path.getsize(os.path.join(big, "model.safetensors"))
        # Sanitizer builds carry shadow memory and quarantine: a looser bound.
        asan = "libasan" in subprocess.run(["ldd", env.inferctl], capture_output=True, text=True).stdout
        limit = (256 if asan else 64) << 10
        print("pull of %.0f MB: peak RSS %d KiB (limit %d KiB%s)" % (size / 1e6, ru.ru_maxrss, limit,
                                                                      ", sanitizer build" if asan else ""))
        check(ru.ru_maxrss < limit, "peak RSS %d KiB over %d KiB" % (ru.ru_maxrss, limit))
        # On a terminal: one bar per file redrawn in place (\r), with MB/s and ETA.
        import pty
        shutil.rmtree(env.home)
        master, slave = pty.openpty()
        proc = subprocess.Popen([env.inferctl, "model", "pull", "test-org/big"], env=env.env(),
                                stdout=subprocess.PIPE, stderr=slave)
        os.close(slave)
        tty = b""
        while True:
            try:
                b = os.read(master, 65536)
            except OSError:  # EIO once the child closed the terminal
                break
            if not b:
                break
            tty += b
        proc.wait()
        os.close(master)
        text = tty.decode(errors="replace")
        bars = [l for l in text.split("\r") if "model.safetensors" in l and "MB/s ETA" in l]
        check(proc.returncode == 0 and len(bars) >= 2 and "downloading model.safetensors" not in text,
              "a progress bar redrawn in place on a terminal (%d redraws):\n%r" % (len(bars), text[-600:]))
    finally:
        env.close()


if __name__ == "__main__":
    run_groups("hub_test.py", {"layout": group_layout, "resume": group_resume, "concurrent": group_concurrent,
                               "corrupt": group_corrupt, "hostile": group_hostile,
                               "errors": group_errors, "offline": group_offline, "disk": group_disk,
                               "listrm": group_listrm, "rss": group_rss})
