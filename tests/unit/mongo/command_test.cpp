// mongo/command.h: what a command does, hidden writes and reads included,
// from real messages built with libbson and buildMsg/buildQuery.

#include "mongo/command.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <deque>
#include <ostream>
#include <string>
#include <utility>

namespace atlasgate::mongo {

void PrintTo(const Access& a, std::ostream* os) {
  *os << "{" << a.command << " " << a.database << "." << a.collection << "}";
}

namespace {

using Accesses = std::vector<Access>;
using Seqs = std::vector<std::pair<std::string, std::vector<std::string>>>;

Doc fromJson(std::string_view j) {
  auto d = Doc::fromJson(j);
  EXPECT_TRUE(d.ok()) << j << ": " << (d.ok() ? "" : d.error().message);
  return d.ok() ? std::move(d).value() : Doc();
}

// parseMsg + describe over a message of this body and these sequences.
Result<CommandInfo> describeBytes(ByteView body, const Seqs& seqs = {}) {
  std::deque<Doc> docs;  // a deque: the views below must not move
  std::vector<Sequence> sequences;
  for (const auto& [id, jsons] : seqs) {
    Sequence s{id, {}};
    for (const std::string& j : jsons) s.documents.push_back(docs.emplace_back(fromJson(j)).bytes());
    sequences.push_back(std::move(s));
  }
  Bytes m = buildMsg(1, 0, 0, body, sequences);
  auto p = parseMsg(m);
  EXPECT_TRUE(p.ok()) << (p.ok() ? "" : p.error().message);
  if (!p) return p.error();
  return describe(*p);
}

Result<CommandInfo> describeJson(std::string_view body, const Seqs& seqs = {}) {
  Doc b = fromJson(body);
  return describeBytes(b.bytes(), seqs);
}

Accesses accessesOf(std::string_view body, const Seqs& seqs = {}) {
  auto r = describeJson(body, seqs);
  EXPECT_TRUE(r.ok()) << body << ": " << (r.ok() ? "" : r.error().message);
  return r.ok() ? r->accesses : Accesses{};
}

void expectRefused(std::string_view body, const Seqs& seqs = {}) {
  auto r = describeJson(body, seqs);
  EXPECT_FALSE(r.ok()) << body;
  if (!r.ok()) {
    EXPECT_FALSE(r.error().message.empty());
  }
}

Result<CommandInfo> describeQuery(std::string_view ns, std::string_view body) {
  Doc b = fromJson(body);
  Bytes m = buildQuery(1, 0, ns, 0, -1, b.bytes());
  auto q = parseQuery(m);
  EXPECT_TRUE(q.ok()) << (q.ok() ? "" : q.error().message);
  if (!q) return q.error();
  return describe(*q);
}

TEST(Describe, PlainCommand) {
  auto r = describeJson(R"({"find": "people", "filter": {"age": {"$gt": 3}}, "$db": "app"})");
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->name, "find");
  EXPECT_EQ(r->database, "app");
  EXPECT_EQ(r->collection, "people");
  EXPECT_EQ(r->accesses, (Accesses{{"find", "app", "people"}}));
  auto ping = describeJson(R"({"ping": 1, "$db": "admin"})");
  ASSERT_TRUE(ping.ok());
  EXPECT_EQ(ping->collection, "");
  EXPECT_EQ(ping->accesses, (Accesses{{"ping", "admin", ""}}));
}

TEST(Describe, DatabaseRequiredAndValid) {
  expectRefused(R"({"find": "c"})");
  expectRefused(R"({"find": "c", "$db": 1})");
  for (std::string bad :
       std::vector<std::string>{"", "a.b", "a b", "a$b", "a/b", "a\\\\b", "a\\\"b", std::string(65, 'd')})
    expectRefused(R"({"find": "c", "$db": ")" + bad + R"("})");
  EXPECT_EQ(accessesOf(R"({"find": "c", "$db": ")" + std::string(64, 'd') + R"("})").at(0).database,
            std::string(64, 'd'));
  auto r = describeJson(R"({"find": "c", "$db": "no.topsecretname"})");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().message.find("topsecret"), std::string::npos);
}

