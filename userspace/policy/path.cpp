#include "policy/path.h"

#include <algorithm>
#include <cstddef>
#include <set>

namespace atlasgate::policy {

namespace {

int hexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Decodes one segment. Fails on a '%' not followed by two hex digits and on
// "%00" (an upstream written in C might truncate there).
bool percentDecode(std::string_view in, std::string& out, std::string& why) {
  out.clear();
  out.reserve(in.size());
  for (std::size_t i = 0; i < in.size(); ++i) {
    if (in[i] != '%') {
      out.push_back(in[i]);
      continue;
    }
    int hi = i + 2 < in.size() ? hexValue(in[i + 1]) : -1;
    int lo = i + 2 < in.size() ? hexValue(in[i + 2]) : -1;
    if (hi < 0 || lo < 0) {
      why = "invalid percent-escape in the request path";
      return false;
    }
    char c = static_cast<char>(hi * 16 + lo);
    if (c == '\0') {
      why = "encoded NUL in the request path";
      return false;
    }
    out.push_back(c);
    i += 2;
  }
  return true;
}

bool isDot(std::string_view s) { return s == "." || s == ".."; }

// Applies one decoded segment to a path under construction.
bool pushSegment(std::vector<std::string>& path, std::string_view seg, std::string& why) {
  if (seg.empty() || seg == ".") return true;
  if (seg == "..") {
    if (path.empty()) {
      why = "'..' climbs above the root of the request path";
      return false;
    }
    path.pop_back();
    return true;
  }
  path.emplace_back(seg);
  return true;
}

char lowerChar(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }
char upperChar(char c) { return (c >= 'a' && c <= 'z') ? static_cast<char>(c - 'a' + 'A') : c; }

}  // namespace

bool asciiIEquals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (lowerChar(a[i]) != lowerChar(b[i])) return false;
  }
  return true;
}

std::string asciiLower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = lowerChar(c);
  return out;
}

std::string asciiUpper(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = upperChar(c);
  return out;
}

Result<NormalizedTarget> normalizeTarget(std::string_view target) {
  if (target.empty() || target.front() != '/') {
    return makeError("the request-target is not a path (origin-form must start with '/')");
  }
  if (auto q = target.find_first_of("?#"); q != std::string_view::npos) target = target.substr(0, q);

  NormalizedTarget out;
  std::vector<std::string> alternate;
  bool needAlternate = false;
  std::string decoded;
  std::string decodedAlt;
  std::string why;

  std::size_t pos = 0;
  while (pos <= target.size()) {
    std::size_t end = target.find('/', pos);
    if (end == std::string_view::npos) end = target.size();
    std::string_view raw = target.substr(pos, end - pos);
    pos = end + 1;
    if (raw.empty()) continue;

    if (!percentDecode(raw, decoded, why)) return makeError("{}", why);
    if (!pushSegment(out.segments, decoded, why)) return makeError("{}", why);

    // The alternate view: drop ";params" (cut on the raw ';' as servlet
    // containers do; it cannot split an escape) and re-split on '/'.
    std::string_view rawNoParams = raw.substr(0, raw.find(';'));
    bool modified = rawNoParams.size() != raw.size() || decoded.find('/') != std::string::npos;
    if (!modified) {
      if (!pushSegment(alternate, decoded, why)) return makeError("{}", why);
      continue;
    }
    needAlternate = true;
    if (!percentDecode(rawNoParams, decodedAlt, why)) return makeError("{}", why);
    std::size_t p = 0;
    while (p <= decodedAlt.size()) {
      std::size_t e = decodedAlt.find('/', p);
      if (e == std::string::npos) e = decodedAlt.size();
      std::string_view piece = std::string_view(decodedAlt).substr(p, e - p);
      p = e + 1;
      if (isDot(piece)) {
        return makeError("a dot-segment is hidden behind an encoded '/' or a ';' parameter in the request path");
      }
      if (!pushSegment(alternate, piece, why)) return makeError("{}", why);
    }
  }
  if (needAlternate && alternate != out.segments) out.alternate = std::move(alternate);
  return out;
}

Result<std::vector<std::string>> normalizePath(std::string_view target) {
  auto n = normalizeTarget(target);
  if (!n) return n.error();
  return std::move(n.value().segments);
}

std::string displayPath(const std::vector<std::string>& segments) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  if (segments.empty()) return "/";
  std::string out;
  for (const auto& seg : segments) {
    out.push_back('/');
    for (char ch : seg) {
      auto c = static_cast<unsigned char>(ch);
      if (c <= 0x20 || c >= 0x7f || c == '%' || c == '/' || c == '?' || c == '#') {
        out.push_back('%');
        out.push_back(kHex[c >> 4]);
        out.push_back(kHex[c & 0xf]);
      } else {
        out.push_back(ch);
      }
    }
  }
  return out;
}

