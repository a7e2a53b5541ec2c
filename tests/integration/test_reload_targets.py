"""Targets are known by host, not by their place in the config: a reload adds,
removes, reorders and changes targets without a restart (the kernel's targets
maps and the flows carry an id the daemon gives each host once).

Two stand-ins, for cloud.mongodb.com and a second host, each on its own
loopback address. Agents trust atlasgate's bundle and the stand-ins' own CA,
so a connection that is not redirected reaches a stand-in and is counted (a
request with no Authorization)."""

import copy
import os
import random
import subprocess
import unittest

from harness import ACCEPT_V2, HOST, MAKE_PKI, Env, FakeAtlas, PrivilegedTestCase

HOST2 = "cloud.mongodbgov.com"


class ReloadTargetsTest(PrivilegedTestCase):
    def call(self, env, host, addr, both):
        p = env.run_agent(["curl", "-sS", "--max-time", "15", "--cacert", both, "--resolve", f"{host}:443:{addr}",
                           "-H", f"Accept: {ACCEPT_V2}", "-o", "/dev/null", "-w", "%{http_code}",
                           f"https://{host}/api/atlas/v2/groups"], name="reload-targets")
        return p.stdout.strip(), p.stderr

    def reload(self, env, targets):
        env.config["targets"] = targets
        env.write_config()
        return env.cli("reload")

    @staticmethod
    def bearer(fake):
        return [r for r in fake.api_requests() if r["header_map"].get("authorization", "").startswith("Bearer ")]

    @staticmethod
    def direct(fake):
        return [r for r in fake.api_requests() if not r["header_map"].get("authorization", "").startswith("Bearer ")]

    def test_reload_adds_removes_reorders_and_changes_targets(self):
        with Env() as env:
            pki2 = os.path.join(env.tmp, "pki2")
            subprocess.run(["bash", MAKE_PKI, pki2, HOST, HOST2], check=True, stdout=subprocess.DEVNULL)
            spare = os.path.join(env.tmp, "spare")
            os.makedirs(spare)
            addr2 = f"127.0.{random.randint(10, 250)}.{random.randint(2, 250)}"
            addr3 = f"127.0.{random.randint(10, 250)}.{random.randint(2, 250)}"
            while addr2 in (env.fake_addr, addr3) or addr3 == env.fake_addr:
                addr3 = f"127.0.{random.randint(10, 250)}.{random.randint(2, 250)}"
            fake2 = FakeAtlas(env.tmp, pki2, addr2)
            fake3 = FakeAtlas(spare, env.pki, addr3)
            try:
                first = copy.deepcopy(env.config["targets"][0])
                second = copy.deepcopy(first)
                second.update({"host": HOST2, "addresses": [addr2],
                               "upstream_ca": os.path.join(pki2, "upstream-ca.pem")})
                env.config["targets"] = [first, second]
                env.write_config()
                env.start_daemon()
                both = os.path.join(env.tmp, "both.pem")
                with open(both, "w") as f:
                    for src in (env.trust_bundle(), os.path.join(env.pki, "upstream-ca.pem"),
                                os.path.join(pki2, "upstream-ca.pem")):
                        with open(src) as g:
                            f.write(g.read())

                self.assertEqual(self.call(env, HOST, env.fake_addr, both)[0], "200")
                self.assertEqual(self.call(env, HOST2, addr2, both)[0], "200")
                self.assertEqual(env.audit()[-1]["host"], HOST2)
                self.assertEqual(len(self.bearer(fake2)), 1)

                # Removed: the second host is no longer a target. Its address
                # is no longer redirected (the operator's choice), so the
                # call reaches the stand-in directly, without a credential.
                r = self.reload(env, [first])
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertEqual(self.call(env, HOST2, addr2, both)[0], "401")
                self.assertEqual(len(self.direct(fake2)), 1)
                self.assertNotIn(HOST2, env.status()["targets"])
                self.assertEqual(self.call(env, HOST, env.fake_addr, both)[0], "200")

                # Added back, in front of the first: each address still
                # belongs to its own host (ids follow hosts, not positions).
                r = self.reload(env, [second, first])
                self.assertEqual(r.returncode, 0, r.stderr)
                n1, n2 = len(self.bearer(env.fake)), len(self.bearer(fake2))
                self.assertEqual(self.call(env, HOST, env.fake_addr, both)[0], "200")
                self.assertEqual(env.audit()[-1]["host"], HOST)
                self.assertEqual(self.call(env, HOST2, addr2, both)[0], "200")
                self.assertEqual(env.audit()[-1]["host"], HOST2)
                self.assertEqual((len(self.bearer(env.fake)), len(self.bearer(fake2))), (n1 + 1, n2 + 1))

                # Changed: the first host moves to another address. The new
                # one is redirected and served there; the old one is not.
                moved = dict(first, addresses=[addr3])
                r = self.reload(env, [second, moved])
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertEqual(self.call(env, HOST, addr3, both)[0], "200")
                # (This stand-in does not know the other's tokens: its 401 makes
                # atlasgate fetch one from it and replay, so two bearer calls.)
                self.assertGreaterEqual(len(self.bearer(fake3)), 1, "the upstream leg did not follow the new address")
                before = len(self.direct(env.fake))
                self.assertEqual(self.call(env, HOST, env.fake_addr, both)[0], "401")
                self.assertEqual(len(self.direct(env.fake)), before + 1)
                self.assertEqual(self.direct(fake3), [])

                # A host the CA was not made for: refused, with the reason;
                # the running targets stay.
                stranger = dict(first, host="cloud.example.net", addresses=["127.0.0.9"])
                r = self.reload(env, [second, moved, stranger])
                self.assertNotEqual(r.returncode, 0)
                self.assertIn("cloud.example.net", r.stdout + r.stderr)
                self.assertIn("restart", r.stdout + r.stderr)
                self.assertEqual(self.call(env, HOST, addr3, both)[0], "200")
                self.assertEqual(self.call(env, HOST2, addr2, both)[0], "200")
                self.assertEqual(self.direct(fake2), self.direct(fake2)[:1], "second host went direct after a refusal")
            finally:
                fake2.stop()
                fake3.stop()


if __name__ == "__main__":
    import unittest
    unittest.main(verbosity=2)
