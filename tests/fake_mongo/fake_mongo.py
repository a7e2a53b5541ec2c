#!/usr/bin/python3
"""fake_mongo.py - a local stand-in for a MongoDB Atlas replica set.

Python 3 standard library plus Debian's python3-pymongo (for `bson` and
`pymongo.saslprep`); run it with /usr/bin/python3. Speaks enough of the
MongoDB wire protocol for real clients (mongosh 2.x, the Node driver, pymongo
3.11, the MongoDB MCP server's find/aggregate tools). One listener per replica
set member, TLS 1.2+ unless --no-tls, one daemon thread per connection. Used by
atlasgate's integration tests; see tests/fake_mongo/test_fake_mongo.py for a
self-test and usage examples.

Command line
------------
  fake_mongo.py --cert server.pem --key server.key
      --member NAME=ADDR [--member NAME=ADDR ...]
                               one listener per member on ADDR:--port; NAME is
                               the host name the member advertises (hosts, me,
                               primary are NAME:port). The first member is the
                               primary, the others secondaries. ADDR may be
                               IPv4 or IPv6.
      [--port 27017]           port of every member (0 = each picks a free one,
                               advertised as such)
      [--set-name atlas-abcde-shard-0]
      [--user NAME:PASSWORD ...]  static users of the admin database
      [--atlas-url https://127.0.0.2:PORT --atlas-ca CA.pem]
                               also accept the database users created through
                               tests/fake_atlas/fake_atlas.py (see "Users")
      [--atlas-group ID]       only that project's users (default: any project)
      [--user-delay SECONDS]   an Atlas user becomes usable only that long after
                               this server first saw it (default 0)
      [--log FILE]             one JSON line per command (see "Request log")
      [--ready-file FILE]      "NAME ADDR PORT\\n" per member, written (atomically)
                               once every listener is up; removed at exit
      [--no-tls]               plain TCP (for debugging by hand)
      [--quiet]                no per-connection lines on stderr

SIGTERM / SIGINT: close the listeners, exit 0.

Wire protocol
-------------
16-byte header, messages of 16..48000000 bytes (larger or smaller: the
connection is closed). Opcodes:
  OP_QUERY (2004)       commands on "<db>.$cmd" only ($query is unwrapped),
                        answered with OP_REPLY; a query on another namespace
                        gets an OP_REPLY with the QueryFailure flag and $err.
  OP_MSG (2013)         section kind 0 (the body) and kind 1 (document
                        sequences, merged into the command as arrays).
                        checksumPresent: the CRC-32C is verified, a mismatch
                        closes the connection. moreToCome on a request: the
                        command runs, no reply (unacknowledged write). Other
                        required flag bits (0-15): connection closed.
  OP_COMPRESSED (2012)  compressors noop (0) and zlib (2); snappy/zstd close
                        the connection. The reply is compressed with the
                        request's compressor. A checksum inside a compressed
                        OP_MSG is checked against the rebuilt plain message.
Anything else closes the connection, as do malformed BSON and messages.

hello / isMaster / ismaster
---------------------------
A replica set (setName, setVersion 1, hosts, primary, me, isWritablePrimary -
or the legacy ismaster key for isMaster/ismaster - and secondary,
electionId on the primary, topologyVersion {processId, counter: Int64 0},
maxBsonObjectSize 16777216, maxMessageSizeBytes 48000000, maxWriteBatchSize
100000, localTime, logicalSessionTimeoutMinutes 30, connectionId, wire
versions 0..21, readOnly false, ok 1).
  helloOk            true when the client sent helloOk (it then uses hello).
  compression        the client's list intersected with ["zlib"] (omitted
                     when empty); the client's list is logged.
  saslSupportedMechs "db.user" -> ["SCRAM-SHA-256"] when that user can log in.
  speculativeAuthenticate  a SCRAM-SHA-256 saslStart document -> the
                     server-first message {conversationId: 1, done: false,
                     payload}; the conversation continues with saslContinue.
                     Omitted when it cannot start (unknown user, other mechanism).
Streaming hello: with topologyVersion (this process' processId, counter 0) and
maxAwaitTimeMS, the answer waits min(maxAwaitTimeMS, 10 s), or less if the
client sends anything or closes; another topologyVersion is answered at once.
With the exhaustAllowed flag the reply has moreToCome set and a further reply
follows every maxAwaitTimeMS (fresh requestID, responseTo = the previous
reply's requestID) until the client closes or sends something.

Authentication (SCRAM-SHA-256, RFC 5802 / 7677)
----------------------------------------------
saslStart / saslContinue on the user's database (admin for every user here).
15000 iterations, a random salt per user (fixed for the life of the process),
passwords SASLprep'ed. SCRAM-SHA-1 and other mechanisms -> code 334
MechanismUnavailable. options.skipEmptyExchange: the saslContinue that carries
the server-final message says done: true; otherwise one more empty saslContinue
ends it. Unknown user, wrong password, bad proof or nonce -> {ok: 0, code: 18,
codeName: "AuthenticationFailed", errmsg: "Authentication failed."} (an unknown
user already at saslStart, as mongod does).

Users
-----
--user NAME:PASSWORD: static users of admin. With --atlas-url, the database
users created through fake_atlas too: GET <url>/__fake/minted (their current
password, "deleted") and GET <url>/__fake/state (databaseUsers, for
deleteAfterDate, which minted does not carry), verified with --atlas-ca. When
a saslStart (or a hello's speculativeAuthenticate or saslSupportedMechs) names
a user that is not static, the answer waits for a fetch of both that started
after the request arrived, so whatever was done in Atlas before is seen;
fetches start at least 0.5 s apart (requests arriving together share one), so
such an answer can take up to 0.5 s. A user can authenticate when its latest record
is not deleted, has a password, its deleteAfterDate (if any) is in the future,
and --user-delay seconds have passed since this server first saw that record
(re-creating a deleted user starts a new record). The delay applies to a
user's creation only, not to a password change. A static user wins over an
Atlas user of the same name. Fetch errors are reported on stderr and the last
good view is kept.

Access control
--------------
Before authentication only hello, isMaster, ismaster, saslStart,
saslContinue, ping, buildInfo, getnonce, endSessions are allowed; anything
else -> {ok: 0, code: 13, codeName: "Unauthorized", errmsg: "command X
requires authentication"}. An unknown command is 59 CommandNotFound even
before authentication, as with mongod. Every authenticated user may do
everything (connectionStatus reports the role atlasAdmin).
On a secondary, writes -> 10107 NotWritablePrimary, and reads without a
non-primary $readPreference (OP_MSG) or the secondaryOk flag (OP_QUERY) ->
13435 NotPrimaryNoSecondaryOk, as mongod does.

Commands
--------
Data lives in memory, shared by all members, under one lock; there are no
transactions: writes apply at once, commitTransaction / abortTransaction just
answer ok (an abort does not roll back). lsid, txnNumber, $clusterTime,
readConcern, writeConcern, $readPreference, autocommit, startTransaction,
apiVersion, maxTimeMS, comment, hint, ... are accepted and ignored. Replies
carry no $clusterTime / operationTime.
  insert        documents (body array or sequence); _id ObjectId added first when
                missing; duplicate _id -> writeErrors code 11000; ordered stops
                at the first error.
  find          filter, sort, projection, skip, limit (negative = single
                batch), batchSize (default 101), singleBatch.
  getMore / killCursors   Int64 cursor ids; unknown cursor -> 43 CursorNotFound.
  update        updates [{q, u, multi, upsert}]: u with $set / $unset / $inc /
                $setOnInsert or a replacement document; n, nModified, upserted.
  delete        deletes [{q, limit 0|1}].
  findAndModify query, sort, update | remove, new, upsert, fields.
  count, distinct.
  aggregate     $match, $project, $sort, $skip, $limit, $count, $group (_id
                null, a constant, "$field" or a document of those; $sum, $avg,
                $min, $max, $first, $last, $push); cursor {batchSize} required;
                aggregate: 1 (database-level) -> an empty cursor.
  create (ok if it exists), drop (missing -> 26 NamespaceNotFound),
  dropDatabase, listCollections, listDatabases, listIndexes (_id_ plus
  created ones), createIndexes, dropIndexes, dbStats, collStats.
  buildInfo (7.0.12), getParameter (featureCompatibilityVersion), getCmdLineOpts,
  getLog, connectionStatus, hostInfo, whatsmyuri, ping, endSessions,
  killSessions, refreshSessions, commitTransaction, abortTransaction, logout.
  Anything else (atlasVersion, getnonce, ...) -> 59 CommandNotFound
  "no such command: 'X'".
Query language: equality on top-level and dotted fields (arrays match by
element), $eq $ne $gt $gte $lt $lte $in $nin $exists $regex $not, $and $or $nor,
BSON type order for comparisons and sorting. Projection: inclusion or
exclusion of (dotted) fields; aggregate $project also "$field" values.
Not supported: indexes with effect (uniqueness other than _id), $elemMatch,
$all, $size, $expr, other update operators and pipeline updates, collation,
views, capped collections, change streams, exhaust cursors, OP_MSG checksums
on replies, the 16 MB batch limit, X.509 / other auth mechanisms.

Request log (--log FILE)
------------------------
One JSON line per command received (after decompression; the extra replies
of a streaming hello are not commands):
  {"ts", "member": NAME, "conn": connection number, "user": authenticated user
   name or null, "command": first key, "db": $db, "collection": the first key's
   value when a string (else null), "ok": 0|1, "code" (when ok is 0),
   "opcode": "OP_MSG"|"OP_QUERY"|"OP_COMPRESSED", "exhaust": exhaustAllowed,
   "compressor": "noop"|"zlib" and "inner_opcode" (when compressed),
   "compression": [the client's list] (hellos that carry one),
   "auth_user": the user name a saslStart or speculativeAuthenticate names}
No password, SCRAM payload or document content is ever written.
"""

import argparse
import base64
import copy
import datetime
import functools
import hashlib
import hmac
import itertools
import json
import os
import re
import secrets
import select
import signal
import socket
import ssl
import struct
import sys
import threading
import time
import urllib.request
import zlib
from decimal import Decimal

