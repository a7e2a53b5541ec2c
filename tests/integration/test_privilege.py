"""Privilege separation: what an unprivileged agent can and cannot reach, and
how the daemon process itself is hardened.

The agent is started the normal way (scripts/atlasgate-run with
SUDO_UID=65534: the launcher drops to uid/gid 65534 with no capabilities)
and tries, from inside its agent cgroup, to:
  * read the CA key and the service-account client secret;
  * connect to the control socket;
  * move itself out of its cgroup (parent, cgroup root, a new child);
  * read, open (BPF_OBJ_GET), unlink or rename the bpffs pins (each by its
    path, whether or not bpffs lets it list them: mounted mode 0700, as the
    daemon mounts it on a machine where it was not, or world-readable);
  * read the daemon's /proc files, ptrace it, signal it;
and, with all that refused, its Atlas requests still work (200).

The daemon: not dumpable (PR_SET_DUMPABLE 0). For a root daemon, "environ
not readable by uid 65534" and "/proc/<pid>/mem owned by root" hold whether
or not it is dumpable, so they are checked but prove little; the
discriminating check is a uid-0 prober whose CAP_SYS_PTRACE is permitted but
not effective: the kernel then refuses process_vm_readv (a
PTRACE_MODE_ATTACH_REALCREDS access) on a non-dumpable uid-0 process and
allows it on a dumpable one (kernel/ptrace.c __ptrace_may_access +
security/commoncap.c cap_ptrace_access_check). The prober is validated on
two control processes (one dumpable, one not) before it is pointed at the
daemon. The daemon's capability sets are printed and checked to be reduced.
"""

import json
import os
import signal
import subprocess
import sys
import time
import unittest

from harness import (ACCEPT_V2, HOST, SYSTEM_PYTHON, Env, PrivilegedTestCase, DaemonTestCase)

GROUPS = "/api/atlas/v2/groups"
NOBODY = 65534

CAP_NAMES = ["chown", "dac_override", "dac_read_search", "fowner", "fsetid", "kill", "setgid", "setuid", "setpcap",
             "linux_immutable", "net_bind_service", "net_broadcast", "net_admin", "net_raw", "ipc_lock", "ipc_owner",
             "sys_module", "sys_rawio", "sys_chroot", "sys_ptrace", "sys_pacct", "sys_admin", "sys_boot", "sys_nice",
             "sys_resource", "sys_time", "sys_tty_config", "mknod", "lease", "audit_write", "audit_control",
             "setfcap", "mac_override", "mac_admin", "syslog", "wake_alarm", "block_suspend", "audit_read",
             "perfmon", "bpf", "checkpoint_restore"]
# Capabilities the daemon has no business holding after start-up.
MUST_BE_DROPPED = ["chown", "dac_override", "fowner", "fsetid", "kill", "setgid", "setuid", "setpcap",
                   "sys_module", "sys_rawio", "sys_boot", "sys_time", "mknod", "setfcap", "mac_admin",
                   "mac_override", "net_raw", "linux_immutable"]


def cap_names(mask):
    return [CAP_NAMES[i] if i < len(CAP_NAMES) else f"cap_{i}" for i in range(64) if mask >> i & 1]


def proc_status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out


