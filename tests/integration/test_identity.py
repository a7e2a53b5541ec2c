"""An identity that cannot be borrowed, and credentials that go only where
atlasgate chose.

Each test performs an attack an agent (uid 65534, started through
scripts/atlasgate-run or placed in an attached cgroup) can mount:

  * socket hand-off: the agent creates an unconnected TCP socket and passes
    it over a Unix socket to a helper in a cgroup that is NOT attached; the
    helper connects it to Atlas and sends a DELETE the agent's rules block.
    The connect hook runs for the socket's cgroup, so the flow is
    redirected; it must be named after the socket's creator (the agent) and
    blocked, never served as the helper;
  * a delegated subtree: an agent that owns its attached cgroup makes a child
    cgroup and moves into it; it is still the same agent, with its rules;
  * all-tls and the address an agent dials: with SNI cloud.mongodb.com to an
    address of its choosing (a rogue TLS server that holds a certificate
    for the name, or a dead address), the request is served from
    atlasgate's own addresses: the rogue server sees nothing, the dead
    address costs the other agents nothing.
"""

import json
import os
import subprocess
import threading
import time
import unittest

from harness import (ACCEPT_V2, HOST, PROJECT_ID, SYSTEM_PYTHON, Env, FakeAtlas, PrivilegedTestCase,
                     remove_cgroup, wait_for)

NOBODY = 65534
CLUSTER = f"/api/atlas/v2/groups/{PROJECT_ID}/clusters/Cluster0"

# The helper: receives one socket over a Unix socket, connects it to Atlas,
# sends a DELETE, and answers the HTTP status line back to the agent.
HELPER = r'''
import json, os, socket, ssl, sys
path, addr, host, cafile, target, accept = sys.argv[1:7]
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(path)
os.chmod(path, 0o777)
srv.listen(1)
print("ready", flush=True)
conn, _ = srv.accept()
msg, fds, _, _ = socket.recv_fds(conn, 16, 1)
s = socket.socket(fileno=fds[0])
out = {"helper_cgroup": open("/proc/self/cgroup").read().strip()}
try:
    s.settimeout(20)
    s.connect((addr, 443))
    ctx = ssl.create_default_context(cafile=cafile)
    t = ctx.wrap_socket(s, server_hostname=host)
    t.sendall(f"DELETE {target} HTTP/1.1\r\nHost: {host}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n".encode())
    data = b""
    while True:
        chunk = t.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    out["status"] = int(head.split()[1])
    out["body"] = body.decode(errors="replace")
except Exception as e:
    out["error"] = repr(e)
conn.sendall(json.dumps(out).encode())
conn.close()
print(json.dumps(out), flush=True)
'''

# The agent: an unconnected socket, handed to the helper; waits for its answer
# (the socket's cgroup must outlive the exchange).
AGENT = r'''
import json, socket, sys
u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
u.connect(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
socket.send_fds(u, [b"x"], [s.fileno()])
s.close()
data = b""
while True:
    chunk = u.recv(65536)
    if not chunk:
        break
    data += chunk
print(data.decode())
'''


def as_nobody_in(cgroup):
    def pre():
        with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
    return pre


class SocketHandOffTest(PrivilegedTestCase):

    def test_handed_socket_is_the_creators(self):
        rules = {"default": "allow", "list": [
            {"name": "sneaky-no-delete", "method": "DELETE", "path": "/api/atlas/v2/groups/**",
             "agents": ["sneaky"], "action": "block"}]}
        with Env(rules=rules) as env:
            env.start_daemon()
            helper_cg = os.path.join(env.cgroot, f"atlasgate-it-helper-{env.tag}")
            os.makedirs(helper_cg)
            sock_path = os.path.join(env.tmp, "handoff.sock")

            def join():
                with open(os.path.join(helper_cg, "cgroup.procs"), "w") as f:
                    f.write(str(os.getpid()))
            helper = subprocess.Popen([SYSTEM_PYTHON, "-c", HELPER, sock_path, env.fake_addr, HOST,
                                       env.trust_bundle(), CLUSTER, ACCEPT_V2],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=join)
            try:
                self.assertEqual(helper.stdout.readline().strip(), "ready")
                p = env.run_agent([SYSTEM_PYTHON, "-c", AGENT, sock_path], name="sneaky", user=NOBODY, timeout=60)
                self.assertEqual(p.returncode, 0, p.stderr)
                out = json.loads(p.stdout)
                helper.wait(30)
            finally:
                if helper.poll() is None:
                    helper.kill()
                    helper.wait()
                remove_cgroup(helper_cg)
            # The helper really sat outside every attached cgroup...
            self.assertIn(f"atlasgate-it-helper-{env.tag}", out["helper_cgroup"])
            # ...and yet the request is the agent's: blocked by its rule.
            self.assertEqual(out.get("status"), 403, out)
            self.assertIn("sneaky-no-delete", out["body"])
            self.assertEqual([r for r in env.fake.api_requests() if r["method"] == "DELETE"], [])
            rec = [r for r in env.audit() if r["method"] == "DELETE"][-1]
            self.assertEqual(rec["agent"], "sneaky")
            self.assertEqual(rec["decision"], "block")
            self.assertRegex(rec["cgroup"], rf"^{env.agents_cgroup_name}/sneaky\.\d+$")
            self.assertGreaterEqual(env.status()["bpf"]["handed"], 1)