import bson
from bson.binary import Binary, UuidRepresentation
from bson.codec_options import CodecOptions
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from bson.max_key import MaxKey
from bson.min_key import MinKey
from bson.objectid import ObjectId
from bson.regex import Regex
from bson.timestamp import Timestamp
from pymongo.saslprep import saslprep

OP_REPLY = 1
OP_QUERY = 2004
OP_COMPRESSED = 2012
OP_MSG = 2013
OPCODE_NAMES = {OP_QUERY: "OP_QUERY", OP_MSG: "OP_MSG", OP_COMPRESSED: "OP_COMPRESSED"}
COMPRESSORS = {0: "noop", 2: "zlib"}
SUPPORTED_COMPRESSION = ["zlib"]

MSG_CHECKSUM = 1 << 0
MSG_MORE_TO_COME = 1 << 1
MSG_EXHAUST_ALLOWED = 1 << 16
QUERY_SECONDARY_OK = 1 << 2
REPLY_QUERY_FAILURE = 1 << 1

MAX_BSON = 16777216
MAX_MESSAGE = 48000000
MAX_WRITE_BATCH = 100000
MAX_AWAIT_S = 10.0
MAX_CURSORS = 10000
DEFAULT_BATCH = 101
SCRAM_ITERATIONS = 15000
ATLAS_REFRESH_S = 0.5
VERSION = "7.0.12"

CODEC = CodecOptions(uuid_representation=UuidRepresentation.UNSPECIFIED)

PREAUTH_COMMANDS = {"hello", "isMaster", "ismaster", "saslStart", "saslContinue", "ping",
                    "buildInfo", "buildinfo", "getnonce", "endSessions"}
WRITE_COMMANDS = {"insert", "update", "delete", "findAndModify", "findandmodify", "create",
                  "drop", "dropDatabase", "createIndexes", "dropIndexes"}
READ_COMMANDS = {"find", "count", "distinct", "aggregate", "listCollections", "listIndexes",
                 "dbStats", "collStats"}
HELLO_COMMANDS = {"hello", "isMaster", "ismaster"}


class CommandError(Exception):
    """A command failure, answered as {ok: 0, errmsg, code, codeName}."""

    def __init__(self, code, code_name, errmsg):
        super().__init__(errmsg)
        self.code, self.code_name, self.errmsg = code, code_name, errmsg

    def doc(self):
        return {"ok": 0.0, "errmsg": self.errmsg, "code": self.code, "codeName": self.code_name}


class ProtocolError(Exception):
    """A wire-protocol violation: the connection is closed."""


def auth_failed():
    return CommandError(18, "AuthenticationFailed", "Authentication failed.")


# ---- CRC-32C (Castagnoli), for OP_MSG checksums -------------------------------

def _crc32c_table():
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


CRC32C_TABLE = _crc32c_table()


def crc32c(data):
    crc = 0xFFFFFFFF
    table = CRC32C_TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


# ---- wire messages ------------------------------------------------------------

def recv_exact(sock, n):
    """n bytes from sock (n is bounded by the caller); None on a clean EOF
    before the first byte."""
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 16))
        if not chunk:
            if not buf:
                return None
            raise ProtocolError("connection closed mid-message")
        buf += chunk
    return bytes(buf)


def read_message(sock):
    """(request_id, response_to, opcode, header_bytes, body) or None on EOF."""
    header = recv_exact(sock, 16)
    if header is None:
        return None
    length, request_id, response_to, opcode = struct.unpack("<iiii", header)
    if length < 16 or length > MAX_MESSAGE:
        raise ProtocolError("message length %d out of bounds" % length)
    body = recv_exact(sock, length - 16) if length > 16 else b""
    if body is None:
        raise ProtocolError("connection closed mid-message")
    return request_id, response_to, opcode, header, body


def decode_doc(data):
    return bson.decode(data, codec_options=CODEC)


def encode_doc(doc):
    return bson.encode(doc, codec_options=CODEC)


def read_cstring(data, pos):
    end = data.index(b"\x00", pos)
    return data[pos:end].decode("utf-8"), end + 1


def read_doc(data, pos, end):
    """The BSON document at data[pos:], which must end by `end`."""
    if pos + 5 > end:
        raise ProtocolError("truncated document")
    size = struct.unpack_from("<i", data, pos)[0]
    if size < 5 or pos + size > end:
        raise ProtocolError("bad document size %d" % size)
    return decode_doc(data[pos:pos + size]), pos + size


def parse_op_msg(header, body):
    """(flags, command) of an OP_MSG; kind 1 sequences become arrays."""
    if len(body) < 5:
        raise ProtocolError("short OP_MSG")
    flags = struct.unpack_from("<I", body, 0)[0]
    if flags & 0xFFFF & ~(MSG_CHECKSUM | MSG_MORE_TO_COME):
        raise ProtocolError("unknown required OP_MSG flag bits 0x%x" % flags)
    end = len(body)
    if flags & MSG_CHECKSUM:
        end -= 4
        if end < 5:
            raise ProtocolError("short OP_MSG")
        want = struct.unpack_from("<I", body, end)[0]
        if crc32c(header + body[:end]) != want:
            raise ProtocolError("OP_MSG checksum mismatch")
    pos, command, sequences = 4, None, []
    while pos < end:
        kind = body[pos]
        pos += 1
        if kind == 0:
            if command is not None:
                raise ProtocolError("two body sections")
            command, pos = read_doc(body, pos, end)
        elif kind == 1:
            if pos + 4 > end:
                raise ProtocolError("truncated document sequence")
            size = struct.unpack_from("<i", body, pos)[0]
            seq_end = pos + size
            if size < 5 or seq_end > end:
                raise ProtocolError("bad document sequence size %d" % size)
            ident, p = read_cstring(body, pos + 4)
            docs = []
            while p < seq_end:
                doc, p = read_doc(body, p, seq_end)
                docs.append(doc)
            sequences.append((ident, docs))
            pos = seq_end
        else:
            raise ProtocolError("unknown OP_MSG section kind %d" % kind)
    if command is None:
        raise ProtocolError("OP_MSG without a body section")
    for ident, docs in sequences:
        command[ident] = docs
    return flags, command


def parse_op_query(body):
    """(flags, full collection name, query document) of an OP_QUERY."""
    if len(body) < 4:
        raise ProtocolError("short OP_QUERY")
    flags = struct.unpack_from("<i", body, 0)[0]
    ns, pos = read_cstring(body, 4)
    pos += 8  # numberToSkip, numberToReturn
    query, _ = read_doc(body, pos, len(body))
    return flags, ns, query


def decompress(body):
    """(original opcode, compressor id, uncompressed message body)."""
    if len(body) < 9:
        raise ProtocolError("short OP_COMPRESSED")
    opcode, size, cid = struct.unpack_from("<iiB", body, 0)
    if size < 0 or size > MAX_MESSAGE - 16:
        raise ProtocolError("uncompressed size %d out of bounds" % size)
    data = body[9:]
    if cid == 2:
        d = zlib.decompressobj()
        try:
            data = d.decompress(data, size + 1)
        except zlib.error as e:
            raise ProtocolError("zlib: %s" % e) from None
    elif cid != 0:
        raise ProtocolError("unsupported compressor id %d" % cid)
    if len(data) != size:
        raise ProtocolError("uncompressed size mismatch")
    if opcode == OP_COMPRESSED:
        raise ProtocolError("nested OP_COMPRESSED")
    return opcode, cid, data


def build_message(request_id, response_to, opcode, payload, compressor=None):
    """A whole message; compressed with compressor id `compressor` when given."""
    if compressor is not None:
        data = zlib.compress(payload) if compressor == 2 else payload
        payload = struct.pack("<iiB", opcode, len(payload), compressor) + data
        opcode = OP_COMPRESSED
    return struct.pack("<iiii", 16 + len(payload), request_id, response_to, opcode) + payload


def op_msg_payload(doc, flags=0):
    return struct.pack("<I", flags) + b"\x00" + encode_doc(doc)


def op_reply_payload(doc, flags=0):
    return struct.pack("<iqii", flags, 0, 0, 1) + encode_doc(doc)


# ---- BSON ordering and the query language -----------------------------------

MISSING = object()   # a path that resolves to nothing


def type_rank(v):
    """MongoDB's BSON comparison order; a missing value sorts as null."""
    if v is MISSING or v is None:
        return 2
    if isinstance(v, MinKey):
        return 1
    if isinstance(v, bool):
        return 9
    if isinstance(v, (int, float, Decimal128)):
        return 3
    if isinstance(v, str):
        return 4
    if isinstance(v, dict):
        return 5
    if isinstance(v, (list, tuple)):
        return 6
    if isinstance(v, bytes):
        return 7
    if isinstance(v, ObjectId):
        return 8
    if isinstance(v, datetime.datetime):
        return 10
    if isinstance(v, Timestamp):
        return 11
    if isinstance(v, (Regex, re.Pattern)):
        return 12
    if isinstance(v, MaxKey):
        return 13
    return 14


def number(v):
    return v.to_decimal() if isinstance(v, Decimal128) else v


def cmp_raw(a, b):
    return (a > b) - (a < b)


def compare(a, b):
    """-1 / 0 / 1 in MongoDB's order."""
    ra, rb = type_rank(a), type_rank(b)
    if ra != rb:
        return cmp_raw(ra, rb)
    if ra == 3:
        x, y = number(a), number(b)
        if isinstance(x, Decimal) and isinstance(y, float):
            y = Decimal(y)
        elif isinstance(y, Decimal) and isinstance(x, float):
            x = Decimal(x)
        return cmp_raw(x, y)
    if ra in (4, 8, 9):
        return cmp_raw(a, b) if ra != 8 else cmp_raw(a.binary, b.binary)
    if ra == 5:
        for (ka, va), (kb, vb) in zip(a.items(), b.items()):
            c = cmp_raw(type_rank(va), type_rank(vb)) or cmp_raw(ka, kb) or compare(va, vb)
            if c:
                return c
        return cmp_raw(len(a), len(b))
    if ra == 6:
        for x, y in zip(a, b):
            c = compare(x, y)
            if c:
                return c
        return cmp_raw(len(a), len(b))
    if ra == 7:
        return (cmp_raw(len(a), len(b)) or cmp_raw(getattr(a, "subtype", 0), getattr(b, "subtype", 0))
                or cmp_raw(bytes(a), bytes(b)))
    if ra == 10:
        return cmp_raw(a.replace(tzinfo=None), b.replace(tzinfo=None))
    if ra == 11:
        return cmp_raw((a.time, a.inc), (b.time, b.inc))
    return cmp_raw(str(a), str(b)) if ra in (12, 14) else 0