# Runs as uid 65534 inside the agent cgroup; prints one JSON object.
AGENT = r'''
import ctypes, errno, json, os, socket, ssl, sys

cfg = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
out = {"uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "groups": os.getgroups()}

def outcome(fn):
    try:
        r = fn()
        return "ok" if r is None else f"ok:{r}"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))

def read(path):
    with open(path, "rb") as f:
        return len(f.read())

def write(path, data):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, data.encode())
    finally:
        os.close(fd)

def caps():
    with open("/proc/self/status") as f:
        return {l.split(":")[0]: l.split(":")[1].strip() for l in f if l.startswith("Cap")}

out["caps"] = caps()
out["cgroup_before"] = open("/proc/self/cgroup").read().strip().splitlines()[-1]

# 1. secrets
out["ca_key"] = outcome(lambda: read(cfg["ca_key"]))
out["client_secret"] = outcome(lambda: read(cfg["secret"]))
out["ca_pem"] = outcome(lambda: read(cfg["ca_pem"]))  # public: control

# 2. control socket
def connect_control():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(cfg["control"])
        s.sendall(b'{"cmd":"status"}\n')
        return s.recv(100).decode(errors="replace")
    finally:
        s.close()
out["control"] = outcome(connect_control)

# 3. cgroup escape
me = str(os.getpid())
out["cg_parent"] = outcome(lambda: write(cfg["agents_cgroup"] + "/cgroup.procs", me))
out["cg_root"] = outcome(lambda: write(cfg["cgroot"] + "/cgroup.procs", me))
own = cfg["cgroot"] + out["cgroup_before"][3:]
out["cg_mkdir"] = outcome(lambda: os.mkdir(own + "/escape"))
out["cg_kill_parent"] = outcome(lambda: write(cfg["agents_cgroup"] + "/cgroup.kill", "1"))
out["cgroup_after"] = open("/proc/self/cgroup").read().strip().splitlines()[-1]

# 4. bpffs pins, each by the path root listed (listing them may be refused)
pins = cfg["pins"]
out["pin_dirs_listed"] = {d: outcome(lambda d=d: len(os.listdir(d))) for d in sorted({os.path.dirname(p) for p in pins})}
out["pin_read"] = sorted({outcome(lambda p=p: read(p)) for p in pins})
out["pin_unlink"] = sorted({outcome(lambda p=p: os.unlink(p)) for p in pins})
out["pin_rename"] = sorted({outcome(lambda p=p: os.rename(p, p + ".x")) for p in pins})
out["pin_rmdir"] = outcome(lambda: os.rmdir(cfg["pin_root"] + "/links"))
nr_bpf = {"x86_64": 321, "aarch64": 280}.get(os.uname().machine)
def obj_get(path):
    p = ctypes.create_string_buffer(path.encode())
    attr = (ctypes.c_uint8 * 32)()
    ctypes.c_uint64.from_buffer(attr, 0).value = ctypes.addressof(p)
    fd = libc.syscall(nr_bpf, 7, attr, 24)  # BPF_OBJ_GET
    if fd < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    os.close(fd)
out["pin_obj_get"] = sorted({outcome(lambda p=p: obj_get(p)) for p in pins}) if nr_bpf else ["skipped"]

# 5. the daemon process
dpid = cfg["daemon_pid"]
for name in ("environ", "mem", "maps", "cmdline"):
    out["proc_" + name] = outcome(lambda n=name: read(f"/proc/{dpid}/{n}"))
out["proc_fd"] = outcome(lambda: len(os.listdir(f"/proc/{dpid}/fd")))
def ptrace_attach():
    libc.ptrace.restype = ctypes.c_long
    r = libc.ptrace(16, dpid, None, None)  # PTRACE_ATTACH
    if r != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    libc.ptrace(17, dpid, None, None)  # PTRACE_DETACH (never expected)
out["ptrace"] = outcome(ptrace_attach)
out["signal"] = outcome(lambda: os.kill(dpid, 0))

# 6. and yet: Atlas works
ctx = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
def get():
    with ctx.wrap_socket(socket.create_connection((cfg["addr"], 443), timeout=20),
                         server_hostname=cfg["host"]) as s:
        s.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\nAccept: %s\r\nConnection: close\r\n\r\n"
                   % (cfg["path"], cfg["host"], cfg["accept"])).encode())
        data = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            data += b
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)
status, body = get()
out["request_status"] = status
out["request_has_results"] = "results" in body
print(json.dumps(out))
'''

# Runs as uid 0 with CAP_SYS_PTRACE permitted but not effective; argv: pid.
PROBER = r'''
import ctypes, errno, os, sys
libc = ctypes.CDLL(None, use_errno=True)
class Hdr(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
class Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]
hdr, data = Hdr(0x20080522, 0), (Data * 2)()
assert libc.capget(ctypes.byref(hdr), data) == 0
CAP_SYS_PTRACE = 19
assert data[0].permitted & (1 << CAP_SYS_PTRACE), "the prober needs CAP_SYS_PTRACE permitted"
data[0].effective &= ~(1 << CAP_SYS_PTRACE)
hdr = Hdr(0x20080522, 0)
assert libc.capset(ctypes.byref(hdr), data) == 0, os.strerror(ctypes.get_errno())
pid, addr = int(sys.argv[1]), int(sys.argv[2], 16)
class Iov(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
buf = ctypes.create_string_buffer(16)
local, remote = Iov(ctypes.addressof(buf), 16), Iov(addr, 16)
libc.process_vm_readv.restype = ctypes.c_ssize_t
n = libc.process_vm_readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
print("readable" if n > 0 else "refused:" + errno.errorcode.get(ctypes.get_errno(), "?"))
'''

NONDUMPABLE_CONTROL = r'''
import ctypes, sys, time
assert ctypes.CDLL(None).prctl(4, 0, 0, 0, 0) == 0  # PR_SET_DUMPABLE 0
print("ready", flush=True)
time.sleep(60)
'''


