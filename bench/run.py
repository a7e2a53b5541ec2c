#!/usr/bin/python3
"""atlasgate side-by-side benchmark driver (run through scripts/bench).

One run, on loopback, round-robin over five contenders so that drift (other
builds on the machine, thermal, page cache) falls on all of them alike:

  direct     wrk -> upstream nginx (no proxy)
  atlasgate  wrk, in an agent cgroup, dials cloud.mongodb.com -> BPF redirect
             -> atlasgate (TLS terminate, inject token, audit) -> upstream
  nginx      wrk -> nginx reverse proxy (sets Authorization, keep-alive TLS
             pool to upstream, access log on) -> upstream
  haproxy    wrk -> HAProxy 2.6 (bench/haproxy.cfg.in: one thread, the same
             leaf as nginx, set-header Authorization, verified keep-alive TLS
             pool with http-reuse always, access log to a file) -> upstream
  mitmproxy  wrk -> mitmdump --mode reverse:https://upstream (addon sets
             Authorization) -> upstream

With --baseline BIN, a sixth contender, atlasgate-base, is measured exactly
like atlasgate (same config, same agent cgroup, same runs) but with the daemon
binary BIN (an older build). Only one daemon can run at a time (they share the
BPF pins and the listen port), so the driver stops one (SIGTERM, waits for its
exit) and starts the other whenever the round-robin moves between them, and
warms the fresh daemon up before it is measured. The extra passes (profile,
idle connections, BPF overhead) are for atlasgate only.

Every client dials the name cloud.mongodb.com on port 443: wrk runs in a
private mount namespace whose /etc/hosts maps the name to the contender's
address, so SNI, Host and the dialled address are what a real agent would
send. (wrk takes the SNI from the URL host; an IP-literal URL sends an IP as
SNI, which this driver also checks against atlasgate and reports.)

MongoDB section (skip with --no-mongodb): the stand-in replica set
tests/fake_mongo on three 127.x:27017
members with a static user, and bench/mongo_load.py (Debian's pymongo 3.11) as
the client, run alternately
  direct     with the user's credentials, straight to the stand-in
  atlasgate  in the agent cgroup with no credential -> BPF redirect of port
             27017 -> atlasgate (TLS terminate for *.mongodb.net, SCRAM as the
             configured database_user, command rules, audit) -> stand-in
measuring find-by-_id ops/s and latency over a pool of --mongo-connections,
and the cost of a new connection plus one find. The client resolves the
member names through a private /etc/hosts, atlasgate through a dnsmasq on a
127.x high port (dns.servers).

Growth passes (atlasgate only, at the end; skip with --no-growth): keep-alive
req/s and CPU per request with 10, 1,000 and 10,000 rules in the config (the
daemon restarted with each), and RSS, req/s and CPU with 10,000 idle agent TLS
connections held open beside a keep-alive wrk run.

Writes bench/results/latest.{txt,json,png}. Standard library only (Debian's
python3; python3-pymongo for the MongoDB section); needs root (cgroups, BPF,
port 443), nginx, haproxy, wrk, mitmdump, gnuplot, dnsmasq.
"""

import argparse
import datetime
import json
import os
import platform
import random
import re
import select
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import flamegraph  # bench/flamegraph.py, beside this file

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
HOST = "cloud.mongodb.com"
API_PATH = "/api/atlas/v2/groups"
TOKEN = "bench-token-x"
CONTENDERS = ["direct", "atlasgate", "nginx", "haproxy", "mitmproxy"]
PROXIES = ["atlasgate", "nginx", "haproxy", "mitmproxy"]
BASE = "atlasgate-base"            # --baseline: the same daemon, an older binary
DAEMONS = ("atlasgate", BASE)      # share pins and port: one runs at a time
CLIENT_ID = "mdb_sa_id_bench0000000000000000000001"
# The MongoDB section's stand-in cluster: names the target *.mongodb.net covers.
MONGO_SET = "atlas-bench-shard-0"
MONGO_NAMES = [f"cluster0-shard-00-0{i}.bench.mongodb.net" for i in range(3)]
MONGO_USER = "bench-app"
MONGO_DOCS = 100     # the stand-in scans the collection for a find by _id: keep it small


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------
# small helpers

def run(cmd, **kw):
    kw.setdefault("check", True)
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    kw.setdefault("text", True)
    return subprocess.run(cmd, **kw)


def cgroup2_mount():
    with open("/proc/self/mountinfo") as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            if post.split()[0] == "cgroup2" and pre.split()[3] == "/":
                return pre.split()[4]
    raise RuntimeError("no cgroup2 mount in /proc/self/mountinfo")


