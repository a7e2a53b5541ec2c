#!/usr/bin/env bash
# make_pki.sh DIR [HOST...]
#
# Test PKI for the fake Atlas server (tests/fake_atlas/fake_atlas.py).
#
# Creates, in DIR:
#   upstream-ca.pem / upstream-ca.key   test CA (ECDSA P-256, self-signed)
#   server.pem      / server.key        server certificate signed by that CA,
#                                       SAN DNS:<each HOST> (default
#                                       cloud.mongodb.com) + IP:127.0.0.2, IP:::1
#   server-chain.pem                    server.pem followed by upstream-ca.pem
#   server.hosts                        the host list the certificate was made for
#
# Idempotent: an existing CA is reused; an existing server certificate is
# reused when it was made for the same host list by the current CA, and
# re-issued otherwise. Keys are mode 0600. Safe to run concurrently on the same
# DIR (flock).
set -euo pipefail

if [[ $# -lt 1 || "$1" == "-h" || "$1" == "--help" ]]; then
    echo "usage: $0 DIR [HOST...]   (default host: cloud.mongodb.com)" >&2
    exit 2
fi

dir=$1
shift
hosts=("$@")
if [[ ${#hosts[@]} -eq 0 ]]; then
    hosts=(cloud.mongodb.com)
fi

command -v openssl >/dev/null || { echo "make_pki.sh: openssl not found" >&2; exit 1; }
mkdir -p "$dir"
umask 077

exec 9>"$dir/.make_pki.lock"
if command -v flock >/dev/null; then
    flock 9
fi

ca_crt=$dir/upstream-ca.pem
ca_key=$dir/upstream-ca.key
srv_crt=$dir/server.pem
srv_key=$dir/server.key
hosts_file=$dir/server.hosts
want_hosts=$(printf '%s\n' "${hosts[@]}")

tmp=$(mktemp -d "$dir/.tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# ---- CA -------------------------------------------------------------------
if [[ ! -s $ca_crt || ! -s $ca_key ]]; then
    openssl ecparam -name prime256v1 -genkey -noout -out "$tmp/ca.key"
    cat >"$tmp/ca.cnf" <<'EOF'
[req]
distinguished_name = dn
prompt = no
x509_extensions = v3_ca
[dn]
CN = atlasgate fake Atlas test CA
O = atlasgate tests
[v3_ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
EOF
    openssl req -new -x509 -key "$tmp/ca.key" -sha256 -days 3650 \
        -config "$tmp/ca.cnf" -out "$tmp/ca.pem" 2>/dev/null
    mv "$tmp/ca.key" "$ca_key"
    chmod 644 "$tmp/ca.pem"
    mv "$tmp/ca.pem" "$ca_crt"
    rm -f "$srv_crt" "$srv_key" "$hosts_file"   # new CA: re-issue the leaf
fi

# ---- server certificate ------------------------------------------------------
need_leaf=0
if [[ ! -s $srv_crt || ! -s $srv_key || ! -s $hosts_file ]]; then
    need_leaf=1
elif [[ "$(cat "$hosts_file")" != "$want_hosts" ]]; then
    need_leaf=1
elif ! openssl verify -CAfile "$ca_crt" "$srv_crt" >/dev/null 2>&1; then
    need_leaf=1
fi

if [[ $need_leaf -eq 1 ]]; then
    san=""
    i=1
    for h in "${hosts[@]}"; do
        # A host given as an IP literal goes in as an IP SAN.
        if [[ $h == 127.0.0.2 || $h == ::1 ]]; then
            continue   # always present
        elif [[ $h =~ ^[0-9.]+$ || $h == *:* ]]; then
            san+="IP.$((i + 10)) = $h"$'\n'
        else
            san+="DNS.$i = $h"$'\n'
        fi
        i=$((i + 1))
    done
    cat >"$tmp/srv.cnf" <<EOF
[req]
distinguished_name = dn
prompt = no
[dn]
CN = ${hosts[0]}
O = atlasgate tests
[v3_srv]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
subjectAltName = @alt
[alt]
${san}IP.1 = 127.0.0.2
IP.2 = ::1
EOF
    openssl ecparam -name prime256v1 -genkey -noout -out "$tmp/srv.key"
    openssl req -new -key "$tmp/srv.key" -config "$tmp/srv.cnf" -out "$tmp/srv.csr" 2>/dev/null
    openssl x509 -req -in "$tmp/srv.csr" -CA "$ca_crt" -CAkey "$ca_key" \
        -set_serial "0x$(openssl rand -hex 16)" -days 825 -sha256 \
        -extfile "$tmp/srv.cnf" -extensions v3_srv -out "$tmp/srv.pem" 2>/dev/null
    mv "$tmp/srv.key" "$srv_key"
    chmod 644 "$tmp/srv.pem"
    mv "$tmp/srv.pem" "$srv_crt"
    printf '%s\n' "$want_hosts" >"$tmp/hosts"
    chmod 644 "$tmp/hosts"
    mv "$tmp/hosts" "$hosts_file"
fi

cat "$srv_crt" "$ca_crt" >"$tmp/chain.pem"
chmod 644 "$tmp/chain.pem"
mv "$tmp/chain.pem" "$dir/server-chain.pem"
