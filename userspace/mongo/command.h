#pragma once
// What a MongoDB command does, for the rules (pure). A command is named by
// its body's first key and runs in the database `$db` names (OP_MSG) or the
// namespace says (legacy OP_QUERY on "<db>.$cmd"). Writes hidden inside
// reads are what they do: an aggregate whose pipeline has $out or $merge
// also inserts into (and for $out replaces, i.e. drops) its target; $lookup,
// $graphLookup and $unionWith read other collections; bulkWrite's ops act on
// the namespaces of nsInfo; explain is its inner command; findAndModify
// removes or updates (and upserts insert); update with upsert inserts;
// mapReduce with an output collection inserts; applyOps does its ops. Each
// such effect is one Access; the rules check every Access.

#include <string>
#include <vector>

#include "common/result.h"
#include "mongo/wire.h"

namespace atlasgate::mongo {

struct Access {
  std::string command;  // "find", "insert", "drop", ... (as the rules name them)
  std::string database;
  std::string collection;  // "" for a database-level command
  bool operator==(const Access&) const = default;
};

struct CommandInfo {
  std::string name;        // the body's first key, as sent
  std::string database;    // $db
  std::string collection;  // the first key's value when it is a string; "" otherwise
  // The command itself first ({name, database, collection}), then each
  // effect it hides, deduplicated, in the order found.
  std::vector<Access> accesses;
};

// Refused (an error the session answers with, never forwarded): an empty
// body, a body with a top-level key twice (which one the server would obey
// is not atlasgate's guess), no `$db` or a `$db` that is not a string or not
// a valid database name, a hidden write whose target cannot be read
// (e.g. $out to a non-string, an nsInfo index out of range), nesting deeper
// than 64 levels.
Result<CommandInfo> describe(const Msg& msg);
Result<CommandInfo> describe(const Query& query);

}  // namespace atlasgate::mongo