TEST(Describe, RefusesDuplicateKeysAndEmptyBodies) {
  Doc dup;
  bson_append_utf8(dup.get(), "delete", -1, "c", -1);
  bson_append_utf8(dup.get(), "$db", -1, "app", -1);
  bson_append_utf8(dup.get(), "$db", -1, "admin", -1);
  EXPECT_FALSE(describeBytes(dup.bytes()).ok());
  Doc twice;
  bson_append_utf8(twice.get(), "find", -1, "c", -1);
  bson_append_utf8(twice.get(), "find", -1, "d", -1);
  bson_append_utf8(twice.get(), "$db", -1, "app", -1);
  EXPECT_FALSE(describeBytes(twice.bytes()).ok());
  EXPECT_FALSE(describeBytes(Doc().bytes()).ok());
}

TEST(Describe, RefusesAmbiguousSequences) {
  expectRefused(R"({"insert": "c", "documents": [{"a": 1}], "$db": "app"})", {{"documents", {R"({"b": 1})"}}});
  expectRefused(R"({"insert": "c", "$db": "app"})", {{"documents", {R"({"a": 1})"}}, {"documents", {}}});
  EXPECT_EQ(accessesOf(R"({"insert": "c", "$db": "app"})", {{"documents", {R"({"a": 1})", R"({"b": 2})"}}}),
            (Accesses{{"insert", "app", "c"}}));
}

TEST(Aggregate, OutAndMerge) {
  EXPECT_EQ(accessesOf(R"({"aggregate": "src", "pipeline": [{"$match": {}}, {"$out": "dst"}], "$db": "app"})"),
            (Accesses{{"aggregate", "app", "src"}, {"insert", "app", "dst"}, {"drop", "app", "dst"}}));
  EXPECT_EQ(accessesOf(R"({"aggregate": "src", "pipeline": [{"$out": {"db": "other", "coll": "dst"}}], "$db": "app"})"),
            (Accesses{{"aggregate", "app", "src"}, {"insert", "other", "dst"}, {"drop", "other", "dst"}}));
  EXPECT_EQ(accessesOf(R"({"aggregate": 1, "pipeline": [{"$merge": "dst"}], "$db": "app"})"),
            (Accesses{{"aggregate", "app", ""}, {"insert", "app", "dst"}, {"update", "app", "dst"}}));
  EXPECT_EQ(accessesOf(R"({"aggregate": "s", "pipeline": [{"$merge": {"into": "d", "on": "_id"}}], "$db": "app"})"),
            (Accesses{{"aggregate", "app", "s"}, {"insert", "app", "d"}, {"update", "app", "d"}}));
  EXPECT_EQ(
      accessesOf(R"({"aggregate": "s", "pipeline": [{"$merge": {"into": {"db": "o", "coll": "d"}}}], "$db": "app"})"),
      (Accesses{{"aggregate", "app", "s"}, {"insert", "o", "d"}, {"update", "o", "d"}}));
}

