#include "config/config.h"

#include "common/fd.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <sched.h>
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
#include <limits>
#include <map>
#include <regex>
#include <span>
#include <type_traits>
#include <utility>
#include <variant>

#include "common/text.h"
#include "labels/labels.h"

namespace atlasgate::config {

std::string_view actionName(Action a) {
  switch (a) {
    case Action::Allow: return "allow";
    case Action::Block: return "block";
    case Action::RateLimit: return "rate_limit";
    case Action::Approve: return "approve";
    case Action::LogOnly: return "log_only";
  }
  return "unknown";
}

std::string Credential::describe() const {
  if (serviceAccount) return "service_account:" + serviceAccount->clientId;
  if (apiKey) return "api_key:" + apiKey->publicKey;
  if (databaseUser) return "database_user:" + databaseUser->username;
  if (temporaryUser) return "temporary_user:" + temporaryUser->groupId;
  return "none";
}

std::string_view protocolName(Protocol p) { return p == Protocol::Mongodb ? "mongodb" : "https"; }

namespace {

using Names = std::vector<std::string_view>;

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
    case YAML::NodeType::Null: return "nothing";
    case YAML::NodeType::Scalar: return "a scalar";
    case YAML::NodeType::Sequence: return "a list";
    case YAML::NodeType::Map: return "a map";
    case YAML::NodeType::Undefined: break;
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

bool isIdentifierChar(char ch) { return std::isalnum(static_cast<unsigned char>(ch)) || ch == '_'; }

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
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
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

YAML::Mark keyMark(const Field& f) { return f.key.IsDefined() && !f.key.Mark().is_null() ? f.key.Mark() : markOf(f); }

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
const Field& later(const Field& a, const Field& b) { return keyMark(a).pos > keyMark(b).pos ? a : b; }

std::string located(const std::string& file, const YAML::Mark& m, std::string_view message) {
  const int line = m.is_null() ? 1 : m.line + 1;
  const int column = m.is_null() ? 1 : m.column + 1;
  return fmt::format("{}:{}:{}: {}", file, line, column, message);
}

// ---- schema tables --------------------------------------------------------
//
// A flat section (a map of keys to scalars and lists) is a table with one row
// per key, and the row is the only place its key is spelled: it drives the
// allowed keys (and the "unknown key" message), parsing and validation,
// describeConfig() and schemaKeys() (which a unit test holds against the
// README's table). A row stores through a member pointer; what no member
// pointer can take (a section of its own, an enum) goes through Custom.

class Parser;

enum class Kind {
  String,    // any string
  NonEmpty,  // a string other than ""
  Path,      // an absolute path
  LogPath,   // an absolute path, or "-" for stdout
  Address,   // ADDRESS:PORT
  Choice,    // one of Row::choices
  Bool,      // true or false
  Uint,      // an integer within Row::bounds
  Port,      // an integer from 1 to 65535
  Duration,  // 30s, 2m, 1h, 500ms; within Row::bounds (seconds) when they are set
  List,      // a list of strings
  PathList,  // a list of absolute paths
  Section,   // a map of its own
};

std::string_view kindName(Kind k) {
  switch (k) {
    case Kind::String: return "string";
    case Kind::NonEmpty: return "non-empty string";
    case Kind::Path: return "path";
    case Kind::LogPath: return "path or -";
    case Kind::Address: return "ADDRESS:PORT";
    case Kind::Choice: return "choice";
    case Kind::Bool: return "bool";
    case Kind::Uint: return "integer";
    case Kind::Port: return "port";
    case Kind::Duration: return "duration";
    case Kind::List: return "list";
    case Kind::PathList: return "list of paths";
    case Kind::Section: return "section";
  }
  return "?";
}

// Inclusive. {0, 0}: the kind's own (Port: 1 to 65535; Duration: 1s to a year).
struct Bounds {
  std::uint64_t min = 0;
  std::uint64_t max = 0;
};

template <class S>
struct Row;

// What a row stores through when a member pointer will not do: a section of
// its own (parse, describe, keys), or a type the kinds do not store (value).
template <class S>
struct Custom {
  void (*parse)(const Parser&, const Row<S>&, const Field&, S&);
  std::string (*value)(const Row<S>&, const S&) = nullptr;  // as YAML spells it (schemaKeys' default)
  void (*describe)(const S&, std::string& out) = nullptr;   // its lines of describeConfig()
  void (*keys)(const std::string& path, std::vector<SchemaKey>& out) = nullptr;  // a section's own rows
};

template <class S>
using Slot = std::variant<std::string S::*, std::optional<std::string> S::*, std::vector<std::string> S::*, bool S::*,
                          std::uint16_t S::*, std::uint32_t S::*, std::uint64_t S::*, std::chrono::seconds S::*,
                          std::chrono::milliseconds S::*, Custom<S>>;

// Validation beyond the kind, with the section as parsed so far: called once
// the value is stored, or for a list on each item as it is.
template <class S>
using Check = void (*)(const Parser&, const Field&, const S&);

template <class S>
struct Row {
  std::string_view key;
  Slot<S> slot;
  Kind kind;
  Bounds bounds = {};
  std::span<const std::string_view> choices = {};
  Check<S> check = nullptr;
  bool nullable = false;       // "key: ~" keeps the default
  bool required = false;       // leaving the key out is an error
  std::string_view show = {};  // describeConfig(): "{}" is the value; "" = not shown
  std::string_view doc = {};
};

template <class S>
struct Table {
  std::span<const Row<S>> rows;
  std::string_view show = {};  // describeConfig(): the prefix of the section's line
  void (*after)(const Parser&, const Field& section, const S&) = nullptr;  // checks across keys
};

template <class T>
struct MemberOf;
template <class S, class M>
struct MemberOf<M S::*> {
  using type = M;
};

template <class T>
constexpr bool isDuration = std::is_same_v<T, std::chrono::seconds> || std::is_same_v<T, std::chrono::milliseconds>;

// A row's kind fits the member it stores into, and integer bounds fit its type.
template <class S>
constexpr bool wellFormed(const Row<S>& row) {
  return std::visit(
      [&](auto slot) {
        using T = decltype(slot);
        if constexpr (std::is_same_v<T, Custom<S>>) {
          return slot.parse != nullptr;
        } else {
          using M = typename MemberOf<T>::type;
          if constexpr (std::is_same_v<M, bool>) {
            return row.kind == Kind::Bool;
          } else if constexpr (std::is_integral_v<M>) {
            if (row.kind == Kind::Port) return std::is_same_v<M, std::uint16_t>;
            return row.kind == Kind::Uint && row.bounds.min <= row.bounds.max && row.bounds.max != 0 &&
                   row.bounds.max <= std::numeric_limits<M>::max();
          } else if constexpr (isDuration<M>) {
            return row.kind == Kind::Duration && row.bounds.min <= row.bounds.max;
          } else if constexpr (std::is_same_v<M, std::vector<std::string>>) {
            return row.kind == Kind::List || row.kind == Kind::PathList;
          } else {
            return row.kind == Kind::String || row.kind == Kind::NonEmpty || row.kind == Kind::Path ||
                   row.kind == Kind::LogPath || row.kind == Kind::Address ||
                   (row.kind == Kind::Choice && !row.choices.empty());
          }
        }
      },
      row.slot);
}

template <class S>
constexpr bool wellFormed(const Table<S>& t) {
  return std::all_of(t.rows.begin(), t.rows.end(), [](const Row<S>& r) { return wellFormed(r); });
}

template <class S>
constexpr Bounds boundsOf(const Row<S>& row) {
  if (row.kind == Kind::Port) return {1, 65535};
  if (row.kind == Kind::Duration && row.bounds.max == 0) return {1, kMaxDurationSeconds};
  return row.bounds;
}

// ---- the parser -----------------------------------------------------------

class Parser {
 public:
  Parser(std::string file, bool fileIsPrivate) : file_(std::move(file)), fileIsPrivate_(fileIsPrivate) {}

  Config parse(const YAML::Node& root) const;

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
  Fields fields(const Field& f, const Names& allowed) const;
  std::vector<Field> list(const Field& f) const;
  std::vector<Field> oneOrMany(const Field& f) const;
  const Field* require(const Fields& m, std::string_view key, std::string_view hint = {}) const;
  const Field* exactlyOne(const Fields& m, const Names& keys, std::string_view what) const;

  // Scalars.
  std::string string(const Field& f) const;
  std::string nonEmpty(const Field& f) const;
  std::string filter(const Field& f) const;
  std::string name(const Field& f) const;
  std::uint64_t integer(const Field& f, std::uint64_t min, std::uint64_t max) const;
  bool boolean(const Field& f) const;
  std::chrono::seconds duration(const Field& f) const;
  std::string absolutePath(const Field& f) const;
  std::string adminAddress(const Field& f) const;
  std::size_t choice(const Field& f, const Names& options) const;
  template <class T>
  T choice(const Field& f, std::initializer_list<std::pair<std::string_view, T>> options) const;

  // Sections read from a table.
  template <class S>
  void section(const Field& f, const Table<S>& t, S& s) const;

  // Sections that are not flat.
  std::vector<Target> targets(const Field& f) const;
  Rules rules(const Field& f, const std::vector<Target>& targets) const;

