"""GET /healthz tells the truth: 200 "ok", or 503 "degraded: <reason>; ..."
when a configured cgroup (agents.attach) is missing, an attachment is stale
(its cgroup was removed, or re-created and so no longer covered), or an
agent network namespace has no listener; `atlasgate status` (JSON and human)
says the same, and /metrics has atlasgate_healthy. /livez stays 200 while the
daemon runs (the liveness probe: restarting mends none of these). Cgroup
names are operator data but may carry control characters and escape
sequences: they come out escaped, and cannot forge a reason."""

import os
import re
import socket
import subprocess
import sys
import time
import unittest
import urllib.error
import urllib.request

from harness import (ACCEPT_V2, CLIENT_SECRET, HOST, Env, PrivilegedTestCase, free_port, remove_cgroup, wait_for)
from test_netns import Netns, Pod

# A cgroup name an attacker would like an operator's terminal to act on:
# colour/clear-screen escapes, a bell, a bidi override, a quote and a `;`
# that would otherwise forge a second reason. (cgroupfs refuses '\n'.)
HOSTILE = "\x1b[2J\x1b[31mred\x07\u202e\"; configured cgroup missing: \"etc"
HOSTILE_ESCAPED = "\\x1b[2J\\x1b[31mred\\x07\\u{202e}\\x22\\x3b configured cgroup missing: \\x22etc"
RAW = ("\x1b", "\x07", "\u202e")


