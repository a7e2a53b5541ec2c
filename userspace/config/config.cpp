#include "config/config.h"
#include "discovery/containers.h"
#include "discovery/pods.h"

#include <boost/regex.hpp>

#include <arpa/inet.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <initializer_list>
#include <iterator>
#include <map>
#include <regex>
#include <set>
#include <utility>

namespace atlasgate::config {

std::string_view actionName(Action a) {
  switch (a) {
    case Action::Allow:
      return "allow";
    case Action::Block:
      return "block";
    case Action::RateLimit:
      return "rate_limit";
    case Action::Approve:
      return "approve";
    case Action::LogOnly:
      return "log_only";
  }
  return "unknown";
}

std::string Credential::describe() const {
  if (serviceAccount) return "service_account:" + serviceAccount->clientId;
  if (apiKey) return "api_key:" + apiKey->publicKey;
  return "none";
}

namespace {

using Names = std::initializer_list<std::string_view>;

// Loading is a long run of checks, any of which ends it with one message. An
// exception keeps every check to one line; it never leaves this file, because
// parseConfig turns it into an Error (the control-plane regime).
struct ParseFailure {
  std::string message;
};

// Durations beyond a year are typos, and keeping them small means adding one
// to a steady_clock time point can never overflow.
constexpr std::uint64_t kMaxDurationSeconds = 365ull * 24 * 3600;
constexpr std::uint64_t kMaxRateCount = 1'000'000'000;

constexpr auto kHttpMethods =
    std::to_array<std::string_view>({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"});

std::string toLower(std::string_view s) {
  std::string out(s);
  for (char& ch : out) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return out;
}

std::string toUpper(std::string_view s) {
  std::string out(s);
  for (char& ch : out) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
  return out;
}

std::string trim(std::string_view s) {
  const auto first = s.find_first_not_of(" \t");
  if (first == std::string_view::npos) return {};
  const auto last = s.find_last_not_of(" \t");
  return std::string(s.substr(first, last - first + 1));
}

template <class Range>
bool contains(const Range& names, std::string_view name) {
  return std::find(names.begin(), names.end(), name) != names.end();
}

template <class Range>
std::string joinNames(const Range& names) {
  std::string out;
  for (std::string_view n : names) {
    if (!out.empty()) out += ", ";
    out += n;
  }
  return out;
}

std::size_t editDistance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diagonal = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

// " (did you mean "x"?)" when one of the options is a near miss, else "".
// Case and '-' for '_' do not count as differences.
template <class Range>
std::string didYouMean(std::string_view word, const Range& options) {
  std::string normalised = toLower(word);
  std::replace(normalised.begin(), normalised.end(), '-', '_');
  std::size_t best = normalised.size() <= 4 ? 2 : 3;  // accept distance < best
  std::string_view choice;
  for (std::string_view option : options) {
    const std::size_t d = editDistance(normalised, toLower(option));
    if (d < best) {
      best = d;
      choice = option;
    }
  }
  return choice.empty() ? std::string() : fmt::format(" (did you mean \"{}\"?)", choice);
}

std::string_view typeName(const YAML::Node& n) {
  switch (n.Type()) {
    case YAML::NodeType::Null:
      return "nothing";
    case YAML::NodeType::Scalar:
      return "a scalar";
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Map:
      return "a map";
    case YAML::NodeType::Undefined:
      break;
  }
  return "nothing";
}

// A value as quoted in a message: the scalar escaped onto one line, or its
// type. Never used on secret values.
std::string shown(const YAML::Node& n) {
  return n.IsScalar() ? fmt::format("{:?}", n.Scalar()) : std::string(typeName(n));
}

// The path of a mapping as a message names it.
std::string_view where(const std::string& path) {
  return path.empty() ? std::string_view("top level") : std::string_view(path);
}

std::string childPath(const std::string& parent, std::string_view key) {
  return parent.empty() ? std::string(key) : fmt::format("{}.{}", parent, key);
}

bool isIdentifierChar(char ch) {
  return std::isalnum(static_cast<unsigned char>(ch)) || ch == '_';
}

bool isIdentifier(std::string_view s) {
  return !s.empty() && !std::isdigit(static_cast<unsigned char>(s[0])) &&
         std::all_of(s.begin(), s.end(), isIdentifierChar);
}

// Rule and credential names appear in logs, audit records and CLI commands.
bool isName(std::string_view s) {
  return !s.empty() &&
         std::all_of(s.begin(), s.end(), [](char ch) { return isIdentifierChar(ch) || ch == '-' || ch == '.'; });
}

bool isDecimal(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char ch) { return ch >= '0' && ch <= '9'; });
}

template <class T>
std::optional<T> parseUnsigned(std::string_view s, int base = 10) {
  T v{};
  if (s.empty() || s[0] == '+' || s[0] == '-') return std::nullopt;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v, base);
  if (ec != std::errc() || end != s.data() + s.size()) return std::nullopt;
  return v;
}

// RFC 1123 host name: dot-separated labels of letters, digits and '-', not
// starting or ending with '-'. Expects lower case, no trailing dot.
bool isDnsName(std::string_view name) {
  if (name.empty() || name.size() > 253) return false;
  std::size_t start = 0;
  std::string_view last;
  while (true) {
    const std::size_t dot = name.find('.', start);
    const std::string_view label =
        name.substr(start, dot == std::string_view::npos ? std::string_view::npos : dot - start);
    if (label.empty() || label.size() > 63 || label.front() == '-' || label.back() == '-') return false;
    for (char ch : label) {
      if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-')) return false;
    }
    last = label;
    if (dot == std::string_view::npos) break;
    start = dot + 1;
  }
  return !isDecimal(last);  // an all-numeric top-level label is an IPv4 address, not a name
}

// Canonical text of a literal IPv4 or IPv6 address, or nullopt.
std::optional<std::string> normaliseAddress(const std::string& text) {
  unsigned char raw[sizeof(in6_addr)];
  char out[INET6_ADDRSTRLEN];
  for (int family : {AF_INET, AF_INET6}) {
    if (::inet_pton(family, text.c_str(), raw) == 1 && ::inet_ntop(family, raw, out, sizeof out) != nullptr) {
      return std::string(out);
    }
  }
  return std::nullopt;
}

std::string jsonString(std::string_view s) {
  std::string out = "\"";
  for (char ch : s) {
    switch (ch) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (static_cast<unsigned char>(ch) < 0x20) {
          out += fmt::format("\\u{:04x}", static_cast<unsigned char>(ch));
        } else {
          out += ch;
        }
    }
  }
  out += '"';
  return out;
}

// A plain YAML scalar that the YAML 1.2 core schema reads as a number, as JSON
// number text (YAML's "+1", "0x1F", ".5" are not JSON); nullopt when it is
// not a number JSON can represent.
std::optional<std::string> jsonNumber(const std::string& s) {
  static const std::regex kHexOrOctal("0[xo][0-9a-fA-F]+");
  static const std::regex kDecimal(R"([-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?)");
  if (std::regex_match(s, kHexOrOctal)) {
    const auto v = parseUnsigned<std::uint64_t>(std::string_view(s).substr(2), s[1] == 'x' ? 16 : 8);
    return v ? std::optional(fmt::format("{}", *v)) : std::nullopt;
  }
  if (!std::regex_match(s, kDecimal)) return std::nullopt;
  if (s.find_first_of(".eE") == std::string::npos) {
    std::int64_t v = 0;
    const char* begin = s.data() + (s[0] == '+' ? 1 : 0);
    const auto [end, ec] = std::from_chars(begin, s.data() + s.size(), v);
    if (ec == std::errc() && end == s.data() + s.size()) return fmt::format("{}", v);
    // Beyond 64 bits: a double, as a JSON parser would make it.
  }
  const double d = std::strtod(s.c_str(), nullptr);
  return std::isfinite(d) ? std::optional(fmt::format("{}", d)) : std::nullopt;
}

