"""The TLS terminator end to end: acceptance tests of the terminator issue.

Every client here is a real one (curl, Python urllib and requests, Node's
fetch, openssl s_client, raw Python ssl) started through scripts/atlasgate-run
with no credentials and no proxy setting; it dials the stand-in's address as if
it were Atlas, the kernel redirects it into the daemon, and the daemon injects
the service-account token.

Name resolution: agents that take a host name (urllib, requests, Node,
http.client) resolve cloud.mongodb.com through /etc/hosts, which each such
agent gets in a private mount namespace (`unshare --mount` + a bind mount of a
per-Env hosts file), so the machine's /etc/hosts is never touched.

CA trust, as verified by test_node_fetch_lists_projects: curl reads
CURL_CA_BUNDLE, Python's ssl (urllib, http.client) SSL_CERT_FILE, requests
REQUESTS_CA_BUNDLE -- all the trust bundle. Node 20's global fetch (undici)
does NOT read SSL_CERT_FILE; it trusts atlasgate's CA because Node reads
NODE_EXTRA_CA_CERTS (the CA certificate alone) once at start-up, and that
store applies to fetch as well as to https.request. Without that variable
fetch fails certificate verification.
"""

import base64
import http.client
import json
import os
import re
import ssl
import subprocess
import time
import unittest

from harness import (ACCEPT_V2, CLIENT_ID, CLIENT_SECRET, HOST, PROJECT_ID, SYSTEM_PYTHON, Env,
                     PrivilegedTestCase)

AGENT_TOKEN = "agent-own-token"
GROUPS = "/api/atlas/v2/groups"
CLUSTERS = f"/api/atlas/v2/groups/{PROJECT_ID}/clusters"
BASIC = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
ERROR_KEYS = {"error", "errorCode", "reason", "detail", "parameters"}


# --- helpers ---------------------------------------------------------------

def last_request_id(env):
    reqs = env.fake.requests()
    return reqs[-1]["id"] if reqs else 0


def requests_since(env, since):
    return [r for r in env.fake.requests() if r["id"] > since]


def header_values(rec, name):
    return [v for k, v in rec["headers"] if k.lower() == name]


def counters(env):
    return env.status()["counters"]


def split_status_body(stdout):
    """Agents print the status on the first line and the body after it."""
    first, _, body = stdout.partition("\n")
    try:
        return int(first.strip()), body
    except ValueError:
        return 0, stdout


def parse_http_responses(data):
    """Splits raw HTTP/1.1 bytes (Content-Length framed) into (status, headers, body)."""
    out = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            raise AssertionError(f"truncated response head: {data[:200]!r}")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for l in lines[1:]:
            k, _, v = l.partition(":")
            headers[k.strip().lower()] = v.strip()
        n = int(headers["content-length"])
        if len(rest) < n:
            raise AssertionError(f"truncated response body ({len(rest)} of {n} bytes)")
        out.append((status, headers, rest[:n]))
        data = rest[n:]
    return out


def process_cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def openssl(*args, input=None):
    return subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=30, input=input)


