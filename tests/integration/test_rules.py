"""Rules and control plane, end to end (README: command line, configuration, what the agent sees).

Every request goes through the real kernel redirect into the real daemon and,
when the rules let it, on to the Atlas stand-in: block, the encoding tricks
that must not dodge a block, rate_limit, approve (allow / deny / timeout),
per-agent rules, log_only, reload (control socket and SIGHUP, bad and good),
default: block, `atlasgate status`, `attach` / `detach` and `check`.

    cd tests/integration && sudo /usr/bin/python3 -m unittest -v test_rules
"""

import json
import os
import re
import signal
import subprocess
import tempfile
import shutil
import time
import unittest

from harness import (ATLASGATE, CLIENT_ID, HOST, LAUNCHER, PROJECT_ID, Env, PrivilegedTestCase, cgroup2_mount,
                     remove_cgroup, require_root, wait_for, DaemonTestCase)

API = "/api/atlas/v2"
GROUP = f"{API}/groups/{PROJECT_ID}"
CLUSTERS = f"{GROUP}/clusters"
CLUSTER0 = f"{CLUSTERS}/Cluster0"

BLOCK_DELETE = {"name": "no-cluster-deletion", "method": "DELETE",
                "path": "/api/atlas/v2/groups/{groupId}/clusters/{clusterName}", "action": "block"}


# --------------------------------------------------------------------------
# helpers

class Resp:
    """One HTTP exchange as the agent (curl) saw it."""

    def __init__(self, status, headers, body, proc):
        self.status, self.headers, self.body, self.proc = status, headers, body, proc

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"<{self.status} {self.headers} {self.body!r} stderr={getattr(self.proc, 'stderr', '')!r}>"


def parse_headers(text):
    """Headers of the last response head curl dumped with -D /dev/stderr (names lower-cased)."""
    blocks, cur = [], None
    for line in text.splitlines():
        line = line.rstrip("\r")
        if line.startswith("HTTP/"):
            cur = {}
            blocks.append(cur)
        elif cur is not None and ":" in line:
            k, _, v = line.partition(":")
            cur[k.strip().lower()] = v.strip()
        elif cur is not None and not line:
            cur = None
    return blocks[-1] if blocks else {}


def curl_extra(body=None, extra=None):
    args = ["-D", "/dev/stderr"]
    if body is not None:
        args += ["-H", "Content-Type: application/json", "--data-binary",
                 body if isinstance(body, str) else json.dumps(body)]
    return args + list(extra or [])


def call(env, method, path, name, body=None, extra=None):
    """Runs curl as agent NAME through the launcher."""
    status, text, p = env.curl(path, method, curl_extra(body, extra), name=name)
    return Resp(status, parse_headers(p.stderr), text, p)


def agent_environ(env):
    """The environment env.run_agent gives the launcher (as root)."""
    e = dict(os.environ)
    for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy",
              "SUDO_UID", "SUDO_GID"):
        e.pop(k, None)
    e["ATLASGATE_RUN_DIR"] = env.run_dir
    return e


def spawn(env, method, path, name, body=None, extra=None):
    """Starts curl as agent NAME in the background; finish() collects it."""
    cmd = [LAUNCHER, "--name", name, "--"] + env.curl_args(path, method, curl_extra(body, extra))
    return subprocess.Popen(cmd, env=agent_environ(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc, timeout=30):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"agent still running after {timeout}s: {err}")
    body, _, code = out.rpartition("\n")
    try:
        status = int(code)
    except ValueError:
        status = 0
    return Resp(status, parse_headers(err), body, subprocess.CompletedProcess(proc.args, proc.returncode, out, err))


def stop(proc):
    """Test cleanup for spawn(): ends the launcher we started (by PID)."""
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


def pending_approvals(env):
    p = env.cli("approvals", "--json")
    if p.returncode != 0:
        raise AssertionError(f"approvals --json failed: {p.stderr}")
    return json.loads(p.stdout)["approvals"]


def wait_held(env, name, proc=None, timeout=10):
    """Waits until a request of agent NAME is held; returns its approvals entry."""
    def held():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"agent {name} finished instead of being held: {finish(proc)}")
        return next((a for a in pending_approvals(env) if a["agent"] == name), None)
    return wait_for(held, timeout=timeout, what=f"a held request of {name}")


def line_of(path, needle, start=1):
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if i >= start and needle in line:
                return i
    raise AssertionError(f"{needle!r} not in {path}")


def cluster_body(name, size):
    return {"name": name, "clusterType": "REPLICASET",
            "providerSettings": {"providerName": "AWS", "instanceSizeName": size, "regionName": "US_EAST_1"}}


class RulesCase(PrivilegedTestCase):
    def assertAtlasError(self, r, status, code, rule):
        """Atlas' error shape, as the README ("What the agent sees") gives it."""
        self.assertEqual(r.status, status, r)
        self.assertTrue(r.headers.get("content-type", "").startswith("application/json"), r)
        body = r.json()
        self.assertEqual(body["error"], status, body)
        self.assertEqual(body["errorCode"], code, body)
        self.assertIsInstance(body["reason"], str)
        self.assertTrue(body["reason"], body)
        self.assertIsInstance(body["detail"], str)
        self.assertEqual(body["parameters"], [rule], body)
        return body

    def audit_since(self, env, n):
        return env.audit()[n:]

    def assertNotUpstream(self, env, before, what):
        got = env.fake.api_requests()[before:]
        self.assertEqual(got, [], f"{what} reached the stand-in")


