#pragma once
// Text that agents control (request bodies, paths, process names, cgroup
// names) on its way to an operator: UTF-8 that always decodes, and a
// terminal rendering in which nothing is hidden and nothing is executed.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace atlasgate::text {

// Length (1-4) of the well-formed UTF-8 sequence that starts at s[i], or 0
// when the bytes there are not one (stray continuation byte, truncated
// sequence, overlong form, surrogate, beyond U+10FFFF). The code point goes
// to *cp when cp is given.
inline std::size_t utf8SequenceAt(std::string_view s, std::size_t i, char32_t* cp = nullptr) {
  if (i >= s.size()) return 0;
  auto b = [&](std::size_t k) { return static_cast<unsigned char>(s[i + k]); };
  unsigned char c = b(0);
  if (c < 0x80) {
    if (cp) *cp = c;
    return 1;
  }
  std::size_t len;
  char32_t v;
  char32_t min;
  if ((c & 0xE0) == 0xC0) {
    len = 2, v = c & 0x1F, min = 0x80;
  } else if ((c & 0xF0) == 0xE0) {
    len = 3, v = c & 0x0F, min = 0x800;
  } else if ((c & 0xF8) == 0xF0) {
    len = 4, v = c & 0x07, min = 0x10000;
  } else {
    return 0;
  }
  if (s.size() - i < len) return 0;
  for (std::size_t k = 1; k < len; ++k) {
    if ((b(k) & 0xC0) != 0x80) return 0;
    v = (v << 6) | (b(k) & 0x3F);
  }
  if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return 0;
  if (cp) *cp = v;
  return len;
}

inline bool isUtf8(std::string_view s) {
  for (std::size_t i = 0; i < s.size();) {
    std::size_t n = utf8SequenceAt(s, i);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

// The longest prefix of s of at most maxBytes bytes that does not end inside
// a well-formed UTF-8 sequence (bytes that belong to no sequence count one
// each and may be cut anywhere).
inline std::string_view utf8Prefix(std::string_view s, std::size_t maxBytes) {
  if (s.size() <= maxBytes) return s;
  std::size_t i = 0;
  while (i < maxBytes) {
    std::size_t n = utf8SequenceAt(s, i);
    if (n == 0) n = 1;
    if (i + n > maxBytes) break;
    i += n;
  }
  return s.substr(0, i);
}

// s as well-formed UTF-8: each byte that is not part of a well-formed
// sequence becomes U+FFFD. Strings that are already valid come back unchanged.
inline std::string utf8Valid(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size();) {
    std::size_t n = utf8SequenceAt(s, i);
    if (n == 0) {
      out += "\xEF\xBF\xBD";
      ++i;
    } else {
      out.append(s.substr(i, n));
      i += n;
    }
  }
  return out;
}

// Appends s to out as a JSON string literal (quotes included), with each
// byte that is not part of well-formed UTF-8 replaced by U+FFFD (as
// utf8Valid does), and the escapes Boost.JSON's serializer writes (for a
// quote, a backslash, \b \f \n \r \t, other controls \u00xx): the same text as
// json::serialize(json::string(utf8Valid(s))), without its two allocations.
inline void appendJsonString(std::string& out, std::string_view s) {
  static constexpr char kHex[] = "0123456789abcdef";
  out.push_back('"');
  std::size_t run = 0;  // start of the bytes that need no care, copied in one go
  for (std::size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') {
      ++i;
      continue;
    }
    out.append(s.data() + run, i - run);
    if (c >= 0x80) {
      std::size_t n = utf8SequenceAt(s, i);
      if (n == 0) {
        out += "\xEF\xBF\xBD";
        n = 1;
      } else {
        out.append(s.data() + i, n);
      }
      i += n;
    } else {
      out.push_back('\\');
      switch (c) {
        case '"': out.push_back('"'); break;
        case '\\': out.push_back('\\'); break;
        case '\b': out.push_back('b'); break;
        case '\f': out.push_back('f'); break;
        case '\n': out.push_back('n'); break;
        case '\r': out.push_back('r'); break;
        case '\t': out.push_back('t'); break;
        default:
          out += "u00";
          out.push_back(kHex[c >> 4]);
          out.push_back(kHex[c & 15]);
      }
      ++i;
    }
    run = i;
  }
  out.append(s.data() + run, s.size() - run);
  out.push_back('"');
}

// Code points a terminal must not receive raw: controls (C0, DEL, C1: they
// start escape sequences or move the cursor), bidirectional overrides and
// isolates (they reorder what is displayed), and characters that draw
// nothing or only blank space (zero-width, Unicode spaces, fillers, tags,
// variation selectors), with which text can be hidden or made to look like
// other text.
inline bool isHazardous(char32_t c) {
  if (c < 0x20 || (c >= 0x7F && c <= 0xA0)) return true;
  if (c == 0xAD || c == 0x34F || c == 0x61C || c == 0x115F || c == 0x1160 || c == 0x1680 || c == 0x180E) return true;
  if (c >= 0x17B4 && c <= 0x17B5) return true;
  if (c >= 0x180B && c <= 0x180F) return true;
  if (c >= 0x2000 && c <= 0x200F) return true;  // spaces, zero-width, LRM/RLM
  if (c >= 0x2028 && c <= 0x202F) return true;  // line/paragraph separators, embeddings, overrides
  if (c >= 0x205F && c <= 0x206F) return true;  // spaces, invisible operators, isolates
  if (c == 0x3000 || c == 0x3164 || c == 0xFEFF || c == 0xFFA0) return true;
  if (c >= 0xFE00 && c <= 0xFE0F) return true;
  if (c >= 0xFFF9 && c <= 0xFFFB) return true;
  if (c >= 0xE0000 && c <= 0xE0FFF) return true;  // tags, variation selectors supplement
  return false;
}