def equal(a, b):
    return compare(a, b) == 0


def value_key(v):
    """A hashable key under which equal values (1, 1.0, Int64(1)) coincide."""
    if type_rank(v) == 3:
        return ("n", float(number(v)))
    if v is MISSING or v is None:
        return ("null",)
    return ("b", encode_doc({"": v}))


def lookup(value, parts):
    """The values a dotted path reaches, descending into arrays like MongoDB;
    [MISSING] when it reaches none."""
    if not parts:
        return [value]
    if isinstance(value, dict):
        return lookup(value[parts[0]], parts[1:]) if parts[0] in value else [MISSING]
    if isinstance(value, list):
        out = []
        if parts[0].isdigit() and int(parts[0]) < len(value):
            out += lookup(value[int(parts[0])], parts[1:])
        for el in value:
            if isinstance(el, dict):
                out += [v for v in lookup(el, parts) if v is not MISSING]
        return out or [MISSING]
    return [MISSING]


def get_path(doc, path):
    return lookup(doc, path.split("."))


def first_value(doc, path):
    """The value at path (None when missing): for sorting and expressions."""
    v = get_path(doc, path)[0]
    return None if v is MISSING else v


def with_elements(values):
    """The values and, for arrays, their elements (equality matches either)."""
    out = []
    for v in values:
        out.append(v)
        if isinstance(v, list):
            out.extend(v)
    return out


def is_operator_doc(v):
    return isinstance(v, dict) and bool(v) and next(iter(v)).startswith("$")


def regex_matches(pattern, values, options=""):
    """Whether any string among values matches pattern (a string with
    $options letters, a BSON Regex or a compiled pattern)."""
    flags = 0
    if isinstance(pattern, (Regex, re.Pattern)):
        flags = pattern.flags if isinstance(pattern.flags, int) else 0
        pattern = pattern.pattern
    for ch, fl in (("i", re.I), ("m", re.M), ("s", re.S), ("x", re.X)):
        if ch in (options or ""):
            flags |= fl
    if isinstance(pattern, bytes):
        pattern = pattern.decode("utf-8", "replace")
    try:
        rx = re.compile(pattern, flags)
    except re.error as e:
        raise CommandError(51091, "Location51091", "Regular expression is invalid: %s" % e) from None
    return any(isinstance(v, str) and rx.search(v) for v in values)


def match_operator(op, arg, values, cond):
    """Whether the values a path reaches satisfy {op: arg}."""
    expanded = with_elements(values)
    if op == "$eq":
        return any(equal(v, arg) for v in expanded)
    if op == "$ne":
        return not any(equal(v, arg) for v in expanded)
    if op in ("$gt", "$gte", "$lt", "$lte"):
        want = {"$gt": (1,), "$gte": (0, 1), "$lt": (-1,), "$lte": (-1, 0)}[op]
        return any(type_rank(v) == type_rank(arg) and compare(v, arg) in want for v in expanded)
    if op in ("$in", "$nin"):
        if not isinstance(arg, list):
            raise CommandError(2, "BadValue", "%s needs an array" % op)
        hit = any(regex_matches(a, expanded) if isinstance(a, (Regex, re.Pattern))
                  else any(equal(v, a) for v in expanded) for a in arg)
        return hit if op == "$in" else not hit
    if op == "$exists":
        return any(v is not MISSING for v in values) == bool(arg)
    if op == "$regex":
        return regex_matches(arg, expanded, cond.get("$options", ""))
    if op == "$options":
        return True
    if op == "$not":
        if isinstance(arg, (Regex, re.Pattern)):
            return not regex_matches(arg, expanded)
        if not is_operator_doc(arg):
            raise CommandError(2, "BadValue", "$not needs a regex or a document")
        return not all(match_operator(o, a, values, arg) for o, a in arg.items())
    raise CommandError(2, "BadValue", "unknown operator: %s" % op)


def matches(doc, flt):
    """Whether doc satisfies the query filter flt."""
    if not isinstance(flt, dict):
        raise CommandError(2, "BadValue", "a filter must be a document")
    for key, cond in flt.items():
        if key in ("$and", "$or", "$nor"):
            if not isinstance(cond, list) or not cond:
                raise CommandError(2, "BadValue", "%s must be a nonempty array" % key)
            results = (matches(doc, sub) for sub in cond)
            ok = all(results) if key == "$and" else any(results)
            if ok == (key == "$nor"):
                return False
        elif key == "$comment":
            continue
        elif key.startswith("$"):
            raise CommandError(2, "BadValue", "unknown top level operator: %s" % key)
        else:
            values = get_path(doc, key)
            if is_operator_doc(cond):
                if not all(match_operator(op, arg, values, cond) for op, arg in cond.items()):
                    return False
            elif isinstance(cond, (Regex, re.Pattern)):
                if not regex_matches(cond, with_elements(values)):
                    return False
            elif not any(equal(v, cond) for v in with_elements(values)):
                return False
    return True


def sort_docs(docs, spec):
    """docs sorted by {field: 1|-1, ...} (stable)."""
    if not spec:
        return list(docs)
    if not isinstance(spec, dict):
        raise CommandError(2, "BadValue", "sort must be a document")
    fields = []
    for field, direction in spec.items():
        if direction not in (1, -1) or isinstance(direction, bool):
            raise CommandError(15974, "Location15974", "$sort key ordering must be 1 or -1")
        fields.append((field, int(direction)))

    def cmp(a, b):
        for field, direction in fields:
            c = compare(first_value(a, field), first_value(b, field))
            if c:
                return c * direction
        return 0
    return sorted(docs, key=functools.cmp_to_key(cmp))


def set_path(doc, path, value, create=True):
    """Set (or with value MISSING, remove) a dotted path in doc."""
    parts = path.split(".")
    cur = doc
    for part in parts[:-1]:
        if isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        elif isinstance(cur, dict):
            if part not in cur:
                if not create:
                    return
                cur[part] = {}
            cur = cur[part]
        else:
            raise CommandError(28, "PathNotViable", "Cannot create field '%s' in element" % part)
        if not isinstance(cur, (dict, list)):
            if not create:
                return
            raise CommandError(28, "PathNotViable", "Cannot create field '%s' in element" % part)
    last = parts[-1]
    if isinstance(cur, list) and last.isdigit():
        i = int(last)
        if value is MISSING:
            if i < len(cur):
                cur[i] = None
        else:
            cur.extend([None] * (i + 1 - len(cur)))
            cur[i] = value
    elif isinstance(cur, dict):
        if value is MISSING:
            cur.pop(last, None)
        else:
            cur[last] = value
    elif value is not MISSING:
        raise CommandError(28, "PathNotViable", "Cannot create field '%s' in element" % last)


def project(doc, spec):
    """Apply a find projection / $project stage (inclusion or exclusion)."""
    if not spec:
        return doc
    if not isinstance(spec, dict):
        raise CommandError(2, "BadValue", "projection must be a document")
    fields = {k: v for k, v in spec.items() if k != "_id"}
    include_id = bool(spec.get("_id", 1)) if not isinstance(spec.get("_id"), str) else True
    inclusive = any(not (isinstance(v, (int, float, bool)) and not v) for v in fields.values())
    if inclusive:
        out = {}
        if "_id" in spec and not isinstance(spec["_id"], (int, float, bool)):
            out["_id"] = evaluate(doc, spec["_id"])
        elif include_id and "_id" in doc:
            out["_id"] = doc["_id"]
        for path, v in fields.items():
            if isinstance(v, (int, float, bool)):
                val = get_path(doc, path)
                if len(val) == 1 and val[0] is not MISSING:
                    set_path(out, path, copy.deepcopy(val[0]))
            else:
                set_path(out, path, evaluate(doc, v))
        return out
    out = copy.deepcopy(doc)
    for path in fields:
        set_path(out, path, MISSING, create=False)
    if not include_id:
        out.pop("_id", None)
    return out


def evaluate(doc, expr):
    """An aggregation expression: "$path", {$literal: v}, a document of
    expressions, or a constant."""
    if isinstance(expr, str) and expr.startswith("$"):
        if expr.startswith("$$"):
            raise CommandError(17276, "Location17276", "Use of undefined variable: %s" % expr[2:])
        return copy.deepcopy(first_value(doc, expr[1:]))
    if isinstance(expr, dict):
        if is_operator_doc(expr):
            op = next(iter(expr))
            if op == "$literal":
                return expr[op]
            raise CommandError(168, "InvalidPipelineOperator", "Unrecognized expression '%s'" % op)
        return {k: evaluate(doc, v) for k, v in expr.items()}
    if isinstance(expr, list):
        return [evaluate(doc, v) for v in expr]
    return expr


# ---- aggregation ----------------------------------------------------------------

ACCUMULATORS = ("$sum", "$avg", "$min", "$max", "$first", "$last", "$push")


def group_stage(docs, spec):
    """$group: _id expression, fields {name: {accumulator: expression}}."""
    if not isinstance(spec, dict) or "_id" not in spec:
        raise CommandError(15955, "Location15955", "a group specification must include an _id")
    accs = []
    for name, acc in spec.items():
        if name == "_id":
            continue
        if not isinstance(acc, dict) or len(acc) != 1 or next(iter(acc)) not in ACCUMULATORS:
            raise CommandError(15952, "Location15952", "unknown group operator in field '%s'" % name)
        op, expr = next(iter(acc.items()))
        accs.append((name, op, expr))
    groups = {}
    for doc in docs:
        gid = evaluate(doc, spec["_id"])
        state = groups.setdefault(value_key(gid), {"_id": gid, "values": {n: [] for n, _, _ in accs}})
        for name, _, expr in accs:
            state["values"][name].append(evaluate(doc, expr))
    out = []
    for state in groups.values():
        res = {"_id": state["_id"]}
        for name, op, _ in accs:
            res[name] = accumulate(op, state["values"][name])
        out.append(res)
    return out


