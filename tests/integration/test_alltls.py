"""intercept: all-tls -- every TCP/443 connection of an agent goes through
atlasgate: a ClientHello naming a target is terminated wherever it was
dialled (an Atlas address DNS never told us about), everything else is
spliced through untouched to where the agent was going."""

import os
import socket
import subprocess
import threading
import unittest

from harness import HOST, MAKE_PKI, PROJECT_ID, SYSTEM_PYTHON, Env, FakeAtlas, PrivilegedTestCase

ECHO_ADDR = "127.0.97.56"
OTHER_ADDR = "127.0.97.55"

ECHO_CLIENT = r"""
import os, socket, sys, hashlib
data = os.urandom(256 * 1024)
s = socket.create_connection((sys.argv[1], 443), timeout=10)
s.sendall(data)
s.shutdown(socket.SHUT_WR)
back = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    back += chunk
print("same" if back == data else f"differs {len(back)} != {len(data)}")
"""


class Echo:
    """A plain TCP echo server on ECHO_ADDR:443 (not TLS, not a target)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((ECHO_ADDR, 443))
        self.sock.listen(8)
        self.peers = []
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self):
        while True:
            try:
                c, peer = self.sock.accept()
            except OSError:
                return
            self.peers.append(peer)
            with c:
                while True:
                    d = c.recv(65536)
                    if not d:
                        break
                    c.sendall(d)

    def close(self):
        self.sock.close()


class AllTlsTest(PrivilegedTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        # The stand-in's address is deliberately NOT among the target addresses.
        cls.env = Env(config_extra={"intercept": "all-tls"}, targets_extra={"addresses": ["127.0.96.1"]})
        cls.other_pki = os.path.join(cls.env.tmp, "other-pki")
        subprocess.run(["bash", MAKE_PKI, cls.other_pki, "other.example.com"], check=True, stdout=subprocess.DEVNULL)
        cls.other = FakeAtlas(cls.env.tmp, cls.other_pki, OTHER_ADDR)
        cls.echo = Echo()
        cls.env.start_daemon()

    @classmethod
    def tearDownClass(cls):
        cls.env.close()
        cls.other.stop()
        cls.echo.close()

    def test_target_sni_at_unknown_address_is_terminated(self):
        env = self.env
        status, body, p = env.curl("/api/atlas/v2/groups", name="alltls-bot")
        self.assertEqual(status, 200, p.stderr)
        self.assertIn(PROJECT_ID, body)
        rec = env.audit()[-1]
        self.assertEqual(rec["agent"], "alltls-bot")
        self.assertEqual(rec["dst"], f"{env.fake_addr}:443")
        self.assertTrue(env.fake.api_requests()[-1]["header_map"]["authorization"].startswith("Bearer "))
        self.assertGreaterEqual(env.status()["bpf"]["redirected_any"], 1)

    def test_other_tls_server_passes_through_with_its_own_certificate(self):
        env = self.env
        before_audit = len(env.audit())
        before = env.status()["counters"]["passthrough_connections"]
        # Trusting only the other server's own CA: atlasgate's certificate would fail.
        p = env.run_agent(["curl", "-sS", "--max-time", "10", "--cacert",
                           os.path.join(self.other_pki, "upstream-ca.pem"),
                           "--resolve", f"other.example.com:443:{OTHER_ADDR}", "-o", "/dev/null", "-w", "%{http_code}",
                           "https://other.example.com/__fake/health"], name="browser")
        self.assertEqual(p.stdout, "200", p.stderr)
        self.assertEqual(env.status()["counters"]["passthrough_connections"], before + 1)
        self.assertEqual(len(env.audit()), before_audit)

    def test_non_tls_bytes_pass_through_byte_for_byte(self):
        env = self.env
        p = env.run_agent([SYSTEM_PYTHON, "-c", ECHO_CLIENT, ECHO_ADDR], name="echo")
        self.assertEqual(p.stdout.strip(), "same", p.stderr)
        # The echo server saw the daemon, not the agent: it was spliced.
        self.assertTrue(self.echo.peers)


if __name__ == "__main__":
    unittest.main(verbosity=2)