# --------------------------------------------------------------------------
# 1, 2: block

class BlockTest(RulesCase):
    """A fresh daemon per test: the blocked request is its very first."""

    def setUp(self):
        self.env = Env(rules={"default": "allow", "list": [BLOCK_DELETE]})
        self.addCleanup(self.env.close)
        self.env.start_daemon()

    def test_block_answers_atlas_error_and_never_touches_credentials(self):
        env = self.env
        r = call(env, "DELETE", CLUSTER0, name="ops-bot")
        body = self.assertAtlasError(r, 403, "ATLASGATE_BLOCKED", "no-cluster-deletion")
        self.assertEqual(r.headers.get("content-type"), "application/json", r)
        self.assertEqual(r.headers.get("x-should-retry"), "false", r)
        self.assertEqual(body["reason"], "Forbidden")
        self.assertEqual(list(body), ["error", "errorCode", "reason", "detail", "parameters"])
        self.assertEqual(body["detail"], f'Blocked by rule "no-cluster-deletion": DELETE {CLUSTER0} '
                                         f'is not allowed for agent "ops-bot".')
        # Rules come before credentials: nothing reached the stand-in, not even a token request.
        self.assertEqual([x for x in env.fake.api_requests() if x["method"] == "DELETE"], [])
        stats = env.fake.stats()
        self.assertEqual(stats["token_requests"], 0, stats)
        self.assertEqual(stats["api_requests"], 0, stats)
        recs = env.audit()
        self.assertEqual(len(recs), 1, recs)
        a = recs[0]
        self.assertEqual((a["agent"], a["method"], a["path"]), ("ops-bot", "DELETE", CLUSTER0))
        self.assertEqual((a["rule"], a["decision"], a["status"], a["credential"]),
                         ("no-cluster-deletion", "block", 403, ""), a)
        # Control: an allowed request does fetch the token and reach Atlas (and Cluster0 is still there).
        r = call(env, "GET", CLUSTER0, name="ops-bot")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["name"], "Cluster0")
        self.assertEqual(env.fake.stats()["token_requests"], 1)
        self.assertEqual(env.audit()[-1]["decision"], "allow")
        self.assertTrue(env.audit()[-1]["credential"].startswith("service_account:"))

    def test_encoding_tricks_cannot_dodge_the_block(self):
        env = self.env
        g = PROJECT_ID
        tricks = [
            # (method, request target, extra curl args)
            ("DELETE", f"{API}/groups/{g}/clusters%2FCluster0", []),
            ("DELETE", f"{API}/groups/{g}/clusters%2fCluster0", []),
            ("DELETE", f"{API}/groups/{g}/foo/../clusters/Cluster0", ["--path-as-is"]),
            ("DELETE", f"{API}/groups/{g}/foo/%2e%2e/clusters/Cluster0", ["--path-as-is"]),
            ("DELETE", f"{API}/groups/{g}/clusters/./Cluster0", ["--path-as-is"]),
            ("DELETE", f"{API}/groups/{g}/foo%2F..%2Fclusters/Cluster0", []),
            ("DELETE", f"/API/atlas/v2/groups/{g}/clusters/Cluster0", []),
            ("DELETE", f"/api/ATLAS/V2/GROUPS/{g}/CLUSTERS/Cluster0", []),
            ("DELETE", f"{API}/groups/{g}/%63lusters/Cluster0", []),
            ("DELETE", f"/api/atlas/v2//groups/{g}//clusters/Cluster0/", ["--path-as-is"]),
            ("DELETE", f"{API}/groups/{g}/clusters/Cluster0;x=1", []),
            ("DELETE", f"{API}/groups/{g}/clusters;x=1/Cluster0", []),
            ("DELETE", f"{API}/groups/{g}/clusters/Cluster0?pretty=true", []),
            ("delete", f"{API}/groups/{g}/clusters/Cluster0", []),
            # absolute-form request target
            ("DELETE", CLUSTER0, ["--request-target", f"https://{HOST}{CLUSTER0}"]),
        ]
        before = len(env.fake.api_requests())
        before_audit = len(env.audit())
        failures = []
        for method, target, extra in tricks:
            r = call(env, method, target, name="trick-bot", extra=extra)
            if r.status not in (403, 400):
                failures.append(f"{method} {target}: {r.status} {r.body}")
            elif r.status == 403 and r.json().get("errorCode") != "ATLASGATE_BLOCKED":
                failures.append(f"{method} {target}: 403 but {r.body}")
        self.assertEqual(failures, [])
        self.assertNotUpstream(env, before, "a disguised DELETE")
        self.assertEqual(env.fake.stats()["token_requests"], 0)
        recs = self.audit_since(env, before_audit)
        self.assertEqual(len(recs), len(tricks), recs)
        for a in recs:
            self.assertIn(a["decision"], ("block", "malformed"), a)
            self.assertEqual(a["credential"], "", a)
        # Cluster0 survived all of it.
        r = call(env, "GET", CLUSTER0, name="trick-bot")
        self.assertEqual(r.status, 200, r)


# --------------------------------------------------------------------------
# 3, 5, 6: rate_limit, per-agent rules, log_only (one daemon)

