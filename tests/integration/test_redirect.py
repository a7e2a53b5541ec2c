"""The kernel redirect end to end: who is redirected, who is not, who is refused."""

import json
import os
import re
import signal
import socket
import subprocess
import time
import unittest

from harness import (ACCEPT_V2, HOST, PROJECT_ID, SYSTEM_PYTHON, Env, FakeAtlas, PrivilegedTestCase, wait_for, DaemonTestCase,
                     remove_cgroup)


class RedirectTest(DaemonTestCase):
    @classmethod
    def env_options(cls):
        return {}

    def test_agent_is_redirected_and_identified(self):
        env = self.env
        before = len(env.audit())
        # $$ is curl's pid after exec: the kernel must report exactly that.
        script = "echo PID=$$; exec " + " ".join(f"'{a}'" for a in env.curl_args("/api/atlas/v2/groups"))
        p = env.run_agent(["sh", "-c", script], name="ident-bot")
        self.assertEqual(p.returncode, 0, p.stderr)
        pid = int(re.search(r"PID=(\d+)", p.stdout).group(1))
        self.assertTrue(p.stdout.rstrip().endswith("200"), p.stdout)
        self.assertIn('"name":"demo"', p.stdout.replace(" ", ""))
        recs = env.audit()[before:]
        self.assertEqual(len(recs), 1, recs)
        r = recs[0]
        self.assertEqual(r["agent"], "ident-bot")
        self.assertEqual(r["pid"], pid)
        self.assertEqual(r["comm"], "curl")
        self.assertRegex(r["cgroup"], rf"^{re.escape(env.agents_cgroup_name)}/ident-bot\.\d+$")
        self.assertEqual(r["dst"], f"{env.fake_addr}:443")
        self.assertEqual(r["host"], HOST)
        self.assertEqual(r["status"], 200)
        self.assertTrue(r["credential"].startswith("service_account:mdb_sa_id_"))
        # The stand-in saw the daemon's bearer token, not the agent's nothing.
        last = env.fake.api_requests()[-1]
        self.assertTrue(last["header_map"].get("authorization", "").startswith("Bearer "))
        counters = env.status()["bpf"]
        self.assertGreaterEqual(counters["redirected4"], 1)
        self.assertGreaterEqual(counters["established"], 1)

    def test_process_outside_the_cgroup_is_not_redirected(self):
        env = self.env
        before_audit = len(env.audit())
        before = len(env.fake.api_requests())
        # This test process is in no agent cgroup: it reaches the stand-in directly.
        p = subprocess.run(["curl", "-sS", "--cacert", os.path.join(env.pki, "upstream-ca.pem"), "--resolve",
                            f"{HOST}:443:{env.fake_addr}", "-H", f"Accept: {ACCEPT_V2}", "-o", "/dev/null",
                            "-w", "%{http_code}", f"https://{HOST}/api/atlas/v2/groups"],
                           capture_output=True, text=True, timeout=20)
        self.assertEqual(p.stdout, "401", p.stderr)  # no credential: nobody injected one
        reqs = env.fake.api_requests()[before:]
        self.assertEqual(len(reqs), 1)
        self.assertNotIn("authorization", reqs[0]["header_map"])
        self.assertEqual(len(env.audit()), before_audit)

    def test_non_target_address_and_other_port_are_untouched(self):
        env = self.env
        other = FakeAtlas(env.tmp, env.pki, "127.0.99.77")  # not a target address
        alt_port = FakeAtlas(env.tmp, env.pki, env.fake_addr, port=8443)  # a target address, not 443
        try:
            before_audit = len(env.audit())
            for addr, port, fake in (("127.0.99.77", 443, other), (env.fake_addr, 8443, alt_port)):
                p = env.run_agent(["curl", "-sS", "--cacert", os.path.join(env.pki, "upstream-ca.pem"),
                                   "--resolve", f"{HOST}:{port}:{addr}", "-H", f"Accept: {ACCEPT_V2}",
                                   "-o", "/dev/null", "-w", "%{http_code}", f"https://{HOST}:{port}/api/atlas/v2/groups"],
                                  name="direct-bot")
                # Straight to that server, which holds the stand-in's own certificate, without a credential.
                self.assertEqual(p.stdout, "401", f"{addr}:{port}: {p.stderr}")
                reqs = fake.api_requests()
                self.assertEqual(len(reqs), 1)
                self.assertNotIn("authorization", reqs[0]["header_map"])
            self.assertEqual(len(env.audit()), before_audit)
            # A non-target address is not even looked at (the hook runs for
            # every connect() on the machine); a target on another port is.
            self.assertEqual(env.status()["bpf"]["skip_not_target"], 0)
            self.assertGreaterEqual(env.status()["bpf"]["skip_port"], 1)
        finally:
            other.stop()
            alt_port.stop()

    def test_direct_connection_to_listen_port_is_refused(self):
        env = self.env
        before = env.status()["counters"]["refused_no_flow"]
        # Reset at once: connect, the write or the read sees it, or the read sees EOF.
        data = b""
        try:
            with socket.create_connection(("127.0.0.1", env.port), timeout=5) as s:
                s.sendall(b"\x16\x03\x01\x00\x05hello")
                data = s.recv(100)
        except (ConnectionResetError, BrokenPipeError):
            pass
        self.assertEqual(data, b"")
        # From inside an agent cgroup too: 127.0.0.1 is not a target, so no record.
        p = env.run_agent(["curl", "-sSk", "--max-time", "5", f"https://127.0.0.1:{env.port}/"], name="sneaky")
        self.assertNotEqual(p.returncode, 0)
        wait_for(lambda: env.status()["counters"]["refused_no_flow"] >= before + 2, what="refusals counted")

    def test_launcher_drops_to_invoking_user_in_fresh_cgroup(self):
        env = self.env
        p = env.run_agent(["sh", "-c", "id -u; id -g; cat /proc/self/cgroup; echo $SSL_CERT_FILE; echo $ATLASGATE_AGENT"],
                          name="who", user=65534)
        self.assertEqual(p.returncode, 0, p.stderr)
        lines = p.stdout.splitlines()
        self.assertEqual(lines[0], "65534")
        self.assertEqual(lines[1], "65534")
        cg = [l for l in lines if l.startswith("0::")][0][3:]
        self.assertRegex(cg, rf"/{re.escape(env.agents_cgroup_name)}/who\.\d+$")
        self.assertEqual(lines[-2], env.trust_bundle())
        self.assertEqual(lines[-1], "who")
        self.assertFalse(os.path.exists(os.path.join(env.cgroot, cg.lstrip("/"))), "cgroup left behind")
        # Exit status is CMD's.
        self.assertEqual(env.run_agent(["sh", "-c", "exit 7"], name="exit7").returncode, 7)

    def test_udp_443_to_target_is_refused_other_udp_untouched(self):
        env = self.env
        code = (
            "import socket,sys\n"
            "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
            f"try:\n s.connect(('{env.fake_addr}',443)); print('quic-allowed')\n"
            "except PermissionError: print('quic-refused')\n"
            "u=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
            f"u.connect(('{env.fake_addr}',5353)); print('udp-ok')\n")
        p = env.run_agent([SYSTEM_PYTHON, "-c", code], name="quic")
        self.assertEqual(p.stdout.split(), ["quic-refused", "udp-ok"], p.stderr)


