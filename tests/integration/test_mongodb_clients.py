"""More MongoDB clients through atlasgate's wire-protocol front end.

The same set-up as test_mongodb.py (dnsmasq answering
`mongodb+srv://cluster0.abcde.mongodb.net`, tests/fake_mongo's three members on
127.0.92.1-3:27017, a per-agent temporary database user minted through the
Atlas stand-in), driven by other clients, all started through
scripts/atlasgate-run with no database credential:

  - the official Node driver (npm mongodb, tests/mcp/mongo_driver_client.mjs):
    insertMany, a find served in batches (getMore), a transaction, zlib
    compression asked for (and negotiated away by atlasgate), streaming
    (exhaust) monitoring, a drop refused by a rule;
  - the official MongoDB MCP server's database tools (find, aggregate,
    drop-collection) on a configured connection string;
  - a raw agent speaking the wire protocol over TLS (Python ssl + bson): a
    command with `$db` twice, a header announcing a 2 GB message, its own
    saslStart; the daemon survives all of it.
"""

import json
import os
import unittest

from harness import wait_for
from test_mcp import MCP_CLIENT, MCP_DIR
from test_mongodb import MEMBERS, URI, MongoCase

DRIVER_CLIENT = os.path.join(MCP_DIR, "mongo_driver_client.mjs")
SERVER_ENTRY = os.path.join(MCP_DIR, "node_modules", "mongodb-mcp-server", "dist", "esm", "index.js")
NO_DROPS = 'atlasgate: blocked by rule "no-drops"'

# The raw agent: argv[1] is the member's name, argv[2] the database. One JSON
# object on stdout: what each probe got back.
RAW_AGENT = r'''
import json, socket, ssl, struct, sys, time
import bson

HOST, DB = sys.argv[1], sys.argv[2]
OP_MSG = 2013
ctx = ssl.create_default_context()  # SSL_CERT_FILE: the launcher's trust bundle
next_id = [100]


def connect():
    s = socket.create_connection((HOST, 27017), timeout=60)
    return ctx.wrap_socket(s, server_hostname=HOST)


def elements(doc):
    raw = bson.encode(doc)
    return raw[4:-1]


def raw_doc(*parts):
    body = b"".join(parts)
    return struct.pack("<i", len(body) + 5) + body + b"\x00"


def op_msg(body, flags=0):
    next_id[0] += 1
    payload = struct.pack("<I", flags) + b"\x00" + body
    return struct.pack("<iiii", 16 + len(payload), next_id[0], 0, OP_MSG) + payload


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError(f"closed after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def reply(s):
    length, _rid, response_to, opcode = struct.unpack("<iiii", recv_exact(s, 16))
    body = recv_exact(s, length - 16)
    if opcode != OP_MSG or body[4] != 0:
        raise ValueError(f"unexpected reply: opcode {opcode}, section kind {body[4]}")
    doc = bson.decode(body[5:5 + struct.unpack("<i", body[5:9])[0]])
    return {"responseTo": response_to, "requestId": next_id[0],
            "doc": {k: v for k, v in doc.items() if k in ("ok", "code", "codeName", "errmsg", "n")}}


def command(s, doc):
    s.sendall(op_msg(bson.encode(doc)))
    return reply(s)


out = {}
s = connect()
# (a) a command whose body has `$db` twice: which database would it run on?
s.sendall(op_msg(raw_doc(elements({"find": "items", "$db": DB}), elements({"$db": "admin"}))))
out["duplicate_db"] = reply(s)
out["ping_after_duplicate"] = command(s, {"ping": 1, "$db": DB})
out["count_after_duplicate"] = command(s, {"count": "items", "$db": DB})
# (c) the agent's own authentication.
out["sasl_start"] = command(s, {"saslStart": 1, "mechanism": "SCRAM-SHA-256",
                                "payload": bson.Binary(b"n,,n=eve,r=rOprNGfwEbeRWgbNEkqO"),
                                "autoAuthorize": 1, "$db": "admin"})
out["ping_after_sasl"] = command(s, {"ping": 1, "$db": DB})
s.close()

# (b) a header announcing a 2 GB message, on a connection of its own.
s = connect()
s.sendall(struct.pack("<iiii", 0x7FFFFFF0, 1, 0, OP_MSG) + b"\x00" * 16)
started = time.monotonic()
try:
    data = s.recv(4096)
    out["huge_header"] = {"closed": data == b"", "got": len(data)}
except (ssl.SSLError, ConnectionError, EOFError) as e:
    out["huge_header"] = {"closed": True, "error": type(e).__name__}
except socket.timeout:
    out["huge_header"] = {"closed": False, "error": "timeout"}
out["huge_header"]["seconds"] = round(time.monotonic() - started, 2)
s.close()
print(json.dumps(out, default=str))
'''

