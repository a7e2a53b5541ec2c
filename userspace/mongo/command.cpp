#include "mongo/command.h"

#include <algorithm>
#include <optional>
#include <set>
#include <string_view>

namespace atlasgate::mongo {

namespace {

using namespace std::string_view_literals;

constexpr int kMaxDepth = 64;
// More distinct accesses than this and the command is refused: describing
// (and checking) it must stay cheap on the event loop.
constexpr std::size_t kMaxAccesses = 1000;

// The accesses found so far, deduplicated in the order found.
struct Found {
  std::vector<Access> accesses;
  std::set<std::tuple<std::string, std::string, std::string>> seen;
  bool overflow = false;
  void add(std::string_view command, std::string_view db, std::string_view coll) {
    if (!seen.emplace(std::string(command), std::string(db), std::string(coll)).second) return;
    if (accesses.size() >= kMaxAccesses) {
      overflow = true;
      return;
    }
    accesses.push_back(Access{std::string(command), std::string(db), std::string(coll)});
  }
};

// A document anywhere in the command with a key twice: which one the server
// obeys (a $lookup's last "from", the body's first "$db") is not atlasgate's
// guess, so such a command is refused whole.
bool duplicateKeysDeep(ByteView doc, bool isArray, int depth) {
  bson_t b;
  bson_iter_t it;
  if (depth > 200 || !initView(&b, doc) || !bson_iter_init(&it, &b)) return true;
  std::vector<std::string_view> keys;
  while (bson_iter_next(&it)) {
    if (!isArray) keys.emplace_back(bson_iter_key(&it), bson_iter_key_len(&it));
    if (!BSON_ITER_HOLDS_DOCUMENT(&it) && !BSON_ITER_HOLDS_ARRAY(&it)) continue;
    std::uint32_t len = 0;
    const std::uint8_t* data = nullptr;
    if (BSON_ITER_HOLDS_ARRAY(&it))
      bson_iter_array(&it, &len, &data);
    else
      bson_iter_document(&it, &len, &data);
    if (duplicateKeysDeep(ByteView(data, len), BSON_ITER_HOLDS_ARRAY(&it), depth + 1)) return true;
  }
  std::sort(keys.begin(), keys.end());
  return std::adjacent_find(keys.begin(), keys.end()) != keys.end();
}

bool validDatabase(std::string_view db) {
  if (db.empty() || db.size() > 64) return false;
  return db.find_first_of("/\\. \"$"sv) == std::string_view::npos && db.find('\0') == std::string_view::npos;
}

Result<void> checkDatabase(std::string_view db, std::string_view what) {
  if (!validDatabase(db)) return makeError("{} is not a valid database name", what);
  return {};
}

std::string_view iterString(const bson_iter_t* it) {
  std::uint32_t len = 0;
  const char* s = bson_iter_utf8(it, &len);
  return {s, len};
}

ByteView iterDocument(const bson_iter_t* it) {
  std::uint32_t len = 0;
  const std::uint8_t* data = nullptr;
  if (BSON_ITER_HOLDS_ARRAY(it)) {
    bson_iter_array(it, &len, &data);
  } else {
    bson_iter_document(it, &len, &data);
  }
  return {data, len};
}

bool holdsContainer(const bson_iter_t* it) { return BSON_ITER_HOLDS_DOCUMENT(it) || BSON_ITER_HOLDS_ARRAY(it); }

// The server's trueValue(): a field absent, false, zero or null is false; anything else true.
bool truthy(const DocView& doc, std::string_view key) {
  bson_iter_t it;
  if (!bson_iter_init_find_w_len(&it, doc.get(), key.data(), static_cast<int>(key.size()))) return false;
  return bson_iter_as_bool(&it);
}

bool findIn(const DocView& doc, std::string_view key, bson_iter_t* it) {
  return bson_iter_init_find_w_len(it, doc.get(), key.data(), static_cast<int>(key.size()));
}

// "db.coll": the database valid, the collection not empty.
Result<std::pair<std::string_view, std::string_view>> splitNamespace(std::string_view ns, std::string_view what) {
  std::size_t dot = ns.find('.');
  if (dot == std::string_view::npos || dot + 1 == ns.size())
    return makeError("{} is not a \"db.collection\" namespace", what);
  std::string_view db = ns.substr(0, dot);
  if (auto c = checkDatabase(db, what); !c) return c.error();
  return std::pair{db, ns.substr(dot + 1)};
}

// A target named as a string (a collection in `db`) or as {db?, coll}.
// `collKey` names the collection field of the document form.
Result<void> addTarget(Found& found, std::initializer_list<std::string_view> commands, const bson_iter_t* value,
                       std::string_view db, std::string_view collKey, std::string_view what) {
  std::string_view targetDb = db, coll;
  if (BSON_ITER_HOLDS_UTF8(value)) {
    coll = iterString(value);
  } else if (BSON_ITER_HOLDS_DOCUMENT(value)) {
    DocView spec(iterDocument(value));
    auto c = spec.string(collKey);
    if (!c) return makeError("{} has no string '{}'", what, collKey);
    coll = *c;
    if (spec.has("db")) {
      auto d = spec.string("db");
      if (!d) return makeError("{}'s 'db' is not a string", what);
      if (auto ok = checkDatabase(*d, what); !ok) return ok.error();
      targetDb = *d;
    }
  } else {
    return makeError("{} is neither a collection name nor a document", what);
  }
  if (coll.empty()) return makeError("{} names an empty collection", what);
  for (std::string_view command : commands) found.add(command, targetDb, coll);
  return {};
}

// One aggregation stage (a document in an array whose first key is a stage).
Result<void> stage(Found& found, const bson_iter_t* it, std::string_view db) {
  std::string_view name(bson_iter_key(it), bson_iter_key_len(it));
  if (name == "$out") return addTarget(found, {"insert", "drop"}, it, db, "coll", "$out");
  if (name == "$merge") {
    if (!BSON_ITER_HOLDS_DOCUMENT(it)) return addTarget(found, {"insert", "update"}, it, db, "coll", "$merge");
    bson_iter_t into;
    if (!findIn(DocView(iterDocument(it)), "into", &into)) return makeError("$merge has no 'into'");
    return addTarget(found, {"insert", "update"}, &into, db, "coll", "$merge's 'into'");
  }
  if (name == "$unionWith") {
    if (!BSON_ITER_HOLDS_DOCUMENT(it)) return addTarget(found, {"aggregate"}, it, db, "coll", "$unionWith");
    bson_iter_t coll;
    if (!findIn(DocView(iterDocument(it)), "coll", &coll)) return {};  // a pipeline of $documents only
    if (!BSON_ITER_HOLDS_UTF8(&coll)) return makeError("$unionWith's 'coll' is not a string");
    return addTarget(found, {"aggregate"}, &coll, db, "coll", "$unionWith's 'coll'");
  }
  if (name == "$lookup" || name == "$graphLookup") {
    if (!BSON_ITER_HOLDS_DOCUMENT(it)) return makeError("{} is not a document", name);
    bson_iter_t from;
    if (!findIn(DocView(iterDocument(it)), "from", &from)) return {};  // $lookup over $documents
    return addTarget(found, {"aggregate"}, &from, db, "coll",
                     name == "$lookup" ? "$lookup's 'from'" : "$graphLookup's 'from'");
  }
  return {};
}

// Every stage anywhere below `container` (sub-pipelines of $facet, $lookup,
// $unionWith, and any other place a pipeline nests), at most kMaxDepth deep.
Result<void> scanPipeline(Found& found, ByteView container, bool isArray, std::string_view db, int depth) {
  if (depth > kMaxDepth) return makeError("a pipeline nests deeper than {} levels", kMaxDepth);
  bson_t doc;
  bson_iter_t it;
  if (!initView(&doc, container) || !bson_iter_init(&it, &doc)) return makeError("a pipeline is malformed");
  while (bson_iter_next(&it)) {
    if (!holdsContainer(&it)) continue;
    ByteView child = iterDocument(&it);
    if (isArray && BSON_ITER_HOLDS_DOCUMENT(&it)) {
      bson_t s;
      bson_iter_t first;
      if (initView(&s, child) && bson_iter_init(&first, &s) && bson_iter_next(&first))
        if (auto r = stage(found, &first, db); !r) return r;
    }
    if (auto r = scanPipeline(found, child, BSON_ITER_HOLDS_ARRAY(&it), db, depth + 1); !r) return r;
  }
  return {};
}

Result<void> scanPipelineField(Found& found, const DocView& body, std::string_view db, int depth) {
  bson_iter_t it;
  if (!findIn(body, "pipeline", &it)) return {};
  if (!BSON_ITER_HOLDS_ARRAY(&it)) return makeError("'pipeline' is not an array");
  return scanPipeline(found, iterDocument(&it), true, db, depth + 1);
}

// The command's input: its body, the document sequences (OP_MSG), its database.
struct Input {
  DocView body;
  const std::vector<Sequence>* sequences;
  std::string_view db;
  int depth;
};

// The documents of a list field: the body's array, or the sequence of that name.
Result<std::vector<ByteView>> listOf(const Input& in, std::string_view key) {
  std::vector<ByteView> out;
  for (const Sequence& s : *in.sequences)
    if (s.identifier == key) return s.documents;
  bson_iter_t it;
  if (!findIn(in.body, key, &it)) return out;
  if (!BSON_ITER_HOLDS_ARRAY(&it)) return makeError("'{}' is not an array", key);
  bson_iter_t el;
  if (!bson_iter_recurse(&it, &el)) return makeError("'{}' is malformed", key);
  while (bson_iter_next(&el)) {
    if (!BSON_ITER_HOLDS_DOCUMENT(&el)) return makeError("an element of '{}' is not a document", key);
    out.push_back(iterDocument(&el));
  }
  return out;
}

Result<void> describeBody(Found& found, const Input& in);

// bulkWrite: each op's first key (insert, update, delete) indexes nsInfo.
Result<void> bulkWrite(Found& found, const Input& in) {
  auto nsInfo = listOf(in, "nsInfo");
  if (!nsInfo) return nsInfo.error();
  std::vector<std::pair<std::string_view, std::string_view>> namespaces;
  for (ByteView entry : *nsInfo) {
    auto ns = DocView(entry).string("ns");
    if (!ns) return makeError("bulkWrite: an nsInfo entry has no string 'ns'");
    auto split = splitNamespace(*ns, "bulkWrite: an nsInfo 'ns'");
    if (!split) return split.error();
    namespaces.push_back(*split);
  }
  auto ops = listOf(in, "ops");
  if (!ops) return ops.error();
  for (ByteView op : *ops) {
    DocView v(op);
    std::string_view kind = v.firstKey();
    if (kind != "insert" && kind != "update" && kind != "delete")
      return makeError("bulkWrite: an op is not insert, update or delete");
    auto index = v.integer(kind);
    if (!index || *index < 0 || static_cast<std::uint64_t>(*index) >= namespaces.size())
      return makeError("bulkWrite: an op's nsInfo index is not an integer in range");
    const auto& [db, coll] = namespaces[static_cast<std::size_t>(*index)];
    found.add(kind, db, coll);
    if (kind == "update" && truthy(v, "upsert")) found.add("insert", db, coll);
  }
  return {};
}

// explain: the inner command, in the same database.
Result<void> explain(Found& found, const Input& in) {
  auto inner = in.body.document("explain");
  if (!inner) return makeError("explain: 'explain' is not a document");
  static const std::vector<Sequence> none;
  return describeBody(found, Input{DocView(*inner), &none, in.db, in.depth + 1});
}

Result<void> findAndModify(Found& found, const Input& in, std::string_view coll) {
  if (truthy(in.body, "remove")) found.add("delete", in.db, coll);
  if (in.body.has("update")) found.add("update", in.db, coll);
  if (truthy(in.body, "upsert")) found.add("insert", in.db, coll);
  return {};
}

Result<void> update(Found& found, const Input& in, std::string_view coll) {
  auto updates = listOf(in, "updates");
  if (!updates) return updates.error();
  for (ByteView u : *updates)
    if (truthy(DocView(u), "upsert")) found.add("insert", in.db, coll);
  return {};
}

// mapReduce's `out`: a collection name, or {replace|merge|reduce: coll, db?}, or {inline: 1}.
Result<void> mapReduce(Found& found, const Input& in) {
  bson_iter_t out;
  if (!findIn(in.body, "out", &out)) return {};
  // A plain name, or replace, replaces the collection (as $out: a drop too).
  if (!BSON_ITER_HOLDS_DOCUMENT(&out))
    return addTarget(found, {"insert", "drop"}, &out, in.db, "", "mapReduce's 'out'");
  DocView spec(iterDocument(&out));
  if (spec.has("inline")) return {};
  if (spec.has("replace")) return addTarget(found, {"insert", "drop"}, &out, in.db, "replace", "mapReduce's 'out'");
  for (std::string_view mode : {"merge"sv, "reduce"sv})
    if (spec.has(mode)) return addTarget(found, {"insert"}, &out, in.db, mode, "mapReduce's 'out'");
  return makeError("mapReduce's 'out' names no output collection");
}

// applyOps: each op {op, ns, o}; a command op ("c") is described as a command.
Result<void> applyOps(Found& found, const Input& in) {
  auto ops = listOf(in, "applyOps");
  if (!ops) return ops.error();
  for (ByteView entry : *ops) {
    DocView op(entry);
    auto kind = op.string("op");
    if (!kind) return makeError("applyOps: an op has no string 'op'");
    if (*kind == "n") continue;  // a no-op
    auto ns = op.string("ns");
    if (!ns) return makeError("applyOps: an op has no string 'ns'");
    auto split = splitNamespace(*ns, "applyOps: an op's 'ns'");
    if (!split) return split.error();
    const auto& [db, coll] = *split;
    if (*kind == "i" || *kind == "u" || *kind == "d") {
      found.add(*kind == "i" ? "insert" : *kind == "u" ? "update" : "delete", db, coll);
    } else if (*kind == "c") {
      auto o = op.document("o");
      if (!o) return makeError("applyOps: a command op has no document 'o'");
      static const std::vector<Sequence> none;
      if (auto r = describeBody(found, Input{DocView(*o), &none, db, in.depth + 1}); !r) return r;
    } else {
      return makeError("applyOps: an op of an unknown kind");
    }
  }
  return {};
}

// renameCollection (on admin): "db.coll" to "db.coll". The source's name is
// gone (as a drop), the target gets its documents, and with dropTarget an
// existing target is dropped first.
Result<void> renameCollection(Found& found, const Input& in) {
  auto from = in.body.string("renameCollection");
  auto to = in.body.string("to");
  if (!from || !to) return makeError("renameCollection: 'renameCollection' and 'to' must be namespaces");
  auto src = splitNamespace(*from, "renameCollection's source");
  if (!src) return src.error();
  auto dst = splitNamespace(*to, "renameCollection's 'to'");
  if (!dst) return dst.error();
  found.add("renameCollection", src->first, src->second);
  found.add("drop", src->first, src->second);
  found.add("renameCollection", dst->first, dst->second);
  found.add("insert", dst->first, dst->second);
  if (truthy(in.body, "dropTarget")) found.add("drop", dst->first, dst->second);
  return {};
}

// Indexes with expireAfterSeconds delete documents (the TTL monitor).
Result<void> ttlIndexes(Found& found, const Input& in, std::string_view coll) {
  auto indexes = listOf(in, "indexes");
  if (!indexes) return {};  // no list: the server refuses it
  for (ByteView ix : *indexes)
    if (DocView(ix).has("expireAfterSeconds")) found.add("delete", in.db, coll);
  return {};
}

// A view (create or collMod with viewOn) reads its source and its pipeline's.
Result<void> view(Found& found, const Input& in) {
  if (in.body.has("viewOn")) {
    auto on = in.body.string("viewOn");
    if (!on || on->empty()) return makeError("'viewOn' is not a collection name");
    found.add("aggregate", in.db, *on);
  }
  return scanPipelineField(found, in.body, in.db, in.depth);
}

Result<void> hidden(Found& found, const Input& in, std::string_view name, std::string_view coll) {
  if (name == "aggregate") return scanPipelineField(found, in.body, in.db, in.depth);
  if (name == "collMod" && in.body.document("index") && DocView(*in.body.document("index")).has("expireAfterSeconds"))
    found.add("delete", in.db, coll);
  if (name == "create" || name == "collMod") return view(found, in);
  if (name == "renameCollection") return renameCollection(found, in);
  if (name == "deleteIndexes") found.add("dropIndexes", in.db, coll);  // the server's alias
  if (name == "createIndexes") return ttlIndexes(found, in, coll);
  if (name == "convertToCapped") found.add("delete", in.db, coll);  // truncates to its size
  if (name == "cloneCollectionAsCapped") {
    found.add("find", in.db, coll);
    if (auto to = in.body.string("toCollection")) found.add("insert", in.db, *to);
  }
  if (name == "bulkWrite") return bulkWrite(found, in);
  if (name == "explain") return explain(found, in);
  if (name == "findAndModify" || name == "findandmodify") return findAndModify(found, in, coll);
  if (name == "update") return update(found, in, coll);
  if (name == "mapReduce" || name == "mapreduce") return mapReduce(found, in);
  if (name == "applyOps") return applyOps(found, in);
  return {};
}

// The command of `in.body`, then what it hides.
Result<void> describeBody(Found& found, const Input& in) {
  if (in.depth > kMaxDepth) return makeError("a command nests deeper than {} levels", kMaxDepth);
  std::string_view name = in.body.firstKey();
  if (name.empty()) return makeError("an empty command document");
  if (in.body.hasDuplicateKeys()) return makeError("a command document has a top-level key twice");
  std::string_view coll = in.body.string(name).value_or("");
  found.add(name, in.db, coll);
  return hidden(found, in, name, coll);
}

Result<CommandInfo> describeTop(const Input& in) {
  if (duplicateKeysDeep(in.body.bytes(), false, 0)) return makeError("a document of the command has a key twice");
  for (const Sequence& seq : *in.sequences)
    for (ByteView d : seq.documents)
      if (duplicateKeysDeep(d, false, 0)) return makeError("a document of the command has a key twice");
  Found found;
  if (auto r = describeBody(found, in); !r) return r.error();
  if (found.overflow) return makeError("the command touches more than {} namespaces", kMaxAccesses);
  CommandInfo info;
  info.name = std::string(in.body.firstKey());
  info.database = std::string(in.db);
  info.collection = std::string(in.body.string(info.name).value_or(""));
  info.accesses = std::move(found.accesses);
  return info;
}

}  // namespace

Result<CommandInfo> describe(const Msg& msg) {
  DocView body(msg.body);
  if (body.firstKey().empty()) return makeError("an empty command document");
  if (body.hasDuplicateKeys()) return makeError("a command document has a top-level key twice");
  for (std::size_t i = 0; i < msg.sequences.size(); ++i) {
    const std::string& id = msg.sequences[i].identifier;
    if (body.has(id)) return makeError("a document sequence repeats a field of the body");
    for (std::size_t j = 0; j < i; ++j)
      if (msg.sequences[j].identifier == id) return makeError("two document sequences have the same identifier");
  }
  if (!body.has("$db")) return makeError("a command without '$db'");
  auto db = body.string("$db");
  if (!db) return makeError("'$db' is not a string");
  if (auto c = checkDatabase(*db, "'$db'"); !c) return c.error();
  return describeTop(Input{body, &msg.sequences, *db, 0});
}

Result<CommandInfo> describe(const Query& query) {
  constexpr std::string_view kCmd = ".$cmd";
  std::string_view ns = query.fullCollectionName;
  if (ns.size() <= kCmd.size() || ns.substr(ns.size() - kCmd.size()) != kCmd)
    return makeError("OP_QUERY: the namespace does not end in \".$cmd\"");
  std::string_view db = ns.substr(0, ns.size() - kCmd.size());
  if (auto c = checkDatabase(db, "OP_QUERY's database"); !c) return c.error();
  DocView outer(query.query);
  if (outer.hasDuplicateKeys()) return makeError("a command document has a top-level key twice");
  // Legacy drivers wrap the command: {$query: {...}, $readPreference: ...} or
  // {query: {...}}. A wrapper starts with "$" or "query"; a "$query" anywhere
  // else leaves which document the server runs to a guess: refused.
  ByteView command = query.query;
  std::string_view first = outer.firstKey();
  bool wrapped = first == "query" || (!first.empty() && first.front() == '$');
  if (!wrapped && outer.has("$query")) return makeError("OP_QUERY: '$query' after a command name");
  if (wrapped) {
    if (outer.has("$query") == outer.has("query"))
      return makeError("OP_QUERY: a wrapper needs one of '$query', 'query'");
    auto inner = outer.document(outer.has("$query") ? "$query" : "query");
    if (!inner) return makeError("OP_QUERY: the wrapped command is not a document");
    command = *inner;
  }
  DocView body(command);
  if (auto own = body.string("$db"); body.has("$db") && (!own || *own != db))
    return makeError("OP_QUERY: '$db' disagrees with the namespace");
  static const std::vector<Sequence> none;
  return describeTop(Input{body, &none, db, 0});
}

}  // namespace atlasgate::mongo
