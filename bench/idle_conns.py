"""Opens N idle TLS connections to cloud.mongodb.com at ADDR:443 and holds them.

    idle_conns.py ADDR N CAFILE|-

Each connection completes its TLS handshake (SNI cloud.mongodb.com; the
certificate is verified against CAFILE unless it is "-") and then sends
nothing. Prints "ready <n>" once all are open, then holds them until standard
input closes or reads a line. Run by scripts/bench inside an agent cgroup for
atlasgate (so every connect() is redirected), outside for the others.
"""
import socket
import ssl
import sys

HOST = "cloud.mongodb.com"


def main():
    addr, n, cafile = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if cafile == "-":
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx = ssl.create_default_context(cafile=cafile)
    ctx.set_alpn_protocols(["http/1.1"])
    conns = []
    for _ in range(n):
        raw = socket.create_connection((addr, 443), timeout=10)
        conns.append(ctx.wrap_socket(raw, server_hostname=HOST))
    print(f"ready {len(conns)}", flush=True)
    sys.stdin.readline()
    for c in conns:
        try:
            c.close()
        except OSError:
            pass


if __name__ == "__main__":
    main()
