"""A simulated Kubernetes node: pod cgroups laid out like kubelet's (systemd
and cgroupfs drivers), one network namespace per pod, and a fake API server
(tests/fake_k8s) announcing and deleting pods. The daemon, in DaemonSet mode,
attaches the labelled pods of its node and names their agents namespace/pod."""

import json
import os
import signal
import subprocess
import sys
import time
import unittest
import urllib.request
import ssl

from harness import (ACCEPT_V2, HOST, REPO, Env, PrivilegedTestCase, remove_cgroup, wait_for)

FAKE_K8S = os.path.join(REPO, "tests", "fake_k8s", "fake_k8s.py")
NODE = "node-1"


class FakeK8s:
    def __init__(self, tmp, addr="127.88.0.1"):
        self.pki = os.path.join(tmp, "k8s-pki")
        self.token_file = os.path.join(tmp, "k8s-token")
        with open(self.token_file, "w") as f:
            f.write("fake-sa-token")
        ready = os.path.join(tmp, "k8s.ready")
        self.log = open(os.path.join(tmp, "k8s.log"), "w")
        self.proc = subprocess.Popen([sys.executable, FAKE_K8S, "--pki-dir", self.pki, "--listen", addr, "--port", "0",
                                      "--token-file", self.token_file, "--ready-file", ready, "--quiet"],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(lambda: os.path.exists(ready) or self.proc.poll() is not None, what="fake k8s")
        with open(ready) as f:
            self.addr, port = f.read().split()
        self.port = int(port)
        self.url = f"https://{self.addr}:{self.port}"
        self.ctx = ssl.create_default_context(cafile=os.path.join(self.pki, "ca.crt"))
        self.ctx.check_hostname = False

    def control(self, path, body):
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, context=self.ctx, timeout=10) as r:
            return json.loads(r.read() or b"null")

    def pod(self, op, name, uid, labels=None, qos="BestEffort"):
        return self.control("/__fake/pods", {"op": op, "pod": {
            "metadata": {"name": name, "namespace": "team-a", "uid": uid, "labels": labels or {}},
            "spec": {"nodeName": NODE}, "status": {"phase": "Running", "qosClass": qos}}})

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)
        self.log.close()


