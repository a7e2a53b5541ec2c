#!/usr/bin/env python3
"""Integration tests for scripts/atlasgate-run (the sudo launcher).

The real daemon is not needed: ATLASGATE_RUN_DIR points at a temporary run
dir whose runtime.json names a stand-in daemon (a copy of sleep called
`atlasgate`, so /proc/<pid>/comm is "atlasgate") and a temporary agents
cgroup `atlasgate-test-<pid>` under the cgroup2 mount.

Needs root (real cgroups, uid changes). Without root every test is skipped
with the reason printed, unless ATLASGATE_REQUIRE_PRIVILEGED=1, which turns
the skip into a failure. Everything made here (processes, cgroups, temp
dirs) is removed again; every test also checks that the launcher left no
cgroup behind.

    sudo python3 -m unittest tests/integration/test_launcher.py -v
"""

import fcntl
import json
import os
import pwd
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import termios
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
LAUNCHER = os.environ.get(
    "ATLASGATE_RUN",
    os.path.normpath(os.path.join(HERE, "..", "..", "scripts", "atlasgate-run")))
REQUIRED = os.environ.get("ATLASGATE_REQUIRE_PRIVILEGED") == "1"
IS_ROOT = os.geteuid() == 0
NOT_ROOT_REASON = "launcher tests need root (cgroup v2 writes, uid changes); run with sudo"
TIMEOUT = 10  # seconds, per launcher run

_skip_reason_printed = False


def cgroup2_mount():
    """Mount point of the cgroup2 hierarchy, from /proc/self/mountinfo."""
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            if right.split(" ", 1)[0] == "cgroup2":
                mnt = left.split(" ")[4]
                # mountinfo escapes space, tab, newline, backslash as \ooo
                return mnt.encode().decode("unicode_escape")
    return None


def cgroup_populated(path):
    try:
        with open(os.path.join(path, "cgroup.events"), encoding="ascii") as f:
            return "populated 1" in f.read().splitlines()
    except FileNotFoundError:
        return False


def destroy_cgroup(path):
    """Kill everything in the cgroup subtree and remove it (test cleanup)."""
    if not os.path.isdir(path):
        return
    deadline = time.monotonic() + 5
    while cgroup_populated(path) and time.monotonic() < deadline:
        kill_file = os.path.join(path, "cgroup.kill")
        if os.path.exists(kill_file):
            with open(kill_file, "w", encoding="ascii") as f:
                f.write("1")
        else:
            for root, _, files in os.walk(path):
                if "cgroup.procs" in files:
                    with open(os.path.join(root, "cgroup.procs"), encoding="ascii") as f:
                        for pid in f.read().split():
                            try:
                                os.kill(int(pid), signal.SIGKILL)
                            except ProcessLookupError:
                                pass
        time.sleep(0.02)
    for root, dirs, _ in os.walk(path, topdown=False):
        for d in dirs:
            os.rmdir(os.path.join(root, d))
    os.rmdir(path)


