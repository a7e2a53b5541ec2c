"""Container discovery with a real engine: Debian's podman (with runc) serves
its Docker-compatible API (`podman system service`) on a socket in the test's
temp dir; the daemon (discovery.containers) attaches each running container
labelled atlasgate.io/inject=true, names it container/<name>, applies
container_labels rules, detaches it when it is removed, re-attaches its new
cgroup when it is restarted, and survives the engine itself restarting.

How podman runs here (a hybrid cgroup host: cgroup v1 controllers, cgroup2 at
/sys/fs/cgroup/unified), all of it confined to the temp dir:
  * containers.conf in the temp dir (CONTAINERS_CONF): runtime runc (crun 1.8
    refuses the hybrid layout), cgroup_manager cgroupfs (no systemd), file
    events and file locks (no journald, nothing in /dev/shm), own tmp dirs;
    --root/--runroot under the temp dir, the vfs storage driver;
  * no image (no registry is reachable): the rootfs is a read-only bind mount
    of the host's / (`--rootfs /` itself fails: runc's mounts would shadow
    their own sources), --network=host;
  * --cgroup-parent=/atlasgate-it-<tag>-podman, so that the cgroups podman
    makes (in every hierarchy; runc puts the container in the cgroup2 one too)
    are ours to remove;
  * --ulimit nofile=4096 nproc=4096: podman's defaults are above this host's
    hard limits, and raising them needs CAP_SYS_RESOURCE.
Cleanup: containers (podman rm), the service (by PID), the bind mount, the
cgroups, the temp dir.
"""

import json
import os
import resource
import shutil
import signal
import subprocess
import time
import unittest

from harness import (ACCEPT_V2, HOST, Env, PrivilegedTestCase, cgroup2_mount, remove_cgroup, wait_for)

LABEL = "atlasgate.io/inject=true"


def require_podman():
    """Skip (or fail under ATLASGATE_REQUIRE_PRIVILEGED=1) when podman or runc is missing."""
    missing = [p for p in ("podman", "runc") if shutil.which(p) is None]
    if not missing:
        return
    reason = f"{' and '.join(missing)} not installed (scripts/install-deps installs them)"
    if os.environ.get("ATLASGATE_REQUIRE_PRIVILEGED") == "1":
        raise AssertionError(f"container test cannot run: {reason} (ATLASGATE_REQUIRE_PRIVILEGED=1)")
    print(f"SKIP: {reason}")
    raise unittest.SkipTest(reason)