def first_pem(text):
    m = re.search(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n", text, re.S)
    if not m:
        raise AssertionError(f"no certificate in:\n{text}")
    return m.group(0)


def http_request(path, close=True, extra=""):
    return (f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nAccept: {ACCEPT_V2}\r\n{extra}"
            f"{'Connection: close' if close else 'Connection: keep-alive'}\r\n\r\n")


def direct_to_stand_in(env, method, path, headers=None, body=None):
    """A request from this process (in no agent cgroup) straight to the stand-in."""
    ctx = ssl.create_default_context(cafile=os.path.join(env.pki, "upstream-ca.pem"))
    ctx.check_hostname = False  # dialled by address; the certificate is for HOST
    conn = http.client.HTTPSConnection(env.fake_addr, 443, context=ctx, timeout=10)
    try:
        conn.request(method, path, body=body, headers={"Host": HOST, **(headers or {})})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def stand_in_token(env):
    """A token issued by the stand-in to this process (for direct comparisons)."""
    status, _, body = direct_to_stand_in(
        env, "POST", "/api/oauth/token", body="grant_type=client_credentials",
        headers={"Authorization": f"Basic {BASIC}", "Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200, body
    return json.loads(body)["access_token"]


class SecretHygiene:
    """Assertions shared by the test classes."""

    def assert_no_secrets(self, env, *tokens):
        audit_text = ""
        if os.path.exists(env.audit_path):
            with open(env.audit_path) as f:
                audit_text = f.read()
        log = env.daemon_output()
        for what, text in (("audit log", audit_text), ("daemon log", log)):
            self.assertNotIn(CLIENT_SECRET, text, f"client secret in the {what}")
            self.assertNotIn(BASIC, text, f"Basic client credentials in the {what}")
            for t in tokens:
                self.assertNotIn(t, text, f"bearer token in the {what}")

    def assert_atlas_error(self, body, status, code):
        doc = json.loads(body)
        self.assertTrue(ERROR_KEYS <= set(doc), doc)
        self.assertEqual(doc["error"], status, doc)
        self.assertEqual(doc["errorCode"], code, doc)
        self.assertIsInstance(doc["parameters"], list, doc)
        self.assertTrue(doc["reason"] and doc["detail"], doc)
        return doc


# --- one daemon for everything with the default config ---------------------

class TerminatorTest(PrivilegedTestCase, SecretHygiene):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.env = Env()
        try:
            cls.env.start_daemon()
        except BaseException:
            cls.env.close()
            raise
        cls.ca = os.path.join(cls.env.state_dir, "ca.pem")

    @classmethod
    def tearDownClass(cls):
        cls.env.close()

    # 1 + 2: four clients list projects; the credential is injected, the
    # agent's own Authorization dropped, nothing secret is logged.

    def check_listing(self, name, argv, parse=split_status_body):
        env = self.env
        since = last_request_id(env)
        audit_before = len(env.audit())
        p = env.run_agent(argv, name=name)
        self.assertEqual(p.returncode, 0, f"{p.stdout}\n{p.stderr}")
        status, body = parse(p.stdout)
        self.assertEqual(status, 200, f"{p.stdout}\n{p.stderr}")
        self.assertIn("demo", [g["name"] for g in json.loads(body)["results"]])

        api = [r for r in requests_since(env, since) if r["kind"] == "api"]
        self.assertEqual(len(api), 1, api)
        rec = api[0]
        self.assertEqual(rec["path"], GROUPS)
        self.assertEqual(rec["header_map"].get("accept"), ACCEPT_V2)
        # The stand-in accepted the bearer token as one it issued itself.
        self.assertEqual(rec["auth"], "bearer:ok")
        auths = header_values(rec, "authorization")
        self.assertEqual(len(auths), 1, auths)
        self.assertTrue(auths[0].startswith("Bearer "), auths)
        token = auths[0][len("Bearer "):]
        self.assertGreater(len(token), 16)
        self.assertNotIn(AGENT_TOKEN, json.dumps(rec["headers"]), "the agent's own Authorization reached Atlas")

        recs = env.audit()[audit_before:]
        self.assertEqual(len(recs), 1, recs)
        self.assertEqual(recs[0]["agent"], name)
        self.assertEqual(recs[0]["status"], 200)
        self.assertEqual(recs[0]["credential"], f"service_account:{CLIENT_ID}")
        self.assert_no_secrets(env, token)
        return token

    def test_curl_lists_projects(self):
        env = self.env
        argv = env.curl_args(GROUPS, extra=["-H", f"Authorization: Bearer {AGENT_TOKEN}"])

        def parse(stdout):  # curl_args prints the body, then the status
            body, _, code = stdout.rpartition("\n")
            return int(code), body
        self.check_listing("curl-agent", argv, parse)

    def test_python_urllib_lists_projects(self):
        code = (
            "import urllib.request\n"
            f"req = urllib.request.Request('https://{HOST}{GROUPS}', headers={{'Accept': '{ACCEPT_V2}',"
            f" 'Authorization': 'Bearer {AGENT_TOKEN}'}})\n"
            "with urllib.request.urlopen(req, timeout=20) as r:\n"
            "    print(r.status); print(r.read().decode())\n")
        self.check_listing("urllib-agent", self.env.with_hosts([SYSTEM_PYTHON, "-c", code]))

    def test_python_requests_lists_projects(self):
        code = (
            "import requests\n"
            f"r = requests.get('https://{HOST}{GROUPS}', headers={{'Accept': '{ACCEPT_V2}',"
            f" 'Authorization': 'Bearer {AGENT_TOKEN}'}}, timeout=20)\n"
            "print(r.status_code); print(r.text)\n")
        self.check_listing("requests-agent", self.env.with_hosts([SYSTEM_PYTHON, "-c", code]))

    def test_node_fetch_lists_projects(self):
        env = self.env
        code = (
            f"fetch('https://{HOST}{GROUPS}', {{headers: {{Accept: '{ACCEPT_V2}',"
            f" Authorization: 'Bearer {AGENT_TOKEN}'}}}})"
            ".then(async r => { console.log(r.status); console.log(await r.text()); })"
            ".catch(e => { console.log('ERR ' + (e.cause ? e.cause.code : e)); process.exit(3); });")
        self.check_listing("node-agent", env.with_hosts(["node", "-e", code]))
        # What makes Node trust atlasgate: NODE_EXTRA_CA_CERTS, not SSL_CERT_FILE.
        p = env.run_agent(env.with_hosts(["env", "-u", "NODE_EXTRA_CA_CERTS", "node", "-e", code]),
                          name="node-no-ca")
        self.assertEqual(p.returncode, 3, p.stdout + p.stderr)
        self.assertRegex(p.stdout, r"ERR (UNABLE_TO_VERIFY_LEAF_SIGNATURE|SELF_SIGNED_CERT_IN_CHAIN|"
                                   r"UNABLE_TO_GET_ISSUER_CERT_LOCALLY)")

    # 5: SNI.

    def test_unknown_sni_is_refused(self):
        env = self.env
        before = counters(env)
        redirected = env.status()["bpf"]["redirected4"]
        since = last_request_id(env)
        audit_before = len(env.audit())
        fake_conns = env.fake.stats()["connections"]
        p = env.run_agent(["curl", "-sS", "--max-time", "10", "--resolve", f"other.example.com:443:{env.fake_addr}",
                           "-H", f"Accept: {ACCEPT_V2}", f"https://other.example.com{GROUPS}"], name="sni-agent")
        self.assertEqual(p.returncode, 35, p.stderr)  # curl: TLS handshake failed
        self.assertIn("unrecognized name", p.stderr)
        # The stand-in counts connections, its own /__fake/stats one included.
        self.assertEqual(env.fake.stats()["connections"], fake_conns + 1, "the stand-in saw a connection")
        after = counters(env)
        self.assertEqual(after["tls_refused_unknown_sni"], before["tls_refused_unknown_sni"] + 1)
        self.assertGreater(env.status()["bpf"]["redirected4"], redirected)  # it did go to atlasgate
        self.assertEqual(requests_since(env, since), [])
        self.assertEqual(len(env.audit()), audit_before)

    def test_missing_sni_gets_default_target_leaf(self):
        env = self.env
        before = counters(env)
        p = env.run_agent(["openssl", "s_client", "-connect", f"{env.fake_addr}:443", "-noservername",
                           "-showcerts", "-CAfile", self.ca, "-ign_eof"],
                          name="nosni-agent", input=http_request(GROUPS), timeout=30)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        leaf = first_pem(p.stdout)
        x = openssl("x509", "-noout", "-subject", "-ext", "subjectAltName", input=leaf)
        self.assertIn("DNS:cloud.mongodb.com", x.stdout, x.stdout + x.stderr)
        self.assertIn("Verify return code: 0 (ok)", p.stdout)
        self.assertIn("HTTP/1.1 200", p.stdout)
        self.assertRegex(p.stdout, r'"name":\s*"demo"')
        after = counters(env)
        self.assertEqual(after["tls_refused_missing_sni"], before["tls_refused_missing_sni"])

    # 8: the CA is name-constrained; key and bundle file modes.

    def test_ca_cannot_sign_for_another_host(self):
        env = self.env
        key = os.path.join(env.state_dir, "ca.key")
        self.assertEqual(os.stat(key).st_mode & 0o777, 0o600)
        self.assertEqual(os.stat(self.ca).st_mode & 0o777, 0o644)
        self.assertEqual(os.stat(env.trust_bundle()).st_mode & 0o777, 0o644)

        work = os.path.join(env.tmp, "ca-test")
        os.makedirs(work, exist_ok=True)

        def sign(host):
            k, csr, crt, ext = (os.path.join(work, f"{host}.{s}") for s in ("key", "csr", "pem", "ext"))
            with open(ext, "w") as f:
                f.write(f"basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                        f"extendedKeyUsage=serverAuth\nsubjectAltName=DNS:{host}\n")
            r = openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                        "-keyout", k, "-subj", f"/CN={host}", "-out", csr)
            self.assertEqual(r.returncode, 0, r.stderr)
            r = openssl("x509", "-req", "-in", csr, "-CA", self.ca, "-CAkey", key, "-set_serial", "4242",
                        "-days", "1", "-extfile", ext, "-out", crt)
            self.assertEqual(r.returncode, 0, r.stderr)
            return crt

        evil = openssl("verify", "-CAfile", self.ca, sign("evil.example.com"))
        self.assertNotEqual(evil.returncode, 0, evil.stdout)
        self.assertIn("permitted subtree violation", evil.stdout + evil.stderr)
        # Control: the same key and procedure for the configured host verifies,
        # so the failure above is the name constraint and nothing else.
        ok = openssl("verify", "-CAfile", self.ca, "-verify_hostname", HOST, sign(HOST))
        self.assertEqual(ok.returncode, 0, ok.stdout + ok.stderr)

        # The daemon's own leaf, as an agent receives it.
        p = env.run_agent(["openssl", "s_client", "-connect", f"{env.fake_addr}:443", "-servername", HOST,
                           "-showcerts"], name="leaf-agent", input="", timeout=30)
        leaf = os.path.join(work, "leaf.pem")
        with open(leaf, "w") as f:
            f.write(first_pem(p.stdout))
        good = openssl("verify", "-CAfile", self.ca, "-verify_hostname", HOST, leaf)
        self.assertEqual(good.returncode, 0, good.stdout + good.stderr)
        self.assertIn(": OK", good.stdout)
        wrong = openssl("verify", "-CAfile", self.ca, "-verify_hostname", "evil.example.com", leaf)
        self.assertNotEqual(wrong.returncode, 0, wrong.stdout)

    # 9: ALPN.

    def test_alpn_h2_only_falls_back_to_http11(self):
        env = self.env
        base = ["openssl", "s_client", "-connect", f"{env.fake_addr}:443", "-servername", HOST,
                "-CAfile", self.ca, "-ign_eof"]
        p = env.run_agent(base + ["-alpn", "h2"], name="alpn-agent", input=http_request(GROUPS), timeout=30)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn("No ALPN negotiated", p.stdout)
        self.assertIn("Verify return code: 0 (ok)", p.stdout)
        self.assertIn("HTTP/1.1 200", p.stdout)
        p = env.run_agent(base + ["-alpn", "h2,http/1.1"], name="alpn-agent", input=http_request(GROUPS), timeout=30)
        self.assertIn("ALPN protocol: http/1.1", p.stdout)
        self.assertIn("HTTP/1.1 200", p.stdout)
        # curl --http2 offers h2 and http/1.1 and ends up speaking HTTP/1.1.
        p = env.run_agent(env.curl_args(GROUPS, extra=["--http2", "-v", "-w", "\n%{http_version} %{http_code}"]),
                          name="h2-curl")
        self.assertIn("offers h2", p.stderr)
        self.assertTrue(p.stdout.endswith("\n1.1 200"), p.stdout[-200:] + p.stderr)
        self.assertIn('"demo"', p.stdout)

    # 10: keep-alive, pipelining, streaming, request bodies.

    def test_keep_alive_three_requests_on_one_connection(self):
        env = self.env
        accepted = counters(env)["accepted"]
        audit_before = len(env.audit())
        urls = [f"https://{HOST}{GROUPS}", f"https://{HOST}{GROUPS}/{PROJECT_ID}", f"https://{HOST}{CLUSTERS}"]
        p = env.run_agent(["curl", "-sS", "--max-time", "20", "--resolve", f"{HOST}:443:{env.fake_addr}",
                           "-H", f"Accept: {ACCEPT_V2}", "-o", "/dev/null", "-o", "/dev/null", "-o", "/dev/null",
                           "-w", "%{http_code} %{num_connects}\n", *urls], name="ka-agent")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(p.stdout.split("\n")[:3], ["200 1", "200 0", "200 0"], p.stdout)
        self.assertEqual(counters(env)["accepted"], accepted + 1)
        recs = env.audit()[audit_before:]
        self.assertEqual([r["status"] for r in recs], [200, 200, 200])
        self.assertEqual(len({r["pid"] for r in recs}), 1)

    def test_pipelined_requests_answered_in_order(self):
        env = self.env
        accepted = counters(env)["accepted"]
        since = last_request_id(env)
        paths = [GROUPS, f"{GROUPS}/{PROJECT_ID}", "/api/atlas/v2/orgs"]
        # The agent's own credentials, in every spelling, must all be dropped.
        own = (f"Authorization: Bearer {AGENT_TOKEN}\r\nauthorization: Basic YWdlbnQ6b3du\r\n"
               f"Proxy-Authorization: Bearer {AGENT_TOKEN}\r\n")
        wire = "".join(http_request(p, close=(i == len(paths) - 1), extra=own) for i, p in enumerate(paths))
        code = (
            "import base64, socket, ssl, sys\n"
            f"s = ssl.create_default_context().wrap_socket(socket.create_connection(('{env.fake_addr}', 443),"
            f" timeout=20), server_hostname='{HOST}')\n"
            f"s.sendall({wire.encode()!r})\n"
            "data = b''\n"
            "while True:\n"
            "    try:\n"
            "        b = s.recv(65536)\n"
            "    except ssl.SSLEOFError:\n"
            "        break\n"
            "    if not b:\n"
            "        break\n"
            "    data += b\n"
            "print(base64.b64encode(data).decode())\n")  # stdout is read as text: keep the CRLFs
        p = env.run_agent([SYSTEM_PYTHON, "-c", code], name="pipe-agent")
        self.assertEqual(p.returncode, 0, p.stderr)
        responses = parse_http_responses(base64.b64decode(p.stdout))
        self.assertEqual([s for s, _, _ in responses], [200, 200, 200], p.stdout)
        bodies = [json.loads(b) for _, _, b in responses]
        self.assertIn("demo", [g["name"] for g in bodies[0]["results"]])
        self.assertEqual(bodies[1]["id"], PROJECT_ID)
        self.assertEqual(bodies[2]["results"][0]["name"], "Fake Org")
        self.assertEqual(counters(env)["accepted"], accepted + 1)
        api = [r for r in requests_since(env, since) if r["kind"] == "api"]
        self.assertEqual([r["path"] for r in api], paths)
        for r in api:
            self.assertEqual(r["auth"], "bearer:ok")
            self.assertEqual(len(header_values(r, "authorization")), 1, r["headers"])
            self.assertNotIn("proxy-authorization", r["header_map"])
            self.assertNotIn(AGENT_TOKEN, json.dumps(r["headers"]))
            self.assertNotIn("YWdlbnQ6b3du", json.dumps(r["headers"]))

    def test_streamed_large_list_over_keep_alive(self):
        env = self.env
        n = 30
        accepted = counters(env)["accepted"]
        code = (
            "import http.client, json, ssl\n"
            f"h = {{'Accept': '{ACCEPT_V2}', 'Content-Type': 'application/json'}}\n"
            f"c = http.client.HTTPSConnection('{HOST}', 443, context=ssl.create_default_context(), timeout=20)\n"
            "created = []\n"
            f"for i in range({n}):\n"
            f"    c.request('POST', '{CLUSTERS}', body=json.dumps({{'name': 'stream-%02d' % i,"
            " 'clusterType': 'REPLICASET'}), headers=h)\n"
            "    r = c.getresponse(); r.read(); created.append(r.status)\n"
            f"c.request('GET', '{CLUSTERS}?itemsPerPage=500', headers=h)\n"
            "r = c.getresponse()\n"
            "pieces = []\n"
            "while True:\n"
            "    b = r.read(700)\n"
            "    if not b: break\n"
            "    pieces.append(b)\n"
            "print(json.dumps({'created': created, 'status': r.status, 'pieces': len(pieces),"
            " 'length': r.getheader('content-length'), 'te': r.getheader('transfer-encoding'),"
            " 'body': b''.join(pieces).decode()}))\n")
        p = env.run_agent(env.with_hosts([SYSTEM_PYTHON, "-c", code]), name="stream-agent")
        self.assertEqual(p.returncode, 0, p.stderr)
        out = json.loads(p.stdout)
        self.assertEqual(out["created"], [201] * n)
        self.assertEqual(out["status"], 200)
        body = out["body"]
        self.assertGreater(len(body), 32 * 1024)  # two of the daemon's 16 KiB relay buffers and more
        if out["te"] is None:
            self.assertEqual(int(out["length"]), len(body.encode()))
        doc = json.loads(body)
        names = {c["name"] for c in doc["results"]}
        self.assertTrue({f"stream-{i:02d}" for i in range(n)} <= names, names)
        self.assertEqual(doc["totalCount"], len(doc["results"]))
        self.assertEqual(counters(env)["accepted"], accepted + 1)  # all on one agent connection

    def test_post_json_body_reaches_atlas_byte_for_byte(self):
        env = self.env
        since = last_request_id(env)
        body = '{"name":"c1","clusterType":"REPLICASET"}'
        path = os.path.join(env.tmp, "post-body.json")
        with open(path, "w") as f:
            f.write(body)
        status, out, p = env.curl(CLUSTERS, method="POST", name="post-agent",
                                  extra=["-H", "Content-Type: application/json", "--data-binary", f"@{path}"])
        self.assertEqual(status, 201, out + p.stderr)
        self.assertEqual(json.loads(out)["name"], "c1")
        api = [r for r in requests_since(env, since) if r["kind"] == "api"]
        self.assertEqual(len(api), 1)
        self.assertEqual(api[0]["method"], "POST")
        self.assertEqual(api[0]["path"], CLUSTERS)
        self.assertEqual(api[0]["body"], body)
        self.assertEqual(api[0]["body_len"], len(body.encode()))
        self.assertEqual(api[0]["header_map"].get("content-type"), "application/json")

        # A chunked request body with odd whitespace and UTF-8 arrives intact.
        since = last_request_id(env)
        body2 = '{ "name" : "c2",\n  "clusterType":"REPLICASET",\t"labels":[{"key":"owner","value":"zo\u00eb \u2713"}] }'
        raw = body2.encode()
        code = (
            "import http.client, ssl\n"
            f"raw = {raw!r}\n"
            f"c = http.client.HTTPSConnection('{HOST}', 443, context=ssl.create_default_context(), timeout=20)\n"
            f"c.request('POST', '{CLUSTERS}', body=iter([raw[:7], raw[7:30], raw[30:]]), encode_chunked=True,"
            f" headers={{'Accept': '{ACCEPT_V2}', 'Content-Type': 'application/json',"
            " 'Transfer-Encoding': 'chunked'})\n"
            "r = c.getresponse(); print(r.status); print(r.read().decode())\n")
        p = env.run_agent(env.with_hosts([SYSTEM_PYTHON, "-c", code]), name="chunked-agent")
        status, out = split_status_body(p.stdout)
        self.assertEqual(status, 201, p.stdout + p.stderr)
        api = [r for r in requests_since(env, since) if r["kind"] == "api"]
        self.assertEqual(len(api), 1)
        self.assertEqual(api[0]["body"], body2)
        self.assertEqual(api[0]["body_len"], len(raw))

    # 11: Atlas errors pass through untouched.

    def test_upstream_404_is_relayed_unchanged(self):
        env = self.env
        missing = f"{GROUPS}/5f00000000000000000000ff"
        hdrs = os.path.join(env.tmp, "404-headers.txt")
        status, body, p = env.curl(missing, name="404-agent", extra=["-D", hdrs])
        self.assertEqual(status, 404, body + p.stderr)
        doc = self.assert_atlas_error(body, 404, "GROUP_NOT_FOUND")
        self.assertIn("5f00000000000000000000ff", doc["parameters"])
        with open(hdrs) as f:
            relayed = {k.strip().lower(): v.strip() for k, _, v in
                       (l.partition(":") for l in f.read().splitlines()[1:] if ":" in l)}
        self.assertIn("x-fake-atlas-request-id", relayed)  # Atlas' response, not one atlasgate made up
        self.assertNotEqual(relayed.get("server"), "atlasgate")
        self.assertNotIn("x-should-retry", relayed)
        # Byte for byte what Atlas answers when asked directly.
        d_status, d_headers, d_body = direct_to_stand_in(
            env, "GET", missing, headers={"Accept": ACCEPT_V2, "Authorization": f"Bearer {stand_in_token(env)}"})
        self.assertEqual(d_status, 404)
        self.assertEqual(body.encode(), d_body)
        self.assertEqual(relayed.get("content-type"), d_headers.get("content-type"))
        self.assertEqual(relayed.get("content-length"), d_headers.get("content-length"))


# --- dedicated daemons -----------------------------------------------------

class TokenRefreshTest(PrivilegedTestCase, SecretHygiene):
    """3: a token that expires mid-run is replaced without a failed request."""

    def test_short_lived_tokens_are_refreshed_without_failures(self):
        with Env(fake_extra=["--token-ttl", "4"]) as env:
            env.start_daemon()
            code = (
                "import json, requests, time\n"
                "s = requests.Session()\n"
                "out = []\n"
                "t0 = time.monotonic()\n"
                "while time.monotonic() - t0 < 8.5:\n"
                f"    r = s.get('https://{HOST}{GROUPS}', headers={{'Accept': '{ACCEPT_V2}'}}, timeout=10)\n"
                "    out.append([r.status_code, 'demo' in r.text])\n"
                "    time.sleep(0.5)\n"
                "print(json.dumps(out))\n")
            p = env.run_agent(env.with_hosts([SYSTEM_PYTHON, "-c", code]), name="ttl-agent", timeout=60)
            self.assertEqual(p.returncode, 0, p.stderr)
            results = json.loads(p.stdout)
            self.assertGreaterEqual(len(results), 12)
            self.assertEqual(results, [[200, True]] * len(results))
            issued = env.fake.stats()["token_successes"]
            self.assertGreaterEqual(issued, 2)
            # A cache, not a token per request: ~3 lifetimes of 4 s fit in the run.
            self.assertLessEqual(issued, 8, f"{issued} tokens for {len(results)} requests")
            api = env.fake.api_requests()
            self.assertEqual({r["auth"] for r in api}, {"bearer:ok"})
            tokens = {header_values(r, "authorization")[0] for r in api}
            self.assertGreaterEqual(len(tokens), 2, "the refreshed token was never used")
            self.assert_no_secrets(env, *(t[len("Bearer "):] for t in tokens))


class TokenSingleFlightTest(PrivilegedTestCase):
    """4: 50 concurrent requests on a fresh daemon cause one token request."""

    def test_fifty_concurrent_requests_one_token_request(self):
        n = 50
        with Env() as env:
            env.start_daemon()
            # The token endpoint answers slowly, so every request arrives while
            # the first fetch is still in flight.
            env.fake.faults({"token_delay_ms": 1500})
            code = (
                "import json, ssl, threading, time, urllib.request\n"
                f"n = {n}\n"
                "ctx = ssl.create_default_context()\n"
                "barrier = threading.Barrier(n)\n"
                "out = [None] * n\n"
                "def one(i):\n"
                f"    req = urllib.request.Request('https://{HOST}{GROUPS}', headers={{'Accept': '{ACCEPT_V2}'}})\n"
                "    barrier.wait()\n"
                "    t0 = time.monotonic()\n"
                "    try:\n"
                "        with urllib.request.urlopen(req, context=ctx, timeout=30) as r:\n"
                "            out[i] = [r.status, 'demo' in r.read().decode(), t0, time.monotonic()]\n"
                "    except Exception as e:\n"
                "        out[i] = [repr(e), False, t0, time.monotonic()]\n"
                "ts = [threading.Thread(target=one, args=(i,)) for i in range(n)]\n"
                "[t.start() for t in ts]; [t.join() for t in ts]\n"
                "print(json.dumps(out))\n")
            p = env.run_agent(env.with_hosts([SYSTEM_PYTHON, "-c", code]), name="swarm", timeout=90)
            self.assertEqual(p.returncode, 0, p.stderr)
            out = json.loads(p.stdout)
            self.assertEqual([o[:2] for o in out], [[200, True]] * n, out)
            # They really were concurrent: every request started before the first one ended.
            self.assertLess(max(o[2] for o in out), min(o[3] for o in out))
            stats = env.fake.stats()
            self.assertEqual(stats["token_requests"], 1, stats)
            self.assertEqual(stats["token_successes"], 1, stats)
            api = env.fake.api_requests()
            self.assertEqual(len(api), n)
            self.assertEqual({r["auth"] for r in api}, {"bearer:ok"})
            self.assertEqual(len({header_values(r, "authorization")[0] for r in api}), 1)
            self.assertEqual(env.status()["counters"]["accepted"], n)  # n agent connections

    def test_waiting_for_a_token_does_not_spin(self):
        # Requests queued behind an in-flight token fetch wait; they must not
        # keep the daemon's event loop busy while they do.
        delay_s = 2.0
        with Env() as env:
            env.start_daemon()
            env.fake.faults({"token_delay_ms": int(delay_s * 1000)})
            code = (
                "import ssl, threading, urllib.request\n"
                "def one():\n"
                f"    req = urllib.request.Request('https://{HOST}{GROUPS}', headers={{'Accept': '{ACCEPT_V2}'}})\n"
                "    urllib.request.urlopen(req, context=ssl.create_default_context(), timeout=30).read()\n"
                "ts = [threading.Thread(target=one) for _ in range(5)]\n"
                "[t.start() for t in ts]; [t.join() for t in ts]\n"
                "print('ok')\n")
            cpu_before = process_cpu_seconds(env.daemon.pid)
            p = env.run_agent(env.with_hosts([SYSTEM_PYTHON, "-c", code]), name="waiters", timeout=60)
            cpu = process_cpu_seconds(env.daemon.pid) - cpu_before
            self.assertEqual(p.stdout.strip(), "ok", p.stderr)
            self.assertEqual(env.fake.stats()["token_requests"], 1)
            self.assertLess(cpu, delay_s / 4, f"the daemon used {cpu:.2f} s of CPU waiting {delay_s} s for a token")


class UpstreamUnavailableTest(PrivilegedTestCase, SecretHygiene):
    """6: Atlas unreachable -> 502 ATLASGATE_UPSTREAM_UNAVAILABLE, Atlas error shape."""

    def test_unreachable_atlas_gives_502_json(self):
        with Env() as env:
            env.start_daemon()
            status, body, p = env.curl(GROUPS, name="down-agent")
            self.assertEqual(status, 200, body + p.stderr)  # token obtained, upstream pooled
            env.fake.stop()
            t0 = time.monotonic()
            status, body, p = env.curl(GROUPS, name="down-agent", extra=["-D", "/dev/stderr"])
            self.assertLess(time.monotonic() - t0, 10)
            self.assertEqual(status, 502, body + p.stderr)
            self.assertRegex(p.stderr, r"(?im)^content-type: application/json")
            self.assert_atlas_error(body, 502, "ATLASGATE_UPSTREAM_UNAVAILABLE")
            rec = env.audit()[-1]
            self.assertEqual((rec["agent"], rec["status"]), ("down-agent", 502))
            self.assert_no_secrets(env)


class CredentialUnavailableTest(PrivilegedTestCase, SecretHygiene):
    """7: the token endpoint says 401 -> 503 ATLASGATE_CREDENTIAL_UNAVAILABLE, quickly."""

    def test_rejected_client_credentials_give_503_json(self):
        with Env() as env:
            env.start_daemon()
            env.fake.faults({"token_fail": {"count": 100, "status": 401, "body": {"error": "invalid_client"}}})
            t0 = time.monotonic()
            status, body, p = env.curl(GROUPS, name="nocred-agent", extra=["-D", "/dev/stderr"])
            elapsed = time.monotonic() - t0
            self.assertEqual(status, 503, body + p.stderr)
            self.assertLess(elapsed, 5)
            self.assertRegex(p.stderr, r"(?im)^content-type: application/json")
            self.assert_atlas_error(body, 503, "ATLASGATE_CREDENTIAL_UNAVAILABLE")
            self.assertNotIn(CLIENT_SECRET, body)
            self.assertNotIn(BASIC, body)
            stats = env.fake.stats()
            self.assertGreaterEqual(stats["token_failures"], 1, stats)
            self.assertEqual(stats["api_requests"], 0, "a request went to Atlas without a credential")
            self.assertEqual(env.audit()[-1]["status"], 503)
            self.assert_no_secrets(env)
            # Once the endpoint recovers, so does the daemon (after its back-off).
            env.fake.faults({"clear": True})
            deadline = time.monotonic() + 10
            while True:
                status, body, p = env.curl(GROUPS, name="nocred-agent")
                if status == 200 or time.monotonic() > deadline:
                    break
                time.sleep(0.3)
            self.assertEqual(status, 200, body)


if __name__ == "__main__":
    unittest.main(verbosity=2)
