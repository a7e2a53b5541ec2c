#pragma once
// Label maps and Kubernetes label selectors: pure, no I/O. Pod discovery
// (discovery/pods.h) matches pods with them, container discovery containers,
// config/ validates them and policy/ matches rules on agents' labels.
//
//   auto sel = labels::LabelSelector::parse("atlasgate.io/inject=true").value();
//   if (sel.matches(pod.labels)) ...

#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace atlasgate::labels {

using Labels = std::map<std::string, std::string>;

// --- selectors -----------------------------------------------------------------

// One requirement of a selector.
struct LabelRequirement {
  enum class Op { Equals, NotEquals, Exists, NotExists, In, NotIn };
  std::string key;
  Op op = Op::Exists;
  std::vector<std::string> values;  // Equals/NotEquals: one; In/NotIn: one or more (sorted, unique)
};

// The Kubernetes label-selector string syntax (the `labelSelector` query
// parameter): requirements separated by commas, all of which must hold:
//   k=v  k==v  k!=v  k  !k  k in (a,b)  k notin (a,b)
// Keys are qualified names ("[prefix/]name", prefix a DNS subdomain, name up
// to 63 of [A-Za-z0-9-_.] starting and ending alphanumeric); values are empty
// or follow the name rule. An empty selector matches everything.
class LabelSelector {
 public:
  static Result<LabelSelector> parse(std::string_view text);

  bool matches(const Labels& labels) const;
  bool empty() const { return reqs_.empty(); }
  const std::vector<LabelRequirement>& requirements() const { return reqs_; }
  // Canonical text, as sent to the API server ("a=b,c in (d,e),!f").
  std::string str() const;

 private:
  std::vector<LabelRequirement> reqs_;
};

// --- the container engines' label filter -------------------------------------

// discovery.containers.label: "key" or "key=value" (Kubernetes label syntax;
// the engines' label filter takes nothing else).
Result<LabelSelector> parseContainerLabelFilter(std::string_view text);

}  // namespace atlasgate::labels
