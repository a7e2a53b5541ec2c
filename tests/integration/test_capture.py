"""Credential capture: nothing the Atlas API mints reaches an agent.

Real clients (curl, Python requests, node with urllib and the npm
mongodb-atlas-api-client, the official MCP server) run as agents through
scripts/atlasgate-run and mint credentials through atlasgate at the stand-in
(tests/fake_atlas), which mints real, working ones and shows them at
/__fake/minted. Every test checks the two sides: what the agent received is a
phantom of the right shape, and what the stand-in saw is the real thing.

Agents named maker* have the target's configured credential; "thief" has
none, so it is challenged for a captured key and must present one of its own.
"""

import json
import os
import sys
import re
import signal
import subprocess
import time
import unittest

from harness import (CLIENT_ID, HOST, PROJECT_ID, Env, PrivilegedTestCase, wait_for)

ORG_ID = "4f0000000000000000000001"
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


class CaptureBase(PrivilegedTestCase):
    """One Env per class; the credential is limited to maker* agents."""

    env_kwargs = {"fake_extra": ["--auth", "any"]}  # minted API keys authenticate by Digest

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.env = Env(**cls.env_kwargs)
        t = cls.env.config["targets"][0]
        t["credentials"] = [{"name": "ops", "agents": ["maker*"],
                             "service_account": {"client_id": CLIENT_ID, "client_secret_file": cls.env.secret_file}}]
        cls.env.write_config()
        try:
            cls.env.start_daemon()
        except BaseException:
            cls.env.close()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.env.close()

    # --- helpers ---------------------------------------------------------------

    def minted(self):
        return self.env.fake._call("GET", "/__fake/minted")

    def call(self, path, method="GET", body=None, name="maker", extra=()):
        args = list(extra)
        if body is not None:
            args += ["-H", "Content-Type: application/json", "--data-binary", json.dumps(body)]
        status, text, p = self.env.curl(path, method, extra=args, name=name)
        try:
            doc = json.loads(text) if text.strip() else None
        except ValueError:
            doc = text
        return status, doc, text

    def digest(self, path, pub, secret, name="maker", method="GET"):
        return self.call(path, method, name=name, extra=["--digest", "-u", f"{pub}:{secret}"])

    def direct(self, path, extra):
        """curl straight to the stand-in, from outside any agent cgroup."""
        addr = self.env.fake_addr
        p = subprocess.run(["curl", "-sS", "--max-time", "10", "--cacert",
                            os.path.join(self.env.pki, "upstream-ca.pem"), "--resolve", f"{HOST}:443:{addr}",
                            "-H", "Accept: application/vnd.atlas.2025-03-12+json", "-o", "/dev/null", "-w",
                            "%{http_code}", *extra, f"https://{HOST}{path}"], capture_output=True, text=True,
                           timeout=20)
        return int(p.stdout or 0)

    def vault(self):
        p = self.env.cli("credentials", "--json")
        self.assertEqual(p.returncode, 0, p.stderr)
        return {e["name"]: e for e in json.loads(p.stdout)["credentials"]}

    def assert_never_shown(self, *secrets):
        """No real secret in the audit log, the daemon's log or `credentials`."""
        with open(self.env.audit_path) as f:
            audit = f.read()
        log = self.env.daemon_output()
        listing = self.env.cli("credentials").stdout + self.env.cli("credentials", "--json").stdout
        status = json.dumps(self.env.status())
        for s in secrets:
            for where, text in (("audit", audit), ("daemon log", log), ("credentials", listing),
                                ("status", status)):
                self.assertNotIn(s, text, f"a secret is in the {where}")

    def create_key(self, name="maker", org=ORG_ID):
        status, doc, text = self.call(f"/api/atlas/v2/orgs/{org}/apiKeys", "POST",
                                      {"desc": f"key of {name}", "roles": ["ORG_READ_ONLY"]}, name=name)
        self.assertEqual(status, 200, text)
        real = next(k for k in self.minted()["api_keys"] if k["id"] == doc["id"])
        return doc, real


