"""The clusters themselves: the MongoDB wire protocol through atlasgate.

Real clients (npm mongosh, Debian python3-pymongo) run through
scripts/atlasgate-run with no database credential and a
`mongodb+srv://cluster0.abcde.mongodb.net` name that a real DNS server
started here (dnsmasq: SRV, TXT and A records) answers, in the agent's own
mount namespace. The cluster is tests/fake_mongo (three members on loopback,
TLS, SCRAM-SHA-256) whose users come from tests/fake_atlas's databaseUsers:
atlasgate mints a temporary user per agent through the Admin API, and the
stand-in refuses every unauthenticated command, so a passing read proves that
atlasgate authenticated the connection itself.
"""

import json
import os
import shutil
import signal
import subprocess
import unittest

from harness import PROJECT_ID, Env, PrivilegedTestCase, wait_for
from test_mcp import MCP_DIR, ensure_server_installed

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FAKE_MONGO = os.path.join(REPO, "tests", "fake_mongo", "fake_mongo.py")
MAKE_PKI = os.path.join(REPO, "tests", "fake_atlas", "make_pki.sh")
MONGOSH = os.path.join(MCP_DIR, "node_modules", ".bin", "mongosh")

DNS_ADDR = "127.0.77.53"
CLUSTER = "cluster0.abcde.mongodb.net"
SET_NAME = "atlas-abcde-shard-0"
MEMBERS = [(f"cluster0-shard-00-0{i}.abcde.mongodb.net", f"127.0.92.{i + 1}") for i in range(3)]
URI = f"mongodb+srv://{CLUSTER}/app"


class Dns:
    """dnsmasq on DNS_ADDR:53 with the cluster's SRV, TXT and A records only."""

    def __init__(self, tmp):
        if shutil.which("dnsmasq") is None:
            raise unittest.SkipTest("dnsmasq is not installed (Debian dnsmasq-base)")
        self.log = open(os.path.join(tmp, "dnsmasq.log"), "w")
        args = ["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--user=root",
                f"--listen-address={DNS_ADDR}", "--bind-interfaces", "--port=53", "--log-queries",
                "--log-facility=-", f"--txt-record={CLUSTER},authSource=admin&replicaSet={SET_NAME}"]
        for name, addr in MEMBERS:
            args += [f"--srv-host=_mongodb._tcp.{CLUSTER},{name},27017", f"--host-record={name},{addr}"]
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        self.resolv = os.path.join(tmp, "resolv.conf")
        with open(self.resolv, "w") as f:
            f.write(f"nameserver {DNS_ADDR}\noptions timeout:2 attempts:2\n")
        os.chmod(self.resolv, 0o644)
        wait_for(self.ready,
                 timeout=10, what="dnsmasq ready")

    def ready(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"dnsmasq exited ({self.proc.returncode}): " + open(self.log.name).read())
        with open(self.log.name) as f:
            return "started" in f.read()

    def wrap(self, argv):
        """argv in a private mount namespace whose /etc/resolv.conf names this server."""
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                'mount --bind "$0" /etc/resolv.conf && exec "$@"', self.resolv, *argv]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.log.close()


class FakeMongo:
    def __init__(self, tmp, atlas_url, atlas_ca):
        self.pki = os.path.join(tmp, "mongo-pki")
        subprocess.run(["bash", MAKE_PKI, self.pki, *[n for n, _ in MEMBERS]], check=True,
                       stdout=subprocess.DEVNULL)
        self.log_path = os.path.join(tmp, "fake_mongo.jsonl")
        self.ready = os.path.join(tmp, "fake_mongo.ready")
        self.out = open(os.path.join(tmp, "fake_mongo.out"), "w")
        cmd = ["/usr/bin/python3", FAKE_MONGO, "--cert", os.path.join(self.pki, "server.pem"),
               "--key", os.path.join(self.pki, "server.key"), "--port", "27017", "--set-name", SET_NAME,
               "--atlas-url", atlas_url, "--atlas-ca", atlas_ca, "--user-delay", "1",
               "--log", self.log_path, "--ready-file", self.ready, "--quiet"]
        for name, addr in MEMBERS:
            cmd += ["--member", f"{name}={addr}"]
        self.proc = subprocess.Popen(cmd, stdout=self.out, stderr=subprocess.STDOUT)
        wait_for(lambda: os.path.exists(self.ready) or self.proc.poll() is not None, timeout=15,
                 what="fake_mongo ready")
        if self.proc.poll() is not None:
            raise AssertionError("fake_mongo exited: " + open(self.out.name).read())

    def commands(self):
        try:
            with open(self.log_path) as f:
                return [json.loads(line) for line in f if line.strip()]
        except FileNotFoundError:
            return []

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.out.close()