class PolicyTest(RulesCase, DaemonTestCase):
    @classmethod
    def env_options(cls):
        return dict(rules={"default": "allow", "list": [
            BLOCK_DELETE,
            {"name": "readers-cannot-write", "method": ["POST", "PATCH", "DELETE"], "path": "/api/atlas/v2/**",
             "agents": ["reader-*"], "action": "block"},
            {"name": "ops-may-add-users", "method": "POST", "path": "/api/atlas/v2/groups/{groupId}/databaseUsers",
             "agents": ["ops-*"], "action": "allow"},
            {"name": "nobody-else-adds-users", "method": "POST",
             "path": "/api/atlas/v2/groups/{groupId}/databaseUsers", "action": "block"},
            {"name": "cluster-list-budget", "method": "GET", "path": "/api/atlas/v2/groups/{groupId}/clusters",
             "action": "rate_limit", "rate": "3/minute", "per": "agent"},
            {"name": "watch-snapshots", "path": "/api/atlas/v2/groups/*/clusters/*/backup/**",
             "action": "log_only"},
        ]})

    def test_rate_limit_per_agent(self):
        env = self.env
        tag = os.getpid()
        before_api = len(env.fake.api_requests())
        before_audit = len(env.audit())
        for i in range(3):
            r = call(env, "GET", CLUSTERS, name=f"budget-a-{tag}")
            self.assertEqual(r.status, 200, f"request {i + 1}: {r}")
        r = call(env, "GET", CLUSTERS, name=f"budget-a-{tag}")
        body = self.assertAtlasError(r, 429, "ATLASGATE_RATE_LIMITED", "cluster-list-budget")
        self.assertIn("cluster-list-budget", body["detail"])
        self.assertRegex(r.headers.get("retry-after", ""), r"^\d+$", r)
        self.assertGreaterEqual(int(r.headers["retry-after"]), 1)
        self.assertLessEqual(int(r.headers["retry-after"]), 60)
        self.assertEqual(len(env.fake.api_requests()), before_api + 3, "the 429 reached the stand-in")
        a = env.audit()[-1]
        self.assertEqual((a["agent"], a["rule"], a["decision"], a["status"], a["credential"]),
                         (f"budget-a-{tag}", "cluster-list-budget", "rate_limited", 429, ""), a)
        # Another agent has its own bucket (and the same limit).
        for i in range(3):
            r = call(env, "GET", CLUSTERS, name=f"budget-b-{tag}")
            self.assertEqual(r.status, 200, f"second agent, request {i + 1}: {r}")
        r = call(env, "GET", CLUSTERS, name=f"budget-b-{tag}")
        self.assertEqual(r.status, 429, r)
        # Other paths are not counted against the budget.
        r = call(env, "GET", GROUP, name=f"budget-a-{tag}")
        self.assertEqual(r.status, 200, r)
        got = [(a["agent"], a["rule"], a["decision"], a["status"]) for a in self.audit_since(env, before_audit)]
        ok, limited = ("cluster-list-budget", "allow", 200), ("cluster-list-budget", "rate_limited", 429)
        want = [(f"budget-a-{tag}", *ok)] * 3 + [(f"budget-a-{tag}", *limited)] + \
               [(f"budget-b-{tag}", *ok)] * 3 + [(f"budget-b-{tag}", *limited)] + \
               [(f"budget-a-{tag}", "default", "allow", 200)]
        self.assertEqual(got, want)
        self.assertGreaterEqual(env.status()["counters"]["rate_limited"], 2)

    def test_rules_follow_the_agent_name(self):
        env = self.env
        before = len(env.fake.api_requests())
        r = call(env, "POST", f"{GROUP}/databaseUsers", name="reader-alice",
                 body={"username": "alice-user", "databaseName": "admin", "roles": []})
        body = self.assertAtlasError(r, 403, "ATLASGATE_BLOCKED", "readers-cannot-write")
        self.assertIn('agent "reader-alice"', body["detail"])
        self.assertNotUpstream(env, before, "the reader's POST")
        # The reader may still read.
        r = call(env, "GET", GROUP, name="reader-alice")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(env.audit()[-1]["agent"], "reader-alice")
        # An ops agent may write, through its own rule.
        r = call(env, "POST", f"{GROUP}/databaseUsers", name="ops-bob",
                 body={"username": "bob-user", "databaseName": "admin", "roles": []})
        self.assertEqual(r.status, 201, r)
        self.assertEqual(r.json()["username"], "bob-user")
        a = env.audit()[-1]
        self.assertEqual((a["agent"], a["rule"], a["decision"], a["status"]), ("ops-bob", "ops-may-add-users", "allow",
                                                                               201), a)
        posts = [x for x in env.fake.api_requests()[before:] if x["method"] == "POST"]
        self.assertEqual(len(posts), 1, posts)
        self.assertIn("bob-user", posts[0]["body"])
        # Neither reader nor ops: the catch-all rule after them.
        r = call(env, "POST", f"{GROUP}/databaseUsers", name="intern-carol",
                 body={"username": "carol-user", "databaseName": "admin", "roles": []})
        self.assertAtlasError(r, 403, "ATLASGATE_BLOCKED", "nobody-else-adds-users")

    def test_log_only_lets_through_and_records(self):
        env = self.env
        before = len(env.fake.api_requests())
        r = call(env, "GET", f"{CLUSTER0}/backup/snapshots", name="watched-bot")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["totalCount"], 1, r)
        got = env.fake.api_requests()[before:]
        self.assertEqual(len(got), 1, got)
        a = env.audit()[-1]
        self.assertEqual((a["agent"], a["rule"], a["decision"], a["status"]),
                         ("watched-bot", "watch-snapshots", "log_only", 200), a)
        self.assertTrue(a["credential"].startswith("service_account:"), a)


