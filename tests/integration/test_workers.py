"""workers: N — event loops on every core, one trust boundary.

With `workers: 2` the daemon runs a second event loop (thread) with its own
listener on the port (SO_REUSEPORT: the kernel spreads agents' connections),
its own upstream pool and its own sessions. What must not change is what an
agent sees: every request is served with the credential injected and
audited, the caps count every worker's connections, a request held on a
worker is decided from the daemon's control socket, and connections from an
agents' network namespace (one listener, worker 0's) are shared out.

Attacks: an agent opening more connections than max_connections_per_agent
across both workers; an unprivileged process joining the listeners'
SO_REUSEPORT group to take a share of the agents' connections.
"""

import json
import os
import subprocess
import unittest

from harness import ACCEPT_V2, HOST, LAUNCHER, SYSTEM_PYTHON, Env, PrivilegedTestCase, remove_cgroup, wait_for
from test_netns import Netns, Pod
from test_rules import agent_environ, finish, pending_approvals, spawn, stop

GROUPS = "/api/atlas/v2/groups"
CLUSTERS = "/api/atlas/v2/groups/5f0000000000000000000001/clusters"
PER_AGENT = 6

# N fresh TLS connections one after another, two keep-alive requests on each.
SEQUENTIAL = r'''
import http.client, json, os, socket, ssl, sys
host, addr, n, accept, path = sys.argv[1:6]
ctx = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
out = []
for i in range(int(n)):
    c = http.client.HTTPConnection(host, 443, timeout=20)
    c.sock = ctx.wrap_socket(socket.create_connection((addr, 443), timeout=20), server_hostname=host)
    for _ in range(2):
        c.request("GET", path, headers={"Host": host, "Accept": accept})
        r = c.getresponse()
        r.read()
        out.append(r.status)
    c.close()
print(json.dumps(out))
'''

# N TLS connections held open at once; prints how many completed a handshake.
HOLD = r'''
import json, os, socket, ssl, sys, time
host, addr, n = sys.argv[1:4]
ctx = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
raws = [socket.create_connection((addr, 443), timeout=10) for _ in range(int(n))]
ok, held = 0, []
for raw in raws:
    try:
        held.append(ctx.wrap_socket(raw, server_hostname=host))
        ok += 1
    except (OSError, ssl.SSLError):
        pass
print(json.dumps({"handshakes": ok}), flush=True)
sys.stdin.read()   # hold them until the test has looked
'''

# Run as an unprivileged user: try to join the daemon's SO_REUSEPORT group.
JOIN = r'''
import errno, json, socket, sys
port = int(sys.argv[1])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
try:
    s.bind(("127.0.0.1", port))
    s.listen()
    print(json.dumps({"joined": True}))
except OSError as e:
    print(json.dumps({"joined": False, "errno": errno.errorcode.get(e.errno, str(e.errno))}))
'''