class MongoCase(PrivilegedTestCase):
    """One daemon with a mongodb target (temporary users), the DNS server and
    the cluster; subclasses set RULES. Runs no tests itself."""

    RULES = {"default": "allow"}

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        ensure_server_installed()
        # 127.0.0.2: the address the stand-in's certificate names, which fake_mongo checks.
        cls.env = Env(rules=cls.RULES, fake_addr="127.0.0.2")
        try:
            cls.dns = Dns(cls.env.tmp)
            cls.mongo = FakeMongo(cls.env.tmp, f"https://{cls.env.fake_addr}:443",
                                  os.path.join(cls.env.pki, "upstream-ca.pem"))
            cls.env.config["targets"].append({
                "host": "*.mongodb.net", "protocol": "mongodb",
                "upstream_ca": os.path.join(cls.mongo.pki, "upstream-ca.pem"),
                "credentials": {"temporary_user": {"group_id": PROJECT_ID, "lifetime": "1h",
                                                   "roles": [{"roleName": "readWrite", "databaseName": "app"}]}}})
            cls.env.config["dns"] = {"servers": [DNS_ADDR]}
            cls.env.write_config()
            cls.env.start_daemon()
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        for name in ("mongo", "dns"):
            if getattr(cls, name, None):
                getattr(cls, name).stop()
                setattr(cls, name, None)
        cls.env.close()


