"""Shared harness of the privileged integration tests.

Everything here is real: a cgroup v2 agents cgroup, the BPF programs loaded
and attached by the real daemon, real TLS, the Atlas stand-in
(tests/fake_atlas) on a 127.x address, and clients started through
scripts/atlasgate-run. Each Env cleans up what it made: the daemon and the
stand-in (by PID), its cgroups, its bpffs pin directory, its temp dir.

Not root: tests are skipped with the reason printed, unless
ATLASGATE_REQUIRE_PRIVILEGED=1, which turns the skip into a failure.
"""

import json
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("ATLASGATE_BUILD_DIR", os.path.join(REPO, "build"))
ATLASGATE = os.path.join(BUILD, "atlasgate")
LAUNCHER = os.path.join(REPO, "scripts", "atlasgate-run")
FAKE_ATLAS = os.path.join(REPO, "tests", "fake_atlas", "fake_atlas.py")
MAKE_PKI = os.path.join(REPO, "tests", "fake_atlas", "make_pki.sh")
# Debian's interpreter: it has python3-requests (a pyenv one may not).
SYSTEM_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable

HOST = "cloud.mongodb.com"
CLIENT_ID = "mdb_sa_id_5f0000000000000000000fa1"
CLIENT_SECRET = "mdb_sa_sk_fake-atlas-client-secret"
PROJECT_ID = "5f0000000000000000000001"
ACCEPT_V2 = "application/vnd.atlas.2025-03-12+json"


def require_root(test=None):
    """Skip (or fail, under ATLASGATE_REQUIRE_PRIVILEGED=1) when not root."""
    if os.geteuid() == 0 and os.path.exists(ATLASGATE):
        return
    reason = "needs root (real cgroups and BPF)" if os.geteuid() != 0 else f"{ATLASGATE} is not built"
    if os.environ.get("ATLASGATE_REQUIRE_PRIVILEGED") == "1":
        raise AssertionError(f"privileged test cannot run: {reason} (ATLASGATE_REQUIRE_PRIVILEGED=1)")
    print(f"SKIP: {reason}", file=sys.stderr)
    raise unittest.SkipTest(reason)


def cgroup2_mount():
    with open("/proc/self/mountinfo") as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            if post.split()[0] == "cgroup2" and pre.split()[3] == "/":
                return pre.split()[4]
    raise RuntimeError("no cgroup2 mount")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout=10.0, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = predicate()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


# The daemon under test is the ASan+UBSan build (scripts/test's second pass):
# memory figures (RSS) are the sanitizer's, not the daemon's.
SANITIZED = os.environ.get("ATLASGATE_SANITIZED") == "1"

SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                     "SUMMARY: UndefinedBehaviorSanitizer")


def sanitizer_reports(output):
    """Lines of an ASan/LSan/UBSan report in a daemon's output (the sanitizer
    build of scripts/test); a report fails the test that started the daemon."""
    return [line for line in output.splitlines() if any(m in line for m in SANITIZER_MARKERS)][:20]


def remove_cgroup(path):
    """Kills what is left in a cgroup tree and removes it, leaves first."""
    if not os.path.isdir(path):
        return
    for root, dirs, _ in os.walk(path, topdown=False):
        for d in dirs:
            remove_cgroup_dir(os.path.join(root, d))
    remove_cgroup_dir(path)