# --------------------------------------------------------------------------
# 4: approve

class ApprovalTest(RulesCase, DaemonTestCase):
    @classmethod
    def env_options(cls):
        clusters = "/api/atlas/v2/groups/{groupId}/clusters"
        return dict(rules={"default": "allow", "list": [
            {"name": "big-clusters-need-approval", "method": "POST", "path": clusters,
             "when": [{"pointer": "/providerSettings/instanceSizeName", "in": ["M40", "M50"]}],
             "action": "approve", "timeout": 30},
            {"name": "huge-clusters-quick-approval", "method": "POST", "path": clusters,
             "when": [{"pointer": "/providerSettings/instanceSizeName", "equals": "M60"}],
             "action": "approve", "timeout": 2},
        ]})

    def test_approve_allow_deny_timeout_and_condition(self):
        env = self.env
        tag = os.getpid() % 100000
        before = len(env.fake.api_requests())
        procs = []
        self.addCleanup(lambda: [stop(p) for p in procs])

        # The timeout one first: it runs its 2 s while the others are decided.
        slow = spawn(env, "POST", CLUSTERS, "approve-late", body=cluster_body(f"late-{tag}", "M60"))
        procs.append(slow)
        held_slow = wait_held(env, "approve-late", slow)
        self.assertEqual(held_slow["rule"], "huge-clusters-quick-approval")
        self.assertEqual(held_slow["timeout_s"], 2)
        t_slow = time.monotonic()

        # 1. allowed by an operator.
        p = spawn(env, "POST", CLUSTERS, "approve-yes", body=cluster_body(f"big-{tag}", "M40"))
        procs.append(p)
        a = wait_held(env, "approve-yes", p)
        self.assertEqual((a["agent"], a["method"], a["path"], a["rule"], a["host"]),
                         ("approve-yes", "POST", CLUSTERS, "big-clusters-need-approval", HOST), a)
        self.assertEqual(a["timeout_s"], 30)
        self.assertIn("M40", a["body"])
        human = env.cli("approvals")
        self.assertEqual(human.returncode, 0, human.stderr)
        self.assertRegex(human.stdout, rf"(?m)^{a['id']}\s.*POST.*{re.escape(CLUSTERS)}.*approve-yes.*"
                                       r"big-clusters-need-approval")
        # Held means held: the stand-in has not seen it.
        time.sleep(0.3)
        self.assertIsNone(p.poll())
        self.assertNotUpstream(env, before, "a held request")
        d = env.cli("approvals", "allow", str(a["id"]))
        self.assertEqual(d.returncode, 0, d.stderr)
        r = finish(p)
        self.assertEqual(r.status, 201, r)
        self.assertEqual(r.json()["name"], f"big-{tag}")
        posts = [x for x in env.fake.api_requests()[before:] if x["method"] == "POST"]
        self.assertEqual(len(posts), 1, posts)
        self.assertIn(f"big-{tag}", posts[0]["body"])
        self.assertTrue(posts[0]["header_map"].get("authorization", "").startswith("Bearer "))
        rec = [x for x in env.audit() if x["agent"] == "approve-yes"]
        self.assertEqual(len(rec), 1, rec)
        self.assertEqual((rec[0]["rule"], rec[0]["status"]), ("big-clusters-need-approval", 201), rec)
        self.assertIn(rec[0]["decision"], ("approved", "approve"), rec)
        # A decided request is gone from the list and cannot be decided again.
        self.assertNotIn(a["id"], [x["id"] for x in pending_approvals(env)])
        again = env.cli("approvals", "deny", str(a["id"]))
        self.assertEqual(again.returncode, 1, again)

        # 2. denied by an operator.
        seen = len(env.fake.api_requests())
        p = spawn(env, "POST", CLUSTERS, "approve-no", body=cluster_body(f"big2-{tag}", "M50"))
        procs.append(p)
        a = wait_held(env, "approve-no", p)
        self.assertEqual(a["rule"], "big-clusters-need-approval")
        d = env.cli("approvals", "deny", str(a["id"]))
        self.assertEqual(d.returncode, 0, d.stderr)
        r = finish(p)
        self.assertAtlasError(r, 403, "ATLASGATE_APPROVAL_DENIED", "big-clusters-need-approval")
        self.assertNotUpstream(env, seen, "a denied request")

        # 3. nobody decided within the rule's timeout (2 s).
        r = finish(slow)
        waited = time.monotonic() - t_slow
        self.assertAtlasError(r, 403, "ATLASGATE_APPROVAL_DENIED", "huge-clusters-quick-approval")
        self.assertLess(waited, 10)
        self.assertNotIn(f"late-{tag}", json.dumps(env.fake.api_requests()))
        recs = {x["agent"]: x for x in env.audit()}
        self.assertEqual(recs["approve-no"]["status"], 403)
        self.assertEqual(recs["approve-late"]["status"], 403)
        self.assertNotEqual(recs["approve-no"]["decision"], "allow")
        self.assertNotEqual(recs["approve-late"]["decision"], "allow")
        self.assertEqual(pending_approvals(env), [])

        # 4. the condition does not hold: not held at all.
        seen = len(env.fake.api_requests())
        r = call(env, "POST", CLUSTERS, name="approve-small", body=cluster_body(f"small-{tag}", "M10"))
        self.assertEqual(r.status, 201, r)
        self.assertEqual(len(env.fake.api_requests()), seen + 1)
        a = env.audit()[-1]
        self.assertEqual((a["agent"], a["rule"], a["decision"]), ("approve-small", "default", "allow"), a)
        self.assertGreaterEqual(env.status()["counters"]["approvals_held"], 3)