class ApiKeyCaptureTest(CaptureBase):
    def test_a_key_minted_through_atlasgate_is_a_phantom_that_works_only_through_it(self):
        doc, real = self.create_key()
        # The shape Atlas sends, with a different private key.
        self.assertNotEqual(doc["privateKey"], real["privateKey"])
        self.assertRegex(doc["privateKey"], UUID)
        self.assertEqual(doc["publicKey"], real["publicKey"])
        self.assertEqual(set(doc), {"id", "desc", "publicKey", "privateKey", "roles", "links"})
        name = f"captured:api_key:{doc['id']}"
        self.assertEqual(self.env.audit()[-1].get("captured"), name)
        entry = self.vault()[name]
        self.assertEqual((entry["owner"], entry["kind"], entry["lookup"]), ("maker", "api_key", real["publicKey"]))

        # curl --digest with the phantom lists projects; the stand-in saw the real key.
        before = len(self.env.fake.api_requests())
        status, body, text = self.digest("/api/atlas/v2/groups", doc["publicKey"], doc["privateKey"])
        self.assertEqual(status, 200, text)
        seen = self.env.fake.api_requests()[before:]
        authed = [r for r in seen if r["principal"]]  # the first is Atlas' challenge
        self.assertTrue(authed and all(r["principal"] == f"api_key:{real['publicKey']}" for r in authed), seen)
        self.assertTrue(all(r["principal_minted"] for r in authed), seen)
        self.assertEqual(self.env.audit()[-1]["credential"], name)

        # Another agent with the same phantom: 401, and nothing reached Atlas.
        before = len(self.env.fake.api_requests())
        status, body, text = self.digest("/api/atlas/v2/groups", doc["publicKey"], doc["privateKey"], name="thief")
        self.assertEqual(status, 401, text)
        self.assertEqual(len(self.env.fake.api_requests()), before)

        # The phantom straight at the stand-in: refused; the real key works there.
        self.assertEqual(self.direct("/api/atlas/v2/groups", ["--digest", "-u",
                                                               f"{doc['publicKey']}:{doc['privateKey']}"]), 401)
        self.assertEqual(self.direct("/api/atlas/v2/groups", ["--digest", "-u",
                                                               f"{real['publicKey']}:{real['privateKey']}"]), 200)

        # A wrong private key through atlasgate: 401 (verified by atlasgate, not Atlas).
        wrong = doc["privateKey"][:-1] + ("0" if doc["privateKey"][-1] != "0" else "1")
        status, _, text = self.digest("/api/atlas/v2/groups", doc["publicKey"], wrong)
        self.assertEqual(status, 401, text)
        self.assert_never_shown(real["privateKey"])

        # Deleted through the API: the entry goes, and the phantom is worthless.
        # A Digest client configured with some other (dummy) key, as agents
        # relying on injection are: the configured credential, as always.
        before = len(self.env.fake.api_requests())
        status, _, text = self.digest("/api/atlas/v2/groups", "dummykey", "dummy-private-key")
        self.assertEqual(status, 200, text)
        self.assertEqual(self.env.fake.api_requests()[-1]["principal"], f"service_account:{CLIENT_ID}")

        # (An agent that holds a captured key is asked for it: it deletes the
        # key with the key; a plain call without Digest would get the challenge.)
        status, _, text = self.call(f"/api/atlas/v2/orgs/{ORG_ID}/apiKeys/{doc['id']}")
        self.assertEqual(status, 401, text)
        status, _, text = self.digest(f"/api/atlas/v2/orgs/{ORG_ID}/apiKeys/{doc['id']}", doc["publicKey"],
                                      doc["privateKey"], method="DELETE")
        self.assertEqual(status, 204, text)
        self.assertNotIn(name, self.vault())
        self.assertEqual(self.env.audit()[-1].get("captured"), name)

    def test_v1_and_project_keys_and_chunked_answers_are_captured(self):
        # v1.0 (the npm client's API), a project key, and a chunked answer.
        self.env.fake.faults({"chunked": {"path_prefix": "/api/atlas/v1.0/orgs/", "method": "POST", "chunks": 3}})
        status, doc, text = self.call(f"/api/atlas/v1.0/orgs/{ORG_ID}/apiKeys", "POST",
                                      {"desc": "v1", "roles": ["ORG_READ_ONLY"]}, name="maker-v1",
                                      extra=["-H", "Accept: application/json", "-D", "/dev/stderr"])
        self.assertEqual(status, 200, text)
        real = next(k for k in self.minted()["api_keys"] if k["id"] == doc["id"])
        self.assertNotEqual(doc["privateKey"], real["privateKey"])
        self.assertNotIn(real["privateKey"], text)
        status, doc2, text = self.call(f"/api/atlas/v2/groups/{PROJECT_ID}/apiKeys", "POST",
                                       {"desc": "project", "roles": ["GROUP_READ_ONLY"]}, name="maker-v1",
                                       extra=["--digest", "-u", f"{doc['publicKey']}:{doc['privateKey']}"])
        self.assertEqual(status, 200, text)
        real2 = next(k for k in self.minted()["api_keys"] if k["id"] == doc2["id"])
        self.assertNotEqual(doc2["privateKey"], real2["privateKey"])
        status, _, text = self.digest("/api/atlas/v2/groups", doc2["publicKey"], doc2["privateKey"], name="maker-v1")
        self.assertEqual(status, 200, text)
        self.assert_never_shown(real["privateKey"], real2["privateKey"])

    def test_capture_share_lets_a_named_agent_use_another_agents_key(self):
        doc, real = self.create_key(name="maker-deployer")
        path = "/api/atlas/v2/groups"
        status, _, text = self.digest(path, doc["publicKey"], doc["privateKey"], name="worker")
        self.assertEqual(status, 401, text)  # not shared yet
        self.env.config["capture"] = {"share": [{"from": "maker-deployer", "to": ["worker", "ci-*"]}]}
        self.env.write_config()
        p = self.env.cli("reload")
        self.assertEqual(p.returncode, 0, p.stderr)
        try:
            before = len(self.env.fake.api_requests())
            status, _, text = self.digest(path, doc["publicKey"], doc["privateKey"], name="worker")
            self.assertEqual(status, 200, text)
            authed = [r for r in self.env.fake.api_requests()[before:] if r["principal"]]
            self.assertEqual(authed[-1]["principal"], f"api_key:{real['publicKey']}")
            self.assertEqual(self.env.audit()[-1]["agent"], "worker")
            status, _, text = self.digest(path, doc["publicKey"], doc["privateKey"], name="thief")
            self.assertEqual(status, 401, text)
        finally:
            self.env.config.pop("capture")
            self.env.write_config()
            self.env.cli("reload")

    def test_python_requests_creates_a_key_and_uses_it(self):
        script = (
            "import json, requests, sys\n"
            "from requests.auth import HTTPDigestAuth\n"
            f"base = 'https://{HOST}/api/atlas/v2'\n"
            "h = {'Accept': 'application/vnd.atlas.2025-03-12+json'}\n"
            f"r = requests.post(base + '/orgs/{ORG_ID}/apiKeys', json={{'desc': 'py', 'roles': ['ORG_READ_ONLY']}},"
            " headers=h, timeout=20)\n"
            "k = r.json()\n"
            "g = requests.get(base + '/groups', auth=HTTPDigestAuth(k['publicKey'], k['privateKey']), headers=h,"
            " timeout=20)\n"
            "print(json.dumps({'create': r.status_code, 'key': k, 'groups': g.status_code}))\n")
        p = self.env.run_agent(self.env.with_hosts([sys.executable, "-c", script]), name="maker-py",
                               env={"REQUESTS_CA_BUNDLE": self.env.trust_bundle()})
        self.assertEqual(p.returncode, 0, p.stderr)
        out = json.loads(p.stdout)
        self.assertEqual((out["create"], out["groups"]), (200, 200), p.stdout)
        real = next(k for k in self.minted()["api_keys"] if k["id"] == out["key"]["id"])
        self.assertNotEqual(out["key"]["privateKey"], real["privateKey"])
        last = [r for r in self.env.fake.api_requests() if r["path"] == "/api/atlas/v2/groups"][-1]
        self.assertEqual(last["principal"], f"api_key:{real['publicKey']}")


