#!/usr/bin/env python3
"""test_container_watch.py - ContainerWatcher (userspace/discovery/
container_watcher.cpp) against fake_engine.py, through the
container_watch_driver program.

  test_container_watch.py --driver build/tests/unit/discovery/container_watch_driver

Proves: labelled running containers announced from the list, unlabelled ones
never (also when the engine ignores the label filter); start/die/destroy
events; a restart reports the new pid; an engine restart (socket gone, then
back with containers removed and added meanwhile) is survived by relisting
and diffing; garbage on the events stream, garbage lists, oversized lines
and bodies, hostile names and labels, a container claiming another's name,
an inspect answering for another id, a flood beyond max containers: each is
refused or recovered from, and the watcher keeps working; stop() ends
cleanly. No root needed. Prints "N passed, M failed" at the end.
"""

import argparse
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from fake_engine import FakeEngine  # noqa: E402

LABEL = {"atlasgate.io/inject": "true"}


class Driver:
    def __init__(self, exe, sock, *extra):
        self.proc = subprocess.Popen([exe, "--socket", sock, "--label", "atlasgate.io/inject=true",
                                      "--backoff-ms", "50", "--backoff-max-ms", "400", *extra],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, bufsize=1)
        self.lines = queue.Queue()
        self.stderr = []
        threading.Thread(target=self._read, args=(self.proc.stdout, self.lines), daemon=True).start()
        threading.Thread(target=self._drain, daemon=True).start()

    @staticmethod
    def _read(stream, q):
        for line in stream:
            q.put(json.loads(line))

    def _drain(self):
        for line in self.proc.stderr:
            self.stderr.append(line)

    def next(self, kind=None, timeout=5.0, pred=None):
        """The next event of `kind` (others are skipped) satisfying pred."""
        deadline = time.time() + timeout
        while True:
            left = deadline - time.time()
            if left <= 0:
                raise AssertionError("no %s event within %.1fs; stderr tail:\n%s" %
                                     (kind, timeout, "".join(self.stderr[-15:])))
            try:
                e = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if (kind is None or e["event"] == kind) and (pred is None or pred(e)):
                return e

    def quiet(self, kinds=("upsert", "delete"), seconds=0.7):
        """Asserts that no event of these kinds arrives for a while."""
        deadline = time.time() + seconds
        while time.time() < deadline:
            try:
                e = self.lines.get(timeout=max(0.01, deadline - time.time()))
            except queue.Empty:
                return
            if e["event"] in kinds:
                raise AssertionError("unexpected event %s" % e)

    def status(self):
        self.proc.stdin.write("status\n")
        self.proc.stdin.flush()
        return self.next("status")

    def wait_status(self, pred, timeout=5.0):
        deadline = time.time() + timeout
        while True:
            s = self.status()
            if pred(s):
                return s
            if time.time() > deadline:
                raise AssertionError("status never satisfied the condition: %s" % s)
            time.sleep(0.05)

    def stop(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("stop\n")
                self.proc.stdin.flush()
                self.next("stopped", timeout=5)
                self.proc.wait(timeout=5)
            finally:
                if self.proc.poll() is None:
                    self.proc.kill()
                    self.proc.wait()
        return self.proc.returncode


class Case:
    def __init__(self, exe):
        self.exe = exe
        self.tmp = tempfile.mkdtemp(prefix="ag-fake-engine-")
        self.sock = os.path.join(self.tmp, "engine.sock")
        self.eng = FakeEngine(self.sock)
        self.drivers = []

    def driver(self, *extra):
        d = Driver(self.exe, self.sock, *extra)
        self.drivers.append(d)
        return d

    def close(self):
        for d in self.drivers:
            d.stop()
        self.eng.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


# --- the cases ---------------------------------------------------------------------


def test_list_then_events(c):
    e = c.eng
    e.start()
    a = e.run("agent-a", dict(LABEL, team="data"), event=False)
    e.run("plain", {"other": "x"}, event=False)
    d = c.driver()
    up = d.next("upsert")
    assert up["agent"] == "container/agent-a" and up["id"] == a and up["labels"]["team"] == "data", up
    s = d.wait_status(lambda s: s["connected"] and s["synced"])
    assert s["containers"] == 1, s
    # The list asked the engine for the label, the stream for container events with it.
    targets = [t for _, t in e.requests]
    assert any(t.startswith("/v1.41/containers/json?all=true&filters=") and "atlasgate.io%2Finject%3Dtrue" in t
               for t in targets), targets
    assert any(t.startswith("/v1.41/events?filters=") for t in targets), targets
    # A new labelled container: announced; an unlabelled one: never.
    b = e.run("agent-b", LABEL)
    up = d.next("upsert", pred=lambda x: x["id"] == b)
    assert up["agent"] == "container/agent-b"
    e.run("plain-2", {})
    d.quiet()
    # Dies: deleted; starts again: announced with its new pid; removed: nothing more.
    old_pid = up["pid"]
    e.die(b)
    gone = d.next("delete")
    assert gone["id"] == b and not gone["removed"], gone  # stopped: kept for a restart
    e.start_again(b)
    up = d.next("upsert", pred=lambda x: x["id"] == b)
    assert up["pid"] != old_pid, up
    e.remove(b)
    gone = d.next("delete")
    assert gone["id"] == b and gone["removed"], gone
    d.quiet()
    assert d.status()["containers"] == 1
    assert d.stop() == 0


def test_engine_restart_relists_and_diffs(c):
    e = c.eng
    e.start()
    a = e.run("keep", LABEL, event=False)
    gone = e.run("gone", LABEL, event=False)
    d = c.driver()
    ids = {d.next("upsert")["id"], d.next("upsert")["id"]}
    assert ids == {a, gone}
    d.wait_status(lambda s: s["connected"])
    # The engine goes away; meanwhile one container is removed, one added.
    e.stop()
    d.wait_status(lambda s: not s["connected"])
    e.remove(gone, event=False)
    new = e.run("new", LABEL, event=False)
    time.sleep(0.3)  # a few failed reconnects
    t0 = time.time()
    e.start()
    deleted = d.next("delete", timeout=5)
    assert deleted["id"] == gone and deleted["removed"], deleted  # absent from the list: removed, not stopped
    assert d.next("upsert", timeout=5)["id"] == new
    took = time.time() - t0
    assert took < 2.0, "took %.2fs to resync after the engine came back" % took
    s = d.wait_status(lambda s: s["connected"] and s["containers"] == 2)
    assert s["failures"] >= 1 and s["lists"] >= 2, s
    d.quiet()  # "keep" is not announced again: it did not change


def test_removed_while_an_inspect_failed(c):
    """An inspect that fails (an engine answers 500 for a container being
    removed) abandons the stream; the relist must tell a removed container
    from a stopped one, or the daemon would keep it attached for minutes."""
    e = c.eng
    e.start()
    a = e.run("agent-a", LABEL, event=False)
    stopped = e.run("agent-s", LABEL, event=False)
    d = c.driver()
    assert {d.next("upsert")["id"], d.next("upsert")["id"]} == {a, stopped}
    d.wait_status(lambda s: s["connected"] and s["synced"])
    e.die(stopped)  # only stopped: still listed
    gone = d.next("delete")
    assert gone["id"] == stopped and not gone["removed"], gone

    def removing(cid):  # the inspect of the "died" event meets a removal in progress
        if cid != a:
            return None
        e.before_inspect = None
        e.remove(a, event=False)
        e.remove(stopped, event=False)
        return 500, {"cause": "container is being removed", "message": "container is being removed", "response": 500}

    e.before_inspect = removing
    e.die(a, event=False)
    e.event(a, "died")
    got = {}
    for _ in range(2):
        x = d.next("delete", timeout=5)
        got[x["id"]] = x["removed"]
    # Both reported removed: the one that was running, and the one that had
    # stopped earlier (its attachment was kept for a restart that never came).
    assert got == {a: True, stopped: True}, got
    s = d.wait_status(lambda s: s["connected"] and s["lists"] >= 2)
    assert s["containers"] == 0, s


def test_engine_absent_at_start(c):
    d = c.driver()
    s = d.wait_status(lambda s: s["failures"] >= 2)
    assert not s["synced"] and "connect to" in s["lastError"], s
    c.eng.start()
    a = c.eng.run("late", LABEL)
    assert d.next("upsert", timeout=5)["id"] == a


def test_garbage_on_the_events_stream(c):
    e = c.eng
    e.start()
    d = c.driver("--max-event-line", "4096")
    d.wait_status(lambda s: s["connected"] and s["synced"])
    for garbage in [b"not json at all\n", b'{"Type":"container","Action":"start","Actor":{"ID":"../../x"}}\n',
                    b"[1,2,3]\n", b"\x00\xff\xfe\n", b"x" * 10000, b"{" * 5000 + b"\n"]:
        before = d.status()
        e.raw_event(garbage)
        s = d.wait_status(lambda s: s["failures"] > before["failures"] and s["connected"]
                          and s["lists"] > before["lists"])
        assert s["lastError"].startswith("events:"), s
    # Still following events afterwards.
    a = e.run("after-garbage", LABEL)
    assert d.next("upsert")["id"] == a


def test_hostile_lists(c):
    e = c.eng
    e.start()
    e.list_override = b"{not json"
    d = c.driver("--max-response", "65536")
    s = d.wait_status(lambda s: s["failures"] >= 2)
    assert "invalid JSON" in s["lastError"] and not s["synced"], s
    e.list_override = json.dumps([{"Id": "x" * 64}]).encode()
    s = d.wait_status(lambda s: "64 hex" in s["lastError"])
    e.list_override = b"[" + b",".join([b'{"Id":"%064x"}' % i for i in range(1, 3000)]) + b"]"  # > 64 KiB
    s = d.wait_status(lambda s: "body limit" in s["lastError"] or "too large" in s["lastError"])
    e.list_override, e.list_status = b'{"message":"engine on fire"}', 500
    s = d.wait_status(lambda s: "HTTP 500" in s["lastError"] and "engine on fire" in s["lastError"])
    e.list_override, e.list_status = None, 200
    a = e.run("fine", LABEL, event=False)
    assert d.next("upsert", timeout=5)["id"] == a
    d.wait_status(lambda s: s["synced"])


def test_an_engine_that_ignores_the_filter(c):
    e = c.eng
    e.ignore_filters = True
    e.start()
    e.run("unlabelled", {"app": "x"}, event=False)
    a = e.run("labelled", LABEL, event=False)
    d = c.driver()
    assert d.next("upsert")["id"] == a
    e.run("unlabelled-2", {"atlasgate.io/inject": "false"})
    d.quiet()


def test_hostile_names_and_labels(c):
    e = c.eng
    e.start()
    d = c.driver()
    d.wait_status(lambda s: s["synced"])
    bad = {
        "escape": {"Name": "/evil\x1b]0;owned\x07"},
        "newline": {"Name": "/a\nb"},
        "slash": {"Name": "/../../etc"},
        "long": {"Name": "/" + "n" * 300},
        "label-number": {"Config": {"Labels": dict(LABEL, x=1)}},
        "label-control": {"Config": {"Labels": dict(LABEL, x="a\x00b")}},
        "label-flood": {"Config": {"Labels": dict(LABEL, **{"k%d" % i: "v" for i in range(300)})}},
        "pid": {"State": {"Running": True, "Pid": -5}},
    }
    for why, patch in bad.items():
        cid = e.new_id()
        with e.lock:
            e.containers[cid] = {"name": "x-" + why, "labels": dict(LABEL), "running": True, "pid": 4242, "started": 1}
            body = e._inspect(cid, e.containers[cid])
        body.update(patch)
        e.inspect_override[cid] = body
        before = d.status()["refused"]
        e.event(cid, "start")
        d.wait_status(lambda s: s["refused"] > before)
    # An inspect answering for another container is refused too.
    cid, other = e.new_id(), e.new_id()
    with e.lock:
        e.containers[cid] = {"name": "liar", "labels": dict(LABEL), "running": True, "pid": 4243, "started": 1}
        body = e._inspect(cid, e.containers[cid])
    body["Id"] = other
    e.inspect_override[cid] = body
    before = d.status()["refused"]
    e.event(cid, "start")
    d.wait_status(lambda s: s["refused"] > before)
    d.quiet()
    # The escape sequence never reached the log raw.
    assert not any("\x1b" in line for line in d.stderr), "raw escape in the log"


def test_a_container_claiming_anothers_name(c):
    e = c.eng
    e.start()
    d = c.driver()
    first = e.run("trusted", LABEL)
    assert d.next("upsert")["id"] == first
    impostor = e.run("trusted", LABEL)
    d.wait_status(lambda s: s["refused"] >= 1 and "claims the name" in s["lastError"])
    d.quiet()
    # Once the first is gone, the name is free again.
    e.remove(first)
    assert d.next("delete")["id"] == first
    e.event(impostor, "restart")
    assert d.next("upsert")["id"] == impostor


def test_max_containers(c):
    e = c.eng
    e.start()
    for i in range(5):
        e.run("c%d" % i, LABEL, event=False)
    # A list answer longer than any engine sends: an error, nothing taken from it.
    d = c.driver("--max-listed", "4")
    s = d.wait_status(lambda s: s["failures"] >= 1)
    assert "more than 4" in s["lastError"], s
    assert s["containers"] == 0, s
    d.stop()
    # Within the list bound but beyond the known cap: three known, two refused.
    d = c.driver("--max-containers", "3")
    s = d.wait_status(lambda s: s["containers"] == 3 and s["refused"] == 2)
    assert "already 3 containers known" in s["lastError"], s
    d.stop()
    # Events beyond the cap: refused one by one.
    e.list_override = b"[]"
    d = c.driver("--max-containers", "3")
    d.wait_status(lambda s: s["synced"])
    for i in range(4):
        e.event(e.run("ev%d" % i, LABEL, event=False), "start")
    s = d.wait_status(lambda s: s["containers"] == 3 and s["refused"] >= 1)


def test_stop_is_clean_while_connected(c):
    c.eng.start()
    d = c.driver()
    d.wait_status(lambda s: s["connected"])
    assert d.stop() == 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--driver", required=True)
    ap.add_argument("-k", default="")
    args = ap.parse_args()
    tests = [(n, f) for n, f in sorted(globals().items()) if n.startswith("test_") and args.k in n]
    passed = failed = 0
    for name, fn in tests:
        c = Case(args.driver)
        t0 = time.time()
        try:
            fn(c)
            passed += 1
            print("ok   %s (%.1fs)" % (name, time.time() - t0), flush=True)
        except Exception:
            failed += 1
            print("FAIL %s\n%s" % (name, traceback.format_exc()), flush=True)
        finally:
            c.close()
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
