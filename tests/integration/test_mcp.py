"""The official MongoDB MCP server (npm mongodb-mcp-server) through atlasgate.

The server, pinned in tests/mcp/package.json + package-lock.json, is driven by
tests/mcp/mcp_client.mjs (a small MCP stdio client) run as an agent through
scripts/atlasgate-run. The server is configured as an agent would be: a dummy
service account (MDB_MCP_API_CLIENT_ID/SECRET), telemetry off, the default
API base URL https://cloud.mongodb.com/. It runs the OAuth client-credentials
flow itself; atlasgate answers it locally with a phantom token and swaps that
for its own real token on each API call, so the stand-in sees only the
daemon's token request and real bearer tokens.

Install: setUpClass runs `npm ci --no-audit --no-fund --ignore-scripts --prefix
tests/mcp` when the server is not installed yet (node_modules lives in
tests/mcp/node_modules, ~410 MB, ~35 s). --ignore-scripts: the packages with
install scripts are optional native add-ons (kerberos, os-dns-native,
cpu-features, ...) or download helpers (ext-apps' setup-bun) that the Atlas
tools do not need and that would try the network. If the install fails
(registry unreachable) the tests are skipped, or fail under
ATLASGATE_REQUIRE_PRIVILEGED=1.

Name resolution: the agent resolves cloud.mongodb.com through /etc/hosts, which
it gets in a private mount namespace (unshare --mount + a bind mount of a
per-Env hosts file, mapping the name to the stand-in's address), as in
test_terminator.py; the machine's /etc/hosts is never touched. `exec` keeps
the MCP client's pid, so the kernel reports comm "node".
"""

import base64
import json
import os
import shutil
import subprocess
import sys
import time
import unittest

from harness import HOST, PROJECT_ID, REPO, Env, PrivilegedTestCase

MCP_DIR = os.path.join(REPO, "tests", "mcp")
MCP_CLIENT = os.path.join(MCP_DIR, "mcp_client.mjs")
SERVER_PKG = os.path.join(MCP_DIR, "node_modules", "mongodb-mcp-server", "package.json")
PHANTOM_PREFIX = "agp_"
# What mcp_client.mjs gives the MCP server (its defaults).
DUMMY_CLIENT_ID = "mdb_sa_id_000000000000000000000000"
DUMMY_CLIENT_SECRET = "mdb_sa_sk_dummy"
AGENT = "mcp"


def server_installed():
    """The pinned packages are installed (the MCP server, the npm Atlas API
    client test_capture.py drives, mongosh for test_mongodb.py)."""
    return os.path.exists(SERVER_PKG) and os.path.exists(
        os.path.join(MCP_DIR, "node_modules", ".bin", "mongodb-mcp-server")) and os.path.exists(
        os.path.join(MCP_DIR, "node_modules", "mongodb-atlas-api-client", "package.json")) and os.path.exists(
        os.path.join(MCP_DIR, "node_modules", ".bin", "mongosh"))


def unavailable(reason):
    if os.environ.get("ATLASGATE_REQUIRE_PRIVILEGED") == "1":
        raise AssertionError(f"MCP server test cannot run: {reason} (ATLASGATE_REQUIRE_PRIVILEGED=1)")
    print(f"SKIP: {reason}", file=sys.stderr)
    raise unittest.SkipTest(reason)


def ensure_server_installed():
    """npm ci into tests/mcp/node_modules unless the pinned server is there."""
    if server_installed():
        return
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            unavailable(f"{tool} is not installed")
    started = time.monotonic()
    try:
        p = subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--ignore-scripts", "--prefix", MCP_DIR],
                           capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        unavailable("`npm ci --prefix tests/mcp` took more than 600 s (is the npm registry reachable?)")
    if p.returncode != 0 or not server_installed():
        lines = (p.stdout + p.stderr).strip().splitlines()
        errors = [l for l in lines if l.startswith("npm error") and not l.startswith("npm error     at ")]
        excerpt = "\n".join((errors or lines)[:12])
        unavailable(f"`npm ci --no-audit --no-fund --ignore-scripts --prefix {MCP_DIR}` failed (exit {p.returncode}); "
                    f"is the npm registry reachable?\n{excerpt}")
    print(f"installed mongodb-mcp-server into {MCP_DIR}/node_modules in {time.monotonic() - started:.0f} s",
          file=sys.stderr)


