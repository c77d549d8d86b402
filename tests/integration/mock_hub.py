#!/usr/bin/env python3
"""A mock Hugging Face Hub (python3 stdlib only): a real HTTP server on
127.0.0.1 that serves repositories from local directories with the Hub's URL
layout and headers, so `inferctl model pull` can be tested without the
network.

  GET /api/models/ORG/NAME/revision/REV[?blobs=true]  {"sha", "siblings": [...]}
  GET|HEAD /ORG/NAME/resolve/REV/FILE                 X-Repo-Commit, ETag, X-Linked-*;
                                                      LFS files (*.safetensors): 302 to /cdn/SHA256
  GET|HEAD /cdn/SHA256                                the content, Range -> 206

Errors as the Hub sends them: 401 (private repo, no or wrong token), 403
(gated), 404 with X-Error-Code RepoNotFound / RevisionNotFound /
EntryNotFound. Fault switches (MockHub.faults, or --drop/--flip/--stall):
drop the connection after N bytes of a file once, flip the byte at an offset
of a file on every send, stall for S seconds after N bytes once, answer a
path prefix with a status once. Every request is logged (MockHub.log, and
--log FILE as JSON lines) with its Range header and status.

As a script:  mock_hub.py --repo ORG/NAME=DIR[:private|:gated] [--port N]
                          [--port-file F] [--token T] [--log F]
"""
import argparse
import hashlib
import json
import os
import socket
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CHUNK = 1 << 20


def commit_sha(repo, revision):
    """A deterministic 40-hex commit per repo and revision."""
    return hashlib.sha1(("%s@%s" % (repo, revision)).encode()).hexdigest()


class RepoFile:
    """One file of a repo: its size, git blob sha1 and (LFS) sha256, computed
    once on first use (a 15 GB checkpoint takes a while to hash)."""

    def __init__(self, path, rfilename):
        self.path = path
        self.name = rfilename
        self.size = os.path.getsize(path)
        self.lfs = rfilename.endswith(".safetensors")
        self._sha256 = None
        self._blob = None
        self._lock = threading.Lock()

    def _hash(self):
        with self._lock:
            if self._blob is None:
                s256, s1 = hashlib.sha256(), hashlib.sha1(b"blob %d\0" % self.size)
                with open(self.path, "rb") as f:
                    while True:
                        b = f.read(CHUNK)
                        if not b:
                            break
                        s256.update(b)
                        s1.update(b)
                self._sha256, self._blob = s256.hexdigest(), s1.hexdigest()

    @property
    def sha256(self):
        self._hash()
        return self._sha256

    @property
    def blob_id(self):
        self._hash()
        return self._blob

    def etag(self):
        return self.sha256 if self.lfs else self.blob_id


class Repo:
    def __init__(self, repo_id, directory, private=False, gated=False, revisions=("main",)):
        self.id = repo_id
        self.private = private
        self.gated = gated
        self.files = {}
        for dirpath, _, names in os.walk(directory):
            for n in sorted(names):
                p = os.path.join(dirpath, n)
                rel = os.path.relpath(p, directory)
                self.files[rel] = RepoFile(p, rel)
        # Every revision serves the same files (enough for dedupe tests): the
        # commit differs, the blobs do not.
        self.commits = {rev: commit_sha(repo_id, rev) for rev in revisions}

    def commit_for(self, rev):
        if rev in self.commits:
            return self.commits[rev]
        if rev in self.commits.values():
            return rev
        return None


