#include "policy/condition.h"

#include <chrono>

#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <gtest/gtest.h>

namespace atlasgate::policy {
namespace {

namespace json = boost::json;

config::Condition cond(std::string pointer, config::CondOp op, std::vector<std::string> values = {}) {
  config::Condition c;
  c.pointer = std::move(pointer);
  c.op = op;
  c.jsonValues = std::move(values);
  return c;
}

config::Condition matches(std::string pointer, std::string regex) {
  config::Condition c = cond(std::move(pointer), config::CondOp::Matches);
  c.regex = std::move(regex);
  return c;
}

config::Condition exists(std::string pointer, bool e) {
  config::Condition c = cond(std::move(pointer), config::CondOp::Exists);
  c.exists = e;
  return c;
}

Truth eval(const config::Condition& c, std::optional<std::string_view> body, std::size_t cap = 1 << 20) {
  auto compiled = CompiledCondition::compile(c);
  EXPECT_TRUE(compiled.ok()) << (compiled.ok() ? "" : compiled.error().message);
  if (!compiled.ok()) return Truth::Unknown;
  LazyBody lazy(body, cap);
  return compiled->evaluate(lazy);
}

const json::value* resolve(std::string_view pointer, std::string_view doc, json::value& storage) {
  storage = json::parse(doc);
  auto p = JsonPointer::parse(pointer);
  EXPECT_TRUE(p.ok());
  return p->resolve(storage);
}

TEST(JsonPointer, Rfc6901Examples) {
  const char* doc = R"({"foo":["bar","baz"],"":0,"a/b":1,"c%d":2,"e^f":3,"g|h":4,"i\\j":5,"k\"l":6," ":7,"m~n":8})";
  json::value storage;
  auto is = [&](std::string_view p, std::string_view expected) {
    const json::value* v = resolve(p, doc, storage);
    ASSERT_NE(v, nullptr) << p;
    EXPECT_TRUE(jsonEqual(*v, json::parse(expected))) << p;
  };
  is("", doc);
  is("/foo", R"(["bar","baz"])");
  is("/foo/0", R"("bar")");
  is("/", "0");
  is("/a~1b", "1");
  is("/c%d", "2");
  is("/e^f", "3");
  is("/g|h", "4");
  is("/i\\j", "5");
  is("/k\"l", "6");
  is("/ ", "7");
  is("/m~0n", "8");
}

TEST(JsonPointer, DoesNotResolve) {
  json::value storage;
  EXPECT_EQ(resolve("/foo/2", R"({"foo":[1,2]})", storage), nullptr);
  EXPECT_EQ(resolve("/foo/01", R"({"foo":[1,2]})", storage), nullptr);
  EXPECT_EQ(resolve("/foo/-", R"({"foo":[1,2]})", storage), nullptr);
  EXPECT_EQ(resolve("/foo/x", R"({"foo":[1,2]})", storage), nullptr);
  EXPECT_EQ(resolve("/foo/99999999999999999999999", R"({"foo":[1,2]})", storage), nullptr);
  EXPECT_EQ(resolve("/foo/bar", R"({"foo":"str"})", storage), nullptr);
  EXPECT_EQ(resolve("/a", R"([1,2])", storage), nullptr);
  EXPECT_EQ(resolve("/a", R"("str")", storage), nullptr);
}

TEST(JsonPointer, SyntaxErrors) {
  EXPECT_FALSE(JsonPointer::parse("a/b").ok());
  EXPECT_FALSE(JsonPointer::parse("/a~2").ok());
  EXPECT_FALSE(JsonPointer::parse("/a~").ok());
  EXPECT_TRUE(JsonPointer::parse("/a~0~1").ok());
}

TEST(JsonEqual, TypedButNumbersByValue) {
  auto eq = [](std::string_view a, std::string_view b) { return jsonEqual(json::parse(a), json::parse(b)); };
  EXPECT_TRUE(eq("40", "40.0"));
  EXPECT_TRUE(eq("-3", "-3.0"));
  EXPECT_TRUE(eq("18446744073709551615", "18446744073709551615"));
  EXPECT_FALSE(eq("9007199254740993", "9007199254740992.0"));
  EXPECT_FALSE(eq("40", "\"40\""));
  EXPECT_FALSE(eq("1", "true"));
  EXPECT_FALSE(eq("0", "null"));
  EXPECT_TRUE(eq(R"({"a":1,"b":[1,2]})", R"({"b":[1,2.0],"a":1})"));
  EXPECT_FALSE(eq("[1,2]", "[2,1]"));
  EXPECT_FALSE(eq(R"({"a":1})", R"({"a":1,"b":2})"));
  EXPECT_TRUE(eq("null", "null"));
}

