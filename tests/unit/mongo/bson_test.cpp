// mongo/bson.h: validation of wire documents, the owning Doc, DocView's accessors.

#include "mongo/bson.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <utility>

namespace atlasgate::mongo {
namespace {

Doc fromJson(std::string_view j) {
  auto d = Doc::fromJson(j);
  EXPECT_TRUE(d.ok()) << j << ": " << (d.ok() ? "" : d.error().message);
  return d.ok() ? std::move(d).value() : Doc();
}

// {a: {a: ... {} }} with `levels` documents below the top.
Doc nested(int levels) {
  Doc inner;
  for (int i = 0; i < levels; ++i) {
    Doc outer;
    bson_append_document(outer.get(), "a", 1, inner.get());
    inner = std::move(outer);
  }
  return inner;
}

Bytes copyOf(ByteView v) { return Bytes(v.begin(), v.end()); }

TEST(BsonValidate, AcceptsAValidDocumentWithDollarAndDotKeys) {
  Doc d = fromJson(R"({"find": "c", "$db": "x", "filter": {"a.b": {"$gt": 1}}})");
  EXPECT_TRUE(validate(d.bytes()).ok());
  EXPECT_TRUE(Doc::fromBytes(d.bytes()).ok());
}

TEST(BsonValidate, RefusesEveryTruncationAndTrailingBytes) {
  Doc d = fromJson(R"({"a": "bc", "n": {"x": [1, 2]}})");
  Bytes b = copyOf(d.bytes());
  for (std::size_t n = 0; n < b.size(); ++n) EXPECT_FALSE(validate(ByteView(b).first(n)).ok()) << n;
  b.push_back(0);
  EXPECT_FALSE(validate(b).ok());
  EXPECT_FALSE(Doc::fromBytes(b).ok());
}

TEST(BsonValidate, EmptyAndNullViewsAreRefusedNotAborted) {
  EXPECT_FALSE(validate(ByteView()).ok());
  EXPECT_FALSE(Doc::fromBytes(ByteView()).ok());
  DocView v{ByteView()};
  EXPECT_EQ(v.firstKey(), "");
  EXPECT_FALSE(v.has("a"));
  EXPECT_EQ(without(ByteView(), {"a"}).bytes().size(), 5u);
}

TEST(BsonValidate, RefusesALengthThatDisagrees) {
  Doc d = fromJson(R"({"a": 1})");
  Bytes b = copyOf(d.bytes());
  b[0] = static_cast<std::uint8_t>(b[0] + 1);
  EXPECT_FALSE(validate(b).ok());
  b[0] = static_cast<std::uint8_t>(b[0] - 2);
  EXPECT_FALSE(validate(b).ok());
}

TEST(BsonValidate, RefusesBadUtf8AndEmptyKeys) {
  Doc d = fromJson(R"({"a": "xyz"})");
  Bytes b = copyOf(d.bytes());
  // Layout: int32 | 0x02 'a' 0 | int32 len | "xyz\0" | 0
  ASSERT_EQ(b[11], 'x');
  b[11] = 0xff;
  EXPECT_FALSE(validate(b).ok());
  Doc empty;
  bson_append_int32(empty.get(), "", 0, 1);
  EXPECT_FALSE(validate(empty.bytes()).ok());
}

TEST(BsonValidate, RefusesBadUtf8InNestedStringsCodeAndRegex) {
  const char bad[] = "x\xffz";
  Doc inArray;
  bson_t arr;
  bson_append_array_begin(inArray.get(), "a", -1, &arr);
  bson_append_utf8(&arr, "0", -1, bad, 3);
  bson_append_array_end(inArray.get(), &arr);
  EXPECT_FALSE(validate(inArray.bytes()).ok());
  Doc code;
  bson_append_code(code.get(), "c", -1, bad);
  EXPECT_FALSE(validate(code.bytes()).ok());
  Doc regex;
  bson_append_regex(regex.get(), "r", -1, bad, "i");
  EXPECT_FALSE(validate(regex.bytes()).ok());
  Doc scope = nested(kMaxWireDepth);
  Doc withScope;
  bson_append_code_with_scope(withScope.get(), "w", -1, "f()", scope.get());
  auto r = validate(withScope.bytes());
  ASSERT_FALSE(r.ok());  // the scope counts as one more level
  EXPECT_NE(r.error().message.find("deeper"), std::string::npos);
  Doc good;
  bson_append_utf8(good.get(), "s", -1, "h\xc3\xa9llo \xe2\x82\xac", -1);
  EXPECT_TRUE(validate(good.bytes()).ok());
}

TEST(BsonValidate, RefusesADbPointerWithANulInItsCollection) {
  Doc d;
  bson_oid_t oid;
  bson_oid_init_from_string(&oid, "0123456789abcdef01234567");
  bson_append_dbpointer(d.get(), "k", -1, "ab", &oid);
  Bytes b = copyOf(d.bytes());
  EXPECT_TRUE(validate(b).ok());
  // int32 | 0x0c 'k' 0 | int32 | "ab" 0 | oid | 0
  ASSERT_EQ(b[11], 'a');
  b[11] = 0;
  EXPECT_FALSE(validate(b).ok());
}

TEST(BsonValidate, RefusesAnEmbeddedDocumentRunningPastItsParent) {
  Doc d = fromJson(R"({"a": {"b": 1}})");
  Bytes b = copyOf(d.bytes());
  // The inner document's length, after 0x03 'a' 0, at offset 7.
  b[7] = static_cast<std::uint8_t>(b[7] + 4);
  EXPECT_FALSE(validate(b).ok());
}

TEST(BsonValidate, BoundsNesting) {
  EXPECT_TRUE(validate(nested(kMaxWireDepth).bytes()).ok());
  auto r = validate(nested(kMaxWireDepth + 1).bytes());
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("deeper"), std::string::npos);
  EXPECT_FALSE(validate(nested(5000).bytes()).ok());
}

TEST(BsonValidate, ErrorsNameNoContent) {
  Doc d = fromJson(R"({"password": "hunter2secret"})");
  Bytes b = copyOf(d.bytes());
  b[b.size() - 3] = 0xfe;  // inside the string: bad UTF-8
  auto r = validate(b);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().message.find("hunter"), std::string::npos);
}

