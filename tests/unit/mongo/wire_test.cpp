// mongo/wire.h: framing, OP_MSG sections and checksums, OP_QUERY, OP_REPLY,
// OP_COMPRESSED, the builders, CRC-32C.

#include "mongo/wire.h"

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <utility>

namespace atlasgate::mongo {
namespace {

Doc fromJson(std::string_view j) {
  auto d = Doc::fromJson(j);
  EXPECT_TRUE(d.ok()) << j;
  return d.ok() ? std::move(d).value() : Doc();
}

Bytes copyOf(ByteView v) { return Bytes(v.begin(), v.end()); }

void putLe32(Bytes& b, std::size_t at, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) b[at + i] = static_cast<std::uint8_t>(v >> (8 * i));
}

void appendLe32(Bytes& b, std::uint32_t v) {
  b.resize(b.size() + 4);
  putLe32(b, b.size() - 4, v);
}

void fixLength(Bytes& b) { putLe32(b, 0, static_cast<std::uint32_t>(b.size())); }

// Adds a CRC-32C to a message built without one.
Bytes withChecksum(Bytes b) {
  b[16] |= kChecksumPresent;
  putLe32(b, 0, static_cast<std::uint32_t>(b.size() + 4));
  appendLe32(b, crc32c(b));
  return b;
}

struct Fixture {
  Doc body = fromJson(R"({"insert": "people", "ordered": true, "$db": "app"})");
  Doc a = fromJson(R"({"_id": 1, "name": "ann"})");
  Doc b = fromJson(R"({"_id": 2, "tags": ["x", "y"]})");
  Bytes msg() const { return buildMsg(7, 0, 0, body.bytes(), {{"documents", {a.bytes(), b.bytes()}}}); }
};

TEST(Crc32c, KnownVectors) {
  const std::string s = "123456789";
  EXPECT_EQ(crc32c(ByteView(reinterpret_cast<const std::uint8_t*>(s.data()), s.size())), 0xE3069283u);
  EXPECT_EQ(crc32c(ByteView()), 0u);
  Bytes zeros(32, 0);
  EXPECT_EQ(crc32c(zeros), 0x8A9136AAu);  // RFC 3720 B.4
}

TEST(Header, Bounds) {
  Bytes h(16, 0);
  putLe32(h, 0, 21);
  putLe32(h, 4, 5);
  putLe32(h, 8, 6);
  putLe32(h, 12, 2013);
  auto ok = parseHeader(h, 100);
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(ok->length, 21);
  EXPECT_EQ(ok->requestId, 5);
  EXPECT_EQ(ok->responseTo, 6);
  EXPECT_EQ(ok->opCode, 2013);
  EXPECT_FALSE(parseHeader(ByteView(h).first(15), 100).ok());
  putLe32(h, 0, 20);
  EXPECT_FALSE(parseHeader(h, 100).ok());
  putLe32(h, 0, 101);
  EXPECT_FALSE(parseHeader(h, 100).ok());
  putLe32(h, 0, 0x80000000u);  // negative as int32
  EXPECT_FALSE(parseHeader(h, kDefaultMaxMessageBytes).ok());
}

TEST(Msg, RoundTripsBodyAndSequences) {
  Fixture f;
  Bytes m = buildMsg(7, 3, kMoreToCome | kExhaustAllowed, f.body.bytes(),
                     {{"documents", {f.a.bytes(), f.b.bytes()}}, {"empty", {}}});
  auto p = parseMsg(m);
  ASSERT_TRUE(p.ok()) << p.error().message;
  EXPECT_EQ(p->header.length, static_cast<std::int32_t>(m.size()));
  EXPECT_EQ(p->header.requestId, 7);
  EXPECT_EQ(p->header.responseTo, 3);
  EXPECT_EQ(p->header.opCode, 2013);
  EXPECT_EQ(p->flags, kMoreToCome | kExhaustAllowed);
  EXPECT_FALSE(p->checksummed);
  EXPECT_EQ(copyOf(p->body), copyOf(f.body.bytes()));
  ASSERT_EQ(p->sequences.size(), 2u);
  EXPECT_EQ(p->sequences[0].identifier, "documents");
  ASSERT_EQ(p->sequences[0].documents.size(), 2u);
  EXPECT_EQ(copyOf(p->sequences[0].documents[1]), copyOf(f.b.bytes()));
  EXPECT_EQ(p->sequences[1].identifier, "empty");
  EXPECT_TRUE(p->sequences[1].documents.empty());
  // Rebuilt from the parsed parts: the same bytes.
  EXPECT_EQ(buildMsg(7, 3, p->flags, p->body, p->sequences), m);
}

TEST(Msg, SequenceBeforeBodyIsFine) {
  Fixture f;
  Bytes m = f.msg();
  // Move the body section (kind 0 + doc) after the sequence.
  std::size_t bodyLen = f.body.bytes().size();
  Bytes body(m.begin() + 20, m.begin() + 20 + 1 + bodyLen);
  m.erase(m.begin() + 20, m.begin() + 20 + 1 + bodyLen);
  m.insert(m.end(), body.begin(), body.end());
  auto p = parseMsg(m);
  ASSERT_TRUE(p.ok()) << p.error().message;
  EXPECT_EQ(copyOf(p->body), copyOf(f.body.bytes()));
}

TEST(Msg, RefusesEveryTruncation) {
  Fixture f;
  // With a header that agrees, a cut right after the body is a whole message.
  const std::size_t bodyEnd = 21 + f.body.bytes().size();
  for (bool checksummed : {false, true}) {
    Bytes m = checksummed ? withChecksum(f.msg()) : f.msg();
    for (std::size_t n = 0; n < m.size(); ++n) {
      Bytes cut(m.begin(), m.begin() + n);
      EXPECT_FALSE(parseMsg(cut).ok()) << n;
      if (n < 4) continue;
      fixLength(cut);
      EXPECT_EQ(parseMsg(cut).ok(), !checksummed && n == bodyEnd) << n;
    }
  }
}

TEST(Msg, ChecksumGoodAndBad) {
  Fixture f;
  Bytes m = withChecksum(f.msg());
  auto p = parseMsg(m);
  ASSERT_TRUE(p.ok()) << p.error().message;
  EXPECT_TRUE(p->checksummed);
  EXPECT_EQ(p->flags & kChecksumPresent, kChecksumPresent);
  EXPECT_EQ(p->sequences.at(0).documents.size(), 2u);
  for (std::size_t i : {std::size_t{4}, std::size_t{30}, m.size() - 5, m.size() - 1}) {
    Bytes bad = m;
    bad[i] ^= 0x01;
    auto r = parseMsg(bad);
    EXPECT_FALSE(r.ok()) << i;
  }
  Bytes bad = m;
  bad[m.size() - 1] ^= 0x80;
  auto r = parseMsg(bad);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("checksum"), std::string::npos);
  // Rebuilt, the checksum flag goes (no checksum is written) and it parses.
  Bytes again = buildMsg(1, 0, p->flags, p->body, p->sequences);
  auto q = parseMsg(again);
  ASSERT_TRUE(q.ok()) << q.error().message;
  EXPECT_FALSE(q->checksummed);
  EXPECT_EQ(q->flags & kChecksumPresent, 0u);
}