# Runs the MCP server with a connection string configured: mcp_client.mjs
# removes MDB_MCP_CONNECTION_STRING from the server's environment, so the
# server is started (--server) through this wrapper, which sets it back.
MCP_WRAPPER = '''process.env.MDB_MCP_CONNECTION_STRING = {uri};
await import({entry});
'''


class MongoClientsTest(MongoCase):
    RULES = {"default": "allow", "list": [
        {"name": "no-drops", "protocol": "mongodb", "command": ["drop", "dropDatabase"], "action": "block"},
    ]}

    # --- helpers -----------------------------------------------------------

    def context(self, p=None):
        out = ""
        if p is not None:
            out += f"\n--- exit {p.returncode}\n--- stdout:\n{p.stdout[-5000:]}\n--- stderr:\n{p.stderr[-5000:]}"
        return out + f"\n--- daemon log (tail):\n{self.env.daemon_output()[-5000:]}"

    def minted_user(self, agent):
        minted = self.env.fake._call("GET", "/__fake/minted")
        users = [u["username"] for u in minted["database_users"]
                 if u["username"].startswith("atlasgate-") and agent in u["username"]]
        self.assertEqual(len(users), 1, minted)
        return users[0]

    def driver(self, *args, name="driver-agent", timeout=90):
        p = self.env.run_agent(self.dns.wrap(["node", DRIVER_CLIENT, "--uri", URI, *args]), name=name,
                               timeout=timeout)
        try:
            summary = json.loads(p.stdout)
        except ValueError:
            self.fail("the driver client printed no summary" + self.context(p))
        return p, summary

    def commands_since(self, mark):
        return self.mongo.commands()[mark:]

    def assert_daemon_alive(self):
        self.assertIsNone(self.env.daemon.poll(), "the daemon exited" + self.context())

    # --- cases -------------------------------------------------------------

    def test_1_node_driver(self):
        mark = len(self.mongo.commands())
        coll = "driver_items"
        p, s = self.driver("--coll", coll, "--count", "10", "--batch-size", "3", "--compressors", "zlib")
        ctx = json.dumps(s, indent=1) + self.context(p)
        steps = s["steps"]
        # Every step but the drop succeeded, with no credential in the URI.
        for step in ("insert", "find", "txn", "count", "awaited", "cleanup"):
            self.assertTrue(steps.get(step, {}).get("ok"), f"{step} failed" + ctx)
        self.assertEqual(p.returncode, 0, ctx)
        self.assertEqual(steps["insert"]["insertedCount"], 10, ctx)
        self.assertEqual(steps["find"]["ids"], list(range(10)), ctx)
        self.assertTrue(steps["txn"]["found"], ctx)
        # The drop: refused with the rule's message, and the collection stays.
        drop = steps["drop"]
        self.assertFalse(drop["dropped"], ctx)
        self.assertEqual(drop["error"]["code"], 13, ctx)
        self.assertIn(NO_DROPS, drop["error"]["errmsg"], ctx)
        self.assertEqual(steps["count"]["count"], 11, ctx)  # 10 + the transaction's
        self.assertGreaterEqual(s["heartbeats"]["awaited"], 1, ctx)

        user = self.minted_user("driver-agent")
        cmds = self.commands_since(mark)
        mine = [c for c in cmds if c.get("collection") == coll or c.get("command") == "getMore"]
        log = json.dumps(cmds[-60:], indent=None)
        # getMore: the find was served in batches, on a connection atlasgate authenticated.
        get_mores = [c for c in cmds if c.get("command") == "getMore"]
        self.assertGreaterEqual(len(get_mores), 3, log)  # 10 documents in batches of 3
        self.assertTrue(all(c["user"] == user and c["ok"] == 1 for c in get_mores), get_mores)
        for c in mine:
            self.assertEqual(c["user"], user, c)
        # The transaction: its insert and its commit reached the cluster.
        self.assertTrue(any(c.get("command") == "commitTransaction" and c["user"] == user and c["ok"] == 1
                            for c in cmds), log)
        # The drop never reached the cluster.
        self.assertFalse([c for c in cmds if c.get("command") in ("drop", "dropDatabase")], log)
        # Compression: the driver asked for zlib; no hello reached the cluster asking
        # for any, and nothing was compressed.
        hellos = [c for c in cmds if c.get("command") in ("hello", "isMaster", "ismaster")]
        self.assertTrue(hellos, log)
        self.assertFalse([c for c in hellos if c.get("compression")], hellos)
        self.assertFalse([c for c in cmds if c.get("opcode") == "OP_COMPRESSED" or c.get("compressor")], log)
        # Streaming monitoring (exhaustAllowed hellos) relayed through atlasgate.
        # The driver counted a reply to a streaming hello (a heartbeat that
        # started awaited; mongo_driver_client.mjs says why the handshake's
        # does not count), and the stand-in logs a command before answering
        # it, so the hello is in its log.
        def exhaust_hellos():
            return [c for c in self.mongo.commands()
                    if c.get("command") in ("hello", "isMaster", "ismaster") and c.get("exhaust")]
        exhaust = wait_for(exhaust_hellos, timeout=5, what="an exhaust hello in the stand-in's log")
        self.assertTrue(all(c["user"] == user for c in exhaust), exhaust)
        # The audit: the refusal, by the rule, for this agent.
        audit = [r for r in self.env.audit() if r.get("protocol") == "mongodb" and r.get("agent") == "driver-agent"]
        drops = [r for r in audit if r["command"] == "drop"]
        self.assertTrue(drops, audit)
        self.assertEqual((drops[-1]["decision"], drops[-1]["rule"]), ("block", "no-drops"), drops[-1])
        self.assertTrue(any(r["command"] == "getMore" and r["decision"] == "allow" for r in audit), audit)

    def test_2_mcp_server_database_tools(self):
        mark = len(self.mongo.commands())
        wrapper = os.path.join(self.env.tmp, "mcp_server_with_uri.mjs")
        with open(wrapper, "w") as f:
            f.write(MCP_WRAPPER.format(uri=json.dumps(URI), entry=json.dumps(SERVER_ENTRY)))
        os.chmod(wrapper, 0o644)
        coll = "mcp_items"
        base = {"connectionId": "preconfigured", "database": "app", "collection": coll}
        docs = [{"_id": i, "name": n, "size": s} for i, n, s in ((1, "alpha", 3), (2, "beta", 5), (3, "gamma", 8))]
        calls = [
            ("insert-many", {**base, "documents": docs}),
            ("find", {**base, "filter": {"size": {"$gte": 5}}, "sort": {"_id": 1}}),
            ("aggregate", {**base, "pipeline": [{"$match": {}}, {"$group": {"_id": None, "total": {"$sum": "$size"}}}]}),
            ("drop-collection", base),
            ("count", base),
            ("delete-many", {**base, "filter": {}}),
        ]
        argv = ["node", MCP_CLIENT, "--server", wrapper, "--timeout-ms", "45000"]
        for name, args in calls:
            argv += ["--tool", f"{name}:{json.dumps(args)}"]
        # The server also gets (dummy) Atlas API credentials from mcp_client.mjs:
        # cloud.mongodb.com resolves to the stand-in through /etc/hosts, as in test_mcp.
        p = self.env.run_agent(self.dns.wrap(self.env.with_hosts(argv)), name="mcp-agent", timeout=120)
        try:
            summary = json.loads(p.stdout)
        except ValueError:
            self.fail("mcp_client printed no summary" + self.context(p))
        ctx = json.dumps(summary, indent=1)[-8000:] + self.context(p)
        res = summary["calls"]
        for name in ("insert-many", "find", "aggregate", "count", "delete-many"):
            self.assertIn(name, res, ctx)
            self.assertFalse(res[name]["isError"], f"{name} failed" + ctx)
        self.assertIn("beta", res["find"]["text"], ctx)
        self.assertIn("gamma", res["find"]["text"], ctx)
        self.assertNotIn("alpha", res["find"]["text"], ctx)
        found = (res["find"].get("structuredContent") or {}).get("documents") or []
        self.assertEqual(sorted(d.get("name") for d in found), ["beta", "gamma"], ctx)
        self.assertRegex(res["aggregate"]["text"], r'"total":\s*16\b', ctx)
        # The drop is refused; the MCP server surfaces atlasgate's message.
        drop = res["drop-collection"]
        self.assertTrue(drop["isError"], ctx)
        self.assertIn("blocked by rule", drop["text"], ctx)
        self.assertIn("no-drops", drop["text"], ctx)
        self.assertIn(f'Found 3 documents in the collection "{coll}"', res["count"]["text"], ctx)  # it stayed
        # What reached the cluster came from the agent's minted user; no drop did.
        user = self.minted_user("mcp-agent")
        cmds = self.commands_since(mark)
        mine = [c for c in cmds if c.get("collection") == coll]
        self.assertTrue({"insert", "find", "aggregate", "delete"} <= {c["command"] for c in mine}, mine)
        self.assertTrue(all(c["user"] == user for c in mine), mine)
        self.assertFalse([c for c in cmds if c.get("command") in ("drop", "dropDatabase")], cmds)

    def test_3_attack_raw_wire_protocol(self):
        mark = len(self.mongo.commands())
        script = os.path.join(self.env.tmp, "raw_agent.py")
        with open(script, "w") as f:
            f.write(RAW_AGENT)
        os.chmod(script, 0o644)
        member = MEMBERS[0][0]
        p = self.env.run_agent(self.dns.wrap(["/usr/bin/python3", script, member, "app"]), name="raw-agent",
                               timeout=90)
        try:
            out = json.loads(p.stdout)
        except ValueError:
            self.fail("the raw agent printed no result" + self.context(p))
        ctx = json.dumps(out, indent=1) + self.context(p)
        # (a) `$db` twice: an error reply to that request, and the connection stays usable.
        dup = out["duplicate_db"]
        self.assertEqual(dup["doc"]["ok"], 0, ctx)
        self.assertIn("twice", dup["doc"].get("errmsg", ""), ctx)
        self.assertEqual(dup["responseTo"], 101, ctx)
        self.assertEqual(out["ping_after_duplicate"]["doc"]["ok"], 1, ctx)
        self.assertEqual(out["count_after_duplicate"]["doc"]["ok"], 1, ctx)  # still authenticated
        # (c) the agent's own saslStart: atlasgate authenticates connections itself.
        sasl = out["sasl_start"]["doc"]
        self.assertEqual((sasl["ok"], sasl.get("code")), (0, 18), ctx)
        self.assertEqual(out["ping_after_sasl"]["doc"]["ok"], 1, ctx)
        # (b) a header announcing 2 GB: closed at once, nothing read or buffered.
        self.assertTrue(out["huge_header"]["closed"], ctx)
        self.assertLess(out["huge_header"]["seconds"], 20, ctx)
        self.assertEqual(p.returncode, 0, ctx)
        # None of it reached the cluster: neither the ambiguous command nor the saslStart.
        cmds = self.commands_since(mark)
        user = self.minted_user("raw-agent")
        self.assertFalse([c for c in cmds if c.get("auth_user") == "eve" or
                          (c.get("command") == "find" and c.get("collection") == "items")], cmds)
        self.assertTrue([c for c in cmds if c.get("command") == "count" and c["user"] == user], cmds)
        audit = [r for r in self.env.audit() if r.get("protocol") == "mongodb" and r.get("agent") == "raw-agent"]
        self.assertTrue([r for r in audit if r["decision"] == "error" and r.get("error") == "MALFORMED_COMMAND"], audit)
        self.assertTrue([r for r in audit if r["command"] == "saslStart" and r["decision"] == "local"], audit)
        # The daemon survived: a normal client still works.
        self.assert_daemon_alive()
        p, s = self.driver("--mode", "ping", name="after-attack")
        self.assertEqual(p.returncode, 0, json.dumps(s) + self.context(p))
        self.assertTrue(s["steps"]["ping"]["ok"], s)
        self.assert_daemon_alive()


if __name__ == "__main__":
    unittest.main()