TEST(Condition, EqualsAndIn) {
  const char* body = R"({"providerSettings":{"instanceSizeName":"M40","diskGB":40.0},"n":3})";
  EXPECT_EQ(eval(cond("/providerSettings/instanceSizeName", config::CondOp::Equals, {"\"M40\""}), body), Truth::True);
  EXPECT_EQ(eval(cond("/providerSettings/diskGB", config::CondOp::Equals, {"40"}), body), Truth::True);
  EXPECT_EQ(eval(cond("/providerSettings/diskGB", config::CondOp::Equals, {"\"40\""}), body), Truth::False);
  EXPECT_EQ(eval(cond("/providerSettings/instanceSizeName", config::CondOp::In, {"\"M40\"", "\"M50\""}), body),
            Truth::True);
  EXPECT_EQ(eval(cond("/providerSettings/instanceSizeName", config::CondOp::In, {"\"M10\"", "\"M20\""}), body),
            Truth::False);
  EXPECT_EQ(eval(cond("/missing", config::CondOp::In, {"\"M40\""}), body), Truth::False);
}

TEST(Condition, NotInNeedsTheValueToExist) {
  const char* body = R"({"size":"M40"})";
  EXPECT_EQ(eval(cond("/size", config::CondOp::NotIn, {"\"M10\"", "\"M20\""}), body), Truth::True);
  EXPECT_EQ(eval(cond("/size", config::CondOp::NotIn, {"\"M40\""}), body), Truth::False);
  EXPECT_EQ(eval(cond("/other", config::CondOp::NotIn, {"\"M10\""}), body), Truth::False);
  EXPECT_EQ(eval(cond("/other", config::CondOp::NotIn, {"\"M10\""}), std::nullopt), Truth::False);
}

TEST(Condition, MatchesIsAFullMatchOnStringsOnly) {
  const char* body = R"({"s":"M40","t":"xM40","n":40})";
  EXPECT_EQ(eval(matches("/s", "M[0-9]+"), body), Truth::True);
  EXPECT_EQ(eval(matches("/t", "M[0-9]+"), body), Truth::False);
  EXPECT_EQ(eval(matches("/n", "[0-9]+"), body), Truth::False);
  EXPECT_EQ(eval(matches("/missing", ".*"), body), Truth::False);
  EXPECT_FALSE(CompiledCondition::compile(matches("/s", "([a-z")).ok());
}

TEST(Condition, PathologicalRegexIsUnknownNotACrash) {
  std::string body = R"({"s":")" + std::string(100000, 'a') + R"("})";
  EXPECT_EQ(eval(matches("/s", "(a|aa)*b"), body), Truth::Unknown);
}

TEST(Condition, Exists) {
  const char* body = R"({"a":{"b":null}})";
  EXPECT_EQ(eval(exists("/a/b", true), body), Truth::True);
  EXPECT_EQ(eval(exists("/a/c", true), body), Truth::False);
  EXPECT_EQ(eval(exists("/a/c", false), body), Truth::True);
  EXPECT_EQ(eval(exists("/a", false), std::nullopt), Truth::True);  // no body: nothing exists
  EXPECT_EQ(eval(exists("/a", true), ""), Truth::False);
  EXPECT_EQ(eval(exists("/a", false), " \r\n"), Truth::True);
}

TEST(Condition, ArraysAndEscapes) {
  const char* body = R"({"replicationSpecs":[{"regionConfigs":[{"x":1},{"electableSpecs":{"instanceSize":"M50"}}]}],
                         "tags":{"team/env":"prod","a~b":true}})";
  EXPECT_EQ(
      eval(cond("/replicationSpecs/0/regionConfigs/1/electableSpecs/instanceSize", config::CondOp::Equals, {"\"M50\""}),
           body),
      Truth::True);
  EXPECT_EQ(eval(cond("/tags/team~1env", config::CondOp::Equals, {"\"prod\""}), body), Truth::True);
  EXPECT_EQ(eval(cond("/tags/a~0b", config::CondOp::Equals, {"true"}), body), Truth::True);
}