// A value to compare against the request body, as JSON text. Plain scalars
// keep the type YAML gives them (numbers, true/false, null); anything quoted
// or tagged !!str, and every other plain scalar, is a string.
// Well-formed UTF-8 (no overlongs, surrogates or code points past U+10FFFF):
// condition values become JSON text, which must be UTF-8.
bool validUtf8(std::string_view s) {
  for (std::size_t i = 0; i < s.size();) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    std::size_t n;
    std::uint32_t cp;
    if ((c >> 5) == 0x6) {
      n = 1;
      cp = c & 0x1F;
    } else if ((c >> 4) == 0xE) {
      n = 2;
      cp = c & 0x0F;
    } else if ((c >> 3) == 0x1E) {
      n = 3;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (i + n >= s.size()) return false;  // truncated sequence
    for (std::size_t k = 1; k <= n; ++k) {
      auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    if ((n == 1 && cp < 0x80) || (n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) || cp > 0x10FFFF ||
        (cp >= 0xD800 && cp <= 0xDFFF))
      return false;
    i += n + 1;
  }
  return true;
}

std::string jsonValue(const YAML::Node& n) {
  if (n.IsNull()) return "null";
  const std::string& s = n.Scalar();
  const std::string& tag = n.Tag();
  const bool forcedString = tag == "!" || tag == "tag:yaml.org,2002:str";
  if (!forcedString) {
    if (s == "true" || s == "True" || s == "TRUE") return "true";
    if (s == "false" || s == "False" || s == "FALSE") return "false";
    if (auto number = jsonNumber(s)) return *number;
  }
  return jsonString(s);
}

// A value being checked, with what it takes to report on it: its dotted path
// for the message, and YAML nodes for the location. A sequence element has no
// key node.
struct Field {
  std::string path;
  YAML::Node key;
  YAML::Node value;
};

// Where a message about a field points: its value, or its key when the value
// is empty (yaml-cpp marks an implicit null at the *next* token).
YAML::Mark markOf(const Field& f) {
  if (f.value.IsNull() && f.key.IsDefined() && !f.key.Mark().is_null()) return f.key.Mark();
  return f.value.Mark();
}

YAML::Mark keyMark(const Field& f) {
  return f.key.IsDefined() && !f.key.Mark().is_null() ? f.key.Mark() : markOf(f);
}

// A mapping whose keys have been checked: all plain, all known, none twice.
struct Fields {
  Field self;
  std::vector<Field> entries;

  const Field* find(std::string_view key) const {
    for (const Field& e : entries) {
      if (e.key.Scalar() == key) return &e;
    }
    return nullptr;
  }
  const std::string& path() const { return self.path; }
};

// Of two fields present in the same mapping, the one written second.
const Field& later(const Field& a, const Field& b) {
  return keyMark(a).pos > keyMark(b).pos ? a : b;
}

std::string located(const std::string& file, const YAML::Mark& m, std::string_view message) {
  const int line = m.is_null() ? 1 : m.line + 1;
  const int column = m.is_null() ? 1 : m.column + 1;
  return fmt::format("{}:{}:{}: {}", file, line, column, message);
}

class Parser {
 public:
  Parser(std::string file, bool fileIsPrivate) : file_(std::move(file)), fileIsPrivate_(fileIsPrivate) {}

  Config parse(const YAML::Node& root) const;

 private:
  template <class... Args>
  [[noreturn]] void fail(const YAML::Mark& at, fmt::format_string<Args...> f, Args&&... args) const {
    throw ParseFailure{located(file_, at, fmt::format(f, std::forward<Args>(args)...))};
  }
  template <class... Args>
  [[noreturn]] void fail(const Field& at, fmt::format_string<Args...> f, Args&&... args) const {
    fail(markOf(at), f, std::forward<Args>(args)...);
  }

  SourceLoc loc(const YAML::Mark& m) const {
    return SourceLoc{file_, m.is_null() ? 0 : m.line + 1, m.is_null() ? 0 : m.column + 1};
  }

  // Shapes.
  Fields fields(const Field& f, Names allowed) const;
  std::vector<Field> list(const Field& f) const;
  std::vector<Field> oneOrMany(const Field& f) const;
  const Field* require(const Fields& m, std::string_view key, std::string_view hint = {}) const;
  const Field* exactlyOne(const Fields& m, Names keys, std::string_view what) const;

  // Scalars.
  std::string string(const Field& f) const;
  std::string nonEmpty(const Field& f) const;
  std::string name(const Field& f) const;
  std::uint64_t integer(const Field& f, std::uint64_t min, std::uint64_t max) const;
  bool boolean(const Field& f) const;
  std::chrono::seconds duration(const Field& f) const;
  std::string absolutePath(const Field& f) const;
  template <class T>
  T choice(const Field& f, std::initializer_list<std::pair<std::string_view, T>> options) const;

  // Sections.
  Listen listen(const Field& f) const;
  std::string adminAddress(const Field& f) const;
  Agents agents(const Field& f) const;
  std::vector<Target> targets(const Field& f) const;
  Target target(const Field& f, std::map<std::string, int>& hostLines) const;
  std::string dnsName(const Field& f) const;
  std::vector<Credential> credentials(const Field& f) const;
  void credentialKind(const Fields& m, Credential& c) const;
  SecretRef secret(const Fields& m, const std::string& stem) const;
  std::vector<std::string> globs(const Field& f) const;
  Rules rules(const Field& f, const std::vector<Target>& targets) const;
  Rule rule(const Field& f, std::size_t index, const std::vector<Target>& targets,
            std::map<std::string, int>& nameLines) const;
  std::string pathPattern(const Field& f) const;
  Condition condition(const Field& f) const;
  Rate rate(const Field& f) const;
  Limits limits(const Field& f) const;
  BpfOptions bpf(const Field& f) const;
  Dns dns(const Field& f) const;
  void discovery(const Field& f, Config& c) const;
  std::string labelSelector(const Field& f, std::string_view what) const;

  std::string file_;
  bool fileIsPrivate_;
};

Fields Parser::fields(const Field& f, Names allowed) const {
  Fields out{f, {}};
  if (f.value.IsNull()) return out;  // "key:" with nothing under it: all defaults
  if (!f.value.IsMap()) fail(f, "{}: expected a map, got {}", f.path, typeName(f.value));
  for (auto it = f.value.begin(); it != f.value.end(); ++it) {
    // Copies: the iterator hands out a proxy that does not outlive the statement.
    const YAML::Node key = it->first;
    const YAML::Node value = it->second;
    if (!key.IsScalar()) fail(key.Mark(), "{}: keys must be plain words, got {}", where(f.path), typeName(key));
    const std::string& k = key.Scalar();
    if (!contains(allowed, k)) {
      if (f.path.empty()) {
        fail(key.Mark(), "unknown top-level key {:?}{}; allowed: {}", k, didYouMean(k, allowed), joinNames(allowed));
      }
      fail(key.Mark(), "unknown key {:?} in {}{}; allowed: {}", k, f.path, didYouMean(k, allowed), joinNames(allowed));
    }
    if (out.find(k) != nullptr) fail(key.Mark(), "{}: duplicate key {:?}", where(f.path), k);
    out.entries.push_back(Field{childPath(f.path, k), key, value});
  }
  return out;
}

std::vector<Field> Parser::list(const Field& f) const {
  if (f.value.IsNull()) return {};
  if (!f.value.IsSequence()) fail(f, "{}: expected a list, got {}", f.path, typeName(f.value));
  std::vector<Field> out;
  for (const YAML::Node& item : f.value) {
    out.push_back(Field{fmt::format("{}[{}]", f.path, out.size()), YAML::Node(), item});
  }
  return out;
}

// A single value or a non-empty list of them ("method: GET" or "method: [GET,
// HEAD]"). These narrow what a rule or credential applies to, and leaving
// the key out means "any"; an empty one is more likely a slip than a wish to
// match everything, so it is refused.
std::vector<Field> Parser::oneOrMany(const Field& f) const {
  if (f.value.IsScalar()) return {f};
  if (f.value.IsMap()) fail(f, "{}: expected a string or a list of strings, got a map", f.path);
  std::vector<Field> items = list(f);
  if (items.empty()) fail(f, "{}: is empty; leave {} out to match any", f.path, f.key.Scalar());
  return items;
}

const Field* Parser::require(const Fields& m, std::string_view key, std::string_view hint) const {
  const Field* f = m.find(key);
  if (f == nullptr) fail(keyMark(m.self), "{}: {} is required{}", m.path(), key, hint);
  return f;
}

// The one key of `keys` present in m; fails when none or several are.
const Field* Parser::exactlyOne(const Fields& m, Names keys, std::string_view what) const {
  const Field* found = nullptr;
  for (std::string_view k : keys) {
    const Field* f = m.find(k);
    if (f == nullptr) continue;
    if (found != nullptr) {
      const Field& second = later(*found, *f);
      const Field& first = &second == f ? *found : *f;
      fail(keyMark(second), "{}: both {} and {} are set; {}", m.path(), first.key.Scalar(), second.key.Scalar(), what);
    }
    found = f;
  }
  if (found == nullptr) fail(keyMark(m.self), "{}: needs one of {}; {}", m.path(), joinNames(keys), what);
  return found;
}

std::string Parser::string(const Field& f) const {
  if (!f.value.IsScalar()) fail(f, "{}: expected a string, got {}", f.path, typeName(f.value));
  return f.value.Scalar();
}

std::string Parser::nonEmpty(const Field& f) const {
  std::string s = string(f);
  if (s.empty()) fail(f, "{}: must not be empty", f.path);
  return s;
}

std::string Parser::name(const Field& f) const {
  std::string s = string(f);
  if (!isName(s)) fail(f, "{}: {:?} is not a valid name (use letters, digits, '-', '_' and '.')", f.path, s);
  return s;
}

std::uint64_t Parser::integer(const Field& f, std::uint64_t min, std::uint64_t max) const {
  const auto v = f.value.IsScalar() ? parseUnsigned<std::uint64_t>(f.value.Scalar()) : std::nullopt;
  if (!v || *v < min || *v > max) {
    fail(f, "{}: expected an integer from {} to {}, got {}", f.path, min, max, shown(f.value));
  }
  return *v;
}

bool Parser::boolean(const Field& f) const {
  const std::string s = f.value.IsScalar() ? f.value.Scalar() : "";
  if (s == "true" || s == "True" || s == "TRUE") return true;
  if (s == "false" || s == "False" || s == "FALSE") return false;
  fail(f, "{}: expected true or false, got {}", f.path, shown(f.value));
}

// Whole seconds, or a number with a unit: 500ms, 30s, 2m, 1h. Parts of a
// second round up, so a timeout is never shorter than written.
std::chrono::seconds Parser::duration(const Field& f) const {
  const std::string s = f.value.IsScalar() ? f.value.Scalar() : "";
  const std::size_t unitAt = s.find_first_not_of("0123456789");
  const std::string_view number = std::string_view(s).substr(0, unitAt);
  const std::string_view unit = unitAt == std::string::npos ? std::string_view() : std::string_view(s).substr(unitAt);
  std::uint64_t millisPerUnit = 0;
  if (unit.empty() || unit == "s")
    millisPerUnit = 1000;
  else if (unit == "ms")
    millisPerUnit = 1;
  else if (unit == "m")
    millisPerUnit = 60'000;
  else if (unit == "h")
    millisPerUnit = 3'600'000;
  const auto n = parseUnsigned<std::uint64_t>(number);
  if (!f.value.IsScalar() || millisPerUnit == 0 || !n) {
    fail(f, "{}: expected a duration such as 30s, 2m, 1h or 500ms (a bare number is seconds), got {}", f.path,
         shown(f.value));
  }
  if (*n > kMaxDurationSeconds * 1000) fail(f, "{}: duration {:?} is longer than a year", f.path, s);
  const std::uint64_t seconds = (*n * millisPerUnit + 999) / 1000;
  if (seconds == 0) fail(f, "{}: duration must be greater than zero", f.path);
  if (seconds > kMaxDurationSeconds) fail(f, "{}: duration {:?} is longer than a year", f.path, s);
  return std::chrono::seconds(seconds);
}

std::string Parser::absolutePath(const Field& f) const {
  std::string s = string(f);
  if (s.empty() || s[0] != '/' || s.find('\0') != std::string::npos) {
    fail(f, "{}: expected an absolute path (starting with /), got {}", f.path, shown(f.value));
  }
  return s;
}

template <class T>
T Parser::choice(const Field& f, std::initializer_list<std::pair<std::string_view, T>> options) const {
  std::vector<std::string_view> names;
  const std::string given = f.value.IsScalar() ? toLower(f.value.Scalar()) : std::string();
  for (const auto& [n, v] : options) {
    if (f.value.IsScalar() && given == n) return v;
    names.push_back(n);
  }
  const std::string suggestion = f.value.IsScalar() ? didYouMean(given, names) : std::string();
  fail(f, "{}: expected one of {}, got {}{}", f.path, joinNames(names), shown(f.value), suggestion);
}

// ---- sections -------------------------------------------------------------

Config Parser::parse(const YAML::Node& root) const {
  if (root.IsNull()) fail(root.Mark(), "the config is empty; at least targets: is required");
  const Field top{"", YAML::Node(), root};
  if (!root.IsMap())
    fail(top, "the config must be a map of settings (listen, targets, rules, ...), got {}", typeName(root));
  const Fields m =
      fields(top, {"listen", "state_dir", "audit_log", "log_level", "agents", "targets", "rules", "limits", "bpf", "dns", "intercept", "publish_ca_dir", "discovery"});

  Config c;
  if (const Field* f = m.find("listen")) c.listen = listen(*f);
  if (const Field* f = m.find("state_dir")) c.stateDir = absolutePath(*f);
  if (const Field* f = m.find("publish_ca_dir")) c.publishCaDir = absolutePath(*f);
  if (const Field* f = m.find("audit_log")) {
    c.auditLog = string(*f);
    if (c.auditLog != "-") c.auditLog = absolutePath(*f);
  }
  if (const Field* f = m.find("log_level")) {
    c.logLevel = std::string(
        choice<std::string_view>(*f, {{"debug", "debug"}, {"info", "info"}, {"warn", "warn"}, {"error", "error"}}));
  }
  if (const Field* f = m.find("agents")) c.agents = agents(*f);
  const Field* targetList = m.find("targets");
  if (targetList == nullptr) fail(root.Mark(), "targets: is required (at least one target host)");
  c.targets = targets(*targetList);
  // Rules refer to target hosts and credentials, so they come after targets
  // whatever the order in the file.
  if (const Field* f = m.find("rules")) c.rules = rules(*f, c.targets);
  if (const Field* f = m.find("limits")) c.limits = limits(*f);
  if (const Field* f = m.find("bpf")) c.bpf = bpf(*f);
  if (const Field* f = m.find("dns")) c.dns = dns(*f);
  if (const Field* f = m.find("discovery")) discovery(*f, c);
  if (const Field* f = m.find("intercept")) {
    std::string v = string(*f);
    if (v == "targets") c.intercept = Intercept::Targets;
    else if (v == "all-tls") c.intercept = Intercept::AllTls;
    else fail(*f, "{}: expected one of targets, all-tls, got {}", f->path, shown(f->value));
  }
  return c;
}

Listen Parser::listen(const Field& f) const {
  const Fields m = fields(f, {"port", "admin", "admin_token_file"});
  Listen l;
  if (const Field* p = m.find("port")) l.port = static_cast<std::uint16_t>(integer(*p, 1, 65535));
  if (const Field* a = m.find("admin"); a != nullptr && !a->value.IsNull()) l.admin = adminAddress(*a);
  if (const Field* t = m.find("admin_token_file"); t != nullptr && !t->value.IsNull()) {
    l.adminTokenFile = absolutePath(*t);
    if (!l.admin) fail(*t, "{}: needs listen.admin (the endpoint it protects)", t->path);
  }
  return l;
}

// ADDRESS:PORT with a literal address (IPv6 in brackets) or "localhost".
std::string Parser::adminAddress(const Field& f) const {
  const std::string s = string(f);
  std::string host, port;
  if (!s.empty() && s[0] == '[') {
    const std::size_t close = s.find("]:");
    if (close != std::string::npos) {
      host = s.substr(1, close - 1);
      port = s.substr(close + 2);
    }
  } else if (const std::size_t colon = s.rfind(':'); colon != std::string::npos) {
    host = s.substr(0, colon);
    port = s.substr(colon + 1);
  }
  const bool bracketed = !s.empty() && s[0] == '[';
  const bool hostOk =
      host == "localhost" || (normaliseAddress(host) && (host.find(':') != std::string::npos) == bracketed);
  const auto portNumber = parseUnsigned<std::uint16_t>(port);
  if (!hostOk || !portNumber || *portNumber == 0) {
    fail(f, "{}: expected ADDRESS:PORT such as 127.0.0.1:15444 or [::1]:15444, got {:?}", f.path, s);
  }
  return s;
}

Agents Parser::agents(const Field& f) const {
  const Fields m = fields(f, {"cgroup", "attach"});
  Agents a;
  if (const Field* c = m.find("cgroup")) {
    a.cgroup = nonEmpty(*c);
    const std::string padded = "/" + a.cgroup + "/";
    if (padded.find("/../") != std::string::npos) fail(*c, "{}: must not contain \"..\"", c->path);
  }
  if (const Field* at = m.find("attach")) {
    for (const Field& item : list(*at)) a.attach.push_back(absolutePath(item));
  }
  return a;
}

std::vector<Target> Parser::targets(const Field& f) const {
  const std::vector<Field> items = list(f);
  if (items.empty()) fail(f, "targets: at least one target is required");
  std::vector<Target> out;
  std::map<std::string, int> hostLines;
  for (const Field& item : items) out.push_back(target(item, hostLines));
  return out;
}

Target Parser::target(const Field& f, std::map<std::string, int>& hostLines) const {
  const Fields m = fields(f, {"host", "addresses", "upstream_ca", "upstream_port", "resolve", "credentials"});
  Target t;
  t.loc = loc(f.value.Mark());

  const Field* host = require(m, "host", " (the DNS name agents connect to)");
  t.host = dnsName(*host);
  if (const auto [it, fresh] = hostLines.emplace(t.host, markOf(*host).line + 1); !fresh) {
    fail(*host, "{}: duplicate target host {:?} (first at line {})", host->path, t.host, it->second);
  }

  if (const Field* a = m.find("addresses")) {
    for (const Field& item : list(*a)) {
      const std::string text = string(item);
      const auto address = normaliseAddress(text);
      if (!address) fail(item, "{}: {:?} is not a literal IPv4 or IPv6 address", item.path, text);
      if (std::find(t.addresses.begin(), t.addresses.end(), *address) != t.addresses.end()) {
        fail(item, "{}: address {} is listed twice", item.path, *address);
      }
      t.addresses.push_back(*address);
    }
  }
  if (const Field* ca = m.find("upstream_ca"); ca != nullptr && !ca->value.IsNull()) t.upstreamCa = absolutePath(*ca);
  if (const Field* p = m.find("upstream_port")) t.upstreamPort = static_cast<std::uint16_t>(integer(*p, 1, 65535));
  if (const Field* r = m.find("resolve")) {
    t.resolve = boolean(*r);
    if (!t.resolve && t.addresses.empty()) {
      fail(*r, "{}: with resolve: false and no addresses nothing would be intercepted for {}", r->path, t.host);
    }
  }
  if (const Field* c = m.find("credentials")) t.credentials = credentials(*c);
  return t;
}

std::string Parser::dnsName(const Field& f) const {
  const std::string raw = string(f);
  if (normaliseAddress(raw)) {
    fail(f, "{}: {:?} is an IP address; name the host here and list the address under addresses", f.path, raw);
  }
  std::string host = toLower(raw);
  if (!host.empty() && host.back() == '.') host.pop_back();  // the root label is implied
  if (!isDnsName(host)) fail(f, "{}: {:?} is not a valid DNS name", f.path, raw);
  return host;
}

std::vector<Credential> Parser::credentials(const Field& f) const {
  if (f.value.IsNull()) return {};
  if (f.value.IsMap()) {
    const Fields m = fields(f, {"service_account", "api_key"});
    Credential c;
    c.name = "default";
    c.loc = loc(f.value.Mark());
    credentialKind(m, c);
    return {c};
  }
  if (!f.value.IsSequence()) {
    fail(f, "{}: expected a map (service_account or api_key) or a list of named credentials, got {}", f.path,
         typeName(f.value));
  }
  std::vector<Credential> out;
  std::map<std::string, int> nameLines;
  for (const Field& item : list(f)) {
    const Fields m = fields(item, {"name", "agents", "service_account", "api_key"});
    Credential c;
    c.loc = loc(item.value.Mark());
    const Field* n = require(m, "name", " when credentials is a list");
    c.name = name(*n);
    if (const auto [it, fresh] = nameLines.emplace(c.name, markOf(*n).line + 1); !fresh) {
      fail(*n, "{}: duplicate credential name {:?} (first at line {})", n->path, c.name, it->second);
    }
    if (const Field* a = m.find("agents")) c.agents = globs(*a);
    credentialKind(m, c);
    out.push_back(std::move(c));
  }
  return out;
}

void Parser::credentialKind(const Fields& m, Credential& c) const {
  const Field* kind = exactlyOne(m, {"service_account", "api_key"}, "a credential is one or the other");
  if (kind->key.Scalar() == "service_account") {
    const Fields s = fields(*kind, {"client_id", "client_secret_file", "client_secret_env", "client_secret"});
    ServiceAccount account;
    account.clientId = nonEmpty(*require(s, "client_id"));
    account.clientSecret = secret(s, "client_secret");
    c.serviceAccount = std::move(account);
  } else {
    const Fields s = fields(*kind, {"public_key", "private_key_file", "private_key_env", "private_key"});
    ApiKey key;
    key.publicKey = nonEmpty(*require(s, "public_key"));
    key.privateKey = secret(s, "private_key");
    c.apiKey = std::move(key);
  }
}

// Where the secret lives: STEM_file, STEM_env or (in a 0600 file) STEM inline.
// Every message here names keys only: whatever was written under them may be
// the secret, even under *_file or *_env when pasted in the wrong place.
SecretRef Parser::secret(const Fields& m, const std::string& stem) const {
  const std::string fileKey = stem + "_file";
  const std::string envKey = stem + "_env";
  const Field* source = exactlyOne(m, {fileKey, envKey, stem}, "give exactly one source for the secret");
  const Field& f = *source;
  SecretRef ref;
  ref.loc = loc(markOf(f));
  const std::string_view key = f.key.Scalar();
  const bool isText = f.value.IsScalar() && !f.value.Scalar().empty();
  if (key == fileKey) {
    if (!isText || f.value.Scalar()[0] != '/')
      fail(f, "{}: expected the absolute path of a file holding the secret", f.path);
    ref.file = f.value.Scalar();
  } else if (key == envKey) {
    if (!isText || !isIdentifier(f.value.Scalar())) {
      fail(f, "{}: expected an environment variable name (letters, digits and _)", f.path);
    }
    ref.env = f.value.Scalar();
  } else {
    if (!fileIsPrivate_) {
      fail(keyMark(f),
           "{}: an inline secret is only accepted when {} is mode 0600 (no group or other access); use {} or {}, or "
           "chmod 600 {}",
           f.path, file_, fileKey, envKey, file_);
    }
    if (!isText) fail(keyMark(f), "{}: expected the secret as a non-empty string", f.path);
    ref.inlineValue = f.value.Scalar();
  }
  return ref;
}

std::vector<std::string> Parser::globs(const Field& f) const {
  std::vector<std::string> out;
  for (const Field& item : oneOrMany(f)) out.push_back(nonEmpty(item));
  return out;
}

Rules Parser::rules(const Field& f, const std::vector<Target>& targets) const {
  const Fields m = fields(f, {"default", "list"});
  Rules r;
  if (const Field* d = m.find("default"))
    r.defaultAction = choice<Action>(*d, {{"allow", Action::Allow}, {"block", Action::Block}});
  if (const Field* l = m.find("list")) {
    std::map<std::string, int> nameLines;
    const std::vector<Field> items = list(*l);
    for (std::size_t i = 0; i < items.size(); ++i) r.list.push_back(rule(items[i], i, targets, nameLines));
  }
  return r;
}

Rule Parser::rule(const Field& f, std::size_t index, const std::vector<Target>& targets,
                  std::map<std::string, int>& nameLines) const {
  const Fields m = fields(f, {"name", "method", "path", "host", "agents", "pod_labels", "container_labels", "when",
                              "action", "rate", "burst", "per", "timeout", "would_be", "credential"});
  Rule r;
  r.loc = loc(f.value.Mark());

  const Field* n = m.find("name");
  r.name = n != nullptr ? name(*n) : fmt::format("rule-{}", index);
  const YAML::Mark nameMark = n != nullptr ? markOf(*n) : f.value.Mark();
  if (const auto [it, fresh] = nameLines.emplace(r.name, nameMark.line + 1); !fresh) {
    fail(nameMark, "{}: duplicate rule name {:?} (first at line {}){}", f.path, r.name, it->second,
         n != nullptr ? "" : "; it was generated for this unnamed rule, so give it a name");
  }

  // The action decides which of the other keys apply.
  const Field* act = require(m, "action", " (allow, block, rate_limit, approve or log_only)");
  r.action = choice<Action>(*act, {{"allow", Action::Allow},
                                   {"block", Action::Block},
                                   {"rate_limit", Action::RateLimit},
                                   {"approve", Action::Approve},
                                   {"log_only", Action::LogOnly}});
  const Field* wouldBe = m.find("would_be");
  if (wouldBe != nullptr) {
    if (r.action != Action::LogOnly)
      fail(keyMark(*wouldBe), "{}: would_be is only allowed with action: log_only", wouldBe->path);
    r.wouldBe = choice<Action>(
        *wouldBe, {{"block", Action::Block}, {"rate_limit", Action::RateLimit}, {"approve", Action::Approve}});
  }
  // A log_only rule carries the settings of the action it stands in for.
  const Action acting = r.action == Action::LogOnly ? r.wouldBe : r.action;
  for (const char* key : {"rate", "burst", "per"}) {
    if (const Field* k = m.find(key); k != nullptr && acting != Action::RateLimit) {
      fail(keyMark(*k), "{}: {} is only allowed with action: rate_limit (or log_only with would_be: rate_limit)",
           k->path, key);
    }
  }
  if (const Field* k = m.find("timeout"); k != nullptr && acting != Action::Approve) {
    fail(keyMark(*k), "{}: timeout is only allowed with action: approve (or log_only with would_be: approve)", k->path);
  }
  if (acting == Action::RateLimit) {
    const Field* rateField = m.find("rate");
    if (rateField == nullptr) {
      const Field& at = wouldBe != nullptr ? *wouldBe : *act;
      fail(at, "{}: rate limiting needs rate: such as 60/minute", f.path);
    }
    r.rate = rate(*rateField);
    r.burst = r.rate->count;
    if (const Field* b = m.find("burst")) r.burst = integer(*b, 1, kMaxRateCount);
    if (const Field* p = m.find("per"))
      r.per = choice<RatePer>(*p, {{"agent", RatePer::Agent}, {"rule", RatePer::Rule}});
  }
  if (const Field* t = m.find("timeout")) r.timeout = duration(*t);

  if (const Field* methods = m.find("method")) {
    for (const Field& item : oneOrMany(*methods)) {
      const std::string method = toUpper(string(item));
      if (!contains(kHttpMethods, method)) {
        fail(item, "{}: {:?} is not an HTTP method{}; expected one of {}", item.path, item.value.Scalar(),
             didYouMean(method, kHttpMethods), joinNames(kHttpMethods));
      }
      r.methods.push_back(method);
    }
  }
  if (const Field* p = m.find("path")) r.path = pathPattern(*p);
  if (const Field* hosts = m.find("host")) {
    for (const Field& item : oneOrMany(*hosts)) {
      const std::string host = dnsName(item);
      const bool known = std::any_of(targets.begin(), targets.end(), [&](const Target& t) { return t.host == host; });
      if (!known) {
        std::string names;
        for (const Target& t : targets) names += (names.empty() ? "" : ", ") + t.host;
        fail(item, "{}: {:?} is not one of the targets ({})", item.path, host, names);
      }
      r.hosts.push_back(host);
    }
  }
  if (const Field* a = m.find("agents")) r.agents = globs(*a);
  if (const Field* pl = m.find("pod_labels")) r.podLabels = labelSelector(*pl, "pod");
  if (const Field* cl = m.find("container_labels")) r.containerLabels = labelSelector(*cl, "container");
  if (const Field* w = m.find("when")) {
    for (const Field& item : list(*w)) r.when.push_back(condition(item));
  }
  if (const Field* c = m.find("credential")) {
    r.credential = name(*c);
    auto hasCredential = [&](const Target& t) {
      return std::any_of(t.credentials.begin(), t.credentials.end(),
                         [&](const Credential& k) { return k.name == r.credential; });
    };
    if (r.hosts.empty()) {
      if (std::none_of(targets.begin(), targets.end(), hasCredential)) {
        fail(*c, "{}: no target has a credential named {:?}", c->path, r.credential);
      }
    } else {
      for (const Target& t : targets) {
        if (std::find(r.hosts.begin(), r.hosts.end(), t.host) != r.hosts.end() && !hasCredential(t)) {
          fail(*c, "{}: target {} has no credential named {:?}", c->path, t.host, r.credential);
        }
      }
    }
  }
  return r;
}

// Segments are literal text, {name} or * (one segment) or ** (any number).
// policy/ compiles the pattern; this catches mistakes at load time.
std::string Parser::pathPattern(const Field& f) const {
  const std::string p = string(f);
  auto bad = [&](const std::string& why) { fail(f, "{}: {:?} is not a valid path pattern: {}", f.path, p, why); };
  if (p.empty() || p[0] != '/') bad("it must start with /");
  if (p.find_first_of("?#") != std::string::npos) bad("the query string is never matched, leave it out");
  if (std::any_of(p.begin(), p.end(), [](char ch) { return static_cast<unsigned char>(ch) <= 0x20 || ch == 0x7f; })) {
    bad("it contains spaces or control characters");
  }
  std::set<std::string, std::less<>> params;
  std::size_t start = 1;
  while (start <= p.size()) {
    std::size_t end = p.find('/', start);
    if (end == std::string::npos) end = p.size();
    const std::string_view segment = std::string_view(p).substr(start, end - start);
    start = end + 1;
    if (segment.empty() || segment == "*" || segment == "**") continue;
    if (segment.front() == '{' || segment.back() == '}') {
      if (segment.size() < 2 || segment.front() != '{' || segment.back() != '}') {
        bad(fmt::format("unbalanced braces in {:?}", segment));
      }
      const std::string_view param = segment.substr(1, segment.size() - 2);
      if (!isIdentifier(param)) bad(fmt::format("{:?} is not a parameter name (letters, digits and _)", param));
      if (!params.emplace(param).second) bad(fmt::format("parameter {{{}}} appears twice", param));
      continue;
    }
    if (segment.find_first_of("{}*") != std::string_view::npos) {
      bad(fmt::format("segment {:?} mixes text with {{}} or *; a segment is literal text, {{name}}, * or **", segment));
    }
    if (segment == "." || segment == "..") bad("\".\" and \"..\" segments never match (request paths are normalised)");
    for (std::size_t i = 0; i < segment.size(); ++i) {
      if (segment[i] == '%' && (i + 2 >= segment.size() || !std::isxdigit(static_cast<unsigned char>(segment[i + 1])) ||
                                !std::isxdigit(static_cast<unsigned char>(segment[i + 2])))) {
        bad("'%' must be followed by two hex digits");
      }
    }
  }
  return p;
}

Condition Parser::condition(const Field& f) const {
  const Fields m = fields(f, {"pointer", "equals", "in", "not_in", "matches", "exists"});
  Condition c;
  c.loc = loc(f.value.Mark());

  const Field* pointer = require(m, "pointer", " (a JSON pointer into the request body, such as /name)");
  c.pointer = string(*pointer);
  // RFC 6901: empty (the whole body) or "/"-prefixed tokens, with '~' only
  // as the escapes ~0 and ~1.
  if (!c.pointer.empty() && c.pointer[0] != '/') {
    fail(*pointer, "{}: {:?} is not a JSON pointer: it must be empty or start with /", pointer->path, c.pointer);
  }
  for (std::size_t i = 0; i < c.pointer.size(); ++i) {
    if (c.pointer[i] == '~' && (i + 1 == c.pointer.size() || (c.pointer[i + 1] != '0' && c.pointer[i + 1] != '1'))) {
      fail(*pointer, "{}: {:?} is not a JSON pointer: '~' must be followed by 0 or 1", pointer->path, c.pointer);
    }
  }

  const Field* test = exactlyOne(m, {"equals", "in", "not_in", "matches", "exists"}, "a condition tests one thing");
  const std::string_view op = test->key.Scalar();
  auto single = [&](const Field& v) {
    if (!v.value.IsScalar() && !v.value.IsNull()) {
      fail(v, "{}: expected a single value (string, number, true, false or null), got {}", v.path, typeName(v.value));
    }
    if (v.value.IsScalar() && !validUtf8(v.value.Scalar())) fail(v, "{}: the value is not valid UTF-8", v.path);
    return jsonValue(v.value);
  };
  if (op == "equals") {
    c.op = CondOp::Equals;
    c.jsonValues.push_back(single(*test));
  } else if (op == "in" || op == "not_in") {
    c.op = op == "in" ? CondOp::In : CondOp::NotIn;
    const std::vector<Field> values = list(*test);
    if (values.empty()) fail(*test, "{}: list at least one value", test->path);
    for (const Field& v : values) c.jsonValues.push_back(single(v));
  } else if (op == "matches") {
    c.op = CondOp::Matches;
    c.regex = string(*test);
    // The engine and flags the policy matches with (Boost.Regex, ECMAScript),
    // so that what loads also compiles there.
    std::string error;
    try {
      boost::regex compiled(c.regex, boost::regex::ECMAScript);
    } catch (const std::exception& e) {
      error = e.what();
    }
    if (!error.empty())
      fail(*test, "{}: regular expression {:?} does not compile: {}", test->path, c.regex, error);
  } else {
    c.op = CondOp::Exists;
    c.exists = boolean(*test);
  }
  return c;
}

// COUNT/UNIT: 60/minute, 10/s, 1000/day.
Rate Parser::rate(const Field& f) const {
  const std::string s = string(f);
  const std::size_t slash = s.find('/');
  const auto count = parseUnsigned<std::uint64_t>(trim(std::string_view(s).substr(0, slash)));
  if (slash == std::string::npos || !count || *count == 0 || *count > kMaxRateCount) {
    fail(f, "{}: expected COUNT/UNIT such as 60/minute (COUNT from 1 to {}), got {:?}", f.path, kMaxRateCount, s);
  }
  const std::string unit = toLower(trim(std::string_view(s).substr(slash + 1)));
  static constexpr auto kUnits =
      std::to_array<std::string_view>({"second", "minute", "hour", "day", "s", "m", "h", "d", "sec", "min"});
  Rate r;
  r.count = *count;
  if (unit == "second" || unit == "s" || unit == "sec")
    r.periodSeconds = 1;
  else if (unit == "minute" || unit == "m" || unit == "min")
    r.periodSeconds = 60;
  else if (unit == "hour" || unit == "h")
    r.periodSeconds = 3600;
  else if (unit == "day" || unit == "d")
    r.periodSeconds = 86400;
  else
    fail(f, "{}: unknown rate unit {:?}{}; use one of {}", f.path, unit, didYouMean(unit, kUnits), joinNames(kUnits));
  return r;
}

Limits Parser::limits(const Field& f) const {
  const Fields m = fields(f, {"max_header_bytes", "max_headers", "max_body_bytes", "handshake_timeout",
                              "header_timeout", "idle_timeout", "request_timeout", "upstream_timeout",
                              "max_connections", "max_connections_per_agent", "max_held_requests",
                              "max_held_per_agent", "max_held_body_bytes", "max_phantom_tokens_per_agent",
                              "max_upstream_connections", "max_upstream_connections_per_agent",
                              "upstream_queue_timeout", "upstream_connect_timeout"});
  Limits l;
  if (const Field* v = m.find("max_header_bytes"))
    l.maxHeaderBytes = static_cast<std::uint32_t>(integer(*v, 1, UINT32_MAX));
  if (const Field* v = m.find("max_headers")) l.maxHeaders = static_cast<std::uint32_t>(integer(*v, 1, UINT32_MAX));
  if (const Field* v = m.find("max_body_bytes")) l.maxBodyBytes = integer(*v, 1, UINT64_MAX);
  if (const Field* v = m.find("handshake_timeout")) l.handshakeTimeout = duration(*v);
  if (const Field* v = m.find("header_timeout")) l.headerTimeout = duration(*v);
  if (const Field* v = m.find("idle_timeout")) l.idleTimeout = duration(*v);
  if (const Field* v = m.find("request_timeout")) l.requestTimeout = duration(*v);
  if (const Field* v = m.find("upstream_timeout")) l.upstreamTimeout = duration(*v);
  auto count = [&](const char* key, std::uint32_t& out, std::uint32_t max) {
    if (const Field* v = m.find(key)) out = static_cast<std::uint32_t>(integer(*v, 1, max));
  };
  count("max_connections", l.maxConnections, 1u << 20);
  count("max_connections_per_agent", l.maxConnectionsPerAgent, 1u << 20);
  count("max_held_requests", l.maxHeldRequests, 1u << 16);
  count("max_held_per_agent", l.maxHeldPerAgent, 1u << 16);
  count("max_phantom_tokens_per_agent", l.maxPhantomTokensPerAgent, 1u << 20);
  count("max_upstream_connections", l.maxUpstreamConnections, 1u << 16);
  count("max_upstream_connections_per_agent", l.maxUpstreamConnectionsPerAgent, 1u << 16);
  if (const Field* v = m.find("max_held_body_bytes")) l.maxHeldBodyBytes = integer(*v, 1, UINT64_MAX);
  if (const Field* v = m.find("upstream_queue_timeout")) l.upstreamQueueTimeout = duration(*v);
  if (const Field* v = m.find("upstream_connect_timeout")) l.upstreamConnectTimeout = duration(*v);
  return l;
}

// A rule's label selector (pod_labels, container_labels): never empty.
std::string Parser::labelSelector(const Field& f, std::string_view what) const {
  std::string text = string(f);
  if (auto sel = discovery::LabelSelector::parse(text); !sel || sel->empty())
    fail(f, "{}: {}", f.path, sel ? fmt::format("an empty selector would match every {}", what) : sel.error().message);
  return text;
}

void Parser::discovery(const Field& f, Config& c) const {
  const Fields m = fields(f, {"kubernetes", "containers"});
  if (const Field* ct = m.find("containers")) {
    const Fields cm = fields(*ct, {"socket", "label", "guard_cgroup", "settle"});
    ContainerDiscovery d;
    d.loc = loc(keyMark(*ct));
    if (const Field* v = cm.find("socket")) {
      d.socket = absolutePath(*v);
      if (d.socket.size() >= 108) fail(*v, "{}: too long for a Unix socket path", v->path);
    }
    if (const Field* v = cm.find("label")) {
      d.label = string(*v);
      if (auto sel = discovery::parseContainerLabelFilter(d.label); !sel) fail(*v, "{}: {}", v->path, sel.error().message);
    }
    if (const Field* v = cm.find("guard_cgroup")) {
      d.guardCgroup = string(*v);
      if (d.guardCgroup.empty() || d.guardCgroup.find("..") != std::string::npos ||
          d.guardCgroup.find_first_of(std::string_view("\0\n", 2)) != std::string::npos || d.guardCgroup == "/")
        fail(*v, "{}: expected a cgroup path (not the root, no \"..\"), got {}", v->path, shown(v->value));
    }
    if (const Field* v = cm.find("settle")) {
      d.settle = duration(*v);
      if (d.settle.count() == 0 || d.settle > std::chrono::seconds(60))
        fail(*v, "{}: expected between 1s and 60s", v->path);
    }
    c.containers = std::move(d);
  }
  const Field* k = m.find("kubernetes");
  if (!k) return;
  const Fields km = fields(*k, {"node_name_env", "label_selector", "api_server", "token_file", "ca_file", "cgroup_root"});
  KubernetesDiscovery d;
  d.loc = loc(keyMark(*k));
  if (const Field* v = km.find("node_name_env")) d.nodeNameEnv = string(*v);
  if (const Field* v = km.find("label_selector")) {
    d.labelSelector = string(*v);
    if (auto sel = discovery::LabelSelector::parse(d.labelSelector); !sel)
      fail(*v, "{}: {}", v->path, sel.error().message);
  }
  if (const Field* v = km.find("api_server")) {
    d.apiServer = string(*v);
    if (!d.apiServer.empty() && d.apiServer.rfind("https://", 0) != 0)
      fail(*v, "{}: expected an https:// URL, got {}", v->path, shown(v->value));
  }
  if (const Field* v = km.find("token_file")) d.tokenFile = absolutePath(*v);
  if (const Field* v = km.find("ca_file")) d.caFile = absolutePath(*v);
  if (const Field* v = km.find("cgroup_root")) d.cgroupRoot = absolutePath(*v);
  if (d.nodeNameEnv.empty()) fail(*k, "{}: node_name_env must not be empty", k->path);
  c.kubernetes = std::move(d);
}

Dns Parser::dns(const Field& f) const {
  const Fields m = fields(f, {"servers", "min_refresh", "max_refresh", "grace"});
  Dns d;
  if (const Field* v = m.find("servers")) {
    for (const Field& item : list(*v)) {
      std::string text = string(item);
      std::string host = text;
      auto colon = text.find(':');
      if (colon != std::string::npos) {
        host = text.substr(0, colon);
        std::string port = text.substr(colon + 1);
        if (port.empty() || port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos ||
            std::stoul(port) == 0 || std::stoul(port) > 65535)
          fail(item, "{}: expected IPv4 or IPv4:port, got {}", item.path, shown(item.value));
      }
      in_addr a{};
      if (::inet_pton(AF_INET, host.c_str(), &a) != 1)
        fail(item, "{}: expected an IPv4 resolver address (IPv4 or IPv4:port), got {}", item.path, shown(item.value));
      d.servers.push_back(text);
    }
  }
  if (const Field* v = m.find("min_refresh")) d.minRefresh = duration(*v);
  if (const Field* v = m.find("max_refresh")) d.maxRefresh = duration(*v);
  if (const Field* v = m.find("grace")) d.grace = duration(*v);
  if (d.minRefresh > d.maxRefresh)
    fail(f, "{}: min_refresh ({}s) is above max_refresh ({}s)", f.path, d.minRefresh.count(), d.maxRefresh.count());
  return d;
}

BpfOptions Parser::bpf(const Field& f) const {
  const Fields m = fields(f, {"keep_on_exit", "refuse_quic", "pin_root"});
  BpfOptions b;
  if (const Field* v = m.find("pin_root")) {
    b.pinRoot = absolutePath(*v);
    if (b.pinRoot.rfind("/sys/fs/bpf/", 0) != 0)
      fail(*v, "{}: must be a directory under /sys/fs/bpf/, got {}", v->path, shown(v->value));
  }
  if (const Field* v = m.find("keep_on_exit")) b.keepOnExit = boolean(*v);
  if (const Field* v = m.find("refuse_quic")) b.refuseQuic = boolean(*v);
  return b;
}

std::string describeSecret(const SecretRef& s) {
  if (!s.file.empty()) return "secret from file " + s.file;
  if (!s.env.empty()) return "secret from $" + s.env;
  return "secret inline";
}

// Closes a file descriptor on every return path.
class FileDescriptor {
 public:
  explicit FileDescriptor(int fd) : fd_(fd) {}
  FileDescriptor(const FileDescriptor&) = delete;
  FileDescriptor& operator=(const FileDescriptor&) = delete;
  ~FileDescriptor() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }

 private:
  int fd_;
};

}  // namespace

