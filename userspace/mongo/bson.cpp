#include "mongo/bson.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace atlasgate::mongo {

namespace {

// Not dollar or dot keys: commands carry `$db`, filters carry operators.
constexpr bson_validate_flags_t kValidateFlags =
    static_cast<bson_validate_flags_t>(BSON_VALIDATE_UTF8 | BSON_VALIDATE_EMPTY_KEYS);

enum class Walk { Ok, TooDeep, NotUtf8 };

Walk utf8(const char* s, std::size_t n) { return bson_utf8_validate(s, n, false) ? Walk::Ok : Walk::NotUtf8; }

// What libbson 1.23's bson_validate leaves out, checked before it runs:
// nesting (its validation recurses without a bound) and the UTF-8 of string
// values (it checks keys only). bson_iter bounds-checks every element, so
// this walk is safe on unvalidated bytes; structure is bson_validate's.
Walk walk(bson_iter_t* it, int left);

Walk walkChild(const std::uint8_t* data, std::uint32_t len, int left) {
  if (left <= 0) return Walk::TooDeep;
  bson_t child;
  bson_iter_t it;
  if (!initView(&child, ByteView(data, len)) || !bson_iter_init(&it, &child))
    return Walk::Ok;  // bson_validate refuses it
  return walk(&it, left - 1);
}

Walk walkElement(bson_iter_t* it, int left) {
  std::uint32_t len = 0;
  switch (bson_iter_type(it)) {
    case BSON_TYPE_UTF8: {
      const char* s = bson_iter_utf8(it, &len);
      return utf8(s, len);
    }
    case BSON_TYPE_CODE: {
      const char* s = bson_iter_code(it, &len);
      return utf8(s, len);
    }
    case BSON_TYPE_SYMBOL: {
      const char* s = bson_iter_symbol(it, &len);
      return utf8(s, len);
    }
    case BSON_TYPE_DBPOINTER: {  // its collection, which 1.23 lets hold NULs that bson_append_iter cuts at
      const char* coll = nullptr;
      const bson_oid_t* oid = nullptr;
      bson_iter_dbpointer(it, &len, &coll, &oid);
      return utf8(coll, len);
    }
    case BSON_TYPE_REGEX: {
      const char* options = nullptr;
      const char* regex = bson_iter_regex(it, &options);
      return utf8(regex, std::strlen(regex)) == Walk::Ok ? utf8(options, std::strlen(options)) : Walk::NotUtf8;
    }
    case BSON_TYPE_CODEWSCOPE: {
      std::uint32_t scopeLen = 0;
      const std::uint8_t* scope = nullptr;
      const char* code = bson_iter_codewscope(it, &len, &scopeLen, &scope);
      return utf8(code, len) == Walk::Ok ? walkChild(scope, scopeLen, left) : Walk::NotUtf8;
    }
    case BSON_TYPE_DOCUMENT:
    case BSON_TYPE_ARRAY: {
      const std::uint8_t* data = nullptr;
      if (BSON_ITER_HOLDS_ARRAY(it)) {
        bson_iter_array(it, &len, &data);
      } else {
        bson_iter_document(it, &len, &data);
      }
      return walkChild(data, len, left);
    }
    default: return Walk::Ok;
  }
}

Walk walk(bson_iter_t* it, int left) {
  while (bson_iter_next(it))
    if (Walk w = walkElement(it, left); w != Walk::Ok) return w;
  return Walk::Ok;
}

}  // namespace

bool initView(bson_t* doc, ByteView bytes) {
  return bytes.data() != nullptr && bytes.size() >= 5 && bson_init_static(doc, bytes.data(), bytes.size());
}

Result<void> validate(ByteView bytes) {
  bson_t b;
  if (!initView(&b, bytes)) return makeError("a BSON document's length does not match its {} bytes", bytes.size());
  bson_iter_t it;
  if (!bson_iter_init(&it, &b)) return makeError("a BSON document is malformed");
  switch (walk(&it, kMaxWireDepth)) {
    case Walk::TooDeep: return makeError("a BSON document nests deeper than {} levels", kMaxWireDepth);
    case Walk::NotUtf8: return makeError("a BSON document has a string value that is not UTF-8");
    case Walk::Ok: break;
  }
  std::size_t offset = 0;
  if (!bson_validate(&b, kValidateFlags, &offset))
    return makeError("a BSON document is not valid (at byte {}: malformed, bad UTF-8, or an empty key)", offset);
  return {};
}

// ---- Doc ----------------------------------------------------------------------------

Doc::Doc() { bson_init(&doc_); }
Doc::~Doc() { bson_destroy(&doc_); }
Doc::Doc(const Doc& other) { bson_copy_to(&other.doc_, &doc_); }

Doc& Doc::operator=(const Doc& other) {
  if (this != &other) {
    bson_destroy(&doc_);
    bson_copy_to(&other.doc_, &doc_);
  }
  return *this;
}

// bson_steal fixes the pointers an allocated bson_t keeps into itself; the
// source is left empty.
Doc::Doc(Doc&& other) noexcept {
  bson_steal(&doc_, &other.doc_);
  bson_init(&other.doc_);
}

Doc& Doc::operator=(Doc&& other) noexcept {
  if (this != &other) {
    bson_destroy(&doc_);
    bson_steal(&doc_, &other.doc_);
    bson_init(&other.doc_);
  }
  return *this;
}

