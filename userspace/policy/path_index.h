#pragma once
// A segment trie over the path patterns of all rules, so that finding the
// rules whose path matches a request does not cost O(rules).
//
// Each pattern is a chain of edges from the root: a literal edge per literal
// segment (keyed lower-case), one shared "one segment" edge for `{name}`/`*`,
// and a "**" edge into a node that may also consume any number of segments
// itself. The rule's index is recorded at the node where its pattern ends.
//
// candidates() walks the trie once, keeping the set of live nodes (an NFA
// simulation; "**" nodes stay live and are entered without consuming):
//   O(segments x live nodes x log(literal branching)) + O(C log C)
// where C is the number of candidate rules returned. Live nodes are bounded by
// the number of distinct "**" prefixes, in practice a handful; for path-only
// rule sets the cost is independent of the number of rules.

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "policy/path.h"

namespace atlasgate::policy {

class PathIndex {
 public:
  PathIndex();

  void add(const std::vector<PatternSegment>& pattern, std::uint32_t ruleIndex);

  // Indices of the rules whose pattern matches, ascending, without duplicates.
  std::vector<std::uint32_t> candidates(const std::vector<std::string>& segments) const;

  std::size_t nodeCount() const { return nodes_.size(); }

 private:
  static constexpr std::uint32_t kNone = UINT32_MAX;

  struct Node {
    std::map<std::string, std::uint32_t, std::less<>> literal;
    std::uint32_t one = kNone;         // child for `{name}` / `*`
    std::uint32_t any = kNone;         // child reached through `**`
    bool isAny = false;                // this node was reached through `**` and may consume segments
    std::vector<std::uint32_t> rules;  // patterns ending here
  };

  std::uint32_t newNode(bool isAny);
  void closeOver(std::vector<std::uint32_t>& live) const;

  std::vector<Node> nodes_;
};

}  // namespace atlasgate::policy