TEST(Aggregate, UnreadableTargetsRefused) {
  expectRefused(R"({"aggregate": "s", "pipeline": [{"$out": 5}], "$db": "app"})");
  expectRefused(R"({"aggregate": "s", "pipeline": [{"$out": ""}], "$db": "app"})");
  expectRefused(R"({"aggregate": "s", "pipeline": [{"$out": {"db": "x"}}], "$db": "app"})");
  expectRefused(R"({"aggregate": "s", "pipeline": [{"$out": {"db": "a.b", "coll": "c"}}], "$db": "app"})");
  expectRefused(R"({"aggregate": "s", "pipeline": [{"$out": {"db": 1, "coll": "c"}}], "$db": "app"})");
  expectRefused(R"({"aggregate": "s", "pipeline": [{"$merge": {"on": "_id"}}], "$db": "app"})");
  expectRefused(R"({"aggregate": "s", "pipeline": [{"$merge": {"into": 3}}], "$db": "app"})");
  expectRefused(R"({"aggregate": "s", "pipeline": [{"$lookup": {"from": 3, "as": "x"}}], "$db": "app"})");
  expectRefused(R"({"aggregate": "s", "pipeline": [{"$unionWith": {"coll": {"x": 1}}}], "$db": "app"})");
  expectRefused(R"({"aggregate": "s", "pipeline": {"$out": "d"}, "$db": "app"})");
}

TEST(Aggregate, ReadsOfOtherCollections) {
  EXPECT_EQ(accessesOf(R"({"aggregate": "s", "pipeline": [
                {"$lookup": {"from": "a", "localField": "x", "foreignField": "y", "as": "j"}},
                {"$graphLookup": {"from": "b", "startWith": "$x", "connectFromField": "x",
                                  "connectToField": "y", "as": "g"}},
                {"$unionWith": "c"},
                {"$unionWith": {"coll": "d", "pipeline": [{"$match": {}}]}},
                {"$lookup": {"from": "a", "as": "again"}}], "$db": "app"})"),
            (Accesses{{"aggregate", "app", "s"},
                      {"aggregate", "app", "a"},
                      {"aggregate", "app", "b"},
                      {"aggregate", "app", "c"},
                      {"aggregate", "app", "d"}}));
  // A $lookup over $documents reads no collection.
  EXPECT_EQ(accessesOf(R"({"aggregate": 1, "pipeline": [{"$lookup": {"pipeline": [{"$documents": [{"a": 1}]}],
                                                                   "as": "x"}}], "$db": "app"})"),
            (Accesses{{"aggregate", "app", ""}}));
}

TEST(Aggregate, NestedPipelinesAreSearched) {
  EXPECT_EQ(accessesOf(R"({"aggregate": "s", "pipeline": [
                {"$facet": {"f1": [{"$lookup": {"from": "inFacet", "as": "x"}}],
                            "f2": [{"$match": {}}]}},
                {"$lookup": {"from": "outer", "as": "y", "pipeline": [
                    {"$unionWith": {"coll": "u", "pipeline": [{"$lookup": {"from": "deepest", "as": "z"}}]}}]}}
              ], "$db": "app"})"),
            (Accesses{{"aggregate", "app", "s"},
                      {"aggregate", "app", "inFacet"},
                      {"aggregate", "app", "outer"},
                      {"aggregate", "app", "u"},
                      {"aggregate", "app", "deepest"}}));
  // A stage's name is only a stage in a pipeline (an array), not as a field of a filter.
  EXPECT_EQ(accessesOf(R"({"aggregate": "s", "pipeline": [{"$match": {"$out": 5}}], "$db": "app"})"),
            (Accesses{{"aggregate", "app", "s"}}));
}

// [{$facet: {a: [{$facet: ... [{$lookup: {from: "bottom"}}] }]}}]: three levels a facet.
void facets(bson_t* parent, const char* key, int n) {
  bson_t arr, stage, facet, lookup;
  bson_append_array_begin(parent, key, -1, &arr);
  bson_append_document_begin(&arr, "0", -1, &stage);
  if (n == 0) {
    bson_append_document_begin(&stage, "$lookup", -1, &lookup);
    bson_append_utf8(&lookup, "from", -1, "bottom", -1);
    bson_append_document_end(&stage, &lookup);
  } else {
    bson_append_document_begin(&stage, "$facet", -1, &facet);
    facets(&facet, "a", n - 1);
    bson_append_document_end(&stage, &facet);
  }
  bson_append_document_end(&arr, &stage);
  bson_append_array_end(parent, &arr);
}

