"""The container image, built and run with a real engine (Debian's podman with
runc, confined to the test's temp dir as in test_containers.py).

  * scripts/image --binary builds the Dockerfile from the build dir's binary
    (the Dockerfile's --target prebuilt) on a debian:12-slim made with mmdebstrap
    (the tarball is cached under the build dir, image-base-cache/, for 7
    days; ATLASGATE_IMAGE_FRESH=1 ignores it: from empty). Asserted: the
    image is at most 25 MB above the base; its entrypoint is the binary
    (exec form, no shell); it adds only the binary, libraries, CA
    certificates and its version file (no apt lists or caches, no private
    key, no test secret, no build context); its tag is `atlasgate version`.
  * The daemon container runs with the DaemonSet's privileges and mounts
    (deploy/kubernetes/daemonset.yaml: privileged, host pid and network,
    the host's cgroup namespace, /sys/fs/cgroup, /sys/fs/bpf, /proc at
    /host/proc, /run/netns, the state dir, /run/atlasgate, the config and
    the secret read-only) and a config like the ConfigMap's
    (keep_on_exit, audit on stdout), with discovery.containers on the test
    podman's API socket and guard_cgroup on the agents' cgroup parent.
  * Agent containers (no image: --rootfs on a read-only bind of /) labelled
    atlasgate.io/inject=true call the stand-in with curl, trusting the CA
    the daemon publishes (publish_ca_dir) and the stand-in's own CA (so a
    direct connection would succeed and be counted): served and named
    container/<name>; blocked by a container_labels rule (403);
    `podman kill` of the daemon container: calls are refused and nothing
    reaches the stand-in; the daemon container started again: served, same
    name, same CA; the agent container restarted: served.
Skipped in the sanitizer pass (an ASan binary cannot run in the slim image).
"""

import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
import unittest
import urllib.request

from harness import (ACCEPT_V2, ATLASGATE, BUILD, CLIENT_SECRET, HOST, REPO, SANITIZED, Env, PrivilegedTestCase,
                     cgroup2_mount, free_port, remove_cgroup, wait_for)
from test_containers import LABEL, Podman, require_podman

SCRIPT = os.path.join(REPO, "scripts", "image")
PEM_KEY = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----\r?\n[A-Za-z0-9+/=]{40}")
BUDGET = 25 * 1000 * 1000  # bytes above debian:12-slim
DAEMON = "atlasgate-daemon"
# Paths inside the daemon container, as in deploy/kubernetes/.
C_CONFIG, C_SECRETS, C_STATE = "/etc/atlasgate", "/etc/atlasgate-secrets", "/var/lib/atlasgate/state"
C_TRUST, C_RUN, C_SOCKET = "/var/lib/atlasgate/trust", "/run/atlasgate", "/run/podman/podman.sock"
# What the image may add to debian:12-slim.
ALLOWED_PREFIXES = ("/usr/local/bin/atlasgate", "/usr/lib/x86_64-linux-gnu/", "/usr/lib/ssl", "/etc/ssl",
                    "/usr/share/ca-certificates", "/usr/share/atlasgate", "/etc/ld.so.cache",
                    "/var/cache/ldconfig/")  # ldconfig's aux-cache


def limits():
    def cap(limit):
        hard = resource.getrlimit(limit)[1]
        return 4096 if hard == resource.RLIM_INFINITY else min(hard, 4096)
    n, p = cap(resource.RLIMIT_NOFILE), cap(resource.RLIMIT_NPROC)
    return ["--ulimit", f"nofile={n}:{n}", "--ulimit", f"nproc={p}:{p}"]


