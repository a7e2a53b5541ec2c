"""No address family or form lets an attached agent around atlasgate:
IPv6 targets, v4-mapped dials, truthful getpeername(), UDP/443 (QUIC)."""

import json
import unittest

from harness import HOST, PROJECT_ID, SYSTEM_PYTHON, Env, PrivilegedTestCase, DaemonTestCase

# Connects (plain TCP) the way the agent's stack would and reports what
# getpeername() says; optionally does a TLS request over it.
PEER = r"""
import json, os, socket, ssl, sys
family, addr = sys.argv[1], sys.argv[2]
fam = socket.AF_INET6 if family == "6" else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM)
s.settimeout(10)
s.connect((addr, 443))
peer = s.getpeername()
out = {"peer": [peer[0], peer[1]]}
ctx = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
t = ctx.wrap_socket(s, server_hostname="cloud.mongodb.com")
t.sendall(b"GET /api/atlas/v2/groups HTTP/1.1\r\nHost: cloud.mongodb.com\r\n"
          b"Accept: application/vnd.atlas.2025-03-12+json\r\nConnection: close\r\n\r\n")
data = b""
while True:
    chunk = t.recv(65536)
    if not chunk:
        break
    data += chunk
out["status_line"] = data.split(b"\r\n", 1)[0].decode()
out["body_has_project"] = b"5f0000000000000000000001" in data
print(json.dumps(out))
"""

UDP = r"""
import socket, sys
addr, fam = sys.argv[1], socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
res = []
s = socket.socket(fam, socket.SOCK_DGRAM)
try:
    s.sendto(b"quic-initial", (addr, 443)); res.append("sendto-443-allowed")
except PermissionError:
    res.append("sendto-443-refused")
try:
    s.sendto(b"dns-ish", (addr, 5353)); res.append("sendto-5353-allowed")
except PermissionError:
    res.append("sendto-5353-refused")
print(" ".join(res))
"""


class Ipv6TargetTest(PrivilegedTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        # The stand-in on [::1]:443 is the IPv6 "Atlas" address.
        cls.env = Env(fake_addr="::1")
        cls.env.start_daemon()

    @classmethod
    def tearDownClass(cls):
        cls.env.close()

    def test_curl_over_ipv6_is_intercepted(self):
        env = self.env
        status, body, p = env.curl("/api/atlas/v2/groups", extra=["-6"], name="v6-bot")
        self.assertEqual(status, 200, p.stderr)
        self.assertIn(PROJECT_ID, body)
        rec = env.audit()[-1]
        self.assertEqual(rec["agent"], "v6-bot")
        self.assertEqual(rec["dst"], "[::1]:443")
        self.assertTrue(env.fake.api_requests()[-1]["header_map"]["authorization"].startswith("Bearer "))
        self.assertGreaterEqual(env.status()["bpf"]["redirected6"], 1)

    def test_getpeername_tells_the_truth_over_ipv6(self):
        p = self.env.run_agent([SYSTEM_PYTHON, "-c", PEER, "6", "::1"], name="peer6")
        self.assertEqual(p.returncode, 0, p.stderr)
        out = json.loads(p.stdout)
        self.assertEqual(out["peer"], ["::1", 443])  # not the terminator's [::1]:port
        self.assertEqual(out["status_line"], "HTTP/1.1 200 OK")
        self.assertTrue(out["body_has_project"])

    def test_udp_443_to_ipv6_target_refused(self):
        p = self.env.run_agent([SYSTEM_PYTHON, "-c", UDP, "::1"], name="quic6")
        self.assertEqual(p.stdout.split(), ["sendto-443-refused", "sendto-5353-allowed"], p.stderr)


class Ipv4FormsTest(DaemonTestCase):
    @classmethod
    def env_options(cls):
        return {}

    def test_getpeername_returns_the_original_address(self):
        env = self.env
        p = env.run_agent([SYSTEM_PYTHON, "-c", PEER, "4", env.fake_addr], name="peer4")
        self.assertEqual(p.returncode, 0, p.stderr)
        out = json.loads(p.stdout)
        self.assertEqual(out["peer"], [env.fake_addr, 443])
        self.assertEqual(out["status_line"], "HTTP/1.1 200 OK")
        self.assertGreaterEqual(env.status()["bpf"]["getpeername"], 1)

    def test_v4_mapped_dial_is_intercepted(self):
        env = self.env
        before = len(env.audit())
        mapped = "::ffff:" + env.fake_addr
        p = env.run_agent([SYSTEM_PYTHON, "-c", PEER, "6", mapped], name="mapped")
        self.assertEqual(p.returncode, 0, p.stderr)
        out = json.loads(p.stdout)
        self.assertEqual(out["status_line"], "HTTP/1.1 200 OK")
        self.assertEqual(out["peer"], [mapped, 443])
        recs = env.audit()[before:]
        self.assertEqual(len(recs), 1)
        self.assertEqual(recs[0]["agent"], "mapped")
        self.assertEqual(recs[0]["dst"], f"{env.fake_addr}:443")

    def test_unconnected_udp_sendto_443_refused(self):
        env = self.env
        p = env.run_agent([SYSTEM_PYTHON, "-c", UDP, env.fake_addr], name="quic4")
        self.assertEqual(p.stdout.split(), ["sendto-443-refused", "sendto-5353-allowed"], p.stderr)
        p = env.run_agent([SYSTEM_PYTHON, "-c", UDP, "::ffff:" + env.fake_addr], name="quic4m")
        self.assertEqual(p.stdout.split(), ["sendto-443-refused", "sendto-5353-allowed"], p.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
