"""A burst of agents must not become a burst against Atlas.

The upstream pool opens at most limits.max_upstream_connections connections
per target, a bounded number at a time while it is cold; requests that find
none free wait in a fair queue up to limits.upstream_queue_timeout, then get
503 ATLASGATE_UPSTREAM_BUSY with Retry-After, never a hang.

Each test drives one agent process (asyncio, through scripts/atlasgate-run)
that opens N connections at once and sends one request on each, and checks
what the stand-in saw: its peak of simultaneous connections, counted by the
stand-in itself (/__fake/stats peak_connections).
"""

import json
import threading
import time
import unittest

from harness import ACCEPT_V2, HOST, PROJECT_ID, SYSTEM_PYTHON, Env, PrivilegedTestCase, wait_for

GROUPS = "/api/atlas/v2/groups"

# One request on each of N simultaneous connections; prints a JSON summary.
BURST = r'''
import asyncio, json, os, ssl, sys

host, addr, n, accept, path = sys.argv[1:6]
n = int(n)
ctx = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
REQ = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n".encode()
out = {"statuses": {}, "codes": {}, "retry_after": [], "errors": []}

async def one(i):
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection(addr, 443, ssl=ctx, server_hostname=host), 60)
        w.write(REQ)
        data = await asyncio.wait_for(r.read(), 90)
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = lines[0].split()[1]
        out["statuses"][status] = out["statuses"].get(status, 0) + 1
        for l in lines[1:]:
            k, _, v = l.partition(":")
            if k.strip().lower() == "retry-after":
                out["retry_after"].append(v.strip())
        if status != "200":
            code = json.loads(body).get("errorCode", "?")
            out["codes"][code] = out["codes"].get(code, 0) + 1
        w.close()
    except Exception as e:
        out["errors"].append(f"{i}: {e!r}")

async def main():
    await asyncio.gather(*(one(i) for i in range(n)))

asyncio.run(main())
print(json.dumps(out))
'''


# A hostile agent: N TLS connections, a big response asked on each, the head
# read and then nothing: atlasgate's upstream connection stays busy relaying to
# a reader that does not read.
HOG = r'''
import os, socket, ssl, sys, time
host, addr, n, accept, path, hold = sys.argv[1:7]
ctx = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
conns = []
for i in range(int(n)):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)   # as small as the kernel allows
    s.connect((addr, 443))
    t = ctx.wrap_socket(s, server_hostname=host)
    t.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: {accept}\r\n\r\n".encode())
    conns.append(t)
print("holding", len(conns), flush=True)
time.sleep(float(hold))
'''