# One agent process: a token for (client id, secret), a call with it, then
# (once GO exists) the same call again. Prints what it saw as JSON.
OAUTH_AGENT = r"""
import base64, json, os, sys, time, urllib.request, urllib.error
host, cid, secret, go = sys.argv[1:5]
def call(req):
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")
basic = base64.b64encode(f"{cid}:{secret}".encode()).decode()
st, tok = call(urllib.request.Request(f"https://{host}/api/oauth/token", data=b"grant_type=client_credentials",
               headers={"Authorization": "Basic " + basic, "Content-Type": "application/x-www-form-urlencoded"}))
out = {"token_status": st, "token": tok}
if st == 200:
    api = lambda: call(urllib.request.Request(f"https://{host}/api/atlas/v2/groups", headers={
        "Authorization": "Bearer " + tok["access_token"], "Accept": "application/vnd.atlas.2025-03-12+json"}))[0]
    out["first"] = api()
    if go != "-":
        print(json.dumps(out), flush=True)
        for _ in range(400):
            if os.path.exists(go):
                break
            time.sleep(0.05)
        out["after"] = api()
print(json.dumps(out), flush=True)
"""


class ServiceAccountCaptureTest(CaptureBase):
    def oauth_agent(self, client_id, secret, name, go="-"):
        argv = self.env.with_hosts([sys.executable, "-c", OAUTH_AGENT, HOST, client_id, secret, go])
        return self.env.run_agent(argv, name=name, env={"SSL_CERT_FILE": self.env.trust_bundle()})

    def test_service_account_secrets_are_phantoms_with_working_tokens(self):
        status, doc, text = self.call(f"/api/atlas/v2/orgs/{ORG_ID}/serviceAccounts", "POST",
                                      {"name": "agent-sa", "description": "made by an agent",
                                       "roles": ["ORG_READ_ONLY"], "secretExpiresAfterHours": 8})
        self.assertEqual(status, 201, text)
        client_id = doc["clientId"]
        phantom = doc["secrets"][0]["secret"]
        real = next(s for s in self.minted()["service_account_secrets"] if s["clientId"] == client_id)
        self.assertNotEqual(phantom, real["secret"])
        self.assertTrue(phantom.startswith("mdb_sa_sk_"), phantom)
        self.assertEqual(len(phantom), len(real["secret"]))
        name = f"captured:service_account:{client_id}/{real['id']}"
        self.assertIn(name, self.vault())

        # OAuth with the captured client id and its phantom: a phantom token
        # that reaches Atlas as a real token fetched with the real secret.
        before = len(self.env.fake.api_requests())
        p = self.oauth_agent(client_id, phantom, "maker")
        out = json.loads(p.stdout.strip().splitlines()[-1])
        self.assertEqual(out["token_status"], 200, p.stdout + p.stderr)
        self.assertTrue(out["token"]["access_token"].startswith("agp_"), out)
        self.assertEqual(out["first"], 200, out)
        seen = [r for r in self.env.fake.api_requests()[before:] if r["path"] == "/api/atlas/v2/groups"]
        self.assertTrue(seen and seen[-1]["principal"] == f"service_account:{client_id}", seen)
        self.assertTrue(seen[-1]["principal_minted"])
        self.assertEqual([r["credential"] for r in self.env.audit() if r["path"] == "/api/atlas/v2/groups"][-1], name)

        # Another agent with the same client id and phantom: invalid_client.
        out = json.loads(self.oauth_agent(client_id, phantom, "thief").stdout.strip().splitlines()[-1])
        self.assertEqual((out["token_status"], out["token"]["error"]), (401, "invalid_client"), out)
        # The owner with a wrong phantom: invalid_client too.
        out = json.loads(self.oauth_agent(client_id, "mdb_sa_sk_" + "x" * 40, "maker").stdout.strip().splitlines()[-1])
        self.assertEqual(out["token_status"], 401, out)
        # The phantom straight at the stand-in's token endpoint: refused.
        self.assertEqual(self.direct("/api/oauth/token", ["-u", f"{client_id}:{phantom}", "--data",
                                                           "grant_type=client_credentials"]), 401)

        # A second secret; then the operator revokes the first while an agent
        # holds a token for it: its next call is refused.
        status, sec, text = self.call(f"/api/atlas/v2/orgs/{ORG_ID}/serviceAccounts/{client_id}/secrets", "POST",
                                      {"secretExpiresAfterHours": 8})
        self.assertEqual(status, 201, text)
        real2 = next(s for s in self.minted()["service_account_secrets"] if s["id"] == sec["id"])
        self.assertNotEqual(sec["secret"], real2["secret"])
        go = os.path.join(self.env.tmp, "go")
        argv = self.env.with_hosts([sys.executable, "-c", OAUTH_AGENT, HOST, client_id, phantom, go])
        from harness import LAUNCHER
        env = dict(os.environ, ATLASGATE_RUN_DIR=self.env.run_dir, SSL_CERT_FILE=self.env.trust_bundle())
        env.pop("SUDO_UID", None)
        env.pop("SUDO_GID", None)
        agent = subprocess.Popen([LAUNCHER, "--name", "maker", "--", *argv], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=env)
        first = json.loads(agent.stdout.readline())
        self.assertEqual(first["first"], 200, first)
        p = self.env.cli("credentials", "revoke", name)
        self.assertEqual(p.returncode, 0, p.stderr)
        open(go, "w").close()
        out, err = agent.communicate(timeout=30)
        self.assertEqual(json.loads(out.strip().splitlines()[-1])["after"], 401, out + err)
        # The second secret's phantom still gets tokens.
        out = json.loads(self.oauth_agent(client_id, sec["secret"], "maker").stdout.strip().splitlines()[-1])
        self.assertEqual((out["token_status"], out["first"]), (200, 200), out)
        self.assert_never_shown(real["secret"], real2["secret"])

        # The account deleted through the API: every entry of it goes.
        status, _, text = self.call(f"/api/atlas/v2/orgs/{ORG_ID}/serviceAccounts/{client_id}", "DELETE")
        self.assertEqual(status, 204, text)
        self.assertFalse([n for n in self.vault() if client_id in n])


