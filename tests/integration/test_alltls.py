"""intercept: all-tls -- every TCP/443 connection of an agent goes through
atlasgate: a ClientHello naming a target is terminated wherever it was
dialled (an Atlas address DNS never told us about), everything else is
spliced through untouched to where the agent was going -- from the agent's
own network namespace, so all-tls never gives an agent egress it lacks."""

import ctypes
import os
import socket
import subprocess
import threading
import unittest

import test_netns  # its Netns and Pod helpers (a module attribute: its tests are not collected here)
from harness import (ACCEPT_V2, HOST, MAKE_PKI, PROJECT_ID, SYSTEM_PYTHON, Env, FakeAtlas, PrivilegedTestCase,
                     remove_cgroup, wait_for)

ECHO_ADDR = "127.0.97.56"
OTHER_ADDR = "127.0.97.55"
IN_NS_ADDR = "127.0.97.57"  # an echo server inside the agent's namespace only
UNKNOWN_ADDR = "127.0.96.1"  # no target address, nothing listens: dialled with the target's name
NOBODY = 65534

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


# Connects, says "connected", waits for a line on stdin, then talks.
HELD_CLIENT = r"""
import errno, socket, sys
s = socket.create_connection((sys.argv[1], 443), timeout=20)
print("connected", flush=True)
sys.stdin.readline()
try:
    s.sendall(b"anyone there?")
    print("got %r" % s.recv(100), flush=True)
except OSError as e:
    print("error " + errno.errorcode.get(e.errno, str(e)), flush=True)
"""


def as_nobody(argv):
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--", *argv]