Doc deepAggregate(int n) {
  Doc d;
  bson_append_utf8(d.get(), "aggregate", -1, "s", -1);
  facets(d.get(), "pipeline", n);
  bson_append_utf8(d.get(), "$db", -1, "app", -1);
  return d;
}

TEST(Aggregate, DeepNestingRefused) {
  auto ok = describeBytes(deepAggregate(10).bytes());
  ASSERT_TRUE(ok.ok()) << ok.error().message;
  EXPECT_EQ(ok->accesses.back(), (Access{"aggregate", "app", "bottom"}));
  auto deep = describeBytes(deepAggregate(30).bytes());
  ASSERT_FALSE(deep.ok());
  EXPECT_NE(deep.error().message.find("deeper"), std::string::npos);
}

TEST(BulkWrite, BodyArraysAndSequences) {
  const Accesses want{{"bulkWrite", "admin", ""},
                      {"insert", "app", "a"},
                      {"update", "other", "b.c"},
                      {"delete", "app", "a"},
                      {"insert", "other", "b.c"}};
  EXPECT_EQ(accessesOf(R"({"bulkWrite": 1, "ops": [{"insert": 0, "document": {"x": 1}},
                          {"update": 1, "filter": {}, "updateMods": {"$set": {"y": 1}}},
                          {"delete": 0, "filter": {}},
                          {"update": 1, "filter": {}, "updateMods": {}, "upsert": true}],
                          "nsInfo": [{"ns": "app.a"}, {"ns": "other.b.c"}], "$db": "admin"})"),
            want);
  EXPECT_EQ(accessesOf(R"({"bulkWrite": 1, "$db": "admin"})",
                       {{"ops",
                         {R"({"insert": 0, "document": {}})", R"({"update": 1, "filter": {}, "updateMods": {}})",
                          R"({"delete": 0.0, "filter": {}})", R"({"update": 1, "upsert": 1})"}},
                        {"nsInfo", {R"({"ns": "app.a"})", R"({"ns": "other.b.c"})"}}}),
            want);
  EXPECT_EQ(
      accessesOf(R"({"bulkWrite": 1, "nsInfo": [{"ns": "app.a"}], "$db": "admin"})", {{"ops", {R"({"delete": 0})"}}}),
      (Accesses{{"bulkWrite", "admin", ""}, {"delete", "app", "a"}}));
}

TEST(BulkWrite, RefusesWhatItCannotRead) {
  expectRefused(R"({"bulkWrite": 1, "ops": [{"insert": 1}], "nsInfo": [{"ns": "app.a"}], "$db": "admin"})");
  expectRefused(R"({"bulkWrite": 1, "ops": [{"insert": -1}], "nsInfo": [{"ns": "app.a"}], "$db": "admin"})");
  expectRefused(R"({"bulkWrite": 1, "ops": [{"insert": "0"}], "nsInfo": [{"ns": "app.a"}], "$db": "admin"})");
  expectRefused(R"({"bulkWrite": 1, "ops": [{"insert": 0}], "$db": "admin"})");
  expectRefused(R"({"bulkWrite": 1, "ops": [{"replace": 0}], "nsInfo": [{"ns": "app.a"}], "$db": "admin"})");
  expectRefused(R"({"bulkWrite": 1, "ops": [5], "nsInfo": [{"ns": "app.a"}], "$db": "admin"})");
  expectRefused(R"({"bulkWrite": 1, "ops": [], "nsInfo": [{"ns": "noDot"}], "$db": "admin"})");
  expectRefused(R"({"bulkWrite": 1, "ops": [], "nsInfo": [{"ns": "app."}], "$db": "admin"})");
  expectRefused(R"({"bulkWrite": 1, "ops": [], "nsInfo": [{"ns": "a$b.c"}], "$db": "admin"})");
  expectRefused(R"({"bulkWrite": 1, "ops": [], "nsInfo": [{"x": 1}], "$db": "admin"})");
  expectRefused(R"({"bulkWrite": 1, "ops": {"0": 1}, "nsInfo": "x", "$db": "admin"})");
}

