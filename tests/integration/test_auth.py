"""Every way Atlas clients authenticate: phantom tokens, API keys by Digest,
token endpoint failures and stale tokens -- through the real redirect."""

import json
import os
import time
import unittest

from harness import (ACCEPT_V2, CLIENT_SECRET, HOST, PROJECT_ID, SYSTEM_PYTHON, Env, PrivilegedTestCase, DaemonTestCase)

# A client that runs the OAuth client-credentials flow itself, with dummy
# credentials, like the Atlas SDKs and the MCP server do.
OAUTH_CLIENT = r"""
import base64, json, sys, requests
base = "https://cloud.mongodb.com"
basic = base64.b64encode(b"mdb_sa_id_000000000000000000000000:mdb_sa_sk_dummy").decode()
r = requests.post(base + "/api/oauth/token", data={"grant_type": "client_credentials"},
                  headers={"Authorization": "Basic " + basic, "Accept": "application/json"}, timeout=20)
out = {"token_status": r.status_code, "token_headers": {k.lower(): v for k, v in r.headers.items()}, "token": r.json()}
tok = out["token"].get("access_token", "")
api = requests.get(base + "/api/atlas/v2/groups", timeout=20,
                   headers={"Authorization": "Bearer " + tok, "Accept": "application/vnd.atlas.2025-03-12+json"})
out["api_status"] = api.status_code
out["api"] = api.json()
if len(sys.argv) > 1 and sys.argv[1] == "revoke":
    rv = requests.post(base + "/api/oauth/revoke", data={"token": tok, "token_type_hint": "access_token"},
                       headers={"Authorization": "Basic " + basic}, timeout=20)
    out["revoke_status"] = rv.status_code
    again = requests.get(base + "/api/atlas/v2/groups", timeout=20,
                         headers={"Authorization": "Bearer " + tok, "Accept": "application/vnd.atlas.2025-03-12+json"})
    out["after_revoke"] = [again.status_code, again.json()]
print(json.dumps(out))
"""

USE_TOKEN = r"""
import json, sys, requests
r = requests.get("https://cloud.mongodb.com/api/atlas/v2/groups", timeout=20,
                 headers={"Authorization": "Bearer " + sys.argv[1], "Accept": "application/vnd.atlas.2025-03-12+json"})
print(json.dumps([r.status_code, r.json()]))
"""




class PhantomTokenTest(DaemonTestCase):
    @classmethod
    def env_options(cls):
        return dict(rules={"default": "allow", "list": [
            {"name": "no-oauth-for-interns", "method": "POST", "path": "/api/oauth/token", "agents": ["intern-*"],
             "action": "block"}]})

    def python_agent(self, code, name, *args):
        # Python's resolver cannot be told where cloud.mongodb.com is without
        # touching /etc/hosts, so the agent patches getaddrinfo for that name.
        prelude = ("import socket\n_orig = socket.getaddrinfo\n"
                   "def _gai(host, *a, **k):\n"
                   f"    return _orig('{self.env.fake_addr}' if host == '{HOST}' else host, *a, **k)\n"
                   "socket.getaddrinfo = _gai\n")
        p = self.env.run_agent([SYSTEM_PYTHON, "-c", prelude + code, *args], name=name)
        self.assertEqual(p.returncode, 0, p.stderr)
        return json.loads(p.stdout.strip().splitlines()[-1])

    def test_self_authenticating_client_gets_a_phantom(self):
        env = self.env
        before = env.fake.stats()["token_requests"]
        out = self.python_agent(OAUTH_CLIENT, "sdk-bot")
        self.assertEqual(out["token_status"], 200)
        tok = out["token"]
        self.assertEqual(set(tok), {"access_token", "expires_in", "token_type"})
        self.assertEqual(tok["token_type"], "Bearer")
        self.assertGreater(tok["expires_in"], 60)
        self.assertTrue(tok["access_token"].startswith("agp_"))
        self.assertNotIn("www-authenticate", out["token_headers"])
        self.assertTrue(out["token_headers"]["content-type"].startswith("application/json"))
        self.assertEqual(out["api_status"], 200)
        self.assertEqual(out["api"]["results"][0]["id"], PROJECT_ID)
        # The stand-in never saw the phantom, nor the agent's OAuth call:
        # only the daemon's own token request and the real bearer.
        for r in env.fake.requests():
            auth = r["header_map"].get("authorization", "")
            self.assertNotIn("agp_", auth)
            self.assertNotIn("agp_", r.get("body") or "")
        self.assertLessEqual(env.fake.stats()["token_requests"] - before, 1)
        recs = [r for r in env.audit() if r["agent"] == "sdk-bot"]
        self.assertEqual([(r["method"], r["path"], r["decision"]) for r in recs][:1],
                         [("POST", "/api/oauth/token", "local")])
        self.assertTrue(recs[1]["credential"].startswith("service_account:"))
        with open(env.audit_path) as f:
            self.assertNotIn(tok["access_token"], f.read())
        self.assertNotIn(tok["access_token"], env.daemon_output())

    def test_phantom_of_another_agent_is_refused(self):
        env = self.env
        out = self.python_agent(OAUTH_CLIENT, "agent-a")
        phantom = out["token"]["access_token"]
        seen = len(env.fake.api_requests())
        status, body = self.python_agent(USE_TOKEN, "agent-b", phantom)
        self.assertEqual(status, 401)
        self.assertEqual(body["errorCode"], "ATLASGATE_INVALID_TOKEN")
        self.assertEqual(body["error"], 401)
        self.assertIn("another agent", body["detail"])
        # A made-up phantom is refused too.
        status, body = self.python_agent(USE_TOKEN, "agent-b", "agp_" + "x" * 32)
        self.assertEqual(status, 401)
        self.assertEqual(len(env.fake.api_requests()), seen, "a refused phantom was forwarded")
        self.assertGreaterEqual(env.status()["counters"]["phantom_tokens_refused"], 2)

    def test_revoke_is_local_and_kills_the_phantom(self):
        out = self.python_agent(OAUTH_CLIENT, "revoker", "revoke")
        self.assertEqual(out["revoke_status"], 200)
        self.assertEqual(out["after_revoke"][0], 401)
        self.assertEqual(self.env.fake.stats()["revoke_requests"], 0)

    def test_rules_apply_to_the_token_endpoint(self):
        out = self.python_agent(OAUTH_CLIENT.replace('out["api_status"]', 'out["api_status"]'), "intern-joe")
        self.assertEqual(out["token_status"], 403)
        self.assertEqual(out["token"]["errorCode"], "ATLASGATE_BLOCKED")


