#!/usr/bin/env python3
"""fake_engine.py - a stand-in for the Docker-compatible API of Podman or
Docker on a Unix socket, enough for atlasgate's container watcher
(userspace/discovery/container_watcher.cpp). Standard library only.

Serves, like `podman system service`:
  GET /v1.41/containers/json?all=true&filters={"label":["k=v"]}
                                                           containers with the label (all=true: stopped ones too)
  GET /v1.41/containers/<id>/json                          inspect (404 for an unknown id)
  GET /v1.41/events?filters={"type":["container"],"label":["k=v"]}
                                                           chunked stream, one JSON event per line
Used in-process by test_container_watch.py:

  eng = FakeEngine("/tmp/x/engine.sock"); eng.start()
  cid = eng.run("agent-1", {"atlasgate.io/inject": "true"})   # emits "start"
  eng.die(cid); eng.start_again(cid); eng.remove(cid)           # "die", "start" (new pid), "destroy"
  eng.stop()                                                    # the engine "restarts": every connection drops
  eng.raw_event(b"garbage\\n")                                   # hostile bytes on the events stream
  eng.list_override = b"not json"                                # hostile list answers
  eng.inspect_override[cid] = {...}                              # hostile inspect answers
  eng.before_inspect = fn                                         # fn(cid): None, or (status, body) instead
  eng.ignore_filters = True                                      # an engine that lists everything
Requests are recorded in eng.requests (method, target).
"""

import http.server
import itertools
import json
import os
import queue
import socketserver
import threading
import time
import urllib.parse


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        pass  # a client that hangs up early (as the watcher does on an oversized body) is no error here