TEST(Doc, DefaultIsEmpty) {
  Doc d;
  EXPECT_EQ(d.bytes().size(), 5u);
  EXPECT_EQ(d.json(), "{ }");
}

TEST(Doc, FromJsonRefusesBadJson) {
  EXPECT_FALSE(Doc::fromJson("{").ok());
  EXPECT_FALSE(Doc::fromJson("").ok());
  EXPECT_FALSE(Doc::fromJson(R"({"": 1})").ok());
}

TEST(Doc, CopiesAndMovesKeepTheBytes) {
  std::string big(1000, 'x');  // large enough that libbson allocates
  Doc a = fromJson(R"({"k": ")" + big + R"("})");
  Bytes want = copyOf(a.bytes());
  Doc b(a);
  EXPECT_EQ(copyOf(b.bytes()), want);
  Doc c(std::move(a));
  EXPECT_EQ(copyOf(c.bytes()), want);
  EXPECT_EQ(a.bytes().size(), 5u);  // NOLINT(bugprone-use-after-move): moved-from is {}
  Doc d;
  d = std::move(c);
  EXPECT_EQ(copyOf(d.bytes()), want);
  Doc e;
  e = d;
  EXPECT_EQ(copyOf(e.bytes()), want);
  bson_append_int32(e.get(), "more", 4, 1);  // still writable after the moves
  EXPECT_NE(copyOf(e.bytes()), want);
  EXPECT_EQ(copyOf(d.bytes()), want);
}