# --------------------------------------------------------------------------
# 4b: rules.preset: guardrails

class GuardrailsTest(RulesCase):
    """The preset's rules come before the operator's and hold like any approve rule."""

    def setUp(self):
        self.env = Env(rules={"preset": "guardrails", "default": "allow", "list": [BLOCK_DELETE]})
        self.addCleanup(self.env.close)

    def test_open_access_list_is_held_and_check_lists_the_guardrails_first(self):
        env = self.env
        p = subprocess.run([ATLASGATE, "check", "--config", env.config_path], capture_output=True, text=True,
                           timeout=30)
        self.assertEqual(p.returncode, 0, p.stderr)
        rows = [l for l in p.stdout.splitlines() if re.match(r"^(\d+|-)\s", l)]
        names = [r.split()[1] for r in rows]
        self.assertEqual(names[0], "guardrail-open-access-list", p.stdout)
        self.assertEqual(names[-2:], ["no-cluster-deletion", "default"], p.stdout)
        self.assertTrue(all(n.startswith("guardrail-") for n in names[:-2]), names)
        self.assertIn("guardrail-own-credential", names)
        own = rows[names.index("guardrail-own-credential")]
        self.assertIn(f"/serviceAccounts/{CLIENT_ID}", own)
        self.assertTrue(all(r.endswith("preset:guardrails") for r in rows[:-2]), rows)
        self.assertRegex(rows[0], r"POST\s+\S*" + re.escape(HOST) + r"\s+/api/atlas/\*/groups/\*/accessList\s.*"
                                  r"/\*/cidrBlock matches .*approve timeout 120s")
        self.assertRegex(p.stdout, r"rules: 1 \(default allow\); preset guardrails: \d+ rules before them")
        x = subprocess.run([ATLASGATE, "check", "--config", env.config_path, "--explain", "DELETE",
                            f"/api/atlas/v1.0/orgs/o/serviceAccounts/{CLIENT_ID}"], capture_output=True, text=True,
                           timeout=30)
        self.assertIn('approve by rule #', x.stdout)
        self.assertIn('"guardrail-own-credential"', x.stdout)

        env.start_daemon()
        access = f"{GROUP}/accessList"
        before = len(env.fake.api_requests())
        proc = spawn(env, "POST", access, "guard-open",
                     body=[{"cidrBlock": "10.0.0.0/24"}, {"cidrBlock": "0.0.0.0/0", "comment": "everyone"}])
        self.addCleanup(stop, proc)
        a = wait_held(env, "guard-open", proc)
        self.assertEqual((a["method"], a["path"], a["rule"], a["timeout_s"]),
                         ("POST", access, "guardrail-open-access-list", 120), a)
        time.sleep(0.3)
        self.assertIsNone(proc.poll())
        self.assertNotUpstream(env, before, "a held access-list entry")
        d = env.cli("approvals", "deny", str(a["id"]))
        self.assertEqual(d.returncode, 0, d.stderr)
        self.assertAtlasError(finish(proc), 403, "ATLASGATE_APPROVAL_DENIED", "guardrail-open-access-list")
        self.assertNotUpstream(env, before, "a denied access-list entry")
        rec = [x for x in env.audit() if x["agent"] == "guard-open"]
        self.assertEqual(len(rec), 1, rec)
        self.assertEqual((rec[0]["rule"], rec[0]["status"]), ("guardrail-open-access-list", 403), rec)

        # A narrow entry is the operator's business: not held, on to Atlas.
        r = call(env, "POST", access, "guard-narrow", body=[{"cidrBlock": "10.0.0.0/24"}])
        self.assertNotEqual(r.status, 403, r)
        self.assertEqual([x["path"] for x in env.fake.api_requests()[before:]], [access])
        rec = [x for x in env.audit() if x["agent"] == "guard-narrow"]
        self.assertEqual((rec[0]["rule"], rec[0]["decision"]), ("default", "allow"), rec)
        self.assertEqual(pending_approvals(env), [])


# --------------------------------------------------------------------------
# 7: reload

