#include "labels/labels.h"

#include <algorithm>
#include <set>

namespace atlasgate::labels {

namespace {

bool isAlnum(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'); }

// A label name or value: up to 63 of [A-Za-z0-9-_.], alphanumeric at both ends.
bool validName(std::string_view s) {
  if (s.empty() || s.size() > 63) return false;
  if (!isAlnum(s.front()) || !isAlnum(s.back())) return false;
  return std::all_of(s.begin(), s.end(), [](char c) { return isAlnum(c) || c == '-' || c == '_' || c == '.'; });
}

// RFC 1123 subdomain: lower-case labels of [a-z0-9-] separated by dots, up to 253.
bool validSubdomain(std::string_view s) {
  if (s.empty() || s.size() > 253) return false;
  size_t start = 0;
  while (start <= s.size()) {
    size_t dot = s.find('.', start);
    std::string_view label = s.substr(start, dot == std::string_view::npos ? std::string_view::npos : dot - start);
    if (label.empty() || label.size() > 63) return false;
    for (char c : label)
      if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-')) return false;
    if (label.front() == '-' || label.back() == '-') return false;
    if (dot == std::string_view::npos) break;
    start = dot + 1;
  }
  return true;
}

bool validKey(std::string_view k) {
  size_t slash = k.find('/');
  if (slash == std::string_view::npos) return validName(k);
  return validSubdomain(k.substr(0, slash)) && validName(k.substr(slash + 1));
}

bool validValue(std::string_view v) { return v.empty() || validName(v); }

// A hand-written scanner for the selector grammar; `fail` carries position.
class SelectorParser {
 public:
  explicit SelectorParser(std::string_view text) : s_(text) {}

  Result<std::vector<LabelRequirement>> run() {
    std::vector<LabelRequirement> out;
    skipSpace();
    if (atEnd()) return out;
    for (;;) {
      auto r = requirement();
      if (!r) return r.error();
      out.push_back(std::move(*r));
      skipSpace();
      if (atEnd()) break;
      if (s_[pos_] != ',') return fail("expected ',' between requirements");
      ++pos_;
      skipSpace();
      if (atEnd()) return fail("a selector cannot end with ','");
    }
    return out;
  }

 private:
  bool atEnd() const { return pos_ >= s_.size(); }
  void skipSpace() {
    while (!atEnd() && (s_[pos_] == ' ' || s_[pos_] == '\t')) ++pos_;
  }
  static bool wordChar(char c) { return isAlnum(c) || c == '-' || c == '_' || c == '.' || c == '/'; }
  std::string_view word() {
    size_t start = pos_;
    while (!atEnd() && wordChar(s_[pos_])) ++pos_;
    return s_.substr(start, pos_ - start);
  }
  Error fail(std::string_view what) const {
    return makeError("label selector {:?}: {} at offset {}", std::string(s_), what, pos_);
  }
  bool consume(std::string_view tok) {
    if (s_.substr(pos_, tok.size()) != tok) return false;
    pos_ += tok.size();
    return true;
  }

  Result<LabelRequirement> requirement() {
    LabelRequirement r;
    if (consume("!")) {
      skipSpace();
      r.key = word();
      if (!validKey(r.key)) return fail(fmt::format("invalid label key {:?}", r.key));
      r.op = LabelRequirement::Op::NotExists;
      return r;
    }
    r.key = word();
    if (r.key.empty()) return fail("expected a label key");
    if (!validKey(r.key)) return fail(fmt::format("invalid label key {:?}", r.key));
    skipSpace();
    if (atEnd() || s_[pos_] == ',') {
      r.op = LabelRequirement::Op::Exists;
      return r;
    }
    if (consume("!=")) {
      r.op = LabelRequirement::Op::NotEquals;
    } else if (consume("==") || consume("=")) {
      r.op = LabelRequirement::Op::Equals;
    } else if (s_[pos_] == '>' || s_[pos_] == '<') {
      return fail("the > and < operators are not supported");
    } else {
      size_t save = pos_;
      std::string_view op = word();
      if (op == "in")
        r.op = LabelRequirement::Op::In;
      else if (op == "notin")
        r.op = LabelRequirement::Op::NotIn;
      else {
        pos_ = save;
        return fail(fmt::format("expected =, ==, !=, in or notin after {:?}", r.key));
      }
      skipSpace();
      if (!consume("(")) return fail(fmt::format("expected '(' after {:?}", op));
      std::set<std::string> values;
      for (;;) {
        skipSpace();
        std::string_view v = word();
        if (v.empty()) return fail("expected a value in the list");
        if (!validValue(v) || v.find('/') != std::string_view::npos)
          return fail(fmt::format("invalid label value {:?}", v));
        values.emplace(v);
        skipSpace();
        if (consume(")")) break;
        if (!consume(",")) return fail("expected ',' or ')' in a value list");
      }
      r.values.assign(values.begin(), values.end());
      return r;
    }
    skipSpace();
    std::string_view v = word();
    if (!validValue(v) || v.find('/') != std::string_view::npos)
      return fail(fmt::format("invalid label value {:?}", v));
    r.values.emplace_back(v);
    return r;
  }

  std::string_view s_;
  size_t pos_ = 0;
};

}  // namespace

// --- selectors ---------------------------------------------------------------

Result<LabelSelector> LabelSelector::parse(std::string_view text) {
  auto reqs = SelectorParser(text).run();
  if (!reqs) return reqs.error();
  LabelSelector s;
  s.reqs_ = std::move(*reqs);
  return s;
}

bool LabelSelector::matches(const Labels& labels) const {
  for (const LabelRequirement& r : reqs_) {
    auto it = labels.find(r.key);
    const bool has = it != labels.end();
    auto in = [&] { return has && std::find(r.values.begin(), r.values.end(), it->second) != r.values.end(); };
    bool ok = false;
    switch (r.op) {
      case LabelRequirement::Op::Exists: ok = has; break;
      case LabelRequirement::Op::NotExists: ok = !has; break;
      case LabelRequirement::Op::Equals: ok = has && it->second == r.values.front(); break;
      case LabelRequirement::Op::NotEquals: ok = !has || it->second != r.values.front(); break;
      case LabelRequirement::Op::In: ok = in(); break;
      case LabelRequirement::Op::NotIn: ok = !in(); break;
    }
    if (!ok) return false;
  }
  return true;
}

std::string LabelSelector::str() const {
  std::string out;
  for (const LabelRequirement& r : reqs_) {
    if (!out.empty()) out += ',';
    auto list = [&] {
      std::string l = "(";
      for (size_t i = 0; i < r.values.size(); ++i) l += (i ? "," : "") + r.values[i];
      return l + ")";
    };
    switch (r.op) {
      case LabelRequirement::Op::Exists: out += r.key; break;
      case LabelRequirement::Op::NotExists: out += "!" + r.key; break;
      case LabelRequirement::Op::Equals: out += r.key + "=" + r.values.front(); break;
      case LabelRequirement::Op::NotEquals: out += r.key + "!=" + r.values.front(); break;
      case LabelRequirement::Op::In: out += r.key + " in " + list(); break;
      case LabelRequirement::Op::NotIn: out += r.key + " notin " + list(); break;
    }
  }
  return out;
}

// --- the container engines' label filter -------------------------------------

Result<LabelSelector> parseContainerLabelFilter(std::string_view text) {
  auto sel = LabelSelector::parse(text);
  if (!sel) return sel.error();
  const auto& reqs = sel->requirements();
  if (reqs.size() != 1 ||
      (reqs.front().op != LabelRequirement::Op::Equals && reqs.front().op != LabelRequirement::Op::Exists))
    return makeError("container label filter {:?}: expected key or key=value", std::string(text));
  return sel;
}

}  // namespace atlasgate::labels