def accumulate(op, values):
    nums = [v for v in values if type_rank(v) == 3 and v is not None]
    present = [v for v in values if v is not None]
    if op == "$sum":
        total = sum(number(v) for v in nums)
        return float(total) if isinstance(total, Decimal) else total
    if op == "$avg":
        return float(sum(number(v) for v in nums)) / len(nums) if nums else None
    if op in ("$min", "$max"):
        if not present:
            return None
        pick = min if op == "$min" else max
        return pick(present, key=functools.cmp_to_key(compare))
    if op == "$first":
        return values[0] if values else None
    if op == "$last":
        return values[-1] if values else None
    return values


def non_negative_int(v, what):
    if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0 or int(v) != v:
        raise CommandError(2, "BadValue", "%s must be a non-negative integer" % what)
    return int(v)


def run_pipeline(docs, pipeline):
    if not isinstance(pipeline, list):
        raise CommandError(14, "TypeMismatch", "'pipeline' option must be specified as an array")
    for stage in pipeline:
        if not isinstance(stage, dict) or len(stage) != 1:
            raise CommandError(40323, "Location40323",
                               "A pipeline stage specification object must contain exactly one field.")
        name, spec = next(iter(stage.items()))
        if name == "$match":
            docs = [d for d in docs if matches(d, spec)]
        elif name == "$project":
            docs = [project(d, spec) for d in docs]
        elif name == "$sort":
            docs = sort_docs(docs, spec)
        elif name == "$skip":
            docs = docs[non_negative_int(spec, "$skip"):]
        elif name == "$limit":
            docs = docs[:non_negative_int(spec, "$limit")]
        elif name == "$count":
            if not isinstance(spec, str) or not spec or spec.startswith("$") or "." in spec:
                raise CommandError(40156, "Location40156", "the count field must be a non-empty string")
            docs = [{spec: len(docs)}] if docs else []
        elif name == "$group":
            docs = group_stage(docs, spec)
        else:
            raise CommandError(40324, "Location40324", "Unrecognized pipeline stage name: '%s'" % name)
    return docs


# ---- the data store ----------------------------------------------------------------

class Collection:
    """Documents in insertion order, an _id index, and index specs."""

    def __init__(self):
        self.docs = []
        self.by_id = {}
        self.indexes = [{"v": 2, "key": {"_id": 1}, "name": "_id_"}]

    def insert(self, doc):
        key = value_key(doc["_id"])
        if key in self.by_id:
            return False
        self.by_id[key] = doc
        self.docs.append(doc)
        return True

    def remove(self, doc):
        del self.by_id[value_key(doc["_id"])]
        self.docs.remove(doc)


class Store:
    """Databases and open cursors, shared by every member; callers hold .lock."""

    def __init__(self):
        self.lock = threading.RLock()
        self.dbs = {}
        self.cursors = {}

    def coll(self, db, name, create=False):
        colls = self.dbs.get(db)
        if colls is None:
            if not create:
                return None
            colls = self.dbs[db] = {}
        c = colls.get(name)
        if c is None and create:
            c = colls[name] = Collection()
        return c

    def docs(self, db, name):
        c = self.coll(db, name)
        return list(c.docs) if c else []

    def cursor_reply(self, ns, docs, batch_size, single_batch=False, first=True):
        """{cursor: {firstBatch|nextBatch, id, ns}}; docs beyond the batch stay
        in a new cursor unless single_batch."""
        batch, rest = docs[:batch_size], docs[batch_size:]
        cid = 0
        if rest and not single_batch:
            while cid == 0 or cid in self.cursors:
                cid = secrets.randbits(62) + 1
            if len(self.cursors) >= MAX_CURSORS:
                self.cursors.pop(next(iter(self.cursors)))
            self.cursors[cid] = {"ns": ns, "docs": rest}
        key = "firstBatch" if first else "nextBatch"
        return {"cursor": {key: batch, "id": Int64(cid), "ns": ns}, "ok": 1.0}

    def get_more(self, ns, cid, batch_size):
        cur = self.cursors.get(cid)
        if cur is None or cur["ns"] != ns:
            raise CommandError(43, "CursorNotFound", "cursor id %d not found" % cid)
        del self.cursors[cid]
        batch, rest = cur["docs"][:batch_size], cur["docs"][batch_size:]
        if rest:
            cur["docs"] = rest
            self.cursors[cid] = cur
        return {"cursor": {"nextBatch": batch, "id": Int64(cid if rest else 0), "ns": ns}, "ok": 1.0}


def apply_update(doc, update, inserting=False):
    """The document after update (operators or a replacement); doc untouched."""
    if isinstance(update, list):
        raise CommandError(9, "FailedToParse", "pipeline updates are not supported by fake_mongo")
    if not isinstance(update, dict):
        raise CommandError(9, "FailedToParse", "update must be a document")
    if not is_operator_doc(update):
        if any(k.startswith("$") for k in update):
            raise CommandError(9, "FailedToParse", "mixed operators and fields in an update")
        if "_id" in update and "_id" in doc and not equal(update["_id"], doc["_id"]):
            raise CommandError(66, "ImmutableField",
                               "After applying the update, the (immutable) field '_id' was found to have been altered")
        new = {"_id": doc["_id"]} if "_id" in doc else {}
        new.update((k, copy.deepcopy(v)) for k, v in update.items() if k != "_id")
        if "_id" in update and "_id" not in new:
            new = {"_id": update["_id"], **new}
        return new
    new = copy.deepcopy(doc)
    for op, fields in update.items():
        if not isinstance(fields, dict):
            raise CommandError(9, "FailedToParse", "Modifiers operate on fields but we found another type instead")
        if op not in ("$set", "$unset", "$inc", "$setOnInsert"):
            raise CommandError(9, "FailedToParse", "Unknown modifier: %s" % op)
        if op == "$setOnInsert" and not inserting:
            continue
        for path, val in fields.items():
            if path == "_id" and "_id" in doc and (op != "$set" or not equal(val, doc["_id"])):
                raise CommandError(66, "ImmutableField", "Performing an update on the path '_id' would modify the immutable field '_id'")
            if op in ("$set", "$setOnInsert"):
                set_path(new, path, copy.deepcopy(val))
            elif op == "$unset":
                set_path(new, path, MISSING, create=False)
            else:
                set_path(new, path, increment(get_path(new, path)[0], val, path))
    return new


def increment(cur, by, path):
    if type_rank(by) != 3 or by is None:
        raise CommandError(14, "TypeMismatch", "Cannot increment with non-numeric argument")
    if cur is MISSING:
        return by
    if type_rank(cur) != 3 or cur is None:
        raise CommandError(14, "TypeMismatch",
                           "Cannot apply $inc to a value of non-numeric type. {_id: ...} has the field '%s' "
                           "of non-numeric type %s" % (path, type(cur).__name__))
    if isinstance(cur, Decimal128) or isinstance(by, Decimal128):
        return Decimal128(number(cur) + number(by))
    total = cur + by
    if isinstance(total, int) and (isinstance(cur, Int64) or isinstance(by, Int64)):
        return Int64(total)
    return total


def upsert_seed(query):
    """The document an upsert starts from: the query's equality fields."""
    doc = {}
    for k, v in query.items():
        if k.startswith("$"):
            if k == "$and" and isinstance(v, list):
                for sub in v:
                    if isinstance(sub, dict):
                        doc.update(upsert_seed(sub))
            continue
        if is_operator_doc(v):
            if "$eq" in v:
                set_path(doc, k, copy.deepcopy(v["$eq"]))
        else:
            set_path(doc, k, copy.deepcopy(v))
    return doc


def with_id_first(doc):
    if "_id" not in doc:
        return {"_id": ObjectId(), **doc}
    if next(iter(doc)) != "_id":
        return {"_id": doc["_id"], **{k: v for k, v in doc.items() if k != "_id"}}
    return doc


# ---- users and SCRAM-SHA-256 ------------------------------------------------------

def parse_iso(text):
    """Seconds since the epoch of an ISO 8601 date-time; None if unparseable."""
    try:
        dt = datetime.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=datetime.timezone.utc)
    return dt.timestamp()


class Users:
    """Who may log in: static users and, with --atlas-url, fake_atlas' database
    users (see the module docstring)."""

    def __init__(self, cfg, say):
        self.say = say
        self.static = {("admin", name): pw for name, pw in cfg.users}
        self.atlas_url = cfg.atlas_url.rstrip("/") if cfg.atlas_url else None
        self.atlas_group = cfg.atlas_group
        self.delay = cfg.user_delay
        self.ssl_ctx = ssl.create_default_context(cafile=cfg.atlas_ca) if self.atlas_url else None
        self.lock = threading.Lock()
        self.refresh_lock = threading.Lock()
        self.fetch_started = None    # time.monotonic() when the last fetch started
        self.atlas = {}              # (db, user) -> {"record", "password", "deleted", "delete_after"}
        self.first_seen = {}         # record index in /__fake/minted -> time.time()
        self.salts = {}
        self.keys = {}               # (db, user, password) -> (stored_key, server_key)

    def password(self, db, user):
        """The password user of db logs in with now, or None."""
        if (db, user) in self.static:
            return self.static[(db, user)]
        with self.lock:
            u = self.atlas.get((db, user))
            if u is None or u["deleted"] or u["password"] is None:
                return None
            now = time.time()
            if now < self.first_seen[u["record"]] + self.delay:
                return None
            if u["delete_after"] is not None and u["delete_after"] <= now:
                return None
            return u["password"]

    def lookup(self, db, user, since):
        """password() of a user, the Atlas view refreshed first (for a user
        that is not static) by a fetch started at or after `since`."""
        if (db, user) not in self.static:
            self.refresh(since)
        return self.password(db, user)

    def refresh(self, since):
        """Make the Atlas view come from a fetch started at or after `since`
        (time.monotonic()); fetches start ATLAS_REFRESH_S apart at least, so
        this may wait that long, and callers arriving together share one."""
        if not self.atlas_url:
            return
        with self.refresh_lock:
            if self.fetch_started is not None:
                if self.fetch_started >= since:
                    return
                time.sleep(max(0.0, self.fetch_started + ATLAS_REFRESH_S - time.monotonic()))
            self.fetch_started = time.monotonic()
            try:
                minted = self.fetch("/__fake/minted")
                state = self.fetch("/__fake/state")
            except (OSError, ValueError) as e:
                self.say("atlas users: fetch failed: %s" % e)
                return
            self.update(minted, state)

    def fetch(self, path):
        with urllib.request.urlopen(self.atlas_url + path, context=self.ssl_ctx, timeout=5) as r:
            return json.loads(r.read(4 << 20))

    def update(self, minted, state):
        delete_after = {}
        for gid, users in (state.get("databaseUsers") or {}).items():
            for u in users:
                if u.get("deleteAfterDate"):
                    delete_after[(gid, u.get("databaseName"), u.get("username"))] = parse_iso(u["deleteAfterDate"])
        view = {}
        now = time.time()
        with self.lock:
            for i, rec in enumerate(minted.get("database_users") or []):
                gid = rec.get("groupId")
                if self.atlas_group and gid != self.atlas_group:
                    continue
                key = (rec.get("databaseName") or "admin", rec.get("username"))
                if not rec.get("deleted"):
                    self.first_seen.setdefault(i, now)
                view[key] = {"record": i, "password": rec.get("password"), "deleted": bool(rec.get("deleted")),
                             "delete_after": delete_after.get((gid,) + key)}
            self.atlas = view

    def salt(self, db, user):
        with self.lock:
            return self.salts.setdefault((db, user), secrets.token_bytes(28))

    def scram_keys(self, db, user, password):
        """(stored key, server key) of user with password."""
        salt = self.salt(db, user)
        with self.lock:
            keys = self.keys.get((db, user, password))
        if keys is None:
            salted = hashlib.pbkdf2_hmac("sha256", saslprep(password).encode("utf-8"), salt, SCRAM_ITERATIONS)
            client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
            keys = (hashlib.sha256(client_key).digest(),
                    hmac.new(salted, b"Server Key", hashlib.sha256).digest())
            with self.lock:
                self.keys[(db, user, password)] = keys
        return keys