class RestartTest(PrivilegedTestCase):
    def test_kill9_and_restart_never_goes_direct(self):
        with Env(config_extra={"bpf": {"keep_on_exit": True}}) as env:
            env.start_daemon()
            status, body, p = env.curl("/api/atlas/v2/groups", name="restart-bot")
            self.assertEqual(status, 200, p.stderr)
            env.stop_daemon(sig=signal.SIGKILL)
            seen = len(env.fake.api_requests())
            # Daemon down: the redirect is still in force, so the agent's
            # connection is refused rather than sent straight to Atlas.
            p = env.run_in_cgroup(env.curl_args("/api/atlas/v2/groups"), name="restart-bot")
            self.assertEqual(p.returncode, 7, p.stderr)  # curl: failed to connect
            self.assertIn("connect", p.stderr.lower())
            self.assertEqual(len(env.fake.api_requests()), seen, "a request went around atlasgate")
            self.assertTrue(os.path.isdir(os.path.join(env.pin_root, "links")))
            env.start_daemon()
            self.assertIn("re-used", env.daemon_output())
            status, body, p = env.curl("/api/atlas/v2/groups", name="restart-bot")
            self.assertEqual(status, 200, p.stderr)
            # A clean SIGTERM with keep_on_exit keeps the pins: still fail closed.
            self.assertEqual(env.stop_daemon(), 0)
            self.assertTrue(os.path.isdir(os.path.join(env.pin_root, "links")))
            p = env.run_in_cgroup(env.curl_args("/api/atlas/v2/groups"), name="restart-bot")
            self.assertEqual(p.returncode, 7, p.stderr)
            api = env.fake.api_requests()
            self.assertEqual(len(api), seen + 1, "a request went around atlasgate")
            self.assertTrue(all(r["header_map"].get("authorization", "").startswith("Bearer ") for r in api))
            # The clean stop revoked the daemon's token.
            self.assertEqual(env.fake.stats()["revoke_requests"], 1)

    def test_sigterm_without_keep_removes_pins(self):
        with Env() as env:
            env.start_daemon()
            self.assertTrue(os.path.isdir(env.pin_root))
            self.assertEqual(env.stop_daemon(), 0)
            self.assertFalse(os.path.exists(env.pin_root))
            # Detached: a process in the cgroup now goes straight to the
            # stand-in, with no credential -- what keep_on_exit: false means.
            p = env.run_in_cgroup(["curl", "-sS", "--cacert", os.path.join(env.pki, "upstream-ca.pem"), "--resolve",
                                   f"{HOST}:443:{env.fake_addr}", "-o", "/dev/null", "-w", "%{http_code}",
                                   "-H", f"Accept: {ACCEPT_V2}", f"https://{HOST}/api/atlas/v2/groups"], name="after")
            self.assertEqual(p.stdout, "401", p.stderr)
            # And the launcher refuses to start agents without a daemon.
            p = env.run_agent(["true"], name="nodaemon")
            self.assertNotEqual(p.returncode, 0)
            self.assertIn("not running", p.stderr)