TEST(Msg, FlagBits) {
  Fixture f;
  for (int bit = 2; bit < 16; ++bit) {
    Bytes m = buildMsg(1, 0, 1u << bit, f.body.bytes());
    EXPECT_FALSE(parseMsg(m).ok()) << bit;
  }
  for (int bit : {1, 16, 17, 31}) EXPECT_TRUE(parseMsg(buildMsg(1, 0, 1u << bit, f.body.bytes())).ok()) << bit;
  // The checksum bit without room for a checksum.
  Bytes m = buildMsg(1, 0, 0, f.body.bytes());
  m[16] |= 1;
  EXPECT_FALSE(parseMsg(m).ok());
}

TEST(Msg, RefusesBadSections) {
  Fixture f;
  Bytes one = buildMsg(1, 0, 0, f.body.bytes());
  EXPECT_TRUE(parseMsg(one).ok());
  Bytes two = one;  // a second body
  two.push_back(0);
  two.insert(two.end(), f.a.bytes().begin(), f.a.bytes().end());
  fixLength(two);
  EXPECT_FALSE(parseMsg(two).ok());
  Bytes none = buildMsg(1, 0, 0, f.body.bytes());  // only a sequence
  none.erase(none.begin() + 20, none.end());
  Bytes seq = buildMsg(1, 0, 0, f.body.bytes(), {{"documents", {f.a.bytes()}}});
  none.insert(none.end(), seq.begin() + 21 + f.body.bytes().size(), seq.end());
  fixLength(none);
  EXPECT_FALSE(parseMsg(none).ok());
  Bytes kind2 = one;
  kind2[20] = 2;
  EXPECT_FALSE(parseMsg(kind2).ok());
  for (std::uint8_t extra : {0, 1, 2, 0xff}) {  // trailing bytes
    Bytes t = one;
    t.push_back(extra);
    fixLength(t);
    EXPECT_FALSE(parseMsg(t).ok()) << int(extra);
  }
  Bytes op = one;
  putLe32(op, 12, 2004);
  EXPECT_FALSE(parseMsg(op).ok());
  Bytes len = one;
  putLe32(len, 0, static_cast<std::uint32_t>(one.size() - 1));
  EXPECT_FALSE(parseMsg(len).ok());
}