class Scram:
    """The server side of one SCRAM-SHA-256 conversation."""

    def __init__(self, users, db, payload, skip_empty, since):
        self.users, self.db, self.skip_empty, self.since = users, db, skip_empty, since
        self.user = None           # the user name, once the client-first message parsed
        self.authenticated = False
        self.finished = False      # server-final sent
        self.done = False
        self.server_first = self.start(payload)

    def start(self, payload):
        try:
            msg = bytes(payload).decode("utf-8")
            cbflag, authzid, bare = msg.split(",", 2)
            attrs = dict(a.split("=", 1) for a in bare.split(","))
        except ValueError:
            raise auth_failed() from None
        if cbflag not in ("n", "y") or authzid or "n" not in attrs or "r" not in attrs or "m" in attrs:
            raise auth_failed()
        self.user = attrs["n"].replace("=2C", ",").replace("=3D", "=")
        self.gs2 = cbflag + ",,"
        self.client_first_bare = bare
        self.nonce = attrs["r"] + base64.b64encode(secrets.token_bytes(24)).decode("ascii")
        if self.users.lookup(self.db, self.user, self.since) is None:
            raise auth_failed()
        salt = self.users.salt(self.db, self.user)
        return ("r=%s,s=%s,i=%d" % (self.nonce, base64.b64encode(salt).decode("ascii"),
                                    SCRAM_ITERATIONS)).encode("ascii")

    def step(self, payload):
        """The reply payload of a saslContinue; raises CommandError on failure."""
        if self.finished:
            if bytes(payload):
                raise auth_failed()
            self.done = True
            return b""
        try:
            msg = bytes(payload).decode("utf-8")
            without_proof, proof = msg.rsplit(",p=", 1)
            attrs = dict(a.split("=", 1) for a in without_proof.split(","))
            proof = base64.b64decode(proof, validate=True)
        except ValueError:
            raise auth_failed() from None
        if attrs.get("r") != self.nonce or attrs.get("c") != base64.b64encode(self.gs2.encode()).decode():
            raise auth_failed()
        auth_message = ",".join((self.client_first_bare, self.server_first.decode("ascii"),
                                 without_proof)).encode("utf-8")
        server_key = self.verify(auth_message, proof)
        if server_key is None:
            raise auth_failed()
        self.authenticated = self.finished = True
        self.done = self.skip_empty
        signature = hmac.new(server_key, auth_message, hashlib.sha256).digest()
        return b"v=" + base64.b64encode(signature)

    def verify(self, auth_message, proof):
        """The server key when proof is right for the user's current password."""
        password = self.users.password(self.db, self.user)
        if password is None:
            return None
        stored_key, server_key = self.users.scram_keys(self.db, self.user, password)
        signature = hmac.new(stored_key, auth_message, hashlib.sha256).digest()
        if len(proof) != len(signature):
            return None
        client_key = bytes(a ^ b for a, b in zip(proof, signature))
        if not hmac.compare_digest(hashlib.sha256(client_key).digest(), stored_key):
            return None
        return server_key


# ---- connections and commands ------------------------------------------------------

class Request:
    """One command as received."""

    def __init__(self, opcode, compressor, inner_opcode, cmd, db, request_id):
        self.opcode, self.compressor, self.inner_opcode = opcode, compressor, inner_opcode
        self.cmd, self.db, self.request_id = cmd, db, request_id
        self.name = next(iter(cmd)) if cmd else ""
        self.exhaust = self.more_to_come = self.secondary_ok = False
        self.await_s = None     # a streaming hello: seconds to wait per reply
        self.auth_user = None   # the user a saslStart / speculativeAuthenticate names
        self.arrived = time.monotonic()


def coll_arg(cmd, name):
    v = cmd.get(name)
    if not isinstance(v, str) or not v:
        raise CommandError(73, "InvalidNamespace", "collection name has invalid type %s" % type(v).__name__)
    return v


def batch_size_arg(spec, default):
    v = spec.get("batchSize", default) if isinstance(spec, dict) else default
    return non_negative_int(v, "batchSize")


def host_port(name, port):
    return ("[%s]:%d" if ":" in name else "%s:%d") % (name, port)


