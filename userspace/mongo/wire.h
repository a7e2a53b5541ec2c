#pragma once
// The MongoDB wire protocol's framing (pure): the 16-byte header, OP_MSG
// (flag bits, a body section, document sequences, the optional CRC-32C
// checksum), the legacy OP_QUERY and OP_REPLY that drivers still use for
// their first isMaster, and OP_COMPRESSED's header. Parsing is bounded:
// a message is at most maxMessageBytes (the server's maxMessageSizeBytes,
// 48 MB on Atlas), every length field is checked against what remains,
// every document is validated by libbson before it is viewed. Views point
// into the message's bytes, which must outlive them.

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/result.h"
#include "mongo/bson.h"

namespace atlasgate::mongo {

enum class OpCode : std::int32_t { Reply = 1, Query = 2004, Compressed = 2012, Msg = 2013 };

inline constexpr std::size_t kHeaderBytes = 16;
inline constexpr std::size_t kDefaultMaxMessageBytes = 48'000'000;

// OP_MSG flag bits.
inline constexpr std::uint32_t kChecksumPresent = 1u << 0;
inline constexpr std::uint32_t kMoreToCome = 1u << 1;
inline constexpr std::uint32_t kExhaustAllowed = 1u << 16;

struct Header {
  std::int32_t length = 0;  // whole message, header included
  std::int32_t requestId = 0;
  std::int32_t responseTo = 0;
  std::int32_t opCode = 0;
};

// The header of a message: its length at least kHeaderBytes + 5 and at most
// maxMessageBytes. Only the first kHeaderBytes of `bytes` are read.
Result<Header> parseHeader(ByteView bytes, std::size_t maxMessageBytes);

struct Sequence {
  std::string identifier;           // "documents", "updates", "deletes", "ops", "nsInfo", ...
  std::vector<ByteView> documents;  // each validated
};

struct Msg {
  Header header;
  std::uint32_t flags = 0;
  ByteView body;  // the kind-0 section, validated
  std::vector<Sequence> sequences;
  bool checksummed = false;  // a checksum was present and matched
};

// A whole OP_MSG (header included). Refused: unknown required flag bits
// (bits 2-15 set), no body or two bodies, an unknown section kind, a
// section or document running past the end, a checksum that does not match,
// trailing bytes.
Result<Msg> parseMsg(ByteView whole);

struct Query {
  Header header;
  std::int32_t flags = 0;
  std::string fullCollectionName;  // "admin.$cmd"
  std::int32_t numberToSkip = 0;
  std::int32_t numberToReturn = 0;
  ByteView query;                  // validated
  std::optional<ByteView> fields;  // returnFieldsSelector, validated
};
Result<Query> parseQuery(ByteView whole);

struct Reply {
  Header header;
  std::int32_t responseFlags = 0;
  std::int64_t cursorId = 0;
  std::int32_t startingFrom = 0;
  std::vector<ByteView> documents;  // numberReturned of them, validated
};
Result<Reply> parseReply(ByteView whole);

// OP_COMPRESSED's own header (what it wraps, and how).
struct Compressed {
  Header header;
  std::int32_t originalOpcode = 0;
  std::int32_t uncompressedSize = 0;
  std::uint8_t compressorId = 0;  // 0 noop, 1 snappy, 2 zlib, 3 zstd
  ByteView payload;
};
Result<Compressed> parseCompressed(ByteView whole);

// Builders. No checksum is written (a relayed message whose body atlasgate
// did not change keeps its own bytes).
Bytes buildMsg(std::int32_t requestId, std::int32_t responseTo, std::uint32_t flags, ByteView body,
               const std::vector<Sequence>& sequences = {});
Bytes buildQuery(std::int32_t requestId, std::int32_t flags, std::string_view fullCollectionName,
                 std::int32_t numberToSkip, std::int32_t numberToReturn, ByteView query);
Bytes buildReply(std::int32_t requestId, std::int32_t responseTo, std::int32_t responseFlags, std::int64_t cursorId,
                 ByteView document);

// CRC-32C (Castagnoli), as OP_MSG's checksum.
std::uint32_t crc32c(ByteView bytes);

}  // namespace atlasgate::mongo