namespace {

bool isParameterName(std::string_view s) {
  auto word = [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
  };
  return !s.empty() && !(s[0] >= '0' && s[0] <= '9') && std::all_of(s.begin(), s.end(), word);
}

// A segment that starts or ends with a brace: "{name}", each name once.
Result<void> checkParameter(std::string_view pattern, std::string_view seg, std::set<std::string, std::less<>>& names) {
  if (seg.size() < 2 || seg.front() != '{' || seg.back() != '}') {
    return makeError("path pattern \"{}\": unbalanced braces in \"{}\"", pattern, seg);
  }
  const std::string_view name = seg.substr(1, seg.size() - 2);
  if (!isParameterName(name)) {
    return makeError("path pattern \"{}\": \"{}\" is not a parameter name (letters, digits and _)", pattern, name);
  }
  if (!names.emplace(name).second)
    return makeError("path pattern \"{}\": parameter {{{}}} appears twice", pattern, name);
  return {};
}

Result<void> checkWhole(std::string_view pattern) {
  if (pattern.front() != '/') return makeError("path pattern \"{}\" must start with '/'", pattern);
  if (pattern.find_first_of("?#") != std::string_view::npos) {
    return makeError("path pattern \"{}\" must not contain a query ('?') or fragment ('#'); the query is never matched",
                     pattern);
  }
  if (std::any_of(pattern.begin(), pattern.end(),
                  [](char c) { return static_cast<unsigned char>(c) <= 0x20 || c == 0x7f; })) {
    return makeError("path pattern \"{}\" contains spaces or control characters", pattern);
  }
  return {};
}

}  // namespace

Result<std::vector<PatternSegment>> parsePattern(std::string_view pattern) {
  std::vector<PatternSegment> out;
  if (pattern.empty()) {
    out.push_back({PatternSegment::Kind::Any, "**"});
    return out;
  }
  if (auto whole = checkWhole(pattern); !whole) return whole.error();
  std::set<std::string, std::less<>> names;
  std::size_t pos = 0;
  std::string decoded;
  std::string why;
  while (pos <= pattern.size()) {
    std::size_t end = pattern.find('/', pos);
    if (end == std::string_view::npos) end = pattern.size();
    std::string_view seg = pattern.substr(pos, end - pos);
    pos = end + 1;
    if (seg.empty()) continue;
    if (seg == "**") {
      // "**/**" is the same as "**".
      if (out.empty() || out.back().kind != PatternSegment::Kind::Any) out.push_back({PatternSegment::Kind::Any, "**"});
      continue;
    }
    if (seg == "*") {
      out.push_back({PatternSegment::Kind::One, "*"});
      continue;
    }
    if (seg.front() == '{' || seg.back() == '}') {
      if (auto param = checkParameter(pattern, seg, names); !param) return param.error();
      out.push_back({PatternSegment::Kind::One, std::string(seg)});
      continue;
    }
    if (seg.find_first_of("{}*") != std::string_view::npos) {
      return makeError(
          "path pattern \"{}\": segment \"{}\" mixes a wildcard with text; a segment is a literal, {{name}}, * or **",
          pattern, seg);
    }
    if (!percentDecode(seg, decoded, why)) {
      return makeError(
          "path pattern \"{}\": in segment \"{}\", '%' must be followed by two hex digits (and not encode NUL)",
          pattern, seg);
    }
    if (isDot(decoded))
      return makeError("path pattern \"{}\" must not contain '.' or '..' segments (request paths are normalised)",
                       pattern);
    if (decoded.find('/') != std::string::npos) {
      return makeError("path pattern \"{}\": segment \"{}\" decodes to a '/'; use separate segments", pattern, seg);
    }
    out.push_back({PatternSegment::Kind::Literal, asciiLower(decoded)});
  }
  return out;
}

bool matchPattern(const std::vector<PatternSegment>& pattern, const std::vector<std::string>& segments) {
  // Classic wildcard matching with backtracking to the last "**": each "**"
  // retry advances the segment it started at, so the loop is bounded by
  // segments x pattern length.
  using Kind = PatternSegment::Kind;
  constexpr std::size_t kNone = static_cast<std::size_t>(-1);
  std::size_t p = 0, s = 0, starP = kNone, starS = 0;
  const std::size_t m = pattern.size(), n = segments.size();
  while (s < n) {
    if (p < m && pattern[p].kind == Kind::Any) {
      starP = p++;
      starS = s;
      continue;
    }
    if (p < m && (pattern[p].kind == Kind::One || asciiIEquals(pattern[p].text, segments[s]))) {
      ++p;
      ++s;
      continue;
    }
    if (starP != kNone) {
      p = starP + 1;
      s = ++starS;
      continue;
    }
    return false;
  }
  while (p < m && pattern[p].kind == Kind::Any) ++p;
  return p == m;
}

}  // namespace atlasgate::policy