class McpServerTest(PrivilegedTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        ensure_server_installed()
        cls.env = Env()
        try:
            cls.env.start_daemon()
            cls.proc = cls.env.run_agent(cls.env.with_hosts(["node", MCP_CLIENT, "--project-id", PROJECT_ID]),
                                         name=AGENT, timeout=120)
            cls.requests = cls.env.fake.requests()
            cls.stats = cls.env.fake.stats()
            cls.records = cls.env.audit()
            cls.counters = cls.env.status()["counters"]
        except BaseException:
            cls.env.close()
            raise
        try:
            cls.summary = json.loads(cls.proc.stdout)
        except ValueError:
            cls.summary = None

    @classmethod
    def tearDownClass(cls):
        cls.env.close()

    def context(self):
        """What to show when an assertion fails."""
        try:
            with open(self.env.fake.log.name) as f:
                fake_log = f.read()[-4000:]
        except OSError:
            fake_log = ""
        return (f"\n--- mcp client exit {self.proc.returncode}\n--- stdout:\n{self.proc.stdout[-6000:]}"
                f"\n--- stderr:\n{self.proc.stderr[-6000:]}\n--- stand-in log (tail):\n{fake_log}"
                f"\n--- daemon log (tail):\n{self.env.daemon_output()[-4000:]}")

    def call(self, tool):
        self.assertIsNotNone(self.summary, self.context())
        res = self.summary["calls"].get(tool)
        self.assertIsNotNone(res, f"{tool} was not called" + self.context())
        self.assertFalse(res["isError"], f"{tool} failed" + self.context())
        return res

    def test_client_succeeds(self):
        self.assertEqual(self.proc.returncode, 0, self.context())
        self.assertIsNotNone(self.summary, self.context())
        self.assertTrue(self.summary["ok"], self.context())
        self.assertEqual(self.summary["errors"], [], self.context())
        self.assertEqual(self.summary["server"]["name"], "MongoDB MCP Server", self.context())

    def test_trust_comes_from_ssl_cert_file(self):
        # The launcher sets both; the MCP server's fetch (devtools-proxy-support,
        # system-ca) trusts SSL_CERT_FILE, and ignores NODE_EXTRA_CA_CERTS.
        env = self.env
        p = env.run_agent(env.with_hosts(["env", "-u", "NODE_EXTRA_CA_CERTS", "node", MCP_CLIENT,
                                           "--tool", "atlas-list-projects"]), name="mcp-no-extra-ca", timeout=120)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr[-3000:])
        self.assertIn("demo", json.loads(p.stdout)["calls"]["atlas-list-projects"]["text"])
        p = env.run_agent(env.with_hosts(["env", "-u", "SSL_CERT_FILE", "node", MCP_CLIENT,
                                           "--tool", "atlas-list-projects"]), name="mcp-no-bundle", timeout=120)
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr[-3000:])
        res = json.loads(p.stdout)["calls"]["atlas-list-projects"]
        self.assertTrue(res["isError"], res)
        self.assertRegex(res["text"], r"self-signed certificate|unable to (verify|get local issuer)", res)

    def test_atlas_tools_are_listed(self):
        self.assertIsNotNone(self.summary, self.context())
        tools = set(self.summary["tools"])
        for t in ("atlas-list-projects", "atlas-list-clusters", "atlas-list-orgs", "atlas-inspect-cluster"):
            self.assertIn(t, tools, self.context())

    def test_list_projects_returns_demo(self):
        res = self.call("atlas-list-projects")
        self.assertIn("demo", res["text"])
        self.assertIn(PROJECT_ID, res["text"])
        projects = res["structuredContent"]["projects"]
        self.assertIn({"name": "demo", "id": PROJECT_ID}, [{"name": p["name"], "id": p.get("id")} for p in projects])

    def test_list_clusters_returns_cluster0(self):
        res = self.call("atlas-list-clusters")
        self.assertIn("Cluster0", res["text"])
        sc = res["structuredContent"]
        self.assertEqual(sc["projectId"], PROJECT_ID)
        self.assertEqual(sc["projectName"], "demo")
        self.assertIn("Cluster0", [c.get("name") for c in sc["clusters"]])

    def test_stand_in_never_saw_a_phantom_token(self):
        self.assertTrue(self.requests, "the stand-in saw no request" + self.context())
        for r in self.requests:
            for name, value in r["headers"]:
                self.assertNotIn(PHANTOM_PREFIX, value, f"phantom token leaked in {name} of {r['method']} {r['path']}")
            self.assertNotIn(PHANTOM_PREFIX, r.get("body") or "", f"phantom token leaked in {r['path']}")

    def test_dummy_credentials_never_reached_the_stand_in(self):
        basic_dummy = base64.b64encode(f"{DUMMY_CLIENT_ID}:{DUMMY_CLIENT_SECRET}".encode()).decode()
        for r in self.requests:
            blob = json.dumps([r["headers"], r["path"], r.get("body") or ""])
            for secret in (DUMMY_CLIENT_ID, DUMMY_CLIENT_SECRET, basic_dummy):
                self.assertNotIn(secret, blob, f"{r['method']} {r['path']}")

    def test_the_mcp_server_used_its_phantom_token(self):
        c = self.counters
        # One phantom issued (the server's start-up validation; cached after
        # that), never refused on an API call, revoked at shutdown.
        self.assertEqual(c["phantom_tokens_issued"], 1, c)
        self.assertEqual(c["phantom_tokens_refused"], 0, c)
        self.assertEqual(c["phantom_tokens_live"], 0, c)
        self.assertEqual(c["credential_failures"], 0, c)

    def test_api_calls_carry_the_daemons_real_token(self):
        api = [r for r in self.requests if r["path"].startswith("/api/atlas/")]
        paths = [r["path"].split("?")[0] for r in api]
        # atlas-list-projects, then atlas-list-clusters: the project, its clusters and flex clusters.
        for p in ("/api/atlas/v2/groups", f"/api/atlas/v2/groups/{PROJECT_ID}",
                  f"/api/atlas/v2/groups/{PROJECT_ID}/clusters", f"/api/atlas/v2/groups/{PROJECT_ID}/flexClusters"):
            self.assertIn(p, paths, self.context())
        for r in api:
            self.assertTrue(r["header_map"].get("authorization", "").startswith("Bearer "), r)
            self.assertEqual(r["auth"], "bearer:ok", r)  # a token the stand-in issued (to the daemon)
            self.assertEqual(r["header_map"].get("accept"), "application/vnd.atlas.2025-03-12+json", r)

    def test_only_the_daemon_asked_the_stand_in_for_a_token(self):
        self.assertEqual(self.stats["token_requests"], 1, self.stats)
        self.assertEqual(self.stats["token_successes"], 1, self.stats)
        token_reqs = [r for r in self.requests if r["kind"] == "token"]
        self.assertEqual(len(token_reqs), 1)
        # The daemon's real service account, not the MCP server's dummy one.
        self.assertEqual(token_reqs[0]["auth"], "basic:ok", token_reqs[0])
        # The server's revoke on shutdown was answered locally too.
        self.assertEqual(self.stats["revoke_requests"], 0, self.stats)

    def test_audit_shows_the_local_oauth_flow_and_the_api_calls(self):
        mine = [r for r in self.records if r.get("agent") == AGENT]
        self.assertTrue(mine, f"no audit record for agent {AGENT}: {self.records}" + self.context())
        token = [r for r in mine if r["method"] == "POST" and r["path"].split("?")[0] == "/api/oauth/token"]
        self.assertTrue(token, mine)
        for r in token:
            self.assertEqual(r["decision"], "local", r)
            self.assertEqual(r["status"], 200, r)
        self.assertEqual(len(token), 1, token)
        # The server revokes its token when its stdin closes: answered locally too.
        revoke = [r for r in mine if r["method"] == "POST" and r["path"].split("?")[0] == "/api/oauth/revoke"]
        self.assertEqual([(r["decision"], r["status"]) for r in revoke], [("local", 200)], revoke)
        api = [r for r in mine if r["path"].startswith("/api/atlas/")]
        self.assertGreaterEqual(len(api), 4, mine)
        for r in api:
            self.assertEqual(r["comm"], "node", r)
            self.assertEqual(r["host"], HOST, r)
            self.assertEqual(r["status"], 200, r)
            self.assertTrue(r["credential"].startswith("service_account:mdb_sa_id_"), r)
            # The daemon's service account, never the dummy one the MCP server was given.
            self.assertNotIn("000000000000000000000000", r["credential"], r)
        self.assertIn("/api/atlas/v2/groups", [r["path"].split("?")[0] for r in api])
        for r in mine:
            self.assertNotIn(PHANTOM_PREFIX, json.dumps(r), r)


if __name__ == "__main__":
    unittest.main()
