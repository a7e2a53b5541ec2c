#!/usr/bin/env python3
"""fake_k8s.py - a local stand-in for the Kubernetes API server's pod list and
watch, for atlasgate's pod discovery tests (userspace/discovery/).

Python 3 standard library only (plus the openssl CLI to make its PKI). HTTPS
(TLS 1.2+), HTTP/1.1, one thread per connection, on a 127.x address.

Command line
------------
  fake_k8s.py --pki-dir DIR [--listen 127.88.0.1] [--port 0]
              [--token TOKEN | --token-file FILE]
              [--bookmark-interval 1.0] [--ready-file FILE] [--quiet]

  --pki-dir    created if needed: ca.crt (the CA the client must trust),
               server.crt/server.key (SAN IP:<listen>, DNS:kubernetes.default.svc),
               other-ca.crt (an unrelated CA, for negative tests)
  --token      the bearer token every API request must carry (default
               "fake-sa-token"); --token-file re-reads the file per request
  --ready-file "<addr> <port>\\n" is written once listening

API (Authorization: Bearer <token> required; 401 Status otherwise)
---------------------------------------------------------------------
  GET /api/v1/pods[?labelSelector=..][&fieldSelector=spec.nodeName=..][&limit=N][&continue=T]
      [&resourceVersion=RV[&resourceVersionMatch=NotOlderThan]]
      -> PodList, metadata.resourceVersion = the current resourceVersion (the
         freshest answer satisfies any resourceVersion asked for).
         limit/continue page the list; a continue token older than the last
         compaction answers HTTP 410 (reason Expired). As the real server:
         resourceVersionMatch without resourceVersion, or resourceVersion
         with continue, is a 400.
  GET /api/v1/pods?watch=1[&resourceVersion=RV][&allowWatchBookmarks=true][&timeoutSeconds=S]
      -> 200, Transfer-Encoding: chunked, one JSON event per line:
         {"type":"ADDED|MODIFIED|DELETED|BOOKMARK|ERROR","object":{...}}
         RV absent or "0": ADDED for every matching pod, then live events.
         RV older than the last compaction: one ERROR event, code 410, reason
         Expired, and the stream ends. A pod that starts or stops matching the
         selectors is sent as ADDED or DELETED, as the real server does.
         Bookmarks every --bookmark-interval seconds when asked for.
  Label selectors: k=v, k==v, k!=v, k, !k, k in (a,b), k notin (a,b).
  Field selectors: spec.nodeName=X, spec.nodeName!=X, metadata.namespace=X.

Control (no token needed; JSON bodies)
-------------------------------------
  POST /__fake/pods  {"op":"add|modify|delete", "pod":{Pod}, "silent":false}
      add: metadata.namespace defaults to "default", uid is made up unless
      given, phase defaults to Running, qosClass to BestEffort.
      modify: metadata.labels, spec.nodeName, status.* and
      metadata.deletionTimestamp given in "pod" replace the stored ones.
      silent: the change is not recorded in the history, and everything up to
      it is compacted: watchers miss it and can only recover by relisting.
      -> {"pod":{...stored pod...}, "resourceVersion":"N"}
  POST /__fake/gone  the open watches (or, if none is open, the next watch)
      get an ERROR event with code 410 and end; history is compacted.
  POST /__fake/drop  every open watch connection is cut (no terminating chunk,
      no TLS close_notify), as when an API server or load balancer dies.
  GET  /__fake/state {"resourceVersion","compacted","lists","watches",
      "open_watches","requests_401","list_queries":[{param: value}, ...],
      "pods":["ns/name",...]}

SIGTERM / SIGINT: stop, exit 0.
"""

import argparse
import base64
import copy
import http.server
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid

# --- PKI -----------------------------------------------------------------------