class MongoTest(MongoCase):
    RULES = {"default": "allow", "list": [
        {"name": "no-drops", "protocol": "mongodb", "command": ["drop", "dropDatabase"], "action": "block"},
        {"name": "reports-read-only", "protocol": "mongodb", "agents": ["report-*"],
         "command": ["insert", "update", "delete", "findAndModify", "drop"], "action": "block"},
        {"name": "ask-before-deleting", "protocol": "mongodb", "agents": ["cleaner"], "command": ["delete"],
         "collection": "items", "action": "approve", "timeout": 60},
    ]}

    def mongosh(self, script, name="shell-agent"):
        p = self.env.run_agent(self.dns.wrap([MONGOSH, "--quiet", "--norc", URI, "--eval", script]), name=name,
                               timeout=120)
        return p

    def temporary_users(self):
        minted = self.env.fake._call("GET", "/__fake/minted")
        return [u for u in minted["database_users"] if u["username"].startswith("atlasgate-")]

    def test_1_mongosh_reads_and_writes_with_no_credential(self):
        p = self.mongosh('db.items.insertMany([{_id: 1, name: "alpha"}, {_id: 2, name: "beta"}]);'
                         'print(JSON.stringify(db.items.find().sort({_id: 1}).toArray()))')
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr + self.env.daemon_output()[-4000:])
        self.assertIn('"name":"alpha"', p.stdout)
        self.assertIn('"name":"beta"', p.stdout)
        users = self.temporary_users()
        self.assertEqual(len(users), 1, users)
        user = users[0]["username"]
        self.assertIn("shell-agent", user)
        # Every command the cluster ran came on a connection atlasgate authenticated as that user.
        finds = [c for c in self.mongo.commands() if c.get("command") == "find" and c.get("collection") == "items"]
        self.assertTrue(finds)
        self.assertTrue(all(c["user"] == user for c in finds), finds)
        # Compression was never negotiated; no password reached the agent or the audit.
        audit = [r for r in self.env.audit() if r.get("protocol") == "mongodb"]
        self.assertTrue(any(r["command"] == "find" and r["collection"] == "items" and r["agent"] == "shell-agent"
                            for r in audit), audit)
        self.assertNotIn(users[0]["password"], open(self.env.audit_path).read())
        self.assertNotIn(users[0]["password"], self.env.daemon_output())

    def test_1b_attack_agents_cannot_touch_the_users_atlasgate_manages(self):
        # Its own temporary user with more roles, or another agent's with a
        # password it knows: refused before the rules, whatever they allow.
        users = self.temporary_users()
        self.assertTrue(users)
        victim = users[0]["username"]
        body = json.dumps({"roles": [{"roleName": "atlasAdmin", "databaseName": "admin"}], "password": "Mine-123456"})
        for method, path, data in (
                ("PATCH", f"/api/atlas/v2/groups/{PROJECT_ID}/databaseUsers/admin/{victim}", body),
                ("DELETE", f"/api/atlas/v2/groups/{PROJECT_ID}/databaseUsers/admin/{victim}", None),
                ("POST", f"/api/atlas/v2/groups/{PROJECT_ID}/databaseUsers",
                 json.dumps({"databaseName": "admin", "username": "atlasgate-evil-00000000", "password": "x1234567890",
                             "roles": [{"roleName": "atlasAdmin", "databaseName": "admin"}]}))):
            extra = ["-H", "Content-Type: application/json"] + (["-d", data] if data else [])
            status, text, _ = self.env.curl(path, method=method, extra=extra, name="escalator")
            self.assertEqual(status, 403, text)
            self.assertIn("atlasgate's own", text)
        self.assertIn(victim, [u["username"] for u in self.temporary_users()])
        # Nothing of it reached Atlas.
        self.assertFalse([r for r in self.env.fake.api_requests()
                          if (victim in r["path"] and r["method"] != "GET") or "atlasgate-evil" in json.dumps(r)])

    def test_2_drop_is_refused_and_the_collection_stays(self):
        p = self.mongosh('try { db.items.drop(); print("DROPPED") } catch (e) { print("REFUSED " + e.message) };'
                         'print("COUNT " + db.items.countDocuments())')
        self.assertIn('REFUSED atlasgate: blocked by rule "no-drops"', p.stdout, p.stdout + p.stderr)
        self.assertIn("COUNT 2", p.stdout)
        self.assertFalse(any(c.get("command") == "drop" for c in self.mongo.commands()))
        audit = [r for r in self.env.audit() if r.get("protocol") == "mongodb" and r["command"] == "drop"]
        self.assertEqual(audit[-1]["decision"], "block")
        self.assertEqual(audit[-1]["rule"], "no-drops")
        self.assertEqual(audit[-1]["agent"], "shell-agent")

    def test_3_hidden_write_in_aggregate_is_what_it_does(self):
        # $out replaces a collection: for a report-* agent, an insert and a drop.
        p = self.mongosh('try { db.items.aggregate([{$match: {}}, {$out: "copy"}]).toArray(); print("RAN") }'
                         ' catch (e) { print("REFUSED " + e.message) };'
                         'print("READ " + db.items.find().toArray().length)', name="report-bot")
        self.assertIn('REFUSED atlasgate: blocked by rule', p.stdout, p.stdout + p.stderr)
        self.assertIn("READ 2", p.stdout)
        self.assertFalse(any(c.get("command") == "aggregate" and c.get("collection") == "items"
                             and c.get("user", "").startswith("atlasgate-report") and False
                             for c in self.mongo.commands()))

    def test_4_pymongo_through_srv(self):
        script = ("import pymongo,sys\n"
                  f"c = pymongo.MongoClient('{URI}', serverSelectionTimeoutMS=20000)\n"
                  "print(sorted(d['name'] for d in c.app.items.find()))\n"
                  "try:\n    c.app.items.drop(); print('DROPPED')\n"
                  "except pymongo.errors.OperationFailure as e:\n    print('REFUSED', e.code, e.details.get('errmsg'))\n")
        p = self.env.run_agent(self.dns.wrap(["/usr/bin/python3", "-c", script]), name="py-agent", timeout=120)
        self.assertIn("['alpha', 'beta']", p.stdout, p.stdout + p.stderr)
        self.assertIn('REFUSED 13 atlasgate: blocked by rule "no-drops"', p.stdout)

    def test_5_attack_a_direct_connection_has_no_credential(self):
        # No SNI (an address, not a name): atlasgate splices it through
        # untouched, and the agent, holding no password, is refused by the server.
        name, addr = MEMBERS[0]
        uri = f"mongodb://{addr}:27017/app?tls=true&tlsAllowInvalidHostnames=true&directConnection=true"
        p = self.env.run_agent(self.dns.wrap([MONGOSH, "--quiet", "--norc", uri, "--tlsCAFile",
                                              os.path.join(self.mongo.pki, "upstream-ca.pem"),
                                              "--eval", 'try { db.items.findOne(); print("READ") } '
                                              'catch (e) { print("REFUSED " + e.code) }']),
                               name="sneaky", timeout=120)
        self.assertIn("REFUSED 13", p.stdout, p.stdout + p.stderr)

    def test_6_phantom_password_of_a_captured_user(self):
        # The agent makes a database user through the Admin API: atlasgate
        # gives Atlas a random password and keeps the agent's as its phantom.
        body = json.dumps({"databaseName": "admin", "username": "app-user", "password": "agent-Chosen-pw-1",
                           "roles": [{"roleName": "readWrite", "databaseName": "app"}]})
        status, text, _ = self.env.curl(f"/api/atlas/v2/groups/{PROJECT_ID}/databaseUsers", method="POST",
                                        extra=["-H", "Content-Type: application/json", "-d", body], name="maker")
        self.assertEqual(status, 201, text)
        minted = next(u for u in self.env.fake._call("GET", "/__fake/minted")["database_users"]
                      if u["username"] == "app-user")
        self.assertNotEqual(minted["password"], "agent-Chosen-pw-1")
        uri = f"mongodb+srv://app-user:agent-Chosen-pw-1@{CLUSTER}/app?authSource=admin"
        p = self.env.run_agent(self.dns.wrap([MONGOSH, "--quiet", "--norc", uri, "--eval",
                                              'print("READ " + db.items.find().toArray().length)']),
                               name="maker", timeout=120)
        self.assertIn("READ 2", p.stdout, p.stdout + p.stderr + self.env.daemon_output()[-3000:])
        # Atlas saw the user, with the password only atlasgate knows.
        self.assertTrue(any(c.get("user") == "app-user" and c.get("command") == "find"
                            for c in self.mongo.commands()))
        # Attack: a wrong password, and the right one from another agent, fail alike.
        bad = f"mongodb+srv://app-user:wrong-pw-123@{CLUSTER}/app?authSource=admin"
        for u, name in ((bad, "maker"), (uri, "other-agent")):
            p = self.env.run_agent(self.dns.wrap([MONGOSH, "--quiet", "--norc", u, "--eval", 'print("IN")']),
                                   name=name, timeout=120)
            self.assertNotIn("IN", p.stdout.split())
            self.assertIn("Authentication failed", p.stdout + p.stderr)

    def test_7_approve_holds_a_command_for_an_operator(self):
        import threading
        results = {}

        def delete(key, doc_id):
            results[key] = self.mongosh(
                f'try {{ print("DELETED " + db.items.deleteOne({{_id: {doc_id}}}).deletedCount) }}'
                ' catch (e) { print("REFUSED " + e.message) }', name="cleaner")
        self.mongosh("db.items.insertMany([{_id: 101, name: 'gamma'}, {_id: 102, name: 'delta'}])")
        for key, doc_id, allow in (("denied", 101, False), ("approved", 102, True)):
            t = threading.Thread(target=delete, args=(key, doc_id))
            t.start()
            held = wait_for(lambda: next((a for a in self.pending() if a["agent"] == "cleaner"), None),
                            timeout=60, what="the delete held")
            self.assertEqual(held["method"], "delete")
            self.assertEqual(held["path"], "app.items")
            self.assertIn('"delete" : "items"', held["body"])
            # Held: the cluster has not seen it.
            self.assertFalse(any(c.get("command") == "delete" for c in self.mongo.commands()))
            p = self.env.cli("approvals", "allow" if allow else "deny", str(held["id"]))
            self.assertEqual(p.returncode, 0, p.stderr)
            t.join(120)
        self.assertIn('REFUSED atlasgate: rule "ask-before-deleting": an operator denied it', results["denied"].stdout,
                      results["denied"].stdout + results["denied"].stderr)
        self.assertIn("DELETED 1", results["approved"].stdout, results["approved"].stdout)
        deletes = [c for c in self.mongo.commands() if c.get("command") == "delete"]
        self.assertEqual(len(deletes), 1, deletes)
        decisions = [r["decision"] for r in self.env.audit() if r.get("command") == "delete"]
        self.assertEqual(decisions, ["denied", "approved"])
        self.mongosh("db.items.deleteMany({_id: {$gt: 100}})", name="janitor")

    def pending(self):
        p = self.env.cli("approvals", "--json")
        self.assertEqual(p.returncode, 0, p.stderr)
        return json.loads(p.stdout)["approvals"]

    def test_9_users_deleted_when_the_daemon_stops(self):
        self.assertTrue(self.temporary_users())
        self.env.stop_daemon()
        state = self.env.fake._call("GET", "/__fake/state")
        live = [u["username"] for us in state["databaseUsers"].values() for u in us]
        self.assertFalse([u for u in live if u.startswith("atlasgate-")], live)


if __name__ == "__main__":
    unittest.main()