class ReloadTest(RulesCase):
    def test_bad_reload_keeps_old_rules_good_reload_applies_and_keeps_buckets(self):
        budget = {"name": "cluster-list-budget", "method": "GET",
                  "path": "/api/atlas/v2/groups/{groupId}/clusters", "action": "rate_limit", "rate": "3/minute",
                  "per": "agent"}
        env = Env(rules={"default": "allow", "list": [BLOCK_DELETE, budget]})
        self.addCleanup(env.close)
        env.start_daemon()
        pid = env.daemon.pid
        good = json.loads(json.dumps(env.config))

        self.assertAtlasError(call(env, "DELETE", CLUSTER0, name="reload-bot"), 403, "ATLASGATE_BLOCKED",
                              "no-cluster-deletion")
        for i in range(2):
            self.assertEqual(call(env, "GET", CLUSTERS, name="reload-bot").status, 200, f"budget request {i + 1}")

        # A broken config (unknown action) is refused with file:line; the old rules stay.
        broken = json.loads(json.dumps(good))
        broken["rules"]["list"].insert(0, {"name": "oops", "method": "GET", "path": "/api/atlas/v2/groups",
                                           "action": "explode"})
        env.write_config(broken)
        bad_line = line_of(env.config_path, '"explode"')
        r = env.cli("reload")
        self.assertEqual(r.returncode, 1, r)
        self.assertRegex(r.stderr, rf"{re.escape(env.config_path)}:{bad_line}(:\d+)?:", r.stderr)
        self.assertIn("explode", r.stderr)
        self.assertIsNone(env.daemon.poll(), "daemon died on a bad reload")
        self.assertAtlasError(call(env, "DELETE", CLUSTER0, name="reload-bot"), 403, "ATLASGATE_BLOCKED",
                              "no-cluster-deletion")
        self.assertEqual(call(env, "GET", API + "/groups", name="reload-bot").status, 200,
                         "the refused config's rule is in force")

        # A good config with a new block rule takes effect without a restart;
        # the unchanged rate_limit rule keeps its bucket (2 of 3 spent).
        newer = json.loads(json.dumps(good))
        newer["rules"]["list"].insert(0, {"name": "no-user-creation", "method": "POST",
                                          "path": "/api/atlas/v2/groups/{groupId}/databaseUsers",
                                          "action": "block"})
        env.write_config(newer)
        r = env.cli("reload")
        self.assertEqual(r.returncode, 0, r)
        self.assertEqual(env.daemon.pid, pid)
        self.assertIsNone(env.daemon.poll())
        r2 = call(env, "POST", f"{GROUP}/databaseUsers", name="reload-bot", body={"username": "x", "roles": []})
        self.assertAtlasError(r2, 403, "ATLASGATE_BLOCKED", "no-user-creation")
        self.assertAtlasError(call(env, "DELETE", CLUSTER0, name="reload-bot"), 403, "ATLASGATE_BLOCKED",
                              "no-cluster-deletion")
        self.assertEqual(call(env, "GET", CLUSTERS, name="reload-bot").status, 200, "third of the budget")
        r3 = call(env, "GET", CLUSTERS, name="reload-bot")
        self.assertAtlasError(r3, 429, "ATLASGATE_RATE_LIMITED", "cluster-list-budget")

        # SIGHUP: same thing, good then bad.
        hup = json.loads(json.dumps(newer))
        hup["rules"]["list"].insert(0, {"name": "no-project-deletion", "method": "DELETE",
                                        "path": "/api/atlas/v2/groups/{groupId}", "action": "block"})
        env.write_config(hup)
        before_api = len(env.fake.api_requests())
        os.kill(env.daemon.pid, signal.SIGHUP)
        wait_for(lambda: env.daemon_output().count("configuration reloaded") >= 2, timeout=10,
                 what="the SIGHUP reload")
        self.assertAtlasError(call(env, "DELETE", GROUP, name="reload-bot"), 403, "ATLASGATE_BLOCKED",
                              "no-project-deletion")
        self.assertNotUpstream(env, before_api, "DELETE of the project")
        self.assertEqual(call(env, "GET", CLUSTERS, name="reload-bot").status, 429, "bucket refilled by SIGHUP")

        broken2 = json.loads(json.dumps(hup))
        broken2["rules"]["list"][0]["action"] = "explode"
        env.write_config(broken2)
        bad_line = line_of(env.config_path, '"explode"')
        os.kill(env.daemon.pid, signal.SIGHUP)
        wait_for(lambda: "reload refused" in env.daemon_output(), timeout=10, what="the refused SIGHUP reload")
        out = env.daemon_output()
        refused = [l for l in out.splitlines() if "reload refused" in l]
        self.assertRegex(refused[-1], rf"{re.escape(env.config_path)}:{bad_line}(:\d+)?:")
        self.assertIsNone(env.daemon.poll(), "daemon died on a bad SIGHUP")
        self.assertEqual(env.daemon.pid, pid)
        self.assertAtlasError(call(env, "DELETE", GROUP, name="reload-bot"), 403, "ATLASGATE_BLOCKED",
                              "no-project-deletion")
        self.assertNotUpstream(env, before_api, "DELETE of the project")


# --------------------------------------------------------------------------
# 8: default block

class DefaultBlockTest(RulesCase):
    def test_default_block(self):
        env = Env(rules={"default": "block", "list": [
            {"name": "may-list-projects", "method": "GET", "path": "/api/atlas/v2/groups", "action": "allow"}]})
        self.addCleanup(env.close)
        env.start_daemon()
        r = call(env, "GET", f"{API}/groups", name="strict-bot")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(env.audit()[-1]["rule"], "may-list-projects")
        before = len(env.fake.api_requests())
        for method, path in (("GET", CLUSTERS), ("GET", GROUP), ("POST", f"{API}/groups"), ("DELETE", CLUSTER0)):
            r = call(env, method, path, name="strict-bot", body={"name": "p"} if method == "POST" else None)
            body = self.assertAtlasError(r, 403, "ATLASGATE_BLOCKED", "default")
            self.assertEqual(body["detail"], f'Blocked by rule "default": {method} {path} is not allowed for agent '
                                             f'"strict-bot".')
            a = env.audit()[-1]
            self.assertEqual((a["rule"], a["decision"], a["status"], a["credential"]), ("default", "block", 403, ""), a)
        self.assertNotUpstream(env, before, "a request not allowed by any rule")


# --------------------------------------------------------------------------
# 9: status, attach, detach