TEST(Condition, UnreadableBodiesAreUnknown) {
  auto c = cond("/a", config::CondOp::Equals, {"1"});
  EXPECT_EQ(eval(c, "{\"a\":1"), Truth::Unknown);            // truncated
  EXPECT_EQ(eval(c, "{\"a\":1} trailing"), Truth::Unknown);  // trailing garbage
  EXPECT_EQ(eval(c, "\xff\xfe"), Truth::Unknown);            // not UTF-8
  EXPECT_EQ(eval(c, R"({"a":1})", 3), Truth::Unknown);       // over the cap
  EXPECT_EQ(eval(exists("/a", false), "not json"), Truth::Unknown);
  std::string deep = std::string(100, '[') + std::string(100, ']');
  EXPECT_EQ(eval(c, deep), Truth::Unknown);  // deeper than the parser allows
  EXPECT_EQ(eval(c, R"({"a":1})"), Truth::True);
}

TEST(Condition, DuplicateKeysKeepTheLastValueLikeAtlas) {
  EXPECT_EQ(eval(cond("/s", config::CondOp::Equals, {"\"M40\""}), R"({"s":"M10","s":"M40"})"), Truth::True);
}

TEST(Condition, CompileErrors) {
  EXPECT_FALSE(CompiledCondition::compile(cond("a", config::CondOp::Exists)).ok());
  EXPECT_FALSE(CompiledCondition::compile(cond("/a", config::CondOp::Equals, {})).ok());
  EXPECT_FALSE(CompiledCondition::compile(cond("/a", config::CondOp::Equals, {"1", "2"})).ok());
  EXPECT_FALSE(CompiledCondition::compile(cond("/a", config::CondOp::In, {})).ok());
  EXPECT_FALSE(CompiledCondition::compile(cond("/a", config::CondOp::In, {"M40"})).ok());  // not JSON text
  EXPECT_FALSE(CompiledCondition::compile(matches("/a", "")).ok());
}

TEST(Condition, Describe) {
  auto c = CompiledCondition::compile(cond("/p", config::CondOp::In, {"\"M40\"", "50"}));
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->describe(), R"(/p in ["M40", 50])");
  auto e = CompiledCondition::compile(exists("", false));
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->describe(), R"("" exists: false)");
}

// ---- the wildcard token "*" (condition.h, "Wildcards") ------------------------

std::vector<std::string> visited(std::string_view pointer, std::string_view doc) {
  const json::value root = json::parse(doc);
  auto p = JsonPointer::parse(pointer);
  EXPECT_TRUE(p.ok()) << pointer;
  std::vector<std::string> out;
  if (!p.ok()) return out;
  p->forEach(root, [&](const json::value& v) {
    out.push_back(json::serialize(v));
    return true;
  });
  return out;
}

using Strings = std::vector<std::string>;

TEST(JsonPointerWildcard, ParseMarksOnlyAWholeStarToken) {
  EXPECT_TRUE(JsonPointer::parse("/*/cidrBlock")->hasWildcard());
  EXPECT_TRUE(JsonPointer::parse("/a/*")->hasWildcard());
  EXPECT_TRUE(JsonPointer::parse("/*")->hasWildcard());
  EXPECT_FALSE(JsonPointer::parse("/a")->hasWildcard());
  EXPECT_FALSE(JsonPointer::parse("/*x/a")->hasWildcard());
  EXPECT_FALSE(JsonPointer::parse("/~0*")->hasWildcard());  // the key "~*"
  EXPECT_FALSE(JsonPointer::parse("")->hasWildcard());
  EXPECT_FALSE(JsonPointer::parse("/*~").ok());  // escapes are still checked
}

TEST(JsonPointerWildcard, AnyElementOfAnArrayInDocumentOrder) {
  const char* doc = R"([{"cidrBlock":"10.0.0.0/24"},{"ipAddress":"1.2.3.4"},{"cidrBlock":"0.0.0.0/0"}])";
  EXPECT_EQ(visited("/*/cidrBlock", doc), (Strings{R"("10.0.0.0/24")", R"("0.0.0.0/0")"}));
  EXPECT_EQ(visited("/*", "[1,[2],{}]"), (Strings{"1", "[2]", "{}"}));
  EXPECT_EQ(visited("/*/cidrBlock", "[]"), Strings{});
  EXPECT_EQ(visited("/*/0", "[[1,2],[],[3]]"), (Strings{"1", "3"}));
  // Without a wildcard, forEach is resolve().
  EXPECT_EQ(visited("/1/ipAddress", doc), Strings{R"("1.2.3.4")"});
  EXPECT_EQ(visited("/9", doc), Strings{});
}

