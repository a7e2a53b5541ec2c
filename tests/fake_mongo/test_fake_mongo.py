#!/usr/bin/python3
"""Self-test for tests/fake_mongo/fake_mongo.py (stdlib unittest + Debian's
python3-pymongo; run with /usr/bin/python3).

Starts fake_atlas (127.0.0.1, a free port) and a three-member fake_mongo
replica set on 127.0.91.1-3 (port 27017 as root, else free ports), members
named by their IP so no DNS is needed, with a PKI made by make_pki.sh (IP SANs)
in a temporary directory. Talks to them with pymongo and raw wire messages, and
removes both processes and the directory at the end.
Run: /usr/bin/python3 tests/fake_mongo/test_fake_mongo.py [-v]
"""

import base64
import json
import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

import bson
import pymongo
from pymongo.errors import OperationFailure

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import fake_mongo  # noqa: E402  (for crc32c)

FAKE_MONGO = os.path.join(HERE, "fake_mongo.py")
FAKE_ATLAS = os.path.join(HERE, "..", "fake_atlas", "fake_atlas.py")
MAKE_PKI = os.path.join(HERE, "..", "fake_atlas", "make_pki.sh")

ADDRS = ["127.0.91.1", "127.0.91.2", "127.0.91.3"]
SET_NAME = "atlas-abcde-shard-0"
USER, PASSWORD = "alice", "s3cret-static"
USER_DELAY = 1.5
GROUP = "5f0000000000000000000001"
ATLAS_CLIENT = "mdb_sa_id_5f0000000000000000000fa1:mdb_sa_sk_fake-atlas-client-secret"
V2 = "application/vnd.atlas.2025-03-12+json"


def wait_ready(proc, ready, errfile, what):
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if os.path.exists(ready):
            with open(ready) as f:
                text = f.read()
            if text.endswith("\n"):
                return text
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    stop(proc)
    with open(errfile) as f:
        raise RuntimeError("%s did not start: %s" % (what, f.read()))


def start(tmp, name, cmd):
    """Start cmd (which writes --ready-file tmp/name.ready); (proc, ready text)."""
    ready = os.path.join(tmp, name + ".ready")
    errfile = os.path.join(tmp, name + ".stderr")
    with open(errfile, "wb") as err:
        proc = subprocess.Popen(cmd + ["--ready-file", ready], stdin=subprocess.DEVNULL,
                                stdout=err, stderr=err)
    return proc, wait_ready(proc, ready, errfile, name)


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


