#!/usr/bin/env python3
"""Self-test for tests/fake_atlas/fake_atlas.py (stdlib only).

Starts the fake on 127.0.0.1 with an unprivileged free port and a PKI made by
make_pki.sh in a temporary directory, talks to it over verified TLS
(SNI cloud.mongodb.com), and removes the process and the directory at the end.
Run: python3 tests/fake_atlas/test_fake_atlas.py [-v]
"""

import base64
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
FAKE = os.path.join(HERE, "fake_atlas.py")
MAKE_PKI = os.path.join(HERE, "make_pki.sh")

HOST = "cloud.mongodb.com"
CLIENT_ID = "mdb_sa_id_0123456789abcdef01234567"
CLIENT_SECRET = "mdb_sa_sk_selftest-secret-9f8e7d"
DIGEST_PUB = "selftpub"
DIGEST_PRIV = "selftest-private-key-42"
NONCE_USES = 3
GROUP = "5f0000000000000000000001"
ORG = "4f0000000000000000000001"
SNAP = "7f0000000000000000000001"
V2 = "application/vnd.atlas.2025-03-12+json"
CHALLENGE_RE = re.compile(
    r'^Digest realm="MMS Public API", domain="", nonce="([^"]+)", algorithm=MD5, '
    r'qop="auth", stale=(true|false)$')
UUID4_RE = r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"
SA_SECRET_RE = r"^mdb_sa_sk_[A-Za-z0-9_-]{40}$"


def start_server(tmp, name, extra, listen="127.0.0.1"):
    ready = os.path.join(tmp, name + ".ready")
    errf = open(os.path.join(tmp, name + ".stderr"), "wb")
    cmd = [sys.executable, FAKE, "--listen", listen, "--port", "0",
           "--cert", os.path.join(tmp, "server.pem"), "--key", os.path.join(tmp, "server.key"),
           "--client-id", CLIENT_ID, "--client-secret-file", os.path.join(tmp, "secret"),
           "--digest-public-key", DIGEST_PUB,
           "--digest-private-key-file", os.path.join(tmp, "digest-private"),
           "--ready-file", ready] + extra
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=errf, stderr=errf)
    errf.close()
    deadline = t0 + 10
    while time.monotonic() < deadline:
        if os.path.exists(ready):
            with open(ready) as f:
                line = f.read()
            if line.endswith("\n"):
                addr, port = line.split()
                return proc, addr, int(port), ready, time.monotonic() - t0
        if proc.poll() is not None:
            break
        time.sleep(0.01)
    stop_server(proc)
    raise RuntimeError("fake_atlas did not start: " +
                       open(os.path.join(tmp, name + ".stderr")).read())