def _openssl(*args):
    subprocess.run(["openssl", *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def make_pki(d, listen):
    """CA + server certificate for `listen` (IP) via the openssl CLI; idempotent."""
    os.makedirs(d, exist_ok=True)
    ca_crt, ca_key = os.path.join(d, "ca.crt"), os.path.join(d, "ca.key")
    crt, key = os.path.join(d, "server.crt"), os.path.join(d, "server.key")
    other = os.path.join(d, "other-ca.crt")
    sans_file = os.path.join(d, "server.sans")
    sans = "IP:%s,DNS:kubernetes.default.svc,DNS:kubernetes.default,DNS:kubernetes" % listen
    if not (os.path.exists(ca_crt) and os.path.exists(ca_key)):
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-keyout", ca_key, "-out", ca_crt, "-days", "3650", "-subj", "/CN=fake-k8s test CA",
                 "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    have = open(sans_file).read() if os.path.exists(sans_file) else ""
    if have != sans or not (os.path.exists(crt) and os.path.exists(key)):
        csr = os.path.join(d, "server.csr")
        ext = os.path.join(d, "server.ext")
        with open(ext, "w") as f:
            f.write("subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                    "extendedKeyUsage=serverAuth\n" % sans)
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-keyout", key, "-out", csr, "-subj", "/CN=kube-apiserver")
        _openssl("x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key, "-CAcreateserial",
                 "-out", crt, "-days", "825", "-extfile", ext)
        with open(sans_file, "w") as f:
            f.write(sans)
    if not os.path.exists(other):
        other_key = os.path.join(d, "other-ca.key")
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-keyout", other_key, "-out", other, "-days", "3650", "-subj", "/CN=unrelated CA",
                 "-addext", "basicConstraints=critical,CA:TRUE")
    return ca_crt, crt, key


# --- selectors -----------------------------------------------------------------

_REQ = re.compile(r"""^\s*(?:
      (?P<not>!)\s*(?P<nkey>[A-Za-z0-9._/-]+)
    | (?P<key>[A-Za-z0-9._/-]+)\s*(?:
          (?P<op>==|=|!=)\s*(?P<val>[A-Za-z0-9._-]*)
        | \s(?P<setop>in|notin)\s*\((?P<vals>[^)]*)\)
      )?
    )\s*$""", re.X)


def _split_top(s):
    out, depth, cur = [], 0, ""
    for c in s:
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        if c == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += c
    out.append(cur)
    return out


def parse_label_selector(s):
    """-> list of predicates over a labels dict; ValueError when malformed."""
    preds = []
    if not s or not s.strip():
        return preds
    for part in _split_top(s):
        m = _REQ.match(part)
        if not m:
            raise ValueError("unable to parse requirement: %r" % part)
        if m.group("not"):
            k = m.group("nkey")
            preds.append(lambda l, k=k: k not in l)
        elif m.group("op"):
            k, op, v = m.group("key"), m.group("op"), m.group("val")
            if op == "!=":
                preds.append(lambda l, k=k, v=v: l.get(k) != v)
            else:
                preds.append(lambda l, k=k, v=v: l.get(k) == v)
        elif m.group("setop"):
            k = m.group("key")
            vals = {x.strip() for x in m.group("vals").split(",")}
            if m.group("setop") == "in":
                preds.append(lambda l, k=k, vals=vals: k in l and l[k] in vals)
            else:
                preds.append(lambda l, k=k, vals=vals: k not in l or l[k] not in vals)
        else:
            k = m.group("key")
            preds.append(lambda l, k=k: k in l)
    return preds


def parse_field_selector(s):
    preds = []
    if not s:
        return preds
    for part in s.split(","):
        m = re.match(r"^\s*([a-zA-Z.]+)\s*(==|=|!=)\s*(.*?)\s*$", part)
        if not m or m.group(1) not in ("spec.nodeName", "metadata.namespace", "metadata.name"):
            raise ValueError("field label not supported: %r" % part)
        field, op, val = m.groups()

        def get(p, field=field):
            a, b = field.split(".")
            return (p.get(a) or {}).get(b, "")
        if op == "!=":
            preds.append(lambda p, get=get, val=val: get(p) != val)
        else:
            preds.append(lambda p, get=get, val=val: get(p) == val)
    return preds


def matches(pod, lpreds, fpreds):
    if pod is None:
        return False
    labels = pod.get("metadata", {}).get("labels") or {}
    return all(p(labels) for p in lpreds) and all(p(pod) for p in fpreds)


# --- state ---------------------------------------------------------------------


class State:
    def __init__(self):
        self.cv = threading.Condition()
        self.rv = 100
        self.pods = {}          # (ns, name) -> pod dict
        self.history = []       # (rv, type, old, new)
        self.compacted = 0      # watches from an rv below this get 410
        self.gone_gen = 0       # bumped by /__fake/gone
        self.gone_pending = False
        self.drop_gen = 0       # bumped by /__fake/drop
        self.lists = 0
        self.watches = 0
        self.open_watches = 0
        self.requests_401 = 0
        self.list_queries = []  # the last 50 list requests' query parameters

    def next_rv(self):
        self.rv += 1
        return str(self.rv)

    def apply(self, op, given, silent):
        with self.cv:
            meta = given.get("metadata") or {}
            name = meta.get("name")
            ns = meta.get("namespace") or "default"
            if not name:
                raise ValueError("pod.metadata.name is required")
            key = (ns, name)
            old = copy.deepcopy(self.pods.get(key))
            if op == "add":
                if old is not None:
                    raise ValueError("pod %s/%s exists" % key)
                pod = copy.deepcopy(given)
                pod.setdefault("apiVersion", "v1")
                pod.setdefault("kind", "Pod")
                m = pod.setdefault("metadata", {})
                m["namespace"] = ns
                m.setdefault("uid", str(uuid.uuid4()))
                m.setdefault("creationTimestamp", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
                pod.setdefault("spec", {}).setdefault("containers", [{"name": "main", "image": "busybox"}])
                st = pod.setdefault("status", {})
                st.setdefault("phase", "Running")
                st.setdefault("qosClass", "BestEffort")
                typ = "ADDED"
            elif op == "modify":
                if old is None:
                    raise ValueError("no pod %s/%s" % key)
                pod = copy.deepcopy(old)
                if "labels" in meta:
                    pod["metadata"]["labels"] = meta["labels"]
                if "deletionTimestamp" in meta:
                    pod["metadata"]["deletionTimestamp"] = meta["deletionTimestamp"]
                if "nodeName" in (given.get("spec") or {}):
                    pod["spec"]["nodeName"] = given["spec"]["nodeName"]
                for k, v in (given.get("status") or {}).items():
                    pod["status"][k] = v
                typ = "MODIFIED"
            elif op == "delete":
                if old is None:
                    raise ValueError("no pod %s/%s" % key)
                pod = copy.deepcopy(old)
                typ = "DELETED"
            else:
                raise ValueError("op must be add, modify or delete")
            rv = self.next_rv()
            pod["metadata"]["resourceVersion"] = rv
            if typ == "DELETED":
                del self.pods[key]
            else:
                self.pods[key] = pod
            if silent:
                # As if etcd compacted past it: nobody can watch across this.
                self.compacted = self.rv
            else:
                self.history.append((self.rv, typ, old, copy.deepcopy(pod)))
            self.cv.notify_all()
            return pod, rv

    def gone(self):
        with self.cv:
            self.compacted = self.rv
            self.gone_gen += 1
            self.gone_pending = True
            self.cv.notify_all()

    def drop(self):
        with self.cv:
            self.drop_gen += 1
            self.cv.notify_all()


def status_body(code, reason, message):
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


def encode_continue(rv, offset):
    return base64.urlsafe_b64encode(json.dumps({"rv": rv, "offset": offset}).encode()).decode()


def decode_continue(tok):
    d = json.loads(base64.urlsafe_b64decode(tok.encode()))
    return int(d["rv"]), int(d["offset"])


# --- HTTP ------------------------------------------------------------------------


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-k8s/1"

    def log_message(self, fmt, *args):
        if not self.server.quiet:
            sys.stderr.write("fake_k8s: %s\n" % (fmt % args))

    # -- helpers --
    def send_json(self, code, obj, close=False):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def read_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def authorized(self):
        want = self.server.expected_token()
        got = self.headers.get("Authorization", "")
        if got == "Bearer " + want:
            return True
        with self.server.state.cv:
            self.server.state.requests_401 += 1
        self.send_json(401, status_body(401, "Unauthorized", "Unauthorized"))
        return False

    # -- routes --
    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        q = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query, keep_blank_values=True).items()}
        if url.path == "/__fake/state":
            s = self.server.state
            with s.cv:
                self.send_json(200, {"resourceVersion": str(s.rv), "compacted": s.compacted, "lists": s.lists,
                                     "watches": s.watches, "open_watches": s.open_watches,
                                     "requests_401": s.requests_401, "list_queries": s.list_queries,
                                     "pods": sorted("%s/%s" % k for k in s.pods)})
            return
        if url.path != "/api/v1/pods":
            self.send_json(404, status_body(404, "NotFound", "the server could not find the requested resource"))
            return
        if not self.authorized():
            return
        try:
            lpreds = parse_label_selector(q.get("labelSelector", ""))
            fpreds = parse_field_selector(q.get("fieldSelector", ""))
        except ValueError as e:
            self.send_json(400, status_body(400, "BadRequest", str(e)))
            return
        if q.get("watch") in ("1", "true"):
            self.watch(q, lpreds, fpreds)
        else:
            self.list(q, lpreds, fpreds)

    def list(self, q, lpreds, fpreds):
        s = self.server.state
        # The API server's own parameter rules.
        if q.get("resourceVersionMatch") and not q.get("resourceVersion"):
            self.send_json(400, status_body(400, "BadRequest", "resourceVersionMatch is forbidden unless resourceVersion is provided"))
            return
        if q.get("continue") and q.get("resourceVersion"):
            self.send_json(400, status_body(400, "BadRequest", "specifying resource version is not allowed when using continue"))
            return
        if q.get("resourceVersionMatch") not in (None, "NotOlderThan", "Exact"):
            self.send_json(400, status_body(400, "BadRequest", "invalid resourceVersionMatch"))
            return
        with s.cv:
            s.list_queries = (s.list_queries + [q])[-50:]
            offset, rv = 0, s.rv
            if q.get("continue"):
                try:
                    rv, offset = decode_continue(q["continue"])
                except Exception:
                    self.send_json(400, status_body(400, "BadRequest", "invalid continue token"))
                    return
                if rv < s.compacted:
                    self.send_json(410, status_body(410, "Expired", "The provided continue parameter is too old"))
                    return
            items = [copy.deepcopy(p) for k, p in sorted(s.pods.items()) if matches(p, lpreds, fpreds)]
            s.lists += 1 if offset == 0 else 0
        limit = int(q.get("limit") or 0)
        meta = {"resourceVersion": str(rv)}
        if limit > 0 and offset + limit < len(items):
            meta["continue"] = encode_continue(rv, offset + limit)
            items = items[offset:offset + limit]
        else:
            items = items[offset:]
        self.send_json(200, {"kind": "PodList", "apiVersion": "v1", "metadata": meta, "items": items})

    def write_chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def event(self, typ, obj):
        self.write_chunk(json.dumps({"type": typ, "object": obj}).encode() + b"\n")

    def watch(self, q, lpreds, fpreds):
        s = self.server.state
        rv_param = q.get("resourceVersion", "")
        bookmarks = q.get("allowWatchBookmarks") in ("1", "true")
        timeout = float(q.get("timeoutSeconds") or 1800)
        deadline = time.monotonic() + timeout
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        with s.cv:
            s.watches += 1
            s.open_watches += 1
            gone_gen, drop_gen = s.gone_gen, s.drop_gen
            consume_gone = s.gone_pending
            s.gone_pending = False
        try:
            with s.cv:
                if consume_gone or (rv_param not in ("", "0") and int(rv_param) < s.compacted):
                    gone = True
                else:
                    gone = False
                    if rv_param in ("", "0"):
                        initial = [copy.deepcopy(p) for k, p in sorted(s.pods.items()) if matches(p, lpreds, fpreds)]
                        since = s.rv
                    else:
                        initial = []
                        since = int(rv_param)
            if gone:
                self.event("ERROR", status_body(410, "Expired", "too old resource version: %s (%d)" % (rv_param, s.compacted)))
                self.write_chunk(b"")
                return
            for p in initial:
                self.event("ADDED", p)
            next_bookmark = time.monotonic() + self.server.bookmark_interval
            while True:
                out = []
                with s.cv:
                    s.cv.wait_for(lambda: s.drop_gen != drop_gen or s.gone_gen != gone_gen or
                                  (s.history and s.history[-1][0] > since), timeout=0.1)
                    if s.drop_gen != drop_gen:
                        # Cut the connection: no terminating chunk, no close_notify.
                        self.close_connection = True
                        try:
                            raw = socket.socket(fileno=os.dup(self.connection.fileno()))
                            raw.shutdown(socket.SHUT_RDWR)
                            raw.close()
                        except OSError:
                            pass
                        return
                    if s.gone_gen != gone_gen:
                        s.gone_pending = False
                        gone = True
                    else:
                        for rv, typ, old, new in s.history:
                            if rv <= since:
                                continue
                            since = rv
                            was, now = matches(old, lpreds, fpreds), matches(new, lpreds, fpreds)
                            if typ == "ADDED" and now:
                                out.append(("ADDED", new))
                            elif typ == "DELETED" and was:
                                out.append(("DELETED", new))
                            elif typ == "MODIFIED":
                                if was and now:
                                    out.append(("MODIFIED", new))
                                elif was:
                                    out.append(("DELETED", new))
                                elif now:
                                    out.append(("ADDED", new))
                        cur_rv = s.rv
                if gone:
                    self.event("ERROR", status_body(410, "Expired", "too old resource version"))
                    self.write_chunk(b"")
                    return
                for typ, obj in out:
                    self.event(typ, obj)
                now = time.monotonic()
                if bookmarks and now >= next_bookmark:
                    self.event("BOOKMARK", {"kind": "Pod", "apiVersion": "v1",
                                            "metadata": {"resourceVersion": str(max(since, cur_rv))}})
                    since = max(since, cur_rv)
                    next_bookmark = now + self.server.bookmark_interval
                if now >= deadline:
                    self.write_chunk(b"")
                    return
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
            self.close_connection = True
        finally:
            with s.cv:
                s.open_watches -= 1

    def do_POST(self):
        url = urllib.parse.urlsplit(self.path)
        s = self.server.state
        try:
            body = json.loads(self.read_body() or b"{}")
        except ValueError:
            self.send_json(400, {"error": "invalid JSON"})
            return
        if url.path == "/__fake/pods":
            try:
                pod, rv = s.apply(body.get("op"), body.get("pod") or {}, bool(body.get("silent")))
            except ValueError as e:
                self.send_json(400, {"error": str(e)})
                return
            self.send_json(200, {"pod": pod, "resourceVersion": rv})
        elif url.path == "/__fake/gone":
            s.gone()
            self.send_json(200, {})
        elif url.path == "/__fake/drop":
            s.drop()
            self.send_json(200, {})
        else:
            self.send_json(404, {"error": "not found"})


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, ctx, state, token, token_file, bookmark_interval, quiet):
        super().__init__(addr, Handler)
        self.ctx, self.state, self.token, self.token_file = ctx, state, token, token_file
        self.bookmark_interval, self.quiet = bookmark_interval, quiet

    def expected_token(self):
        if self.token_file:
            with open(self.token_file) as f:
                return f.read().strip()
        return self.token

    def get_request(self):
        sock, addr = self.socket.accept()
        # The handshake happens in the connection's own thread, on first I/O.
        return self.ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def handle_error(self, request, client_address):
        if not self.quiet:
            super().handle_error(request, client_address)