TEST(Explain, IsItsInnerCommand) {
  EXPECT_EQ(accessesOf(R"({"explain": {"find": "c", "filter": {}}, "verbosity": "queryPlanner", "$db": "app"})"),
            (Accesses{{"explain", "app", ""}, {"find", "app", "c"}}));
  EXPECT_EQ(
      accessesOf(R"({"explain": {"aggregate": "c", "pipeline": [{"$out": "o"}]}, "$db": "app"})"),
      (Accesses{{"explain", "app", ""}, {"aggregate", "app", "c"}, {"insert", "app", "o"}, {"drop", "app", "o"}}));
  EXPECT_EQ(accessesOf(R"({"explain": {"findAndModify": "c", "remove": true}, "$db": "app"})"),
            (Accesses{{"explain", "app", ""}, {"findAndModify", "app", "c"}, {"delete", "app", "c"}}));
  expectRefused(R"({"explain": "find", "$db": "app"})");
  expectRefused(R"({"explain": {}, "$db": "app"})");
}

Doc deepExplain(int n) {
  Doc inner = fromJson(R"({"find": "c"})");
  for (int i = 0; i < n; ++i) {
    Doc outer;
    bson_append_document(outer.get(), "explain", -1, inner.get());
    inner = std::move(outer);
  }
  bson_append_utf8(inner.get(), "$db", -1, "app", -1);
  return inner;
}

TEST(Explain, DeepNestingRefused) {
  auto ok = describeBytes(deepExplain(60).bytes());
  ASSERT_TRUE(ok.ok()) << ok.error().message;
  EXPECT_EQ(ok->accesses.back(), (Access{"find", "app", "c"}));
  EXPECT_FALSE(describeBytes(deepExplain(70).bytes()).ok());
}

TEST(FindAndModify, RemoveUpdateUpsert) {
  EXPECT_EQ(accessesOf(R"({"findAndModify": "c", "query": {}, "remove": true, "$db": "app"})"),
            (Accesses{{"findAndModify", "app", "c"}, {"delete", "app", "c"}}));
  EXPECT_EQ(accessesOf(R"({"findAndModify": "c", "update": {"$set": {"a": 1}}, "$db": "app"})"),
            (Accesses{{"findAndModify", "app", "c"}, {"update", "app", "c"}}));
  EXPECT_EQ(accessesOf(R"({"findandmodify": "c", "update": [{"$set": {"a": 1}}], "upsert": true, "$db": "app"})"),
            (Accesses{{"findandmodify", "app", "c"}, {"update", "app", "c"}, {"insert", "app", "c"}}));
  EXPECT_EQ(accessesOf(R"({"findAndModify": "c", "update": {}, "upsert": 1, "remove": 0, "$db": "app"})"),
            (Accesses{{"findAndModify", "app", "c"}, {"update", "app", "c"}, {"insert", "app", "c"}}));
  EXPECT_EQ(accessesOf(R"({"findAndModify": "c", "upsert": false, "remove": false, "$db": "app"})"),
            (Accesses{{"findAndModify", "app", "c"}}));
}

TEST(Update, UpsertInserts) {
  EXPECT_EQ(accessesOf(R"({"update": "c", "updates": [{"q": {}, "u": {"$set": {"a": 1}}}], "$db": "app"})"),
            (Accesses{{"update", "app", "c"}}));
  EXPECT_EQ(accessesOf(R"({"update": "c", "updates": [{"q": {}, "u": {}}, {"q": {}, "u": {}, "upsert": true}],
                           "$db": "app"})"),
            (Accesses{{"update", "app", "c"}, {"insert", "app", "c"}}));
  EXPECT_EQ(accessesOf(R"({"update": "c", "$db": "app"})",
                       {{"updates", {R"({"q": {}, "u": {}})", R"({"q": {}, "u": {}, "upsert": true})"}}}),
            (Accesses{{"update", "app", "c"}, {"insert", "app", "c"}}));
  expectRefused(R"({"update": "c", "updates": [1], "$db": "app"})");
}

