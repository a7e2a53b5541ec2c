"""Attacks of an agent on what atlasgate holds for it and on what the
operator sees -- through the real redirect, as uid 65534:

* held approvals are capped (limits.max_held_requests, max_held_per_agent,
  max_held_body_bytes): over a cap the agent gets 429
  ATLASGATE_APPROVAL_QUEUE_FULL with Retry-After, and the daemon's memory
  does not grow by the bodies it refused;
* the operator's view (`atlasgate approvals`, `approvals --json`, `status`)
  survives a UTF-8 character across the preview's cut, invalid UTF-8,
  terminal escapes and bidi overrides in bodies, process names (comm) and
  cgroup names, and padding meant to push the payload out of sight;
* phantom tokens are capped per agent (limits.max_phantom_tokens_per_agent):
  the agent's oldest goes, other agents' phantoms stay.

    cd tests/integration && sudo /usr/bin/python3 -m unittest -v test_operator_view
"""

import base64
import json
import os
import queue
import re
import subprocess
import threading
import time
import unittest

from harness import (ACCEPT_V2, HOST, LAUNCHER, PROJECT_ID, SANITIZED, SYSTEM_PYTHON, DaemonTestCase,
                     cgroup2_mount, remove_cgroup, wait_for)
from test_soak import daemon_rss_kib

NOBODY = 65534
MiB = 1 << 20
CLUSTERS = f"/api/atlas/v2/groups/{PROJECT_ID}/clusters"
HOLD_CLUSTERS = {"name": "hold-new-clusters", "method": "POST", "path": "/api/atlas/v2/groups/{groupId}/clusters",
                 "action": "approve", "timeout": 120}

# The agent: reads one JSON command per line on stdin, writes one JSON result
# per line on stdout. Posts run in threads (a held one blocks), except with
# "inline" (then from the main thread, whose process name "comm" may have
# been set).
AGENT = r'''
import base64, ctypes, http.client, json, os, socket, ssl, sys, threading

fake, host, accept = sys.argv[1], sys.argv[2], sys.argv[3]
_orig = socket.getaddrinfo
def _gai(name, *a, **k):
    return _orig(fake if name == host else name, *a, **k)
socket.getaddrinfo = _gai
ctx = ssl.create_default_context()  # SSL_CERT_FILE: the launcher's trust bundle
lock = threading.Lock()

def emit(obj):
    with lock:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

def exchange(method, path, body=None, headers=None):
    c = http.client.HTTPSConnection(host, 443, context=ctx, timeout=300)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        data = r.read()
        return {"status": r.status, "retry_after": r.getheader("Retry-After"),
                "content_type": r.getheader("Content-Type"), "body": data.decode("utf-8", "replace")}
    except Exception as e:
        return {"status": 0, "error": repr(e)}
    finally:
        c.close()

def body_of(cmd):
    if "size" in cmd:
        return b'{"pad":"' + b"x" * (cmd["size"] - 10) + b'"}'
    return base64.b64decode(cmd["b64"])

def post(cmd, i):
    r = exchange("POST", cmd["path"], body_of(cmd), {"Content-Type": "application/json", "Accept": accept})
    r.update(tag=cmd["tag"], i=i)
    emit(r)

for line in sys.stdin:
    cmd = json.loads(line)
    op = cmd["op"]
    if op == "post":
        n = cmd.get("n", 1)
        if cmd.get("inline"):
            post(cmd, 0)
        elif cmd.get("sequential"):
            threading.Thread(target=lambda c=cmd: [post(c, i) for i in range(n)], daemon=True).start()
        else:
            for i in range(n):
                threading.Thread(target=post, args=(cmd, i), daemon=True).start()
    elif op == "raw":
        # Bytes http.client would refuse to send (a request target that is
        # not ASCII), in a thread like a post.
        def raw(cmd=cmd):
            body = base64.b64decode(cmd["b64"])
            head = (b"POST " + base64.b64decode(cmd["path_b64"]) + b" HTTP/1.1\r\nHost: " + host.encode() +
                    b"\r\nContent-Type: application/json\r\nAccept: " + accept.encode() +
                    b"\r\nConnection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n")
            try:
                with socket.create_connection((host, 443), timeout=300) as tcp:
                    with ctx.wrap_socket(tcp, server_hostname=host) as tls:
                        tls.sendall(head + body)
                        data = b""
                        while chunk := tls.recv(65536):
                            data += chunk
                status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
                emit({"tag": cmd["tag"], "status": status, "body": data.split(b"\r\n\r\n", 1)[-1].decode("utf-8", "replace")})
            except Exception as e:
                emit({"tag": cmd["tag"], "status": 0, "error": repr(e)})
        threading.Thread(target=raw, daemon=True).start()
    elif op == "comm":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, ctypes.c_char_p(base64.b64decode(cmd["b64"])), 0, 0, 0)  # PR_SET_NAME
        with open("/proc/self/comm", "rb") as f:
            emit({"tag": cmd["tag"], "comm": base64.b64encode(f.read().rstrip(b"\n")).decode()})
    elif op == "token":
        r = exchange("POST", "/api/oauth/token", b"grant_type=client_credentials",
                     {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"})
        r["token"] = json.loads(r["body"]).get("access_token") if r.get("status") == 200 else None
        r["tag"] = cmd["tag"]
        emit(r)
    elif op == "use":
        r = exchange("GET", "/api/atlas/v2/groups", None, {"Authorization": "Bearer " + cmd["token"], "Accept": accept})
        r["tag"] = cmd["tag"]
        emit(r)
    elif op == "quit":
        break
os._exit(0)
'''