class Connection:
    """One client connection to one member, served by its own thread."""

    def __init__(self, server, member, sock, number):
        self.server, self.member, self.sock, self.number = server, member, sock, number
        self.store = server.store
        self.user = None        # (db, name) once authenticated
        self.sasl = None        # the Scram conversation under way
        self.request_ids = itertools.count(secrets.randbelow(1 << 24) + 1)

    def run(self):
        try:
            if self.server.ssl_ctx:
                self.sock.settimeout(10)
                self.sock = self.server.ssl_ctx.wrap_socket(self.sock, server_side=True)
                self.sock.settimeout(None)
            while True:
                msg = read_message(self.sock)
                if msg is None:
                    break
                self.handle(*msg)
        except (ProtocolError, ValueError, bson.errors.BSONError) as e:
            self.server.say("%s conn %d: closing: %s" % (self.member.name, self.number, e))
        except OSError:
            pass
        finally:
            try:
                self.sock.close()
            except OSError:
                pass

    # -- messages --

    def handle(self, request_id, _response_to, opcode, header, body):
        outer, compressor = opcode, None
        if opcode == OP_COMPRESSED:
            opcode, compressor, body = decompress(body)
            header = struct.pack("<iiii", 16 + len(body), request_id, _response_to, opcode)
        if opcode == OP_MSG:
            flags, cmd = parse_op_msg(header, body)
            req = Request(outer, compressor, opcode, cmd, cmd.get("$db"), request_id)
            req.more_to_come = bool(flags & MSG_MORE_TO_COME)
            req.exhaust = bool(flags & MSG_EXHAUST_ALLOWED)
            pref = cmd.get("$readPreference")
            req.secondary_ok = isinstance(pref, dict) and pref.get("mode", "primary") != "primary"
        elif opcode == OP_QUERY:
            flags, ns, query = parse_op_query(body)
            if not ns.endswith(".$cmd"):
                err = {"$err": "fake_mongo: OP_QUERY is only for commands", "code": 5739101, "ok": 0.0}
                self.send(op_reply_payload(err, REPLY_QUERY_FAILURE), OP_REPLY, request_id, compressor)
                return
            cmd = query.get("$query", query) if "$query" in query else query
            if not isinstance(cmd, dict):
                raise ProtocolError("$query is not a document")
            req = Request(outer, compressor, opcode, cmd, ns[:-len(".$cmd")], request_id)
            req.secondary_ok = bool(flags & QUERY_SECONDARY_OK) or "$readPreference" in query
        else:
            raise ProtocolError("unsupported opcode %d" % opcode)
        reply = self.execute(req)
        self.log(req, reply)
        if req.more_to_come:
            return
        if opcode == OP_QUERY:
            self.send(op_reply_payload(reply), OP_REPLY, request_id, compressor)
            return
        if not (req.exhaust and req.await_s is not None):
            self.send(op_msg_payload(reply), OP_MSG, request_id, compressor)
            return
        prev = self.send(op_msg_payload(reply, MSG_MORE_TO_COME), OP_MSG, request_id, compressor)
        while not self.wait_readable(req.await_s):
            reply = self.hello_doc(req.name != "hello", {})
            prev = self.send(op_msg_payload(reply, MSG_MORE_TO_COME), OP_MSG, prev, compressor)

    def send(self, payload, opcode, response_to, compressor):
        """Send a reply; returns its requestID."""
        request_id = next(self.request_ids) & 0x7FFFFFFF
        self.sock.sendall(build_message(request_id, response_to, opcode, payload, compressor))
        return request_id

    def wait_readable(self, timeout):
        """Wait up to timeout seconds; True as soon as the client sent
        something or closed."""
        if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
            return True
        readable, _, _ = select.select([self.sock], [], [], timeout)
        return bool(readable)

    def execute(self, req):
        """The reply document of a command (errors included)."""
        try:
            handler = COMMANDS.get(req.name)
            if handler is None:
                raise CommandError(59, "CommandNotFound", "no such command: '%s'" % req.name)
            if self.user is None and req.name not in PREAUTH_COMMANDS:
                raise CommandError(13, "Unauthorized", "command %s requires authentication" % req.name)
            if not isinstance(req.db, str) or not req.db:
                raise CommandError(40571, "Location40571", "OP_MSG requests require a $db argument")
            if not self.member.primary:
                if req.name in WRITE_COMMANDS:
                    raise CommandError(10107, "NotWritablePrimary", "not primary")
                if req.name in READ_COMMANDS and not req.secondary_ok:
                    raise CommandError(13435, "NotPrimaryNoSecondaryOk", "not primary and secondaryOk=false")
            return handler(self, req, req.cmd)
        except CommandError as e:
            return e.doc()
        except Exception as e:   # a bug here: answer like mongod's InternalError
            self.server.say("%s conn %d: %s failed: %r" % (self.member.name, self.number, req.name, e))
            return {"ok": 0.0, "errmsg": "fake_mongo internal error: %r" % e, "code": 1,
                    "codeName": "InternalError"}

    def log(self, req, reply):
        first = req.cmd.get(req.name) if req.cmd else None
        entry = {"ts": time.time(), "member": self.member.name, "conn": self.number,
                 "user": self.user[1] if self.user else None, "command": req.name, "db": req.db,
                 "collection": first if isinstance(first, str) else None,
                 "ok": 1 if reply.get("ok") else 0, "opcode": OPCODE_NAMES[req.opcode],
                 "exhaust": req.exhaust}
        if not reply.get("ok"):
            entry["code"] = reply.get("code")
        if req.compressor is not None:
            entry["compressor"] = COMPRESSORS[req.compressor]
            entry["inner_opcode"] = OPCODE_NAMES[req.inner_opcode]
        if req.name in HELLO_COMMANDS and isinstance(req.cmd.get("compression"), list):
            entry["compression"] = [str(c) for c in req.cmd["compression"]]
        if req.auth_user is not None:
            entry["auth_user"] = req.auth_user
        self.server.log(entry)

    # -- handshake and authentication --

    def c_hello(self, req, cmd):
        tv, max_await = cmd.get("topologyVersion"), cmd.get("maxAwaitTimeMS")
        if isinstance(tv, dict) and isinstance(max_await, (int, float)) and not isinstance(max_await, bool):
            req.await_s = min(max(max_await, 0) / 1000.0, MAX_AWAIT_S)
            if tv.get("processId") == self.server.process_id and tv.get("counter") == 0:
                self.wait_readable(req.await_s)
        doc = self.hello_doc(req.name != "hello", cmd)
        mechs = cmd.get("saslSupportedMechs")
        if isinstance(mechs, str) and "." in mechs:
            db, user = mechs.split(".", 1)
            if self.server.users.lookup(db, user, req.arrived) is not None:
                doc["saslSupportedMechs"] = ["SCRAM-SHA-256"]
        spec = cmd.get("speculativeAuthenticate")
        if isinstance(spec, dict) and spec.get("mechanism") == "SCRAM-SHA-256" and "saslStart" in spec:
            req.auth_user = auth_user_of(spec.get("payload"))
            try:
                first = self.start_sasl(req, spec.get("db") or req.db, spec)
                doc["speculativeAuthenticate"] = {"conversationId": 1, "done": False, "payload": Binary(first)}
            except CommandError:
                pass
        doc["ok"] = 1.0
        return doc

    def hello_doc(self, legacy, cmd):
        """The replica set description this member gives."""
        srv, me = self.server, self.member
        doc = {"ismaster" if legacy else "isWritablePrimary": me.primary,
               "topologyVersion": {"processId": srv.process_id, "counter": Int64(0)},
               "hosts": [host_port(m.name, m.port) for m in srv.members],
               "setName": srv.set_name, "setVersion": 1, "secondary": not me.primary,
               "primary": host_port(srv.members[0].name, srv.members[0].port),
               "me": host_port(me.name, me.port)}
        if me.primary:
            doc["electionId"] = srv.election_id
        doc.update({"maxBsonObjectSize": MAX_BSON, "maxMessageSizeBytes": MAX_MESSAGE,
                    "maxWriteBatchSize": MAX_WRITE_BATCH,
                    "localTime": datetime.datetime.now(datetime.timezone.utc),
                    "logicalSessionTimeoutMinutes": 30, "connectionId": self.number,
                    "minWireVersion": 0, "maxWireVersion": 21, "readOnly": False})
        if cmd.get("helloOk"):
            doc["helloOk"] = True
        asked = cmd.get("compression")
        if isinstance(asked, list):
            common = [c for c in asked if c in SUPPORTED_COMPRESSION]
            if common:
                doc["compression"] = common
        doc["ok"] = 1.0
        return doc

    def start_sasl(self, req, db, cmd):
        """Begin a SCRAM conversation; returns the server-first message."""
        mech = cmd.get("mechanism")
        if mech != "SCRAM-SHA-256":
            state = "not enabled" if mech == "SCRAM-SHA-1" else "unknown or not enabled"
            raise CommandError(334, "MechanismUnavailable",
                               "Received authentication for mechanism %s which is %s" % (mech, state))
        payload = cmd.get("payload")
        if not isinstance(payload, bytes):
            raise CommandError(9, "FailedToParse", "saslStart needs a payload")
        opts = cmd.get("options") if isinstance(cmd.get("options"), dict) else {}
        self.sasl = None
        sasl = Scram(self.server.users, db, payload, bool(opts.get("skipEmptyExchange")), req.arrived)
        self.sasl = sasl
        return sasl.server_first

    def c_sasl_start(self, req, cmd):
        req.auth_user = auth_user_of(cmd.get("payload"))
        first = self.start_sasl(req, req.db, cmd)
        return {"conversationId": 1, "done": False, "payload": Binary(first), "ok": 1.0}

    def c_sasl_continue(self, req, cmd):
        sasl = self.sasl
        if sasl is None or cmd.get("conversationId") != 1 or not isinstance(cmd.get("payload"), bytes):
            raise CommandError(17, "ProtocolError", "No SASL session state found")
        try:
            out = sasl.step(cmd["payload"])
        except CommandError:
            self.sasl = None
            raise
        if sasl.authenticated:
            self.user = (sasl.db, sasl.user)
        if sasl.done:
            self.sasl = None
        return {"conversationId": 1, "done": sasl.done, "payload": Binary(out), "ok": 1.0}

    def c_connection_status(self, req, cmd):
        users = [{"user": self.user[1], "db": self.user[0]}] if self.user else []
        roles = [{"role": "atlasAdmin", "db": "admin"}] if self.user else []
        info = {"authenticatedUsers": users, "authenticatedUserRoles": roles}
        if cmd.get("showPrivileges"):
            info["authenticatedUserPrivileges"] = []
        return {"authInfo": info, "ok": 1.0}

    def c_logout(self, req, cmd):
        self.user = self.sasl = None
        return {"ok": 1.0}

    # -- server information --

    def c_ok(self, req, cmd):
        return {"ok": 1.0}

    def c_build_info(self, req, cmd):
        return {"version": VERSION, "gitVersion": "0" * 40, "modules": ["enterprise"],
                "allocator": "tcmalloc", "javascriptEngine": "mozjs", "sysInfo": "deprecated",
                "versionArray": [7, 0, 12, 0], "openssl": {"running": ssl.OPENSSL_VERSION},
                "bits": 64, "debug": False, "maxBsonObjectSize": MAX_BSON,
                "storageEngines": ["devnull", "inMemory", "queryable_wt", "wiredTiger"], "ok": 1.0}

    def c_get_parameter(self, req, cmd):
        out = {}
        if cmd.get("featureCompatibilityVersion") or cmd.get("getParameter") == "*":
            out["featureCompatibilityVersion"] = {"version": "7.0"}
        out["ok"] = 1.0
        return out

    def c_get_cmd_line_opts(self, req, cmd):
        return {"argv": ["mongod"], "parsed": {"net": {"port": self.member.port}}, "ok": 1.0}

    def c_get_log(self, req, cmd):
        if cmd.get("getLog") == "*":
            return {"names": ["global", "startupWarnings"], "ok": 1.0}
        return {"totalLinesWritten": 0, "log": [], "ok": 1.0}

    def c_host_info(self, req, cmd):
        return {"system": {"currentTime": datetime.datetime.now(datetime.timezone.utc),
                           "hostname": host_port(self.member.name, self.member.port),
                           "cpuAddrSize": 64, "memSizeMB": 8192, "numCores": 2, "cpuArch": "x86_64",
                           "numaEnabled": False},
                "os": {"type": "Linux", "name": "fake_mongo", "version": VERSION}, "extra": {}, "ok": 1.0}

    def c_whatsmyuri(self, req, cmd):
        peer = self.sock.getpeername()
        return {"you": host_port(peer[0], peer[1]), "ok": 1.0}

    # -- reads --

    def c_find(self, req, cmd):
        coll = coll_arg(cmd, "find")
        flt = cmd.get("filter") or {}
        limit = cmd.get("limit", 0)
        if not isinstance(limit, (int, float)) or isinstance(limit, bool):
            raise CommandError(14, "TypeMismatch", "limit must be a number")
        single = bool(cmd.get("singleBatch")) or limit < 0
        limit = int(abs(limit))
        skip = non_negative_int(cmd.get("skip", 0), "skip")
        with self.store.lock:
            docs = [d for d in self.store.docs(req.db, coll) if matches(d, flt)]
            docs = sort_docs(docs, cmd.get("sort"))[skip:]
            if limit:
                docs = docs[:limit]
            docs = [project(copy.deepcopy(d), cmd.get("projection")) for d in docs]
            batch = batch_size_arg(cmd, DEFAULT_BATCH)
            if limit and single:
                batch = max(batch, limit)
            return self.store.cursor_reply("%s.%s" % (req.db, coll), docs, batch, single)

    def c_get_more(self, req, cmd):
        cid = cmd.get("getMore")
        if not isinstance(cid, int) or isinstance(cid, bool):
            raise CommandError(14, "TypeMismatch", "getMore cursor id must be a long")
        coll = coll_arg(cmd, "collection")
        with self.store.lock:
            batch = batch_size_arg(cmd, 0) or MAX_WRITE_BATCH * 100   # 0: everything left
            return self.store.get_more("%s.%s" % (req.db, coll), int(cid), batch)

    def c_kill_cursors(self, req, cmd):
        coll_arg(cmd, "killCursors")
        killed, missing = [], []
        with self.store.lock:
            for cid in cmd.get("cursors") or []:
                (killed if self.store.cursors.pop(int(cid), None) else missing).append(Int64(cid))
        return {"cursorsKilled": killed, "cursorsNotFound": missing, "cursorsAlive": [],
                "cursorsUnknown": [], "ok": 1.0}

    def c_count(self, req, cmd):
        coll = coll_arg(cmd, "count")
        with self.store.lock:
            docs = [d for d in self.store.docs(req.db, coll) if matches(d, cmd.get("query") or {})]
        docs = docs[non_negative_int(cmd.get("skip", 0), "skip"):]
        limit = abs(int(cmd.get("limit") or 0))
        return {"n": min(len(docs), limit) if limit else len(docs), "ok": 1.0}

    def c_distinct(self, req, cmd):
        coll = coll_arg(cmd, "distinct")
        key = cmd.get("key")
        if not isinstance(key, str):
            raise CommandError(14, "TypeMismatch", "key must be a string")
        values, seen = [], set()
        with self.store.lock:
            for d in self.store.docs(req.db, coll):
                if not matches(d, cmd.get("query") or {}):
                    continue
                for v in get_path(d, key):
                    for x in (v if isinstance(v, list) else [v]):
                        k = value_key(x)
                        if x is not MISSING and k not in seen:
                            seen.add(k)
                            values.append(copy.deepcopy(x))
        return {"values": values, "ok": 1.0}

    def c_aggregate(self, req, cmd):
        target = cmd.get("aggregate")
        if "cursor" not in cmd and not cmd.get("explain"):
            raise CommandError(9, "FailedToParse",
                               "The 'cursor' option is required, except for aggregate with the explain argument")
        if cmd.get("explain"):
            raise CommandError(2, "BadValue", "explain is not supported by fake_mongo")
        batch = batch_size_arg(cmd.get("cursor"), DEFAULT_BATCH)
        with self.store.lock:
            if target == 1:
                return self.store.cursor_reply("%s.$cmd.aggregate" % req.db, [], batch)
            coll = coll_arg(cmd, "aggregate")
            docs = copy.deepcopy(self.store.docs(req.db, coll))
            docs = run_pipeline(docs, cmd.get("pipeline"))
            return self.store.cursor_reply("%s.%s" % (req.db, coll), docs, batch)

    def c_list_collections(self, req, cmd):
        flt = cmd.get("filter") or {}
        out = []
        with self.store.lock:
            for name in sorted(self.store.dbs.get(req.db, {})):
                info = {"name": name, "type": "collection", "options": {},
                        "info": {"readOnly": False},
                        "idIndex": {"v": 2, "key": {"_id": 1}, "name": "_id_"}}
                if matches(info, flt):
                    out.append({"name": name, "type": "collection"} if cmd.get("nameOnly") else info)
            return self.store.cursor_reply("%s.$cmd.listCollections" % req.db, out,
                                           batch_size_arg(cmd.get("cursor"), DEFAULT_BATCH))

    def c_list_databases(self, req, cmd):
        out = []
        with self.store.lock:
            names = sorted(set(self.store.dbs) | {"admin", "local"})
            for name in names:
                size = self.db_size(name)
                entry = {"name": name, "sizeOnDisk": size, "empty": size == 0}
                if matches(entry, cmd.get("filter") or {}):
                    out.append({"name": name} if cmd.get("nameOnly") else entry)
        total = sum(e.get("sizeOnDisk", 0) for e in out)
        return {"databases": out, "totalSize": total, "totalSizeMb": total >> 20, "ok": 1.0}

    def db_size(self, db):
        return sum(len(encode_doc(d)) for c in self.store.dbs.get(db, {}).values() for d in c.docs)

    def c_list_indexes(self, req, cmd):
        coll = coll_arg(cmd, "listIndexes")
        with self.store.lock:
            c = self.store.coll(req.db, coll)
            if c is None:
                raise CommandError(26, "NamespaceNotFound", "ns does not exist: %s.%s" % (req.db, coll))
            return self.store.cursor_reply("%s.%s" % (req.db, coll), copy.deepcopy(c.indexes),
                                           batch_size_arg(cmd.get("cursor"), DEFAULT_BATCH))

    def c_db_stats(self, req, cmd):
        with self.store.lock:
            colls = self.store.dbs.get(req.db, {})
            objects = sum(len(c.docs) for c in colls.values())
            size = self.db_size(req.db)
            nindexes = sum(len(c.indexes) for c in colls.values())
        return {"db": req.db, "collections": len(colls), "views": 0, "objects": objects,
                "avgObjSize": size / objects if objects else 0, "dataSize": float(size),
                "storageSize": float(size), "indexes": nindexes, "indexSize": 0.0,
                "totalSize": float(size), "scaleFactor": 1, "fsUsedSize": 0.0, "fsTotalSize": 0.0,
                "ok": 1.0}

    def c_coll_stats(self, req, cmd):
        coll = coll_arg(cmd, "collStats")
        with self.store.lock:
            c = self.store.coll(req.db, coll)
            if c is None:
                raise CommandError(26, "NamespaceNotFound", "Collection [%s.%s] not found." % (req.db, coll))
            size = sum(len(encode_doc(d)) for d in c.docs)
            count, nindexes = len(c.docs), len(c.indexes)
        return {"ns": "%s.%s" % (req.db, coll), "count": count, "size": size,
                "avgObjSize": size // count if count else 0, "storageSize": size, "nindexes": nindexes,
                "totalIndexSize": 0, "indexSizes": {}, "ok": 1.0}

    # -- writes --

    def c_insert(self, req, cmd):
        coll = coll_arg(cmd, "insert")
        docs = cmd.get("documents")
        if not isinstance(docs, list):
            raise CommandError(14, "TypeMismatch", "documents must be an array")
        ordered = cmd.get("ordered", True)
        n, errors = 0, []
        with self.store.lock:
            c = self.store.coll(req.db, coll, create=True)
            for i, doc in enumerate(docs):
                if not isinstance(doc, dict):
                    raise CommandError(14, "TypeMismatch", "documents must be documents")
                doc = with_id_first(doc)
                if c.insert(doc):
                    n += 1
                    continue
                errors.append(dup_key_error(i, req.db, coll, doc["_id"]))
                if ordered:
                    break
        reply = {"n": n, "ok": 1.0}
        if errors:
            reply["writeErrors"] = errors
        return reply

    def c_update(self, req, cmd):
        coll = coll_arg(cmd, "update")
        updates = cmd.get("updates")
        if not isinstance(updates, list):
            raise CommandError(14, "TypeMismatch", "updates must be an array")
        n = modified = 0
        upserted, errors = [], []
        with self.store.lock:
            for i, u in enumerate(updates):
                try:
                    res = self.update_one_spec(req.db, coll, u)
                except CommandError as e:
                    errors.append({"index": i, "code": e.code, "errmsg": e.errmsg})
                    if cmd.get("ordered", True):
                        break
                    continue
                n += res[0]
                modified += res[1]
                if res[2] is not None:
                    upserted.append({"index": i, "_id": res[2]})
        reply = {"n": n + len(upserted), "nModified": modified}
        if upserted:
            reply["upserted"] = upserted
        if errors:
            reply["writeErrors"] = errors
        reply["ok"] = 1.0
        return reply

    def update_one_spec(self, db, coll, spec):
        """Apply one {q, u, multi, upsert}: (matched, modified, upserted _id or None)."""
        if not isinstance(spec, dict) or "u" not in spec:
            raise CommandError(9, "FailedToParse", "update statements need q and u")
        q = spec.get("q") or {}
        c = self.store.coll(db, coll, create=bool(spec.get("upsert")))
        targets = [d for d in (c.docs if c else []) if matches(d, q)]
        if not spec.get("multi"):
            targets = targets[:1]
        if targets:
            modified = 0
            new_docs = [apply_update(d, spec["u"]) for d in targets]
            for doc, new in zip(targets, new_docs):
                if doc != new:
                    modified += 1
                    doc.clear()
                    doc.update(new)
            return len(targets), modified, None
        if not spec.get("upsert"):
            return 0, 0, None
        doc = self.upsert(db, coll, c, q, spec["u"])
        return 0, 0, doc["_id"]

    def upsert(self, db, coll, c, query, update):
        doc = with_id_first(apply_update(upsert_seed(query), update, inserting=True)
                            if is_operator_doc(update) else apply_update({}, update))
        if not c.insert(doc):
            raise CommandError(11000, "DuplicateKey", dup_key_error(0, db, coll, doc["_id"])["errmsg"])
        return doc

    def c_delete(self, req, cmd):
        coll = coll_arg(cmd, "delete")
        deletes = cmd.get("deletes")
        if not isinstance(deletes, list):
            raise CommandError(14, "TypeMismatch", "deletes must be an array")
        n = 0
        with self.store.lock:
            c = self.store.coll(req.db, coll)
            for spec in deletes:
                if not isinstance(spec, dict) or spec.get("limit", 0) not in (0, 1):
                    raise CommandError(9, "FailedToParse", "delete statements need q and limit 0 or 1")
                if c is None:
                    continue
                targets = [d for d in c.docs if matches(d, spec.get("q") or {})]
                for d in targets[:1] if spec.get("limit") else targets:
                    c.remove(d)
                    n += 1
        return {"n": n, "ok": 1.0}

    def c_find_and_modify(self, req, cmd):
        coll = coll_arg(cmd, req.name)
        remove, update = bool(cmd.get("remove")), cmd.get("update")
        if remove == (update is not None):
            raise CommandError(9, "FailedToParse", "Either an update or remove=true must be specified")
        query = cmd.get("query") or {}
        with self.store.lock:
            c = self.store.coll(req.db, coll, create=bool(cmd.get("upsert")) and not remove)
            docs = sort_docs([d for d in (c.docs if c else []) if matches(d, query)], cmd.get("sort"))
            target = docs[0] if docs else None
            last = {"n": 0}
            value = None
            if target is not None and remove:
                value = copy.deepcopy(target)
                c.remove(target)
                last["n"] = 1
            elif target is not None:
                before = copy.deepcopy(target)
                new = apply_update(target, update)
                target.clear()
                target.update(new)
                value = copy.deepcopy(target if cmd.get("new") else before)
                last.update(n=1, updatedExisting=True)
            elif not remove:
                last["updatedExisting"] = False
                if cmd.get("upsert"):
                    doc = self.upsert(req.db, coll, c, query, update)
                    last.update(n=1, upserted=doc["_id"])
                    value = copy.deepcopy(doc) if cmd.get("new") else None
            if value is not None and cmd.get("fields"):
                value = project(value, cmd["fields"])
        return {"lastErrorObject": last, "value": value, "ok": 1.0}

    def c_create(self, req, cmd):
        coll = coll_arg(cmd, "create")
        with self.store.lock:
            self.store.coll(req.db, coll, create=True)
        return {"ok": 1.0}

    def c_drop(self, req, cmd):
        coll = coll_arg(cmd, "drop")
        with self.store.lock:
            c = self.store.dbs.get(req.db, {}).pop(coll, None)
            if c is None:
                raise CommandError(26, "NamespaceNotFound", "ns not found")
            if not self.store.dbs[req.db]:
                del self.store.dbs[req.db]
        return {"nIndexesWas": len(c.indexes), "ns": "%s.%s" % (req.db, coll), "ok": 1.0}

    def c_drop_database(self, req, cmd):
        with self.store.lock:
            self.store.dbs.pop(req.db, None)
        return {"dropped": req.db, "ok": 1.0}

    def c_create_indexes(self, req, cmd):
        coll = coll_arg(cmd, "createIndexes")
        indexes = cmd.get("indexes")
        if not isinstance(indexes, list) or not all(isinstance(i, dict) and "key" in i and "name" in i
                                                    for i in indexes):
            raise CommandError(9, "FailedToParse", "indexes must be an array of {key, name}")
        with self.store.lock:
            created = self.store.coll(req.db, coll) is None
            c = self.store.coll(req.db, coll, create=True)
            before = len(c.indexes)
            names = {i["name"] for i in c.indexes}
            for spec in indexes:
                if spec["name"] not in names:
                    c.indexes.append({"v": 2, **spec})
                    names.add(spec["name"])
            return {"numIndexesBefore": before, "numIndexesAfter": len(c.indexes),
                    "createdCollectionAutomatically": created, "ok": 1.0}

    def c_drop_indexes(self, req, cmd):
        coll = coll_arg(cmd, "dropIndexes")
        which = cmd.get("index")
        with self.store.lock:
            c = self.store.coll(req.db, coll)
            if c is None:
                raise CommandError(26, "NamespaceNotFound", "ns not found %s.%s" % (req.db, coll))
            was = len(c.indexes)
            if which == "*":
                keep = c.indexes[:1]
            else:
                keep = [i for i in c.indexes if i["name"] == "_id_" or
                        (i["name"] != which and not (isinstance(which, dict) and i["key"] == which))]
                if len(keep) == was:
                    raise CommandError(27, "IndexNotFound", "index not found with name [%s]" % which)
            c.indexes[:] = keep
        return {"nIndexesWas": was, "ok": 1.0}