class DatabaseUserCaptureTest(CaptureBase):
    def test_atlas_gets_a_strong_password_the_agent_never_saw(self):
        user = {"username": "agent-app", "password": "agent-chosen-pw", "databaseName": "admin",
                "roles": [{"roleName": "readWrite", "databaseName": "app"}]}
        status, doc, text = self.call(f"/api/atlas/v2/groups/{PROJECT_ID}/databaseUsers", "POST", user)
        self.assertEqual(status, 201, text)
        got = next(u for u in self.minted()["database_users"] if u["username"] == "agent-app")
        self.assertNotEqual(got["password"], "agent-chosen-pw")
        self.assertRegex(got["password"], r"^[A-Za-z0-9]{32}$")
        name = f"captured:database_user:{PROJECT_ID}/admin/agent-app"
        self.assertEqual(self.vault()[name]["state"], "active")
        self.assertNotIn(got["password"], text)

        status, _, text = self.call(f"/api/atlas/v2/groups/{PROJECT_ID}/databaseUsers/admin/agent-app", "PATCH",
                                    {"password": "agent-second-pw"})
        self.assertEqual(status, 200, text)
        got2 = next(u for u in self.minted()["database_users"] if u["username"] == "agent-app")
        self.assertNotIn("agent-second-pw", got2["passwords"])
        self.assertNotEqual(got2["password"], got["password"])
        self.assertEqual([n for n in self.vault() if "agent-app" in n], [name])
        self.assert_never_shown(got["password"], got2["password"])

        # A refused request leaves no pending entry behind.
        status, _, text = self.call(f"/api/atlas/v2/groups/ffffffffffffffffffffffff/databaseUsers", "POST",
                                    dict(user, username="nobody"))
        self.assertGreaterEqual(status, 400, text)
        self.assertFalse([n for n in self.vault() if "nobody" in n])

        status, _, text = self.call(f"/api/atlas/v2/groups/{PROJECT_ID}/databaseUsers/admin/agent-app", "DELETE")
        self.assertEqual(status, 204, text)
        self.assertNotIn(name, self.vault())

    def test_x509_private_key_never_reaches_the_agent(self):
        status, _, text = self.call(f"/api/atlas/v2/groups/{PROJECT_ID}/databaseUsers", "POST",
                                    {"username": "x509-agent", "databaseName": "$external", "x509Type": "MANAGED",
                                     "roles": [{"roleName": "read", "databaseName": "app"}]})
        self.assertEqual(status, 201, text)
        status, _, pem = self.call(f"/api/atlas/v2/groups/{PROJECT_ID}/databaseUsers/x509-agent/certs", "POST",
                                   {"monthsUntilExpiration": 3})
        self.assertEqual(status, 201, pem)
        real = self.minted()["certs"][-1]
        self.assertNotIn(real["privateKey"].strip(), pem)
        self.assertIn(real["certificate"].strip(), pem)  # the certificate itself is Atlas' own
        keyfile = os.path.join(self.env.tmp, "phantom.pem")
        with open(keyfile, "w") as f:
            f.write(pem)
        p = subprocess.run(["openssl", "pkey", "-in", keyfile, "-noout", "-text"], capture_output=True, text=True)
        self.assertEqual(p.returncode, 0, p.stderr)  # a real key of the same shape
        self.assertIn("2048 bit", p.stdout)
        self.assertTrue([n for n in self.vault() if n.startswith("captured:x509:")])
        self.assert_never_shown(real["privateKey"].strip().splitlines()[1])


