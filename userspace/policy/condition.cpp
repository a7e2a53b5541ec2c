#include "policy/condition.h"

#include <exception>

#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <boost/regex.hpp>

namespace atlasgate::policy {

namespace {

constexpr unsigned kMaxJsonDepth = 64;

bool isWhitespaceOnly(std::string_view s) {
  for (char c : s) {
    if (c != ' ' && c != '\t' && c != '\r' && c != '\n') return false;
  }
  return true;
}

bool isArrayIndex(std::string_view t) {
  if (t.empty() || t.size() > 19) return false;  // 19 digits always fit std::uint64_t
  if (t.size() > 1 && t.front() == '0') return false;
  for (char c : t) {
    if (c < '0' || c > '9') return false;
  }
  return true;
}

bool isNumber(const boost::json::value& v) { return v.is_int64() || v.is_uint64() || v.is_double(); }

long double asLongDouble(const boost::json::value& v) {
  // long double on x86-64 has a 64-bit mantissa: exact for every int64,
  // uint64 and double, so mixed comparisons are exact too.
  if (v.is_int64()) return static_cast<long double>(v.get_int64());
  if (v.is_uint64()) return static_cast<long double>(v.get_uint64());
  return static_cast<long double>(v.get_double());
}

}  // namespace

std::string_view opName(config::CondOp op) {
  switch (op) {
    case config::CondOp::Equals: return "equals";
    case config::CondOp::In: return "in";
    case config::CondOp::NotIn: return "not_in";
    case config::CondOp::Matches: return "matches";
    case config::CondOp::Exists: return "exists";
  }
  return "?";
}

// ---- JsonPointer ------------------------------------------------------------

Result<JsonPointer> JsonPointer::parse(std::string_view text) {
  JsonPointer p;
  p.text_ = std::string(text);
  if (text.empty()) return p;
  if (text.front() != '/') return makeError("JSON pointer \"{}\" must be empty or start with '/'", text);
  std::size_t pos = 1;
  while (true) {
    std::size_t end = text.find('/', pos);
    std::string_view raw = text.substr(pos, end == std::string_view::npos ? std::string_view::npos : end - pos);
    std::string token;
    for (std::size_t i = 0; i < raw.size(); ++i) {
      if (raw[i] != '~') {
        token.push_back(raw[i]);
        continue;
      }
      if (i + 1 < raw.size() && raw[i + 1] == '0') {
        token.push_back('~');
      } else if (i + 1 < raw.size() && raw[i + 1] == '1') {
        token.push_back('/');
      } else {
        return makeError("JSON pointer \"{}\": '~' must be followed by 0 or 1", text);
      }
      ++i;
    }
    if (token == "*") p.hasWildcard_ = true;
    p.tokens_.push_back(std::move(token));
    if (end == std::string_view::npos) break;
    pos = end + 1;
  }
  return p;
}

// One token, read plainly: an object's member, an array's element by index.
const boost::json::value* JsonPointer::step(const boost::json::value& at, const std::string& token) const {
  if (const auto* obj = at.if_object()) {
    auto it = obj->find(token);
    return it == obj->end() ? nullptr : &it->value();
  }
  if (const auto* arr = at.if_array()) {
    if (!isArrayIndex(token)) return nullptr;
    std::uint64_t index = std::stoull(token);
    return index >= arr->size() ? nullptr : &(*arr)[index];
  }
  return nullptr;
}

const boost::json::value* JsonPointer::resolve(const boost::json::value& root) const {
  const boost::json::value* at = &root;
  for (const auto& token : tokens_) {
    at = step(*at, token);
    if (at == nullptr) return nullptr;
  }
  return at;
}

// ---- equality ---------------------------------------------------------------

bool jsonEqual(const boost::json::value& a, const boost::json::value& b) {
  if (isNumber(a) && isNumber(b)) return asLongDouble(a) == asLongDouble(b);
  if (a.kind() != b.kind()) return false;
  switch (a.kind()) {
    case boost::json::kind::null: return true;
    case boost::json::kind::bool_: return a.get_bool() == b.get_bool();
    case boost::json::kind::string: return a.get_string() == b.get_string();
    case boost::json::kind::array: {
      const auto& x = a.get_array();
      const auto& y = b.get_array();
      if (x.size() != y.size()) return false;
      for (std::size_t i = 0; i < x.size(); ++i) {
        if (!jsonEqual(x[i], y[i])) return false;
      }
      return true;
    }
    case boost::json::kind::object: {
      const auto& x = a.get_object();
      const auto& y = b.get_object();
      if (x.size() != y.size()) return false;
      for (const auto& member : x) {
        auto it = y.find(member.key());
        if (it == y.end() || !jsonEqual(member.value(), it->value())) return false;
      }
      return true;
    }
    default: return false;  // numbers handled above
  }
}

// ---- LazyBody ---------------------------------------------------------------

LazyBody::LazyBody(std::optional<std::string_view> body, std::size_t maxBytes) : raw_(body), maxBytes_(maxBytes) {}

void LazyBody::parse() {
  parsed_ = true;
  if (!raw_ || isWhitespaceOnly(*raw_)) {
    state_ = State::None;
    return;
  }
  if (raw_->size() > maxBytes_) {
    state_ = State::Unreadable;
    reason_ = "the body is larger than " + std::to_string(maxBytes_) + " bytes";
    return;
  }
  boost::json::parse_options opts;
  opts.max_depth = kMaxJsonDepth;
  boost::system::error_code ec;
  doc_ = boost::json::parse(*raw_, ec, {}, opts);
  if (ec) {
    state_ = State::Unreadable;
    reason_ = "the body is not valid JSON (" + ec.message() + ")";
    doc_ = nullptr;
    return;
  }
  state_ = State::Document;
}

LazyBody::State LazyBody::state() {
  if (!parsed_) parse();
  return state_;
}

const boost::json::value& LazyBody::document() {
  if (!parsed_) parse();
  return doc_;
}

// ---- CompiledCondition ------------------------------------------------------

struct CompiledCondition::Regex {
  boost::regex re;
};

Result<CompiledCondition> CompiledCondition::compile(const config::Condition& c) {
  CompiledCondition out;
  out.op_ = c.op;
  out.exists_ = c.exists;
  auto pointer = JsonPointer::parse(c.pointer);
  if (!pointer) return pointer.error();
  out.pointer_ = std::move(pointer.value());

  switch (c.op) {
    case config::CondOp::Equals:
      if (c.jsonValues.size() != 1) return makeError("equals takes exactly one value, got {}", c.jsonValues.size());
      break;
    case config::CondOp::In:
    case config::CondOp::NotIn:
      if (c.jsonValues.empty()) return makeError("{} needs at least one value", opName(c.op));
      break;
    case config::CondOp::Matches:
      if (c.regex.empty()) return makeError("matches needs a regular expression");
      break;
    case config::CondOp::Exists: break;
  }
  if (c.op == config::CondOp::Equals || c.op == config::CondOp::In || c.op == config::CondOp::NotIn) {
    for (const auto& text : c.jsonValues) {
      boost::system::error_code ec;
      boost::json::value v = boost::json::parse(text, ec);
      if (ec) return makeError("condition value {} is not JSON: {}", text, ec.message());
      out.values_.push_back(std::move(v));
    }
  }
  if (c.op == config::CondOp::Matches) {
    try {
      auto r = std::make_shared<Regex>();
      r->re.assign(c.regex, boost::regex::ECMAScript);
      out.regex_ = std::move(r);
      out.regexText_ = c.regex;
    } catch (const std::exception& e) {
      return makeError("regular expression \"{}\" does not compile: {}", c.regex, e.what());
    }
  }
  return out;
}

Truth CompiledCondition::evaluate(LazyBody& body) const {
  switch (body.state()) {
    case LazyBody::State::None: return evaluate(nullptr);
    case LazyBody::State::Document: return evaluate(&body.document());
    case LazyBody::State::Unreadable: return Truth::Unknown;
  }
  return Truth::Unknown;
}

Truth CompiledCondition::evaluate(const boost::json::value* doc) const {
  if (doc == nullptr || !pointer_.hasWildcard()) return test(doc ? pointer_.resolve(*doc) : nullptr);
  // Existential (condition.h): True at the first value that passes.
  bool resolved = false;
  Truth result = Truth::False;
  pointer_.forEach(*doc, [&](const boost::json::value& v) {
    resolved = true;
    const Truth t = test(&v);
    if (t == Truth::Unknown) result = Truth::Unknown;
    if (t != Truth::True) return true;
    result = Truth::True;
    return false;
  });
  return resolved ? result : test(nullptr);
}

// The test on one resolved value (nullptr: the pointer does not resolve).
Truth CompiledCondition::test(const boost::json::value* v) const {
  auto listed = [&] {
    for (const auto& candidate : values_) {
      if (jsonEqual(*v, candidate)) return true;
    }
    return false;
  };
  auto truth = [](bool b) { return b ? Truth::True : Truth::False; };
  switch (op_) {
    case config::CondOp::Exists: return truth((v != nullptr) == exists_);
    case config::CondOp::Equals:
    case config::CondOp::In: return truth(v != nullptr && listed());
    case config::CondOp::NotIn: return truth(v != nullptr && !listed());
    case config::CondOp::Matches: {
      if (v == nullptr || !v->is_string()) return Truth::False;
      const auto& s = v->get_string();
      try {
        // Boost.Regex matches without recursion and throws, rather than
        // overflowing the stack, on pathological patterns or inputs.
        return truth(boost::regex_match(s.begin(), s.end(), regex_->re));
      } catch (const std::exception&) {
        return Truth::Unknown;
      }
    }
  }
  return Truth::Unknown;
}

std::string CompiledCondition::describe() const {
  std::string out = pointer_.text().empty() ? std::string("\"\"") : pointer_.text();
  out += ' ';
  out += opName(op_);
  switch (op_) {
    case config::CondOp::Exists: out += exists_ ? ": true" : ": false"; break;
    case config::CondOp::Matches: out += " /" + regexText_ + "/"; break;
    case config::CondOp::Equals: out += ' ' + boost::json::serialize(values_.front()); break;
    case config::CondOp::In:
    case config::CondOp::NotIn: {
      out += " [";
      for (std::size_t i = 0; i < values_.size(); ++i) {
        if (i) out += ", ";
        out += boost::json::serialize(values_[i]);
      }
      out += ']';
      break;
    }
  }
  return out;
}

}  // namespace atlasgate::policy