def remove_cgroup_dir(path):
    kill = os.path.join(path, "cgroup.kill")
    try:
        if os.path.exists(kill):
            with open(kill, "w") as f:
                f.write("1")
        else:
            with open(os.path.join(path, "cgroup.procs")) as f:
                for pid in f.read().split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
    except OSError:
        pass
    deadline = time.monotonic() + 5
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class FakeAtlas:
    """The Atlas stand-in, run as a child process on addr:port."""

    def __init__(self, tmp, pki, addr, port=443, extra=None):
        self.addr, self.port, self.pki = addr, port, pki
        self.ready = os.path.join(tmp, f"fake-{addr}-{port}.ready")
        self.log = open(os.path.join(tmp, f"fake-{addr}-{port}.log"), "w")
        secret = os.path.join(tmp, "fake-client-secret")
        with open(secret, "w") as f:
            f.write(CLIENT_SECRET)
        cmd = [sys.executable, FAKE_ATLAS, "--cert", os.path.join(pki, "server.pem"),
               "--key", os.path.join(pki, "server.key"), "--listen", addr, "--port", str(port),
               "--client-id", CLIENT_ID, "--client-secret-file", secret, "--ready-file", self.ready]
        cmd += extra or []
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(lambda: os.path.exists(self.ready) or self.proc.poll() is not None, what="fake atlas")
        if self.proc.poll() is not None:
            raise RuntimeError(f"fake atlas exited: see {self.log.name}")
        self.ctx = ssl.create_default_context(cafile=os.path.join(pki, "upstream-ca.pem"))

    def _call(self, method, path, body=None):
        # Straight to the stand-in (this process is in no agent cgroup).
        conn_host = f"[{self.addr}]" if ":" in self.addr else self.addr
        req = urllib.request.Request(f"https://{conn_host}:{self.port}{path}", method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Host": HOST, "Content-Type": "application/json"})
        ctx = ssl.create_default_context(cafile=os.path.join(self.pki, "upstream-ca.pem"))
        ctx.check_hostname = False  # connecting by IP; the stand-in's own cert is for HOST
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            return json.loads(r.read() or b"null")

    def requests(self):
        return self._call("GET", "/__fake/requests")

    def api_requests(self):
        return [r for r in self.requests() if r["path"].startswith("/api/atlas/")]

    def stats(self):
        return self._call("GET", "/__fake/stats")

    def faults(self, spec):
        return self._call("POST", "/__fake/faults", spec)

    def reset(self, **kw):
        return self._call("POST", "/__fake/reset", kw or {})

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class Env:
    """One daemon with its own agents cgroup, pins, state, run dir and stand-in."""

    _counter = 0

    def __init__(self, rules=None, targets_extra=None, config_extra=None, fake=True, fake_extra=None,
                 fake_addr=None, credentials="service_account"):
        require_root()
        Env._counter += 1
        self.tag = f"{os.getpid()}-{Env._counter}"
        self.tmp = tempfile.mkdtemp(prefix=f"atlasgate-it-{self.tag}-")
        os.chmod(self.tmp, 0o755)
        self.cgroot = cgroup2_mount()
        self.agents_cgroup_name = f"atlasgate-it-{self.tag}"
        self.agents_cgroup = os.path.join(self.cgroot, self.agents_cgroup_name)
        self.pin_root = f"/sys/fs/bpf/atlasgate-it-{self.tag}"
        self.run_dir = os.path.join(self.tmp, "run")
        self.state_dir = os.path.join(self.tmp, "state")
        self.audit_path = os.path.join(self.tmp, "audit.jsonl")
        self.port = free_port()
        self.pki = os.path.join(self.tmp, "pki")
        subprocess.run(["bash", MAKE_PKI, self.pki], check=True, stdout=subprocess.DEVNULL)
        self.fake_addr = fake_addr or f"127.0.{random.randint(10, 250)}.{random.randint(2, 250)}"
        self.fake = FakeAtlas(self.tmp, self.pki, self.fake_addr, extra=fake_extra) if fake else None
        self.secret_file = os.path.join(self.tmp, "client-secret")
        with open(self.secret_file, "w") as f:
            f.write(CLIENT_SECRET)
        os.chmod(self.secret_file, 0o600)
        self.daemon = None
        self.daemon_log_path = os.path.join(self.tmp, "daemon.log")
        target = {"host": HOST, "addresses": [self.fake_addr], "resolve": False,
                  "upstream_ca": os.path.join(self.pki, "upstream-ca.pem")}
        if credentials == "service_account":
            target["credentials"] = {"service_account": {"client_id": CLIENT_ID,
                                                         "client_secret_file": self.secret_file}}
        elif credentials is not None:
            target["credentials"] = credentials
        target.update(targets_extra or {})
        self.config = {
            "listen": {"port": self.port},
            "state_dir": self.state_dir,
            "audit_log": self.audit_path,
            "log_level": "debug",
            "agents": {"cgroup": self.agents_cgroup_name},
            "targets": [target],
            "rules": rules or {"default": "allow"},
            "bpf": {"keep_on_exit": False, "pin_root": self.pin_root},
            "limits": {"idle_timeout": 5, "upstream_timeout": 5},
        }
        # ATLASGATE_TEST_WORKERS=N runs any suite with `workers: N` (by hand:
        # CI runs test_workers.py for them).
        if os.environ.get("ATLASGATE_TEST_WORKERS"):
            self.config["workers"] = int(os.environ["ATLASGATE_TEST_WORKERS"])
        for k, v in (config_extra or {}).items():
            if isinstance(v, dict) and isinstance(self.config.get(k), dict):
                self.config[k].update(v)
            else:
                self.config[k] = v
        self.config_path = os.path.join(self.tmp, "atlasgate.yaml")
        self.write_config()

    # --- lifecycle -------------------------------------------------------

    def write_config(self, config=None):
        # JSON is YAML: yaml-cpp reads it, with line numbers for errors.
        with open(self.config_path, "w") as f:
            json.dump(config if config is not None else self.config, f, indent=2)

    def start_daemon(self, wait=True, prefix=()):
        """prefix: a command that execs the daemon (keeping its pid), e.g. one
        that sets up a private mount namespace first."""
        self.daemon_log = open(self.daemon_log_path, "a")
        self.daemon = subprocess.Popen([*prefix, ATLASGATE, "daemon", "--config", self.config_path,
                                        "--run-dir", self.run_dir],
                                       stdout=self.daemon_log, stderr=subprocess.STDOUT)
        if wait:
            runtime = os.path.join(self.run_dir, "runtime.json")

            def ready():
                if self.daemon.poll() is not None:
                    raise AssertionError(f"daemon exited with {self.daemon.returncode}:\n{self.daemon_output()}")
                try:
                    with open(runtime) as f:
                        return json.load(f).get("pid") == self.daemon.pid
                except (OSError, ValueError):
                    return False
            wait_for(ready, timeout=15, what="daemon ready")
        return self.daemon

    def stop_daemon(self, sig=signal.SIGTERM, timeout=15):
        if self.daemon and self.daemon.poll() is None:
            self.daemon.send_signal(sig)
            try:
                self.daemon.wait(timeout)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()
        if self.daemon:
            self.daemon_log.close()
        rc = self.daemon.returncode if self.daemon else None
        self.daemon = None
        return rc

    def daemon_output(self):
        try:
            # Log lines quote agent-controlled bytes, which need not be UTF-8.
            with open(self.daemon_log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def close(self):
        self.stop_daemon()
        if self.fake:
            self.fake.stop()
        remove_cgroup(self.agents_cgroup)
        shutil.rmtree(self.pin_root, ignore_errors=True)
        reports = sanitizer_reports(self.daemon_output())
        if os.environ.get("ATLASGATE_KEEP_TMP") != "1":
            shutil.rmtree(self.tmp, ignore_errors=True)
        if reports:
            raise AssertionError("the daemon's output has sanitizer reports:\n" + "\n".join(reports))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- agents ----------------------------------------------------------

    def run_agent(self, argv, name=None, env=None, timeout=60, check=False, input=None, user=None):
        """Runs argv through the sudo launcher (as root, or as SUDO_UID=user)."""
        e = dict(os.environ)
        for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
            e.pop(k, None)
        e["ATLASGATE_RUN_DIR"] = self.run_dir
        if user is not None:
            e["SUDO_UID"] = str(user)
            e["SUDO_GID"] = str(user)
        else:
            e.pop("SUDO_UID", None)
            e.pop("SUDO_GID", None)
        e.update(env or {})
        cmd = [LAUNCHER] + (["--name", name] if name else []) + ["--"] + list(argv)
        p = subprocess.run(cmd, env=e, capture_output=True, text=True, timeout=timeout, input=input)
        if check and p.returncode != 0:
            raise AssertionError(f"agent {argv} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
        return p

    def run_in_cgroup(self, argv, name="raw", timeout=60):
        """Runs argv in a fresh child of the agents cgroup without the launcher
        (which refuses to start agents while the daemon is down)."""
        cg = os.path.join(self.agents_cgroup, f"{name}.{os.getpid()}")
        os.makedirs(cg, exist_ok=True)
        def join():
            with open(os.path.join(cg, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, preexec_fn=join)
        finally:
            remove_cgroup(cg)

    def with_hosts(self, argv):
        """argv run with /etc/hosts mapping HOST to the stand-in's address, in a
        private mount namespace (the agent, not the machine, sees the mapping)."""
        hosts = os.path.join(self.tmp, "hosts")
        if not os.path.exists(hosts):
            with open(hosts, "w") as f:
                f.write(f"127.0.0.1 localhost\n{self.fake_addr} {HOST}\n")
            os.chmod(hosts, 0o644)
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                'mount --bind "$0" /etc/hosts && exec "$@"', hosts, *argv]

    def curl_args(self, path, method="GET", extra=None):
        """curl arguments for HOST/path, resolved to the stand-in's address (the agent dials Atlas)."""
        addr = f"[{self.fake_addr}]" if ":" in self.fake_addr else self.fake_addr
        return ["curl", "-sS", "--max-time", "20", "--resolve", f"{HOST}:443:{addr}",
                "-H", f"Accept: {ACCEPT_V2}", "-X", method, "-o", "-", "-w", "\n%{http_code}",
                *(extra or []), f"https://{HOST}{path}"]

    def curl(self, path, method="GET", extra=None, name="curl-agent", **kw):
        """Runs curl as an agent; returns (status, body text, CompletedProcess)."""
        p = self.run_agent(self.curl_args(path, method, extra), name=name, **kw)
        out = p.stdout
        body, _, code = out.rpartition("\n")
        try:
            status = int(code)
        except ValueError:
            status = 0
        return status, body, p

    # --- observations ------------------------------------------------------

    def audit(self):
        # A record that follows the last batch by less than the audit log's
        # linger (1 ms, audit.h) is written one linger later.
        time.sleep(0.01)
        try:
            with open(self.audit_path) as f:
                return [json.loads(line) for line in f if line.strip()]
        except FileNotFoundError:
            return []

    def status(self):
        p = subprocess.run([ATLASGATE, "--control-socket", os.path.join(self.run_dir, "control.sock"), "status",
                            "--json"], capture_output=True, text=True, timeout=10)
        if p.returncode != 0:
            raise AssertionError(f"status failed: {p.stderr}")
        return json.loads(p.stdout)

    def cli(self, *args, timeout=30):
        return subprocess.run([ATLASGATE, "--control-socket", os.path.join(self.run_dir, "control.sock"), *args],
                              capture_output=True, text=True, timeout=timeout)

    def trust_bundle(self):
        return os.path.join(self.state_dir, "trust-bundle.pem")


class PrivilegedTestCase(unittest.TestCase):
    """Base class: checks privileges before anything else runs."""

    @classmethod
    def setUpClass(cls):
        require_root()


class DaemonTestCase(PrivilegedTestCase):
    """One Env, with its daemon started, shared by every test of the class;
    env_options() gives the Env's keyword arguments."""

    @classmethod
    def env_options(cls):
        return {}

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.env = Env(**cls.env_options())
        try:
            cls.env.start_daemon()
        except BaseException:
            cls.env.close()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.env.close()