// ASCII case-insensitive equality (header names, auth schemes, tokens). Not
// boost::beast::iequals: in Boost 1.81 it reads one byte past the end when
// the strings differ only in the case of their last character (found by
// fuzz_oauth).
inline bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    unsigned char x = static_cast<unsigned char>(a[i]), y = static_cast<unsigned char>(b[i]);
    if (x >= 'A' && x <= 'Z') x = static_cast<unsigned char>(x + ('a' - 'A'));
    if (y >= 'A' && y <= 'Z') y = static_cast<unsigned char>(y + ('a' - 'A'));
    if (x != y) return false;
  }
  return true;
}

// ASCII whitespace: space, \t, \n, \r, \v, \f.
inline bool isAsciiBlank(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

// s without the spaces and tabs around it (HTTP's optional whitespace).
inline std::string_view trimOws(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

namespace detail {
inline constexpr std::size_t kMaxBlankRun = 8;
inline void hex(std::string& out, const char* prefix, std::uint32_t v, int minDigits) {
  static const char* digits = "0123456789abcdef";
  out += prefix;
  char buf[8];
  int n = 0;
  do {
    buf[n++] = digits[v & 15];
    v >>= 4;
  } while (v || n < minDigits);
  while (n) out.push_back(buf[--n]);
}
}  // namespace detail

// One line of text for a terminal, in which every byte of s can be told:
//   \\             a backslash
//   \n \r \t       those controls
//   \xNN           any other C0 control, DEL, and each byte that is not
//                  well-formed UTF-8
//   \u{XXXX}       the hazardous code points above (C1 controls, bidi
//                  overrides, invisible and blank characters)
//   \{N spaces}    a run of N spaces (or \{N blanks}: ASCII whitespace of
//                  several kinds) at the start of s, or longer than 8
//                  anywhere: leading padding cannot push the rest aside
// Everything else (printable ASCII, other UTF-8) is kept as it is. A
// backslash in s is always doubled, so these marks cannot be forged.
inline std::string forTerminal(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size();) {
    if (isAsciiBlank(s[i])) {
      std::size_t j = i;
      bool onlySpaces = true;
      for (; j < s.size() && isAsciiBlank(s[j]); ++j) onlySpaces = onlySpaces && s[j] == ' ';
      std::size_t run = j - i;
      if (i == 0 || run > detail::kMaxBlankRun) {
        out += "\\{" + std::to_string(run) + (onlySpaces ? " space" : " blank") + (run == 1 ? "}" : "s}");
        i = j;
        continue;
      }
    }
    char32_t cp = 0;
    std::size_t n = utf8SequenceAt(s, i, &cp);
    if (n == 0) {
      detail::hex(out, "\\x", static_cast<unsigned char>(s[i]), 2);
      ++i;
      continue;
    }
    if (cp == '\\') {
      out += "\\\\";
    } else if (cp == '\n') {
      out += "\\n";
    } else if (cp == '\r') {
      out += "\\r";
    } else if (cp == '\t') {
      out += "\\t";
    } else if (cp < 0x20 || cp == 0x7F) {
      detail::hex(out, "\\x", cp, 2);
    } else if (isHazardous(cp)) {
      detail::hex(out, "\\u{", cp, 4);
      out += '}';
    } else {
      out.append(s.substr(i, n));
    }
    i += n;
  }
  return out;
}

// Serialized JSON made safe for a terminal without changing its meaning:
// inside strings, DEL and the hazardous code points above become \uXXXX
// escapes (surrogate pairs beyond U+FFFF). JSON serializers escape C0
// controls already; json must be well-formed UTF-8.
inline std::string jsonForTerminal(std::string_view json) {
  std::string out;
  out.reserve(json.size());
  auto u = [&](std::uint32_t v) { detail::hex(out, "\\u", v, 4); };
  for (std::size_t i = 0; i < json.size();) {
    char32_t cp = 0;
    std::size_t n = utf8SequenceAt(json, i, &cp);
    if (n == 0) n = 1, cp = 0;  // not expected: kept as it is
    if (cp >= 0x20 && cp != '"' && cp != '\\' && isHazardous(cp)) {
      if (cp > 0xFFFF) {
        std::uint32_t v = cp - 0x10000;
        u(0xD800 + (v >> 10));
        u(0xDC00 + (v & 0x3FF));
      } else {
        u(cp);
      }
    } else {
      out.append(json.substr(i, n));
    }
    i += n;
  }
  return out;
}

}  // namespace atlasgate::text