def fetch(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


class HealthTest(PrivilegedTestCase):
    def setUp(self):
        self.admin = free_port()
        self.env = Env(config_extra={"listen": {"admin": f"127.0.0.1:{self.admin}"}})
        self.cgroups = []
        self.nets = []
        self.pods = []
        self.procs = []

    def tearDown(self):
        for p in self.pods:
            p.stop()
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        self.env.close()
        for c in self.cgroups:
            remove_cgroup(c)
        for n in self.nets:
            n.close()

    def cgroup(self, name):
        path = os.path.join(self.env.cgroot, name)
        self.cgroups.append(path)
        os.makedirs(path)
        return path

    def healthz(self):
        return fetch(self.admin, "/healthz")

    def health(self):
        return self.env.status()["health"]

    def healthy_gauge(self):
        _, text = fetch(self.admin, "/metrics")
        m = re.search(r"^atlasgate_healthy (\d+)$", text, re.M)
        self.assertIsNotNone(m, "no atlasgate_healthy in /metrics")
        return int(m.group(1))

    def assert_ok(self):
        self.assertEqual(self.healthz(), (200, "ok\n"))
        self.assertEqual(self.health(), {"state": "ok", "problems": []})
        self.assertEqual(self.healthy_gauge(), 1)

    def assert_degraded(self, *reasons):
        """/healthz, status --json, status (human) and the gauge all say
        degraded with these reasons (substrings), nothing raw, no secret."""
        code, body = self.healthz()
        self.assertEqual(code, 503, body)
        self.assertTrue(body.startswith("degraded: ") and body.endswith("\n"), body)
        self.assertEqual(body.count("\n"), 1, body)
        h = self.health()
        self.assertEqual(h["state"], "degraded")
        self.assertEqual(body, "degraded: " + "; ".join(h["problems"]) + "\n")
        for r in reasons:
            self.assertIn(r, body)
            self.assertTrue(any(r in p for p in h["problems"]), (r, h["problems"]))
        human = self.env.cli("status")
        self.assertEqual(human.returncode, 0, human.stderr)
        self.assertIn("health: degraded\n", human.stdout)
        for r in reasons:
            self.assertIn(f"  - ", human.stdout)
            self.assertIn(r, human.stdout)
        for text in (body, human.stdout, self.env.cli("status", "--json").stdout):
            for c in RAW:
                self.assertNotIn(c, text)
            self.assertNotIn(CLIENT_SECRET, text)
        self.assertEqual(self.healthy_gauge(), 0)
        # Liveness is not readiness: the daemon runs, /livez says so.
        self.assertEqual(fetch(self.admin, "/livez"), (200, "alive\n"))
        return h["problems"]

    def test_healthy(self):
        self.env.start_daemon()
        self.assert_ok()
        self.assertEqual(fetch(self.admin, "/livez"), (200, "alive\n"))
        human = self.env.cli("status")
        self.assertIn("health: ok\n", human.stdout)
        # Both stay open when /metrics has a token (none here) and say nothing else.
        self.assertEqual(fetch(self.admin, "/healthz?verbose=1")[0], 200)

    def test_configured_cgroup_missing(self):
        env = self.env
        name = f"atlasgate-it-health-{env.tag}-{HOSTILE}"
        path = self.cgroup(name)
        env.config["agents"]["attach"] = [path]
        env.write_config()
        env.start_daemon()
        self.assert_ok()
        os.rmdir(path)
        problems = self.assert_degraded(
            f'configured cgroup missing: "{env.cgroot}/atlasgate-it-health-{env.tag}-{HOSTILE_ESCAPED}" (agents.attach)')
        # Said once: not also as a stale attachment of the same path.
        self.assertEqual(len(problems), 1, problems)
        # The forged reason in the name is not a reason of its own.
        self.assertFalse(any(p.startswith("configured cgroup missing: \\x22etc") for p in problems))
        # Fixed: made again and attached again (reload attaches agents.attach).
        os.makedirs(path)
        p = env.cli("reload")
        self.assertEqual(p.returncode, 0, p.stderr)
        wait_for(lambda: self.healthz()[0] == 200, timeout=5, what="healthy again")
        self.assert_ok()

    def test_stale_attachment(self):
        env = self.env
        env.start_daemon()
        path = self.cgroup(f"atlasgate-it-health-{env.tag}-{HOSTILE}.scope")
        shown = f'"{env.cgroot}/atlasgate-it-health-{env.tag}-{HOSTILE_ESCAPED}.scope"'
        self.assertEqual(env.cli("attach", path).returncode, 0)
        self.assert_ok()
        att = [a for a in env.status()["attached"] if a["cgroup"] == path]
        self.assertEqual(len(att), 1)
        old_id = att[0]["cgroup_id"]

        # Removed: true in every attachment design (nothing is there to cover).
        os.rmdir(path)
        # (Per-cgroup links name the id it had; membership by path has none.)
        problems = self.assert_degraded(f"stale attachment: cgroup {shown} ")
        self.assertTrue(any(p.endswith("was removed") for p in problems), problems)
        # The operator clears it by the path it was attached at.
        p = env.cli("detach", path)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assert_ok()

        # Removed and re-created (a new cgroup at the same path), not attached
        # again. With per-cgroup links the new cgroup is not covered: stale.
        # (With membership decided by path at the cgroup2 root it would be
        # covered, and healthy is right too.)
        os.makedirs(path)
        self.assertEqual(env.cli("attach", path).returncode, 0)
        os.rmdir(path)
        os.makedirs(path)
        new_id = os.stat(path).st_ino
        if self.healthz()[0] == 503:
            self.assert_degraded(f"stale attachment: cgroup {shown} was re-created (now id {new_id}")
        else:
            self.assert_ok()
        # Attached again: the old link is a leftover of a removed cgroup, healthy.
        self.assertEqual(env.cli("attach", path).returncode, 0)
        self.assert_ok()
        self.assertEqual(env.cli("detach", path).returncode, 0)

    def test_namespace_without_listener(self):
        env = self.env
        env.start_daemon()
        net = Netns(f"atlasgate-it-{env.tag}-h")
        self.nets.append(net)
        ino = os.stat(f"/run/netns/{net.name}").st_ino
        # Something else holds the listen port inside the agents' namespace
        # (not an agent: outside the agents cgroup).
        ready = os.path.join(env.tmp, "squatter.ready")
        squat = ("import socket,sys,time\n"
                 "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
                 f"s.bind(('127.0.0.1',{env.port})); s.listen(1)\n"
                 f"open({ready!r},'w').close()\n"
                 "time.sleep(300)\n")
        squatter = subprocess.Popen(["ip", "netns", "exec", net.name, sys.executable, "-c", squat])
        self.procs.append(squatter)
        wait_for(lambda: os.path.exists(ready) or squatter.poll() is not None, what="port squatter")
        self.assertIsNone(squatter.poll())
        pod = Pod(os.path.join(env.agents_cgroup, "pod-h"), net)
        self.pods.append(pod)
        reason = f"agent namespace without listener: netns {ino} (pid {pod.sleeper.pid}): "
        wait_for(lambda: self.healthz()[0] == 503, timeout=5, what="degraded")
        problems = self.assert_degraded(reason)
        self.assertRegex(problems[0], r"in use", problems)
        self.assertNotIn(ino, [n["netns"] for n in env.status()["agent_namespaces"]])
        # Fixed: the port is free again; the daemon retries (every 4 s).
        squatter.kill()
        squatter.wait()
        wait_for(lambda: self.healthz()[0] == 200, timeout=12, what="healthy again")
        self.assert_ok()
        self.assertIn(ino, [n["netns"] for n in env.status()["agent_namespaces"]])
        rc, out, err = pod.run(["curl", "-sS", "--max-time", "15", "--cacert", env.trust_bundle(), "--resolve",
                                f"{HOST}:443:{env.fake_addr}", "-H", f"Accept: {ACCEPT_V2}", "-o", "/dev/null",
                                "-w", "%{http_code}", f"https://{HOST}/api/atlas/v2/groups"])
        self.assertEqual((rc, out), (0, "200"), err)
        self.assertEqual(env.audit()[-1]["agent"], "pod-h")


if __name__ == "__main__":
    unittest.main(verbosity=2)
