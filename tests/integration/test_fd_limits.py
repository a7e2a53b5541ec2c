"""No agent can starve the others of file descriptors.

The daemon runs under a low RLIMIT_NOFILE (prlimit, soft = hard, so raising
the soft limit to the hard one cannot help). An unprivileged agent opens
hundreds of connections to Atlas and holds them:

  * with limits.max_connections_per_agent below the fd limit, the agent's
    excess connections are closed at once and counted (refused_over_limit),
    the log says so at most once a second, and another agent is served;
  * with the caps above the fd limit, accept() hits EMFILE: the daemon must
    back off (no busy loop: its CPU time stays low) and log at most a line a
    second, and it serves again once the agent lets go.
"""

import os
import subprocess
import time
import unittest

from harness import LAUNCHER, SYSTEM_PYTHON, Env, PrivilegedTestCase, wait_for

NOBODY = 65534

# Opens N TCP connections to Atlas (redirected to atlasgate), prints "open",
# holds them until stdin closes.
HOLDER = r'''
import socket, sys
addr, n = sys.argv[1], int(sys.argv[2])
socks = []
for i in range(n):
    s = socket.socket()
    s.setblocking(False)
    try:
        s.connect((addr, 443))
    except BlockingIOError:
        pass
    socks.append(s)
print("open", flush=True)
sys.stdin.read()
'''


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


class FdLimitTest(PrivilegedTestCase):

    def start_holder(self, env, n):
        e = dict(os.environ, ATLASGATE_RUN_DIR=env.run_dir, SUDO_UID=str(NOBODY), SUDO_GID=str(NOBODY))
        p = subprocess.Popen([LAUNCHER, "--name", "hog", "--", SYSTEM_PYTHON, "-c", HOLDER, env.fake_addr, str(n)],
                             env=e, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.assertEqual(p.stdout.readline().strip(), "open", p.stderr.read() if p.poll() is not None else "")
        return p

    def stop_holder(self, p):
        p.stdin.close()
        p.wait(30)

    def test_per_agent_cap_keeps_others_served(self):
        with Env(config_extra={"limits": {"max_connections_per_agent": 50}}) as env:
            env.start_daemon(prefix=["prlimit", "--nofile=512:512", "--"])
            pid = env.daemon.pid
            hog = self.start_holder(env, 600)
            try:
                wait_for(lambda: env.status()["counters"]["refused_over_limit"] >= 550, timeout=20,
                         what="connections over the per-agent cap refused")
                self.assertLess(open_fds(pid), 512 - 100)
                status, body, p = env.curl("/api/atlas/v2/groups", name="victim", user=NOBODY)
                self.assertEqual(status, 200, body + p.stderr)
                c = env.status()["counters"]
                print(f"refused_over_limit {c['refused_over_limit']}, live {c['live_connections']}, "
                      f"daemon fds {open_fds(pid)}")
                self.assertLessEqual(c["live_connections"], 50 + 1)
            finally:
                self.stop_holder(hog)
            lines = [l for l in env.daemon_output().splitlines() if "refused connections over a cap" in l]
            self.assertGreaterEqual(len(lines), 1)
            self.assertLessEqual(len(lines), 30, "the refusal log line is not rate-limited")

    def test_emfile_backs_off(self):
        with Env(config_extra={"limits": {"max_connections_per_agent": 4000, "max_connections": 4000}}) as env:
            env.start_daemon(prefix=["prlimit", "--nofile=128:128", "--"])
            pid = env.daemon.pid
            hog = self.start_holder(env, 300)
            try:
                wait_for(lambda: "Too many open files" in env.daemon_output(), timeout=20, what="EMFILE")
                before = cpu_seconds(pid)
                time.sleep(3)
                used = cpu_seconds(pid) - before
                print(f"daemon CPU while out of fds: {used:.2f} s in 3 s")
                self.assertLess(used, 0.6, "the accept loop spins on EMFILE")
            finally:
                self.stop_holder(hog)
            lines = [l for l in env.daemon_output().splitlines() if "accept:" in l]
            self.assertGreaterEqual(len(lines), 1)
            self.assertLessEqual(len(lines), 15, "the EMFILE log line is not rate-limited")
            self.assertGreater(env.status()["counters"]["accept_errors"], 0)
            # Once the agent lets go, atlasgate serves again.
            status, body, p = env.curl("/api/atlas/v2/groups", name="after", user=NOBODY)
            self.assertEqual(status, 200, body + p.stderr)

    def test_rlimit_raised_to_hard_limit(self):
        with Env() as env:
            env.start_daemon(prefix=["prlimit", "--nofile=256:4096", "--"])
            with open(f"/proc/{env.daemon.pid}/limits") as f:
                line = [l for l in f if l.startswith("Max open files")][0]
            self.assertEqual(line.split()[3:5], ["4096", "4096"], line)


if __name__ == "__main__":
    unittest.main(verbosity=2)
