#pragma once
// `when:` conditions on the JSON request body.
//
// A condition names an RFC 6901 JSON Pointer ("" is the whole document;
// "~1" is '/', "~0" is '~'; array elements by decimal index without leading
// zeros, "-" never resolves) and one test:
//
//   equals   the value is equal to the listed JSON value; equality is typed
//            (the string "40" is not the number 40) but numbers compare by
//            value (40 equals 40.0), objects ignore member order
//   in       the value equals one of the listed values
//   not_in   the pointer resolves and the value equals none of the listed
//            values. When it does not resolve, not_in does NOT hold: an
//            absent field is "unknown", not "something else". To catch
//            absence, add a rule with `exists: false`.
//   matches  the value is a string and the whole string matches the
//            ECMAScript regex (compiled once, at load)
//   exists   whether the pointer resolves (true/false)
//
// Wildcards. A pointer token "*" applied to an ARRAY means "any element"
// (applied to an object it is the literal key "*", as RFC 6901 says; no
// array index is "*", so no pointer changes meaning). `/*/cidrBlock` on
// `[{"cidrBlock":"10.0.0.0/24"},{"cidrBlock":"0.0.0.0/0"}]` resolves to both
// strings; `/*/a/*/b` to every b of every element of every a. A condition
// whose pointer has a wildcard is existential: it holds when its test holds
// for at least one resolved value - equals, in, matches, exists: true; not_in
// when at least one resolved value is in none of the listed values;
// exists: false when nothing resolves. When nothing resolves, it is what it
// is for any pointer that does not resolve. It is True as soon as one value
// passes (no further value is looked at), Unknown when no value passes and a
// regex could not be evaluated on one. Cost: each node of the document is
// reached at most once per pointer token, so a condition costs O(document
// size x pointer length) at worst, with no allocation per value; the body is
// size-capped before it is parsed.
//
// Three kinds of body:
//   none       (absent, empty or whitespace only): nothing resolves, so only
//              `exists: false` holds;
//   a JSON document;
//   unreadable (not JSON, not UTF-8, nested deeper than 64, larger than the
//              cap): every condition is Unknown. The policy decides what
//              Unknown means (see policy.h); it never counts as holding.
// Duplicate object keys keep the last value, as Jackson (Atlas) does.

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <boost/json/value.hpp>

#include "common/result.h"
#include "config/config.h"

namespace atlasgate::policy {

enum class Truth { False, True, Unknown };

class JsonPointer {
 public:
  static Result<JsonPointer> parse(std::string_view text);

  // The one value the pointer names, or nullptr. A wildcard token is read
  // as a plain token here (an object's key "*"; never an array element).
  const boost::json::value* resolve(const boost::json::value& root) const;

  // Calls visit(value) for each value the pointer names, wildcards expanded
  // in document order, until visit returns false. Returns false when it was
  // stopped that way. Without a wildcard: at most once, with resolve()'s value.
  template <class Visit>
  bool forEach(const boost::json::value& root, Visit&& visit) const {
    return walk(root, 0, visit);
  }

  bool hasWildcard() const { return hasWildcard_; }
  const std::string& text() const { return text_; }

 private:
  template <class Visit>
  bool walk(const boost::json::value& at, std::size_t k, Visit& visit) const;
  const boost::json::value* step(const boost::json::value& at, const std::string& token) const;

  std::string text_;
  std::vector<std::string> tokens_;
  bool hasWildcard_ = false;
};

// Recursion depth is bounded by the document's depth (64, see LazyBody):
// each level descends one level into the document.
template <class Visit>
bool JsonPointer::walk(const boost::json::value& at, std::size_t k, Visit& visit) const {
  const boost::json::value* here = &at;
  for (; k < tokens_.size(); ++k) {
    if (tokens_[k] == "*" && here->is_array()) {
      for (const boost::json::value& element : here->get_array()) {
        if (!walk(element, k + 1, visit)) return false;
      }
      return true;
    }
    here = step(*here, tokens_[k]);
    if (here == nullptr) return true;
  }
  return visit(*here);
}

// The key a condition's test is written under: "equals", "in", "not_in",
// "matches", "exists".
std::string_view opName(config::CondOp op);

// Typed JSON equality (numbers by value, objects regardless of order).
bool jsonEqual(const boost::json::value& a, const boost::json::value& b);

// The request body, parsed at most once and only when first needed.
class LazyBody {
 public:
  LazyBody(std::optional<std::string_view> body, std::size_t maxBytes);

  enum class State { None, Document, Unreadable };
  State state();
  const boost::json::value& document();  // state() == Document
  const std::string& unreadableReason() const { return reason_; }

 private:
  void parse();

  std::optional<std::string_view> raw_;
  std::size_t maxBytes_;
  bool parsed_ = false;
  State state_ = State::None;
  boost::json::value doc_;
  std::string reason_;
};

class CompiledCondition {
 public:
  static Result<CompiledCondition> compile(const config::Condition& c);

  Truth evaluate(LazyBody& body) const;
  Truth evaluate(const boost::json::value* doc) const;  // nullptr: no body

  // "/providerSettings/instanceSizeName in ["M40","M50"]"
  std::string describe() const;

 private:
  struct Regex;  // boost::regex, kept out of this header

  Truth test(const boost::json::value* v) const;

  config::CondOp op_ = config::CondOp::Exists;
  JsonPointer pointer_;
  std::vector<boost::json::value> values_;
  std::string regexText_;
  std::shared_ptr<const Regex> regex_;  // immutable once compiled: sharing is safe
  bool exists_ = true;
};

}  // namespace atlasgate::policy
