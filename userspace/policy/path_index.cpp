#include "policy/path_index.h"

#include <algorithm>

namespace atlasgate::policy {

namespace {

void sortUnique(std::vector<std::uint32_t>& v) {
  std::sort(v.begin(), v.end());
  v.erase(std::unique(v.begin(), v.end()), v.end());
}

}  // namespace

PathIndex::PathIndex() { newNode(false); }

std::uint32_t PathIndex::newNode(bool isAny) {
  nodes_.emplace_back();
  nodes_.back().isAny = isAny;
  return static_cast<std::uint32_t>(nodes_.size() - 1);
}

void PathIndex::add(const std::vector<PatternSegment>& pattern, std::uint32_t ruleIndex) {
  using Kind = PatternSegment::Kind;
  std::uint32_t at = 0;
  for (const auto& seg : pattern) {
    std::uint32_t next = kNone;
    switch (seg.kind) {
      case Kind::Literal: {
        auto it = nodes_[at].literal.find(seg.text);
        if (it != nodes_[at].literal.end()) {
          next = it->second;
        } else {
          next = newNode(false);  // may reallocate nodes_: index again below
          nodes_[at].literal.emplace(seg.text, next);
        }
        break;
      }
      case Kind::One:
        next = nodes_[at].one;
        if (next == kNone) {
          next = newNode(false);
          nodes_[at].one = next;
        }
        break;
      case Kind::Any:
        next = nodes_[at].any;
        if (next == kNone) {
          next = newNode(true);
          nodes_[at].any = next;
        }
        break;
    }
    at = next;
  }
  nodes_[at].rules.push_back(ruleIndex);
}

// Adds the "**" children of live nodes (entered without consuming a segment).
void PathIndex::closeOver(std::vector<std::uint32_t>& live) const {
  for (std::size_t i = 0; i < live.size(); ++i) {
    std::uint32_t any = nodes_[live[i]].any;
    if (any != kNone) live.push_back(any);
  }
  sortUnique(live);
}

std::vector<std::uint32_t> PathIndex::candidates(const std::vector<std::string>& segments) const {
  std::vector<std::uint32_t> live{0};
  std::vector<std::uint32_t> next;
  closeOver(live);
  std::string lowered;
  for (const auto& seg : segments) {
    lowered = asciiLower(seg);
    next.clear();
    for (std::uint32_t n : live) {
      const Node& node = nodes_[n];
      if (auto it = node.literal.find(lowered); it != node.literal.end()) next.push_back(it->second);
      if (node.one != kNone) next.push_back(node.one);
      if (node.isAny) next.push_back(n);
    }
    if (next.empty()) return {};
    closeOver(next);
    live.swap(next);
  }
  std::vector<std::uint32_t> out;
  for (std::uint32_t n : live) out.insert(out.end(), nodes_[n].rules.begin(), nodes_[n].rules.end());
  sortUnique(out);
  return out;
}

}  // namespace atlasgate::policy