class SafetyNetTest(CaptureBase):
    def test_a_secret_on_a_call_capture_does_not_know_is_withheld(self):
        leak = '{"results":[{"id":"x","privateKey":"8c1f2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b"}]}'
        self.env.fake.faults({"body_override": {"path_prefix": "/api/atlas/v2/groups", "method": "GET",
                                                "body": leak}})
        status, body, text = self.call("/api/atlas/v2/groups")
        self.assertEqual(status, 503, text)
        self.assertEqual(body["errorCode"], "ATLASGATE_CAPTURE_FAILED")
        self.assertNotIn("8c1f2a3b", text)
        self.assertEqual(self.env.audit()[-1]["error"], "ATLASGATE_CAPTURE_FAILED")
        # A masked key, as Atlas shows on reads, passes.
        masked = '{"results":[{"id":"x","privateKey":"********-****-****-9c0d1e2f3a4b"}]}'
        self.env.fake.faults({"body_override": {"path_prefix": "/api/atlas/v2/groups", "method": "GET",
                                                "body": masked}})
        status, body, text = self.call("/api/atlas/v2/groups")
        self.assertEqual(status, 200, text)

    def test_an_interim_answer_does_not_leave_the_secret_for_the_next_request(self):
        self.env.fake.faults({"early_hints": {"path_regex": "/apiKeys$", "method": "POST"}})
        status, doc, text = self.call(f"/api/atlas/v2/orgs/{ORG_ID}/apiKeys", "POST",
                                      {"desc": "hinted", "roles": ["ORG_READ_ONLY"]}, name="maker-hints")
        self.assertEqual(status, 200, text)
        real = next(k for k in self.minted()["api_keys"] if k["id"] == doc["id"])
        self.assertNotEqual(doc["privateKey"], real["privateKey"])
        self.assertIn(f"captured:api_key:{doc['id']}", self.vault())
        # The next request (another agent, the same pooled connection) gets
        # its own answer, not the rest of the previous one.
        status, body, text = self.call("/api/atlas/v2/groups", name="maker-next")
        self.assertEqual(status, 200, text)
        self.assertNotIn(real["privateKey"], text)
        self.assertEqual(body["results"][0]["id"], PROJECT_ID)


