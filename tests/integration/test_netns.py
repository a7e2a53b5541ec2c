"""Agents in other network namespaces (containers, pods): the daemon opens a
listener inside each namespace its agents live in, keys flows by namespace
cookie, and closes the listener when the namespace has no agents left."""

import os
import subprocess
import threading
import time
import unittest

from harness import (ACCEPT_V2, HOST, PROJECT_ID, Env, PrivilegedTestCase, remove_cgroup, wait_for)


class Netns:
    def __init__(self, name):
        self.name = name
        subprocess.run(["ip", "netns", "add", name], check=True)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)

    def close(self):
        subprocess.run(["ip", "netns", "delete", self.name], check=False)


class Pod:
    """A cgroup (like a pod's) with a long-lived process in a network namespace."""

    def __init__(self, cgroup, netns):
        self.cgroup, self.netns = cgroup, netns
        os.makedirs(cgroup, exist_ok=True)
        self.sleeper = self.spawn(["sleep", "300"])

    def spawn(self, argv, **kw):
        def join():
            with open(os.path.join(self.cgroup, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
        return subprocess.Popen(["nsenter", f"--net=/run/netns/{self.netns.name}", *argv], preexec_fn=join, **kw)

    def run(self, argv, timeout=30):
        p = self.spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = p.communicate(timeout=timeout)
        return p.returncode, out, err

    def stop(self):
        if self.sleeper.poll() is None:
            self.sleeper.kill()
            self.sleeper.wait()


class NetnsTest(PrivilegedTestCase):
    def setUp(self):
        self.env = Env()
        self.published = os.path.join(self.env.tmp, "published-ca")
        self.env.config["publish_ca_dir"] = self.published
        self.env.write_config()
        self.env.start_daemon()
        tag = self.env.tag
        self.nets = [Netns(f"atlasgate-it-{tag}-a"), Netns(f"atlasgate-it-{tag}-b")]
        self.extra_cgroups = []

    def tearDown(self):
        for p in getattr(self, "pods", []):
            p.stop()
        self.env.close()
        for c in self.extra_cgroups:
            remove_cgroup(c)
        for n in self.nets:
            n.close()

    def curl(self, pod, local_port=None):
        argv = ["curl", "-sS", "--max-time", "15", "--cacert", self.env.trust_bundle(),
                "--resolve", f"{HOST}:443:{self.env.fake_addr}", "-H", f"Accept: {ACCEPT_V2}",
                "-o", "/dev/null", "-w", "%{http_code}"]
        if local_port:
            argv += ["--local-port", str(local_port)]
        return pod.run(argv + [f"https://{HOST}/api/atlas/v2/groups"])

    def namespaces(self):
        return self.env.status()["agent_namespaces"]

    def test_pods_in_their_own_namespaces(self):
        env = self.env
        self.pods = [Pod(os.path.join(env.agents_cgroup, "pod-a"), self.nets[0]),
                     Pod(os.path.join(env.agents_cgroup, "pod-b"), self.nets[1])]
        # Served within a second of the namespace appearing.
        t0 = time.monotonic()
        wait_for(lambda: len(self.namespaces()) == 2, timeout=3, what="listeners in both namespaces")
        self.assertLess(time.monotonic() - t0, 1.5)
        rc, out, err = self.curl(self.pods[0])
        self.assertEqual((rc, out), (0, "200"), err)
        rec = env.audit()[-1]
        self.assertEqual(rec["agent"], "pod-a")
        self.assertEqual(rec["comm"], "curl")
        self.assertTrue(env.fake.api_requests()[-1]["header_map"]["authorization"].startswith("Bearer "))

        # The same client port in both namespaces at once: flows keyed by
        # namespace cookie never collide.
        before = len(env.audit())
        results = {}

        def go(i):
            results[i] = self.curl(self.pods[i], local_port=40123)
        threads = [threading.Thread(target=go, args=(i,)) for i in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(results[0][:2], (0, "200"), results[0][2])
        self.assertEqual(results[1][:2], (0, "200"), results[1][2])
        recs = env.audit()[before:]
        self.assertEqual(sorted(r["agent"] for r in recs), ["pod-a", "pod-b"])

        # A pod going away: its namespace's listener is closed.
        self.pods[1].stop()
        wait_for(lambda: len(self.namespaces()) == 1, timeout=4, what="listener of the gone pod closed")
        rc, out, err = self.curl(self.pods[0])
        self.assertEqual((rc, out), (0, "200"), err)

    def test_attached_container_cgroup(self):
        env = self.env
        # A container runtime's cgroup outside the agents cgroup, attached at run time.
        scope = os.path.join(env.cgroot, f"atlasgate-it-docker-{env.tag}.scope")
        self.extra_cgroups.append(scope)
        self.pods = [Pod(scope, self.nets[0])]
        p = env.cli("attach", scope)
        self.assertEqual(p.returncode, 0, p.stderr)
        wait_for(lambda: len(self.namespaces()) == 1, timeout=3, what="listener in the container's namespace")
        rc, out, err = self.curl(self.pods[0])
        self.assertEqual((rc, out), (0, "200"), err)
        rec = env.audit()[-1]
        self.assertEqual(rec["agent"], f"atlasgate-it-docker-{env.tag}.scope")
        # What containers mount to trust atlasgate: the certificate, never the key.
        self.assertEqual(sorted(os.listdir(self.published)), ["ca.pem", "trust-bundle.pem"])
        with open(os.path.join(self.published, "ca.pem")) as a, open(os.path.join(env.state_dir, "ca.pem")) as b:
            self.assertEqual(a.read(), b.read())
        self.assertEqual(os.stat(os.path.join(self.published, "ca.pem")).st_mode & 0o777, 0o644)
        self.assertEqual(env.cli("detach", scope).returncode, 0)


if __name__ == "__main__":
    unittest.main(verbosity=2)
