#!/usr/bin/env python3
"""test_discovery_watch.py - PodWatcher (userspace/discovery/watcher.cpp)
against fake_k8s.py, through the discovery_watch_driver program.

  test_discovery_watch.py --driver build/tests/unit/discovery/discovery_watch_driver

Proves: pods announced from the list and from the watch, modified, deleted
(also when they stop matching the selector or finish); only the node's
matching pods are seen; a 410 (ERROR event) relists and reports a pod deleted
during the gap; a dropped watch reconnects and resumes; a server-ended watch
resumes without an error; paged lists; a wrong token fails with a clear error
and recovers when the token file is fixed (re-read per connection); a wrong CA
fails verification; stop() ends cleanly every time. No root needed. Exit 77
(skip) when openssl is missing. Prints "N passed, M failed" at the end.
"""

import argparse
import json
import os
import queue
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
FAKE = os.path.join(HERE, "fake_k8s.py")
TOKEN = "fake-sa-token-1234"
SELECTOR = "atlasgate.io/inject=true"


class Fake:
    def __init__(self, tmp):
        self.tmp = tmp
        self.pki = os.path.join(tmp, "pki")
        ready = os.path.join(tmp, "fake.ready")
        self.log = open(os.path.join(tmp, "fake.log"), "w")
        self.proc = subprocess.Popen([sys.executable, FAKE, "--pki-dir", self.pki, "--listen", "127.88.0.1",
                                      "--port", "0", "--token", TOKEN, "--bookmark-interval", "0.5",
                                      "--ready-file", ready, "--quiet"],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while not os.path.exists(ready):
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("fake_k8s did not start; see %s" % self.log.name)
            time.sleep(0.05)
        host, port = open(ready).read().split()
        self.url = "https://%s:%s" % (host, port)
        self.ca = os.path.join(self.pki, "ca.crt")
        self.ctx = ssl.create_default_context(cafile=self.ca)

    def call(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, context=self.ctx, timeout=10) as r:
            return json.loads(r.read() or b"{}")

    def pod(self, op, name, ns="default", node=None, labels=None, silent=False, status=None, deleting=False):
        meta = {"name": name, "namespace": ns}
        if labels is not None:
            meta["labels"] = labels
        if deleting:
            meta["deletionTimestamp"] = "2030-01-01T00:00:00Z"
        pod = {"metadata": meta}
        if node is not None:
            pod["spec"] = {"nodeName": node}
        if status is not None:
            pod["status"] = status
        return self.call("POST", "/__fake/pods", {"op": op, "pod": pod, "silent": silent})["pod"]

    def state(self):
        return self.call("GET", "/__fake/state")

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


class Driver:
    def __init__(self, exe, fake, tmp, node, token=TOKEN, ca=None, extra=()):
        self.token_file = os.path.join(tmp, "token-%s" % node)
        with open(self.token_file, "w") as f:
            f.write(token + "\n")
        self.events = []      # everything received, in order
        self.unmatched = []   # received, not yet claimed by expect()
        self.q = queue.Queue()
        self.log = open(os.path.join(tmp, "driver-%s.log" % node), "w")
        self.proc = subprocess.Popen([exe, "--api", fake.url, "--token-file", self.token_file,
                                      "--ca-file", ca or fake.ca, "--node", node, "--selector", SELECTOR,
                                      "--backoff-ms", "100", "--backoff-max-ms", "400", *extra],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                self.q.put(json.loads(line))
            except ValueError:
                self.q.put({"event": "garbage", "line": line})
        self.q.put({"event": "eof"})

    def send(self, cmd):
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()

    def expect(self, pred, what, timeout=10):
        """The first event, already received or still to come, that `pred`
        accepts (events of one batch, e.g. a list, come in no set order)."""
        for i, e in enumerate(self.unmatched):
            if pred(e):
                return self.unmatched.pop(i)
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                e = self.q.get(timeout=max(0.01, deadline - time.time()))
            except queue.Empty:
                break
            self.events.append(e)
            if e.get("event") == "eof":
                raise AssertionError("driver exited while waiting for %s; events: %s" % (what, self.events))
            if pred(e):
                return e
            if e.get("event") != "status":
                self.unmatched.append(e)
        raise AssertionError("timed out waiting for %s; events so far: %s" % (what, self.events))

    def upsert(self, agent, **kw):
        return self.expect(lambda e: e["event"] == "upsert" and e["agent"] == agent and
                           all(e.get(k) == v for k, v in kw.items()), "upsert %s %s" % (agent, kw))

    def delete(self, agent):
        return self.expect(lambda e: e["event"] == "delete" and e["agent"] == agent, "delete %s" % agent)

    def status(self):
        self.send("status")
        return self.expect(lambda e: e["event"] == "status", "status")

    def wait_status(self, pred, what, timeout=10):
        deadline = time.time() + timeout
        s = None
        while time.time() < deadline:
            s = self.status()
            if pred(s):
                return s
            time.sleep(0.1)
        raise AssertionError("status never got %s; last: %s" % (what, s))

    def quiet(self, seconds=0.7):
        """No pod event for a while (events that do arrive are returned)."""
        got = [e for e in self.unmatched if e["event"] in ("upsert", "delete")]
        deadline = time.time() + seconds
        while time.time() < deadline:
            try:
                e = self.q.get(timeout=max(0.01, deadline - time.time()))
            except queue.Empty:
                break
            self.events.append(e)
            if e["event"] in ("upsert", "delete"):
                got.append(e)
        return got

    def stop(self):
        self.send("stop")
        e = self.expect(lambda e: e["event"] == "stopped", "stopped", timeout=10)
        assert e["running"] is False, e
        rc = self.proc.wait(10)
        assert rc == 0, "driver exit %d" % rc
        self.log.close()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if not self.log.closed:
            self.log.close()


# --- tests ------------------------------------------------------------------------


def test_announce_modify_delete(exe, fake, tmp):
    node = "node-a"
    fake.pod("add", "agent-1", ns="team", node=node, labels={"atlasgate.io/inject": "true", "app": "bot"})
    fake.pod("add", "other-node", ns="team", node="node-z", labels={"atlasgate.io/inject": "true"})
    fake.pod("add", "unlabelled", ns="team", node=node, labels={"app": "bot"})
    d = Driver(exe, fake, tmp, node)
    try:
        e = d.upsert("team/agent-1")
        assert e["labels"] == {"atlasgate.io/inject": "true", "app": "bot"}, e
        assert e["node"] == node and e["phase"] == "Running" and e["deleted"] is False, e
        d.wait_status(lambda s: s["connected"] and s["synced"], "connected")
        # New pod, through the watch.
        fake.pod("add", "agent-2", ns="team", node=node, labels={"atlasgate.io/inject": "true"})
        d.upsert("team/agent-2")
        # Modified: labels change.
        fake.pod("modify", "agent-2", ns="team", labels={"atlasgate.io/inject": "true", "tier": "gold"})
        d.upsert("team/agent-2", labels={"atlasgate.io/inject": "true", "tier": "gold"})
        # Terminating: still announced, deleted=true.
        fake.pod("modify", "agent-1", ns="team", deleting=True)
        d.upsert("team/agent-1", deleted=True)
        # Label added to a pod that did not match: it appears.
        fake.pod("modify", "unlabelled", ns="team", labels={"atlasgate.io/inject": "true"})
        d.upsert("team/unlabelled")
        # Stops matching the selector: reported deleted.
        fake.pod("modify", "agent-2", ns="team", labels={"tier": "gold"})
        d.delete("team/agent-2")
        # Finished (Succeeded): reported deleted.
        fake.pod("modify", "unlabelled", ns="team", status={"phase": "Succeeded"})
        d.delete("team/unlabelled")
        # Deleted from the API server.
        fake.pod("delete", "agent-1", ns="team")
        d.delete("team/agent-1")
        # Another node's pods are never seen.
        fake.pod("modify", "other-node", ns="team", labels={"atlasgate.io/inject": "true", "x": "y"})
        fake.pod("delete", "other-node", ns="team")
        stray = d.quiet()
        assert not stray, "unexpected events: %s" % stray
        s = d.wait_status(lambda s: s["pods"] == 0, "0 pods")
        assert s["failures"] == 0 and s["lastError"] == "", s
        # The first list may come from the API server's cache.
        mine = [q for q in fake.state()["list_queries"] if q.get("fieldSelector") == "spec.nodeName=" + node]
        assert len(mine) == 1 and mine[0].get("resourceVersion") == "0", mine
        assert mine[0].get("labelSelector") == SELECTOR, mine
        assert "watching" in s["describe"] and "node=node-a" in s["describe"], s["describe"]
        seen = {e["agent"] for e in d.events if e["event"] in ("upsert", "delete")}
        assert seen == {"team/agent-1", "team/agent-2", "team/unlabelled"}, seen
        d.stop()
    finally:
        d.kill()


def test_gone_relists_and_reports_gap_deletions(exe, fake, tmp):
    node = "node-b"
    for n in ("keep", "vanish", "changes"):
        fake.pod("add", n, ns="gap", node=node, labels={"atlasgate.io/inject": "true"})
    d = Driver(exe, fake, tmp, node)
    try:
        for n in ("keep", "vanish", "changes"):
            d.upsert("gap/" + n)
        d.wait_status(lambda s: s["connected"], "connected")
        lists_before = fake.state()["lists"]
        # While the watcher "is not looking": changes it can only learn by relisting.
        fake.pod("delete", "vanish", ns="gap", silent=True)
        fake.pod("modify", "changes", ns="gap", labels={"atlasgate.io/inject": "true", "v": "2"}, silent=True)
        fake.pod("add", "newcomer", ns="gap", node=node, labels={"atlasgate.io/inject": "true"}, silent=True)
        fake.call("POST", "/__fake/gone")
        d.delete("gap/vanish")
        d.upsert("gap/changes", labels={"atlasgate.io/inject": "true", "v": "2"})
        d.upsert("gap/newcomer")
        st = fake.state()
        assert st["lists"] == lists_before + 1, (lists_before, st)
        s = d.wait_status(lambda s: s["connected"] and s["pods"] == 3, "3 pods after relist")
        assert s["lists"] == 2, s
        assert "410" in s["lastError"], s
        # The relist asks for nothing older than what the watcher had seen.
        relist = [q for q in st["list_queries"] if q.get("fieldSelector") == "spec.nodeName=" + node][-1]
        assert relist.get("resourceVersionMatch") == "NotOlderThan" and int(relist["resourceVersion"]) > 100, relist
        # "keep" did not change: the relist does not re-announce it.
        again = [e for e in d.events if e["event"] == "upsert" and e["agent"] == "gap/keep"]
        assert len(again) == 1, again
        # And the watch after the relist works.
        fake.pod("delete", "keep", ns="gap")
        d.delete("gap/keep")
        d.stop()
    finally:
        d.kill()


def test_gone_on_the_next_watch(exe, fake, tmp):
    """/__fake/gone with no watch open: the next watch request gets the 410."""
    node = "node-g"
    fake.pod("add", "g1", ns="gone", node=node, labels={"atlasgate.io/inject": "true"})
    d = Driver(exe, fake, tmp, node, extra=("--watch-timeout", "1"))
    try:
        d.upsert("gone/g1")
        s0 = d.wait_status(lambda s: s["connected"], "connected")
        # Between two watches (the server ends each after 1-2 s), make the gap.
        fake.pod("delete", "g1", ns="gone", silent=True)
        fake.call("POST", "/__fake/gone")
        d.delete("gone/g1")
        d.wait_status(lambda s: s["lists"] >= s0["lists"] + 1, "a relist")
        d.stop()
    finally:
        d.kill()


def test_dropped_watch_reconnects(exe, fake, tmp):
    node = "node-c"
    fake.pod("add", "p1", ns="drop", node=node, labels={"atlasgate.io/inject": "true"})
    d = Driver(exe, fake, tmp, node)
    try:
        d.upsert("drop/p1")
        d.wait_status(lambda s: s["connected"], "connected")
        watches_before = fake.state()["watches"]
        lists_before = fake.state()["lists"]
        fake.call("POST", "/__fake/drop")
        s = d.wait_status(lambda s: s["failures"] >= 1, "the drop noticed")
        assert "lost" in s["lastError"] or "stream" in s["lastError"], s
        d.wait_status(lambda s: s["connected"] and s["watches"] >= 2, "reconnected")
        # Events after the reconnect arrive; no relist was needed.
        fake.pod("add", "p2", ns="drop", node=node, labels={"atlasgate.io/inject": "true"})
        d.upsert("drop/p2")
        fake.pod("delete", "p1", ns="drop")
        d.delete("drop/p1")
        st = fake.state()
        assert st["watches"] > watches_before, (watches_before, st)
        assert st["lists"] == lists_before, "a drop must resume, not relist: %s" % st
        # p1 was announced exactly once (no replay after the reconnect).
        ups = [e for e in d.events if e["event"] == "upsert" and e["agent"] == "drop/p1"]
        assert len(ups) == 1, ups
        d.stop()
    finally:
        d.kill()


def test_server_ended_watch_resumes_quietly(exe, fake, tmp):
    node = "node-t"
    d = Driver(exe, fake, tmp, node, extra=("--watch-timeout", "1"))
    try:
        d.wait_status(lambda s: s["watches"] >= 3, "three watches", timeout=15)
        fake.pod("add", "late", ns="timeout", node=node, labels={"atlasgate.io/inject": "true"})
        d.upsert("timeout/late")
        s = d.status()
        assert s["failures"] == 0 and s["lists"] == 1, s
        d.stop()
    finally:
        d.kill()


def test_paged_list(exe, fake, tmp):
    node = "node-p"
    names = ["pg-%d" % i for i in range(7)]
    for n in names:
        fake.pod("add", n, ns="paged", node=node, labels={"atlasgate.io/inject": "true"})
    d = Driver(exe, fake, tmp, node, extra=("--page-size", "2"))
    try:
        for n in names:
            d.upsert("paged/" + n)
        s = d.wait_status(lambda s: s["pods"] == 7 and s["connected"], "7 pods")
        assert s["lists"] == 1, s
        pages = [q for q in fake.state()["list_queries"] if q.get("fieldSelector") == "spec.nodeName=" + node]
        assert len(pages) == 4 and all(p["limit"] == "2" for p in pages), pages
        assert all("continue" in p and "resourceVersion" not in p for p in pages[1:]), pages
        d.stop()
    finally:
        d.kill()


def test_wrong_token_then_fixed(exe, fake, tmp):
    node = "node-d"
    fake.pod("add", "secret-agent", ns="auth", node=node, labels={"atlasgate.io/inject": "true"})
    d = Driver(exe, fake, tmp, node, token="wrong-token")
    try:
        s = d.wait_status(lambda s: s["failures"] >= 2, "failures")
        err = s["lastError"]
        assert "401" in err and "token" in err, err
        assert not s["synced"] and not s["connected"], s
        assert not [e for e in d.events if e["event"] in ("upsert", "delete")], d.events
        assert "not synced yet" in s["describe"] and "401" in s["describe"], s["describe"]
        # The token is re-read on every connection: fixing the file is enough.
        with open(d.token_file, "w") as f:
            f.write(TOKEN + "\n")
        d.upsert("auth/secret-agent")
        d.wait_status(lambda s: s["connected"], "connected after the fix")
        d.stop()
    finally:
        d.kill()


def test_wrong_ca(exe, fake, tmp):
    node = "node-e"
    d = Driver(exe, fake, tmp, node, ca=os.path.join(fake.pki, "other-ca.crt"))
    try:
        s = d.wait_status(lambda s: s["failures"] >= 1, "failure")
        assert "certificate verif" in s["lastError"], s["lastError"]
        d.stop()
    finally:
        d.kill()


def test_stop_while_backing_off(exe, fake, tmp):
    node = "node-f"
    d = Driver(exe, fake, tmp, node, token="nope", extra=("--backoff-ms", "20000", "--backoff-max-ms", "30000"))
    try:
        d.wait_status(lambda s: s["failures"] >= 1, "first failure")
        t0 = time.time()
        d.stop()
        assert time.time() - t0 < 5, "stop() waited for the backoff timer"
    finally:
        d.kill()


def test_bad_options_refused(exe, fake, tmp):
    for args, needle in ((["--api", "http://127.0.0.1:1"], "https://"), (["--api", fake.url, "--selector", "a in ("], "label selector")):
        p = subprocess.run([exe, *args], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=10)
        assert p.returncode == 2 and needle in p.stderr, (args, p.returncode, p.stderr)


TESTS = [test_announce_modify_delete, test_gone_relists_and_reports_gap_deletions, test_gone_on_the_next_watch,
         test_dropped_watch_reconnects, test_server_ended_watch_resumes_quietly, test_paged_list,
         test_wrong_token_then_fixed, test_wrong_ca, test_stop_while_backing_off, test_bad_options_refused]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--driver", required=True)
    ap.add_argument("-k", help="run only tests whose name contains this")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    a = ap.parse_args()
    if not shutil.which("openssl"):
        print("SKIP: openssl not found (fake_k8s makes its PKI with it)")
        return 77
    tmp = tempfile.mkdtemp(prefix="ag-fake-k8s.")
    fake = Fake(tmp)
    passed = failed = 0
    try:
        for t in TESTS:
            if a.k and a.k not in t.__name__:
                continue
            t0 = time.time()
            try:
                t(a.driver, fake, tmp)
                passed += 1
                print("ok   %-50s %.1fs" % (t.__name__, time.time() - t0), flush=True)
            except Exception:
                failed += 1
                print("FAIL %s" % t.__name__, flush=True)
                traceback.print_exc()
    finally:
        fake.close()
        if failed or a.keep:
            print("scratch directory kept: %s" % tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