TEST(DocView, Accessors) {
  Doc d = fromJson(
      R"({"s": "str", "i": 7, "l": {"$numberLong": "9000000000"}, "f": 2.0, "h": 1.5, "t": true,
          "doc": {"x": 1}, "arr": [1], "bin": {"$binary": {"base64": "AQID", "subType": "00"}}})");
  DocView v(d.bytes());
  EXPECT_EQ(v.firstKey(), "s");
  EXPECT_TRUE(v.has("arr"));
  EXPECT_FALSE(v.has("nope"));
  EXPECT_EQ(v.string("s"), "str");
  EXPECT_EQ(v.string("i"), std::nullopt);
  EXPECT_EQ(v.integer("i"), 7);
  EXPECT_EQ(v.integer("l"), 9000000000);
  EXPECT_EQ(v.integer("f"), 2);
  EXPECT_EQ(v.integer("h"), std::nullopt);
  EXPECT_EQ(v.integer("s"), std::nullopt);
  EXPECT_EQ(v.boolean("t"), true);
  EXPECT_EQ(v.boolean("i"), std::nullopt);
  ASSERT_TRUE(v.document("doc"));
  EXPECT_EQ(DocView(*v.document("doc")).integer("x"), 1);
  ASSERT_TRUE(v.document("arr"));
  EXPECT_EQ(DocView(*v.document("arr")).integer("0"), 1);
  EXPECT_EQ(v.document("s"), std::nullopt);
  ASSERT_TRUE(v.binary("bin"));
  EXPECT_EQ(copyOf(*v.binary("bin")), (Bytes{1, 2, 3}));
  EXPECT_FALSE(v.hasDuplicateKeys());
}

TEST(DocView, IntegerRefusesDoublesOutOfRange) {
  Doc d;
  bson_append_double(d.get(), "big", 3, 1e19);
  bson_append_double(d.get(), "nan", 3, std::numeric_limits<double>::quiet_NaN());
  bson_append_double(d.get(), "inf", 3, std::numeric_limits<double>::infinity());
  bson_append_double(d.get(), "min", 3, -9223372036854775808.0);
  DocView v(d.bytes());
  EXPECT_EQ(v.integer("big"), std::nullopt);
  EXPECT_EQ(v.integer("nan"), std::nullopt);
  EXPECT_EQ(v.integer("inf"), std::nullopt);
  EXPECT_EQ(v.integer("min"), std::numeric_limits<std::int64_t>::min());
}

TEST(DocView, EmptyDocument) {
  Doc d;
  DocView v(d.bytes());
  EXPECT_EQ(v.firstKey(), "");
  EXPECT_FALSE(v.hasDuplicateKeys());
}

TEST(DocView, FindsDuplicateKeys) {
  Doc d;
  bson_append_int32(d.get(), "a", 1, 1);
  bson_append_int32(d.get(), "b", 1, 2);
  bson_append_utf8(d.get(), "a", 1, "x", 1);
  EXPECT_TRUE(DocView(d.bytes()).hasDuplicateKeys());
  Doc nestedDup = fromJson(R"({"a": {"x": 1}, "b": {"x": 2}})");  // not top-level
  EXPECT_FALSE(DocView(nestedDup.bytes()).hasDuplicateKeys());
}

TEST(DocView, CopiesOutliveTheOriginal) {
  Doc d = fromJson(R"({"find": "c"})");
  std::optional<DocView> copy;
  {
    DocView original(d.bytes());
    copy.emplace(original);
    Doc empty;
    DocView assigned(empty.bytes());
    assigned = original;
    EXPECT_EQ(assigned.firstKey(), "find");
  }
  EXPECT_EQ(copy->firstKey(), "find");
  EXPECT_EQ(copy->string("find"), "c");
}

TEST(Without, DropsEveryOccurrence) {
  Doc d;
  bson_append_int32(d.get(), "a", 1, 1);
  bson_append_int32(d.get(), "$db", 3, 2);
  bson_append_int32(d.get(), "a", 1, 3);
  bson_append_int32(d.get(), "lsid", 4, 4);
  Doc w = without(d.bytes(), {"a", "lsid"});
  DocView v(w.bytes());
  EXPECT_EQ(v.firstKey(), "$db");
  EXPECT_FALSE(v.has("a"));
  EXPECT_FALSE(v.has("lsid"));
  EXPECT_TRUE(validate(w.bytes()).ok());
}

}  // namespace
}  // namespace atlasgate::mongo