# Creates N TCP sockets in the cgroup it starts in, moves itself to another
# cgroup, waits until the first is removed, then connects them all to Atlas.
ORPHANS = r'''
import json, os, socket, sys, time
addr, n, away, gone = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
socks = [socket.socket() for _ in range(n)]
with open(os.path.join(away, "cgroup.procs"), "w") as f:
    f.write(str(os.getpid()))
print("moved", flush=True)
sys.stdin.readline()
refused = 0
for s in socks:
    s.settimeout(5)
    try:
        s.connect((addr, 443))
        s.sendall(b"\x16\x03\x01\x00\x05hello")
        if s.recv(10) == b"":
            refused += 1
    except OSError:
        refused += 1
print(json.dumps({"refused": refused}), flush=True)
'''


class OrphanedSocketsTest(PrivilegedTestCase):

    def test_sockets_of_a_removed_cgroup_are_refused_cheaply(self):
        # Sockets outlive the cgroup that made them (it is removed after its
        # last process left): the kernel still redirects them, and atlasgate
        # must refuse them without stalling: no walk of the cgroup tree per
        # connection (made slow here with 600 cgroups under the agents cgroup).
        with Env() as env:
            env.start_daemon()
            filler = [os.path.join(env.agents_cgroup, f"filler-{i}") for i in range(600)]
            for d in filler:
                os.makedirs(d)
            maker = os.path.join(env.agents_cgroup, "maker.1")
            away = os.path.join(env.cgroot, f"atlasgate-it-away-{env.tag}")
            os.makedirs(maker)
            os.makedirs(away)

            def join():
                with open(os.path.join(maker, "cgroup.procs"), "w") as f:
                    f.write(str(os.getpid()))
            p = subprocess.Popen([SYSTEM_PYTHON, "-c", ORPHANS, env.fake_addr, "300", away, maker],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, preexec_fn=join)
            try:
                self.assertEqual(p.stdout.readline().strip(), "moved")
                os.rmdir(maker)
                p.stdin.write("go\n")
                p.stdin.flush()
                time.sleep(0.3)  # the connects are under way
                started = time.monotonic()
                status, body, cp = env.curl("/api/atlas/v2/groups", name="victim", user=NOBODY)
                took = time.monotonic() - started
                out = json.loads(p.stdout.readline())
                p.wait(60)
            finally:
                if p.poll() is None:
                    p.kill()
                    p.wait()
                remove_cgroup(away)
                for d in filler:
                    os.rmdir(d)
            print(f"victim served in {took:.2f} s while 300 orphaned sockets were refused")
            self.assertEqual(status, 200, body + cp.stderr)
            self.assertLess(took, 3)
            self.assertEqual(out["refused"], 300)
            self.assertGreaterEqual(env.status()["counters"]["refused_unknown_agent"], 300)
            self.assertEqual([r for r in env.audit() if r["agent"].startswith("cgroup:")], [])
            lines = [l for l in env.daemon_output().splitlines() if "under no attached cgroup" in l]
            self.assertLessEqual(len(lines), 10, "the refusal warning is not rate-limited")