class PodSandbox:
    """A pod's container cgroup with a sleeper in the pod's own network namespace."""

    def __init__(self, cgroup, netns):
        self.cgroup, self.netns = cgroup, netns
        os.makedirs(cgroup, exist_ok=True)
        subprocess.run(["ip", "netns", "add", netns], check=True)
        subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
        self.sleeper = self.spawn(["sleep", "300"])

    def spawn(self, argv, **kw):
        def join():
            with open(os.path.join(self.cgroup, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
        return subprocess.Popen(["nsenter", f"--net=/run/netns/{self.netns}", *argv], preexec_fn=join, **kw)

    def curl(self, env, method="GET", path="/api/atlas/v2/groups"):
        p = self.spawn(["curl", "-sS", "--max-time", "10", "--cacert", env.trust_bundle(), "--resolve",
                        f"{HOST}:443:{env.fake_addr}", "-H", f"Accept: {ACCEPT_V2}", "-o", "/dev/null",
                        "-X", method, "-w", "%{http_code}", f"https://{HOST}{path}"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = p.communicate(timeout=30)
        return p.returncode, out, err

    def close(self):
        if self.sleeper.poll() is None:
            self.sleeper.kill()
            self.sleeper.wait()
        subprocess.run(["ip", "netns", "delete", self.netns], check=False)


class KubernetesNodeTest(PrivilegedTestCase):
    def test_pods_are_discovered_attached_named_and_detached(self):
        env = Env(rules={"default": "allow", "list": [
            {"name": "sandbox-pods-read-only", "pod_labels": "env=sandbox", "method": ["POST", "DELETE"],
             "path": "/api/atlas/v2/**", "action": "block"}]})
        k8s = FakeK8s(env.tmp)
        node_root = os.path.join(env.cgroot, f"atlasgate-it-{env.tag}-node")
        sandboxes = []
        try:
            ua, ub, uc = "0a1b2c3d-0000-4000-8000-00000000000a", "0a1b2c3d-0000-4000-8000-00000000000b", \
                "0a1b2c3d-0000-4000-8000-00000000000c"
            # kubelet's systemd driver for A and B, the cgroupfs driver for C.
            def systemd(uid):
                return os.path.join(node_root, "kubepods.slice", "kubepods-besteffort.slice",
                                    f"kubepods-besteffort-pod{uid.replace('-', '_')}.slice", "cri-containerd-1.scope")
            a = PodSandbox(systemd(ua), f"atlasgate-it-{env.tag}-pa")
            b = PodSandbox(systemd(ub), f"atlasgate-it-{env.tag}-pb")
            c = PodSandbox(os.path.join(node_root, "kubepods", "besteffort", f"pod{uc}", "c0ffee"),
                           f"atlasgate-it-{env.tag}-pc")
            sandboxes = [a, b, c]
            env.config["discovery"] = {"kubernetes": {"api_server": k8s.url, "token_file": k8s.token_file,
                                                      "ca_file": os.path.join(k8s.pki, "ca.crt"),
                                                      "cgroup_root": node_root,
                                                      "node_name_env": "ATLASGATE_TEST_NODE_NAME"}}
            env.write_config()
            os.environ["ATLASGATE_TEST_NODE_NAME"] = NODE
            k8s.pod("add", "pod-a", ua, {"atlasgate.io/inject": "true"})
            k8s.pod("add", "pod-b", ub, {"app": "other"})  # no label: not ours
            env.start_daemon()

            def pods():
                return sorted(p["pod"] for p in env.status().get("kubernetes", {}).get("attached_pods", []))
            wait_for(lambda: pods() == ["team-a/pod-a"], timeout=5, what="pod-a attached")
            wait_for(lambda: len(env.status()["agent_namespaces"]) == 1, timeout=3, what="listener in pod-a")
            rc, out, err = a.curl(env)
            self.assertEqual((rc, out), (0, "200"), err)
            rec = env.audit()[-1]
            self.assertEqual(rec["agent"], "team-a/pod-a")
            self.assertTrue(env.fake.api_requests()[-1]["header_map"]["authorization"].startswith("Bearer "))
            # pod-b has no label: not intercepted (nothing in its namespace answers).
            rc, out, err = b.curl(env)
            self.assertNotEqual(out, "200")
            self.assertEqual(env.audit()[-1], rec)

            # A pod announced later (cgroupfs layout) is served within a second or so.
            k8s.pod("add", "pod-c", uc, {"atlasgate.io/inject": "true", "env": "sandbox"})
            wait_for(lambda: pods() == ["team-a/pod-a", "team-a/pod-c"], timeout=5, what="pod-c attached")
            wait_for(lambda: len(env.status()["agent_namespaces"]) == 2, timeout=3, what="listener in pod-c")
            rc, out, err = c.curl(env)
            self.assertEqual((rc, out), (0, "200"), err)
            self.assertEqual(env.audit()[-1]["agent"], "team-a/pod-c")
            # Rules match on pod labels: pod-c (env=sandbox) may not write, pod-a may.
            rc, out, err = c.curl(env, method="DELETE", path="/api/atlas/v2/groups/x")
            self.assertEqual(out, "403", err)
            self.assertEqual(env.audit()[-1]["rule"], "sandbox-pods-read-only")
            rc, out, err = a.curl(env, method="DELETE", path="/api/atlas/v2/groups/x")
            self.assertNotEqual(out, "403")
            self.assertEqual(env.audit()[-1]["agent"], "team-a/pod-a")
            self.assertEqual(env.audit()[-1]["rule"], "default")

            # Deleting a pod detaches it and closes its listener.
            k8s.pod("delete", "pod-a", ua)
            wait_for(lambda: pods() == ["team-a/pod-c"], timeout=5, what="pod-a detached")
            wait_for(lambda: len(env.status()["agent_namespaces"]) == 1, timeout=4, what="pod-a listener closed")
            before = len(env.audit())
            rc, out, err = a.curl(env)
            self.assertNotEqual(out, "200")
            self.assertEqual(len(env.audit()), before)

            # The daemon restarting mid-watch recovers: pod-c is served again.
            env.stop_daemon(sig=signal.SIGKILL)
            env.start_daemon()
            wait_for(lambda: pods() == ["team-a/pod-c"], timeout=5, what="pod-c re-attached after restart")
            wait_for(lambda: len(env.status()["agent_namespaces"]) == 1, timeout=3, what="listener after restart")
            rc, out, err = c.curl(env)
            self.assertEqual((rc, out), (0, "200"), err)
        finally:
            os.environ.pop("ATLASGATE_TEST_NODE_NAME", None)
            for s in sandboxes:
                s.close()
            env.close()
            k8s.stop()
            remove_cgroup(node_root)


if __name__ == "__main__":
    unittest.main(verbosity=2)