TEST(MapReduce, OutputCollections) {
  const char* base = R"({"mapReduce": "src", "map": {"$code": "function(){}"}, "reduce": {"$code": "function(){}"},)";
  auto with = [&](std::string out) { return std::string(base) + R"("out": )" + out + R"(, "$db": "app"})"; };
  // A name or replace replaces the collection: an insert and a drop, as $out.
  EXPECT_EQ(accessesOf(with(R"("dst")")),
            (Accesses{{"mapReduce", "app", "src"}, {"insert", "app", "dst"}, {"drop", "app", "dst"}}));
  EXPECT_EQ(accessesOf(with(R"({"replace": "dst", "db": "other"})")),
            (Accesses{{"mapReduce", "app", "src"}, {"insert", "other", "dst"}, {"drop", "other", "dst"}}));
  EXPECT_EQ(accessesOf(with(R"({"merge": "m"})")), (Accesses{{"mapReduce", "app", "src"}, {"insert", "app", "m"}}));
  EXPECT_EQ(accessesOf(with(R"({"reduce": "r"})")), (Accesses{{"mapReduce", "app", "src"}, {"insert", "app", "r"}}));
  EXPECT_EQ(accessesOf(with(R"({"inline": 1})")), (Accesses{{"mapReduce", "app", "src"}}));
  expectRefused(with(R"({"sharded": true})"));
  expectRefused(with(R"(7)"));
  expectRefused(with(R"({"replace": 1})"));
}

TEST(ApplyOps, EachOpIsAnAccess) {
  EXPECT_EQ(accessesOf(R"({"applyOps": [
                {"op": "i", "ns": "app.a", "o": {"_id": 1}},
                {"op": "u", "ns": "app.b", "o": {"$set": {"x": 1}}, "o2": {"_id": 1}},
                {"op": "d", "ns": "other.c", "o": {"_id": 1}},
                {"op": "n", "ns": "", "o": {}},
                {"op": "c", "ns": "app.$cmd", "o": {"drop": "old"}},
                {"op": "c", "ns": "x.$cmd", "o": {"applyOps": [{"op": "i", "ns": "x.y", "o": {}}]}}
              ], "$db": "admin"})"),
            (Accesses{{"applyOps", "admin", ""},
                      {"insert", "app", "a"},
                      {"update", "app", "b"},
                      {"delete", "other", "c"},
                      {"drop", "app", "old"},
                      {"applyOps", "x", ""},
                      {"insert", "x", "y"}}));
  expectRefused(R"({"applyOps": [{"op": "z", "ns": "app.a"}], "$db": "admin"})");
  expectRefused(R"({"applyOps": [{"op": "i"}], "$db": "admin"})");
  expectRefused(R"({"applyOps": [{"op": "i", "ns": "app"}], "$db": "admin"})");
  expectRefused(R"({"applyOps": [{"op": "c", "ns": "app.$cmd", "o": "drop"}], "$db": "admin"})");
  expectRefused(R"({"applyOps": [{"ns": "app.a"}], "$db": "admin"})");
}

TEST(Create, ViewReadsItsSource) {
  EXPECT_EQ(accessesOf(R"({"create": "v", "viewOn": "src", "pipeline": [{"$lookup": {"from": "j", "as": "x"}}],
                           "$db": "app"})"),
            (Accesses{{"create", "app", "v"}, {"aggregate", "app", "src"}, {"aggregate", "app", "j"}}));
  EXPECT_EQ(accessesOf(R"({"create": "plain", "$db": "app"})"), (Accesses{{"create", "app", "plain"}}));
  EXPECT_EQ(accessesOf(R"({"collMod": "v", "viewOn": "other", "pipeline": [], "$db": "app"})"),
            (Accesses{{"collMod", "app", "v"}, {"aggregate", "app", "other"}}));
  expectRefused(R"({"create": "v", "viewOn": 1, "$db": "app"})");
}