def dup_key_error(index, db, coll, _id):
    return {"index": index, "code": 11000,
            "errmsg": "E11000 duplicate key error collection: %s.%s index: _id_ dup key: { _id: %r }"
                      % (db, coll, _id),
            "keyPattern": {"_id": 1}, "keyValue": {"_id": _id}}


def auth_user_of(payload):
    """The n= user name of a SCRAM client-first message, for the log."""
    try:
        bare = bytes(payload).decode("utf-8").split(",", 2)[2]
        return dict(a.split("=", 1) for a in bare.split(",")).get("n")
    except (TypeError, ValueError, IndexError):
        return None


C = Connection
COMMANDS = {
    "hello": C.c_hello, "isMaster": C.c_hello, "ismaster": C.c_hello,
    "saslStart": C.c_sasl_start, "saslContinue": C.c_sasl_continue,
    "connectionStatus": C.c_connection_status, "logout": C.c_logout,
    "ping": C.c_ok, "endSessions": C.c_ok, "killSessions": C.c_ok, "refreshSessions": C.c_ok,
    "commitTransaction": C.c_ok, "abortTransaction": C.c_ok,
    "buildInfo": C.c_build_info, "buildinfo": C.c_build_info, "getParameter": C.c_get_parameter,
    "getCmdLineOpts": C.c_get_cmd_line_opts, "getLog": C.c_get_log, "hostInfo": C.c_host_info,
    "whatsmyuri": C.c_whatsmyuri,
    "find": C.c_find, "getMore": C.c_get_more, "killCursors": C.c_kill_cursors, "count": C.c_count,
    "distinct": C.c_distinct, "aggregate": C.c_aggregate, "listCollections": C.c_list_collections,
    "listDatabases": C.c_list_databases, "listIndexes": C.c_list_indexes, "dbStats": C.c_db_stats,
    "collStats": C.c_coll_stats,
    "insert": C.c_insert, "update": C.c_update, "delete": C.c_delete,
    "findAndModify": C.c_find_and_modify, "findandmodify": C.c_find_and_modify,
    "create": C.c_create, "drop": C.c_drop, "dropDatabase": C.c_drop_database,
    "createIndexes": C.c_create_indexes, "dropIndexes": C.c_drop_indexes,
}
del C


