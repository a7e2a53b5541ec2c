// fuzz_mongo: the MongoDB wire protocol (mongo/wire.h), BSON documents
// (mongo/bson.h) and command classification (mongo/command.h).
//
// Input: MODE MESSAGE... (MODE = byte 0). Before parsing, MODE bit 0
// overwrites the header's length with the message's size and bit 1, when
// the OP_MSG checksum flag is set, rewrites the trailing CRC-32C to match, so
// that mutations reach past the framing checks. The message then goes through
// parseHeader, parseMsg, parseQuery, parseReply and parseCompressed, and the
// whole of it through Doc::fromBytes.
//
// Oracles, beyond ASan/UBSan (and LSan: nothing leaks):
//  * every error carries a message;
//  * a message parseMsg accepts, rebuilt with buildMsg from its parts,
//    parses again to the same flags (less the checksum bit), body and
//    sequences; likewise OP_QUERY with buildQuery and a one-document
//    OP_REPLY with buildReply;
//  * describe() (OP_MSG and OP_QUERY) never returns an access with an empty
//    command name or database; its first access is the command itself, and
//    it describes the rebuilt message the same way;
//  * a document Doc::fromBytes accepts round-trips its bytes, and without()
//    of it is valid and lacks the keys removed.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "fuzz_common.h"
#include "mongo/bson.h"
#include "mongo/command.h"
#include "mongo/wire.h"

namespace mg = atlasgate::mongo;

namespace {

template <class T>
bool accepted(const atlasgate::Result<T>& r) {
  if (!r) AG_FUZZ_CHECK(!r.error().message.empty(), "an error without a message");
  return r.ok();
}

bool same(mg::ByteView a, mg::ByteView b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size()) == 0);
}

void checkInfo(const atlasgate::Result<mg::CommandInfo>& info) {
  if (!accepted(info)) return;
  AG_FUZZ_CHECK(!info->name.empty(), "a command without a name");
  AG_FUZZ_CHECK(!info->accesses.empty(), "a command without accesses");
  const mg::Access& first = info->accesses.front();
  AG_FUZZ_CHECK(first.command == info->name && first.database == info->database && first.collection == info->collection,
                "the first access is not the command itself");
  for (const mg::Access& a : info->accesses) {
    AG_FUZZ_CHECK(!a.command.empty(), "an access with an empty command name");
    AG_FUZZ_CHECK(!a.database.empty(), a.command);
  }
}

bool sameInfo(const atlasgate::Result<mg::CommandInfo>& a, const atlasgate::Result<mg::CommandInfo>& b) {
  if (a.ok() != b.ok()) return false;
  return !a.ok() || (a->name == b->name && a->database == b->database && a->accesses == b->accesses);
}

void msg(mg::ByteView in) {
  auto m = mg::parseMsg(in);
  if (!accepted(m)) return;
  auto info = mg::describe(*m);
  checkInfo(info);
  mg::Bytes again = mg::buildMsg(m->header.requestId, m->header.responseTo, m->flags, m->body, m->sequences);
  auto r = mg::parseMsg(again);
  AG_FUZZ_CHECK(r.ok(), r.ok() ? "" : r.error().message);
  AG_FUZZ_CHECK(r->flags == (m->flags & ~mg::kChecksumPresent), "the flags changed");
  AG_FUZZ_CHECK(same(r->body, m->body), "the body changed");
  AG_FUZZ_CHECK(r->sequences.size() == m->sequences.size(), "the sequences changed");
  for (std::size_t i = 0; i < r->sequences.size(); ++i) {
    const auto &x = r->sequences[i], &y = m->sequences[i];
    AG_FUZZ_CHECK(x.identifier == y.identifier && x.documents.size() == y.documents.size(), "a sequence changed");
    for (std::size_t j = 0; j < x.documents.size(); ++j)
      AG_FUZZ_CHECK(same(x.documents[j], y.documents[j]), "a sequence's document changed");
  }
  AG_FUZZ_CHECK(sameInfo(info, mg::describe(*r)), "the rebuilt message describes differently");
}

void query(mg::ByteView in) {
  auto q = mg::parseQuery(in);
  if (!accepted(q)) return;
  auto info = mg::describe(*q);
  checkInfo(info);
  mg::Bytes again = mg::buildQuery(q->header.requestId, q->flags, q->fullCollectionName, q->numberToSkip,
                                   q->numberToReturn, q->query);
  auto r = mg::parseQuery(again);
  AG_FUZZ_CHECK(r.ok(), r.ok() ? "" : r.error().message);
  AG_FUZZ_CHECK(r->fullCollectionName == q->fullCollectionName && same(r->query, q->query), "the query changed");
  AG_FUZZ_CHECK(sameInfo(info, mg::describe(*r)), "the rebuilt query describes differently");
}

void reply(mg::ByteView in) {
  auto p = mg::parseReply(in);
  if (!accepted(p) || p->documents.size() != 1) return;
  mg::Bytes again =
      mg::buildReply(p->header.requestId, p->header.responseTo, p->responseFlags, p->cursorId, p->documents[0]);
  auto r = mg::parseReply(again);
  AG_FUZZ_CHECK(r.ok(), r.ok() ? "" : r.error().message);
  AG_FUZZ_CHECK(r->cursorId == p->cursorId && same(r->documents.at(0), p->documents[0]), "the reply changed");
}

void document(mg::ByteView in) {
  auto d = mg::Doc::fromBytes(in);
  if (!accepted(d)) return;
  AG_FUZZ_CHECK(same(d->bytes(), in), "a document's bytes changed");
  mg::DocView v(d->bytes());
  std::string first(v.firstKey());
  mg::Doc w = mg::without(d->bytes(), {first, "$db"});
  AG_FUZZ_CHECK(mg::validate(w.bytes()).ok(), "without() made an invalid document");
  mg::DocView wv(w.bytes());
  AG_FUZZ_CHECK(!wv.has("$db") && (first.empty() || !wv.has(first)), "without() kept a key");
  (void)v.hasDuplicateKeys();
  (void)v.integer(first);
  (void)v.string(first);
  (void)v.binary(first);
  (void)v.document(first);
}

void putLe32(mg::Bytes& b, std::size_t at, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) b[at + i] = static_cast<std::uint8_t>(v >> (8 * i));
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  atlasgate::fuzz::quietLogs();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  const std::uint8_t mode = data[0];
  mg::Bytes in(data + 1, data + size);
  if ((mode & 1) && in.size() >= 4) putLe32(in, 0, static_cast<std::uint32_t>(in.size()));
  if ((mode & 2) && in.size() >= 24 && (in[16] & mg::kChecksumPresent))
    putLe32(in, in.size() - 4, mg::crc32c(mg::ByteView(in).first(in.size() - 4)));
  (void)accepted(mg::parseHeader(in, mg::kDefaultMaxMessageBytes));
  msg(in);
  query(in);
  reply(in);
  (void)accepted(mg::parseCompressed(in));
  document(in);
  return 0;
}