namespace {

// The line (1-based) where a second YAML document starts, or 0. Found on the
// text: yaml-cpp 0.7's LoadAll() loops without end on some inputs ("{},"),
// so only the first document is ever handed to the parser.
int secondDocumentLine(std::string_view text) {
  bool content = false, ended = false;
  int line = 0;
  while (!text.empty()) {
    ++line;
    auto nl = text.find('\n');
    std::string_view l = text.substr(0, nl);
    text = nl == std::string_view::npos ? std::string_view() : text.substr(nl + 1);
    if (!l.empty() && l.back() == '\r') l.remove_suffix(1);
    bool marker = l.substr(0, 3) == "---" && (l.size() == 3 || l[3] == ' ' || l[3] == '\t');
    bool end = l.substr(0, 3) == "..." && l.find_first_not_of(" \t", 3) == std::string_view::npos;
    auto first = l.find_first_not_of(" \t");
    bool blank = first == std::string_view::npos || l[first] == '#';
    if (marker) {
      if (content || ended) return line;
      content = l.find_first_not_of(" \t", 3) != std::string_view::npos && l[l.find_first_not_of(" \t", 3)] != '#';
      continue;
    }
    if (end) {
      ended = true;
      continue;
    }
    if (blank || l[0] == '%') continue;  // comments, directives
    if (ended) return line;
    content = true;
  }
  return 0;
}

}  // namespace