def main():
    ap = argparse.ArgumentParser(description="Local stand-in for the Kubernetes API's pod list/watch")
    ap.add_argument("--listen", default="127.88.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--pki-dir", required=True)
    ap.add_argument("--token", default="fake-sa-token")
    ap.add_argument("--token-file")
    ap.add_argument("--bookmark-interval", type=float, default=1.0)
    ap.add_argument("--ready-file")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args()

    _, crt, key = make_pki(a.pki_dir, a.listen)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(crt, key)
    ctx.set_alpn_protocols(["http/1.1"])
    srv = Server((a.listen, a.port), ctx, State(), a.token, a.token_file, a.bookmark_interval, a.quiet)
    host, port = srv.server_address[:2]

    def stop(*_):
        threading.Thread(target=srv.shutdown, daemon=True).start()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if a.ready_file:
        tmp = a.ready_file + ".tmp"
        with open(tmp, "w") as f:
            f.write("%s %d\n" % (host, port))
        os.rename(tmp, a.ready_file)
    if not a.quiet:
        sys.stderr.write("fake_k8s: listening on https://%s:%d\n" % (host, port))
    try:
        srv.serve_forever(poll_interval=0.2)
    finally:
        srv.server_close()
        if a.ready_file:
            try:
                os.unlink(a.ready_file)
            except OSError:
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