TEST(Query, UnwrappedAndWrapped) {
  auto plain = describeQuery("admin.$cmd", R"({"isMaster": 1, "client": {}})");
  ASSERT_TRUE(plain.ok()) << plain.error().message;
  EXPECT_EQ(plain->name, "isMaster");
  EXPECT_EQ(plain->database, "admin");
  EXPECT_EQ(plain->accesses, (Accesses{{"isMaster", "admin", ""}}));
  auto wrapped = describeQuery(
      "app.$cmd",
      R"({"$query": {"aggregate": "c", "pipeline": [{"$out": "o"}]}, "$readPreference": {"mode": "primary"}})");
  ASSERT_TRUE(wrapped.ok()) << wrapped.error().message;
  EXPECT_EQ(wrapped->name, "aggregate");
  EXPECT_EQ(wrapped->accesses, (Accesses{{"aggregate", "app", "c"}, {"insert", "app", "o"}, {"drop", "app", "o"}}));
  auto query = describeQuery("app.$cmd", R"({"query": {"count": "c"}, "orderby": {}})");
  ASSERT_TRUE(query.ok()) << query.error().message;
  EXPECT_EQ(query->accesses, (Accesses{{"count", "app", "c"}}));
  auto sameDb = describeQuery("app.$cmd", R"({"count": "c", "$db": "app"})");
  EXPECT_TRUE(sameDb.ok());
}

TEST(Query, Refusals) {
  EXPECT_FALSE(describeQuery("app.c", R"({"find": "c"})").ok());
  EXPECT_FALSE(describeQuery(".$cmd", R"({"ping": 1})").ok());
  EXPECT_FALSE(describeQuery("$cmd", R"({"ping": 1})").ok());
  EXPECT_FALSE(describeQuery("a b.$cmd", R"({"ping": 1})").ok());
  EXPECT_FALSE(describeQuery("app.$cmd", R"({"$query": {"ping": 1}, "query": {"ping": 1}})").ok());
  EXPECT_FALSE(describeQuery("app.$cmd", R"({"$query": 1})").ok());
  EXPECT_FALSE(describeQuery("app.$cmd", R"({"$query": {}})").ok());
  EXPECT_FALSE(describeQuery("app.$cmd", R"({"count": "c", "$db": "other"})").ok());
  EXPECT_FALSE(describeQuery("app.$cmd", R"({})").ok());
  // Which document would run is a guess: refused.
  EXPECT_FALSE(describeQuery("app.$cmd", R"({"drop": "c", "$query": {"ping": 1}})").ok());
  EXPECT_FALSE(describeQuery("app.$cmd", R"({"$readPreference": {}, "$maxTimeMS": 1})").ok());
  // A wrapper's "query" need not come first; a command's "query" field is no wrapper.
  auto later = describeQuery("app.$cmd", R"({"$readPreference": {}, "query": {"drop": "c"}})");
  ASSERT_TRUE(later.ok()) << later.error().message;
  EXPECT_EQ(later->accesses, (Accesses{{"drop", "app", "c"}}));
  auto count = describeQuery("app.$cmd", R"({"count": "c", "query": {"a": 1}})");
  ASSERT_TRUE(count.ok()) << count.error().message;
  EXPECT_EQ(count->accesses, (Accesses{{"count", "app", "c"}}));
  Doc dup;
  bson_append_int32(dup.get(), "ping", -1, 1);
  bson_append_int32(dup.get(), "ping", -1, 1);
  Bytes m = buildQuery(1, 0, "admin.$cmd", 0, -1, dup.bytes());
  auto q = parseQuery(m);
  ASSERT_TRUE(q.ok());
  EXPECT_FALSE(describe(*q).ok());
}

}  // namespace
// Found by the attack review: effects the first version did not describe.
TEST(Review, RenameCollectionIsADropOfTheSourceAndAnInsertIntoTheTarget) {
  EXPECT_EQ(accessesOf(R"({"renameCollection": "app.scratch", "to": "app.items", "dropTarget": true, "$db": "admin"})"),
            (Accesses{{"renameCollection", "admin", "app.scratch"},
                      {"renameCollection", "app", "scratch"},
                      {"drop", "app", "scratch"},
                      {"renameCollection", "app", "items"},
                      {"insert", "app", "items"},
                      {"drop", "app", "items"}}));
  expectRefused(R"({"renameCollection": "app.scratch", "$db": "admin"})");
  expectRefused(R"({"renameCollection": "app.scratch", "to": "items", "$db": "admin"})");
}