Result<Config> parseConfig(std::string_view yaml, const std::string& fileName, bool fileIsPrivate) {
  if (int second = secondDocumentLine(yaml); second > 0)
    return makeError("{}:{}:1: only one YAML document is allowed", fileName, second);
  YAML::Node document;
  try {
    document = YAML::Load(std::string(yaml));
  } catch (const YAML::ParserException& e) {
    return makeError("{}", located(fileName, e.mark, "YAML syntax error: " + e.msg));
  }
  try {
    Config c = Parser(fileName, fileIsPrivate).parse(document);
    c.path = fileName;
    return c;
  } catch (const ParseFailure& failure) {
    return makeError("{}", failure.message);
  } catch (const YAML::Exception& e) {
    // Not expected: every access above checks the node type first.
    return makeError("{}", located(fileName, e.mark, e.msg));
  }
}

Result<Config> loadConfig(const std::string& path) {
  const FileDescriptor fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) return sysError(errno, "{}: cannot open config", path);
  // fstat the open file, not the path, so the mode is that of what is read.
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return sysError(errno, "{}: cannot stat config", path);
  std::string text;
  char buffer[16 * 1024];
  while (true) {
    const ssize_t n = ::read(fd.get(), buffer, sizeof buffer);
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      return sysError(errno, "{}: cannot read config", path);
    }
    text.append(buffer, static_cast<std::size_t>(n));
  }
  // 0600 or stricter: no group or other bits at all. A pipe or other special
  // file (`atlasgate check <(...)`) is never private.
  const bool isPrivate = S_ISREG(st.st_mode) && (st.st_mode & (S_IRWXG | S_IRWXO)) == 0;
  return parseConfig(text, path, isPrivate);
}