class ReCreatedCgroupTest(PrivilegedTestCase):
    """Membership is a cgroup *path* decided in the kernel (bpf/member.h): a
    hand-attached cgroup removed and made again -- a restarted systemd unit
    or container -- is redirected from its first connection, with no daemon
    involvement, and so is a configured path that did not exist when the
    daemon started. The agent trusts the stand-in's own CA too, so a
    connection that went around atlasgate would succeed and be counted."""

    ROUNDS = 10

    def curl_in(self, env, cgroup, both):
        def join():
            with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
        args = env.curl_args("/api/atlas/v2/groups", extra=["--cacert", both])
        return subprocess.run(args, capture_output=True, text=True, timeout=30, preexec_fn=join)

    def test_removed_and_recreated_cgroups_are_never_direct(self):
        with Env() as env:
            hand = os.path.join(env.cgroot, f"atlasgate-it-{env.tag}-hand")
            later = os.path.join(env.cgroot, f"atlasgate-it-{env.tag}-later")
            env.config["agents"]["attach"] = [later]  # does not exist yet
            env.write_config()
            try:
                os.makedirs(hand)
                env.start_daemon()
                both = os.path.join(env.tmp, "both.pem")
                with open(both, "w") as f:
                    for src in (env.trust_bundle(), os.path.join(env.pki, "upstream-ca.pem")):
                        with open(src) as g:
                            f.write(g.read())
                p = env.cli("attach", hand)
                self.assertEqual(p.returncode, 0, p.stderr)
                ids = set()
                for i in range(self.ROUNDS):
                    remove_cgroup(hand)
                    os.makedirs(hand)
                    ids.add(os.stat(hand).st_ino)
                    p = self.curl_in(env, hand, both)
                    self.assertTrue(p.stdout.endswith("\n200"), f"round {i}: {p.stdout!r} {p.stderr}")
                self.assertEqual(len(ids), self.ROUNDS, "each round made a new cgroup")
                os.makedirs(later)
                p = self.curl_in(env, later, both)
                self.assertTrue(p.stdout.endswith("\n200"), f"{p.stdout!r} {p.stderr}")
                api = env.fake.api_requests()
                direct = [r for r in api if not r["header_map"].get("authorization", "").startswith("Bearer ")]
                self.assertEqual(len(api), self.ROUNDS + 1)
                self.assertEqual(direct, [], "a request reached the stand-in without atlasgate")
                recs = [r for r in env.audit() if r.get("status") == 200]
                self.assertEqual(len(recs), self.ROUNDS + 1)
                hand_rel = os.path.relpath(hand, env.cgroot)
                self.assertEqual(sum(1 for r in recs if r["cgroup"] == hand_rel), self.ROUNDS)
                print(f"\n  {self.ROUNDS} re-creations of an attached cgroup, {len(api)} calls, "
                      f"{len(direct)} direct", flush=True)
                status = env.status()
                self.assertIn(hand, [a["cgroup"] for a in status["attached"]])
            finally:
                for cg in (hand, later):
                    if os.path.isdir(cg):
                        remove_cgroup(cg)


if __name__ == "__main__":
    unittest.main(verbosity=2)
