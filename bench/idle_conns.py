"""Opens N idle TLS connections to cloud.mongodb.com at ADDR:443 and holds them.

    idle_conns.py [--best-effort] ADDR N CAFILE|-

Each connection completes its TLS handshake (SNI cloud.mongodb.com; the
certificate is verified against CAFILE unless it is "-") and then sends
nothing. Prints "ready <n>" once all are open, then holds them until standard
input closes or reads a line. Run by scripts/bench inside an agent cgroup for
atlasgate (so every connect() is redirected), outside for the others.

The soft RLIMIT_NOFILE is raised to fit N (and the hard one too when N needs
more and the process may: root). With --best-effort (the growth pass), a
connection that fails stops the opening instead of the script: it prints
"ready <n> stopped: <why>" and holds the n it has.
"""
import resource
import socket
import ssl
import sys

HOST = "cloud.mongodb.com"


def raise_nofile(n):
    need = n + 64
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return
    if hard != resource.RLIM_INFINITY and hard < need:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
            return
        except (ValueError, OSError):
            need = hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


def main():
    args = sys.argv[1:]
    best_effort = "--best-effort" in args
    args = [a for a in args if a != "--best-effort"]
    addr, n, cafile = args[0], int(args[1]), args[2]
    raise_nofile(n)
    if cafile == "-":
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx = ssl.create_default_context(cafile=cafile)
    ctx.set_alpn_protocols(["http/1.1"])
    conns = []
    why = None
    for i in range(n):
        try:
            raw = socket.create_connection((addr, 443), timeout=10)
            try:
                conns.append(ctx.wrap_socket(raw, server_hostname=HOST))
            except BaseException:
                raw.close()
                raise
        except (OSError, ssl.SSLError) as e:
            if not best_effort:
                raise
            why = f"connection {i + 1} failed: {type(e).__name__}: {e}"
            break
    print(f"ready {len(conns)}" + (f" stopped: {why}" if why else ""), flush=True)
    sys.stdin.readline()
    for c in conns:
        try:
            c.close()
        except OSError:
            pass


if __name__ == "__main__":
    main()