Result<Doc> Doc::fromBytes(ByteView bytes) {
  if (auto v = validate(bytes); !v) return v.error();
  bson_t view;
  initView(&view, bytes);
  Doc d;
  bson_destroy(&d.doc_);
  bson_copy_to(&view, &d.doc_);
  return d;
}

Result<Doc> Doc::fromJson(std::string_view json) {
  Doc d;
  bson_destroy(&d.doc_);
  bson_error_t err;
  if (!bson_init_from_json(&d.doc_, json.data(), static_cast<ssize_t>(json.size()), &err)) {
    bson_init(&d.doc_);
    return makeError("not a JSON document: {}", err.message);
  }
  if (auto v = validate(d.bytes()); !v) return v.error();
  return d;
}

ByteView Doc::bytes() const { return {bson_get_data(&doc_), doc_.len}; }

std::string Doc::json() const {
  char* s = bson_as_relaxed_extended_json(&doc_, nullptr);
  std::string out = s ? s : "";
  bson_free(s);
  return out;
}

// ---- DocView ----------------------------------------------------------------------

DocView::DocView(ByteView validated) : bytes_(validated) {
  // Bytes that do not even frame a document (a broken contract) view as {}.
  if (!initView(&doc_, bytes_)) {
    bytes_ = {};
    bson_init(&doc_);
  }
}

DocView& DocView::operator=(const DocView& other) {
  if (this != &other) {
    bytes_ = other.bytes_;
    if (!initView(&doc_, bytes_)) {
      bytes_ = {};
      bson_init(&doc_);
    }
  }
  return *this;
}

namespace {

bool find(const bson_t* doc, std::string_view key, bson_iter_t* it) {
  return bson_iter_init_find_w_len(it, doc, key.data(), static_cast<int>(key.size()));
}

}  // namespace

std::string_view DocView::firstKey() const {
  bson_iter_t it;
  if (!bson_iter_init(&it, &doc_) || !bson_iter_next(&it)) return {};
  return {bson_iter_key(&it), bson_iter_key_len(&it)};
}

bool DocView::has(std::string_view key) const {
  bson_iter_t it;
  return find(&doc_, key, &it);
}

std::optional<std::string_view> DocView::string(std::string_view key) const {
  bson_iter_t it;
  if (!find(&doc_, key, &it) || !BSON_ITER_HOLDS_UTF8(&it)) return std::nullopt;
  std::uint32_t len = 0;
  const char* s = bson_iter_utf8(&it, &len);
  return std::string_view(s, len);
}

std::optional<std::int64_t> DocView::integer(std::string_view key) const {
  bson_iter_t it;
  if (!find(&doc_, key, &it)) return std::nullopt;
  if (BSON_ITER_HOLDS_INT32(&it)) return bson_iter_int32(&it);
  if (BSON_ITER_HOLDS_INT64(&it)) return bson_iter_int64(&it);
  if (!BSON_ITER_HOLDS_DOUBLE(&it)) return std::nullopt;
  double d = bson_iter_double(&it);
  // 2^63 is exact as a double; the range check keeps the cast defined.
  if (!std::isfinite(d) || d != std::trunc(d) || d < -9223372036854775808.0 || d >= 9223372036854775808.0)
    return std::nullopt;
  return static_cast<std::int64_t>(d);
}

std::optional<bool> DocView::boolean(std::string_view key) const {
  bson_iter_t it;
  if (!find(&doc_, key, &it) || !BSON_ITER_HOLDS_BOOL(&it)) return std::nullopt;
  return bson_iter_bool(&it);
}

std::optional<ByteView> DocView::document(std::string_view key) const {
  bson_iter_t it;
  if (!find(&doc_, key, &it)) return std::nullopt;
  std::uint32_t len = 0;
  const std::uint8_t* data = nullptr;
  if (BSON_ITER_HOLDS_DOCUMENT(&it)) {
    bson_iter_document(&it, &len, &data);
  } else if (BSON_ITER_HOLDS_ARRAY(&it)) {
    bson_iter_array(&it, &len, &data);
  } else {
    return std::nullopt;
  }
  return ByteView(data, len);
}

std::optional<ByteView> DocView::binary(std::string_view key) const {
  bson_iter_t it;
  if (!find(&doc_, key, &it) || !BSON_ITER_HOLDS_BINARY(&it)) return std::nullopt;
  bson_subtype_t subtype;
  std::uint32_t len = 0;
  const std::uint8_t* data = nullptr;
  bson_iter_binary(&it, &subtype, &len, &data);
  return ByteView(data, len);
}

bool DocView::hasDuplicateKeys() const {
  std::vector<std::string_view> keys;
  bson_iter_t it;
  if (!bson_iter_init(&it, &doc_)) return false;
  while (bson_iter_next(&it)) keys.emplace_back(bson_iter_key(&it), bson_iter_key_len(&it));
  std::sort(keys.begin(), keys.end());
  return std::adjacent_find(keys.begin(), keys.end()) != keys.end();
}

Doc without(ByteView doc, std::initializer_list<std::string_view> keys) {
  Doc out;
  bson_t in;
  bson_iter_t it;
  if (!initView(&in, doc) || !bson_iter_init(&it, &in)) return out;
  while (bson_iter_next(&it)) {
    std::string_view k(bson_iter_key(&it), bson_iter_key_len(&it));
    if (std::find(keys.begin(), keys.end(), k) == keys.end()) bson_append_iter(out.get(), nullptr, 0, &it);
  }
  return out;
}

}  // namespace atlasgate::mongo
