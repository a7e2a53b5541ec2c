#include "mongo/wire.h"

#include <array>
#include <bit>
#include <cstring>

namespace atlasgate::mongo {

namespace {

// Little-endian loads and stores through memcpy: no unaligned access, no
// dependence on the host's byte order.
std::uint32_t loadU32(const std::uint8_t* p) {
  std::uint32_t v;
  std::memcpy(&v, p, 4);
  if constexpr (std::endian::native == std::endian::big) v = __builtin_bswap32(v);
  return v;
}

std::uint64_t loadU64(const std::uint8_t* p) {
  std::uint64_t v;
  std::memcpy(&v, p, 8);
  if constexpr (std::endian::native == std::endian::big) v = __builtin_bswap64(v);
  return v;
}

void putU32(Bytes& out, std::uint32_t v) {
  if constexpr (std::endian::native == std::endian::big) v = __builtin_bswap32(v);
  std::uint8_t b[4];
  std::memcpy(b, &v, 4);
  out.insert(out.end(), b, b + 4);
}

void putU64(Bytes& out, std::uint64_t v) {
  if constexpr (std::endian::native == std::endian::big) v = __builtin_bswap64(v);
  std::uint8_t b[8];
  std::memcpy(b, &v, 8);
  out.insert(out.end(), b, b + 8);
}

void putI32(Bytes& out, std::int32_t v) { putU32(out, static_cast<std::uint32_t>(v)); }

// Writes the message length into the header once everything is appended.
void patchLength(Bytes& out) {
  std::uint32_t len = static_cast<std::uint32_t>(out.size());
  if constexpr (std::endian::native == std::endian::big) len = __builtin_bswap32(len);
  std::memcpy(out.data(), &len, 4);
}

Bytes startMessage(std::int32_t requestId, std::int32_t responseTo, OpCode op) {
  Bytes out;
  putI32(out, 0);
  putI32(out, requestId);
  putI32(out, responseTo);
  putI32(out, static_cast<std::int32_t>(op));
  return out;
}

// A bounded reader over one message's bytes after the header.
class Reader {
 public:
  explicit Reader(ByteView bytes) : bytes_(bytes) {}
  std::size_t left() const { return bytes_.size() - pos_; }
  std::size_t pos() const { return pos_; }

  bool u8(std::uint8_t& v) {
    if (left() < 1) return false;
    v = bytes_[pos_++];
    return true;
  }
  bool i32(std::int32_t& v) {
    if (left() < 4) return false;
    v = static_cast<std::int32_t>(loadU32(bytes_.data() + pos_));
    pos_ += 4;
    return true;
  }
  bool i64(std::int64_t& v) {
    if (left() < 8) return false;
    v = static_cast<std::int64_t>(loadU64(bytes_.data() + pos_));
    pos_ += 8;
    return true;
  }
  // The next n bytes (n <= left()), skipped.
  ByteView take(std::size_t n) {
    ByteView v = bytes_.subspan(pos_, n);
    pos_ += n;
    return v;
  }
  // A NUL-terminated string, valid UTF-8.
  bool cstring(std::string& v) {
    if (left() == 0) return false;
    const std::uint8_t* start = bytes_.data() + pos_;
    const void* nul = std::memchr(start, 0, left());
    if (nul == nullptr) return false;
    std::size_t n = static_cast<const std::uint8_t*>(nul) - start;
    if (!bson_utf8_validate(reinterpret_cast<const char*>(start), n, false)) return false;
    v.assign(reinterpret_cast<const char*>(start), n);
    pos_ += n + 1;
    return true;
  }
  // One document, validated, whose int32 length must fit in what is left.
  Result<ByteView> document(std::string_view what) {
    if (left() < 5) return makeError("{} runs past the end of the message", what);
    std::uint32_t len = loadU32(bytes_.data() + pos_);
    if (len < 5 || len > left()) return makeError("{} has a length of {} with {} bytes left", what, len, left());
    ByteView doc = bytes_.subspan(pos_, len);
    if (auto v = validate(doc); !v) return makeError("{}: {}", what, v.error().message);
    pos_ += len;
    return doc;
  }