def socket_in_namespace(name):
    """A TCP socket made inside the named network namespace (by a thread that
    enters it and ends; the socket stays there, whoever uses it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    made = {}

    def make():
        with open(f"/run/netns/{name}") as ns:
            if libc.setns(ns.fileno(), 0x40000000) != 0:  # CLONE_NEWNET
                made["error"] = OSError(ctypes.get_errno(), f"setns {name}")
                return
        made["sock"] = socket.socket()
    t = threading.Thread(target=make)
    t.start()
    t.join()
    if "error" in made:
        raise made["error"]
    return made["sock"]


class Echo:
    """A plain TCP echo server on addr:443 (not TLS, not a target), in the
    namespace of sock (by default ours)."""

    def __init__(self, addr=ECHO_ADDR, sock=None):
        self.sock = sock or socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((addr, 443))
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
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() of the thread
        except OSError:
            pass
        self.sock.close()
        self.thread.join(5)


class AllTlsTest(PrivilegedTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.env = Env(config_extra={"intercept": "all-tls"})
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
        # The target's name at an address that is none of its addresses: the
        # ClientHello decides; the request goes to the target's own addresses.
        args = env.curl_args("/api/atlas/v2/groups")
        args[args.index("--resolve") + 1] = f"{HOST}:443:{UNKNOWN_ADDR}"
        p = env.run_agent(args, name="alltls-bot")
        body, _, status = p.stdout.rpartition("\n")
        self.assertEqual(status, "200", p.stderr)
        self.assertIn(PROJECT_ID, body)
        rec = env.audit()[-1]
        self.assertEqual(rec["agent"], "alltls-bot")
        self.assertEqual(rec["dst"], f"{UNKNOWN_ADDR}:443")
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

    def pod_in_own_namespace(self, name):
        """A cgroup under the agents cgroup with a process in a new network
        namespace that has only `lo`, once the daemon listens in it; returns
        (pod, namespace inode). Everything is removed after the test."""
        env = self.env
        net = test_netns.Netns(f"atlasgate-it-{env.tag}-{name}")
        self.addCleanup(net.close)
        cgroup = os.path.join(env.agents_cgroup, name)
        self.addCleanup(remove_cgroup, cgroup)
        pod = test_netns.Pod(cgroup, net)
        self.addCleanup(pod.stop)
        ino = os.stat(f"/run/netns/{net.name}").st_ino
        wait_for(lambda: ino in self.served_namespaces(), timeout=5, what="the daemon's listener in the namespace")
        return pod, ino

    def served_namespaces(self):
        return [n["netns"] for n in self.env.status()["agent_namespaces"]]

    def passthroughs(self):
        return self.env.status()["counters"]["passthrough_connections"]

    def test_agent_in_own_namespace_passes_through_from_that_namespace(self):
        """An agent in a network namespace with only `lo`: its pass-through
        connections are dialled from its namespace, never from the daemon's
        (which reaches host-only services the agent cannot)."""
        env = self.env
        pod, _ = self.pod_in_own_namespace("lo-only")
        net = pod.netns

        # 1. A host-only TLS service (the other server, in the host's namespace):
        # the namespace cannot reach it by itself...
        curl_other = ["curl", "-sS", "--max-time", "10", "--cacert", os.path.join(self.other_pki, "upstream-ca.pem"),
                      "--resolve", f"other.example.com:443:{OTHER_ADDR}", "-o", "/dev/null", "-w", "%{http_code}",
                      "https://other.example.com/api/atlas/v2/groups"]
        direct = subprocess.run(["nsenter", f"--net=/run/netns/{net.name}", *curl_other],
                                capture_output=True, text=True, timeout=30)
        self.assertNotEqual(direct.returncode, 0, "the namespace reaches the host's service by itself")
        # ...and through atlasgate's pass-through it cannot either (the old
        # code dialled from the daemon's namespace: the fake answered 401).
        seen = len(self.other.api_requests())
        before = self.passthroughs()
        rc, out, err = pod.run(as_nobody(curl_other))
        self.assertNotEqual((rc, out), (0, "401"), "the agent reached a host-only service through all-tls")
        self.assertNotEqual(rc, 0, err)
        self.assertEqual(out, "000", err)
        self.assertEqual(len(self.other.api_requests()), seen, "the host-only service saw the agent's request")
        self.assertEqual(self.passthroughs(), before + 1, "the connection did not go through atlasgate")

        # 2. A service inside the agent's namespace (nothing listens there in
        # the host's): spliced through, byte for byte.
        with socket.socket() as probe:
            probe.settimeout(5)
            self.assertNotEqual(probe.connect_ex((IN_NS_ADDR, 443)), 0,
                                f"something listens on {IN_NS_ADDR}:443 in the host's namespace")
        in_ns = Echo(IN_NS_ADDR, socket_in_namespace(net.name))
        self.addCleanup(in_ns.close)
        before = self.passthroughs()
        rc, out, err = pod.run(as_nobody([SYSTEM_PYTHON, "-c", ECHO_CLIENT, IN_NS_ADDR]))
        self.assertEqual((rc, out.strip()), (0, "same"), err)
        self.assertEqual(len(in_ns.peers), 1)
        self.assertEqual(self.passthroughs(), before + 1, "the connection did not go through atlasgate")

        # 3. The target is still terminated and served (upstream from the daemon).
        rc, out, err = pod.run(as_nobody(["curl", "-sS", "--max-time", "15", "--cacert", env.trust_bundle(),
                                          "--resolve", f"{HOST}:443:{env.fake_addr}", "-H", f"Accept: {ACCEPT_V2}",
                                          "-o", "/dev/null", "-w", "%{http_code}",
                                          f"https://{HOST}/api/atlas/v2/groups"]))
        self.assertEqual((rc, out), (0, "200"), err)
        rec = env.audit()[-1]
        self.assertEqual(rec["agent"], "lo-only")
        self.assertTrue(env.fake.api_requests()[-1]["header_map"]["authorization"].startswith("Bearer "))

    def test_pass_through_of_a_namespace_no_longer_served_is_reset(self):
        """A connection accepted in an agent's namespace whose agents then all
        left (the daemon closed that namespace): its pass-through is reset,
        not dialled from the daemon's namespace (where ECHO_ADDR answers)."""
        env = self.env
        pod, ino = self.pod_in_own_namespace("gone")
        client = pod.spawn(as_nobody([SYSTEM_PYTHON, "-c", HELD_CLIENT, ECHO_ADDR]), stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True)

        def stop_client():
            client.kill()
            client.wait()
            client.stdin.close()
            client.stdout.close()
        self.addCleanup(stop_client)
        self.assertEqual(client.stdout.readline().strip(), "connected")
        # Every process leaves the namespace's cgroup (the client, still
        # holding its accepted connection, to a cgroup atlasgate does not watch).
        parked = os.path.join(env.cgroot, f"atlasgate-it-{env.tag}-parked")
        os.makedirs(parked)
        self.addCleanup(remove_cgroup, parked)
        pod.stop()
        with open(os.path.join(parked, "cgroup.procs"), "w") as f:
            f.write(str(client.pid))
        wait_for(lambda: ino not in self.served_namespaces(), timeout=5, what="the namespace no longer served")
        peers, before = len(self.echo.peers), self.passthroughs()
        client.stdin.write("go\n")
        client.stdin.flush()
        self.assertEqual(client.stdout.readline().strip(), "error ECONNRESET")
        self.assertEqual(self.passthroughs(), before + 1, "the connection did not reach the pass-through")
        self.assertEqual(len(self.echo.peers), peers, "dialled from the daemon's namespace")


if __name__ == "__main__":
    unittest.main(verbosity=2)
