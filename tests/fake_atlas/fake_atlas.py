#!/usr/bin/env python3
"""fake_atlas.py - a local stand-in for the MongoDB Atlas Administration API.

Python 3 standard library only (plus the openssl CLI for X.509 user
certificates). HTTPS (TLS 1.2+, ALPN http/1.1), HTTP/1.1 with keep-alive, one
thread per connection, a correct Content-Length on every response (unless the
chunked fault says otherwise). Used by atlasgate's integration tests and demo; see
tests/fake_atlas/test_fake_atlas.py for a self-test and usage examples.

Command line
------------
  fake_atlas.py --cert server.pem --key server.key
      [--listen 127.0.0.2] [--port 443]          (port 0 = pick a free one)
      [--pki-dir DIR]          run make_pki.sh DIR and use DIR/server.{pem,key}
                               when --cert/--key are not given
      [--client-id ID] [--client-secret-file FILE]
      [--token-ttl 3600] [--max-active-tokens 100]
      [--auth bearer|digest|any]
      [--digest-public-key KEY] [--digest-private-key-file FILE]
      [--digest-nonce-uses 5]
      [--ready-file FILE]      "<addr> <port>\\n" written once listening
      [--max-connections N]    serve at most N connections at a time: the
                               next is accepted only when one closes (0 = no cap)
      [--backlog N]            listen backlog (default 128): with a small one,
                               SYNs beyond it are dropped, like a busy server
                               (removed again on clean exit)
      [--log FILE]             JSON line per request (credentials redacted)
      [--quiet]                no per-request line on stderr

Defaults (for hand use; tests normally pass their own):
  client id   mdb_sa_id_5f0000000000000000000fa1
  secret      mdb_sa_sk_fake-atlas-client-secret   (when no secret file)
  digest key  public "fakepubk", private "fake-private-key-0001"
Secrets are read from the files once at start (trailing whitespace stripped)
and never printed.

SIGTERM / SIGINT: stop accepting, close the listener, exit 0.

OAuth (service accounts)
------------------------
POST /api/oauth/token     Basic base64(client_id:client_secret) (or the
    client_id/client_secret form fields), body grant_type=client_credentials
    -> 200 {"access_token":"eyJ...","expires_in":TTL,"token_type":"Bearer"}
    Client authentication is checked first (401 invalid_client, never with a
    WWW-Authenticate header), then the grant: missing grant_type -> 400
    invalid_request, other grant -> 400 unsupported_grant_type; wrong method
    -> 405 invalid_request; more than --max-active-tokens live tokens for the
    client -> 403 access_denied. Issued tokens are remembered with their expiry.
POST /api/oauth/revoke    same client auth, body token=<t>[&token_type_hint=..]
    -> 200 {} ; the token stops working (unknown tokens also get 200).

Atlas API (/api/atlas/v2/** and /api/atlas/v1.0/**)
--------------------------------------------------
Order of checks: stall fault -> authentication (401) -> api_status fault ->
version (406) -> routing (404/405) -> handler.
  bearer  Authorization: Bearer <issued, unexpired, unrevoked token>
  digest  RFC 2617 MD5, qop=auth, realm "MMS Public API"; challenge exactly
          Digest realm="MMS Public API", domain="", nonce="...", algorithm=MD5, qop="auth", stale=false
          nonces are tracked; nc must increase per nonce (reuse -> 401); a
          nonce that has served --digest-nonce-uses requests is answered with
          401 and a fresh nonce with stale=true.
  any     either of the above; a 401 carries the Digest challenge.
401 body: {"detail":...,"error":401,"errorCode":"UNAUTHORIZED",...}.
v2 needs Accept: application/vnd.atlas.YYYY-MM-DD+json (a real calendar date
between 2023-01-01 and today), else 406 INVALID_VERSION_DATE; responses carry
Content-Type: application/vnd.atlas.<date>+json;charset=utf-8. v1.0 answers
application/json;charset=utf-8 and ignores Accept.

Resources (same paths under v2 and v1.0; in-memory, stateful):
  GET /orgs ; GET PATCH DELETE /orgs/{orgId} ; GET /orgs/{orgId}/groups
  GET POST /groups ; GET /groups/byName/{name} ; GET PATCH DELETE /groups/{g}  (DELETE 204)
  GET POST /groups/{g}/clusters (POST 201) ; GET PATCH DELETE /groups/{g}/clusters/{name} (DELETE 202)
  GET POST /groups/{g}/flexClusters (POST 201) ; GET PATCH DELETE .../flexClusters/{name} (DELETE 202)
  GET POST /groups/{g}/databaseUsers (POST 201) ; GET PATCH DELETE .../databaseUsers/{db}/{user} (DELETE 204)
  GET POST /groups/{g}/accessList (POST takes a JSON array, 201) ;
      GET DELETE .../accessList/{entry}  (entry URL-encoded: 10.0.0.0%2F24; DELETE 204)
      (v1.0 also accepts .../whitelist)
  GET POST /groups/{g}/clusters/{c}/backup/snapshots ;
      GET PATCH DELETE .../snapshots/{id}  (DELETE 204)
  Credential-minting resources (see "Minted credentials" below):
  GET POST /orgs/{o}/apiKeys (POST 200) ; GET PATCH DELETE /orgs/{o}/apiKeys/{id} (DELETE 204)
  GET POST /groups/{g}/apiKeys (POST 200) ; POST PATCH DELETE /groups/{g}/apiKeys/{id}
      (POST assigns an org key: body [{"roleName":"GROUP_..."}] -> 204; DELETE unassigns -> 204)
  GET POST /orgs/{o}/serviceAccounts (POST 201) ; GET PATCH DELETE .../{clientId} (DELETE 204) ;
      POST .../{clientId}/secrets (201) ; DELETE .../{clientId}/secrets/{secretId} (204)
  the same under /groups/{g}/serviceAccounts (project service accounts, GROUP_ roles)
  GET POST /groups/{g}/databaseUsers/{username}/certs (POST 201, PEM text)
Lists: {"links":[],"results":[...],"totalCount":N}; pageNum / itemsPerPage
query parameters are honoured. Every error body is non-empty JSON:
{"detail":...,"error":<status>,"errorCode":...,"parameters":[...],"reason":...}
Unknown path -> 404 RESOURCE_NOT_FOUND; malformed JSON body -> 400 INVALID_JSON.

Minted credentials
------------------
Secrets are returned in clear once, by the call that creates them; reads mask
them. Everything minted is real and usable, and listed with its secrets by
GET /__fake/minted (nowhere else: not in /__fake/state, nor any log).
  API keys   POST {"desc","roles":["ORG_..."]} (project: ["GROUP_..."]) ->
             {"desc","id"(24 hex),"links","privateKey"(uuid4),"publicKey"(8 a-z),
              "roles":[{"orgId"|"groupId","roleName"}]}; a project key also gets
             {"orgId","roleName":"ORG_MEMBER"}. Reads: privateKey
             "********-****-****-<last 12>". The key authenticates by Digest like
             --digest-public-key (not in --auth bearer); DELETE /orgs/.. ends it,
             DELETE /groups/.. only removes the project roles.
             400 MISSING_ATTRIBUTE (desc/roles), INVALID_ATTRIBUTE (empty roles,
             bad desc), INVALID_ENUM_VALUE (role of the wrong kind); 404
             API_KEY_NOT_FOUND.
  service    POST {"name","description","roles","secretExpiresAfterHours"} -> 201
  accounts   {"clientId":"mdb_sa_id_<24 hex>","createdAt","description","name","roles",
              "secrets":[{"createdAt","expiresAt","id","secret":"mdb_sa_sk_<40 url-safe b64>"}]};
             POST .../secrets {"secretExpiresAfterHours"} -> 201 {"createdAt","expiresAt","id","secret"}.
             Reads: secrets [{"createdAt","expiresAt","id",("lastUsedAt"),"maskedSecretValue"}].
             client id + secret get tokens at /api/oauth/token (Basic or form)
             until the secret expires or is deleted; deleting a secret revokes
             the tokens it got, deleting the account all of its tokens.
             404 SERVICE_ACCOUNT_NOT_FOUND / SERVICE_ACCOUNT_SECRET_NOT_FOUND.
  database   the password a POST/PATCH .../databaseUsers receives is kept (never
  users      returned by the API); /__fake/minted lists it (and every earlier one).
  X.509      POST .../databaseUsers/{username}/certs {"monthsUntilExpiration":1..24 (3)}
             for a user with x509Type MANAGED -> 201, body = certificate PEM followed
             by its PKCS#8 RSA key PEM, Content-Type as the other responses
             (application/vnd.atlas.<date>+json;charset=utf-8 / application/json;
             charset=utf-8 for v1.0; as Atlas' OpenAPI declares it) unless the
             cert_content_type fault says otherwise. Signed by a CA made per process
             with the openssl CLI. GET lists {"_id"(serial),"createdAt","groupId",
             "links","notAfter","subject":"CN=<username>"} of unexpired ones.
             400 INVALID_ATTRIBUTE (months), USER_NOT_X509_MANAGED; 404 USERNAME_NOT_FOUND.

Seed (deterministic):
  org      4f0000000000000000000001  "Fake Org"
  project  5f0000000000000000000001  "demo"  (orgId 4f0000000000000000000001)
  cluster  Cluster0 (id 6f0000000000000000000001) in project demo
  snapshot 7f0000000000000000000001 of Cluster0

Every response carries X-Fake-Atlas-Request-Id (the id in /__fake/requests).

Test introspection and fault injection (/__fake/..., no auth, not recorded)
--------------------------------------------------------------------------
GET  /__fake/health    {"ok":true}
GET  /__fake/requests  list of every recorded request, oldest first:
     {"id","ts","method","path" (raw, incl. query),"headers" ([[name,value],...]
      exactly as received),"header_map" ({lower-case name: value}),"body"
      (text),"body_len","client" ([addr,port]),"conn" (connection number),
      "conn_seq" (n-th request on that connection),"sni","alpn","tls_version",
      "kind" (token|revoke|api|other),"auth" (outcome, e.g. "bearer:ok",
      "bearer:missing","bearer:unknown","bearer:expired","bearer:revoked",
      "digest:ok","digest:challenge","digest:stale","digest:bad_response",
      "digest:nc_reused","digest:unknown_nonce","basic:ok","post:ok",
      "client:invalid","client:missing","none"),"principal" (who authenticated:
      "api_key:<publicKey>" for Digest, "service_account:<clientId>" for a
      bearer token or a token/revoke request; null when not authenticated),
      "principal_minted" (true: a credential minted through the API, false: the
      configured one),"status","fault","duration_ms"}
     Optional query: ?since=<id> (only ids greater than that).
GET  /__fake/stats     {"token_requests","token_successes","token_failures",
      "revoke_requests","api_requests","other_requests","connections",
      "digest_challenges","active_tokens","by_status":{"200":n,...},
      "by_auth":{"bearer:ok":n,...}}
GET  /__fake/minted    every credential minted through the API, secrets in clear:
     {"api_keys":[{"id","publicKey","privateKey","desc","orgId","createdInGroup",
       "groupIds","roles","createdAt","deleted","deletedAt"}],
      "service_accounts":[{"clientId","name","description","orgId","groupId",
       "roles","createdAt","deleted","secrets":[...as below]}],
      "service_account_secrets":[{"clientId","id","secret","createdAt","expiresAt",
       "lastUsedAt","expired","deleted"}],
      "database_users":[{"groupId","databaseName","username","password" (last
       received, null if none),"passwords" (all received),"createdAt","deleted"}],
      "certs":[{"serial","_id","groupId","username","subject","createdAt","notAfter",
       "monthsUntilExpiration","certificate","privateKey"}],
      "x509_ca": CA certificate PEM (null until the first certificate)}
POST /__fake/reset     clears the request log, the counters and the faults.
     Body (optional JSON): {"state":true} also restores the seed data (and
     forgets minted credentials, revoking their tokens),
     {"tokens":true} also forgets issued tokens and digest nonces.
GET  /__fake/faults    current fault settings
POST /__fake/faults    JSON object; keys given are set, others kept
     ({"clear":true} first clears everything):
  {"token_fail": {"count": 2, "status": 503}}         next 2 token requests fail
        optional "body" (object -> JSON, string -> verbatim) and "headers";
        default bodies: 400 invalid_request, 401 invalid_client,
        403 access_denied, 429 rate_limited, 5xx server_error/
        temporarily_unavailable.
  {"token_delay_ms": 1500}                            every token request waits
  {"expire_tokens": true}                             all issued tokens expire now
  {"revoke_tokens": true}                             all issued tokens revoked now
  {"max_active_tokens": 3}                            lower the 100-token cap
  {"api_status": {"path_prefix": "/api/atlas/v2/groups", "status": 429,
                  "count": 1, "method": "GET", "body": {...}, "headers": {...}}}
        force a status on authenticated API requests whose path starts with
        path_prefix; count defaults to 1, -1 = until cleared; a list of such
        objects is accepted; null clears. Default bodies are Atlas-shaped
        (429 -> RATE_LIMITED_TOKEN_BUCKET with Retry-After: 1).
  {"stall_ms": 3000, "stall_count": 1}                API responses sleep first
        (stall_count omitted = every API request until cleared with 0)
  {"reset_mid_response": true}                        send headers and half
        the body, then RST the connection (true = until cleared, N = next N)
  {"close_after_headers": 1}                          send headers (full
        Content-Length), then close without a body (true/N as above)
  Response rules, for authenticated requests (auth outcome "...:ok": API calls
  and token/revoke requests) whose path without query starts with path_prefix
  (default "/") [and matches path_regex (re.search)] [and method]; count
  defaults to 1, -1 = until cleared; a list of rules is accepted; null clears:
  {"chunked": {"path_prefix": "/api/atlas/v2/orgs/", "method": "POST",
               "chunks": 3, "chunk_delay_ms": 0, "count": 1}}
        answer with Transfer-Encoding: chunked (no Content-Length), the body
        in `chunks` chunks, each its own write; true = every response until
        cleared. Not for HEAD / 204 / 304.
  {"delay_response": {"path_regex": "/apiKeys$", "method": "POST", "ms": 2000,
                      "phase": "before_headers", "count": 1}}
        the handler runs (credentials are minted) and then the answer waits
        `ms`: phase "before_headers" (nothing sent yet) or "mid_body" (headers
        and half the body sent, or the first chunk when chunked).
  {"early_hints": {"path_prefix": "/api/atlas/v2/orgs/", "method": "POST"}}
                                                       a 103 Early Hints before the answer
  {"body_override": {"path_prefix": "/api/atlas/v2/groups", "body": "..."}}
                                                       the answer's body replaced (status kept)
  {"framing": {"path_prefix": "/api/atlas/v2/groups", "mode": "two_te"}}
        a hostile answer's framing: "two_te" (Transfer-Encoding: identity and
        then chunked; the chunk data is itself a whole second response),
        "te_and_length" (chunked with a Content-Length too), "te_no_body" (a
        HEAD answer that says chunked; it has no body), "until_close" (neither
        length nor chunks: the body ends when the connection closes)
  {"cert_content_type": "application/x-pem-file"}      Content-Type of the
        X.509 certificate POST answer (null = the API's usual one)
GET  /__fake/state     dump of the in-memory data
"""