def addr_free(addr, port=443, kind=socket.SOCK_STREAM):
    s = socket.socket(socket.AF_INET, kind)
    try:
        s.bind((addr, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def pick_addr(used, port=443):
    for _ in range(200):
        a = f"127.{random.randint(20, 250)}.{random.randint(1, 250)}.{random.randint(2, 250)}"
        if a not in used and addr_free(a, port):
            used.add(a)
            return a
    raise RuntimeError(f"no free 127.x address for port {port}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pred, timeout, what, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {proc.returncode}")
        if pred():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}")


def port_open(addr, port):
    try:
        with socket.create_connection((addr, port), timeout=0.5):
            return True
    except OSError:
        return False


def children(pid):
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return out


def proc_tree(pid):
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo += children(p)
    return pids


def cpu_seconds(pids):
    tck = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
        except OSError:
            pass
    return total / tck


def status_kib(pids, key):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def loadavg():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def binary_info(path):
    st = os.stat(path)
    try:
        p = subprocess.run([path, "version"], capture_output=True, text=True, timeout=10)
        version = (p.stdout + p.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        version = "?"
    return {"path": path, "version": version, "size": st.st_size,
            "mtime": datetime.datetime.fromtimestamp(st.st_mtime, datetime.timezone.utc).isoformat(timespec="seconds")}


def remove_cgroup(path):
    if not os.path.isdir(path):
        return
    for root, dirs, _ in os.walk(path, topdown=False):
        for d in dirs:
            _rm_cg(os.path.join(root, d))
    _rm_cg(path)


def _rm_cg(path):
    try:
        if os.path.exists(os.path.join(path, "cgroup.kill")):
            with open(os.path.join(path, "cgroup.kill"), "w") as f:
                f.write("1")
    except OSError:
        pass
    deadline = time.monotonic() + 5
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > deadline:
                log(f"warning: could not remove cgroup {path}")
                return
            time.sleep(0.05)


# --------------------------------------------------------------------------
# wrk

UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}


def parse_ms(text):
    m = re.match(r"([\d.]+)(us|ms|s|m|h)$", text)
    if not m:
        return None
    return float(m.group(1)) * UNIT_MS[m.group(2)]


def parse_wrk(out):
    r = {"requests": 0, "rps": 0.0, "p50_ms": None, "p99_ms": None, "errors": 0, "non2xx": 0}
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    if m:
        r["requests"] = int(m.group(1))
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m:
        r["rps"] = float(m.group(1))
    for pct, key in (("50", "p50_ms"), ("99", "p99_ms")):
        m = re.search(rf"^\s+{pct}(?:\.000)?%\s+(\S+)", out, re.M)
        if m:
            r[key] = parse_ms(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        r["errors"] = sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        r["non2xx"] = int(m.group(1))
    return r


# --------------------------------------------------------------------------

class Bench:
    def __init__(self, args):
        self.args = args
        self.procs = {}          # name -> Popen
        self.logs = []
        self.tmp = None
        self.cgroups = []
        self.pin_root = None
        self.bpf_stats_prev = None
        # --baseline: atlasgate-base after atlasgate, in the table and the round-robin.
        self.contenders = list(CONTENDERS)
        self.binaries = {"atlasgate": args.atlasgate}
        if args.baseline:
            self.contenders.insert(self.contenders.index("atlasgate") + 1, BASE)
            self.binaries[BASE] = args.baseline
        self.proxies = [c for c in self.contenders if c != "direct"]
        self.cw = max(len(c) for c in self.contenders)  # name column of the progress lines
        self.daemon = None       # the atlasgate contender whose daemon is running
        self.lifetimes = {}      # daemon -> [{"counters", "rss_kib", "hwm_kib", ...}] of the stopped ones
        self.results = {
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": self.machine(),
            "settings": {
                "rounds": args.rounds, "duration_s": args.duration, "threads": 2, "connections": args.connections,
                "idle_connections": args.idle_conns,
                "growth": {"rules": args.growth_rules, "idle_connections": args.growth_conns} if args.growth else None,
                "mongodb": {"connections": args.mongo_connections, "connects": args.mongo_connects,
                            "documents": MONGO_DOCS} if args.mongodb else None,
            },
            "contenders": self.contenders,
            "rounds": [], "notes": [],
        }
        if args.baseline:
            self.results["binaries"] = {c: binary_info(b) for c, b in self.binaries.items()}
            self.results["daemon_switches"] = []

    # -- machine ------------------------------------------------------------
    @staticmethod
    def machine():
        model = ""
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        model = line.split(":", 1)[1].strip()
                        break
        except OSError:
            pass
        mem = 0
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem = int(line.split()[1]) // 1024
        vers = {}
        for name, cmd in (("nginx", ["nginx", "-v"]), ("haproxy", ["haproxy", "-v"]), ("mitmproxy", ["mitmdump", "--version"]),
                          ("wrk", ["wrk", "-v"]), ("openssl", ["openssl", "version"]),
                          ("pymongo", ["/usr/bin/python3", "-c", "import pymongo; print('pymongo', pymongo.version)"]),
                          ("dnsmasq", ["dnsmasq", "--version"])):
            try:
                p = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
                txt = (p.stdout + p.stderr).strip().splitlines()
                vers[name] = txt[0] if txt else "?"
            except (OSError, subprocess.TimeoutExpired):
                vers[name] = "?"
        return {"cpu": model, "cpus": os.cpu_count(), "mem_mib": mem, "kernel": platform.release(),
                "versions": vers, "loadavg_start": loadavg()}

    # -- setup ----------------------------------------------------------------
    def setup(self):
        self.tmp = tempfile.mkdtemp(prefix=f"atlasgate-bench-{os.getpid()}-")
        os.chmod(self.tmp, 0o755)  # nginx workers run as nobody
        used = set()
        self.upstream = pick_addr(used)
        self.proxy_addr = pick_addr(used)
        self.haproxy_addr = pick_addr(used)
        self.mitm_addr = pick_addr(used)
        log(f"temp dir {self.tmp}; upstream {self.upstream}:443, nginx proxy {self.proxy_addr}:443, "
            f"haproxy {self.haproxy_addr}:443, mitmproxy {self.mitm_addr}:443")
        if self.args.mongodb:
            self.mongo_members = [(n, pick_addr(used, 27017)) for n in MONGO_NAMES]
            self.dns_addr = pick_addr(used, 0)
            log("mongodb stand-in " + ", ".join(f"{n}={a}:27017" for n, a in self.mongo_members))
        self.make_pki()
        if self.args.mongodb:
            self.start_mongo()
        self.start_upstream()
        self.start_nginx_proxy()
        self.start_haproxy()
        self.start_mitmproxy()
        self.start_atlasgate()
        self.hosts = {}
        for c, addr in (("direct", self.upstream), ("atlasgate", self.upstream), (BASE, self.upstream),
                        ("nginx", self.proxy_addr), ("haproxy", self.haproxy_addr), ("mitmproxy", self.mitm_addr)):
            path = os.path.join(self.tmp, f"hosts-{c}")
            with open(path, "w") as f:
                f.write(f"127.0.0.1 localhost\n{addr} {HOST}\n")
            os.chmod(path, 0o644)
            self.hosts[c] = path
        if self.args.mongodb:
            # Direct and through atlasgate alike: the members' own addresses
            # (atlasgate intercepts port 27017 whatever the address).
            path = os.path.join(self.tmp, "hosts-mongodb")
            with open(path, "w") as f:
                f.write("127.0.0.1 localhost\n" + "".join(f"{a} {n}\n" for n, a in self.mongo_members))
            os.chmod(path, 0o644)
            self.hosts["mongodb"] = path

    def make_pki(self):
        pki = self.pki = os.path.join(self.tmp, "pki")
        os.makedirs(pki)
        run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{pki}/ca.key"])
        run(["openssl", "req", "-new", "-x509", "-key", f"{pki}/ca.key", "-sha256", "-days", "30",
             "-subj", "/CN=atlasgate bench CA", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", f"{pki}/ca.pem"])
        leaves = [("upstream", HOST, f"DNS:{HOST},IP:{self.upstream}"),
                  ("proxy", HOST, f"DNS:{HOST},IP:{self.proxy_addr}")]
        if self.args.mongodb:
            leaves.append(("mongo", MONGO_NAMES[0], ",".join(f"DNS:{n}" for n in MONGO_NAMES)))
        for name, cn, san in leaves:
            ext = os.path.join(pki, f"{name}.ext")
            with open(ext, "w") as f:
                f.write(f"basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                        f"extendedKeyUsage=serverAuth\nsubjectAltName={san}\n")
            run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{pki}/{name}.key"])
            run(["openssl", "req", "-new", "-key", f"{pki}/{name}.key", "-subj", f"/CN={cn}",
                 "-out", f"{pki}/{name}.csr"])
            run(["openssl", "x509", "-req", "-in", f"{pki}/{name}.csr", "-CA", f"{pki}/ca.pem", "-CAkey",
                 f"{pki}/ca.key", "-set_serial", str(random.randint(1, 1 << 60)), "-days", "30", "-sha256",
                 "-extfile", ext, "-out", f"{pki}/{name}.pem"])
        for f in os.listdir(pki):
            os.chmod(os.path.join(pki, f), 0o644 if f.endswith(".pem") else 0o600)
        os.chmod(pki, 0o755)

    def spawn(self, name, cmd, env=None, stdout_path=None):
        """Starts cmd in its own session; stderr (and stdout, unless
        stdout_path names a file of its own) to <tmp>/<name>.log."""
        # Appends: a daemon restarted by --baseline keeps one log over its lifetimes.
        logf = open(os.path.join(self.tmp, f"{name}.log"), "a")
        self.logs.append(logf)
        out = subprocess.STDOUT
        if stdout_path:
            out = open(stdout_path, "a")
            self.logs.append(out)
        p = subprocess.Popen(cmd, stdout=logf if out == subprocess.STDOUT else out,
                             stderr=logf if out != subprocess.STDOUT else subprocess.STDOUT, env=env,
                             stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs[name] = p
        return p

    def render(self, template, out, **vars):
        with open(os.path.join(BENCH, template)) as f:
            text = f.read()
        for k, v in vars.items():
            text = text.replace(f"@{k}@", v)
        with open(out, "w") as f:
            f.write(text)
        return out

    def start_upstream(self):
        conf = self.render("nginx-upstream.conf.in", os.path.join(self.tmp, "upstream.conf"), TMP=self.tmp,
                           UPSTREAM=self.upstream, PKI=self.pki, TOKEN=TOKEN)
        p = self.spawn("upstream", ["nginx", "-p", self.tmp, "-c", conf, "-e", f"{self.tmp}/upstream-error.log"])
        wait_for(lambda: port_open(self.upstream, 443), 10, "upstream nginx", p)

    def start_nginx_proxy(self):
        conf = self.render("nginx-proxy.conf.in", os.path.join(self.tmp, "proxy.conf"), TMP=self.tmp,
                           UPSTREAM=self.upstream, PROXY=self.proxy_addr, PKI=self.pki, TOKEN=TOKEN)
        p = self.spawn("nginx", ["nginx", "-p", self.tmp, "-c", conf, "-e", f"{self.tmp}/proxy-error.log"])
        wait_for(lambda: port_open(self.proxy_addr, 443), 10, "nginx proxy", p)

    def start_haproxy(self):
        """HAProxy with bench/haproxy.cfg.in: the nginx proxy's leaf and key
        (HAProxy wants them in one PEM file), the same token and upstream.
        Foreground (-db), one process; its stdout is the access log file (the
        config logs to `stdout format raw`), stderr goes to haproxy.log."""
        crt = os.path.join(self.pki, "haproxy.pem")
        with open(crt, "w") as f:
            for part in ("proxy.pem", "proxy.key"):
                with open(os.path.join(self.pki, part)) as g:
                    f.write(g.read())
        os.chmod(crt, 0o600)
        conf = self.render("haproxy.cfg.in", os.path.join(self.tmp, "haproxy.cfg"), TMP=self.tmp,
                           UPSTREAM=self.upstream, HAPROXY=self.haproxy_addr, PKI=self.pki, CRT=crt, TOKEN=TOKEN)
        chk = subprocess.run(["haproxy", "-c", "-f", conf], capture_output=True, text=True)
        if chk.returncode != 0:
            raise RuntimeError(f"haproxy -c -f {conf}: {(chk.stdout + chk.stderr).strip()[-1500:]}")
        self.haproxy_access = os.path.join(self.tmp, "haproxy-access.log")
        p = self.spawn("haproxy", ["haproxy", "-db", "-f", conf], stdout_path=self.haproxy_access)
        wait_for(lambda: port_open(self.haproxy_addr, 443), 10, "haproxy", p)

    def start_mitmproxy(self):
        confdir = os.path.join(self.tmp, "mitmproxy")
        os.makedirs(confdir)
        env = dict(os.environ, BENCH_TOKEN=TOKEN, HOME=self.tmp)
        cmd = ["mitmdump", "--mode", f"reverse:https://{self.upstream}:443", "--listen-host", self.mitm_addr,
               "--listen-port", "443", "-s", os.path.join(BENCH, "mitm_addon.py"),
               "--set", f"confdir={confdir}", "--set", f"ssl_verify_upstream_trusted_ca={self.pki}/ca.pem",
               "--set", "connection_strategy=lazy", "--set", "flow_detail=1"]
        p = self.spawn("mitmproxy", cmd, env=env)
        wait_for(lambda: port_open(self.mitm_addr, 443), 30, "mitmdump", p)
        self.mitm_ca = os.path.join(confdir, "mitmproxy-ca-cert.pem")

    def start_mongo(self):
        """The MongoDB section's stand-in cluster, and a DNS server for atlasgate.

        fake_mongo: three
        members on their 127.x:27017, TLS with a bench-CA certificate for the
        member names, one static user. dnsmasq answers the members' A records
        on a 127.x high port: atlasgate resolves the name the agent sent as SNI
        with its own resolver (dns.servers), the client through /etc/hosts."""
        self.mongo_password = "bench-" + "".join(random.choice("abcdefghijkmnpqrstuvwxyz23456789") for _ in range(20))
        self.mongo_password_file = os.path.join(self.tmp, "mongo-password")
        with open(self.mongo_password_file, "w") as f:
            f.write(self.mongo_password)
        os.chmod(self.mongo_password_file, 0o600)
        ready = os.path.join(self.tmp, "fake_mongo.ready")
        cmd = ["/usr/bin/python3", os.path.join(REPO, "tests", "fake_mongo", "fake_mongo.py"), "--cert", f"{self.pki}/mongo.pem",
               "--key", f"{self.pki}/mongo.key", "--port", "27017", "--set-name", MONGO_SET,
               "--user", f"{MONGO_USER}:{self.mongo_password}", "--ready-file", ready, "--quiet"]
        for n, a in self.mongo_members:
            cmd += ["--member", f"{n}={a}"]
        p = self.spawn("fake_mongo", cmd)
        wait_for(lambda: os.path.exists(ready), 20, "fake_mongo ready", p)

        for _ in range(50):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.bind((self.dns_addr, 0))
                port = u.getsockname()[1]
            if addr_free(self.dns_addr, port):
                break
        self.dns_port = port
        cmd = ["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--user=root",
               f"--listen-address={self.dns_addr}", "--bind-interfaces", f"--port={port}", "--log-facility=-",
               "--cache-size=0"]
        cmd += [f"--host-record={n},{a}" for n, a in self.mongo_members]
        p = self.spawn("dnsmasq", cmd)
        log_path = os.path.join(self.tmp, "dnsmasq.log")

        def started():
            with open(log_path) as f:
                return "started" in f.read()
        wait_for(started, 10, "dnsmasq", p)

    def start_atlasgate(self, name="atlasgate", config=None):
        """Starts the daemon of contender `name` (atlasgate or atlasgate-base).

        Both run the one config written on the first call: same port, state dir
        (so the same CA), agents cgroup, pins; only the binary differs. The
        growth passes give atlasgate another `config` (more rules, limits)."""
        if self.pin_root is None:
            self.write_atlasgate_config()
        p = self.spawn(name, [self.binaries[name], "daemon", "--config", config or self.ag_configs[name],
                              "--run-dir", self.ag_run])

        def ready():
            try:
                with open(os.path.join(self.ag_run, "runtime.json")) as f:
                    return json.load(f).get("pid") == p.pid
            except (OSError, ValueError):
                return False
        wait_for(ready, 20, f"{name} daemon ready", p)
        self.daemon = name
        self.ag_ca = os.path.join(self.ag_state, "ca.pem")
        self.wrk_cg = os.path.join(self.agents_cg, "wrk")
        os.makedirs(self.wrk_cg, exist_ok=True)

    def write_atlasgate_config(self):
        tag = f"atlasgate-bench-{os.getpid()}"
        self.cgroot = cgroup2_mount()
        self.agents_cg = os.path.join(self.cgroot, tag)
        self.cgroups.append(self.agents_cg)
        self.pin_root = f"/sys/fs/bpf/{tag}"
        self.ag_state = os.path.join(self.tmp, "state")
        self.ag_run = os.path.join(self.tmp, "run")
        secret = os.path.join(self.tmp, "client-secret")
        with open(secret, "w") as f:
            f.write("mdb_sa_sk_bench-secret")
        os.chmod(secret, 0o600)
        self.ag_port = free_port()
        config = {
            "listen": {"port": self.ag_port},
            "state_dir": self.ag_state,
            "audit_log": os.path.join(self.tmp, "audit.jsonl"),
            "log_level": "warn",
            "agents": {"cgroup": tag},
            "targets": [{"host": HOST, "addresses": [self.upstream], "resolve": False,
                         "upstream_ca": os.path.join(self.pki, "ca.pem"),
                         "credentials": {"service_account": {"client_id": CLIENT_ID,
                                                             "client_secret_file": secret}}}],
            "rules": {"default": "allow"},
            "bpf": {"keep_on_exit": False, "pin_root": self.pin_root},
        }
        # --baseline: an older daemon may not know mongodb targets; it gets the
        # https part only (the MongoDB section measures atlasgate alone).
        self.ag_configs = {}
        self.ag_config_data = {}
        for name in self.binaries:
            c = json.loads(json.dumps(config))
            if self.args.mongodb and name == "atlasgate":
                c["targets"].append({"host": "*.mongodb.net", "protocol": "mongodb",
                                     "upstream_ca": os.path.join(self.pki, "ca.pem"),
                                     "credentials": {"database_user": {
                                         "username": MONGO_USER, "password_file": self.mongo_password_file}}})
                c["dns"] = {"servers": [f"{self.dns_addr}:{self.dns_port}"]}
            path = os.path.join(self.tmp, "atlasgate.yaml" if name == "atlasgate" else "atlasgate-base.yaml")
            with open(path, "w") as f:
                json.dump(c, f, indent=2)
            self.ag_configs[name] = path
            self.ag_config_data[name] = c

    def stop_atlasgate(self):
        """Stops the running daemon the way teardown does (SIGTERM, wait for its
        exit), after keeping its counters and memory for the figures."""
        name = self.daemon
        p = self.procs[name]
        pids = proc_tree(p.pid)
        life = {"counters": self.daemon_counters(name), "rss_kib": status_kib(pids, "VmRSS"),
                "hwm_kib": status_kib(pids, "VmHWM")}
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            raise RuntimeError(f"{name} (pid {p.pid}) did not stop within 15 s of SIGTERM; killed")
        if p.returncode != 0:
            note = f"{name} (pid {p.pid}) exited with {p.returncode} on SIGTERM (its log: {name}.log, --keep-tmp)"
            log(f"warning: {note}")
            self.results["notes"].append(note)
        if os.path.exists(self.pin_root):
            raise RuntimeError(f"{name} exited but left {self.pin_root} behind (bpf.keep_on_exit is false)")
        self.lifetimes.setdefault(name, []).append(life)
        self.daemon = None

    def use_daemon(self, contender, warm=True):
        """--baseline: makes contender's daemon the running one (no-op otherwise).

        A daemon started here is checked with one request through it and, if
        `warm`, given the warm-up every contender gets (1 s keep-alive + 1 s new
        connections): leaf minted, token fetched, upstream pool filled."""
        if not self.args.baseline or contender not in DAEMONS:
            return
        if self.daemon == contender:
            if self.procs[contender].poll() is not None:
                raise RuntimeError(f"{contender} daemon exited with {self.procs[contender].returncode}")
            return
        t0 = time.monotonic()
        prev = self.daemon
        if prev is not None:
            self.stop_atlasgate()
        t1 = time.monotonic()
        self.start_atlasgate(contender)
        t2 = time.monotonic()
        code, _, err = self.curl(contender, API_PATH, self.ag_ca)
        if code != "200":
            raise RuntimeError(f"{contender} after its start: GET {API_PATH} -> {code} {err}")
        if warm:
            self.wrk(contender, 1)
            self.wrk(contender, 1, new_conn=True)
        sw = {"from": prev, "to": contender, "stop_s": round(t1 - t0, 2), "start_s": round(t2 - t1, 2),
              "total_s": round(time.monotonic() - t0, 2), "warmed": warm}
        self.results["daemon_switches"].append(sw)
        log(f"daemon switch {prev or '-'} -> {contender}: stopped in {sw['stop_s']:.2f} s, ready in "
            f"{sw['start_s']:.2f} s{', warmed up' if warm else ''}")

    def pids(self, contender):
        if contender == "direct":
            return []
        return proc_tree(self.procs[contender].pid)

    # -- clients --------------------------------------------------------------
    def client_cmd(self, contender, argv, cgroup=None):
        """argv run with /etc/hosts mapping HOST to the contender, in `cgroup` if given."""
        join = f'echo $$ > {cgroup}/cgroup.procs && ' if cgroup else ""
        script = f'mount --bind "$1" /etc/hosts && {join}shift && exec "$@"'
        return ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", self.hosts[contender]] + argv

    def agent_cgroup(self, contender):
        return self.wrk_cg if contender in DAEMONS else None

    def wrk(self, contender, duration, new_conn=False, url=None, timeout_extra=20):
        argv = ["wrk", "-t2", f"-c{self.args.connections}", f"-d{duration}s", "--latency", "--timeout", "5s",
                "-H", f"Host: {HOST}", "-H", "Accept: application/vnd.atlas.2025-03-12+json"]
        if new_conn:
            argv += ["-H", "Connection: close"]
        argv.append(url or f"https://{HOST}{API_PATH}")
        self.use_daemon(contender)
        cmd = self.client_cmd(contender, argv, self.agent_cgroup(contender))
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + timeout_extra)
        if p.returncode != 0:
            raise RuntimeError(f"wrk for {contender} failed ({p.returncode}): {p.stderr.strip()}")
        r = parse_wrk(p.stdout)
        r["raw"] = p.stdout
        return r

    def curl(self, contender, path, cafile):
        argv = ["curl", "-sS", "--max-time", "10", "--cacert", cafile, "-o", "-", "-w", "\n%{http_code}",
                f"https://{HOST}{path}"]
        self.use_daemon(contender)
        cmd = self.client_cmd(contender, argv, self.agent_cgroup(contender))
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        body, _, code = p.stdout.rpartition("\n")
        return code, body, p.stderr.strip()

    # -- checks -----------------------------------------------------------------
    def sanity(self):
        cas = {"direct": f"{self.pki}/ca.pem", "atlasgate": self.ag_ca, BASE: self.ag_ca,
               "nginx": f"{self.pki}/ca.pem", "haproxy": f"{self.pki}/ca.pem", "mitmproxy": self.mitm_ca}
        checks = {}
        for c in self.contenders:
            self.use_daemon(c, warm=False)  # idle RSS is taken right after these two requests
            lines0 = self.access_log_lines(c)
            code, body, err = self.curl(c, API_PATH, cas[c])
            acode, abody, aerr = self.curl(c, "/__auth", cas[c])
            ok = code == "200" and '"results"' in body and acode == "200"
            if c != "direct":
                ok = ok and abody.strip() in (f"Bearer {TOKEN}", "Bearer " + TOKEN)
            checks[c] = {"api_status": code, "authorization_seen_by_upstream": abody.strip(), "ok": ok,
                         "error": err or aerr}
            if self.access_log(c)[0]:
                # One line per request: the two curls above.
                time.sleep(0.1)
                checks[c]["access_log_lines"] = self.access_log_lines(c) - lines0
                if checks[c]["access_log_lines"] != 2:
                    note = (f"{c}: access log grew by {checks[c]['access_log_lines']} lines for 2 requests "
                            f"(expected one line per request)")
                    log(f"warning: {note}")
                    self.results["notes"].append(note)
            log(f"sanity {c:{self.cw}s}: GET {API_PATH} -> {code}; upstream saw Authorization: {abody.strip()!r}"
                f"{'' if ok else '  <-- FAILED ' + (err or aerr)}")
            if not ok:
                raise RuntimeError(f"sanity check failed for {c}: {checks[c]}")
            if self.args.baseline and c in DAEMONS:
                self.memory_snapshot("idle", [c])  # before the other daemon replaces it
        self.results["sanity"] = checks

    def check_ip_sni(self):
        """wrk sends the URL host as SNI: with an IP-literal URL, that is an IP."""
        url = f"https://{self.upstream}{API_PATH}"
        r = self.wrk("atlasgate", 1, url=url)
        ok = r["requests"] > 0 and r["errors"] == 0 and r["non2xx"] == 0
        note = (f"wrk with an IP-literal URL ({url}) sends SNI \"{self.upstream}\"; through atlasgate: "
                f"{r['requests']} requests, {r['errors']} socket errors -> "
                + ("works (IP SNI treated like absent SNI)" if ok else
                   "REFUSED: atlasgate rejects an IP-literal SNI as 'not a configured target' instead of "
                   "falling back to the target owning the dialled address (RFC 6066 forbids IP literals in "
                   "SNI, but OpenSSL-based clients such as wrk send them). The bench therefore dials the "
                   "name cloud.mongodb.com (private /etc/hosts) for every contender."))
        log(note)
        self.results["ip_literal_sni"] = {"works": ok, "requests": r["requests"], "errors": r["errors"],
                                          "note": note}
        ag_log = os.path.join(self.tmp, "atlasgate.log")
        try:
            with open(ag_log) as f:
                lines = [l.strip() for l in f if "SNI" in l]
            if lines:
                self.results["ip_literal_sni"]["daemon_log_sample"] = lines[-1][:300]
        except OSError:
            pass

    def access_log(self, contender):
        """The access log of a proxy that writes one (path, the value of its
        first field on a resumed TLS session)."""
        if contender == "nginx":
            return os.path.join(self.tmp, "proxy-access.log"), "r"    # $ssl_session_reused
        if contender == "haproxy":
            return self.haproxy_access, "1"                             # %[ssl_fc_is_resumed]
        return None, None

    def access_log_lines(self, contender):
        path, _ = self.access_log(contender)
        try:
            with open(path) as f:
                return sum(1 for line in f if line.strip())
        except (OSError, TypeError):
            return 0

    def check_resumption(self):
        """Does wrk resume TLS sessions when it reconnects after Connection: close?

        The nginx proxy logs $ssl_session_reused per request, haproxy
        ssl_fc_is_resumed; a 1 s new-connection run against each tells how many
        of wrk's handshakes were resumptions (wrk behaves the same toward every
        contender). The note is nginx's, as before; haproxy's is beside it."""
        for c in ("nginx", "haproxy"):
            path, mark = self.access_log(c)
            start = os.path.getsize(path) if os.path.exists(path) else 0
            self.wrk(c, 1, new_conn=True)
            time.sleep(0.2)
            with open(path) as f:
                f.seek(start)
                flags = [line.split()[0] for line in f if line.strip()]
            reused = sum(1 for x in flags if x == mark)
            share = reused / len(flags) if flags else 0.0
            note = (f"wrk -H 'Connection: close' via {c}: {len(flags)} requests, {reused} on resumed TLS sessions "
                    f"({100 * share:.0f}%) -> new-connection figures are "
                    + ("mostly abbreviated (resumed) handshakes" if share > 0.5 else "mostly full handshakes"))
            log(note)
            key = "newconn_resumption" if c == "nginx" else "newconn_resumption_haproxy"
            self.results[key] = {"requests": len(flags), "resumed": reused, "share": round(share, 3),
                                 "note": note}

    # -- measurement ---------------------------------------------------------------
    def measure(self, contender, new_conn):
        self.use_daemon(contender)
        pids = self.pids(contender)
        cpu0 = cpu_seconds(pids)
        la0 = loadavg()
        host_cpu0 = self.host_cpu()
        r = self.wrk(contender, self.args.duration, new_conn=new_conn)
        cpu1 = cpu_seconds(pids)
        host_cpu1 = self.host_cpu()
        r.pop("raw", None)
        r["loadavg"] = la0
        if pids:
            r["proxy_cpu_s"] = round(cpu1 - cpu0, 3)
            r["cpu_s_per_10k"] = round((cpu1 - cpu0) / r["requests"] * 10000, 3) if r["requests"] else None
        busy = host_cpu1[0] - host_cpu0[0]
        total = host_cpu1[1] - host_cpu0[1]
        r["host_busy_pct"] = round(100.0 * busy / total, 1) if total else None
        return r

    @staticmethod
    def host_cpu():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        idle = v[3] + v[4]
        return (sum(v) - idle, sum(v))

    def warmup(self):
        for c in self.contenders:
            self.wrk(c, 1)
            self.wrk(c, 1, new_conn=True)
        log("warm-up done (1 s keep-alive + 1 s new-connection per contender)")

    def rounds(self):
        n = self.args.rounds
        cs = self.contenders
        for i in range(n):
            order = cs[i % len(cs):] + cs[:i % len(cs)]
            rd = {}
            for c in order:
                ka = self.measure(c, False)
                nc = self.measure(c, True)
                rd[c] = {"keepalive": ka, "newconn": nc}
                log(f"round {i + 1}/{n} {c:{self.cw}s}: keep-alive {ka['rps']:9.0f} req/s p50 {ka['p50_ms']:.2f} ms "
                    f"p99 {ka['p99_ms']:.2f} ms | new-conn {nc['rps']:8.0f} conn/s"
                    + (f" | cpu {ka['cpu_s_per_10k']:.2f} s/10k" if 'cpu_s_per_10k' in ka else "")
                    + (f" | errors {ka['errors'] + nc['errors']} non2xx {ka['non2xx'] + nc['non2xx']}"
                       if ka['errors'] + nc['errors'] + ka['non2xx'] + nc['non2xx'] else "")
                    + f" | host busy {ka['host_busy_pct']}% load {ka['loadavg']:.2f}")
            self.results["rounds"].append(rd)

    def profile(self, out_dir):
        """--profile: where atlasgate spends its time under keep-alive load.

        perf (cpu-clock samples of the daemon, flat, by symbol) during one
        keep-alive run, and strace -c (syscalls per request) during another.
        Written to <out>/atlasgate-profile.txt; not part of the figures."""
        self.use_daemon("atlasgate")
        pid = self.procs["atlasgate"].pid
        lines = []
        if shutil.which("perf"):
            data = os.path.join(self.tmp, "perf.data")
            # dwarf stacks (the Release build has no frame pointers), 32 KiB of
            # stack per sample: 8 KiB cut most coroutine stacks short.
            rec = subprocess.Popen(["perf", "record", "-F", "1999", "-e", "cpu-clock", "--call-graph", "dwarf,32768",
                                    "-p", str(pid), "-o", data,
                                    "--", "sleep", str(self.args.duration)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            r = self.wrk("atlasgate", self.args.duration)
            rec.wait(30)
            rep = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children", "-g", "none",
                                  "--sort", "dso,symbol",
                                  "--percent-limit", "0"], capture_output=True, text=True)
            rows = []
            for l in rep.stdout.splitlines():
                m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(.*?)\s*(?:-\s+-\s*)?$", l)
                if m:
                    rows.append((float(m.group(1)), m.group(2), m.group(4).strip()))
            buckets = {}
            for pct, dso, sym in rows:
                buckets[profile_bucket(dso, sym)] = buckets.get(profile_bucket(dso, sym), 0.0) + pct
            lines.append(f"== perf: atlasgate under keep-alive load ({r['rps']:.0f} req/s, "
                         f"{len(rows)} symbols), cpu-clock samples by category ==")
            for k, v in sorted(buckets.items(), key=lambda kv: -kv[1]):
                lines.append(f"  {v:6.2f}%  {k}")
            self.results["profile"] = {"rps_while_profiled": round(r["rps"]),
                                       "buckets_pct": {k: round(v, 2) for k, v in buckets.items()}}
            lines.append("")
            lines.append("== perf: top symbols ==")
            for pct, dso, sym in rows[:45]:
                lines.append(f"  {pct:6.2f}%  {dso:22s} {sym[:150]}")
            self.flame_graph(data, r, out_dir)
        if shutil.which("strace"):
            sfile = os.path.join(self.tmp, "strace.txt")
            st = subprocess.Popen(["strace", "-c", "-f", "-o", sfile, "-p", str(pid)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
            r = self.wrk("atlasgate", 3)
            st.send_signal(signal.SIGINT)
            st.wait(30)
            with open(sfile) as f:
                txt = f.read()
            calls = 0
            m = re.search(r"^-+.*\n\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?total", txt, re.M)
            if m:
                calls = int(m.group(1))
            lines.append("")
            self.results.setdefault("profile", {})["syscalls_per_request"] = round(calls / max(r["requests"], 1), 2)
            lines.append(f"== strace -c -f: {r['requests']} requests (slowed by strace) -> "
                         f"{calls / max(r['requests'], 1):.1f} syscalls per request ==")
            lines += txt.splitlines()
        path = os.path.join(out_dir, "atlasgate-profile.txt")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        log(f"profile written to {path}")

    def flame_graph(self, data, r, out_dir):
        """The same samples as a flame graph: <out>/atlasgate-keepalive.svg
        (bench/flamegraph.py; --no-inline: perf's addr2line would take minutes)."""
        with subprocess.Popen(["perf", "script", "--no-inline", "-i", data], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True, errors="replace") as ps:
            folded = flamegraph.fold(ps.stdout)
        if not folded:
            log("flame graph: perf script gave no samples")
            return
        svg = flamegraph.render(folded, f"atlasgate under keep-alive load: {r['rps']:.0f} req/s "
                                        f"(while profiled), wrk -c{self.args.connections}, {self.args.duration} s")
        path = os.path.join(out_dir, "atlasgate-keepalive.svg")
        with open(path, "w") as f:
            f.write(svg)
        log(f"flame graph: {sum(folded.values())} samples -> {path}")

    def daemon_counters(self, name="atlasgate"):
        """The running daemon's counters, asked with its own binary's `status`."""
        p = subprocess.run([self.binaries[name], "--control-socket", os.path.join(self.ag_run, "control.sock"),
                            "status", "--json"], capture_output=True, text=True, timeout=15)
        try:
            st = json.loads(p.stdout)
        except ValueError:
            log(f"{name} status failed: {p.stderr.strip()[:200]}")
            return None
        c = st.get("counters", st)
        return {k: c.get(k) for k in ("accepted", "requests", "refused_no_flow", "handshake_failures",
                                      "upstream_failures", "upstream_connects", "upstream_reuses", "upstream_idle",
                                      "tls_refused_unknown_sni", "tls_leaves_minted")
                if k in c}

    def atlasgate_counters(self):
        """Counters over the whole run: with --baseline a daemon had several
        lifetimes, summed (upstream_idle, a gauge: the last one's)."""
        for name in self.binaries:
            lives = [l["counters"] for l in self.lifetimes.get(name, []) if l["counters"]]
            if self.daemon == name:
                cur = self.daemon_counters(name)
                if cur:
                    lives.append(cur)
            if not lives:
                continue
            keep = {}
            for k in lives[-1]:
                vals = [l.get(k) or 0 for l in lives]
                keep[k] = vals[-1] if k == "upstream_idle" else sum(vals)
            key = "atlasgate_counters" if name == "atlasgate" else "atlasgate_base_counters"
            self.results[key] = keep
            if self.args.baseline:
                self.results.setdefault("daemon_lifetimes", {})[name] = len(lives)
            log(f"{name} counters" + (f" ({len(lives)} lifetimes)" if self.args.baseline else "") + ": "
                + ", ".join(f"{k} {v}" for k, v in keep.items()))

    def memory_snapshot(self, label, only=None):
        """RSS/HWM of the proxies' process trees (or of `only`), merged into
        results["memory"][label]. --baseline: a daemon that is not running is
        skipped, except after load, where its last lifetime stands in; VmHWM of
        a daemon is the highest over its lifetimes (each restart resets it)."""
        snap = {}
        for c in only or self.proxies:
            lives = self.lifetimes.get(c, [])
            if c in DAEMONS and self.daemon != c:
                if label == "after_load" and lives:
                    snap[c] = {"rss_kib": lives[-1]["rss_kib"], "hwm_kib": max(l["hwm_kib"] for l in lives),
                               "processes": [], "stopped": True, "lifetimes": len(lives)}
                continue
            pids = self.pids(c)
            per = []
            for p in pids:
                try:
                    with open(f"/proc/{p}/comm") as f:
                        comm = f.read().strip()
                except OSError:
                    comm = "?"
                per.append({"pid": p, "comm": comm, "rss_kib": status_kib([p], "VmRSS"),
                            "hwm_kib": status_kib([p], "VmHWM")})
            snap[c] = {"rss_kib": status_kib(pids, "VmRSS"), "hwm_kib": status_kib(pids, "VmHWM"),
                       "processes": per}
            if c in DAEMONS and lives:
                snap[c]["hwm_kib"] = max([snap[c]["hwm_kib"]] + [l["hwm_kib"] for l in lives])
                snap[c]["lifetimes"] = len(lives) + 1
        self.results.setdefault("memory", {}).setdefault(label, {}).update(snap)
        return snap

    def idle_connections(self):
        self.use_daemon("atlasgate")  # atlasgate only, not atlasgate-base
        n = self.args.idle_conns
        cas = {"atlasgate": self.ag_ca, "nginx": f"{self.pki}/ca.pem", "haproxy": f"{self.pki}/ca.pem",
               "mitmproxy": self.mitm_ca}
        addrs = {"atlasgate": self.upstream, "nginx": self.proxy_addr, "haproxy": self.haproxy_addr,
                 "mitmproxy": self.mitm_addr}
        out = {}
        cg = os.path.join(self.agents_cg, "idle")
        os.makedirs(cg, exist_ok=True)
        for c in PROXIES:
            pids = self.pids(c)
            time.sleep(0.5)
            before = status_kib(pids, "VmRSS")
            argv = ["/usr/bin/python3", os.path.join(BENCH, "idle_conns.py"), addrs[c], str(n), cas[c]]
            cmd = self.client_cmd(c, argv, cg if c == "atlasgate" else None)
            p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)
            try:
                line = p.stdout.readline()
                if not line.startswith("ready"):
                    raise RuntimeError(f"idle connections to {c}: {line!r} {p.stderr.read()[:500]}")
                time.sleep(1.0)  # let the proxy settle (TLS 1.3 tickets sent, coroutines parked)
                after = status_kib(pids, "VmRSS")
            finally:
                self.close_idle(p)
            out[c] = {"connections": n, "rss_before_kib": before, "rss_after_kib": after,
                      "per_conn_kib": round((after - before) / n, 2)}
            log(f"idle connections {c:9s}: {n} held, RSS {before / 1024:.1f} -> {after / 1024:.1f} MiB, "
                f"{(after - before) / n:.1f} KiB per connection")
        remove_cgroup(cg)
        self.results["idle_connections"] = out

    def bpf_overhead(self):
        self.use_daemon("atlasgate")
        src = os.path.join(BENCH, "connect_loop.c")
        exe = os.path.join(self.tmp, "connect_loop")
        run(["cc", "-O2", "-Wall", "-o", exe, src])
        iters = self.args.connect_iters
        cg = os.path.join(self.agents_cg, "probe")
        os.makedirs(cg, exist_ok=True)
        port = free_port()
        # The listener lives outside every agent cgroup, like a remote server.
        srv = subprocess.Popen([exe, "serve", "127.0.0.1", str(port)], stdout=subprocess.PIPE, text=True)
        self.procs["connect-server"] = srv
        if srv.stdout.readline().strip() != "listening":
            raise RuntimeError("connect_loop server did not start")
        wall = {"inside": [], "outside": []}
        for i in range(self.args.connect_batches):
            for where in (("inside", "outside") if i % 2 == 0 else ("outside", "inside")):
                if where == "inside":
                    cmd = ["sh", "-c", f'echo $$ > {cg}/cgroup.procs && exec "$@"', "sh", exe, "127.0.0.1",
                           str(port), str(iters)]
                else:
                    cmd = [exe, "127.0.0.1", str(port), str(iters)]
                p = run(cmd, timeout=120)
                m = re.search(r"median_ns=(\d+) mean_ns=(\d+)", p.stdout)
                wall[where].append((int(m.group(1)), int(m.group(2))))
        med_in = int(statistics.median(x[0] for x in wall["inside"]))
        med_out = int(statistics.median(x[0] for x in wall["outside"]))
        res = {"iterations_per_batch": iters, "batches": self.args.connect_batches,
               "connect_median_ns_inside": med_in, "connect_median_ns_outside": med_out,
               "wallclock_overhead_ns": med_in - med_out, "samples": wall}
        log(f"connect() to a non-target port: median {med_out} ns outside, {med_in} ns inside the agent "
            f"cgroup -> {med_in - med_out:+.0f} ns (wall clock)")

        # In-kernel accounting: run_time_ns / run_cnt of our own pinned programs.
        progs_dir = os.path.join(self.pin_root, "progs")
        try:
            with open("/proc/sys/kernel/bpf_stats_enabled") as f:
                self.bpf_stats_prev = f.read().strip()
            with open("/proc/sys/kernel/bpf_stats_enabled", "w") as f:
                f.write("1")
            before = self.bpf_prog_stats(progs_dir)
            cmd = ["sh", "-c", f'echo $$ > {cg}/cgroup.procs && exec "$@"', "sh", exe, "127.0.0.1", str(port),
                   str(iters)]
            run(cmd, timeout=120)
            after = self.bpf_prog_stats(progs_dir)
        finally:
            self.restore_bpf_stats()
        per_prog = {}
        total_ns = 0
        for name, a in after.items():
            b = before.get(name, {"run_time_ns": 0, "run_cnt": 0})
            dn, dc = a["run_time_ns"] - b["run_time_ns"], a["run_cnt"] - b["run_cnt"]
            if dc:
                per_prog[name] = {"runs": dc, "ns_per_run": round(dn / dc, 1), "runs_per_connect": round(dc / iters, 2),
                                  "ns_per_connect": round(dn / iters, 1)}
                total_ns += dn
        res["bpf_stats"] = per_prog
        res["bpf_ns_per_connect"] = round(total_ns / iters, 1)
        log("bpf_stats: " + ", ".join(f"{k} {v['ns_per_run']} ns x {v['runs_per_connect']}/connect"
                                      for k, v in per_prog.items())
            + f" -> {res['bpf_ns_per_connect']} ns per non-target connect()")
        remove_cgroup(cg)
        srv.terminate()
        srv.wait(10)
        self.results["bpf_overhead"] = res

    # -- growth (atlasgate only) ---------------------------------------------------
    def restart_atlasgate(self, config):
        """Growth passes: restarts atlasgate with `config` as --baseline switches
        daemons (SIGTERM, wait for the exit, pins gone; then start), checks one
        request through it and warms it up (1 s keep-alive)."""
        t0 = time.monotonic()
        if self.daemon is not None:
            self.stop_atlasgate()
        t1 = time.monotonic()
        self.start_atlasgate("atlasgate", config=config)
        t2 = time.monotonic()
        code, _, err = self.curl("atlasgate", API_PATH, self.ag_ca)
        if code != "200":
            raise RuntimeError(f"atlasgate with {config}: GET {API_PATH} -> {code} {err}")
        self.wrk("atlasgate", 1)
        return {"stop_s": round(t1 - t0, 2), "start_s": round(t2 - t1, 2)}

    def growth_config(self, name, rules=None, limits=None, workers=None):
        c = json.loads(json.dumps(self.ag_config_data["atlasgate"]))
        if rules is not None:
            c["rules"] = rules
        if limits:
            c.setdefault("limits", {}).update(limits)
        if workers is not None:
            c["workers"] = workers
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            json.dump(c, f, indent=1)
        return path

    def growth_rules(self):
        """Keep-alive req/s and CPU per request with N rules in the config
        (growth_rule_set: none matches the bench request, ~1 % are candidates
        for it that fail on their agents glob), N from --growth-rules; the
        daemon restarted for each N, the Ns round-robin over --rounds rounds."""
        counts = self.args.growth_rules
        cfgs, compiled = {}, {}
        for n in counts:
            path = self.growth_config(f"atlasgate-rules-{n}.yaml", rules=growth_rule_set(n))
            t0 = time.monotonic()
            chk = subprocess.run([self.binaries["atlasgate"], "check", "--config", path], capture_output=True,
                                 text=True, timeout=300)
            if chk.returncode != 0:
                raise RuntimeError(f"atlasgate check --config {path}: {(chk.stdout + chk.stderr).strip()[-1500:]}")
            compiled[n] = {"check_s": round(time.monotonic() - t0, 2), "config_bytes": os.path.getsize(path)}
            cfgs[n] = path
        log("growth rules: configs with " + ", ".join(f"{n:,}" for n in counts) + " rules pass `atlasgate check`")
        out = {"counts": counts, "configs": {str(n): compiled[n] for n in counts}, "rounds": []}

        def restarted(n, sw):
            info = out["configs"][str(n)]
            info.setdefault("start_s", []).append(sw["start_s"])
            info.setdefault("rss_after_warmup_kib", []).append(status_kib(self.pids("atlasgate"), "VmRSS"))

        def one(i, n):
            ka = self.measure("atlasgate", False)
            log(f"growth rules round {i + 1}/{self.args.rounds} {n:>6,} rules: keep-alive {ka['rps']:9.0f} req/s "
                f"p50 {ka['p50_ms']:.2f} ms | cpu {ka['cpu_s_per_10k']:.3f} s/10k"
                + (f" | errors {ka['errors']} non2xx {ka['non2xx']}" if ka["errors"] + ka["non2xx"] else "")
                + f" | load {ka['loadavg']:.2f}")
            return ka
        out["rounds"] = self.restart_rounds(counts, cfgs, one, restarted)
        self.results.setdefault("growth", {})["rules"] = out

    def restart_rounds(self, counts, cfgs, one, restarted=None):
        """--rounds rounds over the configs cfgs[n], n in counts, rotated each
        round; atlasgate restarted (restart_atlasgate) when the config changes,
        then restarted(n, its timings) if given. one(round, n) measures; the
        rounds' {str(n): result} are returned."""
        rounds, running = [], None
        for i in range(self.args.rounds):
            order = counts[i % len(counts):] + counts[:i % len(counts)]
            rd = {}
            for n in order:
                if running != n:
                    sw = self.restart_atlasgate(cfgs[n])
                    running = n
                    if restarted:
                        restarted(n, sw)
                rd[str(n)] = one(i, n)
            rounds.append(rd)
        return rounds

    def thread_cpu(self):
        """CPU seconds of the atlasgate daemon's threads, by thread name: its own
        loop ("atlasgate", with the resolver thread, which is idle here) and each
        worker ("atlasgate-w1", ...)."""
        tck = os.sysconf("SC_CLK_TCK")
        out = {}
        pid = self.procs["atlasgate"].pid
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    data = f.read()
            except OSError:
                continue
            name = data[data.index("(") + 1:data.rindex(")")]
            fields = data.rsplit(")", 1)[1].split()
            out[name] = out.get(name, 0) + (int(fields[11]) + int(fields[12])) / tck
        return out

    def worker_requests(self):
        """Requests each event loop served so far (status "workers")."""
        p = subprocess.run([self.binaries["atlasgate"], "--control-socket", os.path.join(self.ag_run, "control.sock"),
                            "status", "--json"], capture_output=True, text=True, timeout=15)
        st = json.loads(p.stdout)
        return {w["worker"]: w["requests"] for w in st.get("workers", [])}

    def growth_workers(self):
        """Keep-alive req/s and CPU per request with `workers: N`, N from
        --growth-workers, the daemon restarted for each, round-robin over
        --rounds rounds. Per worker: its thread's CPU over the requests it
        served, so that scaling shows even where the load generator shares the
        cores (2 cores here: wrk's two threads, the upstream and the daemon)."""
        counts = self.args.growth_workers
        cfgs = {n: self.growth_config(f"atlasgate-workers-{n}.yaml", workers=n) for n in counts}

        def one(i, n):
            t0, q0 = self.thread_cpu(), self.worker_requests()
            ka = self.measure("atlasgate", False)
            t1, q1 = self.thread_cpu(), self.worker_requests()
            per = {}
            for w in sorted(q1):
                name = "atlasgate" if w == 0 else f"atlasgate-w{w}"
                served = q1[w] - q0.get(w, 0)
                cpu = t1.get(name, 0) - t0.get(name, 0)
                per[str(w)] = {"requests": served, "cpu_s": round(cpu, 3),
                               "cpu_s_per_10k": round(cpu / served * 10000, 3) if served else None}
            ka["workers"] = per
            total = sum(v["requests"] for v in per.values())
            busiest = max((v["cpu_s"] for v in per.values()), default=0)
            # With a core per worker, the busiest one bounds throughput.
            ka["busiest_cpu_s_per_10k"] = round(busiest / total * 10000, 3) if total and n > 1 \
                else ka.get("cpu_s_per_10k")
            log(f"growth workers round {i + 1}/{self.args.rounds} workers {n}: keep-alive {ka['rps']:9.0f} req/s "
                f"p50 {ka['p50_ms']:.2f} ms | cpu {ka['cpu_s_per_10k']:.3f} s/10k | per worker "
                + ", ".join(f"w{w} {v['requests']} req {v['cpu_s_per_10k']} s/10k" for w, v in per.items())
                + f" | load {ka['loadavg']:.2f}")
            return ka
        out = {"counts": counts, "rounds": self.restart_rounds(counts, cfgs, one)}
        self.results.setdefault("growth", {})["workers"] = out

    def hold_idle(self, n, cg, timeout):
        """bench/idle_conns.py --best-effort in cgroup cg: up to n idle TLS
        connections through atlasgate. Returns (process, held, why it stopped
        short or None); the caller closes them with close_idle()."""
        argv = ["/usr/bin/python3", os.path.join(BENCH, "idle_conns.py"), "--best-effort", self.upstream, str(n),
                self.ag_ca]
        p = subprocess.Popen(self.client_cmd("atlasgate", argv, cg), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        self.procs["idle-conns"] = p
        r, _, _ = select.select([p.stdout], [], [], timeout)
        line = p.stdout.readline() if r else ""
        m = re.match(r"ready (\d+)(?: stopped: (.*))?$", line.strip())
        if not m:
            self.close_idle(p)
            raise RuntimeError(f"idle connections: {line!r} (timeout {timeout}s) {p.stderr.read()[-800:]}")
        return p, int(m.group(1)), m.group(2)

    def close_idle(self, p):
        try:
            p.stdin.write("\n")
            p.stdin.flush()
        except OSError:
            pass
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        self.procs.pop("idle-conns", None)

    def growth_conns(self):
        """RSS, keep-alive req/s and CPU per request with --growth-conns idle
        agent TLS connections held open, against none: the daemon restarted
        with limits that admit them; a keep-alive run before opening them, one
        with them open, one after closing them."""
        n = self.args.growth_conns
        limits = {"max_connections": n + 1024, "max_connections_per_agent": n + 1024, "idle_timeout": "900s"}
        path = self.growth_config("atlasgate-conns.yaml", limits=limits)
        self.restart_atlasgate(path)
        pids = self.pids("atlasgate")
        pid = pids[0]

        def fds():
            try:
                return len(os.listdir(f"/proc/{pid}/fd"))
            except OSError:
                return None

        def nofile():
            try:
                with open(f"/proc/{pid}/limits") as f:
                    for line in f:
                        if line.startswith("Max open files"):
                            return int(line.split()[3])
            except (OSError, ValueError):
                return None
        out = {"requested": n, "limits": limits, "daemon_nofile": nofile()}
        before = self.measure("atlasgate", False)
        time.sleep(1.0)
        out["without"] = {"rss_kib": status_kib(pids, "VmRSS"), "fds": fds(), "keepalive": before}
        log(f"growth connections: keep-alive without idle connections {before['rps']:.0f} req/s, "
            f"cpu {before['cpu_s_per_10k']:.3f} s/10k; RSS {out['without']['rss_kib'] / 1024:.1f} MiB")
        cg = os.path.join(self.agents_cg, "idle")
        os.makedirs(cg, exist_ok=True)
        t0 = time.monotonic()
        p, held, why = self.hold_idle(n, cg, timeout=max(600, n // 10))
        try:
            out["open_s"] = round(time.monotonic() - t0, 1)
            out["held"] = held
            if why:
                out["short_because"] = why
            time.sleep(2.0)  # let the daemon settle (TLS 1.3 tickets sent, coroutines parked)
            rss1 = status_kib(pids, "VmRSS")
            out["with"] = {"rss_kib": rss1, "fds": fds()}
            log(f"growth connections: {held:,} idle connections open in {out['open_s']} s"
                + (f" (stopped short: {why})" if why else "")
                + f"; RSS {out['without']['rss_kib'] / 1024:.1f} -> {rss1 / 1024:.1f} MiB, daemon fds "
                f"{out['without']['fds']} -> {out['with']['fds']}")
            ka = self.measure("atlasgate", False)
            out["with"]["keepalive"] = ka
            out["with"]["rss_after_run_kib"] = status_kib(pids, "VmRSS")
            out["with"]["hwm_kib"] = status_kib(pids, "VmHWM")
            log(f"growth connections: keep-alive with {held:,} idle connections {ka['rps']:.0f} req/s, "
                f"cpu {ka['cpu_s_per_10k']:.3f} s/10k")
        finally:
            self.close_idle(p)
            remove_cgroup(cg)
        time.sleep(2.0)
        after = self.measure("atlasgate", False)
        time.sleep(1.0)
        out["after"] = {"rss_kib": status_kib(pids, "VmRSS"), "fds": fds(), "keepalive": after}
        log(f"growth connections: after closing them {after['rps']:.0f} req/s, cpu {after['cpu_s_per_10k']:.3f} "
            f"s/10k; RSS {out['after']['rss_kib'] / 1024:.1f} MiB")
        if held:
            out["per_conn_kib"] = round((out["with"]["rss_kib"] - out["without"]["rss_kib"]) / held, 2)
        self.results.setdefault("growth", {})["connections"] = out

    # -- MongoDB ---------------------------------------------------------------
    def mongo_uri(self, contender):
        """A seed list of the member names (the certificate names them, and the
        agent would be given them); credentials only for direct."""
        hosts = ",".join(f"{n}:27017" for n in MONGO_NAMES)
        if contender == "direct":
            return (f"mongodb://{MONGO_USER}:{self.mongo_password}@{hosts}/?replicaSet={MONGO_SET}&tls=true"
                    f"&authSource=admin&authMechanism=SCRAM-SHA-256")
        return f"mongodb://{hosts}/?replicaSet={MONGO_SET}&tls=true"

    def mongo_client(self, contender, mode, *args, timeout=120):
        """bench/mongo_load.py MODE for contender: direct from outside every
        agent cgroup with its credentials and the bench CA; atlasgate from the
        agent cgroup with none, trusting atlasgate's CA. Its JSON answer."""
        ca = f"{self.pki}/ca.pem" if contender == "direct" else self.ag_ca
        argv = ["/usr/bin/python3", os.path.join(BENCH, "mongo_load.py"), mode, self.mongo_uri(contender), ca]
        argv += [str(a) for a in args]
        cmd = self.client_cmd("mongodb", argv, self.wrk_cg if contender == "atlasgate" else None)
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if p.returncode != 0:
            raise RuntimeError(f"mongo_load.py {mode} for {contender} failed ({p.returncode}): "
                               f"{p.stderr.strip()[-1500:]}")
        return json.loads(p.stdout.strip().splitlines()[-1])

    def mongodb(self):
        """find by _id (ops/s, p50/p99) and new connection + one find, direct
        vs through atlasgate, alternating, --rounds rounds."""
        self.use_daemon("atlasgate")
        a = self.args
        seeded = self.mongo_client("direct", "seed", MONGO_DOCS)
        if seeded.get("seeded") != MONGO_DOCS:
            raise RuntimeError(f"mongodb: seeding bench.items: {seeded}")
        checks = {}
        for c in ("direct", "atlasgate"):
            r = self.mongo_client(c, "check")
            ok = r["found"] and r["users"] == [MONGO_USER]
            checks[c] = dict(r, ok=ok)
            log(f"mongodb sanity {c:9s}: find by _id -> {'found' if r['found'] else 'NOT FOUND'}; connectionStatus "
                f"says authenticated as {r['users']}{'' if ok else '  <-- FAILED'}")
            if not ok:
                raise RuntimeError(f"mongodb sanity check failed for {c}: {r}")
        mr = self.results["mongodb"] = {"sanity": checks, "rounds": []}
        for c in ("direct", "atlasgate"):
            self.mongo_client(c, "find", 1, a.mongo_connections, MONGO_DOCS)
            self.mongo_client(c, "connect", 20)
        log("mongodb warm-up done (1 s of finds + 20 new connections each)")
        stand_in = self.procs["fake_mongo"].pid
        for i in range(a.rounds):
            order = ("direct", "atlasgate") if i % 2 == 0 else ("atlasgate", "direct")
            rd = {}
            for c in order:
                self.use_daemon("atlasgate")
                ag = self.pids("atlasgate") if c == "atlasgate" else []
                cpu0 = (cpu_seconds(ag), cpu_seconds([stand_in]))
                la0 = loadavg()
                f = self.mongo_client(c, "find", a.duration, a.mongo_connections, MONGO_DOCS,
                                      timeout=a.duration + 120)
                cpu1 = (cpu_seconds(ag), cpu_seconds([stand_in]))
                k = self.mongo_client(c, "connect", a.mongo_connects)
                cpu2 = (cpu_seconds(ag), cpu_seconds([stand_in]))
                f["loadavg"] = la0
                if f["ops"]:
                    f["stand_in_cpu_s_per_10k"] = round((cpu1[1] - cpu0[1]) / f["ops"] * 10000, 3)
                    if ag:
                        f["cpu_s_per_10k"] = round((cpu1[0] - cpu0[0]) / f["ops"] * 10000, 3)
                if k["new_connections"]:
                    # The connect run also opens the driver's monitor connections (one per member).
                    k["stand_in_cpu_ms_per_conn"] = round((cpu2[1] - cpu1[1]) / k["new_connections"] * 1000, 3)
                    if ag:
                        k["cpu_ms_per_conn"] = round((cpu2[0] - cpu1[0]) / k["new_connections"] * 1000, 3)
                rd[c] = {"find": f, "connect": k}
                log(f"mongodb round {i + 1}/{a.rounds} {c:9s}: find {f['ops_per_s']:7.0f} ops/s p50 "
                    f"{f['p50_ms']:.3f} ms p99 {f['p99_ms']:.3f} ms | new conn + find median {k['median_ms']:.2f} ms "
                    f"({k['new_connections']} new connections)"
                    + (f" | atlasgate cpu {f['cpu_s_per_10k']:.2f} s/10k, {k['cpu_ms_per_conn']:.2f} ms/conn"
                       if "cpu_s_per_10k" in f and "cpu_ms_per_conn" in k else "")
                    + (f" | errors {f['errors'] + k['errors']}" if f["errors"] + k["errors"] else "")
                    + f" | load {la0:.2f}")
            mr["rounds"].append(rd)

    def bpf_prog_stats(self, progs_dir):
        out = {}
        for name in sorted(os.listdir(progs_dir)):
            p = run(["bpftool", "-j", "prog", "show", "pinned", os.path.join(progs_dir, name)])
            j = json.loads(p.stdout)
            out[name] = {"run_time_ns": j.get("run_time_ns", 0), "run_cnt": j.get("run_cnt", 0)}
        return out

    def restore_bpf_stats(self):
        if self.bpf_stats_prev is not None:
            try:
                with open("/proc/sys/kernel/bpf_stats_enabled", "w") as f:
                    f.write(self.bpf_stats_prev)
            except OSError:
                pass
            self.bpf_stats_prev = None

    # -- teardown --------------------------------------------------------------
    def teardown(self):
        self.restore_bpf_stats()
        for name, p in reversed(list(self.procs.items())):
            if p.poll() is None:
                # nginx: SIGQUIT, graceful; haproxy: SIGUSR1, soft stop (hard-stop-after 5s in its
                # config); the rest: SIGTERM.
                p.send_signal({"nginx": signal.SIGQUIT, "upstream": signal.SIGQUIT,
                               "haproxy": signal.SIGUSR1}.get(name, signal.SIGTERM))
        for name, p in self.procs.items():
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                log(f"{name} (pid {p.pid}) did not stop; killing its process group")
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
        for f in self.logs:
            f.close()
        for cg in reversed(self.cgroups):
            remove_cgroup(cg)
        if self.pin_root:
            shutil.rmtree(self.pin_root, ignore_errors=True)
        if self.tmp:
            if self.args.keep_tmp:
                log(f"kept {self.tmp}")
            else:
                shutil.rmtree(self.tmp, ignore_errors=True)


# --------------------------------------------------------------------------
# growth

def growth_rule_set(n):
    """`rules` with n rules, none of which matches the bench's GET
    /api/atlas/v2/groups from agent "wrk", with `default: allow`:

    - n - k `block` rules for DELETE on distinct cluster paths
      /api/atlas/v2/groups/<24 hex>/clusters/r<i>: they grow the path trie
      (10,000 literal group ids under /groups) but are never candidates for
      the bench path;
    - k = max(2, n / 100) `block` rules with an `agents:` glob that names no
      agent ("bench-other-<j>-*"), half on /api/atlas/v2/** and half on
      /api/atlas/v2/groups itself: they are candidates for every bench
      request, each checked (method, host, agents) and rejected on its glob.
    """
    k = max(2, n // 100)
    rules = [{"name": f"bench-no-delete-{i}", "method": "DELETE",
              "path": f"/api/atlas/v2/groups/{0x5f0000000000000000000000 + i:024x}/clusters/r{i}", "action": "block"}
             for i in range(n - k)]
    rules += [{"name": f"bench-other-agents-{j}", "agents": [f"bench-other-{j}-*"],
               "path": "/api/atlas/v2/**" if j % 2 == 0 else API_PATH, "action": "block"}
              for j in range(k)]
    return {"default": "allow", "list": rules}


def summarize_growth(g):
    r = g.get("rules")
    if r:
        summ = {}
        for n in r["counts"]:
            runs = [rd[str(n)] for rd in r["rounds"] if str(n) in rd]
            info = r["configs"][str(n)]
            summ[str(n)] = {"rules": n, "keepalive_rps": med(x["rps"] for x in runs),
                            "keepalive_rps_range": [min(x["rps"] for x in runs), max(x["rps"] for x in runs)]
                            if runs else None,
                            "p50_ms": med(x["p50_ms"] for x in runs),
                            "cpu_s_per_10k": med(x.get("cpu_s_per_10k") for x in runs),
                            "errors": sum(x["errors"] + x["non2xx"] for x in runs),
                            "start_s": med(info.get("start_s", [])),
                            "rss_mib": (med(info.get("rss_after_warmup_kib", [])) or 0) / 1024}
        base = summ[str(r["counts"][0])]
        for v in summ.values():
            v["x_rps"] = ratio(v["keepalive_rps"], base["keepalive_rps"])
            v["x_cpu"] = ratio(v["cpu_s_per_10k"], base["cpu_s_per_10k"])
        r["summary"] = summ
    w = g.get("workers")
    if w:
        summ = {}
        for n in w["counts"]:
            runs = [rd[str(n)] for rd in w["rounds"] if str(n) in rd]
            per = {}
            for run in runs:
                for k, v in run["workers"].items():
                    per.setdefault(k, []).append(v)
            summ[str(n)] = {"workers": n, "keepalive_rps": med(x["rps"] for x in runs),
                            "p50_ms": med(x["p50_ms"] for x in runs),
                            "cpu_s_per_10k": med(x.get("cpu_s_per_10k") for x in runs),
                            "busiest_cpu_s_per_10k": med(x.get("busiest_cpu_s_per_10k") for x in runs),
                            "host_busy_pct": med(x.get("host_busy_pct") for x in runs),
                            "errors": sum(x["errors"] + x["non2xx"] for x in runs),
                            "per_worker": {k: {"requests": med(x["requests"] for x in v),
                                               "cpu_s_per_10k": med(x["cpu_s_per_10k"] for x in v)}
                                           for k, v in per.items()}}
        base = summ[str(w["counts"][0])]
        for v in summ.values():
            v["x_rps"] = ratio(v["keepalive_rps"], base["keepalive_rps"])
            v["x_cpu"] = ratio(v["cpu_s_per_10k"], base["cpu_s_per_10k"])
            # What a core per worker would give, as a multiple of one worker on
            # one core: the busiest worker's CPU per request bounds it.
            v["scaling"] = ratio(base["cpu_s_per_10k"], v["busiest_cpu_s_per_10k"])
        w["summary"] = summ
    return g


def table_head(L, head):
    """Appends a table's head line and its rule."""
    L.append(head)
    L.append("  " + "-" * (len(head) - 2))


def growth_table(res):
    g = res.get("growth") or {}
    L = []
    r = g.get("rules")
    if r and r.get("summary"):
        first = r["counts"][0]
        L += ["", f"growth: rules (atlasgate; `default: allow` + N block rules that do not match the bench request, "
                  f"~1% of them candidates for it rejected on an agents glob; daemon restarted per N, "
                  f"keep-alive wrk -c{res['settings']['connections']} -d{res['settings']['duration_s']}s, "
                  f"median of {res['settings']['rounds']} rounds round-robin)"]
        head = (f"  {'rules':>8s}{'req/s':>12s}{'range':>17s}{f'x ({first:,} rules)':>16s}{'CPU s/10k':>12s}"
                f"{f'x ({first:,} rules)':>16s}{'RSS MiB':>10s}{'start s':>9s}")
        table_head(L, head)
        for n in r["counts"]:
            v = r["summary"][str(n)]
            rng = v["keepalive_rps_range"]
            L.append(f"  {n:>8,}{fmt(v['keepalive_rps']):>12s}"
                     f"{(f'{rng[0]:,.0f}-{rng[1]:,.0f}' if rng else '-'):>17s}{fmt_ratio(v['x_rps']):>16s}"
                     f"{fmt(v['cpu_s_per_10k'], 3):>12s}{fmt_ratio(v['x_cpu']):>16s}{fmt(v['rss_mib'], 1):>10s}"
                     f"{fmt(v['start_s'], 2):>9s}" + (f"  errors {v['errors']}" if v["errors"] else ""))
    c = g.get("connections")
    if c and "with" in c:
        lim = c["limits"]
        L += ["", f"growth: idle agent TLS connections (atlasgate; {c['held']:,} held by bench/idle_conns.py in an "
                  f"agent cgroup, opened in {c['open_s']} s; limits.max_connections {lim['max_connections']:,}, "
                  f"idle_timeout {lim['idle_timeout']}; keep-alive wrk -c{res['settings']['connections']} "
                  f"-d{res['settings']['duration_s']}s beside them)"]
        if c.get("short_because"):
            L.append(f"  only {c['held']:,} of {c['requested']:,}: {c['short_because']}")
        head = (f"  {'idle connections':24s}{'RSS MiB':>10s}{'KiB/conn':>10s}{'daemon fds':>12s}{'req/s':>10s}"
                f"{'x without':>11s}{'CPU s/10k':>11s}{'x without':>11s}")
        table_head(L, head)
        w = c["without"]["keepalive"]

        def line(label, d, per):
            ka = d.get("keepalive") or {}
            return (f"  {label:24s}{fmt(d['rss_kib'] / 1024, 1):>10s}{(fmt(per, 1) if per is not None else '-'):>10s}"
                    f"{fmt(d.get('fds')):>12s}{fmt(ka.get('rps')):>10s}"
                    f"{fmt_ratio(ratio(ka.get('rps'), w['rps'])):>11s}{fmt(ka.get('cpu_s_per_10k'), 3):>11s}"
                    f"{fmt_ratio(ratio(ka.get('cpu_s_per_10k'), w.get('cpu_s_per_10k'))):>11s}")
        L.append(line("0 (before)", c["without"], None))
        L.append(line(f"{c['held']:,}", c["with"], c.get("per_conn_kib")))
        L.append(line("0 (after closing them)", c["after"], None))
    w = g.get("workers")
    if w and w.get("summary"):
        first = w["counts"][0]
        L += ["", f"growth: workers (atlasgate; daemon restarted per `workers:`, keep-alive "
                  f"wrk -t2 -c{res['settings']['connections']} -d{res['settings']['duration_s']}s on the same "
                  f"{res['machine'].get('cpus', '?')} cores, median of {res['settings']['rounds']} rounds; "
                  f"per worker: its thread's CPU over the requests it served)"]
        head = (f"  {'workers':>8s}{'req/s':>12s}{f'x ({first})':>9s}{'CPU s/10k':>12s}{f'x ({first})':>9s}"
                f"{'host busy':>11s}{'scaling':>9s}  per worker (requests, CPU s/10k)")
        table_head(L, head)
        for n in w["counts"]:
            v = w["summary"][str(n)]
            per = ", ".join(f"w{k}: {fmt(x['requests'])} req {fmt(x['cpu_s_per_10k'], 3)}"
                            for k, x in sorted(v["per_worker"].items()))
            L.append(f"  {n:>8d}{fmt(v['keepalive_rps']):>12s}{fmt_ratio(v['x_rps']):>9s}"
                     f"{fmt(v['cpu_s_per_10k'], 3):>12s}{fmt_ratio(v['x_cpu']):>9s}"
                     f"{(fmt(v['host_busy_pct'], 0) + '%'):>11s}{fmt_ratio(v['scaling']):>9s}  {per}"
                     + (f"  errors {v['errors']}" if v["errors"] else ""))
    return L


# --------------------------------------------------------------------------
# summary

def profile_bucket(dso, sym):
    """Groups a perf symbol into a coarse category for atlasgate-profile.txt."""
    if dso.startswith("[kernel"):
        if re.search(r"task_switch|schedule|__switch_to|wake_up|try_to_wake|enqueue_|dequeue_|pick_next|update_curr|"
                     r"futex|hrtimer|timerfd|_raw_spin_unlock_irq|select_task_rq|ttwu", sym):
            return "kernel: scheduling, wakeups, timers (incl. irq-enable sample points)"
        if re.search(r"epoll|ep_poll|ep_send|ep_item", sym):
            return "kernel: epoll"
        if re.search(r"tcp|inet|^ip_|__ip_|skb|sock|^net_|__dev|loopback|napi|^sk_|__sk_|nf_|^dst_|raw_v|"
                     r"__netif|process_backlog|do_softirq|__local_bh|bh_enable", sym):
            return "kernel: TCP/IP stack (loopback, softirq)"
        if re.search(r"syscall|entry_|^__x64|^x64|^sys_|__sys_|fdget|fput|irq", sym):
            return "kernel: syscall entry/exit, fd lookup"
        if re.search(r"copy_|memcpy|memmove|clear_|rep_movs|_iter", sym):
            return "kernel: user copies"
        return "kernel: other"
    if "libcrypto" in dso or "libssl" in dso:
        return "OpenSSL (" + ("record crypto" if "libcrypto" in dso else "libssl state machine") + ")"
    if dso.startswith("libc") and re.search(r"malloc|free|unlink_chunk|_int_|tcache|cfree|realloc|calloc", sym):
        return "malloc/free"
    if re.search(r"memmove|memcpy|memset|memcmp|strlen|memchr", sym):
        return "libc mem*/str* (copies)"
    if "vdso" in dso or "clock_gettime" in sym:
        return "clock_gettime (timers, audit timestamps)"
    if "boost::beast::http" in sym or "basic_parser" in sym or "serializer" in sym or "basic_fields" in sym:
        return "Beast HTTP read/write (parser, serializer, fields, buffers_cat iterators)"
    if "buffers_cat" in sym or "mp_with_index" in sym or "buffers_prefix" in sym or "buffers_suffix" in sym:
        return "Beast HTTP read/write (parser, serializer, fields, buffers_cat iterators)"
    if "boost::asio::ssl" in sym or "flat_stream" in sym or "ssl_stream" in sym or "engine::" in sym:
        return "Asio SSL engine / Beast ssl_stream glue"
    if "boost::asio" in sym or "awaitable" in sym or "co_spawn" in sym or "executor" in sym or "boost::beast" in sym:
        return "Asio/Beast coroutine, executor, reactor, timers"
    if "boost::json" in dso or "boost::json" in sym:
        return "Boost.JSON"
    if "atlasgate::" in sym:
        return "atlasgate's own code"
    if "fmt" in dso or "fmt::" in sym:
        return "fmt (formatting: audit records, logs)"
    if dso == "atlasgate":
        return "atlasgate binary, other (inlined templates)"
    return f"other ({dso})"


def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def summarize(res):
    s = {}
    contenders = res.get("contenders", CONTENDERS)
    for c in contenders:
        rs = [r[c] for r in res["rounds"] if c in r]
        d = {
            "keepalive_rps": med(r["keepalive"]["rps"] for r in rs),
            "p50_ms": med(r["keepalive"]["p50_ms"] for r in rs),
            "p99_ms": med(r["keepalive"]["p99_ms"] for r in rs),
            "newconn_rps": med(r["newconn"]["rps"] for r in rs),
            "newconn_p50_ms": med(r["newconn"]["p50_ms"] for r in rs),
            "keepalive_rps_range": [min(r["keepalive"]["rps"] for r in rs), max(r["keepalive"]["rps"] for r in rs)]
            if rs else None,
            "newconn_rps_range": [min(r["newconn"]["rps"] for r in rs), max(r["newconn"]["rps"] for r in rs)]
            if rs else None,
            "errors": sum(r["keepalive"]["errors"] + r["newconn"]["errors"] for r in rs),
            "non2xx": sum(r["keepalive"]["non2xx"] + r["newconn"]["non2xx"] for r in rs),
        }
        if c != "direct":
            d["cpu_s_per_10k"] = med(r["keepalive"].get("cpu_s_per_10k") for r in rs)
            d["cpu_s_per_10k_newconn"] = med(r["newconn"].get("cpu_s_per_10k") for r in rs)
            mem = res.get("memory", {})
            d["idle_rss_mib"] = mem.get("idle", {}).get(c, {}).get("rss_kib", 0) / 1024
            d["peak_rss_mib"] = mem.get("after_load", {}).get(c, {}).get("hwm_kib", 0) / 1024
            ic = res.get("idle_connections", {}).get(c)
            d["per_idle_conn_kib"] = ic["per_conn_kib"] if ic else None
        s[c] = d
    for c in contenders:
        if s["direct"]["p50_ms"] is not None and s[c]["p50_ms"] is not None:
            s[c]["added_p50_ms"] = s[c]["p50_ms"] - s["direct"]["p50_ms"]
    res["summary"] = s
    if res.get("mongodb"):
        summarize_mongodb(res["mongodb"])
    if res.get("growth"):
        summarize_growth(res["growth"])
    if BASE in s:
        res["baseline_comparison"] = compare_baseline(res, s)
    return s


MONGO_CONTENDERS = ["direct", "atlasgate"]


def summarize_mongodb(m):
    s = {}
    for c in MONGO_CONTENDERS:
        rs = [r[c] for r in m["rounds"] if c in r]
        s[c] = {
            "find_ops_per_s": med(r["find"]["ops_per_s"] for r in rs),
            "find_ops_per_s_range": [min(r["find"]["ops_per_s"] for r in rs), max(r["find"]["ops_per_s"] for r in rs)]
            if rs else None,
            "find_p50_ms": med(r["find"]["p50_ms"] for r in rs),
            "find_p99_ms": med(r["find"]["p99_ms"] for r in rs),
            "connect_median_ms": med(r["connect"]["median_ms"] for r in rs),
            "connect_p90_ms": med(r["connect"]["p90_ms"] for r in rs),
            "cpu_s_per_10k": med(r["find"].get("cpu_s_per_10k") for r in rs),
            "cpu_ms_per_conn": med(r["connect"].get("cpu_ms_per_conn") for r in rs),
            "stand_in_cpu_s_per_10k": med(r["find"].get("stand_in_cpu_s_per_10k") for r in rs),
            "stand_in_cpu_ms_per_conn": med(r["connect"].get("stand_in_cpu_ms_per_conn") for r in rs),
            "errors": sum(r["find"]["errors"] + r["find"]["misses"] + r["connect"]["errors"] for r in rs),
        }
    d = s["direct"]
    for c in MONGO_CONTENDERS:
        for key, base in (("added_p50_ms", "find_p50_ms"), ("added_connect_ms", "connect_median_ms")):
            if d[base] is not None and s[c][base] is not None:
                s[c][key] = s[c][base] - d[base]
    m["summary"] = s
    return s


# atlasgate / atlasgate-base: summary key, and the run and field of a round it
# comes from. Rates: > 1 is faster; latency and CPU per request: < 1 is better.
COMPARED = [("keepalive_rps", "keepalive", "rps"), ("newconn_rps", "newconn", "rps"),
            ("p50_ms", "keepalive", "p50_ms"), ("p99_ms", "keepalive", "p99_ms"),
            ("newconn_p50_ms", "newconn", "p50_ms"),
            ("cpu_s_per_10k", "keepalive", "cpu_s_per_10k"), ("cpu_s_per_10k_newconn", "newconn", "cpu_s_per_10k")]


def compare_baseline(res, s):
    """atlasgate / atlasgate-base: the ratio of the medians, and the per-round
    ratios (a round measures both a few seconds apart: the pair shares the
    drift)."""
    out = {}
    for key, run_, field in COMPARED:
        r = ratio(s["atlasgate"].get(key), s[BASE].get(key))
        pairs = [ratio(rd["atlasgate"][run_].get(field), rd[BASE][run_].get(field))
                 for rd in res["rounds"] if "atlasgate" in rd and BASE in rd]
        out[key] = {"ratio": round(r, 3) if r is not None else None,
                    "per_round": [round(p, 3) for p in pairs if p is not None]}
    return out


def ratio(a, b):
    if a is None or b in (None, 0):
        return None
    return a / b


def fmt(v, digits=0):
    if v is None:
        return "-"
    return f"{v:,.{digits}f}"


def fmt_ratio(v):
    return "-" if v is None else f"{v:.2f}x"


def targets(res, s):
    a, n, h, m = s["atlasgate"], s["nginx"], s["haproxy"], s["mitmproxy"]
    bpf = res.get("bpf_overhead", {})
    bpf_ns = bpf.get("bpf_ns_per_connect")
    t = [
        ("keep-alive req/s >= 1.0x nginx", ratio(a["keepalive_rps"], n["keepalive_rps"]), lambda v: v >= 1.0,
         fmt_ratio),
        ("added p50 <= nginx's added p50", (a.get("added_p50_ms"), n.get("added_p50_ms")),
         lambda v: v[0] is not None and v[1] is not None and v[0] <= v[1],
         lambda v: f"{v[0]:+.3f} ms vs {v[1]:+.3f} ms"),
        ("new-connection rate >= nginx's", ratio(a["newconn_rps"], n["newconn_rps"]), lambda v: v >= 1.0, fmt_ratio),
        ("keep-alive req/s >= 1.0x haproxy", ratio(a["keepalive_rps"], h["keepalive_rps"]), lambda v: v >= 1.0,
         fmt_ratio),
        ("new-connection rate >= haproxy's", ratio(a["newconn_rps"], h["newconn_rps"]), lambda v: v >= 1.0,
         fmt_ratio),
        ("CPU per request <= nginx's", ratio(a.get("cpu_s_per_10k"), n.get("cpu_s_per_10k")), lambda v: v <= 1.0,
         lambda v: f"{v:.2f}x (keep-alive CPU s/10k {a['cpu_s_per_10k']:.3f} vs {n['cpu_s_per_10k']:.3f})"),
        ("keep-alive req/s >= 10x mitmproxy", ratio(a["keepalive_rps"], m["keepalive_rps"]), lambda v: v >= 10,
         fmt_ratio),
        ("new-connection rate >= 10x mitmproxy", ratio(a["newconn_rps"], m["newconn_rps"]), lambda v: v >= 10,
         fmt_ratio),
        ("RSS at idle <= 20 MiB", a.get("idle_rss_mib"), lambda v: v <= 20, lambda v: f"{v:.1f} MiB"),
        ("RSS per idle agent connection <= 24 KiB", a.get("per_idle_conn_kib"), lambda v: v <= 24,
         lambda v: f"{v:.1f} KiB"),
        ("BPF overhead per non-target connect() < 1 us", bpf_ns, lambda v: v < 1000,
         lambda v: f"{v:.0f} ns (bpf_stats); wall clock {bpf.get('wallclock_overhead_ns', 0):+.0f} ns"),
    ]
    ws = ((res.get("growth") or {}).get("workers") or {}).get("summary") or {}
    if "2" in ws:
        t.append(("2 workers >= 1.8x 1 worker (a core each: busiest worker's CPU per request)",
                  ws["2"].get("scaling"), lambda v: v >= 1.8,
                  lambda v: f"{v:.2f}x (busiest worker {ws['2']['busiest_cpu_s_per_10k']:.3f} s/10k vs one worker "
                            f"{ws[str(res['growth']['workers']['counts'][0])]['cpu_s_per_10k']:.3f}; "
                            f"req/s {ws['2']['x_rps']:.2f}x on these shared cores)"))
    out = []
    for name, v, ok, f in t:
        try:
            met = v is not None and ok(v)
            shown = f(v) if v is not None else "-"
        except (TypeError, ValueError):
            met, shown = False, "-"
        out.append({"target": name, "value": shown, "met": bool(met)})
    res["targets"] = out
    return out


def table(res, s):
    L = []
    mach = res["machine"]
    st = res["settings"]
    L.append(f"atlasgate side-by-side benchmark — {res['started']}")
    L.append(f"machine: {mach['cpus']} CPU ({mach['cpu']}), {mach['mem_mib']} MiB, Linux {mach['kernel']}; "
             f"load avg {mach['loadavg_start']:.2f} at start, {mach.get('loadavg_end', 0):.2f} at end "
             f"(shared machine: other builds/tests were running, numbers are noisy)")
    L.append(f"load: wrk -t{st['threads']} -c{st['connections']} -d{st['duration_s']}s --latency, "
             f"{st['rounds']} rounds round-robin, median of rounds; all on loopback; "
             f"client dials https://{HOST}{API_PATH} (SNI {HOST})")
    L.append("")
    contenders = res.get("contenders", CONTENDERS)
    proxies = [c for c in contenders if c != "direct"]
    w = 15
    head = f"{'':34s}" + "".join(f"{c:>{w}s}" for c in contenders)
    L.append(head)
    L.append("-" * len(head))

    def row(label, key, digits=0, only=None, suffix=""):
        cells = []
        for c in contenders:
            v = s[c].get(key) if (only is None or c in only) else None
            cells.append(f"{(fmt(v, digits) + suffix) if v is not None else '-':>{w}s}")
        L.append(f"{label:34s}" + "".join(cells))

    def ratio_row(label, key, base, only=None, invert=False):
        cells = []
        for c in contenders:
            v = s[c].get(key) if (only is None or c in only) else None
            r = ratio(v, s[base].get(key))
            if invert and r:
                r = 1 / r
            cells.append(f"{fmt_ratio(r) if c != base else '1.00x' if r else '-':>{w}s}")
        L.append(f"{label:34s}" + "".join(cells))

    def range_row(label, key):
        cells = []
        for c in contenders:
            v = s[c].get(key)
            cells.append(f"{(f'{v[0]:,.0f}-{v[1]:,.0f}' if v else '-'):>{w}s}")
        L.append(f"{label:34s}" + "".join(cells))

    row("keep-alive req/s", "keepalive_rps")
    range_row("  range over rounds", "keepalive_rps_range")
    ratio_row("  x nginx", "keepalive_rps", "nginx")
    ratio_row("  x haproxy", "keepalive_rps", "haproxy")
    ratio_row("  x direct", "keepalive_rps", "direct")
    row("keep-alive p50 latency (ms)", "p50_ms", 3)
    row("keep-alive p99 latency (ms)", "p99_ms", 3)
    row("  p50 added over direct (ms)", "added_p50_ms", 3)
    row("new TLS connections/s", "newconn_rps")
    range_row("  range over rounds", "newconn_rps_range")
    ratio_row("  x nginx", "newconn_rps", "nginx")
    ratio_row("  x haproxy", "newconn_rps", "haproxy")
    ratio_row("  x direct", "newconn_rps", "direct")
    row("new-conn p50 latency (ms)", "newconn_p50_ms", 3)
    row("peak RSS, proxy (MiB, VmHWM)", "peak_rss_mib", 1, proxies)
    ratio_row("  x nginx", "peak_rss_mib", "nginx", proxies)
    ratio_row("  x haproxy", "peak_rss_mib", "haproxy", proxies)
    row("idle RSS, proxy (MiB)", "idle_rss_mib", 1, proxies)
    row("RSS per idle TLS conn (KiB)", "per_idle_conn_kib", 1, proxies)
    row("CPU s / 10k req, keep-alive", "cpu_s_per_10k", 3, proxies)
    ratio_row("  x nginx", "cpu_s_per_10k", "nginx", proxies)
    ratio_row("  x haproxy", "cpu_s_per_10k", "haproxy", proxies)
    row("CPU s / 10k req, new conn", "cpu_s_per_10k_newconn", 3, proxies)
    ratio_row("  x nginx", "cpu_s_per_10k_newconn", "nginx", proxies)
    ratio_row("  x haproxy", "cpu_s_per_10k_newconn", "haproxy", proxies)
    row("errors (socket + non-2xx)", "errors")
    L.append("")
    cmp = res.get("baseline_comparison")
    if cmp:
        def pair(key):
            c = cmp[key]
            rng = c["per_round"]
            return (f"{fmt_ratio(c['ratio'])}" + (f" (rounds {min(rng):.2f}-{max(rng):.2f})" if rng else ""))
        L.append(f"atlasgate / atlasgate-base: keep-alive req/s {pair('keepalive_rps')}, "
                 f"new-conn req/s {pair('newconn_rps')} (> 1: faster)")
        L.append(f"  latency keep-alive p50 {pair('p50_ms')}, p99 {pair('p99_ms')}, new-conn p50 "
                 f"{pair('newconn_p50_ms')}; CPU/req keep-alive {pair('cpu_s_per_10k')}, new conn "
                 f"{pair('cpu_s_per_10k_newconn')} (< 1: better)")
        bins = res.get("binaries", {})
        if BASE in bins:
            L.append(f"atlasgate-base: {bins[BASE]['path']} ({bins[BASE]['version']}); measured like atlasgate, "
                     f"one daemon at a time ({len(res.get('daemon_switches', []))} switches, a fresh daemon "
                     f"warmed up before it is measured); idle-conn, BPF, profile passes: atlasgate only")
        L.append("")
    b = res.get("bpf_overhead")
    if b:
        L.append(f"BPF cost for a non-target connect() (agent cgroup attached): "
                 f"{b['bpf_ns_per_connect']:.0f} ns in-kernel (bpf_stats: "
                 + ", ".join(f"{k} {v['ns_per_run']:.0f} ns x{v['runs_per_connect']:.0f}" for k, v in b["bpf_stats"].items())
                 + f"); wall clock connect() median {b['connect_median_ns_outside']} ns outside vs "
                 f"{b['connect_median_ns_inside']} ns inside ({b['wallclock_overhead_ns']:+.0f} ns)")
    sni = res.get("ip_literal_sni")
    if sni:
        L.append(f"IP-literal SNI (wrk https://<ip>/...): {'works' if sni['works'] else 'REFUSED by atlasgate'}")
    m = res.get("mongodb")
    if m and m.get("summary"):
        L += mongodb_table(res, m["summary"])
    L += growth_table(res)
    L.append("")
    L.append("targets (atlasgate):")
    for t in res.get("targets", []):
        L.append(f"  [{'met ' if t['met'] else 'MISS'}] {t['target']:46s} {t['value']}")
    L += miss_causes(res, s)
    L.append("")
    L.append("CPU and RSS are the proxy's whole process tree (nginx: master + worker; haproxy: one process, "
             "one thread) from /proc; "
             "new connections: wrk -H 'Connection: close' (see bench/README.md).")
    return "\n".join(L) + "\n"


def miss_causes(res, s):
    """For the missed targets: what this run measured as their cause (the
    profile pass), and what would close them (bench/README.md "Why")."""
    missed = [t["target"] for t in res.get("targets", []) if not t["met"]]
    if not missed:
        return []
    a, n = s["atlasgate"], s["nginx"]
    prof = res.get("profile", {})
    b = prof.get("buckets_pct", {})

    def pct(*keys):
        return sum(v for k, v in b.items() if any(k.startswith(x) for x in keys))

    L = ["", "why the misses (measured in this run; what would close them: bench/README.md \"Why\"):"]
    speed = [m for m in missed if "req/s" in m or "added p50" in m or "CPU per request" in m]
    if speed and a.get("cpu_s_per_10k") and n.get("cpu_s_per_10k"):
        L.append(f"  throughput, latency, CPU: {a['cpu_s_per_10k'] * 100:.0f} us of CPU per keep-alive request vs "
                 f"nginx's {n['cpu_s_per_10k'] * 100:.0f} us, on one event-loop thread (nginx and HAProxy also run "
                 f"one, but do less per request).")
        if b:
            L.append(f"    where atlasgate's goes (perf, keep-alive): kernel TCP/loopback and scheduling "
                     f"{pct('kernel'):.0f}%, Beast HTTP parse/serialise {pct('Beast HTTP'):.0f}%, Asio coroutines/"
                     f"executor/timers {pct('Asio/Beast coroutine'):.0f}%, OpenSSL {pct('OpenSSL'):.0f}%, "
                     f"malloc/free and copies {pct('malloc', 'libc mem'):.0f}%, atlasgate's own code (rules, "
                     f"identity, audit, metrics) {pct('atlasgate'):.0f}%; "
                     f"{prof.get('syscalls_per_request', '-')} syscalls per request (strace).")
        L.append("    closes it, at one worker: fewer coroutine frames and executor hops per request; fewer heap "
                 "allocations per request (the audit record's strings, Beast's field nodes per parsed header, "
                 "normalizeTarget's path segments, OpenSSL's record buffers re-taken after an idle release); "
                 "header storage reused per connection (llhttp would allow it). (Heads are already written by "
                 "net::writeHead with the first body piece in one write, TLS runs over net::TlsSocket, audit "
                 "records go out in batches.) Across cores: `workers: N` (growth: workers).")
    if any("new-connection" in m for m in missed) and a.get("cpu_s_per_10k_newconn"):
        L.append(f"  new connections: {a['cpu_s_per_10k_newconn'] * 100:.0f} us of CPU per new connection vs nginx's "
                 f"{n['cpu_s_per_10k_newconn'] * 100:.0f} us (TLS handshake, BPF flow lookup, identity, the "
                 f"connection's coroutines and audit), one worker; the handshake is the bulk and is per-core work: "
                 f"`workers: N` spreads it over cores; at one worker, a leaner per-connection setup (fewer "
                 f"coroutines, the flow lookup and identity in one step).")
    bpf = res.get("bpf_overhead") or {}
    if any(m.startswith("BPF overhead") for m in missed) and bpf.get("bpf_stats"):
        st = bpf["bpf_stats"]
        create = st.get("ag_sock_create", {}).get("ns_per_connect")
        L.append(f"  BPF: {bpf['bpf_ns_per_connect']:.0f} ns in-kernel per non-target connect(), of which "
                 + (f"ag_sock_create {create:.0f} ns: its socket-local storage allocation "
                    f"(bpf_sk_storage_get with F_CREATE), which keeps the creating process with the socket "
                    f"(identity that cannot be borrowed), so it stays; "
                    if create is not None else "")
                 + f"the wall-clock difference is {bpf.get('wallclock_overhead_ns', 0):+.0f} ns against a "
                 f"{bpf.get('connect_median_ns_outside', 0) / 1000:.0f} us loopback connect(). The same programs "
                 f"took 0.99 us in-kernel on the previous machine: what is left is this VM's allocator and "
                 f"irq-enable cost, not the programs' work.")
    ws = ((res.get("growth") or {}).get("workers") or {}).get("summary") or {}
    if any(m.startswith("2 workers") for m in missed) and "2" in ws:
        L.append(f"  workers: with 2 workers the busiest one spent {ws['2']['busiest_cpu_s_per_10k'] * 100:.0f} us "
                 f"per request it served, against {ws['1']['cpu_s_per_10k'] * 100:.0f} us for one worker alone "
                 f"(host {ws['2'].get('host_busy_pct', 0):.0f}% busy: wrk and the upstream share these 2 cores); "
                 f"what the workers share is locked (connection caps, the agent directory, the audit log) and "
                 f"SO_REUSEPORT splits the connections by hash, not by load. Closes it: the client and upstream "
                 f"on cores of their own, and per-worker shards of the shared counters."
                 if "1" in ws else
                 f"  workers: scaling {ws['2'].get('scaling', 0):.2f}x (see growth: workers).")
    if any("idle agent connection" in m for m in missed):
        L.append(f"  memory per idle connection: {a.get('per_idle_conn_kib', 0):.1f} KiB: OpenSSL's per-connection "
                 f"state and the connection's coroutine frames (no read buffer is taken before the first request; "
                 f"OpenSSL's record buffers are released while idle). Closes it: a smaller coroutine chain per "
                 f"connection.")
    return L


def mongodb_table(res, s):
    st = res["settings"]["mongodb"]
    L = ["", f"MongoDB: stand-in replica set tests/fake_mongo (Python: it bounds the absolute figures; read the "
             f"difference), client pymongo 3.11, {st['connections']} pooled connections, find_one by _id in "
             f"{st['documents']} documents for {res['settings']['duration_s']} s; new connection = TCP + TLS + "
             f"hello (+ the client's SCRAM, direct) + one find, median of {st['connects']}; "
             f"median of {res['settings']['rounds']} rounds",
         "atlasgate: client in the agent cgroup with no credential, atlasgate authenticates upstream as the "
         "configured database_user"]
    w = 15
    head = f"{'':34s}" + "".join(f"{c:>{w}s}" for c in MONGO_CONTENDERS)
    L.append(head)
    L.append("-" * len(head))

    def row(label, key, digits=0, only=None):
        L.append(f"{label:34s}" + "".join(
            f"{fmt(s[c].get(key) if only is None or c in only else None, digits):>{w}s}" for c in MONGO_CONTENDERS))

    row("find by _id ops/s", "find_ops_per_s")
    L.append(f"{'  range over rounds':34s}" + "".join(
        f"{(f'{v[0]:,.0f}-{v[1]:,.0f}' if (v := s[c].get('find_ops_per_s_range')) else '-'):>{w}s}"
        for c in MONGO_CONTENDERS))
    L.append(f"{'  x direct':34s}" + "".join(
        f"{fmt_ratio(ratio(s[c]['find_ops_per_s'], s['direct']['find_ops_per_s'])):>{w}s}" for c in MONGO_CONTENDERS))
    row("find p50 latency (ms)", "find_p50_ms", 3)
    row("find p99 latency (ms)", "find_p99_ms", 3)
    row("  p50 added over direct (ms)", "added_p50_ms", 3)
    row("new connection + find, median (ms)", "connect_median_ms", 2)
    row("  p90 (ms)", "connect_p90_ms", 2)
    row("  added over direct (ms)", "added_connect_ms", 2)
    row("atlasgate CPU s / 10k finds", "cpu_s_per_10k", 3, ["atlasgate"])
    row("atlasgate CPU ms / new connection", "cpu_ms_per_conn", 3, ["atlasgate"])
    row("stand-in CPU s / 10k finds", "stand_in_cpu_s_per_10k", 3)
    row("stand-in CPU ms / new connection", "stand_in_cpu_ms_per_conn", 3)
    row("errors", "errors")
    return L


def chart(res, s, png, tmp):
    dat = os.path.join(tmp, "chart.dat")
    with open(dat, "w") as f:
        f.write("name ka nc p50 p99 rss cpu idle perconn colour\n")
        contenders = res.get("contenders", CONTENDERS)
        for c in contenders:
            d = s[c]

            def g(k, scale=1.0):
                v = d.get(k)
                return "NaN" if v is None else f"{v * scale:.4f}"
            f.write(f"{c} {g('keepalive_rps')} {g('newconn_rps')} {g('p50_ms')} {g('p99_ms')} "
                    f"{g('peak_rss_mib')} {g('cpu_s_per_10k')} {g('idle_rss_mib')} {g('per_idle_conn_kib')} "
                    f"{(CONTENDERS + [BASE]).index(c) + 1}\n")
    gp = os.path.join(tmp, "chart.gp")
    with open(os.path.join(BENCH, "chart.gp")) as f:
        script = f.read()
    b = res.get("bpf_overhead", {})
    title = (f"atlasgate bench {res['started'][:16]} - {res['machine']['cpus']} CPU shared, loopback, "
             f"wrk -c{res['settings']['connections']}, median of {res['settings']['rounds']} rounds"
             f"  |  BPF per non-target connect(): {b.get('bpf_ns_per_connect', float('nan')):.0f} ns")
    script = (script.replace("@DAT@", dat).replace("@PNG@", png).replace("@TITLE@", title)
              .replace("@XMAX@", f"{len(contenders) - 0.4:.1f}")
              .replace("@WIDTH@", str(1750 if len(contenders) <= len(CONTENDERS) else 2050)))
    with open(gp, "w") as f:
        f.write(script)
    p = subprocess.run(["gnuplot", gp], capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"gnuplot failed: {p.stderr}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--atlasgate", default=os.path.join(REPO, "build-bench", "atlasgate"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--idle-conns", type=int, default=500)
    ap.add_argument("--connect-iters", type=int, default=5000)
    ap.add_argument("--connect-batches", type=int, default=8)
    ap.add_argument("--out", default=os.path.join(BENCH, "results"))
    ap.add_argument("--keep-tmp", action="store_true")
    ap.add_argument("--no-profile", dest="profile", action="store_false",
                    help="skip the perf/strace pass over atlasgate (<out>/atlasgate-profile.txt)")
    ap.add_argument("--no-mongodb", dest="mongodb", action="store_false",
                    help="skip the MongoDB section (stand-in cluster, dnsmasq, find and new-connection runs)")
    ap.add_argument("--mongo-connections", type=int, default=8,
                    help="pooled connections (client threads) of the MongoDB find runs")
    ap.add_argument("--mongo-connects", type=int, default=200,
                    help="new connections timed per MongoDB connection-setup run")
    ap.add_argument("--no-growth", dest="growth", action="store_false",
                    help="skip the growth passes (atlasgate with 10/1,000/10,000 rules; with 10,000 idle connections)")
    ap.add_argument("--growth-rules", default="10,1000,10000",
                    help="rule counts of the rules growth pass, comma-separated (the first is the reference)")
    ap.add_argument("--growth-conns", type=int, default=10000,
                    help="idle agent TLS connections held open in the connections growth pass")
    ap.add_argument("--growth-workers", default="1,2",
                    help="`workers:` values of the workers growth pass, comma-separated (the first is the reference)")
    ap.add_argument("--baseline", metavar="BIN",
                    help="also measure the atlasgate daemon binary BIN (e.g. a build of an older commit) as "
                         "contender atlasgate-base, exactly like atlasgate, one daemon running at a time")
    args = ap.parse_args()
    args.growth_rules = [int(x) for x in args.growth_rules.split(",") if x.strip()]
    args.growth_workers = [int(x) for x in args.growth_workers.split(",") if x.strip()]
    if args.baseline:
        args.baseline = os.path.abspath(args.baseline)
        if not (os.path.isfile(args.baseline) and os.access(args.baseline, os.X_OK)):
            sys.exit(f"bench: --baseline {args.baseline}: not an executable file")
    if os.geteuid() != 0:
        sys.exit("bench: needs root (cgroups, BPF, binding port 443)")
    if args.mongodb:
        missing = [w for w, ok in (("dnsmasq (Debian dnsmasq-base)", shutil.which("dnsmasq")),
                                   ("pymongo (Debian python3-pymongo)",
                                    subprocess.run(["/usr/bin/python3", "-c", "import pymongo, bson"],
                                                   capture_output=True).returncode == 0)) if not ok]
        if missing:
            sys.exit(f"bench: the MongoDB section needs {' and '.join(missing)}; or pass --no-mongodb")

    b = Bench(args)
    t0 = time.monotonic()

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)
    try:
        b.setup()
        time.sleep(0.5)
        b.sanity()
        b.memory_snapshot("idle")
        b.check_ip_sni()
        b.check_resumption()
        b.warmup()
        b.rounds()
        b.memory_snapshot("after_load")
        b.atlasgate_counters()
        if args.profile:
            os.makedirs(args.out, exist_ok=True)
            b.profile(args.out)
        b.idle_connections()
        b.bpf_overhead()
        if args.mongodb:
            b.mongodb()
        b.results["access_log_lines"] = {c: b.access_log_lines(c) for c in ("nginx", "haproxy")}
        if args.growth:
            b.growth_rules()
            b.growth_conns()
            b.growth_workers()
    finally:
        b.teardown()
    res = b.results
    res["machine"]["loadavg_end"] = loadavg()
    res["duration_s"] = round(time.monotonic() - t0, 1)
    s = summarize(res)
    targets(res, s)
    os.makedirs(args.out, exist_ok=True)
    txt = table(res, s)
    with open(os.path.join(args.out, "latest.txt"), "w") as f:
        f.write(txt)
    with open(os.path.join(args.out, "latest.json"), "w") as f:
        json.dump(res, f, indent=2)
    tmp = tempfile.mkdtemp(prefix="atlasgate-bench-chart-")
    try:
        chart(res, s, os.path.join(args.out, "latest.png"), tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    print(txt, end="")
    log(f"done in {res['duration_s']} s: {args.out}/latest.txt, latest.json, latest.png")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt as e:
        log(f"interrupted ({e or 'SIGINT'}); everything it started was stopped and removed")
        sys.exit(130)