class Agent:
    """One agent process (uid 65534, through the launcher) driven over stdin."""

    def __init__(self, env, name, script):
        e = dict(os.environ)
        for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
            e.pop(k, None)
        e.update(ATLASGATE_RUN_DIR=env.run_dir, SUDO_UID=str(NOBODY), SUDO_GID=str(NOBODY))
        self.name = name
        self.proc = subprocess.Popen([LAUNCHER, "--name", name, "--", SYSTEM_PYTHON, script, env.fake_addr, HOST,
                                      ACCEPT_V2], env=e, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.results = queue.Queue()
        self.stderr = []
        self.readers = [threading.Thread(target=self._read_out, daemon=True),
                        threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr), daemon=True)]
        for t in self.readers:
            t.start()
        self.pending = []

    def _read_out(self):
        for line in self.proc.stdout:
            try:
                self.results.put(json.loads(line))
            except ValueError:
                self.stderr.append(line)

    def send(self, **cmd):
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def collect(self, tag, n=1, timeout=60):
        """The next n results with this tag (others are kept for later)."""
        got, deadline = [], time.monotonic() + timeout
        kept = [r for r in self.pending if r.get("tag") == tag][:n]
        self.pending = [r for r in self.pending if r not in kept]
        got += kept
        while len(got) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"agent {self.name}: {len(got)}/{n} results for {tag!r} after {timeout}s; "
                                     f"stderr: {''.join(self.stderr)}")
            try:
                r = self.results.get(timeout=left)
            except queue.Empty:
                continue
            (got if r.get("tag") == tag else self.pending).append(r)
        return got

    def close(self):
        if self.proc.poll() is None:
            try:
                self.send(op="quit")
                self.proc.stdin.close()
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        for t in self.readers:
            t.join(5)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                f.close()
            except OSError:
                pass


def b64(data):
    return base64.b64encode(data).decode()