TEST(Review, AliasesAndDestructiveSideEffects) {
  EXPECT_EQ(accessesOf(R"({"deleteIndexes": "items", "index": "*", "$db": "app"})"),
            (Accesses{{"deleteIndexes", "app", "items"}, {"dropIndexes", "app", "items"}}));
  EXPECT_EQ(accessesOf(R"({"convertToCapped": "items", "size": 4096, "$db": "app"})"),
            (Accesses{{"convertToCapped", "app", "items"}, {"delete", "app", "items"}}));
  EXPECT_EQ(
      accessesOf(R"({"cloneCollectionAsCapped": "secrets", "toCollection": "copy", "size": 1, "$db": "app"})"),
      (Accesses{{"cloneCollectionAsCapped", "app", "secrets"}, {"find", "app", "secrets"}, {"insert", "app", "copy"}}));
  EXPECT_EQ(accessesOf(R"({"createIndexes": "items", "indexes": [{"key": {"t": 1}, "name": "t",
                          "expireAfterSeconds": 0}], "$db": "app"})"),
            (Accesses{{"createIndexes", "app", "items"}, {"delete", "app", "items"}}));
  EXPECT_EQ(accessesOf(R"({"createIndexes": "items", "indexes": [{"key": {"t": 1}, "name": "t"}], "$db": "app"})"),
            (Accesses{{"createIndexes", "app", "items"}}));
}

TEST(Review, ADuplicateKeyAnywhereIsRefused) {
  // The server's $lookup obeys the last "from"; atlasgate would have read the first.
  expectRefused(R"({"aggregate": "public", "pipeline": [{"$lookup": {"from": "public", "from": "secrets",
                   "localField": "a", "foreignField": "b", "as": "x"}}], "cursor": {}, "$db": "app"})");
  expectRefused(R"({"find": "c", "filter": {"a": 1, "a": 2}, "$db": "app"})");
  EXPECT_EQ(accessesOf(R"({"find": "c", "filter": {"$or": [{"a": 1}, {"a": 2}]}, "$db": "app"})"),
            (Accesses{{"find", "app", "c"}}));
}

TEST(Review, ACommandTouchingTooManyNamespacesIsRefused) {
  std::string stages;
  for (int i = 0; i < 1001; ++i) stages += fmt::format(R"(, {{"$unionWith": {{"coll": "c{}"}}}})", i);
  expectRefused(R"({"aggregate": 1, "pipeline": [{"$documents": []})" + stages + R"(], "cursor": {}, "$db": "app"})");
  std::string fewer;
  for (int i = 0; i < 100; ++i) fewer += fmt::format(R"(, {{"$unionWith": {{"coll": "c{}"}}}})", i);
  EXPECT_EQ(
      accessesOf(R"({"aggregate": 1, "pipeline": [{"$documents": []})" + fewer + R"(], "cursor": {}, "$db": "app"})")
          .size(),
      101u);
}

}  // namespace atlasgate::mongo
