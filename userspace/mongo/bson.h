#pragma once
// BSON documents as the MongoDB front end handles them: an owning RAII
// wrapper over libbson's bson_t, and read-only views of validated bytes.
// Every document from the wire is validated (bson_validate) before it is
// viewed; nothing here parses BSON by hand.

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <bson/bson.h>

#include "common/result.h"

namespace atlasgate::mongo {

using Bytes = std::vector<std::uint8_t>;
using ByteView = std::span<const std::uint8_t>;

// How deep a document from the wire may nest (documents and arrays), as the
// server's own limit: beyond it libbson's recursive validation is not asked.
inline constexpr int kMaxWireDepth = 200;

// Whether `bytes` are exactly one valid document: the length matches, no
// trailing bytes, nesting at most kMaxWireDepth, UTF-8 keys and strings
// without NULs, no empty keys. The error names no content.
Result<void> validate(ByteView bytes);

// bson_init_static over `bytes`, false (where libbson would abort) for a
// null pointer or fewer than 5 bytes. The bson_t points into itself: never
// copy it.
bool initView(bson_t* doc, ByteView bytes);

// An owned, valid BSON document.
class Doc {
 public:
  Doc();  // {}
  ~Doc();
  Doc(const Doc& other);
  Doc& operator=(const Doc& other);
  Doc(Doc&& other) noexcept;
  Doc& operator=(Doc&& other) noexcept;

  // A validated copy of these bytes (exactly one document, no trailing bytes,
  // UTF-8 keys and strings, no embedded NULs in keys).
  static Result<Doc> fromBytes(ByteView bytes);
  // From relaxed or canonical extended JSON (tests, replies built in code).
  static Result<Doc> fromJson(std::string_view json);

  bson_t* get() { return &doc_; }
  const bson_t* get() const { return &doc_; }
  ByteView bytes() const;
  // Relaxed extended JSON, for tests and debug logs of documents that carry
  // no secret (never log a command body or a SCRAM payload).
  std::string json() const;

 private:
  bson_t doc_;
};

// A read-only view of a document already validated (the bytes must outlive
// it). Accessors look at top-level fields only.
class DocView {
 public:
  explicit DocView(ByteView validated);
  // libbson's static bson_t points into itself: copies re-initialize from the bytes.
  DocView(const DocView& other) : DocView(other.bytes_) {}
  DocView& operator=(const DocView& other);
  const bson_t* get() const { return &doc_; }
  ByteView bytes() const { return bytes_; }

  // The first key ("" for an empty document).
  std::string_view firstKey() const;
  bool has(std::string_view key) const;
  // The field's value when it has that type; nullopt otherwise (absent or other type).
  std::optional<std::string_view> string(std::string_view key) const;
  std::optional<std::int64_t> integer(std::string_view key) const;  // int32, int64, or a double holding an integer
  std::optional<bool> boolean(std::string_view key) const;
  std::optional<ByteView> document(std::string_view key) const;  // embedded document or array, its bytes
  std::optional<ByteView> binary(std::string_view key) const;    // BinData payload (any subtype)
  // Whether some top-level key appears more than once.
  bool hasDuplicateKeys() const;

 private:
  ByteView bytes_;
  bson_t doc_;
};

// A copy of `doc` without the named top-level fields (every occurrence).
Doc without(ByteView doc, std::initializer_list<std::string_view> keys);

}  // namespace atlasgate::mongo