class StatusTest(RulesCase, DaemonTestCase):
    @classmethod
    def env_options(cls):
        return dict(rules={"default": "allow", "list": [
            BLOCK_DELETE,
            {"name": "one-per-minute", "method": "GET", "path": "/api/atlas/v2/orgs", "action": "rate_limit",
             "rate": "1/minute"},
            {"name": "hold-it", "method": "POST", "path": "/api/atlas/v2/groups/{groupId}/clusters",
             "action": "approve", "timeout": 30},
        ]})

    def test_status_shows_cgroup_credential_counters_and_live_connection(self):
        env = self.env
        before = env.status()["counters"]
        self.assertEqual(call(env, "GET", GROUP, name="status-bot").status, 200)
        self.assertEqual(call(env, "DELETE", CLUSTER0, name="status-bot").status, 403)
        self.assertEqual(call(env, "GET", f"{API}/orgs", name="status-bot").status, 200)
        self.assertEqual(call(env, "GET", f"{API}/orgs", name="status-bot").status, 429)

        p = spawn(env, "POST", CLUSTERS, "status-holder", body=cluster_body("held", "M10"))
        self.addCleanup(stop, p)
        a = wait_held(env, "status-holder", p)
        s = env.status()
        self.assertIn(env.agents_cgroup, [x["cgroup"] for x in s["attached"]])
        creds = s["credentials"]
        self.assertEqual(len(creds), 1, creds)
        self.assertEqual(creds[0]["credential"], f"service_account:{CLIENT_ID}")
        self.assertTrue(creds[0]["state"].startswith("valid"), creds)
        self.assertGreaterEqual(creds[0]["fetches"], 1)
        self.assertEqual(s["counters"]["blocked"], before["blocked"] + 1)
        self.assertEqual(s["counters"]["rate_limited"], before["rate_limited"] + 1)
        self.assertGreaterEqual(s["counters"]["live_connections"], 1)
        self.assertGreaterEqual(s["approvals_pending"], 1)
        conns = [c for c in s["connections"] if c["agent"] == "status-holder"]
        self.assertEqual(len(conns), 1, s["connections"])
        self.assertEqual(conns[0]["comm"], "curl")
        self.assertEqual(conns[0]["dst"], f"{env.fake_addr}:443")
        self.assertGreater(conns[0]["pid"], 0)
        human = env.cli("status")
        self.assertEqual(human.returncode, 0, human.stderr)
        out = human.stdout
        self.assertIn(env.agents_cgroup, out)
        self.assertRegex(out, rf"service_account:{CLIENT_ID}\s+valid")
        self.assertRegex(out, rf"(?m)^\s+blocked\s+{s['counters']['blocked']}$")
        self.assertRegex(out, rf"(?m)^\s+rate_limited\s+{s['counters']['rate_limited']}$")
        self.assertRegex(out, rf"agent status-holder pid {conns[0]['pid']} \(curl\) -> {re.escape(env.fake_addr)}:443")
        self.assertRegex(out, r"approvals pending: [1-9]")
        # Let it go: denied, and the connection is gone from the status.
        self.assertEqual(env.cli("approvals", "deny", str(a["id"])).returncode, 0)
        self.assertEqual(finish(p).status, 403)
        wait_for(lambda: not [c for c in env.status()["connections"] if c["agent"] == "status-holder"],
                 what="the held connection to close")

    def test_attach_and_detach_an_extra_cgroup(self):
        env = self.env
        name = f"atlasgate-it-extra-{os.getpid()}"
        root = cgroup2_mount()
        path = os.path.join(root, name)
        os.makedirs(path)
        self.addCleanup(remove_cgroup, path)
        # Trust both atlasgate's CA (redirected) and the stand-in's (direct).
        cafile = os.path.join(env.tmp, "both-cas.pem")
        with open(cafile, "w") as out:
            for f in (env.trust_bundle(), os.path.join(env.pki, "upstream-ca.pem")):
                with open(f) as inp:
                    out.write(inp.read())

        def run_in_extra():
            def join():
                with open(os.path.join(path, "cgroup.procs"), "w") as f:
                    f.write(str(os.getpid()))
            argv = env.curl_args(GROUP, "GET", ["--cacert", cafile])
            p = subprocess.run(argv, capture_output=True, text=True, timeout=30, preexec_fn=join)
            body, _, code = p.stdout.rpartition("\n")
            return int(code) if code.isdigit() else 0, p

        # Not attached: straight to the stand-in, which sees no credential.
        before_audit = len(env.audit())
        code, p = run_in_extra()
        self.assertEqual(code, 401, p.stderr)
        self.assertEqual(len(env.audit()), before_audit)

        r = env.cli("attach", name)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.addCleanup(env.cli, "detach", name)
        self.assertIn(path, r.stdout)
        self.assertIn(path, [x["cgroup"] for x in env.status()["attached"]])
        self.assertIn(path, env.cli("status").stdout)
        code, p = run_in_extra()
        self.assertEqual(code, 200, p.stderr)
        recs = env.audit()[before_audit:]
        self.assertEqual(len(recs), 1, recs)
        self.assertEqual(recs[0]["agent"], name)
        self.assertEqual(recs[0]["cgroup"], name)
        self.assertEqual(recs[0]["comm"], "curl")
        self.assertTrue(env.fake.api_requests()[-1]["header_map"].get("authorization", "").startswith("Bearer "))

        r = env.cli("detach", name)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertNotIn(path, [x["cgroup"] for x in env.status()["attached"]])
        self.assertIn(env.agents_cgroup, [x["cgroup"] for x in env.status()["attached"]])
        n = len(env.audit())
        code, p = run_in_extra()
        self.assertEqual(code, 401, p.stderr)
        self.assertEqual(len(env.audit()), n)
        # The launcher's agents are still redirected.
        self.assertEqual(call(env, "GET", GROUP, name="still-here").status, 200)