class Wire:
    """A raw TLS connection to one member, speaking OP_MSG by hand."""

    def __init__(self, ca, addr, port):
        ctx = ssl.create_default_context(cafile=ca)
        self.sock = ctx.wrap_socket(socket.create_connection((addr, port), timeout=10),
                                    server_hostname=addr)
        self.next_id = 100

    def send(self, doc, flags=0, checksum=False, corrupt=False):
        """Send an OP_MSG; returns its requestID."""
        self.next_id += 1
        body = struct.pack("<I", flags | (1 if checksum else 0)) + b"\x00" + bson.encode(doc)
        length = 16 + len(body) + (4 if checksum else 0)
        msg = struct.pack("<iiii", length, self.next_id, 0, 2013) + body
        if checksum:
            msg += struct.pack("<I", fake_mongo.crc32c(msg) ^ (1 if corrupt else 0))
        self.sock.sendall(msg)
        return self.next_id

    def recv(self):
        """(requestID, responseTo, flags, document), or None when closed."""
        header = self.recv_exact(16)
        if header is None:
            return None
        length, request_id, response_to, opcode = struct.unpack("<iiii", header)
        assert opcode == 2013, opcode
        body = self.recv_exact(length - 16)
        flags = struct.unpack_from("<I", body)[0]
        assert body[4] == 0
        return request_id, response_to, flags, bson.decode(body[5:])

    def recv_exact(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return buf

    def close(self):
        self.sock.close()


class FakeMongoTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="fake_mongo_test.")
        cls.addClassCleanup(shutil.rmtree, cls.tmp, ignore_errors=True)
        subprocess.run(["bash", MAKE_PKI, cls.tmp] + ADDRS + ["127.0.0.1"], check=True)
        cls.ca = os.path.join(cls.tmp, "upstream-ca.pem")
        cert, key = os.path.join(cls.tmp, "server.pem"), os.path.join(cls.tmp, "server.key")
        cls.atlas_proc, ready = start(cls.tmp, "fake_atlas", [
            sys.executable, FAKE_ATLAS, "--listen", "127.0.0.1", "--port", "0",
            "--cert", cert, "--key", key, "--quiet"])
        cls.addClassCleanup(stop, cls.atlas_proc)
        cls.atlas_url = "https://127.0.0.1:%s" % ready.split()[1]
        cls.log = os.path.join(cls.tmp, "mongo.jsonl")
        port = "27017" if os.geteuid() == 0 else "0"
        cmd = [sys.executable, FAKE_MONGO, "--cert", cert, "--key", key, "--port", port,
               "--set-name", SET_NAME, "--user", "%s:%s" % (USER, PASSWORD),
               "--atlas-url", cls.atlas_url, "--atlas-ca", cls.ca, "--atlas-group", GROUP,
               "--user-delay", str(USER_DELAY), "--log", cls.log, "--quiet"]
        for addr in ADDRS:
            cmd += ["--member", "%s=%s" % (addr, addr)]
        cls.mongo_proc, ready = start(cls.tmp, "fake_mongo", cmd)
        cls.addClassCleanup(stop, cls.mongo_proc)
        cls.ports = [int(line.split()[2]) for line in ready.splitlines()]
        cls.seeds = ",".join("%s:%d" % (a, p) for a, p in zip(ADDRS, cls.ports))

    def client(self, user=USER, password=PASSWORD, host=None, **kw):
        """A pymongo client of the replica set (or, with host and
        directConnection, of one member), closed at the end of the test."""
        opts = dict(tls=True, tlsCAFile=self.ca, serverSelectionTimeoutMS=5000)
        if user is not None:
            opts.update(username=user, password=password, authSource="admin",
                        authMechanism="SCRAM-SHA-256")
        if "directConnection" not in kw:
            opts["replicaSet"] = SET_NAME
        opts.update(kw)
        c = pymongo.MongoClient(host or self.seeds, **opts)
        self.addCleanup(c.close)
        return c

    def log_entries(self):
        with open(self.log) as f:
            return [json.loads(line) for line in f]

    def atlas(self, method, path, body=None):
        """An Atlas Administration API call to fake_atlas with its default
        service account."""
        ctx = ssl.create_default_context(cafile=self.ca)
        basic = base64.b64encode(ATLAS_CLIENT.encode()).decode()
        req = urllib.request.Request(self.atlas_url + "/api/oauth/token", method="POST",
                                     data=b"grant_type=client_credentials",
                                     headers={"Authorization": "Basic " + basic,
                                              "Content-Type": "application/x-www-form-urlencoded"})
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            token = json.load(r)["access_token"]
        req = urllib.request.Request(self.atlas_url + "/api/atlas/v2" + path, method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Authorization": "Bearer " + token, "Accept": V2,
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            return r.status

    def wire(self, member=0):
        w = Wire(self.ca, ADDRS[member], self.ports[member])
        self.addCleanup(w.close)
        return w

    # -- replica set and data --

    def test_replica_set_topology(self):
        c = self.client()
        c.admin.command("ping")
        self.assertEqual(c.primary, (ADDRS[0], self.ports[0]))
        hello = c.admin.command("hello")
        self.assertEqual(hello["setName"], SET_NAME)
        self.assertEqual(hello["hosts"], ["%s:%d" % (a, p) for a, p in zip(ADDRS, self.ports)])
        self.assertTrue(hello["isWritablePrimary"])
        self.assertEqual(hello["maxWireVersion"], 21)
        self.assertEqual(hello["topologyVersion"]["counter"], 0)
        self.assertEqual(c.admin.command("buildInfo")["version"], "7.0.12")
        status = c.admin.command("connectionStatus")
        self.assertEqual(status["authInfo"]["authenticatedUsers"], [{"user": USER, "db": "admin"}])

    def test_crud_round_trip(self):
        coll = self.client().crud.items
        coll.insert_many([{"n": i, "kind": "even" if i % 2 == 0 else "odd", "sub": {"v": i * 10}}
                          for i in range(20)])
        coll.insert_one({"_id": 1})
        with self.assertRaises(pymongo.errors.BulkWriteError) as cm:
            coll.insert_many([{"_id": 1}])
        self.assertEqual(cm.exception.details["writeErrors"][0]["code"], 11000)
        cur = coll.find({"kind": "odd", "n": {"$gte": 5}}, {"n": 1, "_id": 0}).sort("n", -1).batch_size(2)
        self.assertEqual(list(cur), [{"n": n} for n in (19, 17, 15, 13, 11, 9, 7, 5)])
        self.assertEqual(coll.count_documents({"sub.v": {"$in": [10, 20, 999]}}), 2)
        self.assertEqual([d["n"] for d in coll.find({"$or": [{"n": 0}, {"n": 3}]}).skip(1)], [3])
        self.assertEqual(coll.update_many({"kind": "odd"}, {"$inc": {"n": 100}, "$set": {"seen": True}})
                         .modified_count, 10)
        self.assertEqual(coll.find_one({"n": 103}, {"_id": 0, "n": 1, "seen": 1}), {"n": 103, "seen": True})
        res = coll.update_one({"n": 500}, {"$set": {"kind": "new"}}, upsert=True)
        self.assertIsNotNone(res.upserted_id)
        self.assertEqual(coll.delete_many({"seen": True}).deleted_count, 10)
        self.assertEqual(coll.delete_one({"kind": "new"}).deleted_count, 1)
        agg = list(coll.aggregate([{"$match": {"kind": {"$exists": True}}},
                                   {"$group": {"_id": "$kind", "count": {"$sum": 1}, "total": {"$sum": "$n"}}},
                                   {"$sort": {"_id": 1}}], batchSize=1))
        self.assertEqual(agg, [{"_id": "even", "count": 10, "total": 90}])
        self.assertEqual(list(coll.aggregate([{"$skip": 2}, {"$limit": 3}, {"$count": "c"}])), [{"c": 3}])
        self.assertEqual(coll.find_one_and_update({"n": 4}, {"$set": {"x": 1}},
                                                  return_document=pymongo.ReturnDocument.AFTER)["x"], 1)
        self.assertEqual(sorted(coll.distinct("kind")), ["even"])
        self.assertIn("items", coll.database.list_collection_names())
        coll.drop()
        self.assertNotIn("items", coll.database.list_collection_names())
        with self.assertRaises(OperationFailure) as cm:
            coll.database.command("drop", "items")
        self.assertEqual(cm.exception.code, 26)

    def test_get_more_and_kill_cursors(self):
        db = self.client().cursors
        db.c.insert_many([{"i": i} for i in range(10)])
        first = db.command("find", "c", batchSize=3, sort={"i": 1})
        cid = first["cursor"]["id"]
        self.assertEqual([d["i"] for d in first["cursor"]["firstBatch"]], [0, 1, 2])
        self.assertIsInstance(cid, bson.int64.Int64)
        nxt = db.command("getMore", cid, collection="c", batchSize=4)["cursor"]
        self.assertEqual([d["i"] for d in nxt["nextBatch"]], [3, 4, 5, 6])
        killed = db.command("killCursors", "c", cursors=[cid])
        self.assertEqual(killed["cursorsKilled"], [cid])
        with self.assertRaises(OperationFailure) as cm:
            db.command("getMore", cid, collection="c")
        self.assertEqual(cm.exception.code, 43)

    def test_secondary_refuses_writes(self):
        c = self.client(host="%s:%d" % (ADDRS[1], self.ports[1]), directConnection=True)
        with self.assertRaises(pymongo.errors.NotMasterError) as cm:
            c.sec.c.insert_one({"a": 1})
        self.assertEqual(cm.exception.details["code"], 10107)

    # -- access control and authentication --

    def test_unauthenticated_command_refused(self):
        c = self.client(user=None)
        self.assertEqual(c.admin.command("ping")["ok"], 1.0)
        with self.assertRaises(OperationFailure) as cm:
            c.test.command("find", "x")
        self.assertEqual(cm.exception.code, 13)
        self.assertEqual(cm.exception.details["codeName"], "Unauthorized")
        with self.assertRaises(OperationFailure) as cm:
            c.test.command("noSuchCommand")
        self.assertEqual(cm.exception.code, 59)

    def test_wrong_password_and_mechanism(self):
        with self.assertRaises(OperationFailure) as cm:
            self.client(password="wrong").admin.command("ping")
        self.assertEqual(cm.exception.code, 18)
        with self.assertRaises(OperationFailure) as cm:
            self.client(user="nobody").admin.command("ping")
        self.assertEqual(cm.exception.code, 18)
        with self.assertRaises(OperationFailure) as cm:
            self.client(authMechanism="SCRAM-SHA-1").admin.command("ping")
        self.assertEqual(cm.exception.code, 334)

    def test_atlas_users(self):
        path = "/groups/%s/databaseUsers" % GROUP
        pw = "atlas-pw-1"
        self.assertEqual(self.atlas("POST", path, {"databaseName": "admin", "username": "agent1",
                                                   "password": pw, "roles": []}), 201)
        self.assertEqual(self.atlas("POST", path, {"databaseName": "admin", "username": "expired",
                                                   "password": pw, "roles": [],
                                                   "deleteAfterDate": "2020-01-01T00:00:00Z"}), 201)
        created = time.monotonic()
        with self.assertRaises(OperationFailure) as cm:   # not deployed yet
            self.client(user="agent1", password=pw).admin.command("ping")
        self.assertEqual(cm.exception.code, 18)
        time.sleep(max(0.0, created + USER_DELAY + 0.3 - time.monotonic()))
        self.assertEqual(self.client(user="agent1", password=pw).admin.command("ping")["ok"], 1.0)
        with self.assertRaises(OperationFailure):
            self.client(user="expired", password=pw).admin.command("ping")
        self.assertEqual(self.atlas("PATCH", path + "/admin/agent1", {"password": "atlas-pw-2"}), 200)
        self.assertEqual(self.client(user="agent1", password="atlas-pw-2").admin.command("ping")["ok"], 1.0)
        with self.assertRaises(OperationFailure):
            self.client(user="agent1", password=pw).admin.command("ping")
        self.assertEqual(self.atlas("DELETE", path + "/admin/agent1"), 204)
        with self.assertRaises(OperationFailure) as cm:
            self.client(user="agent1", password="atlas-pw-2").admin.command("ping")
        self.assertEqual(cm.exception.code, 18)
        starts = [e for e in self.log_entries() if e["command"] == "saslStart" and e.get("auth_user") == "agent1"]
        self.assertTrue(starts)
        with open(self.log) as f:
            text = f.read()
        for secret in (pw, "atlas-pw-2", PASSWORD):
            self.assertNotIn(secret, text)

    # -- wire protocol --

    def test_compression_logged(self):
        c = self.client(compressors="zlib")
        c.comp.c.insert_one({"payload": "z" * 5000})
        self.assertEqual(len(c.comp.c.find_one()["payload"]), 5000)
        entries = self.log_entries()
        self.assertTrue(any(e["command"] in ("hello", "ismaster", "isMaster") and e.get("compression") == ["zlib"]
                            for e in entries))
        self.assertTrue(any(e["command"] == "find" and e["opcode"] == "OP_COMPRESSED"
                            and e["compressor"] == "zlib" and e["collection"] == "c" for e in entries))

    def test_op_msg_checksum(self):
        self.assertEqual(fake_mongo.crc32c(b"123456789"), 0xE3069283)   # the CRC-32C check value
        w = self.wire()
        rid = w.send({"ping": 1, "$db": "admin"}, checksum=True)
        _, response_to, _, doc = w.recv()
        self.assertEqual((response_to, doc["ok"]), (rid, 1.0))
        w.send({"ping": 1, "$db": "admin"}, flags=2)          # moreToCome: no reply
        rid = w.send({"ping": 1, "$db": "admin"})
        self.assertEqual(w.recv()[1], rid)
        w.send({"ping": 1, "$db": "admin"}, checksum=True, corrupt=True)
        self.assertIsNone(w.recv())                           # closed

    def test_streaming_hello_exhaust(self):
        w = self.wire(1)
        w.send({"hello": 1, "$db": "admin"})
        hello = w.recv()[3]
        self.assertFalse(hello["isWritablePrimary"])
        self.assertTrue(hello["secondary"])
        t0 = time.monotonic()
        rid = w.send({"hello": 1, "$db": "admin", "topologyVersion": hello["topologyVersion"],
                      "maxAwaitTimeMS": 200}, flags=1 << 16)
        replies = [w.recv() for _ in range(3)]
        elapsed = time.monotonic() - t0
        self.assertGreaterEqual(elapsed, 0.55)
        self.assertLess(elapsed, 5)
        prev = rid
        for request_id, response_to, flags, doc in replies:
            self.assertEqual(response_to, prev)
            self.assertTrue(flags & 2)                         # moreToCome
            self.assertEqual(doc["topologyVersion"], hello["topologyVersion"])
            self.assertEqual(doc["ok"], 1.0)
            prev = request_id
        self.assertTrue(any(e["command"] == "hello" and e["exhaust"] for e in self.log_entries()))


if __name__ == "__main__":
    unittest.main()