class NpmClientTest(CaptureBase):
    def test_npm_atlas_api_client_creates_a_key_and_uses_it(self):
        from test_mcp import MCP_DIR, ensure_server_installed
        ensure_server_installed()
        p = self.env.run_agent(self.env.with_hosts(["node", os.path.join(MCP_DIR, "atlas_api_client.cjs"), ORG_ID,
                                                    PROJECT_ID]), name="maker-npm", timeout=120,
                               env={"NODE_EXTRA_CA_CERTS": self.env.trust_bundle()})
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        out = json.loads(p.stdout.strip().splitlines()[-1])
        self.assertEqual(out["create"], 200, out)
        real = next(k for k in self.minted()["api_keys"] if k["id"] == out["key"]["id"])
        self.assertNotEqual(out["key"]["privateKey"], real["privateKey"])
        self.assertEqual(out["projects"]["results"][0]["id"], PROJECT_ID, out)
        # The client's calls reached Atlas with the real key, by Digest (v1.0).
        v1 = [r for r in self.env.fake.api_requests() if r["path"].startswith("/api/atlas/v1.0/groups")]
        self.assertTrue(v1 and all(r["principal"] == f"api_key:{real['publicKey']}" for r in v1 if r["principal"]), v1)
        # The database user it created got a password the agent never chose.
        got = next(u for u in self.minted()["database_users"] if u["username"] == "npm-user")
        self.assertNotIn("npm-chosen-password", got["passwords"])
        self.assert_never_shown(real["privateKey"], got["password"])