class DigestTest(PrivilegedTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        import tempfile
        cls.keydir = tempfile.mkdtemp(prefix="atlasgate-it-digest-")
        os.chmod(cls.keydir, 0o755)
        cls.private_key_file = os.path.join(cls.keydir, "private-key")
        with open(cls.private_key_file, "w") as f:
            f.write("fake-private-key-0001")
        cls.env = Env(credentials={"api_key": {"public_key": "fakepubk", "private_key_file": cls.private_key_file}},
                      fake_extra=["--auth", "digest", "--digest-public-key", "fakepubk", "--digest-private-key-file",
                                  cls.private_key_file, "--digest-nonce-uses", "3"])
        cls.env.start_daemon()

    @classmethod
    def tearDownClass(cls):
        cls.env.close()
        import shutil
        shutil.rmtree(cls.keydir, ignore_errors=True)

    def test_digest_clients_with_and_without_keys(self):
        env = self.env
        before = len(env.fake.requests())
        # curl --digest with dummy keys, and a client with no credentials at all.
        for extra, name in ((["--digest", "-u", "dummy:dummy"], "digest-dummy"), ([], "no-creds")):
            for _ in range(4):
                status, body, p = env.curl("/api/atlas/v2/groups", extra=extra, name=name)
                self.assertEqual(status, 200, f"{name}: {body} {p.stderr}")
                self.assertIn(PROJECT_ID, body)
        reqs = env.fake.api_requests()[before:]
        ok = [r for r in reqs if r["status"] == 200]
        challenged = [r for r in reqs if r["status"] == 401]
        self.assertEqual(len(ok), 8)
        # Nonce reuse: far fewer challenges than requests (one at first, then
        # one each time the stand-in calls the nonce stale after 3 uses).
        self.assertLess(len(challenged), len(ok))
        ncs = []
        for r in ok:
            auth = r["header_map"]["authorization"]
            self.assertTrue(auth.startswith("Digest "))
            self.assertIn('username="fakepubk"', auth)
            self.assertNotIn("dummy", auth)
            ncs.append(auth.split("nc=")[1].split(",")[0])
        self.assertIn("00000002", ncs, "the nonce was never reused")
        self.assertNotIn("fake-private-key-0001", env.daemon_output())
        self.assertTrue(all(r["credential"] == "api_key:fakepubk" for r in env.audit()[-8:]))

    def test_post_body_is_replayed_after_a_challenge(self):
        env = self.env
        env.stop_daemon()  # a fresh daemon has no nonce: its first request is challenged
        env.start_daemon()
        body = json.dumps({"name": "digest-cluster", "clusterType": "REPLICASET",
                           "providerSettings": {"providerName": "AWS", "instanceSizeName": "M10",
                                                "regionName": "US_EAST_1"}})
        before = len(env.fake.requests())
        status, out, p = env.curl(f"/api/atlas/v2/groups/{PROJECT_ID}/clusters", method="POST",
                                  extra=["-H", "Content-Type: application/json", "--data-binary", body], name="creator")
        self.assertEqual(status, 201, out + p.stderr)
        reqs = [r for r in env.fake.requests()[before:] if r["method"] == "POST"]
        self.assertEqual([r["status"] for r in reqs], [401, 201])
        self.assertEqual(reqs[0]["body"], body)
        self.assertEqual(reqs[1]["body"], body)


class TokenFailureTest(PrivilegedTestCase):
    def test_token_endpoint_down_then_recovers(self):
        with Env() as env:
            env.fake.faults({"token_fail": {"count": 3, "status": 503, "body": {"error": "temporarily_unavailable"}}})
            env.start_daemon()
            t0 = time.monotonic()
            status, body, p = env.curl("/api/atlas/v2/groups", name="early")
            self.assertEqual(status, 503, body)
            self.assertLess(time.monotonic() - t0, 5, "a failing token endpoint must not hang the agent")
            err = json.loads(body)
            self.assertEqual(err["errorCode"], "ATLASGATE_CREDENTIAL_UNAVAILABLE")
            self.assertNotIn(CLIENT_SECRET, body)
            # Backoff, then recovery without a restart.
            deadline = time.monotonic() + 20
            statuses = [status]
            while time.monotonic() < deadline:
                status, body, p = env.curl("/api/atlas/v2/groups", name="later")
                statuses.append(status)
                if status == 200:
                    break
                self.assertEqual(status, 503)
                time.sleep(0.3)
            self.assertEqual(statuses[-1], 200, statuses)
            st = env.fake.stats()
            self.assertEqual(st["token_successes"], 1)
            self.assertGreaterEqual(st["token_requests"], 4)
            self.assertNotIn(CLIENT_SECRET, env.daemon_output())

    def test_stale_token_healed_by_one_refresh(self):
        with Env() as env:
            env.start_daemon()
            status, body, p = env.curl("/api/atlas/v2/groups", name="stale")
            self.assertEqual(status, 200)
            env.fake.faults({"expire_tokens": True})  # Atlas now rejects the token the daemon holds
            status, body, p = env.curl("/api/atlas/v2/groups", name="stale")
            self.assertEqual(status, 200, body)
            st = env.fake.stats()
            self.assertEqual(st["token_successes"], 2)
            api = env.fake.api_requests()
            self.assertEqual([r["status"] for r in api], [200, 401, 200])
            self.assertEqual(env.status()["counters"]["credential_retries"], 1)


if __name__ == "__main__":
    unittest.main(verbosity=2)


class SeveralCredentialsTest(PrivilegedTestCase):
    """A target with several named credentials: the agent mapping and rules pick one."""

    def test_agents_and_rules_choose_the_credential(self):
        import tempfile
        import shutil
        keydir = tempfile.mkdtemp(prefix="atlasgate-it-creds-")
        os.chmod(keydir, 0o755)
        key_file = os.path.join(keydir, "private-key")
        with open(key_file, "w") as f:
            f.write("fake-private-key-0001")
        try:
            with Env(credentials=None,
                     fake_extra=["--auth", "any", "--digest-public-key", "fakepubk", "--digest-private-key-file", key_file],
                     rules={"default": "allow", "list": [
                         {"name": "snapshots-as-owner", "path": "/api/atlas/v2/groups/*/clusters/*/backup/**",
                          "action": "allow", "credential": "owner"}]}) as env:
                env.config["targets"][0]["credentials"] = [
                    {"name": "reader", "api_key": {"public_key": "fakepubk", "private_key_file": key_file},
                     "agents": ["reader-*"]},
                    {"name": "owner", "service_account": {"client_id": "mdb_sa_id_5f0000000000000000000fa1",
                                                          "client_secret_file": env.secret_file}}]
                env.write_config()
                env.start_daemon()
                self.assertEqual(env.curl("/api/atlas/v2/groups", name="reader-1")[0], 200)
                self.assertEqual(env.audit()[-1]["credential"], "api_key:fakepubk")
                self.assertTrue(env.fake.api_requests()[-1]["header_map"]["authorization"].startswith("Digest "))
                self.assertEqual(env.curl("/api/atlas/v2/groups", name="ops-1")[0], 200)
                self.assertEqual(env.audit()[-1]["credential"], "service_account:mdb_sa_id_5f0000000000000000000fa1")
                self.assertTrue(env.fake.api_requests()[-1]["header_map"]["authorization"].startswith("Bearer "))
                # The rule's credential wins over the agent mapping.
                status, body, p = env.curl(
                    f"/api/atlas/v2/groups/{PROJECT_ID}/clusters/Cluster0/backup/snapshots", name="reader-2")
                self.assertEqual(status, 200, body)
                self.assertEqual(env.audit()[-1]["credential"], "service_account:mdb_sa_id_5f0000000000000000000fa1")
                self.assertEqual(env.audit()[-1]["rule"], "snapshots-as-owner")
        finally:
            shutil.rmtree(keydir, ignore_errors=True)