def stop_server(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


class Conn(http.client.HTTPSConnection):
    """HTTPS to addr:port, certificate verified for cloud.mongodb.com."""

    def __init__(self, addr, port, ctx, timeout=10):
        super().__init__(HOST, port, context=ctx, timeout=timeout)
        self._addr = addr

    def connect(self):
        fam = socket.AF_INET6 if ":" in self._addr else socket.AF_INET
        sock = socket.socket(fam, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect((self._addr, self.port))
        self.sock = self._context.wrap_socket(sock, server_hostname=HOST)


class Resp:
    def __init__(self, r, data):
        self.status = r.status
        self.headers = r.headers
        self.data = data
        try:
            self.json = json.loads(data) if data else None
        except ValueError:
            self.json = None

    def __repr__(self):
        return "<%d %r>" % (self.status, self.data[:300])


def digest_response(method, uri, nonce, nc, cnonce, pub=DIGEST_PUB, priv=DIGEST_PRIV):
    md5 = lambda s: hashlib.md5(s.encode()).hexdigest()
    ha1 = md5("%s:MMS Public API:%s" % (pub, priv))
    ha2 = md5("%s:%s" % (method, uri))
    return md5("%s:%s:%08x:%s:auth:%s" % (ha1, nonce, nc, cnonce, ha2))


def digest_header(method, uri, nonce, nc, cnonce="0a4f113b", **kw):
    return ('Digest username="%s", realm="MMS Public API", nonce="%s", uri="%s", '
            'algorithm=MD5, response="%s", qop=auth, nc=%08x, cnonce="%s"'
            % (kw.get("pub", DIGEST_PUB), nonce, uri,
               digest_response(method, uri, nonce, nc, cnonce, **kw), nc, cnonce))


class FakeAtlasTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="fake_atlas_test.")
        cls.addClassCleanup(shutil.rmtree, cls.tmp, ignore_errors=True)
        subprocess.run(["bash", MAKE_PKI, cls.tmp], check=True)
        for name, val in (("secret", CLIENT_SECRET), ("digest-private", DIGEST_PRIV)):
            with open(os.path.join(cls.tmp, name), "w") as f:
                f.write(val + "\n")
        cls.logfile = os.path.join(cls.tmp, "requests.jsonl")
        cls.proc, cls.addr, cls.port, cls.ready, cls.startup = start_server(
            cls.tmp, "main", ["--auth", "any", "--digest-nonce-uses", str(NONCE_USES),
                              "--log", cls.logfile])
        cls.addClassCleanup(stop_server, cls.proc)
        cls.ctx = ssl.create_default_context(cafile=os.path.join(cls.tmp, "upstream-ca.pem"))

    # ---- helpers ------------------------------------------------------
    def setUp(self):
        self.conns = []
        self.fake("POST", "/__fake/reset", {})

    def tearDown(self):
        for c in self.conns:
            c.close()

    def conn(self, addr=None, port=None):
        c = Conn(addr or self.addr, port or self.port, self.ctx)
        self.conns.append(c)
        return c

    def req(self, method, path, body=None, headers=None, conn=None, **kw):
        c = conn or self.conn(**kw)
        h = dict(headers or {})
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
            h.setdefault("Content-Type", "application/json")
        c.request(method, path, body=body, headers=h)
        r = c.getresponse()
        data = r.read()
        if method != "HEAD" and r.status not in (204, 304):
            self.assertEqual(r.getheader("Content-Length"), str(len(data)), (method, path))
        return Resp(r, data)

    def fake(self, method, path, body=None):
        r = self.req(method, path, body)
        self.assertEqual(r.status, 200, r)
        return r.json

    def basic(self, cid=CLIENT_ID, sec=CLIENT_SECRET):
        return "Basic " + base64.b64encode(("%s:%s" % (cid, sec)).encode()).decode()

    def token_req(self, body="grant_type=client_credentials", auth=None, conn=None):
        h = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
        if auth is not False:
            h["Authorization"] = auth or self.basic()
        return self.req("POST", "/api/oauth/token", body, h, conn=conn)

    def token(self):
        r = self.token_req()
        self.assertEqual(r.status, 200, r)
        return r.json["access_token"]

    def api(self, method, path, body=None, token=None, accept=V2, headers=None, conn=None):
        h = {}
        if accept:
            h["Accept"] = accept
        if token:
            h["Authorization"] = "Bearer " + token
        h.update(headers or {})
        return self.req(method, path, body, h, conn=conn)

    def digest_api(self, method, path, pub, priv, body=None, accept=V2, conn=None):
        """Challenge, then the request with Digest (nc=1) on the same connection."""
        c = conn or self.conn()
        r = self.api(method, path, body, accept=accept, conn=c)
        self.assertEqual(r.status, 401, r)
        nonce = CHALLENGE_RE.match(r.headers["WWW-Authenticate"]).group(1)
        h = {"Authorization": digest_header(method, path, nonce, 1, pub=pub, priv=priv)}
        return self.api(method, path, body, accept=accept, headers=h, conn=c)

    def fresh_state(self):
        """Seed data only (no minted credentials), now and after the test."""
        self.fake("POST", "/__fake/reset", {"state": True})
        self.addCleanup(self.tearDown)   # cleanups run after tearDown, last in first out
        self.addCleanup(self.fake, "POST", "/__fake/reset", {"state": True})

    def minted(self):
        return self.fake("GET", "/__fake/minted")

    def last_api_entry(self):
        return [e for e in self.fake("GET", "/__fake/requests") if e["kind"] == "api"][-1]

    def raw_http(self, method, path, headers, body=b""):
        """One request with Connection: close over TLS; the raw response bytes."""
        sock = socket.create_connection((self.addr, self.port), timeout=10)
        tls = self.ctx.wrap_socket(sock, server_hostname=HOST)
        try:
            head = "%s %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n" % (method, path, HOST)
            for k, v in headers.items():
                head += "%s: %s\r\n" % (k, v)
            if body:
                head += "Content-Length: %d\r\n" % len(body)
            tls.sendall(head.encode() + b"\r\n" + body)
            out = b""
            while True:
                try:
                    data = tls.recv(65536)
                except (ssl.SSLError, ConnectionError):
                    break
                if not data:
                    break
                out += data
            return out
        finally:
            tls.close()

    @staticmethod
    def parse_chunked(body):
        """-> (list of chunk payloads, rest after the last chunk)"""
        chunks = []
        while True:
            line, _, body = body.partition(b"\r\n")
            n = int(line.split(b";")[0], 16)
            if n == 0:
                return chunks, body
            chunks.append(body[:n])
            assert body[n:n + 2] == b"\r\n", body[n:n + 10]
            body = body[n + 2:]

    def assertAtlasError(self, r, status, code=None):
        self.assertEqual(r.status, status, r)
        self.assertIsInstance(r.json, dict, r)
        for k in ("detail", "error", "errorCode", "parameters", "reason"):
            self.assertIn(k, r.json)
        self.assertEqual(r.json["error"], status)
        if code:
            self.assertEqual(r.json["errorCode"], code, r)

    # ---- tests ----------------------------------------------------------
    def test_00_startup(self):
        self.assertEqual(self.addr, "127.0.0.1")
        self.assertLess(self.startup, 3.0)
        self.assertEqual(self.fake("GET", "/__fake/health")["ok"], True)

    def test_token_issue_and_errors(self):
        r = self.token_req()
        self.assertEqual(r.status, 200, r)
        self.assertEqual(sorted(r.json), ["access_token", "expires_in", "token_type"])
        self.assertTrue(r.json["access_token"].startswith("eyJ"))
        self.assertEqual(r.json["access_token"].count("."), 2)
        self.assertEqual(r.json["expires_in"], 3600)
        self.assertEqual(r.json["token_type"], "Bearer")
        self.assertIsNone(r.headers.get("WWW-Authenticate"))
        self.assertTrue(r.headers["Content-Type"].startswith("application/json"))

        r = self.token_req(auth=self.basic(sec="wrong"))
        self.assertEqual((r.status, r.json["error"]), (401, "invalid_client"))
        self.assertIsNone(r.headers.get("WWW-Authenticate"))
        r = self.token_req(auth=False)
        self.assertEqual((r.status, r.json["error"]), (401, "invalid_client"))
        r = self.token_req(body="")
        self.assertEqual((r.status, r.json["error"]), (400, "invalid_request"))
        r = self.token_req(body="grant_type=password")
        self.assertEqual((r.status, r.json["error"]), (400, "unsupported_grant_type"))
        r = self.req("GET", "/api/oauth/token", headers={"Authorization": self.basic()})
        self.assertEqual((r.status, r.json["error"]), (405, "invalid_request"))
        # client_secret_post also works
        r = self.token_req(body=urllib.parse.urlencode({
            "grant_type": "client_credentials", "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET}), auth=False)
        self.assertEqual(r.status, 200, r)
        st = self.fake("GET", "/__fake/stats")
        self.assertEqual(st["token_requests"], 7)
        self.assertEqual(st["token_successes"], 2)

    def test_bearer_enforcement_and_expiry(self):
        r = self.api("GET", "/api/atlas/v2/groups")
        self.assertAtlasError(r, 401, "UNAUTHORIZED")
        r = self.api("GET", "/api/atlas/v2/groups", token="eyJnot.a.token")
        self.assertAtlasError(r, 401, "UNAUTHORIZED")
        tok = self.token()
        r = self.api("GET", "/api/atlas/v2/groups", token=tok)
        self.assertEqual(r.status, 200, r)
        self.fake("POST", "/__fake/faults", {"expire_tokens": True})
        r = self.api("GET", "/api/atlas/v2/groups", token=tok)
        self.assertAtlasError(r, 401, "UNAUTHORIZED")
        tok2 = self.token()
        self.assertEqual(self.api("GET", "/api/atlas/v2/groups", token=tok2).status, 200)
        auths = [e["auth"] for e in self.fake("GET", "/__fake/requests") if e["kind"] == "api"]
        self.assertEqual(auths, ["digest:challenge", "bearer:unknown", "bearer:ok",
                                 "bearer:expired", "bearer:ok"])

    def test_revoke(self):
        tok = self.token()
        self.assertEqual(self.api("GET", "/api/atlas/v2/orgs", token=tok).status, 200)
        h = {"Content-Type": "application/x-www-form-urlencoded"}
        r = self.req("POST", "/api/oauth/revoke", "token=" + tok, h)
        self.assertEqual((r.status, r.json["error"]), (401, "invalid_client"))
        h["Authorization"] = self.basic()
        r = self.req("POST", "/api/oauth/revoke", "token=%s&token_type_hint=access_token" % tok, h)
        self.assertEqual(r.status, 200, r)
        r = self.api("GET", "/api/atlas/v2/orgs", token=tok)
        self.assertAtlasError(r, 401)
        self.assertEqual(self.fake("GET", "/__fake/requests")[-1]["auth"], "bearer:revoked")

    def test_max_active_tokens(self):
        self.fake("POST", "/__fake/faults", {"max_active_tokens": 2})
        self.fake("POST", "/__fake/reset", {"tokens": True})  # forget earlier tokens, cap back to 100
        self.fake("POST", "/__fake/faults", {"max_active_tokens": 2})
        self.token()
        self.token()
        r = self.token_req()
        self.assertEqual((r.status, r.json["error"]), (403, "access_denied"))

    def test_versioning(self):
        tok = self.token()
        for accept in (None, "application/json", "application/vnd.atlas.2025-13-45+json",
                       "application/vnd.atlas.2019-01-01+json", "application/vnd.atlas.latest+json"):
            r = self.api("GET", "/api/atlas/v2/groups", token=tok, accept=accept)
            self.assertAtlasError(r, 406, "INVALID_VERSION_DATE")
        r = self.api("GET", "/api/atlas/v2/groups", token=tok, accept="application/vnd.atlas.2024-08-05+json")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.headers["Content-Type"], "application/vnd.atlas.2024-08-05+json;charset=utf-8")
        # an error after version resolution also echoes the version
        r = self.api("GET", "/api/atlas/v2/nothing", token=tok)
        self.assertAtlasError(r, 404, "RESOURCE_NOT_FOUND")
        self.assertEqual(r.headers["Content-Type"], V2 + ";charset=utf-8")
        r = self.api("GET", "/api/atlas/v1.0/groups", token=tok, accept="application/json")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.headers["Content-Type"], "application/json;charset=utf-8")
        self.assertEqual(r.json["results"][0]["id"], GROUP)
        r = self.api("GET", "/api/atlas/v1.0/groups/%s/clusters/Cluster0" % GROUP, token=tok, accept=None)
        self.assertEqual(r.status, 200, r)

    def test_cluster_crud(self):
        tok = self.token()
        c = self.conn()
        base = "/api/atlas/v2/groups/%s/clusters" % GROUP
        r = self.api("GET", base, token=tok, conn=c)
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json["links"], [])
        self.assertEqual([x["name"] for x in r.json["results"]], ["Cluster0"])
        self.assertEqual(r.json["totalCount"], 1)
        spec = {"name": "SelfTest1", "clusterType": "REPLICASET",
                "replicationSpecs": [{"regionConfigs": [{
                    "electableSpecs": {"instanceSize": "M30", "nodeCount": 3},
                    "priority": 7, "providerName": "AWS", "regionName": "EU_WEST_1"}]}]}
        r = self.api("POST", base, spec, token=tok, conn=c)
        self.assertEqual(r.status, 201, r)
        self.assertEqual(r.json["name"], "SelfTest1")
        self.assertEqual(r.json["groupId"], GROUP)
        self.assertRegex(r.json["id"], "^[0-9a-f]{24}$")
        self.assertAtlasError(self.api("POST", base, spec, token=tok, conn=c), 400, "DUPLICATE_CLUSTER_NAME")
        r = self.api("GET", base + "/SelfTest1", token=tok, conn=c)
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json["replicationSpecs"][0]["regionConfigs"][0]["regionName"], "EU_WEST_1")
        r = self.api("PATCH", base + "/SelfTest1", {"paused": True}, token=tok, conn=c)
        self.assertEqual((r.status, r.json["paused"]), (200, True))
        self.assertEqual(self.api("GET", base, token=tok, conn=c).json["totalCount"], 2)
        r = self.api("DELETE", base + "/SelfTest1", token=tok, conn=c)
        self.assertEqual((r.status, r.data), (202, b""))
        self.assertEqual(r.headers["Content-Length"], "0")
        self.assertAtlasError(self.api("GET", base + "/SelfTest1", token=tok, conn=c), 404, "CLUSTER_NOT_FOUND")
        # bad JSON, missing name, unknown/invalid group, unknown path, wrong method
        r = self.api("POST", base, "{not json", token=tok, conn=c, headers={"Content-Type": "application/json"})
        self.assertAtlasError(r, 400, "INVALID_JSON")
        self.assertAtlasError(self.api("POST", base, {}, token=tok, conn=c), 400, "MISSING_ATTRIBUTE")
        self.assertAtlasError(self.api("GET", "/api/atlas/v2/groups/%s/clusters" % ("a" * 24), token=tok,
                                       conn=c), 404, "GROUP_NOT_FOUND")
        self.assertAtlasError(self.api("GET", "/api/atlas/v2/groups/xyz/clusters", token=tok, conn=c),
                              400, "INVALID_GROUP_ID")
        self.assertAtlasError(self.api("GET", "/api/atlas/v2/groups/%s/nope" % GROUP, token=tok, conn=c),
                              404, "RESOURCE_NOT_FOUND")
        self.assertAtlasError(self.req("GET", "/does/not/exist", conn=c), 404, "RESOURCE_NOT_FOUND")
        r = self.api("PUT", base, {}, token=tok, conn=c)
        self.assertAtlasError(r, 405)
        # a chunked request body is understood
        c.putrequest("POST", base)
        for k, v in (("Authorization", "Bearer " + tok), ("Accept", V2),
                     ("Content-Type", "application/json"), ("Transfer-Encoding", "chunked")):
            c.putheader(k, v)
        c.endheaders()
        payload = json.dumps({"name": "Chunky"}).encode()
        c.send(b"%x\r\n%s\r\n0\r\n\r\n" % (len(payload), payload))
        r = c.getresponse()
        self.assertEqual(r.status, 201)
        self.assertEqual(json.loads(r.read())["name"], "Chunky")
        self.assertEqual(self.api("DELETE", base + "/Chunky", token=tok, conn=c).status, 202)
        # everything above went over one keep-alive connection
        conns = {e["conn"] for e in self.fake("GET", "/__fake/requests") if e["kind"] == "api"}
        self.assertEqual(len(conns), 1)

    def test_projects_and_orgs(self):
        tok = self.token()
        r = self.api("GET", "/api/atlas/v2/orgs", token=tok)
        self.assertEqual(r.json["results"][0]["id"], ORG)
        self.assertEqual(self.api("GET", "/api/atlas/v2/orgs/" + ORG, token=tok).json["name"], "Fake Org")
        r = self.api("PATCH", "/api/atlas/v2/orgs/" + ORG, {"name": "Renamed Org"}, token=tok)
        self.assertEqual(r.json["name"], "Renamed Org")
        self.assertAtlasError(self.api("DELETE", "/api/atlas/v2/orgs/" + ORG, token=tok), 409)
        r = self.api("GET", "/api/atlas/v2/groups/" + GROUP, token=tok)
        self.assertEqual((r.json["name"], r.json["orgId"], r.json["clusterCount"]), ("demo", ORG, 1))
        r = self.api("POST", "/api/atlas/v2/groups", {"name": "selftest-proj", "orgId": ORG}, token=tok)
        self.assertEqual(r.status, 200, r)
        gid = r.json["id"]
        self.assertAtlasError(self.api("POST", "/api/atlas/v2/groups", {"name": "selftest-proj"}, token=tok),
                              409, "GROUP_ALREADY_EXISTS")
        r = self.api("PATCH", "/api/atlas/v2/groups/" + gid, {"name": "selftest-proj2"}, token=tok)
        self.assertEqual(r.json["name"], "selftest-proj2")
        self.assertEqual(self.api("GET", "/api/atlas/v2/groups/byName/selftest-proj2", token=tok).json["id"], gid)
        self.assertEqual(self.api("GET", "/api/atlas/v2/groups/%s/flexClusters" % gid, token=tok).json,
                         {"links": [], "results": [], "totalCount": 0})
        self.assertAtlasError(self.api("DELETE", "/api/atlas/v2/groups/" + GROUP, token=tok), 409)
        r = self.api("DELETE", "/api/atlas/v2/groups/" + gid, token=tok)
        self.assertEqual(r.status, 204)
        self.assertAtlasError(self.api("GET", "/api/atlas/v2/groups/" + gid, token=tok), 404, "GROUP_NOT_FOUND")
        self.fake("POST", "/__fake/reset", {"state": True})
        self.assertEqual(self.api("GET", "/api/atlas/v2/orgs/" + ORG, token=tok).json["name"], "Fake Org")

    def test_database_users(self):
        tok = self.token()
        base = "/api/atlas/v2/groups/%s/databaseUsers" % GROUP
        user = {"databaseName": "admin", "username": "alice@example", "password": "pw-not-echoed",
                "roles": [{"databaseName": "admin", "roleName": "readWriteAnyDatabase"}]}
        r = self.api("POST", base, user, token=tok)
        self.assertEqual(r.status, 201, r)
        self.assertNotIn("password", r.json)
        self.assertEqual(r.json["roles"][0]["roleName"], "readWriteAnyDatabase")
        self.assertAtlasError(self.api("POST", base, user, token=tok), 409, "USER_ALREADY_EXISTS")
        path = base + "/admin/" + urllib.parse.quote("alice@example", safe="")
        self.assertEqual(self.api("GET", path, token=tok).json["username"], "alice@example")
        r = self.api("PATCH", path, {"roles": [{"databaseName": "admin", "roleName": "read"}]}, token=tok)
        self.assertEqual(r.json["roles"][0]["roleName"], "read")
        self.assertEqual(self.api("GET", base, token=tok).json["totalCount"], 1)
        r = self.api("DELETE", path, token=tok)
        self.assertEqual((r.status, r.data), (204, b""))
        self.assertAtlasError(self.api("GET", path, token=tok), 404, "USERNAME_NOT_FOUND")

    def test_access_list(self):
        tok = self.token()
        base = "/api/atlas/v2/groups/%s/accessList" % GROUP
        r = self.api("POST", base, [{"cidrBlock": "10.0.0.0/24", "comment": "office"},
                                    {"ipAddress": "192.0.2.7"}], token=tok)
        self.assertEqual(r.status, 201, r)
        self.assertEqual(r.json["totalCount"], 2)
        r = self.api("GET", base + "/10.0.0.0%2F24", token=tok)
        self.assertEqual(r.status, 200, r)
        self.assertEqual((r.json["cidrBlock"], r.json["comment"]), ("10.0.0.0/24", "office"))
        self.assertEqual(self.api("GET", base + "/192.0.2.7", token=tok).json["cidrBlock"], "192.0.2.7/32")
        r = self.api("DELETE", base + "/10.0.0.0%2F24", token=tok)
        self.assertEqual(r.status, 204)
        self.assertAtlasError(self.api("GET", base + "/10.0.0.0%2F24", token=tok), 404)
        self.assertEqual(self.api("GET", base, token=tok).json["totalCount"], 1)
        self.assertAtlasError(self.api("POST", base, "[1,", token=tok,
                                       headers={"Content-Type": "application/json"}), 400, "INVALID_JSON")
        self.api("DELETE", base + "/192.0.2.7", token=tok)
        # the log keeps the path exactly as sent
        self.assertIn(base + "/10.0.0.0%2F24", [e["path"] for e in self.fake("GET", "/__fake/requests")])

    def test_snapshots(self):
        tok = self.token()
        base = "/api/atlas/v2/groups/%s/clusters/Cluster0/backup/snapshots" % GROUP
        r = self.api("GET", base, token=tok)
        self.assertEqual([s["id"] for s in r.json["results"]], [SNAP])
        r = self.api("POST", base, {"description": "selftest", "retentionInDays": 2}, token=tok)
        self.assertEqual(r.status, 200, r)
        sid = r.json["id"]
        self.assertEqual(self.api("GET", base + "/" + sid, token=tok).json["description"], "selftest")
        r = self.api("PATCH", base + "/" + sid, {"retentionUnit": "DAYS", "retentionValue": 5}, token=tok)
        self.assertEqual(r.status, 200)
        self.assertEqual(self.api("DELETE", base + "/" + sid, token=tok).status, 204)
        self.assertAtlasError(self.api("GET", base + "/" + sid, token=tok), 404)

    def test_digest(self):
        uri = "/api/atlas/v2/groups?pageNum=1&itemsPerPage=5"
        c = self.conn()
        r = self.api("GET", uri, conn=c)
        self.assertAtlasError(r, 401, "UNAUTHORIZED")
        chal = r.headers["WWW-Authenticate"]
        m = CHALLENGE_RE.match(chal)
        self.assertTrue(m, chal)
        self.assertEqual(m.group(2), "false")
        # the Go digest client splits on ", " and knows only these keys
        keys = [p.split("=", 1)[0] for p in chal[len("Digest "):].split(", ")]
        self.assertEqual(keys, ["realm", "domain", "nonce", "algorithm", "qop", "stale"])
        nonce = m.group(1)

        def call(nc, nonce=nonce, method="GET", path=uri, hdr_uri=None, **kw):
            h = {"Authorization": digest_header(method, hdr_uri or path, nonce, nc, **kw)}
            return self.api(method, path, headers=h, conn=c)

        r = call(1)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["results"][0]["name"], "demo")
        self.assertEqual(call(2).status, 200)          # same nonce, higher nc
        self.assertEqual(call(2).status, 401)          # nc replay
        self.assertEqual(call(5).status, 200)          # gaps are fine; 3rd use
        r = call(6)                                    # nonce used NONCE_USES times
        self.assertEqual(r.status, 401)
        m2 = CHALLENGE_RE.match(r.headers["WWW-Authenticate"])
        self.assertTrue(m2)
        self.assertEqual(m2.group(2), "true")
        self.assertNotEqual(m2.group(1), nonce)
        nonce2 = m2.group(1)
        self.assertEqual(call(1, nonce=nonce2, priv="wrong").status, 401)       # bad key
        self.assertEqual(call(1, nonce=nonce2, hdr_uri="/api/atlas/v2/orgs").status, 401)  # uri mismatch
        self.assertEqual(call(1, nonce="made-up-nonce").status, 401)           # unknown nonce
        # POST with digest (method is part of HA2)
        r = call(1, nonce=nonce2, method="POST", path="/api/atlas/v2/groups/%s/accessList" % GROUP)
        self.assertNotEqual(r.status, 401)
        auths = [e["auth"] for e in self.fake("GET", "/__fake/requests")]
        self.assertEqual(auths, ["digest:challenge", "digest:ok", "digest:ok", "digest:nc_reused",
                                 "digest:ok", "digest:stale", "digest:bad_response", "digest:bad_uri",
                                 "digest:unknown_nonce", "digest:ok"])

    def test_fault_token_fail_and_delay(self):
        self.fake("POST", "/__fake/faults", {"token_fail": {"count": 2, "status": 503}})
        for _ in range(2):
            r = self.token_req()
            self.assertEqual(r.status, 503)
            self.assertIsInstance(r.json["error"], str)
        self.assertEqual(self.token_req().status, 200)
        self.fake("POST", "/__fake/faults", {"token_fail": {"count": 1, "status": 401,
                                                            "body": {"error": "invalid_client"}}})
        r = self.token_req()
        self.assertEqual((r.status, r.json), (401, {"error": "invalid_client"}))
        self.fake("POST", "/__fake/faults", {"token_delay_ms": 300})
        t0 = time.monotonic()
        self.assertEqual(self.token_req().status, 200)
        self.assertGreaterEqual(time.monotonic() - t0, 0.28)
        st = self.fake("GET", "/__fake/stats")
        self.assertEqual((st["token_requests"], st["token_successes"], st["token_failures"]), (5, 2, 3))

    def test_fault_api_status(self):
        tok = self.token()
        self.fake("POST", "/__fake/faults", {"api_status": {"path_prefix": "/api/atlas/v2/groups",
                                                            "status": 429, "count": 1}})
        r = self.api("GET", "/api/atlas/v2/orgs", token=tok)
        self.assertEqual(r.status, 200)
        r = self.api("GET", "/api/atlas/v2/groups", token=tok)
        self.assertAtlasError(r, 429, "RATE_LIMITED_TOKEN_BUCKET")
        self.assertEqual(r.headers["Retry-After"], "1")
        self.assertEqual(self.api("GET", "/api/atlas/v2/groups", token=tok).status, 200)
        self.fake("POST", "/__fake/faults", {"api_status": [{"path_prefix": "/api/atlas/", "status": 500,
                                                             "count": -1, "method": "DELETE"}]})
        for _ in range(2):
            r = self.api("DELETE", "/api/atlas/v2/groups/%s/clusters/Cluster0" % GROUP, token=tok)
            self.assertAtlasError(r, 500)
        self.fake("POST", "/__fake/faults", {"api_status": None})
        self.assertEqual(self.fake("GET", "/__fake/faults")["api_status"], [])
        st = self.fake("GET", "/__fake/stats")
        self.assertEqual(st["by_status"], {"200": 3, "429": 1, "500": 2})

    def test_fault_stall(self):
        tok = self.token()
        self.fake("POST", "/__fake/faults", {"stall_ms": 300, "stall_count": 1})
        t0 = time.monotonic()
        self.assertEqual(self.api("GET", "/api/atlas/v2/orgs", token=tok).status, 200)
        self.assertGreaterEqual(time.monotonic() - t0, 0.28)
        t0 = time.monotonic()
        self.assertEqual(self.api("GET", "/api/atlas/v2/orgs", token=tok).status, 200)
        self.assertLess(time.monotonic() - t0, 0.25)
        # a client that gives up during a stall does not hurt the server
        self.fake("POST", "/__fake/faults", {"stall_ms": 500, "stall_count": 1})
        c = Conn(self.addr, self.port, self.ctx, timeout=0.1)
        c.request("GET", "/api/atlas/v2/orgs", headers={"Accept": V2, "Authorization": "Bearer " + tok})
        with self.assertRaises((TimeoutError, socket.timeout)):
            c.getresponse()
        c.close()
        self.assertEqual(self.api("GET", "/api/atlas/v2/orgs", token=tok).status, 200)

    def raw_request(self, path, tok):
        """One GET over TLS driven through memory BIOs, so that the TCP-level
        outcome stays visible: returns (plaintext, how) with how one of
        "rst" (ECONNRESET), "fin" (EOF) or "open"."""
        sock = socket.create_connection((self.addr, self.port), timeout=5)
        inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = self.ctx.wrap_bio(inc, out, server_hostname=HOST)
        plain, how = b"", "open"
        try:
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    sock.sendall(out.read())
                    data = sock.recv(65536)
                    self.assertTrue(data, "EOF during handshake")
                    inc.write(data)
            tls.write(("GET %s HTTP/1.1\r\nHost: %s\r\nAccept: %s\r\nAuthorization: Bearer %s\r\n\r\n"
                       % (path, HOST, V2, tok)).encode())
            sock.sendall(out.read())
            while True:
                try:
                    data = sock.recv(65536)
                except ConnectionResetError:
                    how = "rst"
                    break
                if not data:
                    how = "fin"
                    break
                inc.write(data)
                try:
                    while True:
                        plain += tls.read(65536)
                except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                    pass
        finally:
            sock.close()
        return plain, how

    def test_fault_reset_mid_response(self):
        tok = self.token()
        self.fake("POST", "/__fake/faults", {"reset_mid_response": 1})
        path = "/api/atlas/v2/groups/%s/clusters" % GROUP
        data, how = self.raw_request(path, tok)
        head, _, body = data.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 200 "), data[:200])
        cl = int(re.search(rb"Content-Length: (\d+)", head).group(1))
        self.assertGreater(len(body), 0)
        self.assertLess(len(body), cl)
        self.assertEqual(how, "rst")
        # fault used up: the next request is whole
        r = self.api("GET", path, token=tok)
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json["totalCount"], 1)
        faulted = [e for e in self.fake("GET", "/__fake/requests") if e["fault"]]
        self.assertEqual([e["fault"] for e in faulted], ["reset_mid_response"])

    def test_fault_close_after_headers(self):
        tok = self.token()
        self.fake("POST", "/__fake/faults", {"close_after_headers": True})
        for _ in range(2):
            c = self.conn()
            c.request("GET", "/api/atlas/v2/orgs", headers={"Accept": V2, "Authorization": "Bearer " + tok})
            r = c.getresponse()
            self.assertEqual(r.status, 200)
            self.assertGreater(int(r.getheader("Content-Length")), 0)
            with self.assertRaises((http.client.IncompleteRead, ConnectionError, ssl.SSLError)):
                r.read()
        data, how = self.raw_request("/api/atlas/v2/orgs", tok)
        head, sep, body = data.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 200 ") and sep, data)
        self.assertEqual((body, how), (b"", "fin"))
        self.fake("POST", "/__fake/faults", {"close_after_headers": False})
        self.assertEqual(self.api("GET", "/api/atlas/v2/orgs", token=tok).status, 200)

    def test_bad_fault_spec(self):
        r = self.req("POST", "/__fake/faults", {"no_such_knob": 1})
        self.assertAtlasError(r, 400)
        r = self.req("POST", "/__fake/faults", "{", {"Content-Type": "application/json"})
        self.assertAtlasError(r, 400)

    def test_requests_log_and_stats(self):
        tok = self.token()
        c = self.conn()
        r = self.api("POST", "/api/atlas/v2/groups/%s/accessList?pretty=true" % GROUP,
                     [{"ipAddress": "198.51.100.9"}], token=tok, conn=c, headers={"X-Test": "abc"})
        self.assertEqual(r.status, 201)
        rid = int(r.headers["X-Fake-Atlas-Request-Id"])
        self.assertEqual(self.api("HEAD", "/api/atlas/v2/orgs", token=tok, conn=c).status, 200)
        self.fake("GET", "/__fake/stats")  # not recorded
        log = self.fake("GET", "/__fake/requests")
        self.assertEqual([e["kind"] for e in log], ["token", "api", "api"])
        e = log[1]
        self.assertEqual(e["id"], rid)
        self.assertEqual(e["method"], "POST")
        self.assertEqual(e["path"], "/api/atlas/v2/groups/%s/accessList?pretty=true" % GROUP)
        self.assertIn(["X-Test", "abc"], e["headers"])
        self.assertIn(["Authorization", "Bearer " + tok], e["headers"])
        self.assertEqual(e["header_map"]["accept"], V2)
        self.assertEqual(json.loads(e["body"]), [{"ipAddress": "198.51.100.9"}])
        self.assertEqual(e["client"][0], "127.0.0.1")
        self.assertEqual(e["auth"], "bearer:ok")
        self.assertEqual(e["status"], 201)
        self.assertEqual(e["sni"], HOST)
        self.assertEqual(e["tls_version"][:4], "TLSv")
        self.assertIsInstance(e["ts"], float)
        self.assertEqual((log[1]["conn"], log[1]["conn_seq"]), (log[2]["conn"], 1))
        self.assertEqual(log[2]["conn_seq"], 2)
        self.assertEqual(log[0]["auth"], "basic:ok")
        self.assertEqual(len(self.fake("GET", "/__fake/requests?since=%d" % rid)), 1)
        st = self.fake("GET", "/__fake/stats")
        self.assertEqual((st["token_requests"], st["token_successes"], st["api_requests"]), (1, 1, 2))
        self.assertEqual(st["by_status"], {"200": 2, "201": 1})
        self.assertGreaterEqual(st["active_tokens"], 1)
        self.api("DELETE", "/api/atlas/v2/groups/%s/accessList/198.51.100.9" % GROUP, token=tok)
        self.fake("POST", "/__fake/reset")
        self.assertEqual(self.fake("GET", "/__fake/requests"), [])
        self.assertEqual(self.fake("GET", "/__fake/stats")["api_requests"], 0)

    def test_secrets_not_logged(self):
        tok = self.token()
        self.api("GET", "/api/atlas/v2/orgs", token=tok)
        self.req("POST", "/api/oauth/revoke", "token=" + tok,
                 {"Authorization": self.basic(), "Content-Type": "application/x-www-form-urlencoded"})
        time.sleep(0.1)
        for path in (self.logfile, os.path.join(self.tmp, "main.stderr")):
            with open(path) as f:
                text = f.read()
            self.assertTrue(text, path)
            self.assertNotIn(CLIENT_SECRET, text)
            self.assertNotIn(base64.b64encode(("%s:%s" % (CLIENT_ID, CLIENT_SECRET)).encode()).decode(), text)
            self.assertNotIn(tok, text)
            self.assertNotIn(DIGEST_PRIV, text)

    # ---- minted credentials --------------------------------------------------
    def test_api_key_org_mint_use_mask_delete(self):
        self.fresh_state()
        tok = self.token()
        base = "/api/atlas/v2/orgs/%s/apiKeys" % ORG
        r = self.api("POST", base, {"desc": "agent key", "roles": ["ORG_READ_ONLY"]}, token=tok)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.headers["Content-Type"], V2 + ";charset=utf-8")
        k = r.json
        self.assertEqual(sorted(k), ["desc", "id", "links", "privateKey", "publicKey", "roles"])
        self.assertRegex(k["id"], "^[0-9a-f]{24}$")
        self.assertRegex(k["publicKey"], "^[a-z]{8}$")
        self.assertRegex(k["privateKey"], UUID4_RE)
        self.assertEqual(k["desc"], "agent key")
        self.assertEqual(k["roles"], [{"orgId": ORG, "roleName": "ORG_READ_ONLY"}])
        self.assertEqual(k["links"][0]["rel"], "self")
        e = self.last_api_entry()
        self.assertEqual((e["principal"], e["principal_minted"]), ("service_account:" + CLIENT_ID, False))
        pub, priv, kid = k["publicKey"], k["privateKey"], k["id"]

        # the minted key authenticates by Digest, and the log says which key it was
        r = self.digest_api("GET", "/api/atlas/v2/groups/" + GROUP, pub, priv)
        self.assertEqual(r.status, 200, r)
        e = self.last_api_entry()
        self.assertEqual((e["auth"], e["principal"], e["principal_minted"]), ("digest:ok", "api_key:" + pub, True))
        self.assertEqual(self.digest_api("GET", "/api/atlas/v2/orgs", pub, "wrong-" + priv).status, 401)

        # reads mask the private key
        masked = "********-****-****-" + priv[-12:]
        r = self.api("GET", base, token=tok)
        self.assertEqual((r.status, r.json["totalCount"]), (200, 1))
        self.assertEqual(r.json["results"][0]["privateKey"], masked)
        self.assertEqual(r.json["results"][0]["publicKey"], pub)
        self.assertNotIn(priv.encode(), r.data)
        r = self.api("GET", base + "/" + kid, token=tok)
        self.assertEqual((r.status, r.json["privateKey"], r.json["id"]), (200, masked, kid))
        r = self.api("PATCH", base + "/" + kid, {"desc": "renamed", "roles": ["ORG_MEMBER"]}, token=tok)
        self.assertEqual((r.status, r.json["desc"], r.json["privateKey"]), (200, "renamed", masked))
        self.assertEqual(r.json["roles"], [{"orgId": ORG, "roleName": "ORG_MEMBER"}])
        self.assertAtlasError(self.api("PATCH", base + "/" + kid, {}, token=tok), 400, "MISSING_ATTRIBUTE")
        self.assertNotIn(priv, json.dumps(self.fake("GET", "/__fake/state")))

        m = self.minted()["api_keys"]
        self.assertEqual(len(m), 1)
        self.assertEqual((m[0]["id"], m[0]["publicKey"], m[0]["privateKey"], m[0]["orgId"], m[0]["deleted"]),
                         (kid, pub, priv, ORG, False))

        # delete: gone, and the key stops working
        r = self.api("DELETE", base + "/" + kid, token=tok)
        self.assertEqual((r.status, r.data), (204, b""))
        self.assertAtlasError(self.api("GET", base + "/" + kid, token=tok), 404, "API_KEY_NOT_FOUND")
        self.assertAtlasError(self.api("DELETE", base + "/" + kid, token=tok), 404)
        self.assertEqual(self.api("GET", base, token=tok).json["totalCount"], 0)
        r = self.digest_api("GET", "/api/atlas/v2/groups/" + GROUP, pub, priv)
        self.assertAtlasError(r, 401, "UNAUTHORIZED")
        self.assertEqual(self.last_api_entry()["auth"], "digest:bad_response")
        self.assertIsNone(self.last_api_entry()["principal"])
        self.assertTrue(self.minted()["api_keys"][0]["deleted"])

        # validation, authentication, unknown org
        for body, code in (({}, "MISSING_ATTRIBUTE"), ({"desc": "x"}, "MISSING_ATTRIBUTE"),
                           ({"roles": ["ORG_MEMBER"]}, "MISSING_ATTRIBUTE"),
                           ({"desc": "x", "roles": []}, "INVALID_ATTRIBUTE"),
                           ({"desc": "", "roles": ["ORG_MEMBER"]}, "INVALID_ATTRIBUTE"),
                           ({"desc": "x", "roles": "ORG_MEMBER"}, "INVALID_ATTRIBUTE"),
                           ({"desc": "x", "roles": ["GROUP_OWNER"]}, "INVALID_ENUM_VALUE"),
                           ([{"desc": "x"}], "INVALID_JSON")):
            self.assertAtlasError(self.api("POST", base, body, token=tok), 400, code)
        r = self.api("POST", base, {}, token=tok)
        self.assertEqual(r.json["parameters"], ["desc"])
        self.assertAtlasError(self.api("POST", base, "{oops", token=tok,
                                       headers={"Content-Type": "application/json"}), 400, "INVALID_JSON")
        self.assertAtlasError(self.api("POST", base, {"desc": "x", "roles": ["ORG_MEMBER"]}), 401, "UNAUTHORIZED")
        self.assertAtlasError(self.api("GET", "/api/atlas/v2/orgs/%s/apiKeys" % ("a" * 24), token=tok),
                              404, "ORG_NOT_FOUND")
        self.assertEqual(len(self.minted()["api_keys"]), 1)   # nothing minted by the failures

    def test_api_key_project_v1_digest(self):
        """Legacy v1.0 (Accept: application/json, Digest), as mongodb-atlas-api-client uses it."""
        self.fresh_state()
        v1 = "/api/atlas/v1.0"
        gbase = "%s/groups/%s/apiKeys" % (v1, GROUP)
        r = self.digest_api("POST", gbase, DIGEST_PUB, DIGEST_PRIV,
                            {"desc": "project key", "roles": ["GROUP_READ_ONLY"]}, accept="application/json")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.headers["Content-Type"], "application/json;charset=utf-8")
        e = self.last_api_entry()
        self.assertEqual((e["principal"], e["principal_minted"]), ("api_key:" + DIGEST_PUB, False))
        k = r.json
        self.assertRegex(k["privateKey"], UUID4_RE)
        self.assertIn({"groupId": GROUP, "roleName": "GROUP_READ_ONLY"}, k["roles"])
        self.assertIn({"orgId": ORG, "roleName": "ORG_MEMBER"}, k["roles"])
        pub, priv, kid = k["publicKey"], k["privateKey"], k["id"]
        r = self.digest_api("GET", "%s/groups/%s" % (v1, GROUP), pub, priv, accept=None)
        self.assertEqual((r.status, r.json["id"]), (200, GROUP))
        self.assertEqual(self.last_api_entry()["principal"], "api_key:" + pub)

        def with_key(method, path, body=None):
            return self.digest_api(method, path, pub, priv, body, accept="application/json")

        r = with_key("GET", gbase)
        self.assertEqual([x["id"] for x in r.json["results"]], [kid])
        self.assertEqual(r.json["results"][0]["privateKey"], "********-****-****-" + priv[-12:])
        r = with_key("PATCH", gbase + "/" + kid, {"roles": ["GROUP_OWNER"]})
        self.assertEqual(r.status, 200, r)
        self.assertEqual([x for x in r.json["roles"] if "groupId" in x], [{"groupId": GROUP, "roleName": "GROUP_OWNER"}])
        self.assertEqual(self.minted()["api_keys"][0]["groupIds"], [GROUP])
        # unassigning from the project keeps the organization key alive
        r = with_key("DELETE", gbase + "/" + kid)
        self.assertEqual((r.status, r.data), (204, b""))
        self.assertEqual(with_key("GET", gbase).json["totalCount"], 0)
        r = with_key("GET", "%s/orgs/%s/apiKeys/%s" % (v1, ORG, kid))
        self.assertEqual((r.status, r.json["roles"]), (200, [{"orgId": ORG, "roleName": "ORG_MEMBER"}]))
        self.assertAtlasError(with_key("DELETE", gbase + "/" + kid), 404, "API_KEY_NOT_FOUND")
        r = with_key("POST", gbase + "/" + kid, [{"roleName": "GROUP_READ_ONLY"}])
        self.assertEqual(r.status, 204, r)
        self.assertEqual(with_key("GET", gbase).json["totalCount"], 1)
        self.assertAtlasError(with_key("POST", gbase, {"desc": "x", "roles": ["ORG_OWNER"]}), 400,
                              "INVALID_ENUM_VALUE")
        self.assertAtlasError(with_key("POST", "%s/groups/%s/apiKeys" % (v1, "b" * 24),
                                       {"desc": "x", "roles": ["GROUP_OWNER"]}), 404, "GROUP_NOT_FOUND")
        # deleting the organization key ends it
        self.assertEqual(with_key("DELETE", "%s/orgs/%s/apiKeys/%s" % (v1, ORG, kid)).status, 204)
        self.assertEqual(with_key("GET", "%s/groups/%s" % (v1, GROUP)).status, 401)

    def test_service_account_org(self):
        self.fresh_state()
        tok = self.token()
        base = "/api/atlas/v2/orgs/%s/serviceAccounts" % ORG
        body = {"name": "agent sa", "description": "for the self-test", "roles": ["ORG_MEMBER"],
                "secretExpiresAfterHours": 8}
        r = self.api("POST", base, body, token=tok)
        self.assertEqual(r.status, 201, r)
        sa = r.json
        self.assertEqual(sorted(sa), ["clientId", "createdAt", "description", "name", "roles", "secrets"])
        self.assertRegex(sa["clientId"], "^mdb_sa_id_[0-9a-f]{24}$")
        self.assertEqual((sa["name"], sa["description"], sa["roles"]), ("agent sa", "for the self-test", ["ORG_MEMBER"]))
        self.assertEqual(len(sa["secrets"]), 1)
        s1 = sa["secrets"][0]
        self.assertEqual(sorted(s1), ["createdAt", "expiresAt", "id", "secret"])
        self.assertRegex(s1["id"], "^[0-9a-f]{24}$")
        self.assertRegex(s1["secret"], SA_SECRET_RE)
        fmt = "%Y-%m-%dT%H:%M:%SZ"
        hours = (time.mktime(time.strptime(s1["expiresAt"], fmt)) -
                 time.mktime(time.strptime(s1["createdAt"], fmt))) / 3600
        self.assertEqual(hours, 8)
        cid = sa["clientId"]

        # the minted client gets tokens (Basic and form), and they work
        r = self.token_req(auth=self.basic(cid, s1["secret"]))
        self.assertEqual(r.status, 200, r)
        tok1 = r.json["access_token"]
        e = self.fake("GET", "/__fake/requests")[-1]
        self.assertEqual((e["kind"], e["auth"], e["principal"], e["principal_minted"]),
                         ("token", "basic:ok", "service_account:" + cid, True))
        r = self.api("GET", "/api/atlas/v2/groups", token=tok1)
        self.assertEqual(r.status, 200, r)
        e = self.last_api_entry()
        self.assertEqual((e["auth"], e["principal"], e["principal_minted"]), ("bearer:ok", "service_account:" + cid, True))
        r = self.token_req(body=urllib.parse.urlencode({"grant_type": "client_credentials", "client_id": cid,
                                                        "client_secret": s1["secret"]}), auth=False)
        self.assertEqual((r.status, self.fake("GET", "/__fake/requests")[-1]["auth"]), (200, "post:ok"))
        self.assertEqual(self.token_req(auth=self.basic(cid, s1["secret"] + "x")).status, 401)

        # reads mask the secret
        for r in (self.api("GET", base, token=tok), self.api("GET", base + "/" + cid, token=tok)):
            self.assertEqual(r.status, 200, r)
            self.assertNotIn(s1["secret"].encode(), r.data)
        one = r.json
        self.assertEqual(one["clientId"], cid)
        self.assertEqual(sorted(one["secrets"][0]), ["createdAt", "expiresAt", "id", "lastUsedAt", "maskedSecretValue"])
        self.assertTrue(one["secrets"][0]["maskedSecretValue"].startswith("mdb_sa_sk_"))
        self.assertNotIn("secret", one["secrets"][0])
        self.assertEqual(self.api("GET", base, token=tok).json["totalCount"], 1)

        # a second secret
        r = self.api("POST", base + "/" + cid + "/secrets", {"secretExpiresAfterHours": 24}, token=tok)
        self.assertEqual(r.status, 201, r)
        s2 = r.json
        self.assertEqual(sorted(s2), ["createdAt", "expiresAt", "id", "secret"])
        self.assertRegex(s2["secret"], SA_SECRET_RE)
        self.assertNotEqual(s2["secret"], s1["secret"])
        tok2 = self.token_req(auth=self.basic(cid, s2["secret"])).json["access_token"]
        self.assertEqual(len(self.api("GET", base + "/" + cid, token=tok).json["secrets"]), 2)
        flat = {d["id"]: d for d in self.minted()["service_account_secrets"]}
        self.assertEqual({i: (d["clientId"], d["secret"], d["deleted"]) for i, d in flat.items()},
                         {s1["id"]: (cid, s1["secret"], False), s2["id"]: (cid, s2["secret"], False)})

        # deleting a secret ends it and the tokens it got; the other secret lives on
        r = self.api("DELETE", "%s/%s/secrets/%s" % (base, cid, s1["id"]), token=tok)
        self.assertEqual((r.status, r.data), (204, b""))
        self.assertAtlasError(self.api("GET", "/api/atlas/v2/orgs", token=tok1), 401)
        self.assertEqual(self.last_api_entry()["auth"], "bearer:revoked")
        self.assertEqual(self.token_req(auth=self.basic(cid, s1["secret"])).status, 401)
        self.assertEqual(self.api("GET", "/api/atlas/v2/orgs", token=tok2).status, 200)
        self.assertAtlasError(self.api("DELETE", "%s/%s/secrets/%s" % (base, cid, s1["id"]), token=tok), 404)
        self.assertTrue({d["id"]: d for d in self.minted()["service_account_secrets"]}[s1["id"]]["deleted"])

        r = self.api("PATCH", base + "/" + cid, {"name": "renamed sa"}, token=tok)
        self.assertEqual((r.status, r.json["name"]), (200, "renamed sa"))
        self.assertNotIn(s2["secret"].encode(), r.data)

        # deleting the account ends everything
        self.assertEqual(self.api("DELETE", base + "/" + cid, token=tok).status, 204)
        self.assertAtlasError(self.api("GET", "/api/atlas/v2/orgs", token=tok2), 401)
        self.assertEqual(self.token_req(auth=self.basic(cid, s2["secret"])).status, 401)
        self.assertAtlasError(self.api("GET", base + "/" + cid, token=tok), 404, "SERVICE_ACCOUNT_NOT_FOUND")
        m = self.minted()["service_accounts"]
        self.assertEqual((m[0]["clientId"], m[0]["deleted"]), (cid, True))

        # validation
        for bad, code in (({k: v for k, v in body.items() if k != "secretExpiresAfterHours"}, "MISSING_ATTRIBUTE"),
                          ({k: v for k, v in body.items() if k != "name"}, "MISSING_ATTRIBUTE"),
                          (dict(body, roles=[]), "INVALID_ATTRIBUTE"),
                          (dict(body, roles=["GROUP_OWNER"]), "INVALID_ENUM_VALUE"),
                          (dict(body, secretExpiresAfterHours=0), "INVALID_ATTRIBUTE"),
                          (dict(body, name="bad/name"), "INVALID_ATTRIBUTE")):
            self.assertAtlasError(self.api("POST", base, bad, token=tok), 400, code)
        self.assertEqual(len(self.minted()["service_accounts"]), 1)

    def test_service_account_project(self):
        self.fresh_state()
        tok = self.token()
        base = "/api/atlas/v2/groups/%s/serviceAccounts" % GROUP
        r = self.api("POST", base, {"name": "proj sa", "description": "d", "roles": ["GROUP_READ_ONLY"],
                                    "secretExpiresAfterHours": 48}, token=tok)
        self.assertEqual(r.status, 201, r)
        cid, sec = r.json["clientId"], r.json["secrets"][0]["secret"]
        self.assertEqual(r.json["roles"], ["GROUP_READ_ONLY"])
        self.assertEqual([x["clientId"] for x in self.api("GET", base, token=tok).json["results"]], [cid])
        r = self.api("GET", "/api/atlas/v2/orgs/%s/serviceAccounts" % ORG, token=tok)
        self.assertEqual([x["clientId"] for x in r.json["results"]], [cid])
        self.assertNotIn(sec.encode(), r.data)
        r = self.api("POST", base + "/" + cid + "/secrets", {"secretExpiresAfterHours": 1}, token=tok)
        self.assertEqual(r.status, 201, r)
        self.assertAtlasError(self.api("POST", base + "/" + cid + "/secrets", {}, token=tok), 400, "MISSING_ATTRIBUTE")
        stok = self.token_req(auth=self.basic(cid, sec)).json["access_token"]
        self.assertEqual(self.api("GET", "/api/atlas/v2/groups/%s/clusters" % GROUP, token=stok).status, 200)
        m = self.minted()["service_accounts"][0]
        self.assertEqual((m["groupId"], m["orgId"], len(m["secrets"])), (GROUP, ORG, 2))
        self.assertEqual(self.api("DELETE", base + "/" + cid, token=tok).status, 204)
        self.assertAtlasError(self.api("GET", "/api/atlas/v2/orgs", token=stok), 401)
        self.assertEqual(self.api("GET", base, token=tok).json["totalCount"], 0)

    def test_database_user_passwords(self):
        self.fresh_state()
        tok = self.token()
        base = "/api/atlas/v2/groups/%s/databaseUsers" % GROUP
        r = self.api("POST", base, {"databaseName": "admin", "username": "app", "password": "first-Pw-1",
                                    "roles": [{"databaseName": "admin", "roleName": "read"}]}, token=tok)
        self.assertEqual(r.status, 201, r)
        self.assertNotIn(b"first-Pw-1", r.data)
        self.assertNotIn("password", r.json)
        path = base + "/admin/app"
        self.assertNotIn(b"first-Pw-1", self.api("GET", path, token=tok).data)
        self.assertNotIn(b"first-Pw-1", self.api("GET", base, token=tok).data)
        r = self.api("PATCH", path, {"password": "second-Pw-2"}, token=tok)
        self.assertEqual(r.status, 200, r)
        self.assertNotIn(b"second-Pw-2", r.data)
        self.assertAtlasError(self.api("PATCH", path, {"password": 5}, token=tok), 400, "INVALID_ATTRIBUTE")
        self.assertEqual(self.api("POST", base, {"username": "nopw", "roles": []}, token=tok).status, 201)
        users = {u["username"]: u for u in self.minted()["database_users"]}
        self.assertEqual((users["app"]["password"], users["app"]["passwords"], users["app"]["groupId"],
                          users["app"]["databaseName"], users["app"]["deleted"]),
                         ("second-Pw-2", ["first-Pw-1", "second-Pw-2"], GROUP, "admin", False))
        self.assertIsNone(users["nopw"]["password"])
        self.assertNotIn("second-Pw-2", json.dumps(self.fake("GET", "/__fake/state")))
        self.assertEqual(self.api("DELETE", path, token=tok).status, 204)
        self.assertTrue({u["username"]: u for u in self.minted()["database_users"]}["app"]["deleted"])

    def openssl(self, *args, data=None):
        r = subprocess.run(["openssl"] + list(args), input=data, capture_output=True, check=True)
        return r.stdout.decode()

    def test_x509_certs(self):
        self.fresh_state()
        tok = self.token()
        base = "/api/atlas/v2/groups/%s/databaseUsers" % GROUP
        r = self.api("POST", base, {"databaseName": "$external", "username": "x509-agent", "x509Type": "MANAGED",
                                    "roles": [{"databaseName": "admin", "roleName": "read"}]}, token=tok)
        self.assertEqual(r.status, 201, r)
        self.api("POST", base, {"username": "scram-user", "password": "pw-x", "roles": []}, token=tok)
        certs = base + "/x509-agent/certs"
        r = self.api("POST", certs, {"monthsUntilExpiration": 2}, token=tok)
        self.assertEqual(r.status, 201, r)
        self.assertEqual(r.headers["Content-Type"], V2 + ";charset=utf-8")
        pem = r.data.decode()
        self.assertTrue(pem.startswith("-----BEGIN CERTIFICATE-----\n"), pem[:80])
        self.assertIn("-----END CERTIFICATE-----\n-----BEGIN PRIVATE KEY-----\n", pem)
        self.assertTrue(pem.endswith("-----END PRIVATE KEY-----\n"))
        cert_pem = pem[:pem.index("-----BEGIN PRIVATE KEY-----")]
        key_pem = pem[len(cert_pem):]
        # a real certificate and RSA key, signed by the stand-in's CA
        info = self.openssl("x509", "-noout", "-subject", "-serial", "-ext", "extendedKeyUsage",
                            data=cert_pem.encode())
        self.assertIn("CN = x509-agent", info)
        self.assertIn("TLS Web Client Authentication", info)
        key_text = self.openssl("pkey", "-noout", "-text", data=key_pem.encode())
        self.assertIn("(2048 bit", key_text)
        self.assertIn("publicExponent", key_text)   # RSA
        self.assertEqual(self.openssl("x509", "-noout", "-pubkey", data=cert_pem.encode()),
                         self.openssl("pkey", "-pubout", data=key_pem.encode()))
        minted = self.minted()
        ca = os.path.join(self.tmp, "x509-ca.pem")
        with open(ca, "w") as f:
            f.write(minted["x509_ca"])
        self.assertIn(": OK", self.openssl("verify", "-CAfile", ca, data=cert_pem.encode()))
        serial = int(re.search(r"serial=([0-9A-F]+)", info).group(1), 16)
        c = minted["certs"][0]
        self.assertEqual((c["serial"], c["_id"], c["groupId"], c["username"], c["subject"]),
                         (serial, serial, GROUP, "x509-agent", "CN=x509-agent"))
        self.assertEqual((c["privateKey"], c["certificate"]), (key_pem, cert_pem))
        # listing: metadata only
        r = self.api("GET", certs, token=tok)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["totalCount"], 1)
        item = r.json["results"][0]
        self.assertEqual((item["_id"], item["groupId"], item["subject"]), (serial, GROUP, "CN=x509-agent"))
        self.assertRegex(item["notAfter"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
        self.assertGreater(item["notAfter"], item["createdAt"])
        self.assertNotIn(b"PRIVATE KEY", r.data)
        self.assertNotIn("PRIVATE KEY", json.dumps(self.fake("GET", "/__fake/state")))
        # v1.0 and a content-type override
        r = self.api("POST", "/api/atlas/v1.0/groups/%s/databaseUsers/x509-agent/certs" % GROUP, {}, token=tok,
                     accept="application/json")
        self.assertEqual((r.status, r.headers["Content-Type"]), (201, "application/json;charset=utf-8"))
        self.fake("POST", "/__fake/faults", {"cert_content_type": "application/x-pem-file"})
        r = self.api("POST", certs, {"monthsUntilExpiration": 1}, token=tok)
        self.assertEqual((r.status, r.headers["Content-Type"]), (201, "application/x-pem-file"))
        self.assertEqual(self.api("GET", certs, token=tok).json["totalCount"], 3)
        # errors
        self.assertAtlasError(self.api("POST", certs, {"monthsUntilExpiration": 25}, token=tok), 400,
                              "INVALID_ATTRIBUTE")
        self.assertAtlasError(self.api("POST", base + "/scram-user/certs", {}, token=tok), 400,
                              "USER_NOT_X509_MANAGED")
        self.assertAtlasError(self.api("POST", base + "/nobody/certs", {}, token=tok), 404, "USERNAME_NOT_FOUND")
        self.assertAtlasError(self.api("POST", certs, {}), 401)
        self.assertEqual(len(self.minted()["certs"]), 3)

    # ---- response framing faults ---------------------------------------------
    def test_fault_chunked(self):
        self.fresh_state()
        tok = self.token()
        path = "/api/atlas/v2/orgs/%s/apiKeys" % ORG
        self.fake("POST", "/__fake/faults", {"chunked": {"path_prefix": path, "method": "POST", "chunks": 4,
                                                         "chunk_delay_ms": 20}})
        body = json.dumps({"desc": "chunky", "roles": ["ORG_MEMBER"]}).encode()
        raw = self.raw_http("POST", path, {"Accept": V2, "Authorization": "Bearer " + tok,
                                           "Content-Type": "application/json"}, body)
        head, _, rest = raw.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 200 "), head)
        self.assertIn(b"\r\nTransfer-Encoding: chunked", head)
        self.assertNotIn(b"Content-Length", head)
        chunks, trailer = self.parse_chunked(rest)
        self.assertEqual((len(chunks), trailer), (4, b"\r\n"))
        k = json.loads(b"".join(chunks))
        self.assertEqual(self.minted()["api_keys"][-1]["privateKey"], k["privateKey"])
        self.assertEqual(self.fake("GET", "/__fake/requests")[-1]["fault"], "chunked")
        # used up: the next one has a Content-Length again
        r = self.api("POST", path, {"desc": "plain", "roles": ["ORG_MEMBER"]}, token=tok)
        self.assertEqual(r.status, 200)
        # an HTTP client decodes it; keep-alive survives; GET lists too
        self.fake("POST", "/__fake/faults", {"chunked": True})
        c = self.conn()
        for _ in range(2):
            c.request("GET", path, headers={"Accept": V2, "Authorization": "Bearer " + tok})
            resp = c.getresponse()
            self.assertEqual((resp.status, resp.getheader("Transfer-Encoding")), (200, "chunked"))
            self.assertEqual(json.loads(resp.read())["totalCount"], 2)
        c.request("POST", "/api/oauth/token", body="grant_type=client_credentials",   # the token endpoint too
                  headers={"Authorization": self.basic(), "Content-Type": "application/x-www-form-urlencoded"})
        resp = c.getresponse()
        self.assertEqual((resp.status, resp.getheader("Content-Length")), (200, None))
        self.assertIn("access_token", json.loads(resp.read()))
        r = self.api("DELETE", "/api/atlas/v2/orgs/%s/apiKeys/%s" % (ORG, k["id"]), token=tok, conn=c)
        self.assertEqual((r.status, r.headers.get("Transfer-Encoding")), (204, None))  # no body, no chunks
        self.assertAtlasError(self.api("GET", path), 401)  # unauthenticated: left alone
        self.fake("POST", "/__fake/faults", {"chunked": None})
        self.assertEqual(self.fake("GET", "/__fake/faults")["chunked"], [])
        self.assertAtlasError(self.req("POST", "/__fake/faults", {"chunked": [1]}), 400)
        self.assertAtlasError(self.req("POST", "/__fake/faults", {"chunked": {"path_regex": "("}}), 400)

    def test_fault_delay_response(self):
        """The credential is minted before the (delayed) answer: a client that
        gives up mid-wait leaves a minted key behind."""
        self.fresh_state()
        tok = self.token()
        path = "/api/atlas/v2/orgs/%s/apiKeys" % ORG
        self.fake("POST", "/__fake/faults", {"delay_response": {"path_regex": "/apiKeys$", "method": "POST",
                                                                "ms": 800}})
        c = Conn(self.addr, self.port, self.ctx, timeout=0.3)
        c.request("POST", path, body=json.dumps({"desc": "lost", "roles": ["ORG_MEMBER"]}),
                  headers={"Accept": V2, "Authorization": "Bearer " + tok, "Content-Type": "application/json"})
        with self.assertRaises((TimeoutError, socket.timeout)):
            c.getresponse()
        c.close()
        self.assertEqual([k["desc"] for k in self.minted()["api_keys"]], ["lost"])
        time.sleep(0.6)
        self.assertIn("delay_response", self.fake("GET", "/__fake/requests")[-1]["fault"])
        # used up
        t0 = time.monotonic()
        self.assertEqual(self.api("POST", path, {"desc": "quick", "roles": ["ORG_MEMBER"]}, token=tok).status, 200)
        self.assertLess(time.monotonic() - t0, 0.5)
        # mid_body: headers and part of the body first
        self.fake("POST", "/__fake/faults", {"delay_response": {"path_prefix": path, "ms": 1000, "phase": "mid_body"}})
        c = self.conn()
        t0 = time.monotonic()
        c.request("GET", path, headers={"Accept": V2, "Authorization": "Bearer " + tok})
        resp = c.getresponse()
        self.assertEqual(resp.status, 200)
        self.assertLess(time.monotonic() - t0, 0.7)
        self.assertEqual(json.loads(resp.read())["totalCount"], 2)
        self.assertGreaterEqual(time.monotonic() - t0, 0.95)
        # with chunked: the wait comes after the first chunk
        self.fake("POST", "/__fake/faults", {"chunked": {"chunks": 3},
                                             "delay_response": {"ms": 300, "phase": "mid_body"}})
        t0 = time.monotonic()
        c.request("GET", path, headers={"Accept": V2, "Authorization": "Bearer " + tok})
        resp = c.getresponse()
        self.assertEqual(resp.getheader("Transfer-Encoding"), "chunked")
        self.assertEqual(json.loads(resp.read())["totalCount"], 2)
        self.assertGreaterEqual(time.monotonic() - t0, 0.28)
        self.assertEqual(self.fake("GET", "/__fake/requests")[-1]["fault"], "chunked,delay_response")
        self.assertAtlasError(self.req("POST", "/__fake/faults", {"delay_response": {"phase": "x", "ms": 1}}), 400)
        self.assertAtlasError(self.req("POST", "/__fake/faults", {"delay_response": {}}), 400)

    def test_minted_secrets_not_logged_and_reset(self):
        self.fresh_state()
        tok = self.token()
        k = self.api("POST", "/api/atlas/v2/orgs/%s/apiKeys" % ORG, {"desc": "k", "roles": ["ORG_MEMBER"]},
                     token=tok).json
        self.assertEqual(self.digest_api("GET", "/api/atlas/v2/orgs", k["publicKey"], k["privateKey"]).status, 200)
        sa = self.api("POST", "/api/atlas/v2/orgs/%s/serviceAccounts" % ORG,
                      {"name": "n", "description": "d", "roles": ["ORG_MEMBER"], "secretExpiresAfterHours": 1},
                      token=tok).json
        sec = sa["secrets"][0]["secret"]
        stok = self.token_req(auth=self.basic(sa["clientId"], sec)).json["access_token"]
        self.token_req(body=urllib.parse.urlencode({"grant_type": "client_credentials",
                                                    "client_id": sa["clientId"], "client_secret": sec}), auth=False)
        self.assertEqual(self.api("GET", "/api/atlas/v2/orgs", token=stok).status, 200)
        log = json.dumps(self.fake("GET", "/__fake/requests"))
        self.assertNotIn(k["privateKey"], log)    # responses are not recorded
        time.sleep(0.1)
        for path in (self.logfile, os.path.join(self.tmp, "main.stderr")):
            with open(path) as f:
                text = f.read()
            for secret in (k["privateKey"], sec, stok,
                           base64.b64encode(("%s:%s" % (sa["clientId"], sec)).encode()).decode()):
                self.assertNotIn(secret, text, path)
        with open(os.path.join(self.tmp, "main.stderr")) as f:
            self.assertIn("principal=api_key:" + k["publicKey"], f.read())
        # a state reset forgets the minted credentials; they stop working
        self.fake("POST", "/__fake/reset", {"state": True})
        self.assertEqual(self.minted()["api_keys"], [])
        self.assertEqual(self.api("GET", "/api/atlas/v2/orgs", token=stok).status, 401)
        self.assertEqual(self.digest_api("GET", "/api/atlas/v2/orgs", k["publicKey"], k["privateKey"]).status, 401)
        self.assertEqual(self.token_req(auth=self.basic(sa["clientId"], sec)).status, 401)

    def test_bearer_only_mode_ipv6_and_ttl(self):
        try:
            s = socket.socket(socket.AF_INET6)
            s.bind(("::1", 0))
            s.close()
            listen = "::1"
        except OSError:
            listen = "127.0.0.1"
        proc, addr, port, ready, _ = start_server(
            self.tmp, "bearer", ["--auth", "bearer", "--token-ttl", "1"], listen=listen)
        try:
            self.assertEqual(addr, listen)
            c = self.conn(addr=addr, port=port)
            r = self.token_req(conn=c)
            self.assertEqual(r.json["expires_in"], 1)
            tok = r.json["access_token"]
            r = self.api("GET", "/api/atlas/v2/orgs", conn=c)
            self.assertAtlasError(r, 401)
            self.assertIsNone(r.headers.get("WWW-Authenticate"))
            h = {"Authorization": digest_header("GET", "/api/atlas/v2/orgs", "x", 1)}
            self.assertEqual(self.api("GET", "/api/atlas/v2/orgs", headers=h, conn=c).status, 401)
            self.assertEqual(self.api("GET", "/api/atlas/v2/orgs", token=tok, conn=c).status, 200)
            time.sleep(1.1)
            self.assertAtlasError(self.api("GET", "/api/atlas/v2/orgs", token=tok, conn=c), 401)
            log = json.loads(self.req("GET", "/__fake/requests", conn=c).data)
            self.assertEqual(log[-1]["auth"], "bearer:expired")
            self.assertEqual(log[-1]["client"][0], "::1" if listen == "::1" else "127.0.0.1")
        finally:
            self.assertEqual(stop_server(proc), 0)
        self.assertFalse(os.path.exists(ready))


if __name__ == "__main__":
    unittest.main(verbosity=2)
