"""Ways around the rules and small leaks, attacked by an unprivileged agent
(uid 65534 through scripts/atlasgate-run) against a real daemon:

  * a "%2F" in a segment: the rules read the path both as one segment and
    split at the decoded slashes, and the stricter reading wins -- with
    `default: block` an allowed cluster path does not let
    `.../clusters/C%2Fbackup%2Fsnapshots` through;
  * method-override headers (X-HTTP-Method-Override, X-HTTP-Method,
    X-Method-Override), which servers honour instead of the request line's
    method: refused with 400, never forwarded;
  * /metrics names agents and the client id: with listen.admin_token_file it
    needs the bearer token (401 for a local user without it);
  * a 503 ATLASGATE_CREDENTIAL_UNAVAILABLE body names no credential (no client
    id); the daemon log and the audit record still do.
"""

import json
import os
import unittest

from harness import CLIENT_ID, CLIENT_SECRET, DaemonTestCase, Env, PrivilegedTestCase, free_port, wait_for

API = "/api/atlas/v2"
NOBODY = 65534
CLUSTER_RULE = {"name": "cluster-reads-and-writes", "method": ["GET", "POST"],
                "path": API + "/groups/{groupId}/clusters/{clusterName}", "action": "allow"}


def atlas_error(test, body, status, code):
    doc = json.loads(body)
    test.assertTrue({"error", "errorCode", "reason", "detail", "parameters"} <= set(doc), doc)
    test.assertEqual((doc["error"], doc["errorCode"]), (status, code), doc)
    return doc


class RuleDodgeTest(DaemonTestCase):
    """Deny by default; one cluster path allowed for GET and POST."""

    @classmethod
    def env_options(cls):
        return dict(rules={"default": "block", "list": [CLUSTER_RULE]})

    def reached(self, marker):
        """The stand-in's records whose raw path contains marker."""
        return [r for r in self.env.fake.requests() if marker in r["path"]]

    def test_encoded_slash_reading_falls_to_the_default_block(self):
        env = self.env
        # The one-segment reading is what the allow rule names: it goes out.
        status, body, p = env.curl(f"{API}/groups/X/clusters/PlainC", name="dodge-bot", user=NOBODY)
        self.assertNotIn("ATLASGATE_", body)  # answered by the stand-in (which knows no group X)
        self.assertEqual(len(self.reached("/clusters/PlainC")), 1)

        # The attack: a server that decodes %2F sees .../clusters/C/backup/snapshots.
        target = f"{API}/groups/X/clusters/SlashC%2Fbackup%2Fsnapshots"
        status, body, p = env.curl(target, name="dodge-bot", user=NOBODY)
        self.assertEqual(status, 403, f"{body}\n{p.stderr}")
        doc = atlas_error(self, body, 403, "ATLASGATE_BLOCKED")
        self.assertEqual(doc["parameters"], ["default"])
        self.assertEqual(self.reached("SlashC"), [], "the %2F request reached the upstream")
        rec = [r for r in env.audit() if "SlashC" in r.get("path", "")][-1]
        self.assertEqual((rec["decision"], rec["rule"], rec["status"]), ("block", "default", 403), rec)

        # Lower-case escapes and a POST change nothing.
        status, body, p = env.curl(f"{API}/groups/X/clusters/SlashD%2fbackup", method="POST",
                                   extra=["-H", "Content-Type: application/json", "--data", "{}"],
                                   name="dodge-bot", user=NOBODY)
        self.assertEqual(status, 403, body)
        self.assertEqual(self.reached("SlashD"), [])

    def test_method_override_headers_are_refused(self):
        env = self.env
        # Without an override the POST is allowed and goes out.
        status, body, p = env.curl(f"{API}/groups/X/clusters/OverrideBase", method="POST",
                                   extra=["-H", "Content-Type: application/json", "--data", "{}"],
                                   name="override-bot", user=NOBODY)
        self.assertNotIn("ATLASGATE_", body)
        self.assertEqual(len(self.reached("OverrideBase")), 1)

        # DELETE is blocked (default); the agent asks the server to run one.
        for i, header in enumerate(["X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override",
                                    "x-http-method-override"]):
            marker = f"Override{i}"
            status, body, p = env.curl(f"{API}/groups/X/clusters/{marker}", method="POST",
                                       extra=["-H", "Content-Type: application/json", "--data", "{}",
                                              "-H", f"{header}: DELETE"],
                                       name="override-bot", user=NOBODY)
            self.assertEqual(status, 400, f"{header}: {body}\n{p.stderr}")
            doc = atlas_error(self, body, 400, "ATLASGATE_BAD_REQUEST")
            self.assertIn("method override", doc["detail"])
            self.assertEqual(self.reached(marker), [], f"{header}: the request reached the upstream")
            rec = [r for r in env.audit() if marker in r.get("path", "")][-1]
            self.assertEqual((rec["decision"], rec["status"]), ("malformed", 400), rec)

        # Also on a GET the rules allow.
        status, body, p = env.curl(f"{API}/groups/X/clusters/OverrideGet",
                                   extra=["-H", "X-HTTP-Method: DELETE"], name="override-bot", user=NOBODY)
        self.assertEqual(status, 400, body)
        self.assertEqual(self.reached("OverrideGet"), [])