# ---- listeners ---------------------------------------------------------------------

class Member:
    def __init__(self, name, addr, primary):
        self.name, self.addr, self.primary = name, addr, primary
        self.port = None
        self.sock = None


class Server:
    """The replica set: members' listeners, the data, the users, the log."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.members = [Member(n, a, i == 0) for i, (n, a) in enumerate(cfg.members)]
        self.set_name = cfg.set_name
        self.process_id = ObjectId()
        self.election_id = ObjectId("7fffffff0000000000000001")
        self.store = Store()
        self.users = Users(cfg, self.say)
        self.conn_numbers = itertools.count(1)
        self.log_lock = threading.Lock()
        self.log_file = open(cfg.log, "a", encoding="utf-8") if cfg.log else None
        self.ssl_ctx = None
        if not cfg.no_tls:
            self.ssl_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ssl_ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            self.ssl_ctx.load_cert_chain(cfg.cert, cfg.key)

    def say(self, msg):
        print("fake_mongo: %s" % msg, file=sys.stderr, flush=True)

    def log(self, entry):
        if self.log_file:
            with self.log_lock:
                self.log_file.write(json.dumps(entry, default=str) + "\n")
                self.log_file.flush()

    def listen(self):
        for m in self.members:
            family = socket.AF_INET6 if ":" in m.addr else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((m.addr, self.cfg.port))
            sock.listen(128)
            m.sock, m.port = sock, sock.getsockname()[1]
        for m in self.members:
            threading.Thread(target=self.accept_loop, args=(m,), name="accept-" + m.name,
                             daemon=True).start()

    def accept_loop(self, member):
        while True:
            try:
                sock, peer = member.sock.accept()
            except OSError:
                return   # listener closed
            # As mongod does: without it a new connection's first reply waits
            # for the client's delayed ACK (~40 ms of Nagle stall).
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
            number = next(self.conn_numbers)
            if not self.cfg.quiet:
                self.say("%s conn %d from %s" % (member.name, number, host_port(peer[0], peer[1])))
            conn = Connection(self, member, sock, number)
            threading.Thread(target=conn.run, name="conn-%d" % number, daemon=True).start()

    def close(self):
        for m in self.members:
            if m.sock:
                m.sock.close()
        if self.log_file:
            with self.log_lock:
                self.log_file.close()
                self.log_file = None


def parse_member(text):
    name, sep, addr = text.partition("=")
    if not sep or not name or not addr:
        raise argparse.ArgumentTypeError("--member wants NAME=ADDR, got %r" % text)
    return name, addr.strip("[]")


def parse_user(text):
    name, sep, password = text.partition(":")
    if not sep or not name or not password:
        raise argparse.ArgumentTypeError("--user wants NAME:PASSWORD")
    return name, password


def parse_args(argv):
    p = argparse.ArgumentParser(description="MongoDB replica set stand-in (see the module docstring)")
    p.add_argument("--cert", help="server certificate (chain) PEM")
    p.add_argument("--key", help="server private key PEM")
    p.add_argument("--no-tls", action="store_true", help="plain TCP")
    p.add_argument("--member", dest="members", action="append", type=parse_member, required=True,
                   metavar="NAME=ADDR", help="a member; the first is the primary")
    p.add_argument("--port", type=int, default=27017)
    p.add_argument("--set-name", default="atlas-abcde-shard-0")
    p.add_argument("--user", dest="users", action="append", type=parse_user, default=[],
                   metavar="NAME:PASSWORD", help="a static admin user")
    p.add_argument("--atlas-url", help="fake_atlas base URL, e.g. https://127.0.0.2:8443")
    p.add_argument("--atlas-ca", help="CA file verifying --atlas-url")
    p.add_argument("--atlas-group", help="only this project's database users")
    p.add_argument("--user-delay", type=float, default=0.0, metavar="SECONDS")
    p.add_argument("--log", help="JSON line per command")
    p.add_argument("--ready-file")
    p.add_argument("--quiet", action="store_true")
    cfg = p.parse_args(argv)
    if not cfg.no_tls and not (cfg.cert and cfg.key):
        p.error("--cert and --key are required unless --no-tls")
    if cfg.atlas_url and not cfg.atlas_url.startswith("https://"):
        p.error("--atlas-url must be https://")
    return cfg


def main(argv=None):
    cfg = parse_args(sys.argv[1:] if argv is None else argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server = Server(cfg)
    try:
        server.listen()
    except OSError as e:
        server.say("cannot listen on port %d: %s" % (cfg.port, e))
        server.close()
        return 1
    if cfg.ready_file:
        tmp = cfg.ready_file + ".tmp.%d" % os.getpid()
        with open(tmp, "w") as f:
            for m in server.members:
                f.write("%s %s %d\n" % (m.name, m.addr, m.port))
        os.replace(tmp, cfg.ready_file)
    server.say("replica set %s: %s" % (cfg.set_name, ", ".join(
        "%s on %s (%s)" % (m.name, host_port(m.addr, m.port), "primary" if m.primary else "secondary")
        for m in server.members)))
    try:
        while not stop.is_set():
            stop.wait(1.0)
    finally:
        server.say("shutting down")
        server.close()
        if cfg.ready_file:
            try:
                os.unlink(cfg.ready_file)
            except OSError:
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