 private:
  template <class S>
  void store(const Row<S>& row, const Field& f, S& s) const;
  template <class S, class M>
  void assign(const Row<S>& row, const Field& f, const S& s, M& out) const;
  std::string text(Kind kind, std::span<const std::string_view> choices, const Field& f) const;

  Target target(const Field& f, std::map<std::string, int>& hostLines) const;
  std::vector<std::string> addresses(const Field& f) const;
  std::string dnsName(const Field& f) const;
  std::string hostPattern(const Field& f) const;
  std::vector<Credential> credentials(const Field& f, Protocol protocol) const;
  Credential namedCredential(const Field& f, std::map<std::string, int>& nameLines, Protocol protocol) const;
  void credentialKind(const Fields& m, Credential& c, Protocol protocol) const;
  DatabaseUser databaseUser(const Field& f) const;
  TemporaryUser temporaryUser(const Field& f) const;
  void mongodbFilters(const Fields& m, Rule& r) const;
  void checkTemporaryUsers(const Field& f, const std::vector<Target>& targets) const;
  SecretRef secret(const Fields& m, const std::string& stem) const;
  std::vector<std::string> globs(const Field& f) const;
  Rule rule(const Field& f, std::size_t index, const std::vector<Target>& targets) const;
  std::vector<std::string> presets(const Field& f) const;
  void ruleAction(const Fields& m, Rule& r) const;
  void ruleFilters(const Fields& m, const std::vector<Target>& targets, Rule& r) const;
  std::vector<std::string> ruleHosts(const Field& f, const std::vector<Target>& targets) const;
  std::string ruleCredential(const Field& f, const Rule& r, const std::vector<Target>& targets) const;
  Condition condition(const Field& f, const std::string& path, Rule& r) const;
  Rate rate(const Field& f) const;