 private:
  ByteView bytes_;
  std::size_t pos_ = 0;
};

// The header of `whole`, which must be exactly one message of opcode `op`.
Result<Header> wholeHeader(ByteView whole, OpCode op, std::string_view name) {
  auto h = parseHeader(whole, whole.size());
  if (!h) return h.error();
  if (static_cast<std::size_t>(h->length) != whole.size())
    return makeError("{}: the header says {} bytes, the message has {}", name, h->length, whole.size());
  if (h->opCode != static_cast<std::int32_t>(op)) return makeError("{}: opcode {} is not {}", name, h->opCode, name);
  return h;
}

const std::array<std::uint32_t, 256>& crcTable() {
  static const std::array<std::uint32_t, 256> table = [] {
    std::array<std::uint32_t, 256> t{};
    for (std::uint32_t i = 0; i < 256; ++i) {
      std::uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;  // Castagnoli, reflected
      t[i] = c;
    }
    return t;
  }();
  return table;
}

}  // namespace

std::uint32_t crc32c(ByteView bytes) {
  const auto& t = crcTable();
  std::uint32_t c = 0xFFFFFFFFu;
  for (std::uint8_t b : bytes) c = t[(c ^ b) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

Result<Header> parseHeader(ByteView bytes, std::size_t maxMessageBytes) {
  if (bytes.size() < kHeaderBytes)
    return makeError("a message header needs {} bytes, got {}", kHeaderBytes, bytes.size());
  Header h;
  h.length = static_cast<std::int32_t>(loadU32(bytes.data()));
  h.requestId = static_cast<std::int32_t>(loadU32(bytes.data() + 4));
  h.responseTo = static_cast<std::int32_t>(loadU32(bytes.data() + 8));
  h.opCode = static_cast<std::int32_t>(loadU32(bytes.data() + 12));
  if (h.length < static_cast<std::int32_t>(kHeaderBytes + 5))
    return makeError("a message length of {} is below the minimum of {}", h.length, kHeaderBytes + 5);
  if (static_cast<std::size_t>(h.length) > maxMessageBytes)
    return makeError("a message length of {} is above the maximum of {}", h.length, maxMessageBytes);
  return h;
}

namespace {

// A kind-1 section after its kind byte: int32 size (itself included),
// identifier, documents that exactly fill the size.
Result<Sequence> parseSequence(Reader& r) {
  std::int32_t size = 0;
  if (!r.i32(size)) return makeError("OP_MSG: a document sequence's size runs past the end");
  if (size < 6 || static_cast<std::size_t>(size) - 4 > r.left())
    return makeError("OP_MSG: a document sequence's size of {} does not fit the {} bytes left", size, r.left() + 4);
  Reader in(r.take(static_cast<std::size_t>(size) - 4));
  Sequence seq;
  if (!in.cstring(seq.identifier))
    return makeError("OP_MSG: a document sequence's identifier is unterminated or not UTF-8");
  if (seq.identifier.empty()) return makeError("OP_MSG: a document sequence has an empty identifier");
  while (in.left() > 0) {
    auto d = in.document("OP_MSG: a document of a document sequence");
    if (!d) return d.error();
    seq.documents.push_back(*d);
  }
  return seq;
}

}  // namespace

Result<Msg> parseMsg(ByteView whole) {
  auto h = wholeHeader(whole, OpCode::Msg, "OP_MSG");
  if (!h) return h.error();
  Msg m;
  m.header = *h;
  Reader head(whole.subspan(kHeaderBytes));
  std::int32_t flags = 0;
  if (!head.i32(flags)) return makeError("OP_MSG: the flag bits run past the end");
  m.flags = static_cast<std::uint32_t>(flags);
  if (m.flags & 0xFFFCu) return makeError("OP_MSG: unknown required flag bits 0x{:04x}", m.flags & 0xFFFCu);
  std::size_t end = whole.size();
  if (m.flags & kChecksumPresent) {
    if (end < kHeaderBytes + 4 + 4) return makeError("OP_MSG: the checksum runs past the end");
    end -= 4;
    if (crc32c(whole.first(end)) != loadU32(whole.data() + end))
      return makeError("OP_MSG: the CRC-32C checksum does not match");
    m.checksummed = true;
  }
  Reader r(whole.subspan(kHeaderBytes + 4, end - kHeaderBytes - 4));
  bool body = false;
  while (r.left() > 0) {
    std::uint8_t kind = 0;
    (void)r.u8(kind);
    if (kind == 0) {
      if (body) return makeError("OP_MSG: more than one body section");
      auto d = r.document("OP_MSG: the body");
      if (!d) return d.error();
      m.body = *d;
      body = true;
    } else if (kind == 1) {
      auto s = parseSequence(r);
      if (!s) return s.error();
      m.sequences.push_back(std::move(*s));
    } else {
      return makeError("OP_MSG: unknown section kind {}", kind);
    }
  }
  if (!body) return makeError("OP_MSG: no body section");
  return m;
}

Result<Query> parseQuery(ByteView whole) {
  auto h = wholeHeader(whole, OpCode::Query, "OP_QUERY");
  if (!h) return h.error();
  Query q;
  q.header = *h;
  Reader r(whole.subspan(kHeaderBytes));
  if (!r.i32(q.flags)) return makeError("OP_QUERY: the flags run past the end");
  if (!r.cstring(q.fullCollectionName) || q.fullCollectionName.empty())
    return makeError("OP_QUERY: the collection name is empty, unterminated or not UTF-8");
  if (!r.i32(q.numberToSkip) || !r.i32(q.numberToReturn))
    return makeError("OP_QUERY: numberToSkip/numberToReturn run past the end");
  auto d = r.document("OP_QUERY: the query");
  if (!d) return d.error();
  q.query = *d;
  if (r.left() > 0) {
    auto f = r.document("OP_QUERY: the returnFieldsSelector");
    if (!f) return f.error();
    q.fields = *f;
  }
  if (r.left() > 0) return makeError("OP_QUERY: {} trailing bytes", r.left());
  return q;
}

Result<Reply> parseReply(ByteView whole) {
  auto h = wholeHeader(whole, OpCode::Reply, "OP_REPLY");
  if (!h) return h.error();
  Reply rep;
  rep.header = *h;
  Reader r(whole.subspan(kHeaderBytes));
  std::int32_t n = 0;
  if (!r.i32(rep.responseFlags) || !r.i64(rep.cursorId) || !r.i32(rep.startingFrom) || !r.i32(n))
    return makeError("OP_REPLY: the fixed fields run past the end");
  if (n < 0) return makeError("OP_REPLY: numberReturned is negative ({})", n);
  for (std::int32_t i = 0; i < n; ++i) {
    auto d = r.document("OP_REPLY: a document");
    if (!d) return d.error();
    rep.documents.push_back(*d);
  }
  if (r.left() > 0) return makeError("OP_REPLY: {} trailing bytes after {} documents", r.left(), n);
  return rep;
}

Result<Compressed> parseCompressed(ByteView whole) {
  auto h = wholeHeader(whole, OpCode::Compressed, "OP_COMPRESSED");
  if (!h) return h.error();
  Compressed c;
  c.header = *h;
  Reader r(whole.subspan(kHeaderBytes));
  if (!r.i32(c.originalOpcode) || !r.i32(c.uncompressedSize) || !r.u8(c.compressorId))
    return makeError("OP_COMPRESSED: the fixed fields run past the end");
  if (c.originalOpcode == static_cast<std::int32_t>(OpCode::Compressed))
    return makeError("OP_COMPRESSED: wraps another OP_COMPRESSED");
  if (c.uncompressedSize < 0 || static_cast<std::size_t>(c.uncompressedSize) > kDefaultMaxMessageBytes)
    return makeError("OP_COMPRESSED: an uncompressed size of {} is out of range", c.uncompressedSize);
  if (c.compressorId > 3) return makeError("OP_COMPRESSED: unknown compressor id {}", c.compressorId);
  c.payload = whole.subspan(kHeaderBytes + r.pos());
  return c;
}

// ---- builders -------------------------------------------------------------------

Bytes buildMsg(std::int32_t requestId, std::int32_t responseTo, std::uint32_t flags, ByteView body,
               const std::vector<Sequence>& sequences) {
  Bytes out = startMessage(requestId, responseTo, OpCode::Msg);
  putU32(out, flags & ~kChecksumPresent);  // no checksum follows, so the flag must not claim one
  out.push_back(0);
  out.insert(out.end(), body.begin(), body.end());
  for (const Sequence& s : sequences) {
    std::size_t size = 4 + s.identifier.size() + 1;
    for (ByteView d : s.documents) size += d.size();
    out.push_back(1);
    putU32(out, static_cast<std::uint32_t>(size));
    out.insert(out.end(), s.identifier.begin(), s.identifier.end());
    out.push_back(0);
    for (ByteView d : s.documents) out.insert(out.end(), d.begin(), d.end());
  }
  patchLength(out);
  return out;
}

Bytes buildQuery(std::int32_t requestId, std::int32_t flags, std::string_view fullCollectionName,
                 std::int32_t numberToSkip, std::int32_t numberToReturn, ByteView query) {
  Bytes out = startMessage(requestId, 0, OpCode::Query);
  putI32(out, flags);
  out.insert(out.end(), fullCollectionName.begin(), fullCollectionName.end());
  out.push_back(0);
  putI32(out, numberToSkip);
  putI32(out, numberToReturn);
  out.insert(out.end(), query.begin(), query.end());
  patchLength(out);
  return out;
}

Bytes buildReply(std::int32_t requestId, std::int32_t responseTo, std::int32_t responseFlags, std::int64_t cursorId,
                 ByteView document) {
  Bytes out = startMessage(requestId, responseTo, OpCode::Reply);
  putI32(out, responseFlags);
  putU64(out, static_cast<std::uint64_t>(cursorId));
  putI32(out, 0);  // startingFrom
  putI32(out, 1);  // numberReturned
  out.insert(out.end(), document.begin(), document.end());
  patchLength(out);
  return out;
}

}  // namespace atlasgate::mongo