class ImageTest(PrivilegedTestCase):
    def setUp(self):
        self.t0 = time.monotonic()
        if SANITIZED:
            reason = ("the sanitizer pass's binary is an ASan+UBSan build, which cannot run in the slim image; "
                      "the normal pass builds and runs the image")
            print(f"SKIP: {reason}")
            raise unittest.SkipTest(reason)
        require_podman()
        missing = [p for p in ("mmdebstrap", "strip") if shutil.which(p) is None]
        if missing:
            reason = f"{' and '.join(missing)} not installed (scripts/install-deps installs mmdebstrap and binutils)"
            if os.environ.get("ATLASGATE_REQUIRE_PRIVILEGED") == "1":
                raise AssertionError(f"image test cannot run: {reason} (ATLASGATE_REQUIRE_PRIVILEGED=1)")
            print(f"SKIP: {reason}")
            raise unittest.SkipTest(reason)
        self.env = Env(rules={"default": "allow", "list": [
            {"name": "prod-containers-read-only", "container_labels": "env=prod",
             "method": ["POST", "PUT", "PATCH", "DELETE"], "path": "/api/atlas/v2/**", "action": "block"}]})
        self.podman = None
        self.daemon_cgroup = f"atlasgate-it-{self.env.tag}-daemon"
        self.build_cgroup = f"atlasgate-it-{self.env.tag}-build"
        self.made_netns = False
        try:
            self.podman = Podman(self.env.tmp, self.env.tag)
            # The API socket alone goes into the daemon container.
            sockdir = os.path.join(self.env.tmp, "podman-socket")
            os.makedirs(sockdir)
            self.podman.socket = os.path.join(sockdir, "podman.sock")
            # overlay, not test_containers' vfs, when the temp dir allows it
            # (not itself on overlayfs): vfs copies the whole tree per layer,
            # ~2 GB to write and then delete for this image.
            if self.overlay_ok(self.podman.dir):
                self.podman.base[self.podman.base.index("vfs")] = "overlay"
            self.podman.env["TMPDIR"] = os.path.join(self.podman.dir, "tmp")
            os.makedirs(self.podman.env["TMPDIR"], exist_ok=True)
        except BaseException:
            self.tearDown()
            raise

    def tearDown(self):
        problems = []
        t = time.monotonic()
        try:
            if getattr(self, "podman", None):
                if self.podman.cli("container", "exists", DAEMON, check=False).returncode == 0:
                    logs = self.podman.cli("logs", DAEMON, check=False)
                    with open(self.env.daemon_log_path, "a") as f:
                        f.write(logs.stdout + logs.stderr)
                pm, cli, stop = self.podman, self.podman.cli, self.podman.stop_service

                def slow(what, fn):  # reports the teardown steps that take long
                    def timed(*a, **k):
                        t0 = time.monotonic()
                        try:
                            return fn(*a, **k)
                        finally:
                            if time.monotonic() - t0 > 2:
                                print(f"\n  teardown: {what} {' '.join(map(str, a))[:60]} took "
                                      f"{time.monotonic() - t0:.0f} s", file=sys.stderr)
                    return timed
                pm.cli, pm.stop_service = slow("podman", cli), slow("podman service stop", stop)
                pm.close()  # containers, service, bind mount, cgroups, storage (images)
                # The overlay driver keeps its directory bind-mounted on itself.
                # Never delete while anything (the bind of /) is mounted below.
                left = self.unmount_under(pm.dir)
                problems += left
                if not left and os.path.isdir(pm.dir):
                    subprocess.run(["rm", "-rf", "--one-file-system", pm.dir], check=False)
                for name in (self.podman.cgroup_parent, self.daemon_cgroup, self.build_cgroup):
                    try:
                        self.remove_v1_and_v2(name)
                    except AssertionError as e:
                        problems.append(str(e))
            if getattr(self, "made_netns", False):
                try:
                    os.rmdir("/run/netns")
                except OSError:
                    pass
        finally:
            if getattr(self, "env", None):
                keep = os.environ.get("ATLASGATE_KEEP_TMP")
                if problems:  # something stayed mounted: the temp dir must not be walked
                    os.environ["ATLASGATE_KEEP_TMP"] = "1"
                try:
                    self.env.close()  # stand-in, agents cgroup, pins, temp dir
                finally:
                    if keep is None:
                        os.environ.pop("ATLASGATE_KEEP_TMP", None)
                    else:
                        os.environ["ATLASGATE_KEEP_TMP"] = keep
        print(f"\n  teardown took {time.monotonic() - t:.0f} s", file=sys.stderr)
        print(f"  test took {time.monotonic() - self.t0:.0f} s", file=sys.stderr)
        if problems:
            raise AssertionError("; ".join(problems))

    @staticmethod
    def unmount_under(path):
        """Unmounts what is mounted below `path` (deepest first); returns what stays."""
        def mounts():
            with open("/proc/self/mountinfo") as f:
                return [line.split()[4] for line in f
                        if line.split()[4] == path or line.split()[4].startswith(path + "/")]
        for m in sorted(mounts(), key=len, reverse=True):
            subprocess.run(["umount", m], check=False, capture_output=True)
        return [f"still mounted: {m}" for m in mounts()]

    @staticmethod
    def overlay_ok(path):
        if os.environ.get("ATLASGATE_IMAGE_STORAGE") == "vfs":
            return False
        fstype = subprocess.run(["stat", "-f", "-c", "%T", path], capture_output=True, text=True).stdout.strip()
        with open("/proc/filesystems") as f:
            has_overlay = any(line.split()[-1] == "overlay" for line in f if line.strip())
        return has_overlay and fstype in ("ext2/ext3", "xfs", "btrfs", "tmpfs")

    @staticmethod
    def remove_v1_and_v2(name, timeout=10):
        """The cgroups podman made for `name` in every hierarchy (cgroup2 and
        v1), retried: conmon may still be leaving them when `podman rm`
        returns. Fails when one is left."""
        root = os.path.dirname(cgroup2_mount())
        deadline = time.monotonic() + timeout
        while True:
            left = []
            for h in sorted(os.listdir(root)):
                path = os.path.join(root, h, name)
                if not os.path.isdir(path):
                    continue
                if os.path.exists(os.path.join(path, "cgroup.controllers")):
                    remove_cgroup(path)
                    continue
                for d, _, _ in sorted(os.walk(path), key=lambda w: -len(w[0])):
                    try:
                        os.rmdir(d)
                    except OSError:
                        left.append(d)
            if not left:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"cgroups left behind: {left}")
            time.sleep(0.2)

    # --- helpers ---------------------------------------------------------------

    def build_image(self):
        pm = self.podman
        engine = " ".join(pm.base)
        cache = os.path.join(BUILD, "image-base-cache")
        if os.environ.get("ATLASGATE_IMAGE_FRESH") == "1":
            cache = os.path.join(self.env.tmp, "base-cache")
        iidfile = os.path.join(self.env.tmp, "iid")
        started = time.monotonic()
        # The build's RUN containers in a cgroup parent of ours (removed in
        # tearDown even when the build is cut short).
        p = subprocess.run([SCRIPT, "--binary", ATLASGATE, "--base-cache", cache, "--iidfile", iidfile,
                            f"--build-opt=--cgroup-parent=/{self.build_cgroup}"],
                           env=dict(pm.env, ATLASGATE_ENGINE=engine), capture_output=True, text=True, timeout=900)
        took = time.monotonic() - started
        self.assertEqual(p.returncode, 0, f"scripts/image failed:\n{p.stdout}\n{p.stderr[-4000:]}")
        summary = [line for line in p.stderr.splitlines() if line.startswith("scripts/image:")]
        print("\n  " + "\n  ".join(summary), file=sys.stderr)
        print(f"  image built in {took:.0f} s", file=sys.stderr)
        with open(iidfile) as f:
            return p.stdout.strip(), f.read().strip(), took

    def inspect(self, ref):
        return json.loads(self.podman.cli("image", "inspect", ref).stdout)[0]

    def run_daemon(self, image, config):
        env, pm = self.env, self.podman
        etc, secrets = os.path.join(env.tmp, "etc"), os.path.join(env.tmp, "secrets")
        for d in (etc, secrets, env.state_dir, env.run_dir, self.trust):
            os.makedirs(d, exist_ok=True)
        shutil.copy(os.path.join(env.pki, "upstream-ca.pem"), os.path.join(etc, "upstream-ca.pem"))
        shutil.copy(env.secret_file, os.path.join(secrets, "client-secret"))
        os.chmod(os.path.join(secrets, "client-secret"), 0o400)
        with open(os.path.join(etc, "atlasgate.yaml"), "w") as f:
            json.dump(config, f, indent=2)
        if not os.path.isdir("/run/netns"):
            os.makedirs("/run/netns")
            self.made_netns = True
        # deploy/kubernetes/daemonset.yaml: privileged, hostPID, hostNetwork
        # (and so the host's cgroup namespace, as a privileged pod with
        # cgroup v1/hybrid nodes has), the same hostPath mounts.
        pm.cli("run", "-d", "--name", DAEMON, "--privileged", "--pid=host", "--network=host", "--cgroupns=host",
               "--cgroup-parent", "/" + self.daemon_cgroup, *limits(),
               "-e", "NODE_NAME=test-node", "-e", "POD_NAMESPACE=atlasgate-system",
               "-v", f"{etc}:{C_CONFIG}:ro",
               "-v", f"{secrets}:{C_SECRETS}:ro",
               "-v", "/sys/fs/cgroup:/sys/fs/cgroup",
               # Bidirectional in the DaemonSet; this host's /sys/fs/bpf is a
               # private mount, so the pins are shared through the bind itself.
               "-v", "/sys/fs/bpf:/sys/fs/bpf",
               "-v", "/proc:/host/proc:ro",
               "-v", "/run/netns:/run/netns:ro,rslave",
               "-v", f"{env.state_dir}:{C_STATE}",
               "-v", f"{env.run_dir}:{C_RUN}",
               "-v", f"{self.trust}:{C_TRUST}",
               "-v", f"{os.path.dirname(pm.socket)}:{os.path.dirname(C_SOCKET)}",
               image)  # the image's CMD: daemon --config /etc/atlasgate/atlasgate.yaml

    def wait_daemon(self, after=None):
        """Until the daemon container's daemon answers /healthz and `status` (a new pid when `after`)."""
        runtime = os.path.join(self.env.run_dir, "runtime.json")

        def ready():
            state = self.podman.cli("inspect", "--format", "{{.State.Status}}", DAEMON).stdout.strip()
            if state not in ("running", "created", "configured"):
                raise AssertionError(f"daemon container {state}:\n{self.logs()[-3000:]}")
            try:
                with open(runtime) as f:
                    pid = json.load(f).get("pid")
                with urllib.request.urlopen(f"http://{self.admin}/healthz", timeout=2) as r:
                    ok = r.status == 200
            except (OSError, ValueError):
                return None
            return pid if ok and pid != after else None
        pid = wait_for(ready, timeout=30, what="the daemon container ready")
        # hostPID: the daemon's pid is the host's, and it is the container's init.
        host_pid = int(self.podman.cli("inspect", "--format", "{{.State.Pid}}", DAEMON).stdout)
        self.assertEqual(pid, host_pid)
        return pid

    def logs(self):
        p = self.podman.cli("logs", DAEMON, check=False)
        return p.stdout + p.stderr

    def audit(self):
        """audit_log "-": JSON lines on the container's stdout, as `kubectl logs` shows them."""
        out = self.podman.cli("logs", DAEMON, check=False).stdout
        recs = []
        for line in out.splitlines():
            if line.startswith("{"):
                try:
                    r = json.loads(line)
                except ValueError:
                    continue
                if "decision" in r:
                    recs.append(r)
        return recs

    def attached(self):
        cs = self.env.status().get("containers", {}).get("attached_containers", [])
        return {c["container"]: c["cgroup_id"] for c in cs}

    def agent(self, name, labels):
        pm = self.podman
        args = ["run", "-d", "--name", name, "--network=host", "--cgroup-parent", "/" + pm.cgroup_parent, *limits(),
                "-v", f"{self.trust}:{self.trust}:ro", "-v", f"{self.both_dir}:{self.both_dir}:ro"]
        for l in labels:
            args += ["--label", l]
        pm.cli(*args, "--rootfs", pm.rootfs, "sleep", "infinity")

    def curl(self, container, method="GET", path="/api/atlas/v2/groups"):
        p = self.podman.cli("exec", container, "curl", "-sS", "--max-time", "15", "--cacert", self.both,
                            "--resolve", f"{HOST}:443:{self.env.fake_addr}", "-H", f"Accept: {ACCEPT_V2}",
                            "-X", method, "-o", "/dev/null", "-w", "%{http_code}", f"https://{HOST}{path}",
                            check=False)
        return p.stdout.strip(), p.stderr.strip()

    def direct(self):
        return [r for r in self.env.fake.api_requests()
                if not r["header_map"].get("authorization", "").startswith("Bearer ")]

    # --- the test ----------------------------------------------------------------

    def test_image_builds_small_and_runs_the_daemonset_way(self):
        env, pm = self.env, self.podman

        # --- the image ---
        tag, iid, build_took = self.build_image()
        version = subprocess.run([ATLASGATE, "version"], capture_output=True, text=True, check=True).stdout.split()[-1]
        self.assertEqual(tag, f"atlasgate:{version}")
        img, base = self.inspect(iid), self.inspect("debian:12-slim")
        extra = img["Size"] - base["Size"]
        print(f"  image {img['Size'] / 1e6:.1f} MB, debian:12-slim {base['Size'] / 1e6:.1f} MB, "
              f"+{extra / 1e6:.1f} MB (budget +{BUDGET / 1e6:.0f} MB)", file=sys.stderr)
        self.assertLessEqual(extra, BUDGET)
        cfg = img["Config"]
        self.assertEqual(cfg["Entrypoint"], ["/usr/local/bin/atlasgate"])  # exec form: no shell in between
        self.assertEqual(cfg["Cmd"], ["daemon", "--config", "/etc/atlasgate/atlasgate.yaml"])
        self.assertFalse([e for e in cfg.get("Env") or [] if not e.startswith("PATH=")], cfg.get("Env"))
        history = json.dumps(json.loads(pm.cli("history", "--format", "json", "--no-trunc", iid).stdout))
        self.assertNotIn(CLIENT_SECRET, history)
        # What the image adds to the base: only what it needs.
        diff = pm.cli("image", "diff", "--format", "json", iid, "debian:12-slim").stdout
        changes = json.loads(diff)
        added = sorted(set(changes.get("added", []) + changes.get("changed", [])))
        self.assertIn("/usr/local/bin/atlasgate", added)
        stray = [p for p in added if not any(p == a.rstrip("/") or p.startswith(a) or a.startswith(p + "/")
                                             for a in ALLOWED_PREFIXES)]
        self.assertEqual(stray, [], "the image adds files beyond the binary, libraries and CA certificates")
        self.assertEqual(changes.get("deleted", []), [])
        mnt = pm.cli("image", "mount", iid).stdout.strip()
        try:
            lists = os.path.join(mnt, "var/lib/apt/lists")
            left = [f for f in os.listdir(lists) if f not in ("lock", "partial", "auxfiles")] \
                if os.path.isdir(lists) else []
            self.assertEqual(left, [], "apt lists in the image")
            debs = [f for d in ("var/cache/apt", "var/cache/apt/archives") if os.path.isdir(os.path.join(mnt, d))
                    for f in os.listdir(os.path.join(mnt, d)) if f.endswith((".bin", ".deb"))]
            self.assertEqual(debs, [], "apt caches in the image")
            secrets = []
            for p in added:
                f = os.path.join(mnt, p.lstrip("/"))
                if os.path.isfile(f) and not os.path.islink(f):
                    with open(f, "rb") as fh:
                        data = fh.read()
                    # A key itself: the PEM header followed by base64 (the
                    # daemon's code names the header as a string constant).
                    if PEM_KEY.search(data) or CLIENT_SECRET.encode() in data:
                        secrets.append(p)
            self.assertEqual(secrets, [], "a private key or the test's secret in the image")
            binary = os.path.join(mnt, "usr/local/bin/atlasgate")
            self.assertLess(os.path.getsize(binary), os.path.getsize(ATLASGATE))  # stripped
            self.assertFalse(os.stat(binary).st_mode & 0o022, "the binary is writable by group/others")
            with open(os.path.join(mnt, "usr/share/atlasgate/version")) as f:
                self.assertEqual(f.read().strip(), version)
            # The system trust store, where OpenSSL's defaults look (the
            # upstream TLS to the real Atlas verifies against it).
            self.assertTrue(os.path.isfile(os.path.join(mnt, "etc/ssl/certs/ca-certificates.crt")))
            self.assertEqual(os.readlink(os.path.join(mnt, "usr/lib/ssl/certs")), "/etc/ssl/certs")
            self.assertTrue(any(f.endswith(".0") for f in os.listdir(os.path.join(mnt, "etc/ssl/certs"))))
            # No package manager state for what was copied in: the slim
            # base's dpkg database is untouched (the list is in the image).
            with open(os.path.join(mnt, "usr/share/atlasgate/runtime-packages")) as f:
                pkgs = {line.split()[0] for line in f if line.strip()}
            self.assertTrue({"libbpf1", "libssl3", "ca-certificates"} <= pkgs, pkgs)
        finally:
            pm.cli("image", "unmount", iid, check=False)

        # --- the daemon container, the DaemonSet's way ---
        pm.start_service()
        self.trust = os.path.join(env.tmp, "trust")
        self.admin = f"127.0.0.1:{free_port()}"
        config = {
            "listen": {"port": env.port, "admin": self.admin},
            "state_dir": C_STATE,
            "audit_log": "-",
            "log_level": "debug",
            "agents": {"cgroup": env.agents_cgroup_name},
            "targets": [{"host": HOST, "addresses": [env.fake_addr], "resolve": False,
                         "upstream_ca": f"{C_CONFIG}/upstream-ca.pem",
                         "credentials": {"service_account": {
                             "client_id": env.config["targets"][0]["credentials"]["service_account"]["client_id"],
                             "client_secret_file": f"{C_SECRETS}/client-secret"}}}],
            "rules": env.config["rules"],
            "bpf": {"keep_on_exit": True, "pin_root": env.pin_root},
            "limits": {"idle_timeout": 5, "upstream_timeout": 5},
            "publish_ca_dir": C_TRUST,
            "discovery": {"containers": {"socket": C_SOCKET, "label": LABEL, "guard_cgroup": pm.cgroup_parent}},
        }
        self.run_daemon(iid, config)
        t = time.monotonic()
        pid1 = self.wait_daemon()
        print(f"  daemon container ready in {time.monotonic() - t:.1f} s", file=sys.stderr)
        wait_for(lambda: os.path.exists(os.path.join(self.trust, "trust-bundle.pem")), timeout=10,
                 what="the CA published")
        self.assertFalse(os.path.exists(os.path.join(self.trust, "ca.key")))
        # The agents trust the published CA and the stand-in's own CA: a
        # connection that went direct would succeed and be counted.
        self.both_dir = os.path.join(env.tmp, "agent-trust")
        os.makedirs(self.both_dir)
        self.both = os.path.join(self.both_dir, "both.pem")
        with open(self.both, "w") as f:
            for src in (os.path.join(self.trust, "trust-bundle.pem"), os.path.join(env.pki, "upstream-ca.pem")):
                with open(src) as g:
                    f.write(g.read())
        os.chmod(self.both_dir, 0o755)

        # --- agents: served, named, blocked by rule ---
        self.agent("agent-a", [LABEL, "env=dev"])
        self.agent("agent-p", [LABEL, "env=prod"])
        wait_for(lambda: sorted(self.attached()) == ["container/agent-a", "container/agent-p"], timeout=10,
                 what="both agent containers attached")
        out, err = self.curl("agent-a")
        self.assertEqual(out, "200", err)
        rec = self.audit()[-1]
        self.assertEqual((rec["agent"], rec["decision"]), ("container/agent-a", "allow"))
        self.assertTrue(env.fake.api_requests()[-1]["header_map"]["authorization"].startswith("Bearer "))
        out, err = self.curl("agent-p", method="DELETE", path="/api/atlas/v2/groups/x")
        self.assertEqual(out, "403", err)
        rec = self.audit()[-1]
        self.assertEqual((rec["agent"], rec["rule"]), ("container/agent-p", "prod-containers-read-only"))
        out, err = self.curl("agent-p")
        self.assertEqual(out, "200", err)
        self.assertEqual(self.direct(), [])

        # --- the daemon container killed: fail closed ---
        pm.cli("kill", DAEMON)
        wait_for(lambda: pm.cli("inspect", "--format", "{{.State.Status}}", DAEMON).stdout.strip() == "exited",
                 timeout=10, what="the daemon container exited")
        seen = len(env.fake.api_requests())
        for name in ("agent-a", "agent-p"):
            out, err = self.curl(name)
            self.assertEqual(out, "000", f"{name} was answered while the daemon was down: {out} {err}")
            # CURLE_COULDNT_CONNECT at once: refused (the pinned links still
            # redirect to the listener port, where nothing listens).
            self.assertIn("curl: (7)", err)
        self.assertEqual(len(env.fake.api_requests()), seen, "a request reached the stand-in while atlasgate was down")
        self.assertEqual(self.direct(), [])

        # --- started again: the same CA, the same names, served ---
        with open(os.path.join(self.trust, "ca.pem")) as f:
            ca = f.read()
        pm.cli("start", DAEMON)
        t = time.monotonic()
        self.wait_daemon(after=pid1)
        wait_for(lambda: sorted(self.attached()) == ["container/agent-a", "container/agent-p"], timeout=10,
                 what="the agents named again after the daemon's restart")
        print(f"  daemon container restarted: ready and agents named in {time.monotonic() - t:.1f} s",
              file=sys.stderr)
        with open(os.path.join(self.trust, "ca.pem")) as f:
            self.assertEqual(f.read(), ca, "the restarted daemon has a new CA: state_dir lost")
        out, err = self.curl("agent-a")
        self.assertEqual(out, "200", err)
        self.assertEqual(self.audit()[-1]["agent"], "container/agent-a")

        # --- the agent container restarted: served, same name ---
        old = self.attached()["container/agent-a"]
        pm.cli("restart", "--time", "0", "agent-a")
        wait_for(lambda: self.attached().get("container/agent-a", old) != old, timeout=10,
                 what="agent-a's new cgroup named")
        out, err = self.curl("agent-a")
        self.assertEqual(out, "200", err)
        self.assertEqual(self.audit()[-1]["agent"], "container/agent-a")
        self.assertEqual(self.direct(), [], "a request reached the stand-in without atlasgate")
        print(f"  build {build_took:.0f} s of {time.monotonic() - self.t0:.0f} s so far", file=sys.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