class MockHub:
    """The server; start() runs it in a thread, stop() ends it."""

    def __init__(self, token=None, log_path=None, port=0):
        self.repos = {}
        self.token = token
        self.log = []
        self.log_path = log_path
        self.faults = {"drop": {}, "flip": {}, "stall": {}, "status_once": {}, "loop": set()}
        # repo id -> function(info dict) -> bytes: a hostile revision API answer.
        self.api_override = {}
        self.lock = threading.Lock()
        self.cdn = {}  # sha256 -> RepoFile
        # Where LFS redirects go: this server by path (None), or a base URL
        # such as http://localhost:PORT, another host name for the same
        # server, as the Hub's CDN is another host.
        self.cdn_base = None
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_HEAD(self):
                hub._handle(self, head=True)

            def do_GET(self):
                hub._handle(self, head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = "http://127.0.0.1:%d" % self.port
        self.thread = None

    def add_repo(self, repo_id, directory, **kw):
        r = Repo(repo_id, directory, **kw)
        self.repos[repo_id] = r
        return r

    def start(self):
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def requests(self, pred=lambda e: True):
        with self.lock:
            return [e for e in self.log if pred(e)]

    def clear_log(self):
        with self.lock:
            self.log.clear()

    # ------------------------------------------------------------------ requests

    def _record(self, h, status, nbytes=0, note=""):
        e = {"method": h.command, "path": h.path, "range": h.headers.get("Range"),
             "auth": bool(h.headers.get("Authorization")), "status": status, "bytes": nbytes, "note": note}
        with self.lock:
            self.log.append(e)
            if self.log_path:
                with open(self.log_path, "a") as f:
                    f.write(json.dumps(e) + "\n")

    def _send(self, h, status, headers=(), body=b"", head=False, error_code=None):
        h.send_response(status)
        if error_code:
            h.send_header("X-Error-Code", error_code)
        for k, v in headers:
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if not head:
            h.wfile.write(body)
        self._record(h, status, len(body))

    def _error(self, h, status, code, message, head):
        body = json.dumps({"error": message}).encode()
        self._send(h, status, [("Content-Type", "application/json")], body, head, error_code=code)

    def _authorized(self, h, repo, head):
        """Sends the Hub's 401/403 and returns False when repo needs a token."""
        auth = h.headers.get("Authorization", "")
        good = self.token is not None and auth == "Bearer " + self.token
        if repo.private and not good:
            self._error(h, 401, "RepoNotFound", "Repository Not Found for url: %s." % h.path, head)
            return False
        if repo.gated and not good:
            self._error(h, 403, "GatedRepo", "Access to model %s is restricted." % repo.id, head)
            return False
        return True

    def _handle(self, h, head):
        parsed = urllib.parse.urlsplit(h.path)
        path = parsed.path
        with self.lock:
            once = next((p for p in self.faults["status_once"] if path.startswith(p)), None)
            status = self.faults["status_once"].pop(once) if once else None
        if status:
            return self._error(h, status, None, "injected", head)
        parts = path.split("/")
        try:
            if path.startswith("/api/models/") and len(parts) >= 7 and parts[5] == "revision":
                repo_id = parts[3] + "/" + parts[4]
                rev = urllib.parse.unquote("/".join(parts[6:]))
                return self._api(h, repo_id, rev, "blobs=true" in parsed.query, head)
            if path.startswith("/cdn/") and len(parts) == 3:
                f = self.cdn.get(parts[2])
                if not f:
                    return self._error(h, 404, "EntryNotFound", "no such object", head)
                return self._content(h, f, head)
            if len(parts) >= 6 and parts[3] == "resolve":
                repo_id = parts[1] + "/" + parts[2]
                rev = urllib.parse.unquote(parts[4])
                name = urllib.parse.unquote("/".join(parts[5:]))
                return self._resolve(h, repo_id, rev, name, head)
            self._error(h, 404, None, "not found", head)
        except (BrokenPipeError, ConnectionResetError):
            self._record(h, 0, 0, "client went away")

    def _api(self, h, repo_id, rev, blobs, head):
        repo = self.repos.get(repo_id)
        if not repo:
            return self._error(h, 404, "RepoNotFound",
                               "Repository Not Found for url: %s." % h.path, head)
        if not self._authorized(h, repo, head):
            return
        commit = repo.commit_for(rev)
        if not commit:
            return self._error(h, 404, "RevisionNotFound", "Invalid rev id: %s" % rev, head)
        sibs = []
        for f in repo.files.values():
            s = {"rfilename": f.name}
            if blobs:
                s["blobId"] = f.blob_id
                s["size"] = f.size
                if f.lfs:
                    s["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": 134}
            sibs.append(s)
        info = {"_id": commit[:24], "id": repo.id, "modelId": repo.id, "sha": commit, "private": repo.private,
                "gated": "manual" if repo.gated else False, "siblings": sibs}
        override = self.api_override.get(repo.id)
        body = override(info) if override else json.dumps(info).encode()
        self._send(h, 200, [("Content-Type", "application/json")], body, head)

    def _resolve(self, h, repo_id, rev, name, head):
        repo = self.repos.get(repo_id)
        if not repo:
            return self._error(h, 404, "RepoNotFound", "Repository Not Found", head)
        if not self._authorized(h, repo, head):
            return
        commit = repo.commit_for(rev)
        if not commit:
            return self._error(h, 404, "RevisionNotFound", "Invalid rev id: %s" % rev, head)
        f = repo.files.get(name)
        if not f:
            return self._error(h, 404, "EntryNotFound", "%s does not exist on %s" % (name, rev), head)
        common = [("X-Repo-Commit", commit), ("ETag", '"%s"' % f.etag())]
        if name in self.faults["loop"]:
            return self._send(h, 302, common + [("Location", h.path)], b"", head)
        if f.lfs:
            self.cdn[f.sha256] = f
            common += [("X-Linked-Etag", '"%s"' % f.sha256), ("X-Linked-Size", str(f.size)),
                       ("Location", "%s/cdn/%s?name=%s" % (self.cdn_base or "", f.sha256, urllib.parse.quote(name)))]
            return self._send(h, 302, common, b"", head)
        return self._content(h, f, head, common)

    def _content(self, h, f, head, extra=()):
        start, end = 0, f.size - 1
        rng = h.headers.get("Range")
        status = 200
        if rng:
            try:
                unit, spec = rng.split("=", 1)
                a, b = spec.split("-", 1)
                start = int(a)
                end = int(b) if b else f.size - 1
                assert unit.strip() == "bytes" and start <= end
            except (ValueError, AssertionError):
                return self._error(h, 400, None, "bad range %r" % rng, head)
            if start >= f.size:
                return self._send(h, 416, [("Content-Range", "bytes */%d" % f.size)], b"", head)
            end = min(end, f.size - 1)
            status = 206
        n = end - start + 1
        h.send_response(status)
        for k, v in extra:
            h.send_header(k, v)
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Length", str(n))
        h.send_header("ETag", '"%s"' % f.etag())
        if status == 206:
            h.send_header("Content-Range", "bytes %d-%d/%d" % (start, end, f.size))
        h.end_headers()
        if head:
            return self._record(h, status)
        with self.lock:
            drop = self.faults["drop"].get(f.name)
            stall = self.faults["stall"].get(f.name)
            flip = self.faults["flip"].get(f.name)
        sent, note = 0, ""
        with open(f.path, "rb") as src:
            src.seek(start)
            pos = start
            while pos <= end:
                want = min(CHUNK, end - pos + 1)
                # Cut chunks at fault positions so they act at the exact byte.
                for at in (drop, stall[0] if stall else None):
                    if at is not None and pos < at < pos + want:
                        want = at - pos
                if drop is not None and pos >= drop:
                    with self.lock:
                        self.faults["drop"].pop(f.name, None)
                    note = "dropped at %d" % pos
                    h.close_connection = True
                    try:
                        h.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    break
                if stall and pos >= stall[0]:
                    with self.lock:
                        self.faults["stall"].pop(f.name, None)
                    note = "stalled at %d" % pos
                    time.sleep(stall[1])
                    stall = None
                data = bytearray(src.read(want))
                if flip is not None and pos <= flip < pos + len(data):
                    data[flip - pos] ^= 0x01
                try:
                    h.wfile.write(data)
                except OSError:
                    # The client gave up (a stall it timed out on): log the
                    # request all the same, so tests can see it happened.
                    note += "; client went away"
                    h.close_connection = True
                    break
                pos += len(data)
                sent += len(data)
        self._record(h, status, sent, note)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", action="append", default=[], help="ORG/NAME=DIR[:private|:gated]")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file", help="write the port here once listening")
    ap.add_argument("--token", help="the token private and gated repos accept")
    ap.add_argument("--log", help="append each request as a JSON line")
    ap.add_argument("--drop", action="append", default=[], help="FILE:N drop after N bytes, once")
    ap.add_argument("--flip", action="append", default=[], help="FILE:OFFSET flip that byte")
    ap.add_argument("--stall", action="append", default=[], help="FILE:N:SECONDS stall once")
    a = ap.parse_args()
    hub = MockHub(token=a.token, log_path=a.log, port=a.port)
    for spec in a.repo:
        repo_id, rest = spec.split("=", 1)
        directory, _, flag = rest.partition(":")
        hub.add_repo(repo_id, directory, private=flag == "private", gated=flag == "gated")
    for d in a.drop:
        name, n = d.rsplit(":", 1)
        hub.faults["drop"][name] = int(n)
    for d in a.flip:
        name, n = d.rsplit(":", 1)
        hub.faults["flip"][name] = int(n)
    for d in a.stall:
        name, n, s = d.rsplit(":", 2)
        hub.faults["stall"][name] = (int(n), float(s))
    if a.port_file:
        with open(a.port_file + ".tmp", "w") as f:
            f.write(str(hub.port))
        os.rename(a.port_file + ".tmp", a.port_file)
    try:
        hub.server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
