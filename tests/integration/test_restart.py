"""A restart keeps everything. Two agents in cgroups attached by hand
(`atlasgate attach`, outside the agents cgroup): one in its OWN network
namespace (a container's), one in the HOST namespace. Both are served and
named, and a rule scoped to one of them by name blocks it. The daemon is
killed (-9), with bpf.keep_on_exit: while it is down both fail closed, and
no request reaches the stand-in (the agents trust the stand-in's own CA too,
so a direct connection would complete and be counted). Started again, with
no `attach` re-run: the same attachments with their paths, the same agent
names, the same rule decisions, a listener again in the agent's namespace,
and /healthz ok. Then the same across a clean SIGTERM."""

import os
import signal
import subprocess
import unittest
import urllib.error
import urllib.request

from harness import (ACCEPT_V2, HOST, Env, PrivilegedTestCase, free_port, remove_cgroup, wait_for)
from test_netns import Netns, Pod

GROUPS = "/api/atlas/v2/groups"
CLUSTERS = "/api/atlas/v2/groups/5f0000000000000000000001/clusters"


class RestartKeepsEverythingTest(PrivilegedTestCase):
    def setUp(self):
        self.admin = free_port()
        # Env's tag is known only once it exists: the rule names the agent by
        # its cgroup's name, which contains the tag; written before the start.
        self.env = Env(config_extra={"bpf": {"keep_on_exit": True},
                                     "listen": {"admin": f"127.0.0.1:{self.admin}"}})
        env = self.env
        self.own_name = f"atlasgate-it-own-{env.tag}.scope"
        self.host_name = f"atlasgate-it-host-{env.tag}.scope"
        self.own = os.path.join(env.cgroot, self.own_name)
        self.host = os.path.join(env.cgroot, self.host_name)
        env.config["rules"] = {"default": "allow", "list": [
            {"name": "own-may-not-list-clusters", "method": "GET", "path": "/api/atlas/v2/groups/*/clusters",
             "agents": [self.own_name], "action": "block"}]}
        env.write_config()
        self.net = Netns(f"atlasgate-it-{env.tag}-r")
        self.pod = None
        self.both = os.path.join(env.tmp, "both.pem")

    def tearDown(self):
        if self.pod:
            self.pod.stop()
        self.env.close()
        for c in (self.own, self.host):
            remove_cgroup(c)
        self.net.close()

    # --- helpers ----------------------------------------------------------

    def write_both(self):
        # atlasgate's trust bundle and the stand-in's own CA: a connection
        # that went around atlasgate would complete and be counted.
        with open(self.both, "w") as f:
            for src in (self.env.trust_bundle(), os.path.join(self.env.pki, "upstream-ca.pem")):
                with open(src) as g:
                    f.write(g.read())

    def curl_argv(self, path):
        return ["curl", "-sS", "--max-time", "10", "--cacert", self.both, "--resolve",
                f"{HOST}:443:{self.env.fake_addr}", "-H", f"Accept: {ACCEPT_V2}", "-o", "/dev/null",
                "-w", "%{http_code}", f"https://{HOST}{path}"]

    def call_own(self, path):
        rc, out, err = self.pod.run(self.curl_argv(path))
        return rc, out, err

    def call_host(self, path):
        def join():
            with open(os.path.join(self.host, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
        p = subprocess.run(self.curl_argv(path), capture_output=True, text=True, timeout=30, preexec_fn=join)
        return p.returncode, p.stdout, p.stderr

    def own_ino(self):
        return os.stat(f"/run/netns/{self.net.name}").st_ino

    def listening_in_own(self):
        return self.own_ino() in [n["netns"] for n in self.env.status()["agent_namespaces"]]

    def attachments(self):
        return sorted((a["cgroup"], a["cgroup_id"]) for a in self.env.status()["attached"])

    def healthz(self):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/healthz", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def assert_served(self, phase):
        """Both agents served under their names; the agent-scoped rule holds."""
        env = self.env
        wait_for(self.listening_in_own, timeout=5, what=f"{phase}: a listener in the agent's own namespace")
        before = len(env.audit())
        rc, out, err = self.call_own(GROUPS)
        self.assertEqual((rc, out), (0, "200"), f"{phase}: own-netns agent: {err}")
        rc, out, err = self.call_host(GROUPS)
        self.assertEqual((rc, out), (0, "200"), f"{phase}: host-netns agent: {err}")
        rc, out, err = self.call_own(CLUSTERS)
        self.assertEqual((rc, out), (0, "403"), f"{phase}: the rule scoped to the own-netns agent: {err}")
        rc, out, err = self.call_host(CLUSTERS)
        self.assertEqual((rc, out), (0, "200"), f"{phase}: the rule is not the host agent's: {err}")
        got = [(r["agent"], r["path"], r["status"], r.get("rule")) for r in env.audit()[before:]]
        self.assertEqual([g[:3] for g in got], [(self.own_name, GROUPS, 200), (self.host_name, GROUPS, 200),
                                                (self.own_name, CLUSTERS, 403), (self.host_name, CLUSTERS, 200)],
                         f"{phase}: {got}")
        self.assertEqual(got[2][3], "own-may-not-list-clusters", f"{phase}: {got}")
        self.assertEqual(self.healthz(), (200, "ok\n"), phase)

    def assert_fail_closed(self, phase):
        env = self.env
        seen = len(env.fake.requests())
        for who, call in (("own-netns", self.call_own), ("host-netns", self.call_host)):
            rc, out, err = call(GROUPS)
            self.assertNotEqual(out, "200", f"{phase}: {who} agent served with no daemon")
            self.assertEqual(rc, 7, f"{phase}: {who} agent: want a refused connection, got rc {rc}: {err}")
        self.assertEqual(len(env.fake.requests()), seen, f"{phase}: a request went around atlasgate")

    # --- the test -----------------------------------------------------------

    def restart_and_check(self, sig, expected_attachments):
        env = self.env
        rc = env.stop_daemon(sig=sig)
        if sig == signal.SIGTERM:
            self.assertEqual(rc, 0)
        self.assertTrue(os.listdir(os.path.join(env.pin_root, "links")), "pins gone: keep_on_exit not honoured")
        self.assert_fail_closed(f"down after {sig.name}")
        env.start_daemon()
        self.assertIn("re-used", env.daemon_output())
        self.assertEqual(self.attachments(), expected_attachments, f"after {sig.name}: attachments")
        self.assert_served(f"after {sig.name}")
        # No stale attachment, no namespace without a listener.
        self.assertEqual(env.status()["health"], {"state": "ok", "problems": []})

    def test_restart_keeps_attachments_names_rules_and_listeners(self):
        env = self.env
        env.start_daemon()
        self.write_both()
        os.makedirs(self.host)
        self.pod = Pod(self.own, self.net)  # a long-lived process in its own netns
        for cg in (self.own, self.host):
            p = env.cli("attach", cg)
            self.assertEqual(p.returncode, 0, p.stderr)
        self.assert_served("first start")
        attached = self.attachments()
        self.assertIn((self.own, os.stat(self.own).st_ino), attached)
        self.assertIn((self.host, os.stat(self.host).st_ino), attached)
        human = env.cli("status").stdout
        self.assertIn(self.own, human)
        self.assertIn(self.host, human)

        self.restart_and_check(signal.SIGKILL, attached)
        self.restart_and_check(signal.SIGTERM, attached)
        # The stand-in saw every request with a token of atlasgate's.
        api = env.fake.api_requests()
        self.assertTrue(api)
        self.assertTrue(all(r["header_map"].get("authorization", "").startswith("Bearer ") for r in api))


if __name__ == "__main__":
    unittest.main(verbosity=2)