class AgentCase(DaemonTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.script = os.path.join(cls.env.tmp, "operator_view_agent.py")
        with open(cls.script, "w") as f:
            f.write(AGENT)
        os.chmod(cls.script, 0o644)

    def agent(self, name):
        a = Agent(self.env, name, self.script)
        self.addCleanup(a.close)
        return a

    def approvals(self):
        p = self.env.cli("approvals", "--json")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertNotIn("\x1b", p.stdout)
        return json.loads(p.stdout)["approvals"]

    def held_of(self, agent_name):
        return [a for a in self.approvals() if a["agent"] == agent_name]

    def wait_held(self, agent_name, n):
        def enough():
            held = self.held_of(agent_name)
            return held if len(held) >= n else None
        return wait_for(enough, timeout=30, what=f"{n} held request(s) of {agent_name}")

    def deny_all(self):
        for a in self.approvals():
            self.env.cli("approvals", "deny", str(a["id"]))

    def assertQueueFull(self, r, cap):
        self.assertEqual(r["status"], 429, r)
        self.assertTrue((r["content_type"] or "").startswith("application/json"), r)
        doc = json.loads(r["body"])
        self.assertEqual(doc["error"], 429, doc)
        self.assertEqual(doc["errorCode"], "ATLASGATE_APPROVAL_QUEUE_FULL", doc)
        self.assertEqual(doc["parameters"], [HOLD_CLUSTERS["name"]], doc)
        self.assertIn(cap, doc["detail"])
        self.assertRegex(r["retry_after"] or "", r"^\d+$", r)
        self.assertGreaterEqual(int(r["retry_after"]), 1)
        self.assertLessEqual(int(r["retry_after"]), HOLD_CLUSTERS["timeout"])


# --------------------------------------------------------------------------

class HeldCapsTest(AgentCase):
    @classmethod
    def env_options(cls):
        return dict(rules={"default": "allow", "list": [HOLD_CLUSTERS]},
                    config_extra={"limits": {"max_held_requests": 4, "max_held_per_agent": 2,
                                             "max_held_body_bytes": 24 * MiB}})

    def test_caps_answer_429_and_memory_stays_bounded(self):
        env = self.env
        small = b64(b'{"name":"small"}')
        a, b, c = self.agent("cap-a"), self.agent("cap-b"), self.agent("cap-c")

        # Agent a holds two requests of 10 MiB: its per-agent cap.
        a.send(op="post", tag="a-big", n=2, size=10 * MiB, path=CLUSTERS)
        held = self.wait_held("cap-a", 2)
        self.assertEqual(sorted(h["body_bytes"] for h in held), [10 * MiB, 10 * MiB])
        self.assertTrue(all(h["body_truncated"] for h in held), held)
        a.send(op="post", tag="a3", b64=small, path=CLUSTERS)
        self.assertQueueFull(a.collect("a3")[0], "max_held_per_agent")

        # 20 MiB held: 10 MiB more would pass max_held_body_bytes (24 MiB).
        b.send(op="post", tag="b-big", size=10 * MiB, path=CLUSTERS)
        self.assertQueueFull(b.collect("b-big")[0], "max_held_body_bytes")
        b.send(op="post", tag="b-small", n=2, b64=small, path=CLUSTERS)
        self.wait_held("cap-b", 2)

        # 4 held in all: max_held_requests.
        c.send(op="post", tag="c1", b64=small, path=CLUSTERS)
        self.assertQueueFull(c.collect("c1")[0], "max_held_requests")

        # The attack: big bodies, one after the other, while the caps are
        # reached. Each is refused, and the daemon keeps none of them.
        rss_before = daemon_rss_kib(env.daemon.pid)
        c.send(op="post", tag="c-big", n=8, size=15 * MiB, path=CLUSTERS, sequential=True)
        for r in c.collect("c-big", 8, timeout=120):
            self.assertQueueFull(r, "max_held_requests")
        grown = daemon_rss_kib(env.daemon.pid) - rss_before
        if SANITIZED:
            # ASan keeps freed memory in quarantine (256 MiB): RSS says
            # nothing about what the daemon holds. The normal pass checks it.
            print(f"sanitizer build: RSS grew {grown} KiB (not checked)")
        else:
            self.assertLess(grown, 40 * 1024, f"daemon RSS grew by {grown} KiB over 8 refused 15 MiB bodies")
        self.assertEqual(len(self.approvals()), 4)
        s = env.status()
        self.assertEqual(s["approvals_pending"], 4)
        self.assertGreaterEqual(s["counters"]["approvals_refused"], 11)
        rec = [x for x in env.audit() if x["agent"] == "cap-c"]
        self.assertTrue(rec and all(x["status"] == 429 and x["error"] == "ATLASGATE_APPROVAL_QUEUE_FULL"
                                    for x in rec), rec)

        # Decided requests free their places.
        self.deny_all()
        self.assertEqual([r["status"] for r in a.collect("a-big", 2)], [403, 403])
        self.assertEqual([r["status"] for r in b.collect("b-small", 2)], [403, 403])
        c.send(op="post", tag="c-after", b64=small, path=CLUSTERS)
        self.wait_held("cap-c", 1)
        self.deny_all()
        self.assertEqual(c.collect("c-after")[0]["status"], 403)


# --------------------------------------------------------------------------

ESC_BODY = (b'{"name":"\x1b[2J\x1b[H\x1b]0;pwned\x07\xe2\x80\xaeevil\xc2\x9b31m\xff\xfe",'
            b'"x":"\n4242  POST cloud.mongodb.com /api/atlas/v2/groups/1/clusters  agent trusted-bot  '
            b'rule ok  waiting 1s of 120s\n"}')
FAKE_LINE = re.compile(r"(?m)^4242  POST")


class OperatorViewTest(AgentCase):
    @classmethod
    def env_options(cls):
        return dict(rules={"default": "allow", "list": [HOLD_CLUSTERS]})

    def human(self, *args):
        p = self.env.cli(*args)
        self.assertEqual(p.returncode, 0, p.stderr)
        out = p.stdout
        for bad in ("\x1b", "\x07", "\x9b", "\u202e", "\r"):
            self.assertNotIn(bad, out, f"raw {bad!r} reaches the terminal in `atlasgate {' '.join(args)}`")
        return out

    def test_body_previews(self):
        env = self.env
        ag = self.agent("preview-bot")
        tag = os.getpid()

        # 1. A 2-byte character (C3 A9) across byte 512 of the body.
        straddle = b'{"name":"' + b"a" * (511 - 9) + "\u00e9".encode() + b'"}'
        self.assertEqual(straddle[511:513], b"\xc3\xa9")
        ag.send(op="post", tag="straddle", b64=b64(straddle), path=CLUSTERS)
        # 2. Escapes, bidi override, C1, invalid UTF-8, a fake entry after a newline.
        ag.send(op="post", tag="esc", b64=b64(ESC_BODY), path=CLUSTERS)
        # 3. 600 leading spaces before the payload.
        payload = f'{{"name":"PAYLOAD-{tag}","instanceSizeName":"M700"}}'.encode()
        ag.send(op="post", tag="padded", b64=b64(b" " * 600 + payload), path=CLUSTERS)
        held = self.wait_held("preview-bot", 3)  # approvals --json parses (no raw ESC either)
        by_size = {h["body_bytes"]: h for h in held}

        h = by_size[len(straddle)]
        self.assertEqual(h["body"], straddle[:511].decode())
        self.assertTrue(h["body_truncated"])
        h = by_size[len(ESC_BODY)]
        self.assertEqual(h["body"], ESC_BODY.decode("utf-8", "replace"))  # exact, with U+FFFD for the bad bytes
        self.assertFalse(h["body_truncated"])
        h = by_size[600 + len(payload)]
        self.assertEqual(h["body"], payload.decode())
        self.assertEqual(h["body_leading_whitespace"], 600)
        self.assertFalse(h["body_truncated"])

        out = self.human("approvals")
        self.assertEqual(len(re.findall(r"(?m)^\d+  POST ", out)), 3, out)
        self.assertIsNone(FAKE_LINE.search(out), out)
        self.assertIn("\\x1b[2J\\x1b[H\\x1b]0;pwned\\x07\\u{202e}evil\\u{009b}31m", out)
        self.assertIn("\\n4242  POST", out)  # the fake entry, visibly part of the body
        self.assertIn(f"PAYLOAD-{tag}", out)
        self.assertIn("after 600 bytes of leading whitespace", out)
        self.assertNotIn(" " * 10, out)
        self.assertRegex(out, rf"body \({len(straddle)} bytes, only the start shown\): \{{\"name\":\"a+ \[truncated\]")
        self.human("status")

        self.deny_all()
        for t in ("straddle", "esc", "padded"):
            self.assertEqual(ag.collect(t)[0]["status"], 403)

    def test_request_path_with_raw_bytes(self):
        # HTTP parsers take bytes 0x80-0xFF in a request target as they are:
        # a bidi override, a C1 control and a byte that is no UTF-8.
        ag = self.agent("path-bot")
        path = b"/api/atlas/v2/groups/\xe2\x80\xaeX\xc2\x9b31m\xff/clusters"
        ag.send(op="raw", tag="raw", b64=b64(b'{"name":"x"}'), path_b64=b64(path))
        h = self.wait_held("path-bot", 1)[0]  # approvals --json parses
        self.assertEqual(h["path"], path.decode("utf-8", "replace"))
        out = self.human("approvals")
        self.assertIn("/api/atlas/v2/groups/\\u{202e}X\\u{009b}31m\ufffd/clusters  agent path-bot", out)
        self.human("status")
        self.deny_all()
        self.assertEqual(ag.collect("raw")[0]["status"], 403)
        # The audit log stays whole JSON in valid UTF-8, whatever the path held.
        def audited():
            with open(self.env.audit_path, "rb") as f:
                lines = [json.loads(line.decode("utf-8")) for line in f if line.strip()]
            return [r for r in lines if r.get("agent") == "path-bot"]
        rec = wait_for(audited, what="audit record of path-bot")[-1]
        self.assertEqual(rec["path"], path.decode("utf-8", "replace"))

    def test_process_name_with_escapes(self):
        env = self.env
        ag = self.agent("comm-bot")
        comm = b"\x1b[2J\x1b[31mEVIL\xff"  # 14 bytes: fits comm's 15
        ag.send(op="comm", tag="comm", b64=b64(comm))
        self.assertEqual(base64.b64decode(ag.collect("comm")[0]["comm"]), comm)
        ag.send(op="post", tag="held", b64=b64(b'{"name":"x"}'), path=CLUSTERS, inline=True)
        self.wait_held("comm-bot", 1)

        s = env.status()  # parses despite the byte that is no UTF-8
        conns = [c for c in s["connections"] if c["agent"] == "comm-bot"]
        self.assertEqual(len(conns), 1, s["connections"])
        self.assertEqual(conns[0]["comm"], comm.decode("utf-8", "replace"))
        raw = env.cli("status", "--json")
        self.assertNotIn("\x1b", raw.stdout)
        self.assertIn("\\u001b[2J", raw.stdout)
        out = self.human("status")
        self.assertRegex(out, r"agent comm-bot pid \d+ \(\\x1b\[2J\\x1b\[31mEVIL\ufffd\) ->")

        self.deny_all()
        self.assertEqual(ag.collect("held")[0]["status"], 403)

    def test_cgroup_name_with_escapes(self):
        # An attached cgroup whose name someone else chose (a delegated
        # container manager, say) names the agent in it.
        env = self.env
        name = f"atlasgate-it-esc-{os.getpid()}-\x1b[2J\x1b[1;1H\u202eFAKE\u200b"
        path = os.path.join(cgroup2_mount(), name)
        os.makedirs(path)
        self.addCleanup(remove_cgroup, path)
        r = env.cli("attach", path)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertNotIn("\x1b", r.stdout)
        self.addCleanup(env.cli, "detach", path)

        def join():
            with open(os.path.join(path, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
        # Attached, so redirected: atlasgate's CA is the one to trust.
        argv = env.curl_args(CLUSTERS, "POST", ["--cacert", env.trust_bundle(), "-H", "Content-Type: application/json",
                                                "--data-binary", '{"name":"from-esc"}'])
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=join)
        self.addCleanup(lambda: p.poll() is None and (p.kill(), p.communicate()))
        h = wait_for(lambda: [a for a in self.approvals() if a["agent"] == name], timeout=30,
                     what="the request from the oddly named cgroup")[0]
        self.assertEqual(h["agent"], name)  # JSON: the exact name

        out = self.human("approvals")
        self.assertIn("agent atlasgate-it-esc-", out)
        self.assertIn("\\x1b[2J\\x1b[1;1H\\u{202e}FAKE\\u{200b}", out)
        out = self.human("status")
        self.assertIn("\\x1b[2J\\x1b[1;1H\\u{202e}FAKE\\u{200b}", out)
        s = env.status()
        self.assertIn(path, [x["cgroup"] for x in s["attached"]])

        self.deny_all()
        out, _ = p.communicate(timeout=30)
        self.assertTrue(out.endswith("\n403"), out)


# --------------------------------------------------------------------------

class PhantomCapTest(AgentCase):
    @classmethod
    def env_options(cls):
        return dict(config_extra={"limits": {"max_phantom_tokens_per_agent": 3}})

    def test_per_agent_cap_evicts_that_agents_oldest(self):
        env = self.env
        other, greedy = self.agent("phantom-other"), self.agent("phantom-greedy")
        other.send(op="token", tag="t")
        kept = other.collect("t")[0]["token"]
        self.assertTrue(kept and kept.startswith("agp_"), kept)

        tokens = []
        for i in range(4):
            greedy.send(op="token", tag=f"t{i}")
            r = greedy.collect(f"t{i}")[0]
            self.assertEqual(r["status"], 200, r)
            tokens.append(r["token"])
        self.assertEqual(len(set(tokens)), 4)
        statuses = []
        for i, t in enumerate(tokens):
            greedy.send(op="use", tag=f"u{i}", token=t)
            statuses.append(greedy.collect(f"u{i}")[0])
        # The oldest of the agent's four went; the newest three work.
        self.assertEqual([r["status"] for r in statuses], [401, 200, 200, 200], statuses)
        first = json.loads(statuses[0]["body"])
        self.assertEqual(first["errorCode"], "ATLASGATE_INVALID_TOKEN")
        self.assertIn("not known", first["detail"])
        # Another agent's phantom survived the greedy one's issuance.
        other.send(op="use", tag="u", token=kept)
        r = other.collect("u")[0]
        self.assertEqual(r["status"], 200, r)
        self.assertEqual(json.loads(r["body"])["results"][0]["id"], PROJECT_ID)
        self.assertGreaterEqual(env.status()["counters"]["phantom_tokens_live"], 4)


if __name__ == "__main__":
    unittest.main(verbosity=2)