class Podman:
    """A podman confined to `tmp`, and its API service."""

    def __init__(self, tmp, tag):
        self.dir = os.path.join(tmp, "podman")
        os.makedirs(self.dir)
        self.rootfs = os.path.join(self.dir, "rootfs")
        self.run_dir = os.path.join(self.rootfs, "run")
        self.socket = os.path.join(self.dir, "podman.sock")
        self.cgroup_parent = f"atlasgate-it-{tag}-podman"
        self.mounted = False
        self.service = None
        conf = os.path.join(self.dir, "containers.conf")
        with open(conf, "w") as f:
            f.write(f"""[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
lock_type = "file"
tmp_dir = "{self.dir}/tmp"
volume_path = "{self.dir}/volumes"
static_dir = "{self.dir}/static"
[network]
network_config_dir = "{self.dir}/net"
""")
        self.env = dict(os.environ, CONTAINERS_CONF=conf)
        self.base = ["podman", "--root", os.path.join(self.dir, "root"), "--runroot", os.path.join(self.dir, "runroot"),
                     "--storage-driver", "vfs"]
        os.makedirs(self.rootfs)
        subprocess.run(["mount", "--bind", "/", self.rootfs], check=True)
        self.mounted = True
        subprocess.run(["mount", "-o", "remount,bind,ro", self.rootfs], check=True)
        # Private, so that nothing mounted under it reaches the host's /. Its
        # /run is a tmpfs of its own: runc makes /run/.containerenv there,
        # which a read-only bind of a / without that file cannot hold.
        subprocess.run(["mount", "--make-private", self.rootfs], check=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755,size=16m", "tmpfs", self.run_dir], check=True)

    def cli(self, *args, check=True, timeout=60):
        p = subprocess.run([*self.base, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} failed ({p.returncode}): {p.stderr.strip()}")
        return p

    def start_service(self):
        self.log = open(os.path.join(self.dir, "service.log"), "a")
        self.service = subprocess.Popen([*self.base, "system", "service", "--time=0", f"unix://{self.socket}"],
                                        env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(lambda: os.path.exists(self.socket), timeout=15, what="podman API socket")

    def stop_service(self):
        if self.service and self.service.poll() is None:
            self.service.send_signal(signal.SIGTERM)
            try:
                self.service.wait(10)
            except subprocess.TimeoutExpired:
                self.service.kill()
                self.service.wait()
        if self.service:
            self.log.close()
        self.service = None

    def run(self, name, labels, check=True):
        # Modest limits: podman's defaults (and even 48000 processes here)
        # are refused without CAP_SYS_RESOURCE.
        def cap(limit):
            hard = resource.getrlimit(limit)[1]
            return 4096 if hard == resource.RLIM_INFINITY else min(hard, 4096)
        nofile, nproc = cap(resource.RLIMIT_NOFILE), cap(resource.RLIMIT_NPROC)
        args = ["run", "-d", "--name", name, "--network=host", "--cgroup-parent", "/" + self.cgroup_parent,
                "--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", f"nproc={nproc}:{nproc}"]
        for l in labels:
            args += ["--label", l]
        return self.cli(*args, "--rootfs", self.rootfs, "sleep", "infinity", check=check)

    def close(self):
        self.cli("rm", "--all", "--force", "--time", "0", check=False, timeout=120)
        self.stop_service()
        # Every cgroup hierarchy podman made our parent in (cgroup2 and v1).
        root = os.path.dirname(cgroup2_mount())
        for h in sorted(os.listdir(root)):
            path = os.path.join(root, h, self.cgroup_parent)
            if os.path.isdir(path):
                if os.path.exists(os.path.join(path, "cgroup.controllers")):
                    remove_cgroup(path)
                else:
                    for d, _, _ in sorted(os.walk(path), key=lambda w: -len(w[0])):
                        try:
                            os.rmdir(d)
                        except OSError:
                            pass
        if self.mounted:
            if os.path.ismount(self.run_dir):
                subprocess.run(["umount", self.run_dir], check=False)
            subprocess.run(["umount", self.rootfs], check=False)
            # Never delete through a mount of the host's root.
            if os.path.ismount(self.rootfs):
                subprocess.run(["umount", "-l", self.rootfs], check=False)
            self.mounted = os.path.ismount(self.rootfs)
        if not self.mounted:
            os.rmdir(self.rootfs)
            subprocess.run(["rm", "-rf", "--one-file-system", self.dir], check=False)


class PodmanTestCase(PrivilegedTestCase):
    """An Env and a confined podman with its API service, per test."""

    def env_options(self):
        return {}

    def setUp(self):
        require_podman()
        self.env = Env(**self.env_options())
        self.podman = None
        try:
            self.podman = Podman(self.env.tmp, self.env.tag)
            # Can podman run a container here at all?
            p = self.podman.run("probe", [], check=False)
            if p.returncode != 0:
                reason = f"podman cannot run a container here: {p.stderr.strip()[-400:]}"
                if os.environ.get("ATLASGATE_REQUIRE_PRIVILEGED") == "1":
                    raise AssertionError(reason)
                print(f"SKIP: {reason}")
                raise unittest.SkipTest(reason)
            self.podman.cli("rm", "--force", "--time", "0", "probe")
            self.podman.start_service()
        except BaseException:
            self.tearDown()
            raise

    def tearDown(self):
        outcome = getattr(self, "_outcome", None)
        if outcome is not None and not getattr(outcome, "success", True):
            # CI keeps only this output: the discovery lines say why.
            lines = [l for l in self.env.daemon_output().splitlines() if "container" in l]
            print("\n  daemon log (container lines, last 60):\n    " + "\n    ".join(lines[-60:]))
        if self.podman:
            self.podman.close()
        self.env.close()


class ContainersTest(PodmanTestCase):
    def env_options(self):
        return {"rules": {"default": "allow", "list": [
            {"name": "prod-containers-read-only", "container_labels": "env=prod", "method": ["POST", "DELETE"],
             "path": "/api/atlas/v2/**", "action": "block"}]}}

    # --- helpers ---------------------------------------------------------------

    def attached(self):
        """container name -> (cgroup, cgroup id), from `atlasgate status`."""
        cs = self.env.status().get("containers", {}).get("attached_containers", [])
        return {c["container"]: (c["cgroup"], c["cgroup_id"]) for c in cs}

    def kernel_attached(self):
        return {a["cgroup_id"] for a in self.env.status()["attached"]}

    def curl(self, container, method="GET", path="/api/atlas/v2/groups"):
        p = self.podman.cli("exec", container, "curl", "-sS", "--max-time", "15", "--cacert", self.env.trust_bundle(),
                            "--resolve", f"{HOST}:443:{self.env.fake_addr}", "-H", f"Accept: {ACCEPT_V2}",
                            "-X", method, "-o", "/dev/null", "-w", "%{http_code}", f"https://{HOST}{path}",
                            check=False)
        return p.stdout.strip(), p.stderr

    # --- the test ----------------------------------------------------------------

    def test_containers_are_discovered_attached_named_and_detached(self):
        env, pm = self.env, self.podman
        pm.run("agent-a", [LABEL, "env=dev"])
        pm.run("agent-p", [LABEL, "env=prod"])
        pm.run("plain", ["env=prod"])  # no inject label: not ours
        env.config["discovery"] = {"containers": {"socket": pm.socket, "label": LABEL}}
        env.write_config()
        env.start_daemon()
        wait_for(lambda: sorted(self.attached()) == ["container/agent-a", "container/agent-p"], timeout=10,
                 what="both labelled containers attached")
        watch = env.status()["containers"]["watch"]
        self.assertIn("watching", watch)
        a_cgroup, a_id = self.attached()["container/agent-a"]
        self.assertTrue(a_cgroup.startswith(os.path.join(cgroup2_mount(), pm.cgroup_parent, "libpod-")), a_cgroup)
        self.assertIn(a_id, self.kernel_attached())

        # Served, named container/agent-a, token injected.
        out, err = self.curl("agent-a")
        self.assertEqual(out, "200", err)
        rec = env.audit()[-1]
        self.assertEqual(rec["agent"], "container/agent-a")
        self.assertEqual(rec["decision"], "allow")
        auth = env.fake.api_requests()[-1]["header_map"]["authorization"]
        self.assertTrue(auth.startswith("Bearer "), auth)
        # container_labels: agent-p (env=prod) may not write; agent-a may.
        out, err = self.curl("agent-p", method="DELETE", path="/api/atlas/v2/groups/x")
        self.assertEqual(out, "403", err)
        self.assertEqual(env.audit()[-1]["agent"], "container/agent-p")
        self.assertEqual(env.audit()[-1]["rule"], "prod-containers-read-only")
        out, err = self.curl("agent-a", method="DELETE", path="/api/atlas/v2/groups/x")
        self.assertNotEqual(out, "403", err)
        self.assertEqual(env.audit()[-1]["rule"], "default")
        # The unlabelled container is not intercepted (its curl goes direct
        # and fails: the stand-in's certificate is not in the trust bundle).
        before = len(env.audit())
        out, err = self.curl("plain")
        self.assertNotEqual(out, "200")
        self.assertEqual(len(env.audit()), before)

        # Restart: a new cgroup at the same path, attached within a second or two.
        t0 = time.monotonic()
        pm.cli("restart", "--time", "0", "agent-a")
        restarted = time.monotonic()
        wait_for(lambda: self.attached().get("container/agent-a", (None, a_id))[1] != a_id, timeout=5,
                 what="agent-a's new cgroup attached")
        took = time.monotonic() - restarted
        print(f"\n  restart: podman took {restarted - t0:.2f}s, re-attached {took:.2f}s after it returned")
        self.assertLess(took, 2.0)
        _, new_id = self.attached()["container/agent-a"]
        wait_for(lambda: a_id not in self.kernel_attached(), timeout=3, what="the old cgroup's links dropped")
        self.assertIn(new_id, self.kernel_attached())
        out, err = self.curl("agent-a")
        self.assertEqual(out, "200", err)
        self.assertEqual(env.audit()[-1]["agent"], "container/agent-a")

        # Removed: detached.
        _, p_id = self.attached()["container/agent-p"]
        pm.cli("rm", "--force", "--time", "0", "agent-p")
        wait_for(lambda: "container/agent-p" not in self.attached(), timeout=5, what="agent-p detached")
        self.assertNotIn(p_id, self.kernel_attached())

        # The engine restarts; meanwhile a container starts (the CLI needs no
        # service): after the service is back, the relist finds it.
        pm.stop_service()
        wait_for(lambda: "watching" not in env.status()["containers"]["watch"], timeout=5, what="stream lost")
        pm.run("agent-b", [LABEL])
        pm.start_service()
        wait_for(lambda: sorted(self.attached()) == ["container/agent-a", "container/agent-b"], timeout=10,
                 what="agent-b attached after the engine restart")
        out, err = self.curl("agent-b")
        self.assertEqual(out, "200", err)
        self.assertEqual(env.audit()[-1]["agent"], "container/agent-b")
        # agent-a's attachment never moved.
        self.assertEqual(self.attached()["container/agent-a"][1], new_id)


class GuardTest(PodmanTestCase):
    """discovery.containers.guard_cgroup: attached once at the engine's cgroup
    parent, so a restarted container (a new cgroup) is redirected from its
    first connection. A container calls the target continuously while it is
    restarted again and again: no request may reach the stand-in without
    atlasgate. The container trusts the stand-in's own CA too, so a direct
    connection would complete and be counted by the stand-in (a request with
    no Authorization)."""

    RESTARTS = 6

    def test_restarts_never_open_a_window(self):
        self.restart_loop(guard=True)

    def test_restarts_without_guard_keep_the_path(self):
        """Without the guard, a restarted container keeps its cgroup *path*
        (libpod-<id>), which is what the kernel matches (README "Membership"):
        still no window. (A container's very first connections, before
        discovery has seen it, are what only the guard covers: the stand-in's
        log is cleared once the container is served.)"""
        self.restart_loop(guard=False)

    def restart_loop(self, guard):
        env, pm = self.env, self.podman
        env.config["discovery"] = {"containers": {"socket": pm.socket, "label": LABEL}}
        if guard:
            env.config["discovery"]["containers"]["guard_cgroup"] = pm.cgroup_parent
        env.write_config()
        env.start_daemon()
        out = os.path.join(env.tmp, "out")
        os.makedirs(out)
        os.chmod(out, 0o777)
        with open(os.path.join(out, "both.pem"), "w") as f:
            for src in (env.trust_bundle(), os.path.join(env.pki, "upstream-ca.pem")):
                with open(src) as g:
                    f.write(g.read())
        # The rootfs is a read-only bind of /: mount `out` at its own path.
        loop = (f'while :; do curl -s -o /dev/null -w "%{{http_code}}\\n" --max-time 10 --cacert {out}/both.pem '
                f'--resolve {HOST}:443:{env.fake_addr} -H "Accept: {ACCEPT_V2}" '
                f'https://{HOST}/api/atlas/v2/groups >> {out}/codes; sleep 0.05; done')
        nofile = 4096
        pm.cli("run", "-d", "--name", "looper", "--network=host", "--cgroup-parent", "/" + pm.cgroup_parent,
               "--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", f"nproc={nofile}:{nofile}", "--label", LABEL,
               "-v", f"{out}:{out}", "--rootfs", pm.rootfs, "sh", "-c", loop)
        codes = os.path.join(out, "codes")

        def served():
            try:
                with open(codes) as f:
                    return f.read().split().count("200")
            except FileNotFoundError:
                return 0
        wait_for(lambda: served() >= 3, timeout=15, what="the looping container served")
        if not guard:
            env.fake.reset()
        ids = set()
        for i in range(self.RESTARTS):
            before = served()
            pm.cli("restart", "--time", "0", "looper")
            wait_for(lambda: served() > before + 2, timeout=20, what=f"served again after restart {i + 1}")
            ids.add(tuple(sorted(c["cgroup_id"] for c in env.status()["containers"]["attached_containers"])))
        pm.cli("stop", "--time", "0", "looper")
        with open(codes) as f:
            got = f.read().split()
        api = env.fake.api_requests()
        direct = [r for r in api if not r["header_map"].get("authorization", "").startswith("Bearer ")]
        print(f"\n  {'guard' if guard else 'no guard'}: {self.RESTARTS} restarts, {len(got)} calls ({got.count('200')} served, "
              f"{len(got) - got.count('200')} refused or cut by the restart), {len(api)} reached the stand-in, "
              f"{len(direct)} of them without atlasgate")
        self.assertEqual(direct, [], "a request reached the stand-in without atlasgate")
        # (A request may be served while its curl is killed by the restart.)
        if guard:
            self.assertGreaterEqual(len(api), got.count("200"))
        self.assertGreaterEqual(len(ids), 2, "the container never got a new cgroup")
        self.assertTrue(all(r["agent"] == "container/looper" for r in env.audit()), {r["agent"] for r in env.audit()})
        print(f"  connections held until discovery named the new cgroup: "
              f"{env.status()['counters']['held_for_discovery']}")


if __name__ == "__main__":
    unittest.main(verbosity=2)