# --------------------------------------------------------------------------
# 10: atlasgate check (no daemon)

class CheckTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not os.path.exists(ATLASGATE):
            require_root()  # skips (or fails) with the reason
        cls.tmp = tempfile.mkdtemp(prefix="atlasgate-it-check-")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    RULES = [
        BLOCK_DELETE,
        {"name": "readers-cannot-write", "method": ["POST", "PATCH", "DELETE"], "path": "/api/atlas/v2/**",
         "agents": ["reader-*"], "action": "block"},
        {"name": "big-clusters-need-approval", "method": "POST", "path": "/api/atlas/v2/groups/{groupId}/clusters",
         "when": [{"pointer": "/providerSettings/instanceSizeName", "in": ["M40", "M50"]}], "action": "approve",
         "timeout": 30},
        {"name": "atlas-budget", "path": "/api/atlas/v2/**", "action": "rate_limit", "rate": "60/minute",
         "per": "agent"},
        {"name": "watch", "path": "/api/atlas/v1.0/**", "action": "log_only"},
    ]

    def write(self, name, rules):
        secret = os.path.join(self.tmp, "secret")
        with open(secret, "w") as f:
            f.write("s")
        os.chmod(secret, 0o600)
        cfg = {"listen": {"port": 15443}, "state_dir": os.path.join(self.tmp, "state"),
               "audit_log": os.path.join(self.tmp, "audit.jsonl"), "agents": {"cgroup": "atlasgate-it-check"},
               "targets": [{"host": HOST, "addresses": ["127.0.0.9"], "resolve": False,
                            "credentials": {"service_account": {"client_id": CLIENT_ID,
                                                                "client_secret_file": secret}}}],
               "rules": rules}
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            json.dump(cfg, f, indent=2)
        return path

    def check(self, *args):
        return subprocess.run([ATLASGATE, "check", *args], capture_output=True, text=True, timeout=30)

    def test_rule_table(self):
        path = self.write("good.yaml", {"default": "allow", "list": self.RULES})
        p = self.check("--config", path)
        self.assertEqual(p.returncode, 0, p.stderr)
        lines = p.stdout.splitlines()
        for rule in self.RULES:
            row = [l for l in lines if re.search(rf"(^|\s){re.escape(rule['name'])}\s", l)]
            self.assertEqual(len(row), 1, f"{rule['name']}: {p.stdout}")
            self.assertIn(rule["action"], row[0])
            name_line = line_of(path, f'"name": "{rule["name"]}"')
            m = re.search(rf"{re.escape(path)}:(\d+)", row[0])
            self.assertIsNotNone(m, f"no source line in {row[0]!r}")
            # The rule's mapping starts on the "{" line just above its "name".
            self.assertIn(int(m.group(1)), (name_line - 1, name_line), row[0])
        self.assertRegex(p.stdout, r"(?m)^.*\bdefault\b.*\ballow\b")
        self.assertIn("60/minute", p.stdout)
        self.assertIn("M40", p.stdout)

    def test_explain_names_the_deciding_rule(self):
        path = self.write("explain.yaml", {"default": "allow", "list": self.RULES})
        p = self.check("--config", path, "--explain", "DELETE", "/api/atlas/v2/groups/x/clusters/y", "--agent", "a")
        self.assertEqual(p.returncode, 0, p.stderr)
        decision = [l for l in p.stdout.splitlines() if l.startswith("decision:")]
        self.assertEqual(len(decision), 1, p.stdout)
        self.assertIn("no-cluster-deletion", decision[0])
        self.assertIn("block", decision[0])
        # The agent and the body count.
        p = self.check("--config", path, "--explain", "POST", "/api/atlas/v2/groups/x/clusters", "--agent",
                       "reader-1")
        self.assertIn("readers-cannot-write", [l for l in p.stdout.splitlines() if l.startswith("decision:")][0])
        body = os.path.join(self.tmp, "body.json")
        for size, want in (("M40", "big-clusters-need-approval"), ("M10", "atlas-budget")):
            with open(body, "w") as f:
                json.dump(cluster_body("c", size), f)
            p = self.check("--config", path, "--explain", "POST", "/api/atlas/v2/groups/x/clusters", "--agent",
                           "ops-1", "--body", body)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertIn(want, [l for l in p.stdout.splitlines() if l.startswith("decision:")][0], p.stdout)
        p = self.check("--config", path, "--explain", "GET", "/api/private/x", "--agent", "a")
        self.assertRegex([l for l in p.stdout.splitlines() if l.startswith("decision:")][0], r"allow by default")

    def test_broken_config_one_pointed_line(self):
        rules = json.loads(json.dumps(self.RULES))
        rules[3]["action"] = "explode"
        path = self.write("broken.yaml", {"default": "allow", "list": rules})
        bad = line_of(path, '"explode"')
        p = self.check("--config", path)
        self.assertEqual(p.returncode, 1, p)
        err = p.stderr.strip().splitlines()
        self.assertEqual(len(err), 1, p.stderr)
        self.assertRegex(err[0], rf"^(atlasgate: )?{re.escape(path)}:{bad}:\d+: \S")
        self.assertIn("explode", err[0])
        self.assertEqual(p.stdout, "")


if __name__ == "__main__":
    unittest.main(verbosity=2)