class DelegatedSubtreeTest(PrivilegedTestCase):

    def test_child_cgroup_is_the_same_agent(self):
        # The agent owns its attached cgroup (as with systemd Delegate=yes).
        with Env() as env:
            svc_rel = f"atlasgate-it-svc-{env.tag}"
            svc = os.path.join(env.cgroot, svc_rel)
            env.config["rules"] = {"default": "allow", "list": [
                {"name": "svc-no-delete", "method": "DELETE", "path": "/api/atlas/v2/groups/**",
                 "agents": [svc_rel], "action": "block"}]}
            env.write_config()
            env.start_daemon()
            os.makedirs(svc)
            try:
                for f in ("", "cgroup.procs", "cgroup.subtree_control", "cgroup.threads"):
                    os.chown(os.path.join(svc, f), NOBODY, NOBODY)
                p = env.cli("attach", svc)
                self.assertEqual(p.returncode, 0, p.stderr)
                curl = ["curl", "-sS", "--max-time", "20", "--cacert", env.trust_bundle(),
                        "--resolve", f"{HOST}:443:{env.fake_addr}", "-H", f"Accept: {ACCEPT_V2}",
                        "-X", "DELETE", "-o", "/dev/null", "-w", "%{http_code}", f"https://{HOST}{CLUSTER}"]
                script = 'mkdir "$0/child" && echo $$ > "$0/child/cgroup.procs" && cat /proc/self/cgroup >&2 && exec "$@"'
                r = subprocess.run(["sh", "-c", script, svc, *curl], capture_output=True, text=True, timeout=60,
                                   preexec_fn=as_nobody_in(svc))
                self.assertIn(f"/{svc_rel}/child", r.stderr)  # it did move itself
                self.assertEqual(r.stdout, "403", r.stderr)
                rec = wait_for(lambda: env.audit(), what="audit record")[-1]
                self.assertEqual(rec["agent"], svc_rel)
                self.assertEqual(rec["rule"], "svc-no-delete")
                self.assertEqual(rec["cgroup"], f"{svc_rel}/child")
                self.assertEqual([r for r in env.fake.api_requests() if r["method"] == "DELETE"], [])
                env.cli("detach", svc)
            finally:
                remove_cgroup(svc)


class ChosenAddressesTest(PrivilegedTestCase):

    def test_credentials_never_go_where_the_agent_dialled(self):
        with Env(config_extra={"intercept": "all-tls"}) as env:
            env.start_daemon()
            # A rogue TLS server that holds a certificate for the target name.
            rogue_addr = "127.0.98.7" if env.fake_addr != "127.0.98.7" else "127.0.98.8"
            rogue = FakeAtlas(env.tmp, env.pki, rogue_addr)
            try:
                args = env.curl_args("/api/atlas/v2/groups")
                args[args.index("--resolve") + 1] = f"{HOST}:443:{rogue_addr}"
                p = env.run_agent(args, name="redirector", user=NOBODY)
                self.assertTrue(p.stdout.endswith("\n200"), p.stdout + p.stderr)
                self.assertEqual(rogue.requests(), [], "the rogue server got a request (and a credential)")
                seen = env.fake.requests()
                self.assertTrue(any(r["path"] == "/api/oauth/token" for r in seen))
                self.assertTrue(any(r["path"] == "/api/atlas/v2/groups" for r in seen))
                rec = env.audit()[-1]
                self.assertEqual(rec["dst"], f"{rogue_addr}:443")  # what the agent dialled, for the record
            finally:
                rogue.stop()

    def test_dead_address_does_not_starve_other_agents(self):
        with Env(config_extra={"intercept": "all-tls"}) as env:
            env.start_daemon()
            dead = "127.0.99.9"
            stop = time.monotonic() + 6
            attacker_script = (
                "import subprocess, sys, time\n"
                "n = 0\n"
                f"while time.monotonic() < {stop}:\n"
                f"    subprocess.run(['curl', '-s', '-o', '/dev/null', '--max-time', '2', '--resolve',"
                f" '{HOST}:443:{dead}', 'https://{HOST}/api/atlas/v2/groups'])\n"
                "    n += 1\n"
                "    time.sleep(0.05)\n"
                "print(n)\n")
            attacker = threading.Thread(target=lambda: env.run_agent([SYSTEM_PYTHON, "-c", attacker_script],
                                                                     name="attacker", user=NOBODY, timeout=60))
            attacker.start()
            time.sleep(0.5)
            victim_script = (
                "import subprocess, sys\n"
                "codes = []\n"
                "for i in range(40):\n"
                "    r = subprocess.run(" + repr(env.curl_args("/api/atlas/v2/groups")) +
                ", capture_output=True, text=True)\n"
                "    codes.append(r.stdout.rpartition('\\n')[2])\n"
                "print(' '.join(codes))\n")
            p = env.run_agent([SYSTEM_PYTHON, "-c", victim_script], name="victim", user=NOBODY, timeout=120)
            attacker.join(60)
            codes = p.stdout.split()
            self.assertEqual(codes, ["200"] * 40, p.stdout + p.stderr)
            self.assertNotIn(f"{dead}: connect failed", env.daemon_output())
            status = env.status()
            pool = {u["host"]: u for u in status["upstream"]}[HOST]
            self.assertEqual(pool["connect_failures"], 0, "atlasgate dialled an address it did not choose")


if __name__ == "__main__":
    unittest.main(verbosity=2)