class FakeEngine:
    def __init__(self, path):
        self.path = path
        self.lock = threading.Lock()
        self.containers = {}  # id -> dict(name, labels, running, pid, started)
        self.subscribers = []  # queues of events streams
        self.requests = []
        self.list_override = None  # bytes: the body of the next lists
        self.list_status = 200
        self.inspect_override = {}  # id -> dict or bytes
        self.before_inspect = None  # callable(id) -> None, or (status, body) to answer instead
        self.ignore_filters = False
        self.server = None
        self.thread = None
        self._pids = itertools.count(1000)
        self._ids = itertools.count(1)

    # --- engine lifecycle -------------------------------------------------------

    def start(self):
        if os.path.exists(self.path):
            os.unlink(self.path)
        engine = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def address_string(self):
                return "unix"

            def do_GET(self):
                engine._handle(self)

        self.server = _Server(self.path, Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        """Close the socket and every stream, as an engine that exits does."""
        if self.server is None:
            return
        with self.lock:
            subs, self.subscribers = self.subscribers, []
        for q, _ in subs:
            q.put(None)
        self.server.shutdown()
        self.server.server_close()
        self.server = None
        if os.path.exists(self.path):
            os.unlink(self.path)

    # --- containers -----------------------------------------------------------

    def new_id(self):
        return "%064x" % (0xa000000000000000000000000000000000000000000000000000000000000000 + next(self._ids))

    def run(self, name, labels, cid=None, event=True):
        cid = cid or self.new_id()
        with self.lock:
            self.containers[cid] = {"name": name, "labels": dict(labels), "running": True, "pid": next(self._pids),
                                    "started": time.time()}
        if event:
            self.event(cid, "start")
        return cid

    def die(self, cid, event=True):
        with self.lock:
            self.containers[cid]["running"] = False
            self.containers[cid]["pid"] = 0
        if event:
            self.event(cid, "die")

    def start_again(self, cid):
        with self.lock:
            c = self.containers[cid]
            c["running"] = True
            c["pid"] = next(self._pids)
            c["started"] = time.time()
        self.event(cid, "start")

    def remove(self, cid, event=True):
        with self.lock:
            c = self.containers.pop(cid)
        if event:
            self.event(cid, "destroy", c)

    # --- events -----------------------------------------------------------------

    def event(self, cid, action, c=None):
        with self.lock:
            c = c or self.containers[cid]
            attrs = dict(c["labels"])
            attrs["name"] = c["name"]
            line = json.dumps({"status": action, "id": cid, "Type": "container", "Action": action,
                               "Actor": {"ID": cid, "Attributes": attrs}, "scope": "local",
                               "time": int(time.time()), "timeNano": time.time_ns()}).encode() + b"\n"
            subs = [(q, lab) for q, lab in self.subscribers if self._matches(c["labels"], lab)]
        for q, _ in subs:
            q.put(line)

    def raw_event(self, data):
        with self.lock:
            subs = list(self.subscribers)
        for q, _ in subs:
            q.put(data)

    def streams(self):
        with self.lock:
            return len(self.subscribers)

    # --- HTTP -------------------------------------------------------------------

    def _matches(self, labels, wanted):
        if self.ignore_filters:
            return True
        for f in wanted:
            k, eq, v = f.partition("=")
            if k not in labels or (eq and labels[k] != v):
                return False
        return True

    def _send(self, h, status, body):
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        try:
            h.wfile.write(body)
        except OSError:
            pass  # the watcher stopped reading (body over its limit)

    def _inspect(self, cid, c):
        return {"Id": cid, "Created": "2026-01-01T00:00:00Z", "Path": "sleep", "Args": ["300"],
                "State": {"Status": "running" if c["running"] else "exited", "Running": c["running"],
                          "Pid": c["pid"], "StartedAt": "%.6f" % c["started"]},
                "Image": "", "Name": "/" + c["name"], "Config": {"Labels": c["labels"]}}

    def _handle(self, h):
        url = urllib.parse.urlsplit(h.path)
        q = urllib.parse.parse_qs(url.query)
        filters = json.loads(q["filters"][0]) if "filters" in q else {}
        labels = filters.get("label", [])
        self.requests.append(("GET", h.path))
        parts = url.path.split("/")
        if url.path == "/v1.41/containers/json":
            if self.list_override is not None:
                return self._send(h, self.list_status, self.list_override)
            every = q.get("all", ["false"])[0] in ("true", "1")
            with self.lock:
                out = [{"Id": cid, "Names": ["/" + c["name"]], "Labels": c["labels"],
                        "State": "running" if c["running"] else "exited"}
                       for cid, c in self.containers.items()
                       if (every or c["running"]) and self._matches(c["labels"], labels)]
            return self._send(h, 200, out)
        if len(parts) == 5 and parts[1] == "v1.41" and parts[2] == "containers" and parts[4] == "json":
            cid = parts[3]
            hook = self.before_inspect
            answer = hook(cid) if hook else None
            if answer is not None:
                return self._send(h, *answer)
            if cid in self.inspect_override:
                o = self.inspect_override[cid]
                return self._send(h, 200, o if isinstance(o, bytes) else json.dumps(o).encode())
            with self.lock:
                c = self.containers.get(cid)
                body = self._inspect(cid, c) if c else None
            if body is None:
                return self._send(h, 404, {"cause": "no such container", "message": "no container with name or ID %s found" % cid, "response": 404})
            return self._send(h, 200, body)
        if url.path == "/v1.41/events":
            if filters.get("type") != ["container"]:
                return self._send(h, 400, {"message": "expected a type filter"})
            sub = queue.Queue()
            with self.lock:
                self.subscribers.append((sub, labels))
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Transfer-Encoding", "chunked")
            h.end_headers()
            h.wfile.flush()
            try:
                while True:
                    data = sub.get()
                    if data is None:
                        break
                    h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                    h.wfile.flush()
            except OSError:
                pass
            finally:
                with self.lock:
                    self.subscribers = [(s, lab) for s, lab in self.subscribers if s is not sub]
            h.close_connection = True
            try:
                h.connection.shutdown(2)
            except OSError:
                pass
            return
        return self._send(h, 404, {"message": "page not found"})