def pid_gone(pid):
    """True when pid no longer runs (absent or a zombie nobody reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return True


def dead_pid():
    """A pid that just exited (and was reaped)."""
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def unused_uid():
    uid = 54321
    while True:
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
        uid += 1


class LauncherTest(unittest.TestCase):
    mount = None
    agents_cg = None
    tmp = None
    run_dir = None
    daemon = None

    # ---------------------------------------------------------------- fixture
    @classmethod
    def setUpClass(cls):
        if not IS_ROOT:
            return
        cls.mount = cgroup2_mount()
        if cls.mount is None:
            raise unittest.SkipTest("no cgroup2 file system mounted")
        cls.tmp = tempfile.mkdtemp(prefix="atlasgate-launcher-test-")
        os.chmod(cls.tmp, 0o755)  # the not-root case runs a copy from here
        # Stand-in daemon: comm must be "atlasgate".
        fake = os.path.join(cls.tmp, "atlasgate")
        shutil.copy(shutil.which("sleep"), fake)
        cls.daemon = subprocess.Popen([fake, "600"], stdin=subprocess.DEVNULL)
        cls.agents_cg = os.path.join(cls.mount, f"atlasgate-test-{os.getpid()}")
        os.mkdir(cls.agents_cg)
        cls.run_dir = os.path.join(cls.tmp, "run")
        os.mkdir(cls.run_dir)
        cls.ca = os.path.join(cls.tmp, "ca.pem")
        cls.bundle = os.path.join(cls.tmp, "trust-bundle.pem")
        for path in (cls.ca, cls.bundle):
            with open(path, "w", encoding="ascii") as f:
                f.write("-----BEGIN CERTIFICATE-----\n(test)\n-----END CERTIFICATE-----\n")
            os.chmod(path, 0o644)
        cls.write_runtime(cls.run_dir, cls.daemon.pid)

    @classmethod
    def tearDownClass(cls):
        if cls.daemon is not None:
            cls.daemon.kill()
            cls.daemon.wait()
        if cls.agents_cg is not None:
            destroy_cgroup(cls.agents_cg)
        if cls.tmp is not None:
            shutil.rmtree(cls.tmp, ignore_errors=True)

    def setUp(self):
        global _skip_reason_printed
        if not IS_ROOT:
            if REQUIRED:
                self.fail(NOT_ROOT_REASON + " (ATLASGATE_REQUIRE_PRIVILEGED=1)")
            if not _skip_reason_printed:
                print(f"\nSKIP test_launcher: {NOT_ROOT_REASON}", file=sys.stderr)
                _skip_reason_printed = True
            self.skipTest(NOT_ROOT_REASON)
        self.procs = []

    def tearDown(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        leftovers = [d for d in os.listdir(self.agents_cg)
                     if os.path.isdir(os.path.join(self.agents_cg, d))]
        for d in leftovers:
            destroy_cgroup(os.path.join(self.agents_cg, d))
        self.assertEqual(leftovers, [], "the launcher left agent cgroups behind")

    @classmethod
    def write_runtime(cls, run_dir, pid, **over):
        data = {"pid": pid, "agents_cgroup": cls.agents_cg, "ca_cert": cls.ca,
                "trust_bundle": cls.bundle, "listen_port": 15443}
        data.update(over)
        with open(os.path.join(run_dir, "runtime.json"), "w", encoding="utf-8") as f:
            json.dump(data, f)

    # ---------------------------------------------------------------- helpers
    def env(self, run_dir=None, **extra):
        env = {k: v for k, v in os.environ.items() if not k.startswith("SUDO_")}
        env["ATLASGATE_RUN_DIR"] = run_dir or self.run_dir
        env.update(extra)
        return env

    def start(self, args, env=None, launcher=None, prefix=()):
        p = subprocess.Popen([*prefix, launcher or LAUNCHER, *args],
                             env=env or self.env(), cwd="/",
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
        self.procs.append(p)
        return p

    def run_launcher(self, args, stdin="", **kw):
        p = self.start(args, **kw)
        out, err = p.communicate(stdin, timeout=TIMEOUT)
        return p.pid, p.returncode, out, err

    def read_line(self, p, timeout=5):
        """One line of CMD's stdout, read byte by byte from the fd so that
        nothing past it is buffered (communicate() reads the rest)."""
        fd = p.stdout.fileno()
        line = b""
        deadline = time.monotonic() + timeout
        while not line.endswith(b"\n"):
            ready, _, _ = select.select([fd], [], [], max(0, deadline - time.monotonic()))
            self.assertTrue(ready, f"no output line from CMD in time (got {line!r})")
            byte = os.read(fd, 1)
            self.assertTrue(byte, f"CMD closed stdout (got {line!r})")
            line += byte
        return line.decode().strip()

    def cgroup_suffix(self, name, launcher_pid):
        return f"/{os.path.basename(self.agents_cg)}/{name}.{launcher_pid}"

    @staticmethod
    def unified_line(text):
        return [line for line in text.splitlines() if line.startswith("0::")][0][3:]

    # ---------------------------------------------------------------- cases
    def test_help(self):
        _, rc, out, _ = self.run_launcher(["--help"])
        self.assertEqual(rc, 0)
        self.assertIn("usage: sudo atlasgate-run", out)

    def test_refuses_non_root(self):
        copy = os.path.join(self.tmp, "atlasgate-run")
        shutil.copy(LAUNCHER, copy)
        os.chmod(copy, 0o755)
        _, rc, out, err = self.run_launcher(
            ["--", "true"], launcher=copy,
            prefix=("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"))
        self.assertEqual(rc, 1)
        self.assertEqual(err, "atlasgate-run: must run as root (use sudo)\n")
        self.assertEqual(out, "")

    def test_daemon_not_running(self):
        with tempfile.TemporaryDirectory() as run_dir:
            # no runtime.json
            _, rc, out, err = self.run_launcher(["--", "true"], env=self.env(run_dir))
            self.assertEqual(rc, 1)
            self.assertEqual(len(err.splitlines()), 1, err)
            self.assertIn("the atlasgate daemon is not running", err)
            self.assertIn(os.path.join(run_dir, "runtime.json"), err)
            self.assertIn("sudo atlasgate daemon --config FILE", err)
            # stale runtime.json: pid gone
            self.write_runtime(run_dir, dead_pid())
            _, rc, _, err = self.run_launcher(["--", "true"], env=self.env(run_dir))
            self.assertEqual(rc, 1)
            self.assertIn("the atlasgate daemon is not running", err)
            # pid alive but not atlasgate (it is this python)
            self.write_runtime(run_dir, os.getpid())
            _, rc, _, err = self.run_launcher(["--", "true"], env=self.env(run_dir))
            self.assertEqual(rc, 1)
            self.assertIn("not atlasgate", err)
            # garbage
            with open(os.path.join(run_dir, "runtime.json"), "w", encoding="ascii") as f:
                f.write("{not json")
            _, rc, _, err = self.run_launcher(["--", "true"], env=self.env(run_dir))
            self.assertEqual(rc, 1)
            self.assertEqual(len(err.splitlines()), 1, err)

    def test_runs_in_fresh_child_cgroup(self):
        # default name = basename of CMD; the grandchild (cat) is inside too
        pid, rc, out, err = self.run_launcher(
            ["--", "/bin/sh", "-c", "cat /proc/self/cgroup; echo sh=$$"])
        self.assertEqual(rc, 0, err)
        self.assertTrue(self.unified_line(out).endswith(self.cgroup_suffix("sh", pid)), out)
        # --name, sanitised
        pid, rc, out, err = self.run_launcher(
            ["--name", "ops bot/ü!", "--config", "/nonexistent.yaml",
             "cat", "/proc/self/cgroup"])
        self.assertEqual(rc, 0, err)
        name = self.unified_line(out).rsplit("/", 1)[1]
        self.assertRegex(name, rf"^ops-bot-+\.{pid}$")
        # long names are cut at 64 characters
        pid, rc, out, err = self.run_launcher(["--name", "a" * 100, "cat", "/proc/self/cgroup"])
        self.assertEqual(rc, 0, err)
        self.assertTrue(self.unified_line(out).endswith(self.cgroup_suffix("a" * 64, pid)))
        # empty name refused
        _, rc, _, err = self.run_launcher(["--name", "", "true"])
        self.assertEqual(rc, 2)
        self.assertIn("must not be empty", err)

    def test_run_dir_option(self):
        with tempfile.TemporaryDirectory() as empty:
            # --run-dir beats $ATLASGATE_RUN_DIR, both ways
            _, rc, _, err = self.run_launcher(["--run-dir", empty, "true"])
            self.assertEqual(rc, 1)
            self.assertIn(os.path.join(empty, "runtime.json"), err)
            _, rc, _, err = self.run_launcher([f"--run-dir={self.run_dir}", "true"],
                                              env=self.env(empty))
            self.assertEqual(rc, 0, err)

    def test_environment(self):
        script = "import json, os; print(json.dumps(dict(os.environ)))"
        _, rc, out, err = self.run_launcher(
            ["--name", "envbot", sys.executable, "-c", script],
            env=self.env(HTTPS_PROXY="http://proxy.invalid:3128", KEEP_ME="yes"))
        self.assertEqual(rc, 0, err)
        env = json.loads(out)
        for var in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO"):
            self.assertEqual(env.get(var), self.bundle, var)
        self.assertEqual(env.get("NODE_EXTRA_CA_CERTS"), self.ca)
        self.assertEqual(env.get("ATLASGATE_AGENT"), "envbot")
        # the rest is untouched, proxy variables included
        self.assertEqual(env.get("HTTPS_PROXY"), "http://proxy.invalid:3128")
        self.assertEqual(env.get("KEEP_ME"), "yes")
        self.assertEqual(env.get("HOME"), os.environ.get("HOME"))

    def test_environment_when_ca_files_missing(self):
        with tempfile.TemporaryDirectory() as run_dir:
            self.write_runtime(run_dir, self.daemon.pid,
                               ca_cert="/nonexistent/ca.pem",
                               trust_bundle="/nonexistent/bundle.pem")
            _, rc, out, err = self.run_launcher(
                ["sh", "-c", "echo $SSL_CERT_FILE; echo $NODE_EXTRA_CA_CERTS"],
                env=self.env(run_dir, SSL_CERT_FILE="/orig.pem", NODE_EXTRA_CA_CERTS="/orig-ca.pem"))
        self.assertEqual(rc, 0, err)
        self.assertEqual(out.split(), ["/orig.pem", "/orig-ca.pem"])
        self.assertIn("not found", err)

    def test_stdin_passed_through(self):
        _, rc, out, err = self.run_launcher(["cat"], stdin="hello agent\n")
        self.assertEqual(rc, 0, err)
        self.assertEqual(out, "hello agent\n")

    def test_signal_dispositions_default(self):
        probe = ["sh", "-c", "grep ^SigIgn: /proc/self/status"]
        direct = subprocess.run(probe, capture_output=True, text=True, check=True,
                                start_new_session=True).stdout
        _, rc, out, err = self.run_launcher(probe)
        self.assertEqual(rc, 0, err)
        self.assertEqual(out, direct)  # SIGINT/SIGQUIT not ignored by CMD

    def test_drops_to_sudo_user(self):
        nobody = pwd.getpwuid(65534)
        expected_groups = sorted(os.getgrouplist(nobody.pw_name, 65534))
        script = ("id -u; id -g; id -G; echo \"$HOME|$USER|$LOGNAME\"; "
                  "grep ^CapEff: /proc/self/status; grep ^0:: /proc/self/cgroup; "
                  f"if echo $$ > {self.agents_cg}/cgroup.procs; then echo escaped; "
                  "else echo stuck; fi")
        pid, rc, out, err = self.run_launcher(
            ["--name", "drop", "sh", "-c", script],
            env=self.env(SUDO_UID="65534", SUDO_GID="65534", SUDO_USER=nobody.pw_name,
                         HOME="/root", USER="root", LOGNAME="root"))
        self.assertEqual(rc, 0, err)
        lines = out.splitlines()
        self.assertEqual(lines[0], "65534")
        self.assertEqual(lines[1], "65534")
        self.assertEqual(sorted(int(g) for g in lines[2].split()), expected_groups)
        self.assertEqual(lines[3], f"{nobody.pw_dir}|{nobody.pw_name}|{nobody.pw_name}")
        self.assertEqual(lines[4].split(), ["CapEff:", "0000000000000000"])
        self.assertTrue(lines[5].endswith(self.cgroup_suffix("drop", pid)), lines[5])
        self.assertEqual(lines[6], "stuck")  # cannot move itself out of the agent cgroup

    def test_drops_to_uid_without_passwd_entry(self):
        uid = unused_uid()
        _, rc, out, err = self.run_launcher(
            ["sh", "-c", "id -u; id -g; id -G; echo $USER"],
            env=self.env(SUDO_UID=str(uid), SUDO_GID=str(uid)))
        self.assertEqual(rc, 0, err)
        self.assertEqual(out.split(), [str(uid)] * 4)

    def test_exit_status(self):
        _, rc, _, err = self.run_launcher(["sh", "-c", "exit 7"])
        self.assertEqual(rc, 7, err)
        _, rc, _, err = self.run_launcher(["sh", "-c", "kill -USR1 $$"])
        self.assertEqual(rc, 128 + signal.SIGUSR1, err)
        _, rc, _, err = self.run_launcher(["/nonexistent/agent"])
        self.assertEqual(rc, 127)
        self.assertIn("/nonexistent/agent", err)

    def test_signal_forwarding(self):
        script = ("import signal, sys, time\n"
                  "def h(n, f):\n"
                  "    print('got', signal.Signals(n).name, flush=True)\n"
                  "    sys.exit(40 + n)\n"
                  "for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):\n"
                  "    signal.signal(s, h)\n"
                  "print('ready', flush=True)\n"
                  "time.sleep(30)\n")
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            with self.subTest(signal=sig.name):
                p = self.start(["--name", "sigbot", sys.executable, "-c", script])
                self.assertEqual(self.read_line(p), "ready")
                os.kill(p.pid, sig)
                out, err = p.communicate(timeout=TIMEOUT)
                self.assertEqual(out.strip(), f"got {sig.name}", err)
                self.assertEqual(p.returncode, 40 + sig, err)
                self.assertFalse(os.path.exists(
                    os.path.join(self.agents_cg, f"sigbot.{p.pid}")))

    def test_ctrl_c_on_terminal_delivered_once(self):
        # Launcher in the foreground of a terminal: Ctrl-C reaches CMD from the
        # tty driver; the launcher must not send a second SIGINT.
        script = ("import signal, time\n"
                  "n = 0\n"
                  "def h(s, f):\n"
                  "    global n\n"
                  "    n += 1\n"
                  "signal.signal(signal.SIGINT, h)\n"
                  "print('ready', flush=True)\n"
                  "deadline = time.monotonic() + 5\n"
                  "while n == 0 and time.monotonic() < deadline:\n"
                  "    time.sleep(0.02)\n"
                  "time.sleep(0.5)\n"
                  "print(f'ints={n}', flush=True)\n")
        master, slave = os.openpty()

        def take_tty():
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        try:
            p = subprocess.Popen([LAUNCHER, "--name", "ttybot", sys.executable, "-c", script],
                                 env=self.env(), cwd="/", stdin=slave, stdout=slave,
                                 stderr=slave, start_new_session=True, preexec_fn=take_tty)
            self.procs.append(p)
            os.close(slave)
            slave = -1
            out = b""
            deadline = time.monotonic() + TIMEOUT
            sent = False
            while time.monotonic() < deadline:
                ready, _, _ = select.select([master], [], [], 0.2)
                if ready:
                    try:
                        chunk = os.read(master, 4096)
                    except OSError:  # EIO: every slave fd is closed
                        break
                    if not chunk:
                        break
                    out += chunk
                if not sent and b"ready" in out:
                    os.write(master, b"\x03")  # Ctrl-C
                    sent = True
                if not ready and p.poll() is not None:
                    break
            p.wait(timeout=TIMEOUT)
        finally:
            if slave >= 0:
                os.close(slave)
            os.close(master)
        self.assertIn(b"ints=1", out, out)
        self.assertEqual(p.returncode, 0)

    def test_second_term_kills_everything(self):
        p = self.start(["--name", "stubborn", "sh", "-c",
                        "trap '' TERM INT; echo ready; sleep 30 & echo $!; wait"])
        self.assertEqual(self.read_line(p), "ready")
        sleeper = int(self.read_line(p))
        os.kill(p.pid, signal.SIGTERM)
        time.sleep(0.3)
        self.assertIsNone(p.poll(), "CMD ignores SIGTERM, the launcher must wait for it")
        os.kill(p.pid, signal.SIGTERM)
        p.communicate(timeout=TIMEOUT)
        self.assertEqual(p.returncode, 128 + signal.SIGKILL)
        self.assertTrue(pid_gone(sleeper))
        self.assertFalse(os.path.exists(os.path.join(self.agents_cg, f"stubborn.{p.pid}")))

    def test_leftovers_killed_and_cgroup_removed(self):
        # a plain background child (still holding stdout) and a daemonised
        # grandchild in its own session
        script = ("sleep 60 & echo $!; "
                  "setsid sh -c 'sleep 61 </dev/null >/dev/null 2>&1 & echo $!'; "
                  "exit 0")
        t0 = time.monotonic()
        pid, rc, out, err = self.run_launcher(["--name", "leaky", "sh", "-c", script])
        self.assertEqual(rc, 0, err)
        self.assertLess(time.monotonic() - t0, 5)
        pids = [int(x) for x in out.split()]
        self.assertEqual(len(pids), 2, out)
        for leftover in pids:
            self.assertTrue(pid_gone(leftover), f"pid {leftover} survived")
        self.assertFalse(os.path.exists(os.path.join(self.agents_cg, f"leaky.{pid}")))

    def test_stale_cgroups_swept(self):
        stale = os.path.join(self.agents_cg, f"gone.{dead_pid()}")
        live = os.path.join(self.agents_cg, f"live.{os.getpid()}")
        other = os.path.join(self.agents_cg, "not-a-launcher-cgroup")
        for d in (stale, live, other):
            os.mkdir(d)
        try:
            _, rc, _, err = self.run_launcher(["true"])
            self.assertEqual(rc, 0, err)
            self.assertFalse(os.path.exists(stale))
            self.assertTrue(os.path.isdir(live))
            self.assertTrue(os.path.isdir(other))
        finally:
            for d in (stale, live, other):
                if os.path.isdir(d):
                    os.rmdir(d)


if __name__ == "__main__":
    unittest.main(verbosity=2)