TEST(JsonPointerWildcard, Nested) {
  const char* doc = R"({"a":[{"b":[{"c":1},{"c":2},{"d":0}]},{"b":"str"},{"b":[{"c":3}]},{"x":1}]})";
  EXPECT_EQ(visited("/a/*/b/*/c", doc), (Strings{"1", "2", "3"}));
  // The second element's "a" is an object: there "*" is its key "*".
  EXPECT_EQ(visited("/*/a/*/b", R"([{"a":[{"b":1},{"b":2}]},{"a":{"*":{"b":9}}},{"a":[{"b":3}]}])"),
            (Strings{"1", "2", "9", "3"}));
}

TEST(JsonPointerWildcard, OnAnObjectStarIsTheLiteralKey) {
  const char* doc = R"({"*":{"b":1},"x":{"b":2}})";
  EXPECT_EQ(visited("/*/b", doc), Strings{"1"});
  json::value storage;
  const json::value* v = resolve("/*/b", doc, storage);
  ASSERT_NE(v, nullptr);
  EXPECT_EQ(json::serialize(*v), "1");
  // resolve() never expands: on an array "*" is no index.
  EXPECT_EQ(resolve("/*", "[1,2]", storage), nullptr);
  EXPECT_EQ(visited("/*/b", R"({"x":{"b":2}})"), Strings{});
}

TEST(JsonPointerWildcard, EscapesInOtherTokens) {
  const char* doc = R"([{"a/b":1,"m~n":2},{"a/b":3}])";
  EXPECT_EQ(visited("/*/a~1b", doc), (Strings{"1", "3"}));
  EXPECT_EQ(visited("/*/m~0n", doc), Strings{"2"});
}

TEST(JsonPointerWildcard, StopsWhenTold) {
  const json::value root = json::parse("[1,2,3,4]");
  auto p = JsonPointer::parse("/*");
  ASSERT_TRUE(p.ok());
  int calls = 0;
  EXPECT_FALSE(p->forEach(root, [&](const json::value& v) { return ++calls, v.as_int64() < 2; }));
  EXPECT_EQ(calls, 2);
  EXPECT_TRUE(p->forEach(root, [&](const json::value&) { return true; }));
}

TEST(ConditionWildcard, EachOpHoldsForAtLeastOneValue) {
  const char* body = R"([{"s":"a","n":1},{"s":"b"},{"s":"M40"}])";
  EXPECT_EQ(eval(cond("/*/s", config::CondOp::Equals, {"\"b\""}), body), Truth::True);
  EXPECT_EQ(eval(cond("/*/s", config::CondOp::Equals, {"\"c\""}), body), Truth::False);
  EXPECT_EQ(eval(cond("/*/s", config::CondOp::In, {"\"x\"", "\"M40\""}), body), Truth::True);
  EXPECT_EQ(eval(cond("/*/s", config::CondOp::In, {"\"x\"", "\"y\""}), body), Truth::False);
  EXPECT_EQ(eval(matches("/*/s", "M[0-9]+"), body), Truth::True);
  EXPECT_EQ(eval(matches("/*/s", "[0-9]+"), body), Truth::False);
  EXPECT_EQ(eval(exists("/*/n", true), body), Truth::True);
  EXPECT_EQ(eval(exists("/*/n", false), body), Truth::False);
  EXPECT_EQ(eval(exists("/*/z", true), body), Truth::False);
  EXPECT_EQ(eval(exists("/*/z", false), body), Truth::True);
}

TEST(ConditionWildcard, NotInHoldsWhenOneValueIsNotListed) {
  const char* body = R"([{"s":"a"},{"s":"b"},{"t":"z"}])";
  EXPECT_EQ(eval(cond("/*/s", config::CondOp::NotIn, {"\"a\""}), body), Truth::True);  // "b" is not listed
  EXPECT_EQ(eval(cond("/*/s", config::CondOp::NotIn, {"\"a\"", "\"b\""}), body), Truth::False);
  // Nothing resolves: as for any pointer that does not resolve.
  EXPECT_EQ(eval(cond("/*/s", config::CondOp::NotIn, {"\"a\""}), "[]"), Truth::False);
  EXPECT_EQ(eval(cond("/*/s", config::CondOp::NotIn, {"\"a\""}), R"({"s":"b"})"), Truth::False);
  EXPECT_EQ(eval(cond("/*/s", config::CondOp::NotIn, {"\"a\""}), std::nullopt), Truth::False);
}

TEST(ConditionWildcard, NothingResolvedIsAsForAnUnresolvedPointer) {
  for (std::optional<std::string_view> body :
       {std::optional<std::string_view>("[]"), std::optional<std::string_view>(R"({"a":1})"),
        std::optional<std::string_view>(), std::optional<std::string_view>("7")}) {
    EXPECT_EQ(eval(cond("/*/s", config::CondOp::Equals, {"1"}), body), Truth::False);
    EXPECT_EQ(eval(matches("/*/s", ".*"), body), Truth::False);
    EXPECT_EQ(eval(exists("/*/s", true), body), Truth::False);
    EXPECT_EQ(eval(exists("/*/s", false), body), Truth::True);
  }
}