class UpstreamCapTest(PrivilegedTestCase):

    def burst(self, env, n, name="burst"):
        p = env.run_agent([SYSTEM_PYTHON, "-c", BURST, HOST, env.fake_addr, str(n), ACCEPT_V2, GROUPS],
                          name=name, timeout=180)
        self.assertEqual(p.returncode, 0, p.stderr)
        return json.loads(p.stdout)

    def pool_status(self, env):
        return {u["host"]: u for u in env.status()["upstream"]}[HOST]

    def test_burst_is_capped_and_every_request_served(self):
        # 120 agent connections at once, the pool capped at 6 connections: the
        # stand-in never sees more than 6 at a time, every request gets 200.
        with Env(config_extra={"limits": {"max_upstream_connections": 6, "upstream_queue_timeout": 30}}) as env:
            env.start_daemon()
            r = self.burst(env, 120)
            self.assertEqual(r["errors"], [])
            self.assertEqual(r["statuses"], {"200": 120}, r)
            stats = env.fake.stats()
            # The token request's connection is one of the pool's 6; +1 is
            # this very stats request, made while the pool's 6 are still open.
            self.assertLessEqual(stats["peak_connections"], 6 + 1, stats)
            self.assertGreaterEqual(stats["peak_connections"], 1)
            self.assertLessEqual(stats["connections"], 6 * 2, "connections are reused, not re-opened per request")
            pool = self.pool_status(env)
            print(f"pool after the burst: {pool}; stand-in saw {stats['connections']} connections, "
                  f"peak {stats['peak_connections']}")
            self.assertLessEqual(pool["open"], 6)
            self.assertEqual(pool["waiting"], 0)
            self.assertGreater(pool["queued"], 0)
            self.assertEqual(pool["queue_timeouts"], 0)

    def test_upstream_that_accepts_a_handful(self):
        # The stand-in serves 3 connections at a time and has a listen backlog
        # of 2: a herd of connects would overflow it (dropped SYNs, 1 s kernel
        # retransmits, 504s). atlasgate's pool (cap 16, cold-start connects
        # bounded) must still get every request through, or answer the
        # documented 503 — nothing else.
        with Env(fake_extra=["--max-connections", "3", "--backlog", "2"],
                 config_extra={"limits": {"max_upstream_connections": 16, "upstream_queue_timeout": 20,
                                          "upstream_connect_timeout": 10}}) as env:
            env.start_daemon()
            r = self.burst(env, 80)
            self.assertEqual(r["errors"], [])
            allowed = {"200", "503"}
            self.assertTrue(set(r["statuses"]) <= allowed, r)
            self.assertTrue(set(r["codes"]) <= {"ATLASGATE_UPSTREAM_BUSY"}, r)
            self.assertEqual(len(r["retry_after"]), r["statuses"].get("503", 0))
            self.assertGreater(r["statuses"].get("200", 0), 0, r)
            # The pool's idle connections fill the stand-in's 3 slots: stop
            # the daemon (closing them) before asking the stand-in.
            env.stop_daemon()
            stats = env.fake.stats()
            self.assertLessEqual(stats["peak_connections"], 3, stats)
            print(f"handful upstream: {r['statuses']}; stand-in peak {stats['peak_connections']}")

    def test_queue_timeout_answers_503_busy_with_retry_after(self):
        # One upstream connection, every API response takes 1.5 s, requests
        # may wait 1 s: of 6 simultaneous requests the first is served and the
        # ones behind it give up with 503 ATLASGATE_UPSTREAM_BUSY + Retry-After
        # (never a hang, never a 502/504).
        with Env(config_extra={"limits": {"max_upstream_connections": 1, "upstream_queue_timeout": 1}}) as env:
            env.start_daemon()
            status, _, _ = env.curl(GROUPS)  # token fetched, connection warm
            self.assertEqual(status, 200)
            env.fake.faults({"stall_ms": 1500})
            r = self.burst(env, 6)
            self.assertEqual(r["errors"], [])
            self.assertTrue(set(r["statuses"]) <= {"200", "503"}, r)
            self.assertGreaterEqual(r["statuses"].get("200", 0), 1, r)
            self.assertGreaterEqual(r["statuses"].get("503", 0), 3, r)
            self.assertEqual(set(r["codes"]), {"ATLASGATE_UPSTREAM_BUSY"})
            self.assertTrue(all(v == "1" for v in r["retry_after"]), r["retry_after"])
            env.fake.faults({"stall_ms": 0})
            pool = self.pool_status(env)
            self.assertGreaterEqual(pool["queue_timeouts"], 3)
            self.assertLessEqual(pool["open"], 1)
            busy = [a for a in env.audit() if a.get("error") == "ATLASGATE_UPSTREAM_BUSY"]
            self.assertEqual(len(busy), r["statuses"]["503"])
            self.assertTrue(all(a["status"] == 503 for a in busy))
            # The metrics carry the same figures.
            status, _, _ = env.curl(GROUPS)
            self.assertEqual(status, 200)

    def test_slow_reader_cannot_starve_other_agents(self):
        # One agent holds as many upstream connections as it can by never
        # reading its (large) responses. It gets at most its share
        # (max_upstream_connections_per_agent); another agent is still served.
        with Env(config_extra={"limits": {"max_upstream_connections": 4, "max_upstream_connections_per_agent": 2,
                                          "upstream_queue_timeout": 3}}) as env:
            env.start_daemon()
            status, _, _ = env.curl(GROUPS)  # token fetched
            self.assertEqual(status, 200)
            path = f"/api/atlas/v2/groups/{PROJECT_ID}/clusters"
            env.fake.faults({"api_status": {"path_prefix": path, "status": 200, "count": -1, "body": "x" * (8 << 20)}})
            out = {}
            hog = threading.Thread(target=lambda: out.update(p=env.run_agent(
                [SYSTEM_PYTHON, "-c", HOG, HOST, env.fake_addr, "6", ACCEPT_V2, path, "12"],
                name="hog", user=65534, timeout=60)))
            hog.start()
            try:
                wait_for(lambda: self.pool_status(env)["open"] >= 2, timeout=10, what="the hog's connections busy")
                time.sleep(1)
                pool = self.pool_status(env)
                self.assertLessEqual(pool["open"] - pool["idle"], 2 + pool["connecting"], pool)
                started = time.monotonic()
                status, body, p = env.curl(GROUPS, name="victim", user=65534)
                took = time.monotonic() - started
                print(f"victim served in {took:.2f} s while the hog holds {pool['open'] - pool['idle']}")
                self.assertEqual(status, 200, body + p.stderr)
                self.assertLess(took, 3, "the victim waited in the queue behind the hog")
            finally:
                hog.join(60)


if __name__ == "__main__":
    unittest.main()