class MetricsTokenTest(PrivilegedTestCase):
    def fetch(self, env, port, path, token=None):
        """curl as uid 65534 (a local user, not root): (status, body)."""
        argv = ["curl", "-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}"]
        if token is not None:
            argv += ["-H", f"Authorization: Bearer {token}"]
        p = env.run_agent(argv + [f"http://127.0.0.1:{port}{path}"], name="metrics-reader", user=NOBODY)
        body, _, code = p.stdout.rpartition("\n")
        self.assertTrue(code.isdigit(), f"{p.stdout}\n{p.stderr}")
        return int(code), body

    def test_metrics_need_the_bearer_token(self):
        admin_port = free_port()
        with Env(config_extra={"listen": {"admin": f"127.0.0.1:{admin_port}"}}) as env:
            token_file = os.path.join(env.tmp, "admin-token")
            token = "agt-admin-" + os.urandom(12).hex()
            with open(token_file, "w") as f:
                f.write(token + "\n")
            os.chmod(token_file, 0o600)
            env.config["listen"]["admin_token_file"] = token_file
            env.write_config()
            env.start_daemon()
            self.assertEqual(env.curl(f"{API}/groups", name="secret-agent-name")[0], 200)

            # The local user cannot read the token ...
            p = env.run_agent(["cat", token_file], name="metrics-reader", user=NOBODY)
            self.assertNotEqual(p.returncode, 0)
            self.assertNotIn(token, p.stdout)
            # ... so /metrics refuses it, and the refusal tells nothing.
            for guess in (None, "wrong", token[:-1], token + "x", ""):
                status, body = self.fetch(env, admin_port, "/metrics", guess)
                self.assertEqual(status, 401, f"token {guess!r}: {body}")
                for secret in ("secret-agent-name", CLIENT_ID, "atlasgate_"):
                    self.assertNotIn(secret, body)
            # /healthz stays open and says only that.
            self.assertEqual(self.fetch(env, admin_port, "/healthz"), (200, "ok\n"))

            status, body = self.fetch(env, admin_port, "/metrics", token)
            self.assertEqual(status, 200, body)
            self.assertIn("atlasgate_requests_total", body)
            self.assertIn("secret-agent-name", body)

            # A rotated token takes effect on reload; the old one stops working.
            new_token = "agt-admin-" + os.urandom(12).hex()
            with open(token_file, "w") as f:
                f.write(new_token)
            r = env.cli("reload")
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertEqual(self.fetch(env, admin_port, "/metrics", token)[0], 401)
            self.assertEqual(self.fetch(env, admin_port, "/metrics", new_token)[0], 200)
            self.assertNotIn(token, env.daemon_output())
            self.assertNotIn(new_token, env.daemon_output())


class CredentialUnavailableBodyTest(PrivilegedTestCase):
    def test_503_body_names_no_credential(self):
        with Env() as env:
            # Every token request fails: the service account cannot get a token.
            env.fake.faults({"token_fail": {"count": 1000, "status": 503}})
            env.start_daemon()
            status, body, p = env.curl(f"{API}/groups", name="cred-bot", user=NOBODY)
            self.assertEqual(status, 503, f"{body}\n{p.stderr}")
            doc = atlas_error(self, body, 503, "ATLASGATE_CREDENTIAL_UNAVAILABLE")
            self.assertTrue(doc["detail"])
            for leak in (CLIENT_ID, "mdb_sa_id", "service_account", CLIENT_SECRET):
                self.assertNotIn(leak, body)
            # Again while the provider backs off (another error path).
            status, body, p = env.curl(f"{API}/groups", name="cred-bot", user=NOBODY)
            self.assertEqual(status, 503, body)
            self.assertNotIn(CLIENT_ID, body)
            self.assertEqual(env.fake.api_requests(), [], "a request went out without a token")
            # The operator still sees which credential failed.
            rec = env.audit()[-1]
            self.assertEqual(rec.get("error"), "ATLASGATE_CREDENTIAL_UNAVAILABLE", rec)
            self.assertIn(CLIENT_ID, rec["credential"])
            wait_for(lambda: "credential service_account:" + CLIENT_ID in env.daemon_output(), timeout=5,
                     what="the failure logged with the credential's name")
            self.assertNotIn(CLIENT_SECRET, env.daemon_output())


if __name__ == "__main__":
    unittest.main(verbosity=2)