TEST(ConditionWildcard, UnknownOnlyWhenNoValuePasses) {
  const std::string slow = R"({"s":")" + std::string(100000, 'a') + R"("})";
  // A regex that blows up on one element and matches another: True.
  EXPECT_EQ(eval(matches("/*/s", "(a|aa)*b|ok"), "[" + slow + R"(,{"s":"ok"}])"), Truth::True);
  EXPECT_EQ(eval(matches("/*/s", "(a|aa)*b|ok"), R"([{"s":"ok"},)" + slow + "]"), Truth::True);
  // Blows up and nothing else matches: Unknown, never True.
  EXPECT_EQ(eval(matches("/*/s", "(a|aa)*b|ok"), "[" + slow + R"(,{"s":"no"}])"), Truth::Unknown);
  // An unreadable body: Unknown, whatever the pointer.
  EXPECT_EQ(eval(cond("/*/s", config::CondOp::In, {"1"}), "[{\"s\":1},"), Truth::Unknown);
  EXPECT_EQ(eval(exists("/*/s", false), "not json"), Truth::Unknown);
}

TEST(ConditionWildcard, FanOutIsLinearAndShortCircuits) {
  // 100k entries, the wide one last: every element is looked at once.
  std::string body = "[";
  for (int i = 0; i < 100000; ++i) body += R"({"cidrBlock":"10.0.0.0/24","comment":"x"},)";
  body += R"({"cidrBlock":"0.0.0.0/0"}])";
  constexpr std::size_t kCap = 16 << 20;  // limits.max_body_bytes' default; the policy's own cap is 1 MiB
  ASSERT_GT(body.size(), std::size_t{4} << 20);
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(eval(cond("/*/cidrBlock", config::CondOp::In, {"\"0.0.0.0/0\"", "\"::/0\""}), body, kCap), Truth::True);
  EXPECT_EQ(eval(matches("/*/cidrBlock", ".*/0"), body, kCap), Truth::True);
  EXPECT_EQ(eval(cond("/*/cidrBlock", config::CondOp::NotIn, {"\"10.0.0.0/24\""}), body, kCap), Truth::True);
  EXPECT_EQ(eval(cond("/*/cidrBlock", config::CondOp::NotIn, {"\"10.0.0.0/24\"", "\"0.0.0.0/0\""}), body, kCap),
            Truth::False);
  // Nested: 400 x 400 values.
  std::string grid = "[";
  for (int i = 0; i < 400; ++i)
    grid += std::string(i ? "," : "") + R"({"a":[)" + [] {
      std::string row;
      for (int j = 0; j < 400; ++j) row += std::string(j ? "," : "") + R"({"b":1})";
      return row;
    }() + "]}";
  grid += "]";
  EXPECT_EQ(eval(cond("/*/a/*/b", config::CondOp::Equals, {"2"}), grid, kCap), Truth::False);
  EXPECT_EQ(eval(cond("/*/a/*/b", config::CondOp::Equals, {"1"}), grid, kCap), Truth::True);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));

  // The first value that passes ends the walk.
  const json::value doc = json::parse(body);
  auto p = JsonPointer::parse("/*/cidrBlock");
  ASSERT_TRUE(p.ok());
  std::size_t calls = 0;
  p->forEach(doc, [&](const json::value&) { return ++calls, false; });
  EXPECT_EQ(calls, 1u);
}

TEST(ConditionWildcard, Describe) {
  auto c = CompiledCondition::compile(cond("/*/cidrBlock", config::CondOp::In, {"\"0.0.0.0/0\""}));
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->describe(), R"(/*/cidrBlock in ["0.0.0.0/0"])");
}

TEST(LazyBody, ParsesOnlyWhenAsked) {
  LazyBody body(std::string_view("{\"a\":1}"), 1024);
  EXPECT_EQ(body.state(), LazyBody::State::Document);
  EXPECT_TRUE(body.document().is_object());
  LazyBody none(std::nullopt, 1024);
  EXPECT_EQ(none.state(), LazyBody::State::None);
  LazyBody bad(std::string_view("{"), 1024);
  EXPECT_EQ(bad.state(), LazyBody::State::Unreadable);
  EXPECT_FALSE(bad.unreadableReason().empty());
}

}  // namespace
}  // namespace atlasgate::policy
