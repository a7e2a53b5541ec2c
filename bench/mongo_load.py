#!/usr/bin/python3
"""MongoDB load client of the bench (bench/run.py runs it; Debian's pymongo 3.11).

  mongo_load.py check URI CAFILE
      one find_one({_id: 1}) and connectionStatus: is the document there, and
      as whom the server says the connection is authenticated
  mongo_load.py seed URI CAFILE DOCS
      inserts DOCS documents {_id: 0..DOCS-1, ...} into bench.items (dropped first)
  mongo_load.py find URI CAFILE DURATION CONNS DOCS
      CONNS threads share one MongoClient (maxPoolSize=minPoolSize=CONNS), each
      runs find_one({_id: random}) back to back for DURATION seconds
  mongo_load.py connect URI CAFILE N
      N times: open a new pool connection and run one find_one on it (TCP, TLS,
      the driver's hello, SCRAM when the URI has credentials, the find); the
      driver's monitor connection is opened once, before timing

Prints one JSON line. The URI carries the credentials (direct) or none (an
agent behind atlasgate). Latencies are wall clock around the driver call, in
ms; they include the client's own time (Python, GIL shared by the threads).
"""

import json
import random
import sys
import threading
import time

import pymongo
from pymongo import monitoring


def client(uri, cafile, **kw):
    return pymongo.MongoClient(uri, tlsCAFile=cafile, serverSelectionTimeoutMS=20000, connectTimeoutMS=10000,
                               socketTimeoutMS=20000, retryReads=False, retryWrites=False, appname="atlasgate-bench",
                               **kw)


def pct(sorted_vals, p):
    if not sorted_vals:
        return None
    return sorted_vals[min(len(sorted_vals) - 1, int(round(p / 100.0 * (len(sorted_vals) - 1))))]


def seed(uri, cafile, docs):
    c = client(uri, cafile)
    coll = c.bench.items
    coll.drop()
    batch = [{"_id": i, "name": f"item-{i:06d}", "qty": i % 97, "tags": ["a", "b"], "price": i * 0.25}
             for i in range(docs)]
    for i in range(0, docs, 1000):
        coll.insert_many(batch[i:i + 1000])
    n = coll.count_documents({})
    c.close()
    return {"seeded": n}


def check(uri, cafile):
    c = client(uri, cafile)
    found = c.bench.items.find_one({"_id": 1}) is not None
    st = c.admin.command("connectionStatus")
    users = [u.get("user") for u in st.get("authInfo", {}).get("authenticatedUsers", [])]
    c.close()
    return {"found": found, "users": users}


def find(uri, cafile, duration, conns, docs):
    c = client(uri, cafile, maxPoolSize=conns, minPoolSize=conns)
    coll = c.bench.items
    coll.find_one({"_id": 0})  # server selection, first connection
    lats = [[] for _ in range(conns)]
    errors = [0] * conns
    misses = [0] * conns
    state = {"deadline": 0.0, "t0": 0.0}

    def go():  # run once all have arrived, before any is released
        state["t0"] = time.perf_counter()
        state["deadline"] = state["t0"] + duration
    start = threading.Barrier(conns + 1)
    timed = threading.Barrier(conns + 1, action=go)

    def worker(i):
        rnd = random.Random(i)
        start.wait()
        for _ in range(5):  # every thread holds a connection before timing starts
            coll.find_one({"_id": rnd.randrange(docs)})
        timed.wait()
        mine = lats[i]
        deadline = state["deadline"]
        pc = time.perf_counter
        while True:
            t0 = pc()
            if t0 >= deadline:
                break
            try:
                d = coll.find_one({"_id": rnd.randrange(docs)})
                if d is None:
                    misses[i] += 1
            except pymongo.errors.PyMongoError:
                errors[i] += 1
                continue
            mine.append(pc() - t0)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(conns)]
    for t in threads:
        t.start()
    start.wait()
    timed.wait()
    t0 = state["t0"]
    for t in threads:
        t.join(duration + 30)
    elapsed = time.perf_counter() - t0
    allv = sorted(v for l in lats for v in l)
    c.close()
    return {"ops": len(allv), "elapsed_s": round(elapsed, 3), "ops_per_s": round(len(allv) / elapsed, 1),
            "p50_ms": round(pct(allv, 50) * 1000, 3) if allv else None,
            "p99_ms": round(pct(allv, 99) * 1000, 3) if allv else None,
            "errors": sum(errors), "misses": sum(misses), "connections": conns}


class Created(monitoring.ConnectionPoolListener):
    def __init__(self):
        self.created = 0

    def connection_created(self, event):
        self.created += 1

    def pool_created(self, event): pass
    def pool_cleared(self, event): pass
    def pool_closed(self, event): pass
    def connection_ready(self, event): pass
    def connection_closed(self, event): pass
    def connection_check_out_started(self, event): pass
    def connection_check_out_failed(self, event): pass
    def connection_checked_out(self, event): pass
    def connection_checked_in(self, event): pass


def connect(uri, cafile, n):
    # maxIdleTimeMS=1: the pooled connection has perished by the next
    # checkout (after the sleep), so every timed find_one gets a new one.
    ev = Created()
    c = client(uri, cafile, maxPoolSize=1, minPoolSize=0, maxIdleTimeMS=1, event_listeners=[ev])
    coll = c.bench.items
    coll.find_one({"_id": 0})  # monitor connection, server selection, SCRAM key cache
    created0 = ev.created
    times, errors = [], 0
    for i in range(n):
        time.sleep(0.005)
        t0 = time.perf_counter()
        try:
            coll.find_one({"_id": i % 100})
        except pymongo.errors.PyMongoError:
            errors += 1
            continue
        times.append(time.perf_counter() - t0)
    created = ev.created - created0
    c.close()
    times.sort()
    return {"n": len(times), "new_connections": created, "errors": errors,
            "median_ms": round(pct(times, 50) * 1000, 3) if times else None,
            "p10_ms": round(pct(times, 10) * 1000, 3) if times else None,
            "p90_ms": round(pct(times, 90) * 1000, 3) if times else None}


def main():
    mode, uri, cafile = sys.argv[1:4]
    rest = sys.argv[4:]
    if mode == "check":
        out = check(uri, cafile)
    elif mode == "seed":
        out = seed(uri, cafile, int(rest[0]))
    elif mode == "find":
        out = find(uri, cafile, float(rest[0]), int(rest[1]), int(rest[2]))
    elif mode == "connect":
        out = connect(uri, cafile, int(rest[0]))
    else:
        sys.exit(f"mongo_load.py: unknown mode {mode}")
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