  std::string file_;
  bool fileIsPrivate_;
};

Fields Parser::fields(const Field& f, const Names& allowed) const {
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
const Field* Parser::exactlyOne(const Fields& m, const Names& keys, std::string_view what) const {
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

// A string that narrows what a rule applies to: "" would read as "any", which
// leaving the key out already says (see oneOrMany).
std::string Parser::filter(const Field& f) const {
  std::string s = string(f);
  if (s.empty()) fail(f, "{}: is empty; leave {} out to match any", f.path, f.key.Scalar());
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

// The index of the option f names, compared case-insensitively.
std::size_t Parser::choice(const Field& f, const Names& options) const {
  const std::string given = f.value.IsScalar() ? toLower(f.value.Scalar()) : std::string();
  for (std::size_t i = 0; i < options.size(); ++i) {
    if (f.value.IsScalar() && given == options[i]) return i;
  }
  const std::string suggestion = f.value.IsScalar() ? didYouMean(given, options) : std::string();
  fail(f, "{}: expected one of {}, got {}{}", f.path, joinNames(options), shown(f.value), suggestion);
}

template <class T>
T Parser::choice(const Field& f, std::initializer_list<std::pair<std::string_view, T>> options) const {
  Names names;
  for (const auto& option : options) names.push_back(option.first);
  return std::data(options)[choice(f, names)].second;
}

// ---- table-driven sections ------------------------------------------------

template <class S>
void Parser::section(const Field& f, const Table<S>& t, S& s) const {
  Names keys;
  for (const Row<S>& row : t.rows) keys.push_back(row.key);
  const Fields m = fields(f, keys);
  for (const Row<S>& row : t.rows) {
    const Field* v = m.find(row.key);
    if (v == nullptr && row.required) fail(keyMark(f), "{}: is required ({})", childPath(f.path, row.key), row.doc);
    if (v == nullptr || (row.nullable && v->value.IsNull())) continue;
    store(row, *v, s);
  }
  if (t.after != nullptr) t.after(*this, f, s);
}

template <class S>
void Parser::store(const Row<S>& row, const Field& f, S& s) const {
  std::visit(
      [&](auto slot) {
        if constexpr (std::is_same_v<decltype(slot), Custom<S>>) {
          slot.parse(*this, row, f, s);
        } else {
          assign(row, f, s, s.*slot);
          using M = typename MemberOf<decltype(slot)>::type;
          if (row.check != nullptr && !std::is_same_v<M, std::vector<std::string>>) row.check(*this, f, s);
        }
      },
      row.slot);
}

template <class S, class M>
void Parser::assign(const Row<S>& row, const Field& f, const S& s, M& out) const {
  if constexpr (std::is_same_v<M, bool>) {
    out = boolean(f);
  } else if constexpr (std::is_integral_v<M>) {
    const Bounds b = boundsOf(row);
    out = static_cast<M>(integer(f, b.min, b.max));
  } else if constexpr (isDuration<M>) {
    const std::chrono::seconds d = duration(f);
    const Bounds b = row.bounds;
    if (b.max != 0 && (static_cast<std::uint64_t>(d.count()) < b.min || static_cast<std::uint64_t>(d.count()) > b.max))
      fail(f, "{}: expected between {}s and {}s", f.path, b.min, b.max);
    out = d;
  } else if constexpr (std::is_same_v<M, std::vector<std::string>>) {
    out.clear();
    for (const Field& item : list(f)) {
      out.push_back(text(row.kind == Kind::PathList ? Kind::Path : Kind::String, {}, item));
      if (row.check != nullptr) row.check(*this, item, s);
    }
  } else {
    out = text(row.kind, row.choices, f);
  }
}

std::string Parser::text(Kind kind, std::span<const std::string_view> choices, const Field& f) const {
  switch (kind) {
    case Kind::NonEmpty: return nonEmpty(f);
    case Kind::Path: return absolutePath(f);
    case Kind::LogPath: return string(f) == "-" ? std::string("-") : absolutePath(f);
    case Kind::Address: return adminAddress(f);
    case Kind::Choice: return std::string(choices[choice(f, Names(choices.begin(), choices.end()))]);
    default: return string(f);
  }
}

std::string yesNo(bool b) { return b ? "yes" : "no"; }

std::string joined(const std::vector<std::string>& items, std::string_view none) {
  return items.empty() ? std::string(none) : fmt::format("{}", fmt::join(items, ", "));
}

// A row's value as describeConfig() shows it; nullopt leaves the row out.
template <class S>
std::optional<std::string> shownValue(const Row<S>& row, const S& s) {
  return std::visit(
      [&](auto slot) -> std::optional<std::string> {
        if constexpr (std::is_same_v<decltype(slot), Custom<S>>) {
          return std::nullopt;
        } else {
          using M = typename MemberOf<decltype(slot)>::type;
          const M& v = s.*slot;
          if constexpr (std::is_same_v<M, bool>)
            return yesNo(v);
          else if constexpr (std::is_integral_v<M>)
            return fmt::format("{}", v);
          else if constexpr (isDuration<M>)
            return fmt::format("{}", v.count());
          else if constexpr (std::is_same_v<M, std::vector<std::string>>)
            return joined(v, "none");
          else if constexpr (std::is_same_v<M, std::optional<std::string>>)
            return v.value_or("off");
          else if (v.empty())
            return std::nullopt;
          else
            return row.kind == Kind::LogPath && v == "-" ? std::string("stdout") : v;
        }
      },
      row.slot);
}

// A section's lines: the shown rows of a table make one line (a fragment
// may start another with "\n"); a nested section ends it and adds its own.
template <class S>
void describeTable(const Table<S>& t, const S& s, std::string& out) {
  std::string line;
  auto endLine = [&] {
    if (!line.empty()) out += fmt::format("{}{}\n", t.show, line);
    line.clear();
  };
  for (const Row<S>& row : t.rows) {
    const auto* custom = std::get_if<Custom<S>>(&row.slot);
    if (custom != nullptr && custom->describe != nullptr) {
      endLine();
      custom->describe(s, out);
    } else if (!row.show.empty()) {
      if (auto value = shownValue(row, s)) line += fmt::format(fmt::runtime(row.show), *value);
    }
  }
  endLine();
}

// A row's default (its value in a default-constructed section), as YAML
// would spell it.
template <class S>
std::string defaultOf(const Row<S>& row) {
  const S s{};
  return std::visit(
      [&](auto slot) -> std::string {
        if constexpr (std::is_same_v<decltype(slot), Custom<S>>) {
          return slot.value != nullptr ? slot.value(row, s) : std::string();
        } else {
          using M = typename MemberOf<decltype(slot)>::type;
          const M& v = s.*slot;
          if constexpr (std::is_same_v<M, bool>)
            return v ? "true" : "false";
          else if constexpr (std::is_integral_v<M>)
            return fmt::format("{}", v);
          else if constexpr (std::is_same_v<M, std::chrono::seconds>)
            return fmt::format("{}s", v.count());
          else if constexpr (std::is_same_v<M, std::chrono::milliseconds>)
            return v.count() % 1000 == 0 ? fmt::format("{}s", v.count() / 1000) : fmt::format("{}ms", v.count());
          else if constexpr (std::is_same_v<M, std::vector<std::string>>)
            return fmt::format("[{}]", fmt::join(v, ", "));
          else if constexpr (std::is_same_v<M, std::optional<std::string>>)
            return v.value_or("");
          else
            return v;
        }
      },
      row.slot);
}

template <class S>
void listKeys(const Table<S>& t, const std::string& prefix, std::vector<SchemaKey>& out) {
  for (const Row<S>& row : t.rows) {
    const std::string path = childPath(prefix, row.key);
    const Bounds b = boundsOf(row);
    out.push_back(SchemaKey{path, std::string(kindName(row.kind)), defaultOf(row), b.min, b.max, std::string(row.doc)});
    const auto* custom = std::get_if<Custom<S>>(&row.slot);
    if (custom != nullptr && custom->keys != nullptr) custom->keys(path, out);
  }
}

// A key whose value is a table of its own, stored in member.
template <class S, class Sub, Sub S::*member, const Table<Sub>& table>
constexpr Custom<S> nested() {
  return {
      .parse = [](const Parser& p, const Row<S>&, const Field& f, S& s) { p.section(f, table, s.*member); },
      .describe = [](const S& s, std::string& out) { describeTable(table, s.*member, out); },
      .keys = [](const std::string& path, std::vector<SchemaKey>& out) { listKeys(table, path, out); },
  };
}

// The same for an optional section that remembers where it was written.
template <class S, class Sub, std::optional<Sub> S::*member, const Table<Sub>& table>
constexpr Custom<S> optionalNested() {
  return {
      .parse =
          [](const Parser& p, const Row<S>&, const Field& f, S& s) {
            Sub d;
            d.loc = p.loc(keyMark(f));
            p.section(f, table, d);
            s.*member = std::move(d);
          },
      .describe =
          [](const S& s, std::string& out) {
            if (s.*member) describeTable(table, *(s.*member), out);
          },
      .keys = [](const std::string& path, std::vector<SchemaKey>& out) { listKeys(table, path, out); },
  };
}

// A key whose table stores into the same struct as its parent's.
template <class S, const Table<S>& table>
constexpr Custom<S> inPlace() {
  return {
      .parse = [](const Parser& p, const Row<S>&, const Field& f, S& s) { p.section(f, table, s); },
      .describe = [](const S& s, std::string& out) { describeTable(table, s, out); },
      .keys = [](const std::string& path, std::vector<SchemaKey>& out) { listKeys(table, path, out); },
  };
}

// ---- the tables -------------------------------------------------------------

void needsAdmin(const Parser& p, const Field& f, const Listen& l) {
  if (!l.admin) p.fail(f, "{}: needs listen.admin (the endpoint it protects)", f.path);
}

void concreteConsole(const Parser& p, const Field& f, const Listen& l) {
  if (l.console && (l.console->starts_with("0.0.0.0:") || l.console->starts_with("[::]:")))
    p.fail(f, "{}: bind one address (127.0.0.1:15445): the console refuses requests whose Host is not its address",
           f.path);
}

constexpr Row<Listen> kListenRows[] = {
    {.key = "port",
     .slot = &Listen::port,
     .kind = Kind::Port,
     .show = "port {}",
     .doc = "loopback port connections are redirected to"},
    {.key = "admin",
     .slot = &Listen::admin,
     .kind = Kind::Address,
     .nullable = true,
     .show = ", admin {}",
     .doc = "optional: GET /metrics (Prometheus), GET /healthz"},
    {.key = "admin_token_file",
     .slot = &Listen::adminTokenFile,
     .kind = Kind::Path,
     .check = needsAdmin,
     .nullable = true,
     .show = " (token from {})",
     .doc = "optional: /metrics then needs \"Authorization: Bearer <token>\""},
    {.key = "console",
     .slot = &Listen::console,
     .kind = Kind::Address,
     .check = concreteConsole,
     .nullable = true,
     .show = ", console {}",
     .doc = "optional: the web console (loopback; sign in with `atlasgate console-url`)"},
    {.key = "console_session",
     .slot = &Listen::consoleSession,
     .kind = Kind::Duration,
     .bounds = {1, 7 * 24 * 3600},
     .doc = "how long a console sign-in lasts (default 8h)"},
};
constexpr Table<Listen> kListen{.rows = kListenRows, .show = "listen: "};

void noParentSegment(const Parser& p, const Field& f, const Agents& a) {
  if (("/" + a.cgroup + "/").find("/../") != std::string::npos) p.fail(f, "{}: must not contain \"..\"", f.path);
}

constexpr Row<Agents> kAgentsRows[] = {
    {.key = "cgroup",
     .slot = &Agents::cgroup,
     .kind = Kind::NonEmpty,
     .check = noParentSegment,
     .show = "cgroup {}",
     .doc = "parent of launcher-made agent cgroups (relative to the cgroup2 mount, or absolute)"},
    {.key = "attach",
     .slot = &Agents::attach,
     .kind = Kind::PathList,
     .show = ", attach {}",
     .doc = "further cgroups to attach at start (absolute)"},
};
constexpr Table<Agents> kAgents{.rows = kAgentsRows, .show = "agents: "};

// The order of the rows is that of describeConfig()'s two lines.
constexpr Row<Limits> kLimitsRows[] = {
    {.key = "max_header_bytes",
     .slot = &Limits::maxHeaderBytes,
     .kind = Kind::Uint,
     .bounds = {1, UINT32_MAX},
     .show = "header {} bytes",
     .doc = "431 beyond"},
    {.key = "max_headers",
     .slot = &Limits::maxHeaders,
     .kind = Kind::Uint,
     .bounds = {1, UINT32_MAX},
     .show = " / {} headers",
     .doc = "431 beyond"},
    {.key = "max_body_bytes",
     .slot = &Limits::maxBodyBytes,
     .kind = Kind::Uint,
     .bounds = {1, UINT64_MAX},
     .show = ", body {} bytes",
     .doc = "413 beyond"},
    {.key = "handshake_timeout",
     .slot = &Limits::handshakeTimeout,
     .kind = Kind::Duration,
     .show = "; timeouts handshake {}s",
     .doc = "the agent's TLS handshake must end within this"},
    {.key = "header_timeout",
     .slot = &Limits::headerTimeout,
     .kind = Kind::Duration,
     .show = ", header {}s",
     .doc = "the whole request head must arrive within this (slow loris)"},
    {.key = "idle_timeout",
     .slot = &Limits::idleTimeout,
     .kind = Kind::Duration,
     .show = ", idle {}s",
     .doc = "a keep-alive connection idle this long is closed"},
    {.key = "request_timeout",
     .slot = &Limits::requestTimeout,
     .kind = Kind::Duration,
     .show = ", request {}s",
     .doc = "one request/response exchange"},
    {.key = "upstream_timeout",
     .slot = &Limits::upstreamTimeout,
     .kind = Kind::Duration,
     .show = ", upstream {}s",
     .doc = "upstream response head must arrive within this"},
    {.key = "max_connections",
     .slot = &Limits::maxConnections,
     .kind = Kind::Uint,
     .bounds = {1, 1u << 20},
     .show = "\ncaps: connections {}",
     .doc = "agent connections, whole daemon: one over it is closed at once"},
    {.key = "max_connections_per_agent",
     .slot = &Limits::maxConnectionsPerAgent,
     .kind = Kind::Uint,
     .bounds = {1, 1u << 20},
     .show = " ({} per agent)",
     .doc = "... of one agent (its attached root)"},
    {.key = "max_held_requests",
     .slot = &Limits::maxHeldRequests,
     .kind = Kind::Uint,
     .bounds = {1, 1u << 16},
     .show = "; held requests {}",
     .doc = "requests held by approve rules, whole daemon (429 beyond)"},
    {.key = "max_held_per_agent",
     .slot = &Limits::maxHeldPerAgent,
     .kind = Kind::Uint,
     .bounds = {1, 1u << 16},
     .show = " ({} per agent",
     .doc = "... of one agent"},
    {.key = "max_held_body_bytes",
     .slot = &Limits::maxHeldBodyBytes,
     .kind = Kind::Uint,
     .bounds = {1, UINT64_MAX},
     .show = ", {} body bytes)",
     .doc = "sum of the bodies of held requests"},
    {.key = "max_phantom_tokens_per_agent",
     .slot = &Limits::maxPhantomTokensPerAgent,
     .kind = Kind::Uint,
     .bounds = {1, 1u << 20},
     .show = "; phantom tokens {} per agent",
     .doc = "live phantom tokens of one agent"},
    {.key = "max_upstream_connections",
     .slot = &Limits::maxUpstreamConnections,
     .kind = Kind::Uint,
     .bounds = {1, 1u << 16},
     .show = "; upstream connections {} per target",
     .doc = "per target: busy + idle + being opened"},
    {.key = "max_upstream_connections_per_agent",
     .slot = &Limits::maxUpstreamConnectionsPerAgent,
     .kind = Kind::Uint,
     .bounds = {1, 1u << 16},
     .show = ", {} per agent",
     .doc = "per target: busy for one agent at a time"},
    {.key = "upstream_connect_timeout",
     .slot = &Limits::upstreamConnectTimeout,
     .kind = Kind::Duration,
     .show = " (connect timeout {}s",
     .doc = "TCP connect + TLS handshake of one upstream connection"},
    {.key = "upstream_queue_timeout",
     .slot = &Limits::upstreamQueueTimeout,
     .kind = Kind::Duration,
     .show = ", queue timeout {}s)",
     .doc = "a request waits this long for a free upstream connection, then 503"},
};
constexpr Table<Limits> kLimits{.rows = kLimitsRows, .show = "limits: "};

void underBpffs(const Parser& p, const Field& f, const BpfOptions& b) {
  if (b.pinRoot.rfind("/sys/fs/bpf/", 0) != 0)
    p.fail(f, "{}: must be a directory under /sys/fs/bpf/, got {}", f.path, shown(f.value));
}

// The order of the rows is that of describeConfig()'s line.
constexpr Row<BpfOptions> kBpfRows[] = {
    {.key = "pin_root",
     .slot = &BpfOptions::pinRoot,
     .kind = Kind::Path,
     .check = underBpffs,
     .show = "pins under {}",
     .doc = "where maps, programs and links are pinned"},
    {.key = "keep_on_exit",
     .slot = &BpfOptions::keepOnExit,
     .kind = Kind::Bool,
     .show = ", keep on exit {}",
     .doc = "leave the programs attached on a clean exit, so agents stay redirected (fail closed)"},
    {.key = "refuse_quic",
     .slot = &BpfOptions::refuseQuic,
     .kind = Kind::Bool,
     .show = ", refuse QUIC {}",
     .doc = "UDP/443 to a target fails, so HTTP/3 clients fall back to TCP"},
};
constexpr Table<BpfOptions> kBpf{.rows = kBpfRows, .show = "bpf: "};

// IPv4 or IPv4:port.
void resolverAddress(const Parser& p, const Field& item, const Dns&) {
  const std::string text = item.value.Scalar();
  std::string host = text;
  if (const auto colon = text.find(':'); colon != std::string::npos) {
    host = text.substr(0, colon);
    const std::string port = text.substr(colon + 1);
    if (port.empty() || port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos ||
        std::stoul(port) == 0 || std::stoul(port) > 65535)
      p.fail(item, "{}: expected IPv4 or IPv4:port, got {}", item.path, shown(item.value));
  }
  in_addr a{};
  if (::inet_pton(AF_INET, host.c_str(), &a) != 1)
    p.fail(item, "{}: expected an IPv4 resolver address (IPv4 or IPv4:port), got {}", item.path, shown(item.value));
}

void refreshInOrder(const Parser& p, const Field& f, const Dns& d) {
  if (d.minRefresh > d.maxRefresh)
    p.fail(f, "{}: min_refresh ({}s) is above max_refresh ({}s)", f.path, d.minRefresh.count(), d.maxRefresh.count());
}

constexpr Row<Dns> kDnsRows[] = {
    {.key = "servers",
     .slot = &Dns::servers,
     .kind = Kind::List,
     .check = resolverAddress,
     .doc = "IPv4[:port] resolvers; default /etc/resolv.conf"},
    {.key = "min_refresh",
     .slot = &Dns::minRefresh,
     .kind = Kind::Duration,
     .doc = "refresh at half the TTL, within min_refresh and max_refresh"},
    {.key = "max_refresh", .slot = &Dns::maxRefresh, .kind = Kind::Duration, .doc = "see min_refresh"},
    {.key = "grace",
     .slot = &Dns::grace,
     .kind = Kind::Duration,
     .doc = "a retired address stays intercepted this long"},
};
constexpr Table<Dns> kDns{.rows = kDnsRows, .after = refreshInOrder};

void podSelector(const Parser& p, const Field& f, const KubernetesDiscovery& d) {
  if (auto sel = labels::LabelSelector::parse(d.labelSelector); !sel) p.fail(f, "{}: {}", f.path, sel.error().message);
}

void httpsUrl(const Parser& p, const Field& f, const KubernetesDiscovery& d) {
  if (!d.apiServer.empty() && d.apiServer.rfind("https://", 0) != 0)
    p.fail(f, "{}: expected an https:// URL, got {}", f.path, shown(f.value));
}

void nodeNameSet(const Parser& p, const Field& f, const KubernetesDiscovery& d) {
  if (d.nodeNameEnv.empty()) p.fail(f, "{}: node_name_env must not be empty", f.path);
}

constexpr Row<KubernetesDiscovery> kKubernetesRows[] = {
    {.key = "node_name_env",
     .slot = &KubernetesDiscovery::nodeNameEnv,
     .kind = Kind::String,
     .doc = "the environment variable holding this node's name (downward API)"},
    {.key = "label_selector",
     .slot = &KubernetesDiscovery::labelSelector,
     .kind = Kind::String,
     .check = podSelector,
     .doc = "pods of this node that become agents, named namespace/pod"},
    {.key = "api_server",
     .slot = &KubernetesDiscovery::apiServer,
     .kind = Kind::String,
     .check = httpsUrl,
     .doc = "\"\" = in-cluster ($KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT)"},
    {.key = "token_file",
     .slot = &KubernetesDiscovery::tokenFile,
     .kind = Kind::Path,
     .doc = "the service account's token"},
    {.key = "ca_file",
     .slot = &KubernetesDiscovery::caFile,
     .kind = Kind::Path,
     .doc = "the service account's CA certificate"},
    {.key = "cgroup_root",
     .slot = &KubernetesDiscovery::cgroupRoot,
     .kind = Kind::Path,
     .doc = "where kubelet's pod cgroups are; \"\" = the cgroup2 mount"},
};
constexpr Table<KubernetesDiscovery> kKubernetes{.rows = kKubernetesRows, .after = nodeNameSet};

void socketPathFits(const Parser& p, const Field& f, const ContainerDiscovery& d) {
  if (d.socket.size() >= 108) p.fail(f, "{}: too long for a Unix socket path", f.path);
}

void containerLabel(const Parser& p, const Field& f, const ContainerDiscovery& d) {
  if (auto sel = labels::parseContainerLabelFilter(d.label); !sel) p.fail(f, "{}: {}", f.path, sel.error().message);
}

void guardCgroupPath(const Parser& p, const Field& f, const ContainerDiscovery& d) {
  const std::string& g = d.guardCgroup;
  if (g.empty() || g.find("..") != std::string::npos ||
      g.find_first_of(std::string_view("\0\n", 2)) != std::string::npos || g == "/")
    p.fail(f, "{}: expected a cgroup path (not the root, no \"..\"), got {}", f.path, shown(f.value));
}

constexpr Row<ContainerDiscovery> kContainersRows[] = {
    {.key = "socket",
     .slot = &ContainerDiscovery::socket,
     .kind = Kind::Path,
     .check = socketPathFits,
     .doc = "the engine's Docker-compatible API (/run/podman/podman.sock, /run/docker.sock)"},
    {.key = "label",
     .slot = &ContainerDiscovery::label,
     .kind = Kind::String,
     .check = containerLabel,
     .doc = "key or key=value; such containers become agents, named container/<name>"},
    {.key = "guard_cgroup",
     .slot = &ContainerDiscovery::guardCgroup,
     .kind = Kind::String,
     .check = guardCgroupPath,
     .doc = "optional: the engine's cgroup parent, attached once"},
    {.key = "settle",
     .slot = &ContainerDiscovery::settle,
     .kind = Kind::Duration,
     .bounds = {1, 60},
     .doc = "how long a connection from under the guard waits for discovery to name it"},
};
constexpr Table<ContainerDiscovery> kContainers{.rows = kContainersRows};

constexpr Row<Config> kDiscoveryRows[] = {
    {.key = "kubernetes",
     .slot = optionalNested<Config, KubernetesDiscovery, &Config::kubernetes, kKubernetes>(),
     .kind = Kind::Section,
     .doc = "DaemonSet mode: pods of this node that match the selector are agents"},
    {.key = "containers",
     .slot = optionalNested<Config, ContainerDiscovery, &Config::containers, kContainers>(),
     .kind = Kind::Section,
     .doc = "the labelled containers of a local Podman or Docker engine are agents"},
};
constexpr Table<Config> kDiscovery{.rows = kDiscoveryRows};

// capture.share: a list of {from: GLOB, to: [GLOB, ...]}.
void parseCaptureShare(const Parser& p, const Row<Capture>&, const Field& f, Capture& c) {
  for (const Field& item : p.list(f)) {
    const Fields m = p.fields(item, {"from", "to"});
    CaptureShare s;
    s.from = p.nonEmpty(*p.require(m, "from", " (the agent whose captured credentials are shared)"));
    for (const Field& g : p.oneOrMany(*p.require(m, "to", " (the agents that may use them)")))
      s.to.push_back(p.nonEmpty(g));
    c.share.push_back(std::move(s));
  }
}

void describeCaptureShare(const Capture& c, std::string& out) {
  for (const CaptureShare& s : c.share)
    out += fmt::format("  captured credentials of {} shared with {}\n", s.from, joined(s.to, "nobody"));
}

void keyFileAbsolute(const Parser& p, const Field& f, const Capture& c) {
  if (!c.keyFile.empty() && c.keyFile.front() != '/') p.fail(f, "{}: expected an absolute path", f.path);
}

constexpr Row<Capture> kCaptureRows[] = {
    {.key = "enabled",
     .slot = &Capture::enabled,
     .kind = Kind::Bool,
     .show = "capture: {}",
     .doc = "minted credentials are kept in the vault and agents get phantoms"},
    {.key = "key_file",
     .slot = &Capture::keyFile,
     .kind = Kind::String,
     .check = keyFileAbsolute,
     .show = ", key file {}",
     .doc = "the vault's AES-256 key (0600); default state_dir/vault.key"},
    {.key = "max_response_bytes",
     .slot = &Capture::maxResponseBytes,
     .kind = Kind::Uint,
     .bounds = {4096, 64u << 20},
     .doc = "a minting response larger than this is withheld"},
    {.key = "challenge_holders",
     .slot = &Capture::challengeHolders,
     .kind = Kind::Bool,
     .doc = "an agent holding a captured API key is asked for it (Digest) on a call without credentials"},
    {.key = "share",
     .slot = Custom<Capture>{.parse = parseCaptureShare, .describe = describeCaptureShare},
     .kind = Kind::List,
     .doc = "[{from: AGENT_GLOB, to: [AGENT_GLOB]}]: agents that may use another's captured credentials"},
};
constexpr Table<Capture> kCapture{.rows = kCaptureRows};

constexpr std::string_view kLogLevels[] = {"debug", "info", "warn", "error"};
constexpr std::string_view kIntercepts[] = {"targets", "all-tls"};  // in the order of enum Intercept

// Exact and case-sensitive, unlike Kind::Choice.
void parseIntercept(const Parser& p, const Row<Config>& row, const Field& f, Config& c) {
  const std::string v = p.string(f);
  const auto it = std::find(row.choices.begin(), row.choices.end(), v);
  if (it == row.choices.end())
    p.fail(f, "{}: expected one of {}, got {}", f.path, joinNames(row.choices), shown(f.value));
  c.intercept = static_cast<Intercept>(it - row.choices.begin());
}

constexpr std::uint32_t kMaxWorkers = 64;

std::uint32_t availableCpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (::sched_getaffinity(0, sizeof set, &set) != 0) return 1;
  return static_cast<std::uint32_t>(CPU_COUNT(&set));
}

// An integer from 1 to 64, or "auto": the CPUs this process may run on.
void parseWorkers(const Parser& p, const Row<Config>&, const Field& f, Config& c) {
  if (f.value.IsScalar() && f.value.Scalar() == "auto") {
    c.workers = std::clamp<std::uint32_t>(availableCpus(), 1, kMaxWorkers);
    return;
  }
  if (!f.value.IsScalar() || !parseUnsigned<std::uint64_t>(f.value.Scalar()))
    p.fail(f, "{}: expected an integer from 1 to {} or auto, got {}", f.path, kMaxWorkers, shown(f.value));
  c.workers = static_cast<std::uint32_t>(p.integer(f, 1, kMaxWorkers));
}

std::string workersText(const Row<Config>&, const Config& c) { return std::to_string(c.workers); }

std::string interceptText(const Row<Config>& row, const Config& c) {
  return std::string(row.choices[static_cast<std::size_t>(c.intercept)]);
}

void describeTargets(const Config& c, std::string& out) {
  auto to = std::back_inserter(out);
  fmt::format_to(to, "targets: {}\n", c.targets.size());
  for (const Target& t : c.targets) {
    if (t.protocol == Protocol::Mongodb) {
      fmt::format_to(to, "  {} (mongodb, port {}, upstream CA {})\n", t.host, t.upstreamPort,
                     t.upstreamCa.value_or("system trust store"));
    } else {
      fmt::format_to(to, "  {} (upstream port {}, resolve {}, addresses {}, upstream CA {})\n", t.host, t.upstreamPort,
                     yesNo(t.resolve), joined(t.addresses, "none"), t.upstreamCa.value_or("system trust store"));
    }
    if (t.credentials.empty()) fmt::format_to(to, "    no credentials: requests pass unchanged\n");
    for (const Credential& k : t.credentials) {
      if (k.temporaryUser) {
        fmt::format_to(to, "    credential {}: {} (a user per agent, lifetime {}s; agents {})\n", k.name, k.describe(),
                       k.temporaryUser->lifetime.count(), joined(k.agents, "all"));
        continue;
      }
      const SecretRef& s = k.serviceAccount ? k.serviceAccount->clientSecret
                           : k.apiKey       ? k.apiKey->privateKey
                                            : k.databaseUser->password;
      const std::string secret = !s.file.empty()  ? "secret from file " + s.file
                                 : !s.env.empty() ? "secret from $" + s.env
                                                  : "secret inline";
      fmt::format_to(to, "    credential {}: {} ({}; agents {})\n", k.name, k.describe(), secret,
                     joined(k.agents, "all"));
    }
  }
}

constexpr Custom<Config> kTargetsSection{
    .parse = [](const Parser& p, const Row<Config>&, const Field& f, Config& c) { c.targets = p.targets(f); },
    .describe = describeTargets,
};

// Rules refer to target hosts and credentials: their row comes after targets'.
constexpr Custom<Config> kRulesSection{
    .parse = [](const Parser& p, const Row<Config>&, const Field& f, Config& c) { c.rules = p.rules(f, c.targets); },
    .describe =
        [](const Config& c, std::string& out) {
          const std::size_t own = c.rules.list.size() - c.rules.presetRules;
          out += fmt::format("rules: {} (default {})", own, actionName(c.rules.defaultAction));
          if (!c.rules.presets.empty()) {
            out +=
                fmt::format("; preset {}: {} rules before them", fmt::join(c.rules.presets, ", "), c.rules.presetRules);
          }
          out += '\n';
        },
};

// The top level. The order of the rows is that of describeConfig()'s lines.
constexpr Row<Config> kTopRows[] = {
    {.key = "listen",
     .slot = nested<Config, Listen, &Config::listen, kListen>(),
     .kind = Kind::Section,
     .doc = "where agents' connections arrive, and the admin endpoint"},
    {.key = "state_dir",
     .slot = &Config::stateDir,
     .kind = Kind::Path,
     .show = "state dir: {}",
     .doc = "ca.pem, ca.key (0600), trust-bundle.pem"},
    {.key = "audit_log",
     .slot = &Config::auditLog,
     .kind = Kind::LogPath,
     .show = "; audit log: {}",
     .doc = "one JSON line per request; \"-\" = stdout"},
    {.key = "log_level",
     .slot = &Config::logLevel,
     .kind = Kind::Choice,
     .choices = kLogLevels,
     .show = "; log level: {}",
     .doc = "debug, info, warn or error"},
    {.key = "agents",
     .slot = nested<Config, Agents, &Config::agents, kAgents>(),
     .kind = Kind::Section,
     .doc = "which cgroups are agents"},
    {.key = "targets",
     .slot = kTargetsSection,
     .kind = Kind::List,
     .required = true,
     .doc = "at least one target host"},
    {.key = "rules", .slot = kRulesSection, .kind = Kind::Section, .doc = "default action and the list of rules"},
    {.key = "limits",
     .slot = nested<Config, Limits, &Config::limits, kLimits>(),
     .kind = Kind::Section,
     .doc = "sizes, timeouts and caps; all optional"},
    {.key = "bpf",
     .slot = nested<Config, BpfOptions, &Config::bpf, kBpf>(),
     .kind = Kind::Section,
     .doc = "the BPF programs"},
    {.key = "dns",
     .slot = nested<Config, Dns, &Config::dns, kDns>(),
     .kind = Kind::Section,
     .doc = "how target host names are followed (targets[].resolve)"},
    {.key = "capture",
     .slot = nested<Config, Capture, &Config::capture, kCapture>(),
     .kind = Kind::Section,
     .doc = "credential capture and the vault"},
    {.key = "intercept",
     .slot = Custom<Config>{.parse = parseIntercept, .value = interceptText},
     .kind = Kind::Choice,
     .choices = kIntercepts,
     .doc = "targets or all-tls"},
    {.key = "workers",
     .slot = Custom<Config>{.parse = parseWorkers, .value = workersText},
     .kind = Kind::String,
     .show = "workers: {}",
     .doc = "event loops serving agents' HTTPS connections: 1 to 64, or auto (one per CPU)"},
    {.key = "publish_ca_dir",
     .slot = &Config::publishCaDir,
     .kind = Kind::Path,
     .doc = "a directory with copies of ca.pem and trust-bundle.pem (never the key), for containers"},
    {.key = "discovery",
     .slot = inPlace<Config, kDiscovery>(),
     .kind = Kind::Section,
     .doc = "agents found by Kubernetes or a container engine"},
};
constexpr Table<Config> kTop{.rows = kTopRows};

static_assert(wellFormed(kListen) && wellFormed(kAgents) && wellFormed(kLimits) && wellFormed(kBpf) &&
              wellFormed(kDns) && wellFormed(kCapture) && wellFormed(kKubernetes) && wellFormed(kContainers) &&
              wellFormed(kDiscovery) && wellFormed(kTop));

// ---- targets and credentials (lists of maps: not tables) -------------------

std::vector<Target> Parser::targets(const Field& f) const {
  const std::vector<Field> items = list(f);
  if (items.empty()) fail(f, "targets: at least one target is required");
  std::vector<Target> out;
  std::map<std::string, int> hostLines;
  for (const Field& item : items) out.push_back(target(item, hostLines));
  if (std::none_of(out.begin(), out.end(), [](const Target& t) { return t.protocol == Protocol::Https; })) {
    fail(f, "targets: at least one https target is required (the Atlas Administration API)");
  }
  checkTemporaryUsers(f, out);
  // The kernel redirects one port for mongodb targets.
  const Target* firstMongo = nullptr;
  for (std::size_t i = 0; i < out.size(); ++i) {
    if (out[i].protocol != Protocol::Mongodb) continue;
    if (firstMongo == nullptr) firstMongo = &out[i];
    if (out[i].upstreamPort != firstMongo->upstreamPort)
      fail(items[i], "{}: every mongodb target must use one port ({} has {})", items[i].path, firstMongo->host,
           firstMongo->upstreamPort);
  }
  return out;
}

// A temporary_user is minted with the credential of an https target: which
// one must be unambiguous, and it must have a credential.
void Parser::checkTemporaryUsers(const Field& f, const std::vector<Target>& targets) const {
  const std::vector<Field> items = list(f);
  for (std::size_t i = 0; i < targets.size(); ++i) {
    for (const Credential& c : targets[i].credentials) {
      if (!c.temporaryUser) continue;
      const std::string& api = c.temporaryUser->apiHost;
      std::vector<const Target*> https;
      for (const Target& t : targets)
        if (t.protocol == Protocol::Https && !t.credentials.empty() && (api.empty() || t.host == api))
          https.push_back(&t);
      if (https.empty()) {
        fail(items[i], "{}: temporary_user needs an https target with a credential to mint users{}", items[i].path,
             api.empty() ? std::string() : fmt::format(" (api_host {} has none or is no https target)", api));
      }
      if (https.size() > 1) {
        fail(items[i], "{}: temporary_user: several https targets have credentials; name one with api_host",
             items[i].path);
      }
    }
  }
}

Target Parser::target(const Field& f, std::map<std::string, int>& hostLines) const {
  const Fields m =
      fields(f, {"host", "protocol", "port", "addresses", "upstream_ca", "upstream_port", "resolve", "credentials"});
  Target t;
  t.loc = loc(f.value.Mark());
  if (const Field* p = m.find("protocol"))
    t.protocol = choice<Protocol>(*p, {{"https", Protocol::Https}, {"mongodb", Protocol::Mongodb}});

  const Field* host = require(m, "host", " (the DNS name agents connect to)");
  t.host = t.protocol == Protocol::Mongodb ? hostPattern(*host) : dnsName(*host);
  if (const auto [it, fresh] = hostLines.emplace(t.host, markOf(*host).line + 1); !fresh) {
    fail(*host, "{}: duplicate target host {:?} (first at line {})", host->path, t.host, it->second);
  }

  if (const Field* a = m.find("addresses")) t.addresses = addresses(*a);
  if (const Field* ca = m.find("upstream_ca"); ca != nullptr && !ca->value.IsNull()) t.upstreamCa = absolutePath(*ca);
  if (const Field* p = m.find("upstream_port")) t.upstreamPort = static_cast<std::uint16_t>(integer(*p, 1, 65535));
  if (const Field* r = m.find("resolve")) {
    t.resolve = boolean(*r);
    if (!t.resolve && t.addresses.empty() && t.protocol == Protocol::Https) {
      fail(*r, "{}: with resolve: false and no addresses nothing would be intercepted for {}", r->path, t.host);
    }
  }
  if (t.protocol == Protocol::Mongodb) {
    // Every TCP connection of an agent to this port is looked at: the
    // ClientHello's name decides, so addresses and DNS play no part.
    t.upstreamPort = 27017;
    t.resolve = false;
    for (const char* key : {"addresses", "resolve", "upstream_port"}) {
      if (const Field* k = m.find(key))
        fail(keyMark(*k), "{}: not for a mongodb target (its port is `port`; names are resolved when agents connect)",
             k->path);
    }
    if (const Field* p = m.find("port")) t.upstreamPort = static_cast<std::uint16_t>(integer(*p, 1, 65535));
    if (t.upstreamPort == 443) fail(*m.find("port"), "{}: 443 is the https targets' port", m.find("port")->path);
  } else if (const Field* p = m.find("port")) {
    fail(keyMark(*p), "{}: only mongodb targets have a port (https targets: upstream_port)", p->path);
  }
  if (const Field* c = m.find("credentials")) t.credentials = credentials(*c, t.protocol);
  return t;
}

// A mongodb target's host: a DNS name, or "*." and a name of two labels or more.
std::string Parser::hostPattern(const Field& f) const {
  const std::string raw = string(f);
  if (!raw.starts_with("*.")) return dnsName(f);
  std::string rest = toLower(raw.substr(2));
  if (!rest.empty() && rest.back() == '.') rest.pop_back();
  if (!isDnsName(rest) || rest.find('.') == std::string::npos) {
    fail(f, "{}: {:?}: after \"*.\" a DNS name of two labels or more is expected (e.g. \"*.mongodb.net\")", f.path,
         raw);
  }
  return "*." + rest;
}

std::vector<std::string> Parser::addresses(const Field& f) const {
  std::vector<std::string> out;
  for (const Field& item : list(f)) {
    const std::string text = string(item);
    const auto address = normaliseAddress(text);
    if (!address) fail(item, "{}: {:?} is not a literal IPv4 or IPv6 address", item.path, text);
    if (std::find(out.begin(), out.end(), *address) != out.end()) {
      fail(item, "{}: address {} is listed twice", item.path, *address);
    }
    out.push_back(*address);
  }
  return out;
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

std::vector<Credential> Parser::credentials(const Field& f, Protocol protocol) const {
  if (f.value.IsNull()) return {};
  if (f.value.IsMap()) {
    const Fields m = fields(f, {"service_account", "api_key", "database_user", "temporary_user"});
    Credential c;
    c.name = "default";
    c.loc = loc(f.value.Mark());
    credentialKind(m, c, protocol);
    return {c};
  }
  if (!f.value.IsSequence()) {
    fail(f, "{}: expected a map (service_account or api_key) or a list of named credentials, got {}", f.path,
         typeName(f.value));
  }
  std::vector<Credential> out;
  std::map<std::string, int> nameLines;
  for (const Field& item : list(f)) out.push_back(namedCredential(item, nameLines, protocol));
  return out;
}

Credential Parser::namedCredential(const Field& f, std::map<std::string, int>& nameLines, Protocol protocol) const {
  const Fields m = fields(f, {"name", "agents", "service_account", "api_key", "database_user", "temporary_user"});
  Credential c;
  c.loc = loc(f.value.Mark());
  const Field* n = require(m, "name", " when credentials is a list");
  c.name = name(*n);
  if (const auto [it, fresh] = nameLines.emplace(c.name, markOf(*n).line + 1); !fresh) {
    fail(*n, "{}: duplicate credential name {:?} (first at line {})", n->path, c.name, it->second);
  }
  if (const Field* a = m.find("agents")) c.agents = globs(*a);
  credentialKind(m, c, protocol);
  return c;
}

void Parser::credentialKind(const Fields& m, Credential& c, Protocol protocol) const {
  const bool mongo = protocol == Protocol::Mongodb;
  for (const Field& e : m.entries) {
    const std::string_view key = e.key.Scalar();
    const bool forMongo = key == "database_user" || key == "temporary_user";
    const bool forHttps = key == "service_account" || key == "api_key";
    if ((forMongo && !mongo) || (forHttps && mongo)) {
      fail(keyMark(e), "{}: a credential of {} targets, not of {} ones", e.path, forMongo ? "mongodb" : "https",
           protocolName(protocol));
    }
  }
  const Field* kind = mongo ? exactlyOne(m, {"database_user", "temporary_user"}, "a credential is one or the other")
                            : exactlyOne(m, {"service_account", "api_key"}, "a credential is one or the other");
  if (kind->key.Scalar() == "database_user") {
    c.databaseUser = databaseUser(*kind);
  } else if (kind->key.Scalar() == "temporary_user") {
    c.temporaryUser = temporaryUser(*kind);
  } else if (kind->key.Scalar() == "service_account") {
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

DatabaseUser Parser::databaseUser(const Field& f) const {
  const Fields s = fields(f, {"username", "password_file", "password_env", "password", "auth_source"});
  DatabaseUser u;
  u.username = nonEmpty(*require(s, "username"));
  if (u.username.size() > 512) fail(*s.find("username"), "{}: longer than 512 bytes", s.find("username")->path);
  u.password = secret(s, "password");
  if (const Field* a = s.find("auth_source")) u.authSource = nonEmpty(*a);
  return u;
}

TemporaryUser Parser::temporaryUser(const Field& f) const {
  const Fields s = fields(f, {"group_id", "roles", "scopes", "lifetime", "api_host"});
  TemporaryUser u;
  const Field* g = require(s, "group_id", " (the Atlas project the users are made in)");
  u.groupId = nonEmpty(*g);
  const bool hex = u.groupId.size() == 24 && std::all_of(u.groupId.begin(), u.groupId.end(), [](char ch) {
                     return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f');
                   });
  if (!hex) fail(*g, "{}: expected a project id (24 lower-case hex digits)", g->path);
  const Field* roles = require(s, "roles", " (e.g. [{roleName: readWrite, databaseName: app}])");
  for (const Field& item : list(*roles)) {
    const Fields r = fields(item, {"roleName", "databaseName", "collectionName"});
    DatabaseRole role{isName(nonEmpty(*require(r, "roleName"))) ? nonEmpty(*r.find("roleName")) : "",
                      nonEmpty(*require(r, "databaseName")), ""};
    if (role.roleName.empty()) fail(*r.find("roleName"), "{}: not a role name", r.find("roleName")->path);
    if (const Field* c = r.find("collectionName")) role.collectionName = nonEmpty(*c);
    u.roles.push_back(std::move(role));
  }
  if (u.roles.empty()) fail(*roles, "{}: at least one role is required", roles->path);
  if (const Field* sc = s.find("scopes")) u.scopes = globs(*sc);
  if (const Field* l = s.find("lifetime")) {
    u.lifetime = duration(*l);
    // Atlas takes a deleteAfterDate at most a week ahead; below 10 minutes
    // the renewals would be most of the traffic.
    if (u.lifetime < std::chrono::minutes(10) || u.lifetime > std::chrono::hours(24 * 7))
      fail(*l, "{}: between 10m and 168h (Atlas deletes the user at the end)", l->path);
  }
  if (const Field* a = s.find("api_host")) u.apiHost = dnsName(*a);
  return u;
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

// ---- rules.preset: guardrails ----------------------------------------------
//
// Approve rules for the ways an agent widens access beyond itself (README
// "Guardrails"), placed before the operator's rules. `*` after /api/atlas/
// is the API version (v2, v1.0). Each row is one rule; the rows about
// atlasgate's own credential are repeated per service-account client id.

enum class GuardScope {
  Always,
  EachServiceAccount,  // once per distinct client id of the targets' service accounts; "<client_id>" in path
  AnyApiKey,           // when any target has an api_key credential
};

struct Guardrail {
  std::string_view name;
  std::string_view methods;  // comma-separated
  std::string_view path;
  GuardScope scope = GuardScope::Always;
  std::string_view pointer = {};  // when: pointer matches regex ("" = no condition)
  std::string_view regex = {};
};

constexpr std::string_view kOwnClientId = "<client_id>";
// A cidrBlock with a prefix of /7 or wider: 0.0.0.0/0, ::/0 and the world in
// a few pieces (0.0.0.0/1 + 128.0.0.0/1), however the prefix is spelled (/00,
// %2F0). A /8 or narrower passes.
constexpr std::string_view kWideCidr = R"(.*(/|%2[fF])\s*0*[0-7]\s*)";
constexpr std::string_view kChanges = "POST,PUT,PATCH,DELETE";

constexpr Guardrail kGuardrails[] = {
    // 1. The project's IP access list opened to the world. The body is an
    //    array of entries; a lone entry is held too. (An ipAddress entry is
    //    one address: it cannot open the list to the world.)
    {"guardrail-open-access-list", "POST", "/api/atlas/*/groups/*/accessList", GuardScope::Always, "/*/cidrBlock",
     kWideCidr},
    {"guardrail-open-access-list-entry", "POST", "/api/atlas/*/groups/*/accessList", GuardScope::Always, "/cidrBlock",
     kWideCidr},
    // The same list under its pre-2021 name, which some servers still serve.
    {"guardrail-open-whitelist", "POST", "/api/atlas/*/groups/*/whitelist", GuardScope::Always, "/*/cidrBlock",
     kWideCidr},
    {"guardrail-open-whitelist-entry", "POST", "/api/atlas/*/groups/*/whitelist", GuardScope::Always, "/cidrBlock",
     kWideCidr},
    // 2. People: invitations, users added to an organization or project or
    //    given roles there (addRole, roles, createOrgUser), teams' members and
    //    teams' project roles, new Cloud users with roles.
    {"guardrail-org-invitations", "POST,PATCH", "/api/atlas/*/orgs/*/invites/**"},
    {"guardrail-project-invitations", "POST,PATCH", "/api/atlas/*/groups/*/invites/**"},
    {"guardrail-org-users", "POST,PUT,PATCH", "/api/atlas/*/orgs/*/users/**"},
    {"guardrail-project-users", "POST,PUT,PATCH", "/api/atlas/*/groups/*/users/**"},
    {"guardrail-team-members", "POST", "/api/atlas/*/orgs/*/teams/*/**"},
    {"guardrail-project-teams", "POST,PATCH", "/api/atlas/*/groups/*/teams/**"},
    {"guardrail-new-cloud-users", "POST", "/api/atlas/*/users"},
    // 3. Roles and reach of API keys and service accounts (a project
    //    assignment is POST .../serviceAccounts/{clientId}:invite).
    {"guardrail-org-key-roles", "PATCH", "/api/atlas/*/orgs/*/apiKeys/*"},
    {"guardrail-project-key-roles", "POST,PATCH", "/api/atlas/*/groups/*/apiKeys/*"},
    {"guardrail-key-access-list", "POST", "/api/atlas/*/orgs/*/apiKeys/*/accessList"},
    {"guardrail-org-service-account-roles", "PATCH", "/api/atlas/*/orgs/*/serviceAccounts/*"},
    {"guardrail-project-service-account-roles", "POST,PATCH", "/api/atlas/*/groups/*/serviceAccounts/*"},
    {"guardrail-service-account-access-list", "POST", "/api/atlas/*/orgs/*/serviceAccounts/*/accessList"},
    {"guardrail-project-service-account-access-list", "POST", "/api/atlas/*/groups/*/serviceAccounts/*/accessList"},
    // 4. The credential atlasgate itself uses: deleting it, changing its
    //    secrets. An api_key's id (what paths name) is not its public key,
    //    which is all atlasgate knows: every API key deletion is held.
    {"guardrail-own-credential", "DELETE", "/api/atlas/*/orgs/*/serviceAccounts/<client_id>",
     GuardScope::EachServiceAccount},
    {"guardrail-own-credential-project", "DELETE", "/api/atlas/*/groups/*/serviceAccounts/<client_id>",
     GuardScope::EachServiceAccount},
    {"guardrail-own-credential-secrets", kChanges, "/api/atlas/*/orgs/*/serviceAccounts/<client_id>/secrets/**",
     GuardScope::EachServiceAccount},
    {"guardrail-own-credential-project-secrets", kChanges,
     "/api/atlas/*/groups/*/serviceAccounts/<client_id>/secrets/**", GuardScope::EachServiceAccount},
    {"guardrail-any-api-key-deletion", "DELETE", "/api/atlas/*/orgs/*/apiKeys/*", GuardScope::AnyApiKey},
};

// A path segment holding `text` as a literal: every byte but letters,
// digits, '-', '_' and '~' percent-encoded (patterns decode literals).
std::string literalSegment(std::string_view text) {
  std::string out;
  for (const char ch : text) {
    if (isIdentifierChar(ch) || ch == '-' || ch == '~') {
      out.push_back(ch);
    } else {
      out += fmt::format("%{:02X}", static_cast<unsigned char>(ch));
    }
  }
  return out;
}

Rule guardrail(const Guardrail& g, const std::vector<std::string>& hosts, std::string_view clientId,
               std::string_view suffix) {
  Rule r;
  r.name = fmt::format("{}{}", g.name, suffix);
  for (std::string_view rest = g.methods; !rest.empty();) {
    const std::size_t comma = rest.find(',');
    r.methods.emplace_back(rest.substr(0, comma));
    rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
  }
  r.path = std::string(g.path);
  if (const std::size_t at = r.path.find(kOwnClientId); at != std::string::npos)
    r.path.replace(at, kOwnClientId.size(), literalSegment(clientId));
  r.hosts = hosts;
  r.action = Action::Approve;  // the default approve timeout
  r.loc = SourceLoc{fmt::format("preset:{}", kGuardrailsPreset), 0, 0};
  if (!g.pointer.empty()) {
    Condition c;
    c.pointer = std::string(g.pointer);
    c.op = CondOp::Matches;
    c.regex = std::string(g.regex);
    c.loc = r.loc;
    r.when.push_back(std::move(c));
  }
  return r;
}

std::vector<Rule> makeGuardrails(const std::vector<Target>& targets) {
  std::vector<std::string> hosts, clientIds;
  bool apiKey = false;
  for (const Target& t : targets) {
    if (t.protocol != Protocol::Https) continue;
    hosts.push_back(t.host);
    for (const Credential& k : t.credentials) {
      apiKey = apiKey || k.apiKey.has_value();
      // An id a path segment cannot hold ('/', dot segments) cannot be named by a request either.
      if (!k.serviceAccount || contains(clientIds, k.serviceAccount->clientId)) continue;
      const std::string& id = k.serviceAccount->clientId;
      if (id.find('/') == std::string::npos && id != "." && id != "..") clientIds.push_back(id);
    }
  }
  std::vector<Rule> out;
  for (const Guardrail& g : kGuardrails) {
    if (g.scope == GuardScope::Always || (g.scope == GuardScope::AnyApiKey && apiKey))
      out.push_back(guardrail(g, hosts, {}, {}));
    if (g.scope != GuardScope::EachServiceAccount) continue;
    for (std::size_t i = 0; i < clientIds.size(); ++i)
      out.push_back(guardrail(g, hosts, clientIds[i], i == 0 ? std::string() : fmt::format("-{}", i + 1)));
  }
  return out;
}

// ---- rules: their shape ----------------------------------------------------
//
// Here: which keys a rule has and the kind of each value (action and method
// names, rates, durations), and what refers to other sections (a rule's host
// is a target, its credential exists). What the strings mean - path patterns,
// label selectors, JSON pointers, regular expressions - and that names are
// unique is policy/'s to check when it compiles the rules (Policy::compile),
// once, with the locations recorded in Rule::keyLocs.

Rules Parser::rules(const Field& f, const std::vector<Target>& targets) const {
  const Fields m = fields(f, {"preset", "default", "list"});
  Rules r;
  if (const Field* d = m.find("default"))
    r.defaultAction = choice<Action>(*d, {{"allow", Action::Allow}, {"block", Action::Block}});
  const Field* preset = m.find("preset");
  if (preset != nullptr) r.presets = presets(*preset);
  if (!r.presets.empty()) r.list = guardrailRules(targets);  // the one preset there is
  r.presetRules = r.list.size();
  if (const Field* l = m.find("list")) {
    const std::vector<Field> items = list(*l);
    for (std::size_t i = 0; i < items.size(); ++i) {
      Rule written = rule(items[i], i, targets);
      // A preset's rule names are the operator's to avoid: audit records and
      // approvals name rules, so two of one name would be ambiguous.
      const auto presetEnd = r.list.begin() + static_cast<std::ptrdiff_t>(r.presetRules);
      if (std::any_of(r.list.begin(), presetEnd, [&](const Rule& g) { return g.name == written.name; })) {
        fail(items[i].value["name"].Mark(),
             "{}.name: {:?} is the name of a rule of rules.preset {} (line {}); give this rule another name",
             items[i].path, written.name, kGuardrailsPreset, markOf(*preset).line + 1);
      }
      r.list.push_back(std::move(written));
    }
  }
  return r;
}

// rules.preset: one name or a list of them.
std::vector<std::string> Parser::presets(const Field& f) const {
  static constexpr auto kPresets = std::to_array<std::string_view>({kGuardrailsPreset});
  std::vector<std::string> out;
  for (const Field& item : oneOrMany(f)) {
    const std::string name = string(item);
    if (!contains(kPresets, name)) {
      fail(item, "{}: unknown preset {:?}{}; valid presets: {}", item.path, name, didYouMean(name, kPresets),
           joinNames(kPresets));
    }
    if (!contains(out, name)) out.push_back(name);
  }
  return out;
}

Rule Parser::rule(const Field& f, std::size_t index, const std::vector<Target>& targets) const {
  const Fields m = fields(
      f, {"name", "protocol", "method", "path", "host", "agents", "pod_labels", "container_labels", "when", "action",
          "rate", "burst", "per", "timeout", "would_be", "credential", "command", "database", "collection"});
  Rule r;
  r.loc = loc(f.value.Mark());
  for (const Field& e : m.entries) r.keyLocs.emplace(e.key.Scalar(), loc(markOf(e)));
  const Field* n = m.find("name");
  r.name = n != nullptr ? name(*n) : fmt::format("rule-{}", index);
  if (const Field* p = m.find("protocol"))
    r.protocol = choice<Protocol>(*p, {{"https", Protocol::Https}, {"mongodb", Protocol::Mongodb}});
  ruleAction(m, r);
  mongodbFilters(m, r);
  ruleFilters(m, targets, r);
  if (const Field* c = m.find("credential")) r.credential = ruleCredential(*c, r, targets);
  for (const std::string& h : r.hosts) {
    const auto t = std::find_if(targets.begin(), targets.end(), [&](const Target& x) { return x.host == h; });
    if (t->protocol != r.protocol) {
      fail(*m.find("host"), "{}: {} is a {} target and this is a {} rule", m.find("host")->path, h,
           protocolName(t->protocol), protocolName(r.protocol));
    }
  }
  return r;
}

// command/database/collection belong to mongodb rules; method, path, when and
// credential to https ones.
void Parser::mongodbFilters(const Fields& m, Rule& r) const {
  const bool mongo = r.protocol == Protocol::Mongodb;
  for (const char* key : {"command", "database", "collection"}) {
    if (const Field* k = m.find(key); k != nullptr && !mongo)
      fail(keyMark(*k), "{}: {} is a filter of protocol: mongodb rules (add protocol: mongodb)", k->path, key);
  }
  for (const char* key : {"method", "path", "when", "credential"}) {
    if (const Field* k = m.find(key); k != nullptr && mongo)
      fail(keyMark(*k), "{}: {} is not a filter of protocol: mongodb rules (command, database, collection are)",
           k->path, key);
  }
  if (!mongo) return;
  if (const Field* c = m.find("command")) r.commands = globs(*c);
  if (const Field* d = m.find("database")) r.databases = globs(*d);
  if (const Field* c = m.find("collection")) r.collections = globs(*c);
}

// The action decides which of the other keys apply.
void Parser::ruleAction(const Fields& m, Rule& r) const {
  const Field* act = require(m, "action", " (allow, block, rate_limit, approve or log_only)");
  r.action = choice<Action>(*act, {{"allow", Action::Allow},
                                   {"block", Action::Block},
                                   {"rate_limit", Action::RateLimit},
                                   {"approve", Action::Approve},
                                   {"log_only", Action::LogOnly}});
  if (const Field* wouldBe = m.find("would_be")) {
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
  if (const Field* rt = m.find("rate")) {
    r.rate = rate(*rt);
    r.burst = r.rate->count;
  }
  if (const Field* b = m.find("burst")) r.burst = integer(*b, 1, kMaxRateCount);
  if (const Field* p = m.find("per")) r.per = choice<RatePer>(*p, {{"agent", RatePer::Agent}, {"rule", RatePer::Rule}});
  if (const Field* t = m.find("timeout")) r.timeout = duration(*t);
}

void Parser::ruleFilters(const Fields& m, const std::vector<Target>& targets, Rule& r) const {
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
  if (const Field* p = m.find("path")) r.path = filter(*p);
  if (const Field* hosts = m.find("host")) r.hosts = ruleHosts(*hosts, targets);
  if (const Field* a = m.find("agents")) r.agents = globs(*a);
  if (const Field* pl = m.find("pod_labels")) r.podLabels = filter(*pl);
  if (const Field* cl = m.find("container_labels")) r.containerLabels = filter(*cl);
  if (const Field* w = m.find("when")) {
    const std::vector<Field> items = list(*w);
    for (std::size_t i = 0; i < items.size(); ++i) r.when.push_back(condition(items[i], fmt::format("when[{}]", i), r));
  }
}

std::vector<std::string> Parser::ruleHosts(const Field& f, const std::vector<Target>& targets) const {
  std::vector<std::string> out;
  for (const Field& item : oneOrMany(f)) {
    const std::string host = hostPattern(item);
    const bool known = std::any_of(targets.begin(), targets.end(), [&](const Target& t) { return t.host == host; });
    if (!known) {
      std::string names;
      for (const Target& t : targets) names += (names.empty() ? "" : ", ") + t.host;
      fail(item, "{}: {:?} is not one of the targets ({})", item.path, host, names);
    }
    out.push_back(host);
  }
  return out;
}

// A credential of every target the rule applies to.
std::string Parser::ruleCredential(const Field& f, const Rule& r, const std::vector<Target>& targets) const {
  std::string credential = name(f);
  auto hasCredential = [&](const Target& t) {
    return std::any_of(t.credentials.begin(), t.credentials.end(),
                       [&](const Credential& k) { return k.name == credential; });
  };
  if (r.hosts.empty()) {
    if (std::none_of(targets.begin(), targets.end(), hasCredential)) {
      fail(f, "{}: no target has a credential named {:?}", f.path, credential);
    }
  } else {
    for (const Target& t : targets) {
      if (std::find(r.hosts.begin(), r.hosts.end(), t.host) != r.hosts.end() && !hasCredential(t)) {
        fail(f, "{}: target {} has no credential named {:?}", f.path, t.host, credential);
      }
    }
  }
  return credential;
}

// One `when:` entry; path is its place in the rule ("when[0]").
Condition Parser::condition(const Field& f, const std::string& path, Rule& r) const {
  const Fields m = fields(f, {"pointer", "equals", "in", "not_in", "matches", "exists"});
  Condition c;
  c.loc = loc(f.value.Mark());
  for (const Field& e : m.entries) r.keyLocs.emplace(path + "." + e.key.Scalar(), loc(markOf(e)));
  c.pointer = string(*require(m, "pointer", " (a JSON pointer into the request body, such as /name)"));

  const Field* test = exactlyOne(m, {"equals", "in", "not_in", "matches", "exists"}, "a condition tests one thing");
  const std::string_view op = test->key.Scalar();
  auto single = [&](const Field& v) {
    if (!v.value.IsScalar() && !v.value.IsNull()) {
      fail(v, "{}: expected a single value (string, number, true, false or null), got {}", v.path, typeName(v.value));
    }
    if (v.value.IsScalar() && !text::isUtf8(v.value.Scalar())) fail(v, "{}: the value is not valid UTF-8", v.path);
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

// ---- the whole file -----------------------------------------------------------

Config Parser::parse(const YAML::Node& root) const {
  if (root.IsNull()) fail(root.Mark(), "the config is empty; at least targets: is required");
  const Field top{"", YAML::Node(), root};
  if (!root.IsMap())
    fail(top, "the config must be a map of settings (listen, targets, rules, ...), got {}", typeName(root));
  Config c;
  section(top, kTop, c);
  return c;
}

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
  const UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
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
  std::string out = fmt::format("config {}\n", c.path);
  describeTable(kTop, c, out);
  return out;
}

std::vector<SchemaKey> schemaKeys() {
  std::vector<SchemaKey> out;
  listKeys(kTop, "", out);
  return out;
}

std::vector<Rule> guardrailRules(const std::vector<Target>& targets) { return makeGuardrails(targets); }

std::uint16_t mongodbPort(const Config& c) {
  for (const Target& t : c.targets)
    if (t.protocol == Protocol::Mongodb) return t.upstreamPort;
  return 0;
}

}  // namespace atlasgate::config