TEST(Msg, RefusesSequencesThatDoNotFit) {
  Fixture f;
  Bytes m = f.msg();
  std::size_t at = 20 + 1 + f.body.bytes().size() + 1;  // the sequence's size
  std::uint32_t size = static_cast<std::uint32_t>(m.size() - at);
  for (std::uint32_t wrong : {size - 1, size + 1, size - 5, 5u, 0u, 0xffffffffu, 0x7fffffffu}) {
    Bytes bad = m;
    putLe32(bad, at, wrong);
    EXPECT_FALSE(parseMsg(bad).ok()) << wrong;
  }
  // A document one byte short of its sequence: the size covers a stray byte.
  Bytes stray = m;
  stray.push_back(0);
  putLe32(stray, at, size + 1);
  fixLength(stray);
  EXPECT_FALSE(parseMsg(stray).ok());
  Bytes noId = buildMsg(1, 0, 0, f.body.bytes(), {{"", {f.a.bytes()}}});
  EXPECT_FALSE(parseMsg(noId).ok());
  Bytes unterminated = buildMsg(1, 0, 0, f.body.bytes(), {{"x", {}}});
  unterminated.back() = 'y';  // the identifier's NUL
  EXPECT_FALSE(parseMsg(unterminated).ok());
}

TEST(Msg, RefusesInvalidDocuments) {
  Fixture f;
  Doc bad = fromJson(R"({"a": "xyz"})");
  Bytes badBytes = copyOf(bad.bytes());
  badBytes[11] = 0xff;
  EXPECT_FALSE(parseMsg(buildMsg(1, 0, 0, badBytes)).ok());
  EXPECT_FALSE(parseMsg(buildMsg(1, 0, 0, f.body.bytes(), {{"documents", {badBytes}}})).ok());
  Bytes m = f.msg();
  m[21] = 4;  // the body's length below 5
  EXPECT_FALSE(parseMsg(m).ok());
}

TEST(Query, ParsesWithAndWithoutFields) {
  Doc q = fromJson(R"({"isMaster": 1, "client": {"driver": {"name": "x"}}})");
  Bytes m = buildQuery(9, 4, "admin.$cmd", 0, -1, q.bytes());
  auto p = parseQuery(m);
  ASSERT_TRUE(p.ok()) << p.error().message;
  EXPECT_EQ(p->header.opCode, 2004);
  EXPECT_EQ(p->header.requestId, 9);
  EXPECT_EQ(p->flags, 4);
  EXPECT_EQ(p->fullCollectionName, "admin.$cmd");
  EXPECT_EQ(p->numberToSkip, 0);
  EXPECT_EQ(p->numberToReturn, -1);
  EXPECT_EQ(copyOf(p->query), copyOf(q.bytes()));
  EXPECT_FALSE(p->fields);
  Doc fields = fromJson(R"({"a": 1})");
  Bytes withFields = m;
  withFields.insert(withFields.end(), fields.bytes().begin(), fields.bytes().end());
  fixLength(withFields);
  auto pf = parseQuery(withFields);
  ASSERT_TRUE(pf.ok()) << pf.error().message;
  ASSERT_TRUE(pf->fields);
  EXPECT_EQ(copyOf(*pf->fields), copyOf(fields.bytes()));
  for (std::size_t n = 0; n < m.size(); ++n) {
    Bytes cut(m.begin(), m.begin() + n);
    if (n >= 4) fixLength(cut);
    EXPECT_FALSE(parseQuery(cut).ok()) << n;
  }
  Bytes trailing = withFields;
  trailing.push_back(0);
  fixLength(trailing);
  EXPECT_FALSE(parseQuery(trailing).ok());
  EXPECT_FALSE(parseQuery(buildQuery(1, 0, "", 0, 1, q.bytes())).ok());
  EXPECT_FALSE(parseMsg(m).ok());
}