class McpCapturedServiceAccountTest(CaptureBase):
    def test_the_mcp_server_runs_on_a_captured_service_account(self):
        from test_mcp import MCP_CLIENT, ensure_server_installed
        ensure_server_installed()
        status, doc, text = self.call(f"/api/atlas/v2/orgs/{ORG_ID}/serviceAccounts", "POST",
                                      {"name": "mcp-sa", "description": "for the MCP server",
                                       "roles": ["ORG_READ_ONLY"], "secretExpiresAfterHours": 8}, name="maker-mcp")
        self.assertEqual(status, 201, text)
        client_id, phantom = doc["clientId"], doc["secrets"][0]["secret"]
        before = len(self.env.fake.api_requests())
        p = self.env.run_agent(self.env.with_hosts(["node", MCP_CLIENT, "--project-id", PROJECT_ID]),
                               name="maker-mcp", timeout=180,
                               env={"MDB_MCP_API_CLIENT_ID": client_id, "MDB_MCP_API_CLIENT_SECRET": phantom})
        summary = json.loads(p.stdout)
        self.assertTrue(summary["ok"], p.stdout[-3000:] + p.stderr[-3000:])
        api = [r for r in self.env.fake.api_requests()[before:] if r["principal"]]
        self.assertTrue(api, "the MCP server made no API call")
        # Every call it made reached Atlas as the captured service account.
        self.assertEqual({r["principal"] for r in api}, {f"service_account:{client_id}"})
        real = next(s for s in self.minted()["service_account_secrets"] if s["clientId"] == client_id)
        self.assert_never_shown(real["secret"])