import argparse
import atexit
import base64
import binascii
import copy
import datetime
import hashlib
import hmac
import http.server
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import string
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid

REALM = "MMS Public API"
ORG_ID = "4f0000000000000000000001"
GROUP_ID = "5f0000000000000000000001"
CLUSTER_ID = "6f0000000000000000000001"
SNAPSHOT_ID = "7f0000000000000000000001"
DEFAULT_CLIENT_ID = "mdb_sa_id_5f0000000000000000000fa1"
DEFAULT_CLIENT_SECRET = "mdb_sa_sk_fake-atlas-client-secret"
DEFAULT_DIGEST_PUBLIC = "fakepubk"
DEFAULT_DIGEST_PRIVATE = "fake-private-key-0001"
MAX_BODY = 16 * 1024 * 1024
MAX_LOG = 100000
MAX_NONCES = 20000
HEX24 = re.compile(r"^[0-9a-fA-F]{24}$")
VERSION_RE = re.compile(r"application/vnd\.atlas\.(\d{4}-\d{2}-\d{2})\+json", re.I)
FIRST_VERSION = datetime.date(2023, 1, 1)

REASONS = {
    200: "OK", 201: "Created", 202: "Accepted", 204: "No Content",
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 406: "Not Acceptable", 409: "Conflict",
    410: "Gone", 411: "Length Required", 413: "Payload Too Large",
    415: "Unsupported Media Type", 429: "Too Many Requests",
    500: "Internal Server Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Gateway Timeout",
}
DEFAULT_ERROR_CODES = {
    400: "INVALID_PARAMETER", 401: "UNAUTHORIZED", 403: "USER_UNAUTHORIZED",
    404: "RESOURCE_NOT_FOUND", 405: "METHOD_NOT_ALLOWED",
    406: "INVALID_VERSION_DATE", 409: "CONFLICT", 410: "API_VERSION_SUNSET",
    429: "RATE_LIMITED_TOKEN_BUCKET", 500: "UNEXPECTED_ERROR",
    502: "BAD_GATEWAY", 503: "SERVICE_UNAVAILABLE", 504: "GATEWAY_TIMEOUT",
}


def reason(status):
    return REASONS.get(status, http.server.BaseHTTPRequestHandler.responses.get(
        status, ("Unknown",))[0])


def now_iso():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_object_id():
    return "%08x%s" % (int(time.time()) & 0xFFFFFFFF, secrets.token_hex(8))


def iso_ts(ts):
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_public_key():
    """Programmatic API key public part: 8 lower-case letters (Atlas: e.g. "zmmrboas")."""
    return "".join(secrets.choice(string.ascii_lowercase) for _ in range(8))


def mask_private_key(pk):
    """How Atlas shows an API key's private part after creation."""
    return "********-****-****-" + pk[-12:]


def new_sa_secret():
    """Service account secret: "mdb_sa_sk_" + 40 URL-safe base64 characters
    (the shape of secrets seen in the wild)."""
    return "mdb_sa_sk_" + secrets.token_urlsafe(30)


def mask_sa_secret(sec):
    return "mdb_sa_sk_..." + sec[-4:]


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def md5hex(s):
    return hashlib.md5(s.encode("utf-8")).hexdigest()


def atlas_error(status, code=None, detail=None, params=None):
    code = code or DEFAULT_ERROR_CODES.get(status, "UNEXPECTED_ERROR")
    return {
        "detail": detail or "%s (fake Atlas)." % reason(status),
        "error": status,
        "errorCode": code,
        "parameters": list(params or []),
        "reason": reason(status),
    }


def oauth_error_body(status):
    if status == 400:
        return {"error": "invalid_request", "error_description": "Invalid request."}
    if status == 401:
        return {"error": "invalid_client", "error_description": "Invalid client credentials."}
    if status == 403:
        return {"error": "access_denied", "error_description": "Access denied."}
    if status == 429:
        return {"error": "rate_limited", "error_description": "Too many requests."}
    if status == 503:
        return {"error": "temporarily_unavailable", "error_description": "Service unavailable."}
    return {"error": "server_error", "error_description": "Internal server error."}


def deep_merge(base, over):
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            deep_merge(base[k], v)
        else:
            base[k] = copy.deepcopy(v)
    return base


class ApiError(Exception):
    def __init__(self, status, code=None, detail=None, params=None, headers=None):
        super().__init__(detail or code)
        self.status = status
        self.body = atlas_error(status, code, detail, params)
        self.headers = headers or {}


# --------------------------------------------------------------------------
# X.509 (Atlas-managed database user certificates)
# --------------------------------------------------------------------------