class WorkersTest(PrivilegedTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.env = Env(config_extra={"workers": 2, "limits": {"max_connections_per_agent": PER_AGENT}},
                      rules={"default": "allow", "list": [
                          {"name": "clusters-need-approval", "method": "POST",
                           "path": "/api/atlas/v2/groups/{groupId}/clusters", "action": "approve",
                           "timeout": 30}]})
        try:
            cls.env.start_daemon()
        except Exception:
            cls.env.close()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.env.close()

    def workers(self):
        return {w["worker"]: w for w in self.env.status()["workers"]}

    def python_agent(self, script, *args, name, **kw):
        return self.env.run_agent([SYSTEM_PYTHON, "-c", script, *args], name=name, **kw)

    def test_1_connections_spread_over_workers_all_served(self):
        env = self.env
        self.assertEqual(sorted(self.workers()), [0, 1])
        before = {i: w["requests"] for i, w in self.workers().items()}
        seen = len(env.fake.api_requests())
        p = self.python_agent(SEQUENTIAL, HOST, env.fake_addr, "24", ACCEPT_V2, GROUPS, name="spread",
                              timeout=120)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(json.loads(p.stdout), [200] * 48)
        # Every request reached Atlas with the credential, none without.
        api = env.fake.api_requests()[seen:]
        self.assertEqual(len(api), 48)
        for r in api:
            self.assertTrue(r["header_map"].get("authorization", "").startswith("Bearer "), r)
        # The kernel spread the 24 connections over both listeners (all on
        # one: a chance of 2^-23).
        after = self.workers()
        served = {i: after[i]["requests"] - before[i] for i in after}
        self.assertEqual(sum(served.values()), 48, served)
        self.assertGreater(served[0], 0, served)
        self.assertGreater(served[1], 0, served)
        recs = [r for r in env.audit() if r["agent"] == "spread"]
        self.assertEqual(len(recs), 48)
        self.assertEqual({r["status"] for r in recs}, {200})
        # Metrics and status sum the workers.
        self.assertGreaterEqual(env.status()["counters"]["requests"], 48)

    def test_2_attack_per_agent_cap_counts_every_worker(self):
        env = self.env
        refused = env.status()["counters"]["refused_over_limit"]
        proc = subprocess.Popen([LAUNCHER, "--name", "greedy", "--", SYSTEM_PYTHON, "-c", HOLD, HOST, env.fake_addr,
                                 str(2 * PER_AGENT)],
                                env=agent_environ(env), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        self.addCleanup(stop, proc)
        line = proc.stdout.readline()
        self.assertTrue(line, proc.stderr.read() if proc.poll() is not None else "no output")
        # Twice the cap at once, spread over two workers: exactly the cap is
        # served, whichever worker accepted them.
        self.assertEqual(json.loads(line)["handshakes"], PER_AGENT)
        live = [c for c in env.status()["connections"] if c["agent"] == "greedy"]
        self.assertEqual(len(live), PER_AGENT, live)
        self.assertEqual(env.status()["counters"]["refused_over_limit"] - refused, PER_AGENT)
        proc.communicate(timeout=10)
        # Given back when they close, on whichever worker they were.
        wait_for(lambda: not [c for c in env.status()["connections"] if c["agent"] == "greedy"], timeout=5,
                 what="greedy's connections gone")
        p = self.python_agent(SEQUENTIAL, HOST, env.fake_addr, "1", ACCEPT_V2, GROUPS, name="greedy")
        self.assertEqual(json.loads(p.stdout), [200, 200], p.stderr)

    def test_3_request_held_on_a_worker_is_decided_by_the_operator(self):
        env = self.env
        body = {"name": "held-on-worker", "providerSettings": {"instanceSizeName": "M10"}}
        procs = []
        self.addCleanup(lambda: [stop(p) for p in procs])
        on = {}
        # Until one is held on worker 1 (each connection: one chance in two).
        for i in range(20):
            name = f"held-{i}"
            p = spawn(env, "POST", CLUSTERS, name, body=body)
            procs.append(p)
            wait_for(lambda: any(a["agent"] == name for a in pending_approvals(env)), timeout=10,
                     what=f"{name} held")
            conn = [c for c in env.status()["connections"] if c["agent"] == name]
            self.assertEqual(len(conn), 1, conn)
            on[conn[0]["worker"]] = (name, p)
            if 1 in on and 0 in on:
                break
        self.assertIn(1, on, "no held request landed on worker 1 in 20 connections")
        held = {a["agent"]: a for a in pending_approvals(env)}
        # Allow the one on worker 1, deny the one on worker 0.
        name1, p1 = on[1]
        d = env.cli("approvals", "allow", str(held[name1]["id"]))
        self.assertEqual(d.returncode, 0, d.stderr)
        self.assertEqual(finish(p1).status, 201)
        if 0 in on:
            name0, p0 = on[0]
            d = env.cli("approvals", "deny", str(held[name0]["id"]))
            self.assertEqual(d.returncode, 0, d.stderr)
            self.assertEqual(finish(p0).status, 403)
        for a in pending_approvals(env):
            env.cli("approvals", "deny", str(a["id"]))
        rec = [r for r in env.audit() if r["agent"] == name1]
        self.assertEqual(rec[-1]["status"], 201, rec)

    def test_4_attack_unprivileged_process_cannot_join_the_listeners(self):
        # The listeners share the port (SO_REUSEPORT); the kernel lets only
        # sockets of the same user join, so an agent (another uid) cannot
        # take a share of its neighbours' connections.
        p = subprocess.run([SYSTEM_PYTHON, "-c", JOIN, str(self.env.port)], capture_output=True, text=True,
                           timeout=10, user=65534, group=65534, extra_groups=[])
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(json.loads(p.stdout), {"joined": False, "errno": "EADDRINUSE"})

    def test_5_agents_namespace_connections_are_shared_out(self):
        env = self.env
        net = Netns(f"atlasgate-it-{env.tag}-w")
        self.addCleanup(net.close)
        pod = Pod(os.path.join(env.agents_cgroup, "pod-w"), net)
        self.addCleanup(lambda: remove_cgroup(os.path.join(env.agents_cgroup, "pod-w")))
        self.addCleanup(pod.stop)
        wait_for(lambda: len(env.status()["agent_namespaces"]) == 1, timeout=5, what="listener in the namespace")
        before = {i: w["requests"] for i, w in self.workers().items()}
        argv = ["curl", "-sS", "--max-time", "15", "--cacert", env.trust_bundle(),
                "--resolve", f"{HOST}:443:{env.fake_addr}", "-H", f"Accept: {ACCEPT_V2}",
                "-o", "/dev/null", "-w", "%{http_code}\n"]
        # Four curls, each its own connection: worker 0's listener there hands
        # them out in turn.
        for _ in range(4):
            rc, out, err = pod.run(argv + [f"https://{HOST}{GROUPS}"])
            self.assertEqual((rc, out.strip()), (0, "200"), err)
        after = self.workers()
        served = {i: after[i]["requests"] - before[i] for i in after}
        self.assertEqual(served, {0: 2, 1: 2})
        recs = [r for r in env.audit() if r["agent"] == "pod-w"]
        self.assertEqual(len(recs), 4)


if __name__ == "__main__":
    unittest.main()