class VaultFailureTest(PrivilegedTestCase):
    """A vault that cannot be written (its disk is full): the minting answer
    is withheld, the operator is told what now exists in Atlas unclaimed."""

    def test_a_full_disk_withholds_the_answer(self):
        env = Env()
        try:
            os.makedirs(env.state_dir, exist_ok=True)
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", env.state_dir], check=True)
            try:
                env.start_daemon()
                filler = os.path.join(env.state_dir, "filler")
                subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True)
                status, body, _ = env.curl(f"/api/atlas/v2/orgs/{ORG_ID}/apiKeys", "POST",
                                           extra=["-H", "Content-Type: application/json", "--data-binary",
                                                  '{"desc":"doomed","roles":["ORG_READ_ONLY"]}'], name="maker")
                real = env.fake._call("GET", "/__fake/minted")["api_keys"][-1]
                self.assertEqual(status, 503, body)
                self.assertEqual(json.loads(body)["errorCode"], "ATLASGATE_CAPTURE_FAILED")
                self.assertNotIn(real["privateKey"], body)
                log = env.daemon_output()
                self.assertIn("Unclaimed in Atlas now: api_key " + real["id"], log)
                self.assertIn(real["publicKey"], log)
                self.assertNotIn(real["privateKey"], log)
                self.assertEqual(env.audit()[-1]["error"], "ATLASGATE_CAPTURE_FAILED")
                os.unlink(filler)
                # Space again: the next key is captured.
                status, body, _ = env.curl(f"/api/atlas/v2/orgs/{ORG_ID}/apiKeys", "POST",
                                           extra=["-H", "Content-Type: application/json", "--data-binary",
                                                  '{"desc":"fine","roles":["ORG_READ_ONLY"]}'], name="maker-2")
                self.assertEqual(status, 200, body)
            finally:
                env.stop_daemon()
                subprocess.run(["umount", "-l", env.state_dir])
        finally:
            env.close()


class RestartTest(CaptureBase):
    def test_captured_keys_survive_restart_and_kill_during_capture(self):
        doc, real = self.create_key()
        # kill -9 while a minting answer is on its way: the agent gets no secret.
        self.env.fake.faults({"delay_response": {"path_regex": "/apiKeys$", "method": "POST", "ms": 3000}})
        p = subprocess.Popen(self._launcher(self.env.curl_args(f"/api/atlas/v2/orgs/{ORG_ID}/apiKeys", "POST",
                                                                ["-H", "Content-Type: application/json",
                                                                 "--data", '{"desc":"k","roles":["ORG_READ_ONLY"]}'])),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self._agent_env())
        wait_for(lambda: len(self.minted()["api_keys"]) >= 2, timeout=10, what="the second key minted")
        self.env.daemon.send_signal(signal.SIGKILL)
        self.env.daemon.wait()
        out, err = p.communicate(timeout=30)
        second = self.minted()["api_keys"][-1]
        self.assertNotIn(second["privateKey"], out + err)
        self.env.fake.faults({"delay_response": None})
        self.env.start_daemon()
        # The key captured before the crash still works after it.
        status, _, text = self.digest("/api/atlas/v2/groups", doc["publicKey"], doc["privateKey"])
        self.assertEqual(status, 200, text)
        self.assertIn(f"captured:api_key:{doc['id']}", self.vault())

    def _launcher(self, argv):
        from harness import LAUNCHER
        return [LAUNCHER, "--name", "maker-2", "--"] + argv

    def _agent_env(self):
        e = dict(os.environ)
        e["ATLASGATE_RUN_DIR"] = self.env.run_dir
        e.pop("SUDO_UID", None)
        e.pop("SUDO_GID", None)
        return e


if __name__ == "__main__":
    unittest.main()