class X509Factory:
    """Issues real client certificates (RSA 2048, PKCS#8 key) with the openssl
    CLI, signed by a CA made once per process in a temporary directory (removed
    at exit)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.dir = None
        self.ca_pem = None

    @staticmethod
    def _run(args, cwd):
        try:
            r = subprocess.run(["openssl"] + args, cwd=cwd, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise ApiError(500, "UNEXPECTED_ERROR", "fake Atlas: cannot run openssl: %s" % e)
        if r.returncode != 0:
            raise ApiError(500, "UNEXPECTED_ERROR", "fake Atlas: openssl %s failed: %s"
                           % (args[0], r.stderr.decode("utf-8", "replace").strip()[-300:]))
        return r.stdout.decode("utf-8", "replace")

    def _ensure_ca(self):
        if self.dir:
            return
        d = tempfile.mkdtemp(prefix="fake_atlas_x509.")
        atexit.register(shutil.rmtree, d, True)
        self._run(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "3650",
                   "-keyout", "ca.key", "-out", "ca.pem",
                   "-subj", "/CN=fake Atlas database user CA/O=atlasgate tests",
                   "-addext", "basicConstraints=critical,CA:TRUE,pathlen:0",
                   "-addext", "keyUsage=critical,keyCertSign,cRLSign"], d)
        with open(os.path.join(d, "ca.pem")) as f:
            self.ca_pem = f.read()
        self.dir = d

    @staticmethod
    def _subj_escape(v):
        return re.sub(r"([\\/+=,])", r"\\\1", v)

    def issue(self, username, months):
        """-> {"serial", "certificate", "privateKey", "notAfter", "createdAt", "subject"}"""
        now = datetime.datetime.now(datetime.timezone.utc)
        y, mo = divmod(now.month - 1 + months, 12)
        y, mo = now.year + y, mo + 1
        day = min(now.day, [31, 29 if y % 4 == 0 and (y % 100 or y % 400 == 0) else 28,
                            31, 30, 31, 30, 31, 31, 30, 31, 30, 31][mo - 1])
        days = max(1, (datetime.date(y, mo, day) - now.date()).days)
        serial = secrets.randbits(62) | (1 << 62)   # positive int64, like Atlas' _id
        with self.lock:
            self._ensure_ca()
            work = tempfile.mkdtemp(dir=self.dir)
            try:
                with open(os.path.join(work, "ext.cnf"), "w") as f:
                    f.write("[v3]\nbasicConstraints = critical, CA:FALSE\n"
                            "keyUsage = critical, digitalSignature, keyEncipherment\n"
                            "extendedKeyUsage = clientAuth\n"
                            "subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n")
                self._run(["req", "-new", "-newkey", "rsa:2048", "-nodes", "-utf8",
                           "-keyout", "user.key", "-out", "user.csr",
                           "-subj", "/CN=" + self._subj_escape(username)], work)
                self._run(["x509", "-req", "-in", "user.csr", "-CA", os.path.join(self.dir, "ca.pem"),
                           "-CAkey", os.path.join(self.dir, "ca.key"), "-set_serial", str(serial),
                           "-days", str(days), "-sha256", "-extfile", "ext.cnf", "-extensions", "v3",
                           "-out", "user.pem"], work)
                end = self._run(["x509", "-in", "user.pem", "-noout", "-enddate"], work)
                with open(os.path.join(work, "user.pem")) as f:
                    cert = f.read()
                with open(os.path.join(work, "user.key")) as f:
                    key = f.read()
            finally:
                shutil.rmtree(work, ignore_errors=True)
        not_after = datetime.datetime.strptime(end.strip().split("=", 1)[1].replace(" GMT", ""),
                                               "%b %d %H:%M:%S %Y")
        return {"serial": serial, "certificate": cert, "privateKey": key,
                "createdAt": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "notAfter": not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "subject": "CN=" + username}


# --------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------

class State:
    def __init__(self, cfg):
        self.cfg = cfg
        self.lock = threading.RLock()
        self.started = time.time()
        self.conn_counter = 0
        self.req_counter = 0
        self.tokens = {}          # token -> {"client", "expires" (monotonic), "revoked",
                                  #           "minted", "secret_id"}
        self.nonces = {}          # nonce -> {"uses", "last_nc", "created"}
        self.max_active_tokens = cfg.max_active_tokens
        self.x509 = X509Factory()
        self.reset_log()
        self.clear_faults()
        self.seed()

    # ---- log / stats --------------------------------------------------
    def reset_log(self):
        with self.lock:
            self.log = []
            self.stats = {
                "token_requests": 0, "token_successes": 0, "token_failures": 0,
                "revoke_requests": 0, "api_requests": 0, "other_requests": 0,
                "connections": 0, "peak_connections": 0, "digest_challenges": 0,
                "by_status": {}, "by_auth": {},
            }

    def clear_faults(self):
        with self.lock:
            self.faults = {
                "token_fail": None, "token_delay_ms": 0, "api_status": [],
                "stall_ms": 0, "stall_count": -1,
                "reset_mid_response": 0, "close_after_headers": 0,
                "chunked": [], "delay_response": [], "cert_content_type": None,
                "early_hints": [], "body_override": [], "framing": [],
            }
            self.max_active_tokens = self.cfg.max_active_tokens

    @staticmethod
    def _response_rules(key, val):
        """Parse the chunked / delay_response fault: an object, a list of them,
        true (chunked: every response until cleared) or null/false (clear)."""
        if val is None or val is False:
            return []
        items = val if isinstance(val, list) else [val]
        rules = []
        for it in items:
            if it is True and key == "chunked":
                it = {"count": -1}
            if not isinstance(it, dict):
                raise ValueError("%s entries must be objects" % key)
            r = {"path_prefix": str(it.get("path_prefix", "/")),
                 "path_regex": it.get("path_regex"),
                 "method": (it.get("method") or "").upper() or None,
                 "count": int(it.get("count", 1))}
            if r["path_regex"] is not None:
                r["path_regex"] = str(r["path_regex"])
                try:
                    re.compile(r["path_regex"])
                except re.error as e:
                    raise ValueError("bad path_regex: %s" % e)
            if key == "chunked":
                r["chunks"] = max(1, int(it.get("chunks", 3)))
                r["chunk_delay_ms"] = max(0, int(it.get("chunk_delay_ms", 0)))
            elif key == "early_hints":
                pass
            elif key == "framing":
                r["mode"] = str(it.get("mode", ""))
                if r["mode"] not in ("two_te", "te_and_length", "te_no_body", "until_close"):
                    raise ValueError("framing mode must be two_te, te_and_length, te_no_body or until_close")
            elif key == "body_override":
                if not isinstance(it.get("body"), str):
                    raise ValueError("body_override entries need a string body")
                r["body"] = it["body"]
            else:
                if "ms" not in it:
                    raise ValueError("delay_response entries need ms")
                r["ms"] = max(0, int(it["ms"]))
                r["phase"] = str(it.get("phase", "before_headers"))
                if r["phase"] not in ("before_headers", "mid_body"):
                    raise ValueError("delay_response phase must be before_headers or mid_body")
            rules.append(r)
        return rules

    def take_rule(self, key, path, method):
        """First chunked / delay_response rule matching path+method, consumed
        (count -1 = unlimited); None when none matches. Caller holds the lock."""
        for r in self.faults[key]:
            if r["count"] == 0 or not path.startswith(r["path_prefix"]):
                continue
            if r["path_regex"] is not None and not re.search(r["path_regex"], path):
                continue
            if r["method"] and r["method"] != method:
                continue
            if r["count"] > 0:
                r["count"] -= 1
            return copy.deepcopy(r)
        return None

    def set_faults(self, spec):
        if not isinstance(spec, dict):
            raise ValueError("faults must be a JSON object")
        with self.lock:
            if spec.get("clear"):
                self.clear_faults()
            for key, val in spec.items():
                if key == "clear":
                    continue
                if key == "token_fail":
                    if val is None:
                        self.faults["token_fail"] = None
                        continue
                    if not isinstance(val, dict):
                        raise ValueError("token_fail must be an object")
                    tf = {"count": int(val.get("count", 1)),
                          "status": int(val.get("status", 500)),
                          "headers": dict(val.get("headers") or {})}
                    if "body" in val:
                        tf["body"] = val["body"]
                    self.faults["token_fail"] = tf
                elif key == "token_delay_ms":
                    self.faults["token_delay_ms"] = max(0, int(val or 0))
                elif key == "expire_tokens":
                    if val:
                        t = time.monotonic()
                        for rec in self.tokens.values():
                            rec["expires"] = min(rec["expires"], t)
                elif key == "revoke_tokens":
                    if val:
                        for rec in self.tokens.values():
                            rec["revoked"] = True
                elif key == "max_active_tokens":
                    self.max_active_tokens = int(val)
                elif key == "api_status":
                    items = [] if val is None else (val if isinstance(val, list) else [val])
                    rules = []
                    for it in items:
                        if not isinstance(it, dict) or "status" not in it:
                            raise ValueError("api_status entries need a status")
                        r = {"path_prefix": str(it.get("path_prefix", "/")),
                             "status": int(it["status"]),
                             "count": int(it.get("count", 1)),
                             "method": (it.get("method") or "").upper() or None,
                             "headers": dict(it.get("headers") or {})}
                        if "body" in it:
                            r["body"] = it["body"]
                        rules.append(r)
                    self.faults["api_status"] = rules
                elif key == "stall_ms":
                    self.faults["stall_ms"] = max(0, int(val or 0))
                    if "stall_count" not in spec:
                        self.faults["stall_count"] = -1
                elif key == "stall_count":
                    self.faults["stall_count"] = int(val)
                elif key in ("chunked", "delay_response", "early_hints", "body_override", "framing"):
                    self.faults[key] = self._response_rules(key, val)
                elif key == "cert_content_type":
                    if val is not None and not isinstance(val, str):
                        raise ValueError("cert_content_type must be a string or null")
                    self.faults[key] = val or None
                elif key in ("reset_mid_response", "close_after_headers"):
                    if val is True:
                        self.faults[key] = -1
                    elif not val:
                        self.faults[key] = 0
                    else:
                        self.faults[key] = int(val)
                else:
                    raise ValueError("unknown fault %r" % key)
            return self.faults_view()

    def faults_view(self):
        with self.lock:
            f = copy.deepcopy(self.faults)
            f["max_active_tokens"] = self.max_active_tokens
            return f

    @staticmethod
    def _take(faults, key):
        """Consume one use of a counted fault (-1 = unlimited)."""
        n = faults.get(key) or 0
        if n == 0:
            return False
        if n > 0:
            faults[key] = n - 1
        return True

    def count(self, key, n=1):
        with self.lock:
            self.stats[key] = self.stats.get(key, 0) + n

    # ---- tokens ------------------------------------------------------
    def active_tokens(self, client=None):
        t = time.monotonic()
        return sum(1 for r in self.tokens.values()
                   if not r["revoked"] and r["expires"] > t
                   and (client is None or r["client"] == client))

    def issue_token(self, client_id, secret_id=None):
        ttl = self.cfg.token_ttl
        iat = int(time.time())
        header = {"alg": "RS256", "kid": "fake-atlas", "typ": "JWT"}
        payload = {"iss": "https://cloud.mongodb.com", "sub": client_id, "cid": client_id,
                   "aud": "apiAtlas", "iat": iat, "exp": iat + ttl,
                   "jti": secrets.token_hex(12)}
        token = ".".join([b64url(json.dumps(header, separators=(",", ":")).encode()),
                          b64url(json.dumps(payload, separators=(",", ":")).encode()),
                          b64url(secrets.token_bytes(64))])
        with self.lock:
            t = time.monotonic()
            if len(self.tokens) > 50000:
                for k in [k for k, r in self.tokens.items() if r["expires"] <= t or r["revoked"]]:
                    del self.tokens[k]
            self.tokens[token] = {"client": client_id, "expires": t + ttl, "revoked": False,
                                  "minted": client_id in self.service_accounts,
                                  "secret_id": secret_id}
        return token

    def revoke_tokens_of(self, client_id, secret_id=None):
        """A deleted service account (or one of its secrets) stops working at once:
        the tokens it got are revoked. Caller holds the lock."""
        for rec in self.tokens.values():
            if rec["client"] == client_id and (secret_id is None or rec.get("secret_id") == secret_id):
                rec["revoked"] = True

    # ---- minted credentials ------------------------------------------------
    def api_key_private(self, public_key):
        """Private key of a live minted API key with this public key, else None."""
        with self.lock:
            for k in self.api_keys.values():
                if not k["deleted"] and k["publicKey"] == public_key:
                    return k["privateKey"]
        return None

    def sa_secret_match(self, client_id, secret):
        """The live, unexpired secret record of a minted service account that
        matches, else None."""
        with self.lock:
            sa = self.service_accounts.get(client_id)
            if sa is None or sa["deleted"]:
                return None
            now = time.time()
            for rec in sa["secrets"]:
                if rec["deleted"] or rec["expires_ts"] <= now:
                    continue
                if hmac.compare_digest(rec["secret"].encode(), secret.encode()):
                    return rec
        return None

    def check_token(self, token):
        with self.lock:
            rec = self.tokens.get(token)
            if rec is None:
                return "bearer:unknown"
            if rec["revoked"]:
                return "bearer:revoked"
            if rec["expires"] <= time.monotonic():
                return "bearer:expired"
            return "bearer:ok"

    # ---- digest nonces ----------------------------------------------
    def new_nonce(self):
        nonce = secrets.token_urlsafe(24)
        with self.lock:
            if len(self.nonces) >= MAX_NONCES:
                for k in sorted(self.nonces, key=lambda k: self.nonces[k]["created"])[:MAX_NONCES // 4]:
                    del self.nonces[k]
            self.nonces[nonce] = {"uses": 0, "last_nc": 0, "created": time.monotonic()}
            self.stats["digest_challenges"] += 1
        return nonce

    # ---- data ----------------------------------------------------------
    def seed(self):
        with self.lock:
            created = "2024-01-01T00:00:00Z"
            self.orgs = {ORG_ID: {"id": ORG_ID, "isDeleted": False, "links": [],
                                  "name": "Fake Org", "skipDefaultAlertsSettings": False}}
            self.groups = {GROUP_ID: {"clusterCount": 1, "created": created, "id": GROUP_ID,
                                      "links": [], "name": "demo", "orgId": ORG_ID,
                                      "tags": [], "withDefaultAlertsSettings": True}}
            self.clusters = {GROUP_ID: {"Cluster0": self.cluster_doc(
                GROUP_ID, "Cluster0", {}, CLUSTER_ID, created)}}
            self.flex = {GROUP_ID: {}}
            self.users = {GROUP_ID: {}}
            self.access = {GROUP_ID: {}}
            self.snapshots = {(GROUP_ID, "Cluster0"): {SNAPSHOT_ID: self.snapshot_doc(
                SNAPSHOT_ID, "Cluster0", {"description": "seed snapshot"}, created)}}
            self.snapshots[(GROUP_ID, "Cluster0")][SNAPSHOT_ID]["status"] = "completed"
            # minted credentials (introspection: GET /__fake/minted)
            for cid in list(getattr(self, "service_accounts", {})):
                self.revoke_tokens_of(cid)
            self.api_keys = {}            # id -> {"id","desc","publicKey","privateKey","orgId","roles",...}
            self.service_accounts = {}    # clientId -> {..., "secrets": [{"id","secret",...}]}
            self.db_creds = []            # one record per database user created through the API
            self.db_cred_idx = {}         # (groupId, databaseName, username) -> live record
            self.certs = []               # X.509 certificates issued (with their private keys)

    @staticmethod
    def cluster_doc(gid, name, body, cid=None, created=None):
        low = name.lower()
        doc = {
            "backupEnabled": False,
            "biConnector": {"enabled": False, "readPreference": "secondary"},
            "clusterType": "REPLICASET",
            "connectionStrings": {
                "standard": "mongodb://%s-shard-00-00.fake0.mongodb.net:27017" % low,
                "standardSrv": "mongodb+srv://%s.fake0.mongodb.net" % low,
            },
            "createDate": created or now_iso(),
            "diskWarmingMode": "FULLY_WARMED",
            "encryptionAtRestProvider": "NONE",
            "globalClusterSelfManagedSharding": False,
            "groupId": gid,
            "id": cid or new_object_id(),
            "labels": [],
            "links": [],
            "mongoDBMajorVersion": "8.0",
            "mongoDBVersion": "8.0.4",
            "name": name,
            "paused": False,
            "pitEnabled": False,
            "redactClientLogData": False,
            "replicationSpecs": [{
                "id": "6f00000000000000000000a1" if cid == CLUSTER_ID else new_object_id(),
                "regionConfigs": [{
                    "electableSpecs": {"instanceSize": "M10", "nodeCount": 3},
                    "priority": 7, "providerName": "AWS", "regionName": "US_EAST_1"}],
                "zoneId": "6f00000000000000000000b1" if cid == CLUSTER_ID else new_object_id(),
                "zoneName": "Zone 1"}],
            "rootCertType": "ISRGROOTX1",
            "stateName": "IDLE",
            "tags": [],
            "terminationProtectionEnabled": False,
            "versionReleaseSystem": "LTS",
        }
        body = {k: v for k, v in body.items() if k not in ("id", "groupId", "createDate", "links")}
        if "replicationSpecs" in body:
            doc["replicationSpecs"] = copy.deepcopy(body.pop("replicationSpecs"))
        return deep_merge(doc, body)

    @staticmethod
    def snapshot_doc(sid, cname, body, created=None):
        created = created or now_iso()
        days = int(body.get("retentionInDays", 1) or 1)
        exp = (datetime.datetime.now(datetime.timezone.utc) +
               datetime.timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {"createdAt": created, "description": str(body.get("description", "")),
                "expiresAt": exp, "frequencyType": "ondemand", "id": sid, "links": [],
                "mongodVersion": "8.0.4", "policyItems": [], "replicaSetName": cname,
                "snapshotType": "onDemand", "status": "queued",
                "storageSizeBytes": 1048576, "type": "replicaSet"}


# --------------------------------------------------------------------------
# API routing
# --------------------------------------------------------------------------

class Api:
    """Dispatches /api/atlas/<ver>/... ; raises ApiError; returns (status, body|None)."""

    def __init__(self, state):
        self.st = state

    # ---- helpers -------------------------------------------------------
    @staticmethod
    def page(items, query):
        try:
            page_num = max(1, int(query.get("pageNum", ["1"])[0]))
            per = max(1, min(500, int(query.get("itemsPerPage", ["100"])[0])))
        except ValueError:
            raise ApiError(400, "INVALID_QUERY_PARAMETER",
                           "Invalid pageNum or itemsPerPage.", ["pageNum"])
        items = list(items)
        start = (page_num - 1) * per
        return {"links": [], "results": copy.deepcopy(items[start:start + per]),
                "totalCount": len(items)}

    def group(self, gid):
        if not HEX24.match(gid):
            raise ApiError(400, "INVALID_GROUP_ID",
                           "An invalid group ID %s was specified." % gid, [gid])
        g = self.st.groups.get(gid)
        if g is None:
            raise ApiError(404, "GROUP_NOT_FOUND", "No group with ID %s exists." % gid, [gid])
        return g

    def org(self, oid):
        if not HEX24.match(oid):
            raise ApiError(400, "INVALID_ORG_ID",
                           "An invalid organization ID %s was specified." % oid, [oid])
        o = self.st.orgs.get(oid)
        if o is None:
            raise ApiError(404, "ORG_NOT_FOUND", "No organization with ID %s exists." % oid, [oid])
        return o

    def cluster(self, gid, name):
        self.group(gid)
        c = self.st.clusters.setdefault(gid, {}).get(name)
        if c is None:
            raise ApiError(404, "CLUSTER_NOT_FOUND",
                           "No cluster named %s exists in group %s." % (name, gid), [name, gid])
        return c

    @staticmethod
    def obj(body):
        if body is None:
            return {}
        if not isinstance(body, dict):
            raise ApiError(400, "INVALID_JSON", "Received JSON is not an object.")
        return body

    @staticmethod
    def methods(method, allowed):
        if method == "HEAD" and "GET" in allowed:
            return
        if method not in allowed:
            raise ApiError(405, "METHOD_NOT_ALLOWED",
                           "Method %s is not allowed on this resource." % method, [method],
                           headers={"Allow": ", ".join(allowed)})

    # ---- dispatch -----------------------------------------------------
    def handle(self, method, segs, query, body):
        m = "GET" if method == "HEAD" else method
        n = len(segs)
        if n == 0:
            raise ApiError(404, "RESOURCE_NOT_FOUND", "Cannot find resource.")
        with self.st.lock:
            if segs[0] == "orgs":
                return self.orgs(m, segs[1:], query, body)
            if segs[0] == "groups":
                return self.groups(m, segs[1:], query, body)
        raise ApiError(404, "RESOURCE_NOT_FOUND", "Cannot find resource /%s." % "/".join(segs))

    def orgs(self, m, segs, query, body):
        st = self.st
        if not segs:
            self.methods(m, ["GET"])
            return 200, self.page(st.orgs.values(), query)
        oid = segs[0]
        if len(segs) == 1:
            self.methods(m, ["GET", "PATCH", "DELETE"])
            o = self.org(oid)
            if m == "GET":
                return 200, copy.deepcopy(o)
            if m == "PATCH":
                b = self.obj(body)
                if "name" in b:
                    if not isinstance(b["name"], str) or not b["name"]:
                        raise ApiError(400, "INVALID_ATTRIBUTE", "Invalid attribute name specified.", ["name"])
                    o["name"] = b["name"]
                if "skipDefaultAlertsSettings" in b:
                    o["skipDefaultAlertsSettings"] = bool(b["skipDefaultAlertsSettings"])
                return 200, copy.deepcopy(o)
            if any(g["orgId"] == oid for g in st.groups.values()):
                raise ApiError(409, "CANNOT_DELETE_ORG_ACTIVE_PROJECTS",
                               "Organization %s still has active projects." % oid, [oid])
            del st.orgs[oid]
            for k in st.api_keys.values():
                if k["orgId"] == oid and not k["deleted"]:
                    k["deleted"], k["deletedAt"] = True, now_iso()
            for sa in st.service_accounts.values():
                if sa["orgId"] == oid and not sa["deleted"]:
                    self.delete_sa(sa)
            return 204, None
        if len(segs) == 2 and segs[1] == "groups":
            self.methods(m, ["GET"])
            self.org(oid)
            return 200, self.page([g for g in st.groups.values() if g["orgId"] == oid], query)
        if len(segs) >= 2 and segs[1] == "apiKeys":
            self.org(oid)
            return self.org_api_keys(m, oid, segs[2:], query, body)
        if len(segs) >= 2 and segs[1] == "serviceAccounts":
            self.org(oid)
            return self.service_accounts(m, oid, None, segs[2:], query, body)
        raise ApiError(404, "RESOURCE_NOT_FOUND", "Cannot find resource.")

    def groups(self, m, segs, query, body):
        st = self.st
        if not segs:
            self.methods(m, ["GET", "POST"])
            if m == "GET":
                return 200, self.page(st.groups.values(), query)
            b = self.obj(body)
            name = b.get("name")
            if not name:
                raise ApiError(400, "MISSING_ATTRIBUTE", "The required attribute name was not specified.", ["name"])
            if not isinstance(name, str) or len(name) > 64:
                raise ApiError(400, "INVALID_ATTRIBUTE", "Invalid attribute name specified.", ["name"])
            org_id = b.get("orgId") or ORG_ID
            self.org(org_id)
            if any(g["name"] == name for g in st.groups.values()):
                raise ApiError(409, "GROUP_ALREADY_EXISTS",
                               "A group with name \"%s\" already exists." % name, [name])
            gid = new_object_id()
            g = {"clusterCount": 0, "created": now_iso(), "id": gid, "links": [], "name": name,
                 "orgId": org_id, "tags": copy.deepcopy(b.get("tags") or []),
                 "withDefaultAlertsSettings": bool(b.get("withDefaultAlertsSettings", True))}
            st.groups[gid] = g
            st.clusters[gid] = {}
            st.flex[gid] = {}
            st.users[gid] = {}
            st.access[gid] = {}
            return 200, copy.deepcopy(g)
        if segs[0] == "byName" and len(segs) == 2:
            self.methods(m, ["GET"])
            for g in st.groups.values():
                if g["name"] == segs[1]:
                    return 200, self.group_view(g)
            raise ApiError(404, "GROUP_NAME_NOT_FOUND", "No group with name %s exists." % segs[1], [segs[1]])
        gid = segs[0]
        if len(segs) == 1:
            self.methods(m, ["GET", "PATCH", "DELETE"])
            g = self.group(gid)
            if m == "GET":
                return 200, self.group_view(g)
            if m == "PATCH":
                b = self.obj(body)
                if "name" in b:
                    if not isinstance(b["name"], str) or not b["name"]:
                        raise ApiError(400, "INVALID_ATTRIBUTE", "Invalid attribute name specified.", ["name"])
                    g["name"] = b["name"]
                if "tags" in b:
                    g["tags"] = copy.deepcopy(b["tags"])
                return 200, self.group_view(g)
            if st.clusters.get(gid) or st.flex.get(gid):
                raise ApiError(409, "CANNOT_CLOSE_GROUP_ACTIVE_ATLAS_CLUSTERS",
                               "Cannot close group %s while it has active clusters; terminate them first." % gid,
                               [gid])
            for store in (st.groups, st.clusters, st.flex, st.users, st.access):
                store.pop(gid, None)
            for k in [k for k in st.snapshots if k[0] == gid]:
                del st.snapshots[k]
            for k in st.api_keys.values():
                k["roles"] = [r for r in k["roles"] if r.get("groupId") != gid]
            for sa in st.service_accounts.values():
                if sa["groupId"] == gid and not sa["deleted"]:
                    self.delete_sa(sa)
            for key in [key for key in st.db_cred_idx if key[0] == gid]:
                st.db_cred_idx.pop(key)["deleted"] = True
            return 204, None
        self.group(gid)
        kind, rest = segs[1], segs[2:]
        if kind == "clusters":
            return self.clusters(m, gid, rest, query, body)
        if kind == "flexClusters":
            return self.flex_clusters(m, gid, rest, query, body)
        if kind == "databaseUsers":
            return self.db_users(m, gid, rest, query, body)
        if kind in ("accessList", "whitelist"):
            return self.access_list(m, gid, rest, query, body)
        if kind == "apiKeys":
            return self.group_api_keys(m, gid, rest, query, body)
        if kind == "serviceAccounts":
            return self.service_accounts(m, st.groups[gid]["orgId"], gid, rest, query, body)
        raise ApiError(404, "RESOURCE_NOT_FOUND", "Cannot find resource.")

    def group_view(self, g):
        g = copy.deepcopy(g)
        g["clusterCount"] = len(self.st.clusters.get(g["id"], {})) + len(self.st.flex.get(g["id"], {}))
        return g

    def clusters(self, m, gid, segs, query, body):
        st = self.st
        cl = st.clusters.setdefault(gid, {})
        if not segs:
            self.methods(m, ["GET", "POST"])
            if m == "GET":
                return 200, self.page(cl.values(), query)
            b = self.obj(body)
            name = b.get("name")
            if not name:
                raise ApiError(400, "MISSING_ATTRIBUTE", "The required attribute name was not specified.", ["name"])
            if not isinstance(name, str) or not re.match(r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$", name):
                raise ApiError(400, "CLUSTER_NAME_INVALID", "Cluster name \"%s\" is invalid." % name, [name])
            if name in cl or name in st.flex.get(gid, {}):
                raise ApiError(400, "DUPLICATE_CLUSTER_NAME",
                               "A cluster named %s is already present in group %s." % (name, gid), [name, gid])
            doc = st.cluster_doc(gid, name, b)
            doc["stateName"] = "IDLE"
            cl[name] = doc
            resp = copy.deepcopy(doc)
            resp["stateName"] = "CREATING"
            return 201, resp
        name = segs[0]
        if len(segs) == 1:
            self.methods(m, ["GET", "PATCH", "DELETE"])
            c = self.cluster(gid, name)
            if m == "GET":
                return 200, copy.deepcopy(c)
            if m == "PATCH":
                b = self.obj(body)
                if "name" in b and b["name"] != name:
                    raise ApiError(400, "CLUSTER_NAME_CANNOT_BE_CHANGED", "Cluster name cannot be changed.", [name])
                b = {k: v for k, v in b.items() if k not in ("id", "groupId", "createDate", "links", "name")}
                if "replicationSpecs" in b:
                    c["replicationSpecs"] = copy.deepcopy(b.pop("replicationSpecs"))
                deep_merge(c, b)
                return 200, copy.deepcopy(c)
            if c.get("terminationProtectionEnabled"):
                raise ApiError(400, "CANNOT_TERMINATE_CLUSTER_WHEN_TERMINATION_PROTECTION_ENABLED",
                               "Cannot terminate cluster %s while termination protection is enabled." % name,
                               [name])
            del cl[name]
            st.snapshots.pop((gid, name), None)
            return 202, None
        if len(segs) >= 3 and segs[1] == "backup" and segs[2] == "snapshots":
            return self.snapshots(m, gid, name, segs[3:], query, body)
        raise ApiError(404, "RESOURCE_NOT_FOUND", "Cannot find resource.")

    def snapshots(self, m, gid, cname, segs, query, body):
        st = self.st
        self.cluster(gid, cname)
        snaps = st.snapshots.setdefault((gid, cname), {})
        if not segs:
            self.methods(m, ["GET", "POST"])
            if m == "GET":
                return 200, self.page(snaps.values(), query)
            b = self.obj(body)
            sid = new_object_id()
            snaps[sid] = st.snapshot_doc(sid, cname, b)
            return 200, copy.deepcopy(snaps[sid])
        if len(segs) != 1:
            raise ApiError(404, "RESOURCE_NOT_FOUND", "Cannot find resource.")
        sid = segs[0]
        self.methods(m, ["GET", "PATCH", "DELETE"])
        s = snaps.get(sid)
        if s is None:
            raise ApiError(404, "SNAPSHOT_NOT_FOUND", "No snapshot with ID %s exists for cluster %s." % (sid, cname),
                           [sid, cname])
        if m == "GET":
            return 200, copy.deepcopy(s)
        if m == "PATCH":
            b = self.obj(body)
            if "expiresAt" in b:
                s["expiresAt"] = str(b["expiresAt"])
            if "retentionValue" in b:
                unit = str(b.get("retentionUnit", "DAYS")).upper()
                mult = {"DAYS": 1, "WEEKS": 7, "MONTHS": 31, "YEARS": 366}.get(unit, 1)
                s["expiresAt"] = (datetime.datetime.now(datetime.timezone.utc) +
                                  datetime.timedelta(days=int(b["retentionValue"]) * mult)
                                  ).strftime("%Y-%m-%dT%H:%M:%SZ")
            if "description" in b:
                s["description"] = str(b["description"])
            return 200, copy.deepcopy(s)
        del snaps[sid]
        return 204, None

    def flex_clusters(self, m, gid, segs, query, body):
        st = self.st
        fl = st.flex.setdefault(gid, {})
        if not segs:
            self.methods(m, ["GET", "POST"])
            if m == "GET":
                return 200, self.page(fl.values(), query)
            b = self.obj(body)
            name = b.get("name")
            if not name or not isinstance(name, str):
                raise ApiError(400, "MISSING_ATTRIBUTE", "The required attribute name was not specified.", ["name"])
            if name in fl or name in st.clusters.get(gid, {}):
                raise ApiError(400, "DUPLICATE_CLUSTER_NAME",
                               "A cluster named %s is already present in group %s." % (name, gid), [name, gid])
            doc = {"backupSettings": {"enabled": True}, "clusterType": "REPLICASET",
                   "connectionStrings": {"standardSrv": "mongodb+srv://%s.fake0.mongodb.net" % name.lower()},
                   "createDate": now_iso(), "groupId": gid, "id": new_object_id(), "links": [],
                   "mongoDBVersion": "8.0.4", "name": name,
                   "providerSettings": {"backingProviderName": "AWS", "diskSizeGB": 5.0,
                                        "providerName": "FLEX", "regionName": "US_EAST_1"},
                   "stateName": "IDLE", "tags": [], "terminationProtectionEnabled": False,
                   "versionReleaseSystem": "LTS"}
            deep_merge(doc, {k: v for k, v in b.items() if k not in ("id", "groupId", "links")})
            fl[name] = doc
            resp = copy.deepcopy(doc)
            resp["stateName"] = "CREATING"
            return 201, resp
        if len(segs) != 1:
            raise ApiError(404, "RESOURCE_NOT_FOUND", "Cannot find resource.")
        name = segs[0]
        self.methods(m, ["GET", "PATCH", "DELETE"])
        f = fl.get(name)
        if f is None:
            raise ApiError(404, "CLUSTER_NOT_FOUND",
                           "No cluster named %s exists in group %s." % (name, gid), [name, gid])
        if m == "GET":
            return 200, copy.deepcopy(f)
        if m == "PATCH":
            deep_merge(f, {k: v for k, v in self.obj(body).items()
                           if k not in ("id", "groupId", "links", "name")})
            return 200, copy.deepcopy(f)
        del fl[name]
        return 202, None

    def db_users(self, m, gid, segs, query, body):
        st = self.st
        us = st.users.setdefault(gid, {})
        if not segs:
            self.methods(m, ["GET", "POST"])
            if m == "GET":
                return 200, self.page(us.values(), query)
            b = self.obj(body)
            user = b.get("username")
            if not user or not isinstance(user, str):
                raise ApiError(400, "MISSING_ATTRIBUTE", "The required attribute username was not specified.",
                               ["username"])
            db = b.get("databaseName") or "admin"
            pw = self.check_password(b)
            if (db, user) in us:
                raise ApiError(409, "USER_ALREADY_EXISTS",
                               "The user specified (%s) already exists." % user, [user])
            doc = {"awsIAMType": "NONE", "databaseName": db, "groupId": gid, "labels": [],
                   "ldapAuthType": "NONE", "links": [], "oidcAuthType": "NONE",
                   "roles": [], "scopes": [], "username": user, "x509Type": "NONE"}
            deep_merge(doc, {k: v for k, v in b.items() if k not in ("password", "groupId", "links")})
            doc["databaseName"] = db
            us[(db, user)] = doc
            rec = {"groupId": gid, "databaseName": db, "username": user, "password": pw,
                   "passwords": [pw] if pw is not None else [], "createdAt": now_iso(), "deleted": False}
            st.db_creds.append(rec)
            st.db_cred_idx[(gid, db, user)] = rec
            return 201, copy.deepcopy(doc)
        if len(segs) == 2 and segs[1] == "certs" and (m == "POST" or (segs[0], "certs") not in us):
            return self.user_certs(m, gid, segs[0], query, body)
        if len(segs) != 2:
            raise ApiError(404, "RESOURCE_NOT_FOUND", "Cannot find resource.")
        db, user = segs
        self.methods(m, ["GET", "PATCH", "DELETE"])
        u = us.get((db, user))
        if u is None:
            raise ApiError(404, "USERNAME_NOT_FOUND", "No user with username %s exists." % user, [user])
        if m == "GET":
            return 200, copy.deepcopy(u)
        if m == "PATCH":
            raw = self.obj(body)
            pw = self.check_password(raw)
            b = {k: v for k, v in raw.items()
                 if k not in ("password", "groupId", "links", "username", "databaseName")}
            for k, v in b.items():
                u[k] = copy.deepcopy(v)
            if pw is not None:
                rec = st.db_cred_idx.get((gid, db, user))
                if rec is None:
                    rec = {"groupId": gid, "databaseName": db, "username": user, "password": None,
                           "passwords": [], "createdAt": now_iso(), "deleted": False}
                    st.db_creds.append(rec)
                    st.db_cred_idx[(gid, db, user)] = rec
                rec["password"] = pw
                rec["passwords"].append(pw)
            return 200, copy.deepcopy(u)
        del us[(db, user)]
        rec = st.db_cred_idx.pop((gid, db, user), None)
        if rec is not None:
            rec["deleted"] = True
        return 204, None

    @staticmethod
    def check_password(b):
        if "password" not in b or b["password"] is None:
            return None
        pw = b["password"]
        if not isinstance(pw, str) or not pw:
            raise ApiError(400, "INVALID_ATTRIBUTE", "Invalid attribute password specified.", ["password"])
        return pw

    # ---- X.509 -------------------------------------------------------------
    def user_certs(self, m, gid, username, query, body):
        """POST/GET /groups/{g}/databaseUsers/{username}/certs"""
        st = self.st
        self.methods(m, ["GET", "POST"])
        users = [u for (db, name), u in st.users.get(gid, {}).items() if name == username]
        if not users:
            raise ApiError(404, "USERNAME_NOT_FOUND", "No user with username %s exists." % username, [username])
        if m == "GET":
            now = now_iso()
            return 200, self.page([{"_id": c["serial"], "createdAt": c["createdAt"], "groupId": gid,
                                    "links": [], "notAfter": c["notAfter"], "subject": c["subject"]}
                                   for c in st.certs
                                   if c["groupId"] == gid and c["username"] == username and c["notAfter"] > now],
                                  query)
        b = self.obj(body)
        months = b.get("monthsUntilExpiration", 3)
        if months is None:
            months = 3
        if isinstance(months, bool) or not isinstance(months, int) or not 1 <= months <= 24:
            raise ApiError(400, "INVALID_ATTRIBUTE",
                           "Invalid attribute monthsUntilExpiration specified (1 to 24).",
                           ["monthsUntilExpiration"])
        if not any(u.get("x509Type") == "MANAGED" for u in users):
            raise ApiError(400, "USER_NOT_X509_MANAGED",
                           "The database user %s does not use Atlas-managed X.509 authentication "
                           "(x509Type MANAGED)." % username, [username])
        c = st.x509.issue(username, months)
        c.update({"groupId": gid, "username": username, "monthsUntilExpiration": months})
        st.certs.append(c)
        return 201, c["certificate"] + c["privateKey"], "x509"

    # ---- programmatic API keys ---------------------------------------------
    @staticmethod
    def api_key_view(k, reveal=False):
        return {"desc": k["desc"], "id": k["id"],
                "links": [{"href": "https://cloud.mongodb.com/api/atlas/v2/orgs/%s/apiKeys/%s"
                                   % (k["orgId"], k["id"]), "rel": "self"}],
                "privateKey": k["privateKey"] if reveal else mask_private_key(k["privateKey"]),
                "publicKey": k["publicKey"], "roles": copy.deepcopy(k["roles"])}

    @staticmethod
    def check_desc(b, required):
        if b.get("desc") is None:
            if required:
                raise ApiError(400, "MISSING_ATTRIBUTE", "The required attribute desc was not specified.", ["desc"])
            return None
        d = b["desc"]
        if not isinstance(d, str) or not 1 <= len(d) <= 250:
            raise ApiError(400, "INVALID_ATTRIBUTE", "Invalid attribute desc specified.", ["desc"])
        return d

    @staticmethod
    def check_roles(roles, prefix, required):
        """roles: list of role names, all starting with prefix (ORG_ / GROUP_)."""
        if roles is None:
            if required:
                raise ApiError(400, "MISSING_ATTRIBUTE", "The required attribute roles was not specified.", ["roles"])
            return None
        if not isinstance(roles, list) or not roles or not all(isinstance(r, str) for r in roles):
            raise ApiError(400, "INVALID_ATTRIBUTE",
                           "Invalid attribute roles specified: a non-empty list of role names is required.",
                           ["roles"])
        for r in roles:
            if not re.match(r"^%s[A-Z_]+$" % prefix, r):
                raise ApiError(400, "INVALID_ENUM_VALUE",
                               "An invalid enumeration value %s was specified." % r, [r])
        out = []
        for r in roles:
            if r not in out:
                out.append(r)
        return out

    def api_key_by_id(self, kid, oid):
        k = self.st.api_keys.get(kid)
        if k is None or k["deleted"] or k["orgId"] != oid:
            raise ApiError(404, "API_KEY_NOT_FOUND", "No API key with ID %s exists." % kid, [kid])
        return k

    def mint_api_key(self, oid, desc, roles, gid=None):
        st = self.st
        used = {k["publicKey"] for k in st.api_keys.values()} | {st.cfg.digest_public_key}
        pub = new_public_key()
        while pub in used:
            pub = new_public_key()
        k = {"id": new_object_id(), "desc": desc, "publicKey": pub, "privateKey": str(uuid.uuid4()),
             "orgId": oid, "createdInGroup": gid, "roles": roles, "createdAt": now_iso(),
             "deleted": False, "deletedAt": None}
        st.api_keys[k["id"]] = k
        return k

    def org_api_keys(self, m, oid, segs, query, body):
        """/orgs/{orgId}/apiKeys[/{apiUserId}]"""
        st = self.st
        if not segs:
            self.methods(m, ["GET", "POST"])
            if m == "GET":
                return 200, self.page([self.api_key_view(k) for k in st.api_keys.values()
                                       if not k["deleted"] and k["orgId"] == oid], query)
            b = self.obj(body)
            desc = self.check_desc(b, True)
            roles = self.check_roles(b.get("roles"), "ORG_", True)
            k = self.mint_api_key(oid, desc, [{"orgId": oid, "roleName": r} for r in roles])
            return 200, self.api_key_view(k, reveal=True)
        if len(segs) != 1:
            raise ApiError(404, "RESOURCE_NOT_FOUND", "Cannot find resource.")
        self.methods(m, ["GET", "PATCH", "DELETE"])
        k = self.api_key_by_id(segs[0], oid)
        if m == "GET":
            return 200, self.api_key_view(k)
        if m == "PATCH":
            b = self.obj(body)
            desc = self.check_desc(b, False)
            roles = self.check_roles(b.get("roles"), "ORG_", False)
            if desc is None and roles is None:
                raise ApiError(400, "MISSING_ATTRIBUTE",
                               "At least one of the attributes desc or roles must be specified.", ["desc", "roles"])
            if desc is not None:
                k["desc"] = desc
            if roles is not None:
                k["roles"] = ([{"orgId": oid, "roleName": r} for r in roles] +
                              [r for r in k["roles"] if "groupId" in r])
            return 200, self.api_key_view(k)
        k["deleted"], k["deletedAt"] = True, now_iso()
        return 204, None

    def group_api_keys(self, m, gid, segs, query, body):
        """/groups/{groupId}/apiKeys[/{apiUserId}]"""
        st = self.st
        oid = st.groups[gid]["orgId"]

        def assigned(k):
            return any(r.get("groupId") == gid for r in k["roles"])

        def project_roles(k, names):
            return ([r for r in k["roles"] if r.get("groupId") != gid] +
                    [{"groupId": gid, "roleName": n} for n in names])

        if not segs:
            self.methods(m, ["GET", "POST"])
            if m == "GET":
                return 200, self.page([self.api_key_view(k) for k in st.api_keys.values()
                                       if not k["deleted"] and assigned(k)], query)
            b = self.obj(body)
            desc = self.check_desc(b, True)
            roles = self.check_roles(b.get("roles"), "GROUP_", True)
            # a project key is an organization key with ORG_MEMBER plus its project roles
            k = self.mint_api_key(oid, desc, [{"orgId": oid, "roleName": "ORG_MEMBER"}] +
                                  [{"groupId": gid, "roleName": r} for r in roles], gid)
            return 200, self.api_key_view(k, reveal=True)
        if len(segs) != 1:
            raise ApiError(404, "RESOURCE_NOT_FOUND", "Cannot find resource.")
        self.methods(m, ["POST", "PATCH", "DELETE"])
        k = self.api_key_by_id(segs[0], oid)
        if m == "POST":   # assign an existing organization key: body [{"roleName": ...}, ...]
            if not isinstance(body, list):
                raise ApiError(400, "INVALID_JSON", "Expected a JSON array of role assignments.")
            names = [r.get("roleName") if isinstance(r, dict) else r for r in body]
            k["roles"] = project_roles(k, self.check_roles(names, "GROUP_", True))
            return 204, None
        if not assigned(k):
            raise ApiError(404, "API_KEY_NOT_FOUND",
                           "No API key with ID %s is assigned to group %s." % (k["id"], gid), [k["id"], gid])
        if m == "PATCH":
            b = self.obj(body)
            desc = self.check_desc(b, False)
            roles = self.check_roles(b.get("roles"), "GROUP_", False)
            if desc is None and roles is None:
                raise ApiError(400, "MISSING_ATTRIBUTE",
                               "At least one of the attributes desc or roles must be specified.", ["desc", "roles"])
            if desc is not None:
                k["desc"] = desc
            if roles is not None:
                k["roles"] = project_roles(k, roles)
            return 200, self.api_key_view(k)
        k["roles"] = [r for r in k["roles"] if r.get("groupId") != gid]   # unassign; the key lives on
        return 204, None

    # ---- service accounts --------------------------------------------------
    @staticmethod
    def sa_secret_view(rec, reveal=False):
        d = {"createdAt": rec["createdAt"], "expiresAt": rec["expiresAt"], "id": rec["id"]}
        if reveal:
            d["secret"] = rec["secret"]
        else:
            if rec["lastUsedAt"]:
                d["lastUsedAt"] = rec["lastUsedAt"]
            d["maskedSecretValue"] = mask_sa_secret(rec["secret"])
        return d

    def sa_view(self, sa, reveal=False):
        return {"clientId": sa["clientId"], "createdAt": sa["createdAt"], "description": sa["description"],
                "name": sa["name"], "roles": list(sa["roles"]),
                "secrets": [self.sa_secret_view(r, reveal) for r in sa["secrets"] if not r["deleted"]]}

    @staticmethod
    def check_sa_text(b, key, maxlen, required):
        if b.get(key) is None:
            if required:
                raise ApiError(400, "MISSING_ATTRIBUTE",
                               "The required attribute %s was not specified." % key, [key])
            return None
        v = b[key]
        if (not isinstance(v, str) or not 1 <= len(v) <= maxlen
                or not all(ch.isalnum() or ch in "-_.,' " for ch in v)):
            raise ApiError(400, "INVALID_ATTRIBUTE", "Invalid attribute %s specified." % key, [key])
        return v

    @staticmethod
    def check_hours(b):
        h = b.get("secretExpiresAfterHours")
        if h is None:
            raise ApiError(400, "MISSING_ATTRIBUTE",
                           "The required attribute secretExpiresAfterHours was not specified.",
                           ["secretExpiresAfterHours"])
        if isinstance(h, bool) or not isinstance(h, int) or h <= 0:
            raise ApiError(400, "INVALID_ATTRIBUTE", "Invalid attribute secretExpiresAfterHours specified.",
                           ["secretExpiresAfterHours"])
        return h

    @staticmethod
    def new_sa_secret_rec(hours):
        t = time.time()
        return {"id": new_object_id(), "secret": new_sa_secret(), "createdAt": iso_ts(t),
                "expiresAt": iso_ts(t + hours * 3600), "expires_ts": t + hours * 3600,
                "lastUsedAt": None, "deleted": False}

    def delete_sa(self, sa):
        sa["deleted"], sa["deletedAt"] = True, now_iso()
        self.st.revoke_tokens_of(sa["clientId"])

    def service_accounts(self, m, oid, gid, segs, query, body):
        """/orgs/{orgId}/serviceAccounts/... (gid None) and /groups/{groupId}/serviceAccounts/..."""
        st = self.st
        prefix = "GROUP_" if gid else "ORG_"
        if not segs:
            self.methods(m, ["GET", "POST"])
            if m == "GET":
                return 200, self.page([self.sa_view(sa) for sa in st.service_accounts.values()
                                       if not sa["deleted"] and sa["orgId"] == oid
                                       and (gid is None or sa["groupId"] == gid)], query)
            b = self.obj(body)
            name = self.check_sa_text(b, "name", 64, True)
            desc = self.check_sa_text(b, "description", 250, True)
            roles = self.check_roles(b.get("roles"), prefix, True)
            hours = self.check_hours(b)
            cid = "mdb_sa_id_" + new_object_id()
            while cid in st.service_accounts or cid == st.cfg.client_id:
                cid = "mdb_sa_id_" + new_object_id()
            sa = {"clientId": cid, "name": name, "description": desc, "roles": roles,
                  "createdAt": now_iso(), "orgId": oid, "groupId": gid, "deleted": False, "deletedAt": None,
                  "secrets": [self.new_sa_secret_rec(hours)]}
            st.service_accounts[cid] = sa
            return 201, self.sa_view(sa, reveal=True)
        cid = segs[0]
        sa = st.service_accounts.get(cid)
        if (sa is None or sa["deleted"] or sa["orgId"] != oid
                or (gid is not None and sa["groupId"] != gid)):
            raise ApiError(404, "SERVICE_ACCOUNT_NOT_FOUND",
                           "Service Account with client ID %s not found." % cid, [cid])
        if len(segs) == 1:
            self.methods(m, ["GET", "PATCH", "DELETE"])
            if m == "GET":
                return 200, self.sa_view(sa)
            if m == "PATCH":
                b = self.obj(body)
                name = self.check_sa_text(b, "name", 64, False)
                desc = self.check_sa_text(b, "description", 250, False)
                roles = self.check_roles(b.get("roles"), prefix, False)
                if name is not None:
                    sa["name"] = name
                if desc is not None:
                    sa["description"] = desc
                if roles is not None:
                    sa["roles"] = roles
                return 200, self.sa_view(sa)
            self.delete_sa(sa)
            return 204, None
        if segs[1] != "secrets" or len(segs) > 3:
            raise ApiError(404, "RESOURCE_NOT_FOUND", "Cannot find resource.")
        if len(segs) == 2:
            self.methods(m, ["POST"])
            rec = self.new_sa_secret_rec(self.check_hours(self.obj(body)))
            sa["secrets"].append(rec)
            return 201, self.sa_secret_view(rec, reveal=True)
        self.methods(m, ["DELETE"])
        for rec in sa["secrets"]:
            if rec["id"] == segs[2] and not rec["deleted"]:
                rec["deleted"], rec["deletedAt"] = True, now_iso()
                st.revoke_tokens_of(cid, rec["id"])
                return 204, None
        raise ApiError(404, "SERVICE_ACCOUNT_SECRET_NOT_FOUND",
                       "Secret %s not found for Service Account %s." % (segs[2], cid), [segs[2], cid])

    def access_list(self, m, gid, segs, query, body):
        st = self.st
        al = st.access.setdefault(gid, {})
        if not segs:
            self.methods(m, ["GET", "POST"])
            if m == "GET":
                return 200, self.page(al.values(), query)
            if isinstance(body, dict):
                body = [body]
            if not isinstance(body, list) or not body:
                raise ApiError(400, "INVALID_JSON", "Expected a non-empty JSON array of access list entries.")
            new = []
            for e in body:
                if not isinstance(e, dict):
                    raise ApiError(400, "INVALID_JSON", "Access list entries must be JSON objects.")
                doc = {"comment": str(e.get("comment", "")), "groupId": gid, "links": []}
                if e.get("ipAddress"):
                    ip = str(e["ipAddress"])
                    doc["ipAddress"] = ip
                    doc["cidrBlock"] = ip + ("/128" if ":" in ip else "/32")
                    key = ip
                elif e.get("cidrBlock"):
                    cidr = str(e["cidrBlock"])
                    if not re.match(r"^[0-9a-fA-F:.]+/\d{1,3}$", cidr):
                        raise ApiError(400, "INVALID_CIDR_BLOCK",
                                       "The specified CIDR block %s is invalid." % cidr, [cidr])
                    doc["cidrBlock"] = cidr
                    key = cidr
                elif e.get("awsSecurityGroup"):
                    doc["awsSecurityGroup"] = str(e["awsSecurityGroup"])
                    key = doc["awsSecurityGroup"]
                else:
                    raise ApiError(400, "MISSING_ATTRIBUTE",
                                   "One of ipAddress, cidrBlock or awsSecurityGroup is required.",
                                   ["ipAddress"])
                if e.get("deleteAfterDate"):
                    doc["deleteAfterDate"] = str(e["deleteAfterDate"])
                new.append((key, doc))
            for key, doc in new:
                al[key] = doc
            return 201, self.page(al.values(), query)
        if len(segs) != 1:
            raise ApiError(404, "RESOURCE_NOT_FOUND", "Cannot find resource.")
        entry = segs[0]
        self.methods(m, ["GET", "DELETE"])
        key = entry
        if key not in al:
            for k, d in al.items():
                if entry in (d.get("cidrBlock"), d.get("ipAddress")):
                    key = k
                    break
        if key not in al:
            raise ApiError(404, "ATLAS_NETWORK_PERMISSION_ENTRY_NOT_FOUND",
                           "IP Address %s not on Atlas access list for group %s." % (entry, gid), [entry, gid])
        if m == "GET":
            return 200, copy.deepcopy(al[key])
        del al[key]
        return 204, None


# --------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------

class FaultClose(Exception):
    pass


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-atlas"
    sys_version = ""
    timeout = 120  # idle keep-alive connections are dropped after this

    def version_string(self):
        return self.server_version

    # ---- connection ----------------------------------------------------
    def setup(self):
        self.tls_ok = True
        self.conn_seq = 0
        self.sni = self.alpn = self.tls_version = None
        self.api_ctype = None
        self.entry = None
        self.extra_headers = {}
        st = self.server.state
        with st.lock:
            st.conn_counter += 1
            self.conn_id = st.conn_counter
            st.stats["connections"] += 1
        sock = self.request
        try:
            sock.settimeout(10)
            sock.do_handshake()
            self.sni = getattr(sock, "_fake_sni", None)
            self.alpn = sock.selected_alpn_protocol()
            self.tls_version = sock.version()
        except (OSError, ssl.SSLError) as e:
            self.tls_ok = False
            self.server.say("conn %d from %s: TLS handshake failed: %s"
                            % (self.conn_id, fmt_addr(self.client_address), e))
        super().setup()

    def handle(self):
        if self.tls_ok:
            try:
                super().handle()
            except FaultClose:
                self.close_connection = True
            except (ConnectionError, ssl.SSLError, TimeoutError, BrokenPipeError):
                self.close_connection = True

    def log_message(self, fmt, *args):  # http.server's own messages
        msg = fmt % args
        if "timed out" in msg:
            return
        self.server.say("%s %s" % (fmt_addr(self.client_address), msg))

    def log_request(self, code="-", size="-"):
        pass  # we log one line per request ourselves

    def send_error(self, code, message=None, explain=None):
        """Protocol-level errors (bad request line, oversized headers...)."""
        self.close_connection = True
        body = json.dumps(atlas_error(code, None, message)).encode()
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json;charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD" and code >= 200 and code not in (204, 304):
                self.wfile.write(body)
        except OSError:
            pass
        self.server.say("%s %r -> %d (protocol error: %s)" % (
            fmt_addr(self.client_address), getattr(self, "requestline", ""), code, message))

    # ---- method entry points ----------------------------------------
    def do_GET(self): self.dispatch()
    def do_POST(self): self.dispatch()
    def do_PUT(self): self.dispatch()
    def do_PATCH(self): self.dispatch()
    def do_DELETE(self): self.dispatch()
    def do_HEAD(self): self.dispatch()
    def do_OPTIONS(self): self.dispatch()

    # ---- body -----------------------------------------------------------
    def read_body(self):
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            chunks, total = [], 0
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    raise ConnectionError("EOF in chunked body")
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while True:  # trailers
                        t = self.rfile.readline(65537)
                        if t in (b"\r\n", b"\n", b""):
                            break
                    break
                total += size
                if total > MAX_BODY:
                    raise ApiError(413, "PAYLOAD_TOO_LARGE", "Request body too large.")
                data = self.rfile.read(size)
                if len(data) != size:
                    raise ConnectionError("EOF in chunk")
                chunks.append(data)
                self.rfile.readline(3)
            return b"".join(chunks)
        cl = self.headers.get("Content-Length")
        if cl is None:
            return b""
        try:
            n = int(cl)
            if n < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            raise ApiError(400, "INVALID_CONTENT_LENGTH", "Invalid Content-Length.")
        if n > MAX_BODY:
            self.close_connection = True
            raise ApiError(413, "PAYLOAD_TOO_LARGE", "Request body too large.")
        data = self.rfile.read(n) if n else b""
        if len(data) != n:
            raise ConnectionError("EOF in body")
        return data

    # ---- main dispatch ----------------------------------------------------
    def dispatch(self):
        st = self.server.state
        cfg = self.server.cfg
        t0 = time.monotonic()
        self.conn_seq += 1
        self.api_ctype = None
        raw_path = self.path
        path_only, _, query_s = raw_path.partition("?")
        is_fake = path_only.startswith("/__fake/") or path_only == "/__fake"

        body_err = None
        try:
            body = self.read_body()
        except ApiError as e:
            body, body_err = b"", e

        if is_fake:
            if body_err:
                self.respond_json(body_err.status, body_err.body)
                return
            self.fake_endpoint(self.command, path_only, query_s, body)
            return

        if path_only in ("/api/oauth/token", "/api/oauth/revoke"):
            kind = "token" if path_only.endswith("token") else "revoke"
        elif path_only.startswith("/api/atlas/"):
            kind = "api"
        else:
            kind = "other"

        entry = {
            "id": 0, "ts": time.time(), "method": self.command, "path": raw_path,
            "headers": [[k, v] for k, v in self.headers.items()],
            "header_map": {},
            "body": body.decode("utf-8", errors="replace"), "body_len": len(body),
            "client": [self.client_address[0], self.client_address[1]],
            "conn": self.conn_id, "conn_seq": self.conn_seq,
            "sni": self.sni, "alpn": self.alpn, "tls_version": self.tls_version,
            "kind": kind, "auth": "none", "principal": None, "principal_minted": None,
            "status": None, "fault": None, "duration_ms": None,
        }
        for k, v in self.headers.items():
            lk = k.lower()
            entry["header_map"][lk] = (entry["header_map"][lk] + ", " + v) if lk in entry["header_map"] else v
        with st.lock:
            st.req_counter += 1
            entry["id"] = st.req_counter
            st.log.append(entry)
            if len(st.log) > MAX_LOG:
                del st.log[: len(st.log) - MAX_LOG]
            st.stats[{"token": "token_requests", "revoke": "revoke_requests",
                      "api": "api_requests", "other": "other_requests"}[kind]] += 1
        self.entry = entry
        self.extra_headers = {"X-Fake-Atlas-Request-Id": str(entry["id"])}
        self.auth_principal = (None, None)
        self.client_secret_id = None

        try:
            if body_err:
                raise body_err
            if kind == "token":
                self.token_endpoint(body)
            elif kind == "revoke":
                self.revoke_endpoint(body)
            elif kind == "api":
                self.api_endpoint(path_only, query_s, body)
            else:
                raise ApiError(404, "RESOURCE_NOT_FOUND", "Cannot find resource %s." % path_only, [path_only])
        except ApiError as e:
            ctype = getattr(self, "api_ctype", None) or "application/json;charset=utf-8"
            self.finish_response(e.status, e.body, ctype, e.headers,
                                 network_faults=(kind == "api" and entry["auth"].endswith(":ok")))
        finally:
            self.api_ctype = None
            entry["duration_ms"] = round((time.monotonic() - t0) * 1000, 3)
            self.server.record(entry)

    def finish_response(self, status, body, ctype="application/json;charset=utf-8",
                        headers=None, network_faults=False):
        """Send a response; status/auth bookkeeping; optional network faults."""
        st = self.server.state
        e = self.entry
        with st.lock:
            e["status"] = status
            bs = st.stats["by_status"]
            bs[str(status)] = bs.get(str(status), 0) + 1
            ba = st.stats["by_auth"]
            ba[e["auth"]] = ba.get(e["auth"], 0) + 1
            fault = None
            if network_faults:
                if st._take(st.faults, "reset_mid_response"):
                    fault = "reset_mid_response"
                elif st._take(st.faults, "close_after_headers"):
                    fault = "close_after_headers"
            chunk_rule = delay_rule = hints_rule = override_rule = framing_rule = None
            if not fault and e["auth"].endswith(":ok"):
                p = e["path"].split("?", 1)[0]
                delay_rule = st.take_rule("delay_response", p, self.command)
                hints_rule = st.take_rule("early_hints", p, self.command)
                override_rule = st.take_rule("body_override", p, self.command)
                framing_rule = st.take_rule("framing", p, self.command)
                if self.command != "HEAD" and status not in (204, 304) and status >= 200:
                    chunk_rule = st.take_rule("chunked", p, self.command)
            for f in (fault, chunk_rule and "chunked", delay_rule and "delay_response",
                      hints_rule and "early_hints", override_rule and "body_override",
                      framing_rule and "framing"):
                if f:
                    e["fault"] = (e["fault"] + "," + f) if e["fault"] else f
        if override_rule:
            body = override_rule["body"]
        if body is None:
            data = b""
        elif isinstance(body, (bytes, bytearray)):
            data = bytes(body)
        elif isinstance(body, str):
            data = body.encode("utf-8")
        else:
            data = json.dumps(body, separators=(",", ":")).encode("utf-8")
        hdrs = dict(self.extra_headers)
        hdrs.update(headers or {})
        if status in (204, 304) or (100 <= status < 200):
            data = b""
        if self.command == "HEAD":
            body_out = b""
        else:
            body_out = data
        if hints_rule:  # an interim answer first, on its own
            self.wfile.write(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
            self.wfile.flush()
            time.sleep(0.05)
        if delay_rule and delay_rule["phase"] == "before_headers":
            time.sleep(delay_rule["ms"] / 1000.0)
        if framing_rule:
            self.send_hostile_framing(framing_rule["mode"], status, ctype, body_out)
            return
        self.send_response(status, reason(status))
        if data or status not in (204, 304):
            self.send_header("Content-Type", ctype)
        for k, v in hdrs.items():
            self.send_header(k, str(v))
        if chunk_rule:
            self.send_header("Transfer-Encoding", "chunked")
        elif status not in (204, 304):
            self.send_header("Content-Length", str(len(data)))
        if self.close_connection and not fault:
            self.send_header("Connection", "close")
        if fault == "close_after_headers":
            self.end_headers()
            raise FaultClose()
        if fault == "reset_mid_response":
            part = data[: max(1, len(data) // 2)] if data else b""
            self.end_headers()
            if part and self.command != "HEAD":
                self.wfile.write(part)
            time.sleep(0.05)
            self.rst()
            raise FaultClose()
        if chunk_rule:
            self.send_chunked(body_out, chunk_rule, delay_rule)
        elif delay_rule and delay_rule["phase"] == "mid_body":
            half = len(body_out) // 2   # headers + first half, wait, the rest
            self.end_headers_with(body_out[:half])
            time.sleep(delay_rule["ms"] / 1000.0)
            if body_out[half:]:
                self.wfile.write(body_out[half:])
        else:
            self.end_headers_with(body_out)

    def send_chunked(self, data, rule, delay_rule):
        """Body as rule["chunks"] chunks (each its own write / TLS record), with
        chunk_delay_ms between them; a mid_body delay_response waits after the
        first chunk."""
        n = min(rule["chunks"], len(data))
        cuts = [len(data) * i // n for i in range(n + 1)] if n else []
        pieces = [data[a:b] for a, b in zip(cuts, cuts[1:])]
        self.end_headers()  # flushes the header block on its own
        for i, piece in enumerate(pieces):
            if i == 1 and delay_rule and delay_rule["phase"] == "mid_body":
                time.sleep(delay_rule["ms"] / 1000.0)
            elif i > 0 and rule["chunk_delay_ms"]:
                time.sleep(rule["chunk_delay_ms"] / 1000.0)
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        if len(pieces) < 2 and delay_rule and delay_rule["phase"] == "mid_body":
            time.sleep(delay_rule["ms"] / 1000.0)
        self.wfile.write(b"0\r\n\r\n")

    def send_hostile_framing(self, mode, status, ctype, body):
        """An answer whose framing a proxy could read two ways (faults
        "framing"); the connection ends after it unless it is te_no_body."""
        head = b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\n" % (status, reason(status).encode(), ctype.encode())
        if mode == "two_te":
            smuggled = b"0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
            out = head + b"Transfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n\r\n"
            out += b"%x\r\n%s\r\n0\r\n\r\n" % (len(smuggled), smuggled)
        elif mode == "te_and_length":
            chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
            out = head + b"Transfer-Encoding: chunked\r\nContent-Length: %d\r\n\r\n" % len(chunked) + chunked
        elif mode == "te_no_body":
            out = head + b"Transfer-Encoding: chunked\r\n\r\n"
        else:  # until_close
            out = head + b"\r\n" + body
        self.wfile.write(out)
        self.wfile.flush()
        if mode != "te_no_body":
            self.close_connection = True

    def end_headers_with(self, data):
        """end_headers() + body in one write (one TLS record, no Nagle stall)."""
        if self.request_version != "HTTP/0.9":
            self._headers_buffer.append(b"\r\n")
            if data:
                self._headers_buffer.append(data)
            self.flush_headers()
        elif data:
            self.wfile.write(data)

    def rst(self):
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        try:
            # close the fd directly: no TLS close_notify, no FIN -> RST
            fd = self.connection.detach()
            os.close(fd)
        except OSError:
            pass

    def respond_json(self, status, obj, headers=None):
        data = json.dumps(obj).encode("utf-8")
        self.send_response(status, reason(status))
        self.send_header("Content-Type", "application/json;charset=utf-8")
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers_with(data if self.command != "HEAD" else b"")

    # ---- OAuth ------------------------------------------------------------
    def parse_form(self, body):
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype and ctype != "application/x-www-form-urlencoded":
            return None
        try:
            return urllib.parse.parse_qs(body.decode("utf-8"), keep_blank_values=True)
        except UnicodeDecodeError:
            return None

    def client_auth(self, form):
        """Returns (ok, outcome, client_id)."""
        cfg = self.server.cfg
        authz = self.headers.get("Authorization") or ""
        cid = sec = None
        how = None
        if authz[:6].lower() == "basic ":
            try:
                dec = base64.b64decode(authz[6:].strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return False, "client:invalid", None
            if ":" not in dec:
                return False, "client:invalid", None
            cid, sec = dec.split(":", 1)
            how = "basic"
        elif authz:
            return False, "client:invalid", None
        elif form and "client_id" in form:
            cid = form["client_id"][0]
            sec = (form.get("client_secret") or [""])[0]
            how = "post"
        else:
            return False, "client:missing", None
        cands = {(cid, sec), (urllib.parse.unquote_plus(cid), urllib.parse.unquote_plus(sec))}
        for c, s in cands:
            if (hmac.compare_digest(c.encode(), cfg.client_id.encode())
                    and hmac.compare_digest(s.encode(), cfg.client_secret.encode())):
                self.auth_principal = ("service_account:" + c, False)
                return True, how + ":ok", c
        for c, s in cands:   # a service account minted through the API
            rec = self.server.state.sa_secret_match(c, s)
            if rec is not None:
                self.auth_principal = ("service_account:" + c, True)
                self.client_secret_id = rec["id"]
                with self.server.state.lock:
                    rec["lastUsedAt"] = now_iso()
                return True, how + ":ok", c
        return False, "client:invalid", cid

    def oauth_reply(self, status, obj, headers=None):
        h = {"Cache-Control": "no-store", "Pragma": "no-cache"}
        h.update(headers or {})
        self.finish_response(status, obj, "application/json;charset=utf-8", h)

    def token_endpoint(self, body):
        st = self.server.state
        with st.lock:
            delay = st.faults["token_delay_ms"]
        if delay:
            self.entry["fault"] = "token_delay_ms"
            time.sleep(delay / 1000.0)
        with st.lock:
            tf = st.faults["token_fail"]
            forced = None
            if tf and tf["count"] != 0:
                if tf["count"] > 0:
                    tf["count"] -= 1
                forced = copy.deepcopy(tf)
        if forced:
            self.entry["fault"] = ((self.entry["fault"] + ",") if self.entry["fault"] else "") + "token_fail"
            self.entry["auth"] = "forced"
            st.count("token_failures")
            b = forced.get("body", oauth_error_body(forced["status"]))
            self.oauth_reply(forced["status"], b, forced.get("headers"))
            return
        if self.command != "POST":
            st.count("token_failures")
            self.oauth_reply(405, {"error": "invalid_request",
                                   "error_description": "The token endpoint only accepts POST."},
                             {"Allow": "POST"})
            return
        form = self.parse_form(body)
        ok, outcome, cid = self.client_auth(form)
        self.entry["auth"] = outcome
        self.entry["principal"], self.entry["principal_minted"] = self.auth_principal
        if not ok:
            st.count("token_failures")
            self.oauth_reply(401, {"error": "invalid_client",
                                   "error_description": "Client authentication failed."})
            return
        if form is None:
            st.count("token_failures")
            self.oauth_reply(400, {"error": "invalid_request",
                                   "error_description": "Body must be application/x-www-form-urlencoded."})
            return
        grant = form.get("grant_type")
        if not grant or not grant[0]:
            st.count("token_failures")
            self.oauth_reply(400, {"error": "invalid_request",
                                   "error_description": "Missing grant_type parameter."})
            return
        if grant[0] != "client_credentials":
            st.count("token_failures")
            self.oauth_reply(400, {"error": "unsupported_grant_type",
                                   "error_description": "Unsupported grant type: %s." % grant[0]})
            return
        with st.lock:
            if st.active_tokens(cid) >= st.max_active_tokens:
                st.stats["token_failures"] += 1
                limit_hit = True
            else:
                limit_hit = False
        if limit_hit:
            self.oauth_reply(403, {"error": "access_denied",
                                   "error_description": "Too many active tokens for this service account."})
            return
        token = st.issue_token(cid, self.client_secret_id)
        st.count("token_successes")
        self.oauth_reply(200, {"access_token": token, "expires_in": self.server.cfg.token_ttl,
                               "token_type": "Bearer"})

    def revoke_endpoint(self, body):
        st = self.server.state
        if self.command != "POST":
            self.oauth_reply(405, {"error": "invalid_request",
                                   "error_description": "The revoke endpoint only accepts POST."},
                             {"Allow": "POST"})
            return
        form = self.parse_form(body)
        ok, outcome, cid = self.client_auth(form)
        self.entry["auth"] = outcome
        self.entry["principal"], self.entry["principal_minted"] = self.auth_principal
        if not ok:
            self.oauth_reply(401, {"error": "invalid_client",
                                   "error_description": "Client authentication failed."})
            return
        if form is None or not (form.get("token") or [""])[0]:
            self.oauth_reply(400, {"error": "invalid_request",
                                   "error_description": "Missing token parameter."})
            return
        tok = form["token"][0]
        with st.lock:
            rec = st.tokens.get(tok)
            if rec is not None and rec["client"] == cid:
                rec["revoked"] = True
        self.oauth_reply(200, {})

    # ---- API ---------------------------------------------------------------
    def digest_challenge(self, stale=False):
        nonce = self.server.state.new_nonce()
        return ('Digest realm="%s", domain="", nonce="%s", algorithm=MD5, qop="auth", stale=%s'
                % (REALM, nonce, "true" if stale else "false"))

    @staticmethod
    def parse_digest(value):
        out = {}
        for m in re.finditer(r'([A-Za-z0-9_-]+)\s*=\s*("((?:[^"\\]|\\.)*)"|[^,\s]*)', value):
            v = m.group(3) if m.group(3) is not None else m.group(2)
            out[m.group(1).lower()] = v.replace('\\"', '"').replace("\\\\", "\\")
        return out

    def check_digest(self, value):
        """Returns (outcome, stale)."""
        cfg = self.server.cfg
        st = self.server.state
        p = self.parse_digest(value)
        need = ("username", "realm", "nonce", "uri", "response", "qop", "nc", "cnonce")
        if any(k not in p for k in need):
            return "digest:malformed", False
        if p.get("algorithm", "MD5").upper() != "MD5" or p["qop"] != "auth":
            return "digest:malformed", False
        if p["realm"] != REALM:
            return "digest:bad_realm", False
        if p["uri"] != self.path:
            return "digest:bad_uri", False
        try:
            nc = int(p["nc"], 16)
        except ValueError:
            return "digest:malformed", False
        user, priv, minted = cfg.digest_public_key, cfg.digest_private_key, False
        user_ok = hmac.compare_digest(p["username"].encode(), cfg.digest_public_key.encode())
        if not user_ok:   # an API key minted through the API
            mpriv = st.api_key_private(p["username"])
            if mpriv is not None:
                user, priv, minted, user_ok = p["username"], mpriv, True, True
        ha1 = md5hex("%s:%s:%s" % (user, REALM, priv))
        ha2 = md5hex("%s:%s" % (self.command, p["uri"]))
        expect = md5hex("%s:%s:%s:%s:%s:%s" % (ha1, p["nonce"], p["nc"], p["cnonce"], p["qop"], ha2))
        resp_ok = hmac.compare_digest(p["response"].lower().encode(), expect.encode())
        with st.lock:
            rec = st.nonces.get(p["nonce"])
            if rec is None:
                return "digest:unknown_nonce", False
            if not (user_ok and resp_ok):
                return "digest:bad_response", False
            if rec["uses"] >= cfg.digest_nonce_uses:
                return "digest:stale", True
            if nc <= rec["last_nc"]:
                return "digest:nc_reused", False
            rec["last_nc"] = nc
            rec["uses"] += 1
        self.auth_principal = ("api_key:" + user, minted)
        return "digest:ok", False

    def authenticate(self):
        """Returns None when authenticated, else raises ApiError(401)."""
        cfg = self.server.cfg
        authz = self.headers.get("Authorization") or ""
        scheme = authz.split(" ", 1)[0].lower() if authz else ""
        mode = cfg.auth
        outcome, stale = None, False
        if scheme == "bearer" and mode in ("bearer", "any"):
            tok = authz[7:].strip()
            outcome = self.server.state.check_token(tok) if tok else "bearer:malformed"
            if outcome == "bearer:ok":
                st = self.server.state
                with st.lock:
                    rec = st.tokens.get(tok) or {}
                self.auth_principal = ("service_account:%s" % rec.get("client"), bool(rec.get("minted")))
        elif scheme == "digest" and mode in ("digest", "any"):
            outcome, stale = self.check_digest(authz[7:])
        elif not authz:
            outcome = "bearer:missing" if mode == "bearer" else "digest:challenge"
        else:
            outcome = "%s:unsupported_scheme" % (scheme or "unknown")
        self.entry["auth"] = outcome
        if outcome.endswith(":ok"):
            self.entry["principal"], self.entry["principal_minted"] = self.auth_principal
            return
        headers = {}
        if mode in ("digest", "any"):
            headers["WWW-Authenticate"] = self.digest_challenge(stale)
        raise ApiError(401, "UNAUTHORIZED", "You are not authorized for this resource.", [], headers)

    def api_endpoint(self, path_only, query_s, body):
        st = self.server.state
        # stall
        with st.lock:
            stall = st.faults["stall_ms"]
            if stall and st.faults["stall_count"] != 0:
                if st.faults["stall_count"] > 0:
                    st.faults["stall_count"] -= 1
            else:
                stall = 0
        if stall:
            self.entry["fault"] = "stall_ms"
            time.sleep(stall / 1000.0)

        parts = path_only.split("/")  # ['', 'api', 'atlas', ver, ...]
        ver = parts[3] if len(parts) > 3 else ""
        self.authenticate()

        # forced status
        with st.lock:
            forced = None
            for r in st.faults["api_status"]:
                if r["count"] == 0:
                    continue
                if not path_only.startswith(r["path_prefix"]):
                    continue
                if r["method"] and r["method"] != self.command:
                    continue
                if r["count"] > 0:
                    r["count"] -= 1
                forced = copy.deepcopy(r)
                break
        if forced:
            self.entry["fault"] = ((self.entry["fault"] + ",") if self.entry["fault"] else "") + "api_status"
            s = forced["status"]
            hdrs = dict(forced["headers"])
            if s == 429:
                hdrs.setdefault("Retry-After", "1")
            body_out = forced.get("body")
            if body_out is None:
                detail = None
                if s == 429:
                    detail = ("Rate limit exceeded for %s. Please retry after 1 seconds. (fake Atlas)"
                              % path_only.lstrip("/"))
                body_out = atlas_error(s, None, detail)
            self.finish_response(s, body_out, "application/json;charset=utf-8", hdrs,
                                 network_faults=True)
            return

        if ver == "v2":
            accept = self.headers.get("Accept") or ""
            m = VERSION_RE.search(accept)
            ok = False
            if m:
                try:
                    d = datetime.date.fromisoformat(m.group(1))
                    ok = FIRST_VERSION <= d <= datetime.date.today() + datetime.timedelta(days=1)
                except ValueError:
                    ok = False
            if not ok:
                raise ApiError(406, "INVALID_VERSION_DATE",
                               "Invalid accept header or version date. Use "
                               "Accept: application/vnd.atlas.YYYY-MM-DD+json with a valid version date.",
                               [accept])
            self.api_ctype = "application/vnd.atlas.%s+json;charset=utf-8" % m.group(1)
        elif ver == "v1.0":
            self.api_ctype = "application/json;charset=utf-8"
        else:
            raise ApiError(404, "RESOURCE_NOT_FOUND", "Cannot find resource %s." % path_only, [path_only])

        obj = None
        if body and self.command in ("POST", "PATCH", "PUT"):
            try:
                obj = json.loads(body.decode("utf-8"))
            except (ValueError, UnicodeDecodeError):
                raise ApiError(400, "INVALID_JSON", "Received JSON is malformed.")
        segs = [urllib.parse.unquote(s) for s in parts[4:]]
        while segs and segs[-1] == "":
            segs.pop()
        query = urllib.parse.parse_qs(query_s)
        res = self.server.api.handle(self.command, segs, query, obj)
        status, out = res[0], res[1]
        ctype = self.api_ctype
        if len(res) > 2 and res[2] == "x509":   # PEM text, not JSON
            with st.lock:
                ctype = st.faults["cert_content_type"] or ctype
        self.finish_response(status, out, ctype, None, network_faults=True)

    # ---- /__fake -----------------------------------------------------------
    def fake_endpoint(self, method, path, query_s, body):
        st = self.server.state
        name = path[len("/__fake/"):].strip("/") if path.startswith("/__fake/") else ""

        def parse_body():
            if not body.strip():
                return {}
            return json.loads(body.decode("utf-8"))

        try:
            if name == "health" and method in ("GET", "HEAD"):
                return self.respond_json(200, {"ok": True, "uptime_s": round(time.time() - st.started, 3)})
            if name == "requests" and method in ("GET", "HEAD"):
                q = urllib.parse.parse_qs(query_s)
                since = int(q.get("since", ["0"])[0])
                with st.lock:
                    data = [e for e in st.log if e["id"] > since]
                    out = json.loads(json.dumps(data))
                return self.respond_json(200, out)
            if name == "stats" and method in ("GET", "HEAD"):
                with st.lock:
                    out = copy.deepcopy(st.stats)
                    out["active_tokens"] = st.active_tokens()
                return self.respond_json(200, out)
            if name == "reset" and method == "POST":
                opts = parse_body()
                st.reset_log()
                st.clear_faults()
                if isinstance(opts, dict) and opts.get("state"):
                    st.seed()
                if isinstance(opts, dict) and opts.get("tokens"):
                    with st.lock:
                        st.tokens.clear()
                        st.nonces.clear()
                return self.respond_json(200, {"ok": True})
            if name == "faults" and method in ("GET", "HEAD"):
                return self.respond_json(200, st.faults_view())
            if name == "faults" and method == "POST":
                return self.respond_json(200, st.set_faults(parse_body()))
            if name == "state" and method in ("GET", "HEAD"):
                with st.lock:
                    out = {"orgs": list(st.orgs.values()), "groups": list(st.groups.values()),
                           "clusters": {g: list(c.values()) for g, c in st.clusters.items()},
                           "flexClusters": {g: list(c.values()) for g, c in st.flex.items()},
                           "databaseUsers": {g: list(c.values()) for g, c in st.users.items()},
                           "accessList": {g: list(c.values()) for g, c in st.access.items()},
                           "snapshots": {"%s/%s" % k: list(v.values()) for k, v in st.snapshots.items()},
                           # secrets masked here; GET /__fake/minted shows them
                           "apiKeys": [dict(Api.api_key_view(k), orgId=k["orgId"])
                                       for k in st.api_keys.values() if not k["deleted"]],
                           "serviceAccounts": [dict(self.server.api.sa_view(sa), orgId=sa["orgId"],
                                                    groupId=sa["groupId"])
                                               for sa in st.service_accounts.values() if not sa["deleted"]],
                           "x509Certs": [{k: c[k] for k in ("serial", "groupId", "username", "subject",
                                                            "createdAt", "notAfter")} for c in st.certs]}
                    out = json.loads(json.dumps(out))
                return self.respond_json(200, out)
            if name == "minted" and method in ("GET", "HEAD"):
                return self.respond_json(200, self.minted_view())
        except (ValueError, TypeError) as e:
            return self.respond_json(400, atlas_error(400, "INVALID_FAKE_REQUEST", str(e)))
        self.respond_json(404, atlas_error(404, "RESOURCE_NOT_FOUND", "Unknown fake endpoint %s %s" % (method, path)))

    def minted_view(self):
        """GET /__fake/minted: every credential the API minted, secrets in clear."""
        st = self.server.state
        now = time.time()
        with st.lock:
            keys = [{"id": k["id"], "publicKey": k["publicKey"], "privateKey": k["privateKey"],
                     "desc": k["desc"], "orgId": k["orgId"], "createdInGroup": k["createdInGroup"],
                     "groupIds": sorted({r["groupId"] for r in k["roles"] if "groupId" in r}),
                     "roles": k["roles"], "createdAt": k["createdAt"],
                     "deleted": k["deleted"], "deletedAt": k["deletedAt"]} for k in st.api_keys.values()]
            sas, flat = [], []
            for sa in st.service_accounts.values():
                secs = []
                for r in sa["secrets"]:
                    d = {"clientId": sa["clientId"], "id": r["id"], "secret": r["secret"],
                         "createdAt": r["createdAt"], "expiresAt": r["expiresAt"], "lastUsedAt": r["lastUsedAt"],
                         "expired": r["expires_ts"] <= now, "deleted": r["deleted"] or sa["deleted"]}
                    secs.append(d)
                    flat.append(d)
                sas.append({"clientId": sa["clientId"], "name": sa["name"], "description": sa["description"],
                            "orgId": sa["orgId"], "groupId": sa["groupId"], "roles": sa["roles"],
                            "createdAt": sa["createdAt"], "deleted": sa["deleted"], "secrets": secs})
            out = {"api_keys": keys, "service_accounts": sas, "service_account_secrets": flat,
                   "database_users": st.db_creds,
                   "certs": [{"serial": c["serial"], "_id": c["serial"], "groupId": c["groupId"],
                              "username": c["username"], "subject": c["subject"], "createdAt": c["createdAt"],
                              "notAfter": c["notAfter"], "monthsUntilExpiration": c["monthsUntilExpiration"],
                              "certificate": c["certificate"], "privateKey": c["privateKey"]}
                             for c in st.certs],
                   "x509_ca": st.x509.ca_pem}
            return json.loads(json.dumps(out))


def fmt_addr(a):
    if not a:
        return "?"
    return ("[%s]:%s" if ":" in a[0] else "%s:%s") % (a[0], a[1])


def redact(entry):
    e = copy.deepcopy(entry)

    def red(v):
        scheme = v.split(" ", 1)[0]
        return scheme + " <redacted>"

    e["headers"] = [[k, red(v) if k.lower() in ("authorization", "proxy-authorization") else v]
                    for k, v in e["headers"]]
    for k in ("authorization", "proxy-authorization"):
        if k in e["header_map"]:
            e["header_map"][k] = red(e["header_map"][k])
    if e["kind"] in ("token", "revoke") and e["body"]:
        try:
            form = urllib.parse.parse_qsl(e["body"], keep_blank_values=True)
            e["body"] = urllib.parse.urlencode(
                [(k, "<redacted>" if k in ("client_secret", "token") else v) for k, v in form])
        except ValueError:
            e["body"] = "<redacted>"
    return e


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, cfg, ctx):
        self.cfg = cfg
        self.ctx = ctx
        self.request_queue_size = cfg.backlog
        # --max-connections: accept() waits for a free slot.
        self.slots = threading.BoundedSemaphore(cfg.max_connections) if cfg.max_connections > 0 else None
        self.open_lock = threading.Lock()
        self.open_now = 0
        self.address_family = socket.AF_INET6 if ":" in cfg.listen else socket.AF_INET
        self.state = State(cfg)
        self.api = Api(self.state)
        self.out_lock = threading.Lock()
        self.log_file = open(cfg.log, "a", buffering=1) if cfg.log else None
        super().__init__((cfg.listen, cfg.port), Handler)

    def server_bind(self):
        if self.address_family == socket.AF_INET6:
            try:
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            except OSError:
                pass
        socketserver_bind(self)

    def get_request(self):
        if self.slots is not None:
            while not self.slots.acquire(timeout=0.2):
                if getattr(self, "_BaseServer__shutdown_request", False):
                    raise OSError("shutting down")
        try:
            sock, addr = self.socket.accept()
        except OSError:
            if self.slots is not None:
                self.slots.release()
            raise
        with self.open_lock:
            self.open_now += 1
            st = self.state
            with st.lock:
                st.stats["peak_connections"] = max(st.stats.get("peak_connections", 0), self.open_now)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        return self.ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, ssl.SSLError, TimeoutError, OSError)):
            self.say("%s connection error: %s" % (fmt_addr(client_address), exc))
            return
        super().handle_error(request, client_address)

    def shutdown_request(self, request):
        try:
            if request.fileno() >= 0:
                request.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self.close_request(request)
        with self.open_lock:
            self.open_now -= 1
        if self.slots is not None:
            self.slots.release()

    def say(self, msg):
        if self.cfg.quiet:
            return
        with self.out_lock:
            try:
                sys.stderr.write("fake_atlas: %s\n" % msg)
                sys.stderr.flush()
            except (OSError, ValueError):
                pass

    def record(self, e):
        self.say('%s conn=%d "%s %s" %s auth=%s%s%s %.1fms' % (
            fmt_addr(e["client"]), e["conn"], e["method"], e["path"].split("?")[0],
            e["status"] if e["status"] is not None else "-", e["auth"],
            (" principal=" + e["principal"]) if e.get("principal") else "",
            (" fault=" + e["fault"]) if e["fault"] else "", e["duration_ms"] or 0))
        if self.log_file:
            with self.out_lock:
                try:
                    self.log_file.write(json.dumps(redact(e)) + "\n")
                except (OSError, ValueError):
                    pass


def socketserver_bind(server):
    import socketserver
    socketserver.TCPServer.server_bind(server)
    host, port = server.server_address[:2]
    server.server_name = host
    server.server_port = port


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------

def read_secret(path, default):
    if not path:
        return default
    with open(path, "r", encoding="utf-8") as f:
        s = f.read().strip()
    if not s:
        raise SystemExit("fake_atlas: secret file %s is empty" % path)
    return s


def parse_args(argv):
    ap = argparse.ArgumentParser(description="Local stand-in for the MongoDB Atlas Administration API "
                                             "(see the module docstring for endpoints and faults).")
    ap.add_argument("--listen", default="127.0.0.2")
    ap.add_argument("--port", type=int, default=443)
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--pki-dir")
    ap.add_argument("--client-id", default=DEFAULT_CLIENT_ID)
    ap.add_argument("--client-secret-file")
    ap.add_argument("--token-ttl", type=int, default=3600)
    ap.add_argument("--max-active-tokens", type=int, default=100)
    ap.add_argument("--auth", choices=["bearer", "digest", "any"], default="bearer")
    ap.add_argument("--digest-public-key", default=DEFAULT_DIGEST_PUBLIC)
    ap.add_argument("--digest-private-key-file")
    ap.add_argument("--digest-nonce-uses", type=int, default=5)
    ap.add_argument("--ready-file")
    ap.add_argument("--log")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--max-connections", type=int, default=0)
    ap.add_argument("--backlog", type=int, default=128)
    a = ap.parse_args(argv)
    if not a.cert or not a.key:
        if not a.pki_dir:
            ap.error("--cert and --key (or --pki-dir) are required")
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "make_pki.sh")
        subprocess.run(["bash", script, a.pki_dir], check=True)
        a.cert = a.cert or os.path.join(a.pki_dir, "server.pem")
        a.key = a.key or os.path.join(a.pki_dir, "server.key")
    if a.digest_nonce_uses < 1:
        ap.error("--digest-nonce-uses must be >= 1")
    a.listen = a.listen.strip("[]")
    a.client_secret = read_secret(a.client_secret_file, DEFAULT_CLIENT_SECRET)
    a.digest_private_key = read_secret(a.digest_private_key_file, DEFAULT_DIGEST_PRIVATE)
    return a


def main(argv=None):
    cfg = parse_args(sys.argv[1:] if argv is None else argv)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cfg.cert, cfg.key)
    ctx.set_alpn_protocols(["http/1.1"])

    def sni_cb(sslsock, name, _ctx):
        try:
            sslsock._fake_sni = name
        except AttributeError:
            pass
        return None
    ctx.sni_callback = sni_cb

    stop = threading.Event()

    def on_signal(signum, _frame):
        stop.set()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    try:
        server = Server(cfg, ctx)
    except OSError as e:
        print("fake_atlas: cannot listen on %s port %d: %s" % (cfg.listen, cfg.port, e), file=sys.stderr)
        return 1
    host, port = server.server_address[:2]
    th = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                          name="fake-atlas-accept", daemon=True)
    th.start()
    if cfg.ready_file:
        tmp = cfg.ready_file + ".tmp.%d" % os.getpid()
        with open(tmp, "w") as f:
            f.write("%s %d\n" % (host, port))
        os.replace(tmp, cfg.ready_file)
    server.say("listening on %s port %d (auth=%s, client_id=%s, token_ttl=%ds)"
               % (host, port, cfg.auth, cfg.client_id, cfg.token_ttl))
    try:
        while not stop.is_set():
            stop.wait(1.0)
    finally:
        server.say("shutting down")
        server.shutdown()
        server.server_close()
        if cfg.ready_file:
            try:
                os.unlink(cfg.ready_file)
            except OSError:
                pass
        if server.log_file:
            server.log_file.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