def first_mapping(pid):
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            rng, perms = line.split()[:2]
            if perms.startswith("r"):
                return rng.split("-")[0]
    raise AssertionError(f"no readable mapping in /proc/{pid}/maps")


def others_can_list(path):
    """Whether a uid/gid other than root's may list the directory path (r+x on
    it, x on every directory above it)."""
    def mode(p):
        return os.stat(p).st_mode
    if mode(path) & 0o005 != 0o005:
        return False
    parent = os.path.dirname(path)
    while parent != path:
        if not mode(parent) & 0o001:
            return False
        path, parent = parent, os.path.dirname(parent)
    return True


def probe(pid):
    p = subprocess.run([sys.executable, "-c", PROBER, str(pid), first_mapping(pid)],
                       capture_output=True, text=True, timeout=20)
    if p.returncode != 0:
        raise AssertionError(f"prober failed: {p.stderr}")
    return p.stdout.strip()


class PrivilegeTest(DaemonTestCase):
    @classmethod
    def env_options(cls):
        return {}

    def test_unprivileged_agent_is_confined_and_still_served(self):
        env = self.env
        cfg = {"ca_key": os.path.join(env.state_dir, "ca.key"), "ca_pem": os.path.join(env.state_dir, "ca.pem"),
               "secret": env.secret_file, "control": os.path.join(env.run_dir, "control.sock"),
               "agents_cgroup": env.agents_cgroup, "cgroot": env.cgroot, "pin_root": env.pin_root,
               "daemon_pid": env.daemon.pid, "addr": env.fake_addr, "host": HOST, "path": GROUPS,
               "accept": ACCEPT_V2}
        for k in ("ca_key", "secret", "control"):
            self.assertTrue(os.path.exists(cfg[k]), f"{cfg[k]} missing: the refusal below would prove nothing")
        pins_before = sorted(os.path.join(d, f) for d, _, fs in os.walk(env.pin_root) for f in fs)
        self.assertTrue(pins_before)
        cfg["pins"] = pins_before
        bpffs_mode = os.stat("/sys/fs/bpf").st_mode & 0o7777
        script = os.path.join(env.tmp, "confined_agent.py")
        with open(script, "w") as f:
            f.write(AGENT)
        os.chmod(script, 0o644)
        p = env.run_agent([SYSTEM_PYTHON, script, json.dumps(cfg)], name="confined", user=NOBODY)
        self.assertEqual(p.returncode, 0, f"{p.stdout}\n{p.stderr}")
        r = json.loads(p.stdout.strip().splitlines()[-1])
        print(f"\nbpffs /sys/fs/bpf mode {bpffs_mode:o}; unprivileged agent:\n" + json.dumps(r, indent=1))

        self.assertEqual((r["uid"], r["euid"], r["gid"]), (NOBODY, NOBODY, NOBODY))
        self.assertEqual(r["caps"]["CapEff"], "0000000000000000", r["caps"])
        self.assertEqual(r["caps"]["CapPrm"], "0000000000000000", r["caps"])
        denied = {"EACCES", "EPERM"}
        # Secrets: refused (the public CA certificate, as a control, is readable).
        self.assertIn(r["ca_key"], denied)
        self.assertIn(r["client_secret"], denied)
        self.assertTrue(r["ca_pem"].startswith("ok"), r["ca_pem"])
        # Control socket.
        self.assertIn(r["control"], denied)
        # Cgroup: nowhere to go, and it stayed put.
        for k in ("cg_parent", "cg_root", "cg_mkdir", "cg_kill_parent"):
            self.assertIn(r[k], denied, k)
        self.assertEqual(r["cgroup_after"], r["cgroup_before"])
        self.assertRegex(r["cgroup_before"], rf"^0::/{env.agents_cgroup_name}/confined\.\d+$")
        # Pins: listed only where the directories let anyone (bpffs mounted
        # world-readable), refused where not (mode 0700); usable in neither case.
        for d, listed in r["pin_dirs_listed"].items():
            if others_can_list(d):
                self.assertEqual(listed, f"ok:{len(os.listdir(d))}", d)
            else:
                self.assertIn(listed, denied, d)
        for k in ("pin_read", "pin_unlink", "pin_rename"):
            self.assertTrue(r[k] and set(r[k]) <= denied, f"{k}: {r[k]}")
        self.assertIn(r["pin_rmdir"], denied | {"ENOTEMPTY"})
        if r["pin_obj_get"] != ["skipped"]:
            self.assertTrue(set(r["pin_obj_get"]) <= denied, r["pin_obj_get"])
        pins_after = sorted(os.path.join(d, f) for d, _, fs in os.walk(env.pin_root) for f in fs)
        self.assertEqual(pins_after, pins_before)
        # The daemon's process.
        for k in ("proc_environ", "proc_mem", "proc_maps", "proc_fd", "ptrace", "signal"):
            self.assertIn(r[k], denied, k)
        self.assertIsNone(env.daemon.poll())
        # And the agent was served.
        self.assertEqual(r["request_status"], 200)
        self.assertTrue(r["request_has_results"])
        rec = [a for a in env.audit() if a["agent"] == "confined"]
        self.assertEqual(len(rec), 1, rec)
        self.assertEqual(rec[0]["status"], 200)
        self.assertEqual(env.status()["counters"]["refused_no_flow"], 0)

    def test_unprivileged_curl_is_served(self):
        status, body, p = self.env.curl(GROUPS, name="nobody-curl", user=NOBODY)
        self.assertEqual(status, 200, p.stderr)
        self.assertIn("demo", [g["name"] for g in json.loads(body)["results"]])

    def test_daemon_process_is_not_dumpable(self):
        env = self.env
        pid = env.daemon.pid
        # What the brief names (true of any uid-0 process; printed, asserted).
        mem = os.stat(f"/proc/{pid}/mem")
        self.assertEqual((mem.st_uid, mem.st_gid), (0, 0))
        p = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--",
                            "cat", f"/proc/{pid}/environ"], capture_output=True, timeout=10)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn(b"Permission denied", p.stderr)
        # The discriminating check, validated on a dumpable and a non-dumpable control.
        dumpable = subprocess.Popen(["sleep", "60"])
        nondump = subprocess.Popen([sys.executable, "-c", NONDUMPABLE_CONTROL], stdout=subprocess.PIPE, text=True)
        try:
            self.assertEqual(nondump.stdout.readline().strip(), "ready")
            self.assertEqual(probe(dumpable.pid), "readable", "the prober cannot tell a dumpable process")
            self.assertEqual(probe(nondump.pid), "refused:EPERM", "the prober cannot tell a non-dumpable process")
        finally:
            for c in (dumpable, nondump):
                c.kill()
                c.wait()
            nondump.stdout.close()
        verdict = probe(pid)
        print(f"\ndaemon pid {pid}: /proc/{pid}/mem owner {mem.st_uid}:{mem.st_gid}, environ refused to uid "
              f"{NOBODY}, REALCREDS memory probe without CAP_SYS_PTRACE: {verdict}")
        self.assertEqual(verdict, "refused:EPERM", "the daemon is dumpable (PR_SET_DUMPABLE 0 missing)")

    def test_daemon_capabilities_are_reduced(self):
        st = proc_status(self.env.daemon.pid)
        sets = {k: int(st[k], 16) for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")}
        with open("/proc/sys/kernel/cap_last_cap") as f:
            full = (1 << (int(f.read()) + 1)) - 1
        print("\ndaemon capabilities:")
        for k, v in sets.items():
            print(f"  {k} {v:016x} {','.join(cap_names(v)) or '-'}")
        print(f"  NoNewPrivs {st.get('NoNewPrivs')}")
        self.assertNotEqual(sets["CapEff"], full, "the daemon keeps the full capability set")
        self.assertNotEqual(sets["CapPrm"], full, "the daemon keeps the full capability set")
        for name in MUST_BE_DROPPED:
            bit = 1 << CAP_NAMES.index(name)
            self.assertFalse(sets["CapEff"] & bit, f"cap_{name} still effective")
            self.assertFalse(sets["CapPrm"] & bit, f"cap_{name} still permitted")
            self.assertFalse(sets["CapBnd"] & bit, f"cap_{name} still in the bounding set")
        self.assertEqual(sets["CapAmb"], 0)
        self.assertEqual(sets["CapInh"], 0)
        self.assertEqual(st.get("NoNewPrivs"), "1")
        # Every thread, not just the main one (capset is per thread).
        for tid in os.listdir(f"/proc/{self.env.daemon.pid}/task"):
            tst = proc_status(f"{self.env.daemon.pid}/task/{tid}")
            self.assertEqual(int(tst["CapEff"], 16), sets["CapEff"], f"thread {tid}")
            self.assertEqual(int(tst["CapPrm"], 16), sets["CapPrm"], f"thread {tid}")


if __name__ == "__main__":
    unittest.main(verbosity=2)
