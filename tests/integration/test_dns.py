"""A target whose DNS answer changes keeps being intercepted: new addresses
join the kernel's target table, retired ones stay for the grace period, then
leave. The daemon asks a small DNS server of this test (dns.servers)."""

import socket
import struct
import threading
import time
import unittest

from harness import HOST, Env, FakeAtlas, PrivilegedTestCase, wait_for


class TinyDns:
    """Answers A queries for HOST with the current address list, TTL 1."""

    def __init__(self, addr="127.0.0.1"):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((addr, 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.addresses = []
        self.queries = 0
        self.running = True
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self):
        while self.running:
            try:
                data, peer = self.sock.recvfrom(512)
            except socket.timeout:
                continue
            except OSError:
                return
            if len(data) < 12:
                continue
            qid, flags, qd = struct.unpack(">HHH", data[:6])
            i, labels = 12, []
            while i < len(data) and data[i] != 0:
                labels.append(data[i + 1:i + 1 + data[i]].decode(errors="replace"))
                i += 1 + data[i]
            qtype = struct.unpack(">H", data[i + 1:i + 3])[0]
            question = data[12:i + 5]
            self.queries += 1
            name = ".".join(labels).lower()
            answers = b""
            count = 0
            if name == HOST and qtype == 1:
                for a in self.addresses:
                    answers += struct.pack(">HHHIH", 0xC00C, 1, 1, 1, 4) + socket.inet_aton(a)
                    count += 1
            rcode = 0 if name == HOST else 3
            header = struct.pack(">HHHHHH", qid, 0x8180 | rcode, 1, count, 0, 0)
            self.sock.sendto(header + question + answers, peer)

    def close(self):
        self.running = False
        self.sock.close()
        self.thread.join(2)


class DnsChangeTest(PrivilegedTestCase):
    def test_answer_change_keeps_intercepting(self):
        dns = TinyDns()
        try:
            with Env(targets_extra={"addresses": [], "resolve": True},
                     config_extra={"dns": {"servers": [f"127.0.0.1:{dns.port}"], "min_refresh": 1,
                                           "max_refresh": 2, "grace": 4}}) as env:
                second = FakeAtlas(env.tmp, env.pki, "127.0.98.76")
                try:
                    self.run_scenario(env, dns, second)
                finally:
                    second.stop()
        finally:
            dns.close()

    def table(self, env):
        t = env.status()["targets"].get(HOST, {})
        return {a["address"]: a for a in t.get("addresses", [])}

    def curl_to(self, env, addr):
        p = env.run_agent(["curl", "-sS", "--max-time", "10", "--cacert", env.trust_bundle(), "--resolve",
                           f"{HOST}:443:{addr}", "-H", "Accept: application/vnd.atlas.2025-03-12+json",
                           "-o", "/dev/null", "-w", "%{http_code}", f"https://{HOST}/api/atlas/v2/groups"],
                          name="dns-bot")
        return p.stdout, p.stderr

    def run_scenario(self, env, dns, second):
        first_addr, second_addr = env.fake_addr, second.addr
        dns.addresses = [first_addr]
        env.start_daemon()
        wait_for(lambda: first_addr in self.table(env), timeout=6, what="DNS address in the target table")
        self.assertEqual(self.table(env)[first_addr]["source"], "dns")
        self.assertEqual(self.curl_to(env, first_addr)[0], "200")
        self.assertEqual(env.audit()[-1]["dst"], f"{first_addr}:443")

        # The answer changes: the new address is intercepted ...
        dns.addresses = [second_addr]
        wait_for(lambda: second_addr in self.table(env), timeout=6, what="new DNS address")
        seen = len(env.fake.api_requests()) + len(second.api_requests())
        out, err = self.curl_to(env, second_addr)
        self.assertEqual(out, "200", err)
        self.assertEqual(env.audit()[-1]["dst"], f"{second_addr}:443")
        # Served upstream at one of atlasgate's own addresses for the target
        # (both are, during the grace period; the pool may reuse either).
        served = env.fake.api_requests() + second.api_requests()
        self.assertEqual(len(served), seen + 1)
        self.assertTrue(all(r["header_map"]["authorization"].startswith("Bearer ") for r in served))
        # ... and the retired one still is, during its grace period.
        self.assertIn(first_addr, self.table(env))
        before = len(env.audit())
        self.assertEqual(self.curl_to(env, first_addr)[0], "200")
        self.assertEqual(len(env.audit()), before + 1)

        # After the grace period it leaves the table: no longer intercepted.
        wait_for(lambda: first_addr not in self.table(env), timeout=15, what="retired address dropped")
        out, err = self.curl_to(env, first_addr)
        # Now it goes straight to that server (which holds a cert the agent's
        # bundle does not trust), so no audit record and no injected token.
        self.assertEqual(len(env.audit()), before + 1)
        self.assertNotEqual(out, "200")
        self.assertGreater(dns.queries, 3)


if __name__ == "__main__":
    unittest.main(verbosity=2)