TEST(Reply, RoundTrips) {
  Doc d = fromJson(R"({"ismaster": true, "ok": 1.0})");
  Bytes m = buildReply(11, 9, 8, 1234567890123LL, d.bytes());
  auto p = parseReply(m);
  ASSERT_TRUE(p.ok()) << p.error().message;
  EXPECT_EQ(p->header.responseTo, 9);
  EXPECT_EQ(p->responseFlags, 8);
  EXPECT_EQ(p->cursorId, 1234567890123LL);
  EXPECT_EQ(p->startingFrom, 0);
  ASSERT_EQ(p->documents.size(), 1u);
  EXPECT_EQ(copyOf(p->documents[0]), copyOf(d.bytes()));
  for (std::size_t n = 0; n < m.size(); ++n) {
    Bytes cut(m.begin(), m.begin() + n);
    if (n >= 4) fixLength(cut);
    EXPECT_FALSE(parseReply(cut).ok()) << n;
  }
  Bytes neg = m;
  putLe32(neg, 32, 0xffffffffu);  // numberReturned
  EXPECT_FALSE(parseReply(neg).ok());
  Bytes two = m;
  putLe32(two, 32, 2);
  EXPECT_FALSE(parseReply(two).ok());
  Bytes zero = m;
  putLe32(zero, 32, 0);
  EXPECT_FALSE(parseReply(zero).ok());  // then the document is trailing
  zero.resize(36);
  fixLength(zero);
  EXPECT_TRUE(parseReply(zero).ok());
}

Bytes compressed(std::int32_t original, std::int32_t size, std::uint8_t id, std::string_view payload) {
  Bytes m(16, 0);
  putLe32(m, 12, 2012);
  appendLe32(m, static_cast<std::uint32_t>(original));
  appendLe32(m, static_cast<std::uint32_t>(size));
  m.push_back(id);
  m.insert(m.end(), payload.begin(), payload.end());
  fixLength(m);
  return m;
}

TEST(Compressed, ParsesItsHeader) {
  const Bytes bytes = compressed(2013, 40, 1, "snappy-bytes");  // the parse's views point into it
  auto p = parseCompressed(bytes);
  ASSERT_TRUE(p.ok()) << p.error().message;
  EXPECT_EQ(p->originalOpcode, 2013);
  EXPECT_EQ(p->uncompressedSize, 40);
  EXPECT_EQ(p->compressorId, 1);
  EXPECT_EQ(std::string(p->payload.begin(), p->payload.end()), "snappy-bytes");
  EXPECT_FALSE(parseCompressed(compressed(2013, 40, 4, "x")).ok());
  EXPECT_FALSE(parseCompressed(compressed(2013, -1, 1, "x")).ok());
  EXPECT_FALSE(parseCompressed(compressed(2012, 40, 1, "x")).ok());
  EXPECT_FALSE(parseCompressed(compressed(2013, 48'000'001, 1, "x")).ok());
  Bytes m = compressed(2013, 40, 1, "");
  for (std::size_t n = 0; n < m.size(); ++n) {
    Bytes cut(m.begin(), m.begin() + n);
    if (n >= 4) fixLength(cut);
    EXPECT_FALSE(parseCompressed(cut).ok()) << n;
  }
}

}  // namespace
}  // namespace atlasgate::mongo