std::string describeConfig(const Config& c) {
  auto joined = [](const std::vector<std::string>& items, std::string_view none) {
    return items.empty() ? std::string(none) : fmt::format("{}", fmt::join(items, ", "));
  };
  auto yesNo = [](bool b) { return b ? "yes" : "no"; };

  std::string out;
  auto to = std::back_inserter(out);
  fmt::format_to(to, "config {}\n", c.path);
  fmt::format_to(to, "listen: port {}, admin {}{}\n", c.listen.port, c.listen.admin.value_or("off"),
                 c.listen.adminTokenFile.empty() ? "" : " (token from " + c.listen.adminTokenFile + ")");
  fmt::format_to(to, "state dir: {}; audit log: {}; log level: {}\n", c.stateDir,
                 c.auditLog == "-" ? "stdout" : c.auditLog, c.logLevel);
  fmt::format_to(to, "agents: cgroup {}, attach {}\n", c.agents.cgroup, joined(c.agents.attach, "none"));
  fmt::format_to(to, "targets: {}\n", c.targets.size());
  for (const Target& t : c.targets) {
    fmt::format_to(to, "  {} (upstream port {}, resolve {}, addresses {}, upstream CA {})\n", t.host, t.upstreamPort,
                   yesNo(t.resolve), joined(t.addresses, "none"), t.upstreamCa.value_or("system trust store"));
    if (t.credentials.empty()) fmt::format_to(to, "    no credentials: requests pass unchanged\n");
    for (const Credential& k : t.credentials) {
      const SecretRef& secret = k.serviceAccount ? k.serviceAccount->clientSecret : k.apiKey->privateKey;
      fmt::format_to(to, "    credential {}: {} ({}; agents {})\n", k.name, k.describe(), describeSecret(secret),
                     joined(k.agents, "all"));
    }
  }
  fmt::format_to(to, "rules: {} (default {})\n", c.rules.list.size(), actionName(c.rules.defaultAction));
  const Limits& l = c.limits;
  fmt::format_to(to,
                 "limits: header {} bytes / {} headers, body {} bytes; timeouts handshake {}s, header {}s, "
                 "idle {}s, request {}s, upstream {}s\n",
                 l.maxHeaderBytes, l.maxHeaders, l.maxBodyBytes, l.handshakeTimeout.count(), l.headerTimeout.count(),
                 l.idleTimeout.count(), l.requestTimeout.count(), l.upstreamTimeout.count());
  fmt::format_to(to,
                 "caps: connections {} ({} per agent); held requests {} ({} per agent, {} body bytes); "
                 "phantom tokens {} per agent; upstream connections {} per target, {} per agent (connect "
                 "timeout {}s, queue timeout {}s)\n",
                 l.maxConnections, l.maxConnectionsPerAgent, l.maxHeldRequests, l.maxHeldPerAgent,
                 l.maxHeldBodyBytes, l.maxPhantomTokensPerAgent, l.maxUpstreamConnections,
                 l.maxUpstreamConnectionsPerAgent,
                 l.upstreamConnectTimeout.count(), l.upstreamQueueTimeout.count());
  fmt::format_to(to, "bpf: pins under {}, keep on exit {}, refuse QUIC {}\n", c.bpf.pinRoot, yesNo(c.bpf.keepOnExit),
                 yesNo(c.bpf.refuseQuic));
  return out;
}

}  // namespace atlasgate::config
