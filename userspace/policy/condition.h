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

  const boost::json::value* resolve(const boost::json::value& root) const;
  const std::string& text() const { return text_; }

 private:
  std::string text_;
  std::vector<std::string> tokens_;
};

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

  config::CondOp op_ = config::CondOp::Exists;
  JsonPointer pointer_;
  std::vector<boost::json::value> values_;
  std::string regexText_;
  std::shared_ptr<const Regex> regex_;  // immutable once compiled: sharing is safe
  bool exists_ = true;
};

}  // namespace atlasgate::policy
