// common/text.h, the edges tests/unit/proxy/operator_text_test.cpp leaves
// out: UTF-8 decoding at offsets and range limits, the exact boundaries of
// the hazardous code point set, embedded NUL, blank runs at the threshold,
// and jsonForTerminal on DEL, non-BMP code points and bytes that are no
// UTF-8.

#include <gtest/gtest.h>

#include <boost/json.hpp>
#include <random>

#include <string>
#include <string_view>
#include <memory>

#include "common/text.h"

using namespace atlasgate;
using namespace std::string_literals;

TEST(Utf8Edges, OffsetsAndLimits) {
  char32_t cp = 0xDEAD;
  std::string_view s = "a\xC3\xA9z";
  EXPECT_EQ(text::utf8SequenceAt(s, 1, &cp), 2u);
  EXPECT_EQ(cp, U'\u00E9');
  EXPECT_EQ(text::utf8SequenceAt(s, 2), 0u);  // inside the sequence
  EXPECT_EQ(text::utf8SequenceAt(s, 3, &cp), 1u);
  EXPECT_EQ(cp, U'z');
  cp = 0xDEAD;
  EXPECT_EQ(text::utf8SequenceAt(s, 4, &cp), 0u);  // past the end
  EXPECT_EQ(text::utf8SequenceAt(s, 1000), 0u);
  EXPECT_EQ(cp, 0xDEADu);  // untouched on failure
  // Last and first of each length.
  EXPECT_EQ(text::utf8SequenceAt("\x7F", 0, &cp), 1u);
  EXPECT_EQ(text::utf8SequenceAt("\xC2\x80", 0, &cp), 2u);
  EXPECT_EQ(cp, 0x80u);
  EXPECT_EQ(text::utf8SequenceAt("\xDF\xBF", 0, &cp), 2u);
  EXPECT_EQ(cp, 0x7FFu);
  EXPECT_EQ(text::utf8SequenceAt("\xE0\xA0\x80", 0, &cp), 3u);
  EXPECT_EQ(cp, 0x800u);
  EXPECT_EQ(text::utf8SequenceAt("\xEF\xBF\xBF", 0, &cp), 3u);
  EXPECT_EQ(cp, 0xFFFFu);
  EXPECT_EQ(text::utf8SequenceAt("\xF0\x90\x80\x80", 0, &cp), 4u);
  EXPECT_EQ(cp, 0x10000u);
  EXPECT_EQ(text::utf8SequenceAt("\xF4\x8F\xBF\xBF", 0, &cp), 4u);
  EXPECT_EQ(cp, 0x10FFFFu);
  // Surrogate bounds: U+D7FF and U+E000 are fine, U+DFFF is not.
  EXPECT_EQ(text::utf8SequenceAt("\xED\x9F\xBF", 0), 3u);
  EXPECT_EQ(text::utf8SequenceAt("\xEE\x80\x80", 0), 3u);
  EXPECT_EQ(text::utf8SequenceAt("\xED\xBF\xBF", 0), 0u);
}

TEST(Utf8Edges, MalformedForms) {
  EXPECT_EQ(text::utf8SequenceAt("\xC1\xBF", 0), 0u);          // overlong 2-byte
  EXPECT_EQ(text::utf8SequenceAt("\xF0\x8F\xBF\xBF", 0), 0u);  // overlong 4-byte
  EXPECT_EQ(text::utf8SequenceAt("\xC3\x28", 0), 0u);          // bad continuation
  EXPECT_EQ(text::utf8SequenceAt("\xE2\x82", 0), 0u);          // truncated 3-byte
  EXPECT_EQ(text::utf8SequenceAt("\xE2\x82(", 0), 0u);
  EXPECT_EQ(text::utf8SequenceAt("\xF5\x80\x80\x80", 0), 0u);      // lead byte beyond U+10FFFF
  EXPECT_EQ(text::utf8SequenceAt("\xF8\x88\x80\x80\x80", 0), 0u);  // 5-byte form
  EXPECT_EQ(text::utf8SequenceAt("\xFE", 0), 0u);
}

TEST(Utf8Edges, NulIsACharacter) {
  std::string s = "a\0b"s;
  char32_t cp = 1;
  EXPECT_EQ(text::utf8SequenceAt(s, 1, &cp), 1u);
  EXPECT_EQ(cp, 0u);
  EXPECT_TRUE(text::isUtf8(s));
  EXPECT_EQ(text::utf8Valid(s), s);
  EXPECT_EQ(text::utf8Prefix(s, 2), "a\0"s);
  EXPECT_TRUE(text::isUtf8(""));
}

TEST(Utf8Edges, PrefixLimits) {
  EXPECT_EQ(text::utf8Prefix("abc", 0), "");
  EXPECT_EQ(text::utf8Prefix("\xC3\xA9", 1), "");
  EXPECT_EQ(text::utf8Prefix("\xC3\xA9", 2), "\xC3\xA9");
  EXPECT_EQ(text::utf8Prefix("abc", 3), "abc");
  // A bad byte before a character: cut counts it as one.
  EXPECT_EQ(text::utf8Prefix("\xFF\xE2\x82\xAC", 3), "\xFF");
  EXPECT_EQ(text::utf8Prefix("\xFF\xE2\x82\xAC", 4), "\xFF\xE2\x82\xAC");
  // A truncated lead at the cut is a bad byte and may be kept.
  EXPECT_EQ(text::utf8Prefix("ab\xC3"
                             "cd",
                             3),
            "ab\xC3");
}

TEST(Utf8Edges, ValidReplacesTruncatedSequencesBytewise) {
  // "\xE2\x82" + "A": two bad bytes, two replacements; 'A' kept.
  EXPECT_EQ(text::utf8Valid("\xE2\x82"
                            "A"),
            "\xEF\xBF\xBD\xEF\xBF\xBD"
            "A");
  // The replacement character itself is valid and kept.
  EXPECT_EQ(text::utf8Valid("\xEF\xBF\xBD"), "\xEF\xBF\xBD");
}

TEST(Hazardous, ExactBoundaries) {
  struct Case {
    char32_t cp;
    bool hazardous;
  };
  for (const Case& c : {
           Case{0x00, true},      Case{0x1F, true},    Case{0x20, false},      Case{0x7E, false},
           Case{0x7F, true},      Case{0x9F, true},    Case{0xA0, true},       Case{0xA1, false},
           Case{0xAC, false},     Case{0xAD, true},    Case{0xAE, false},      Case{0x34F, true},
           Case{0x61C, true},     Case{0x115F, true},  Case{0x1160, true},     Case{0x1161, false},
           Case{0x1680, true},    Case{0x17B3, false}, Case{0x17B4, true},     Case{0x17B5, true},
           Case{0x17B6, false},   Case{0x180A, false}, Case{0x180B, true},     Case{0x180F, true},
           Case{0x1810, false},   Case{0x1FFF, false}, Case{0x2000, true},     Case{0x200F, true},
           Case{0x2010, false},   Case{0x2027, false}, Case{0x2028, true},     Case{0x202F, true},
           Case{0x2030, false},   Case{0x205E, false}, Case{0x205F, true},     Case{0x206F, true},
           Case{0x2070, false},   Case{0x2FFF, false}, Case{0x3000, true},     Case{0x3001, false},
           Case{0x3164, true},    Case{0xFDFF, false}, Case{0xFE00, true},     Case{0xFE0F, true},
           Case{0xFE10, false},   Case{0xFEFF, true},  Case{0xFFA0, true},     Case{0xFFF8, false},
           Case{0xFFF9, true},    Case{0xFFFB, true},  Case{0xFFFC, false},    Case{0xFFFD, false},
           Case{0xDFFFF, false},  Case{0xE0000, true}, Case{0xE0FFF, true},    Case{0xE1000, false},
           Case{0x10FFFF, false}, Case{U'A', false},   Case{U'\u00E9', false}, Case{0x1F600, false},
       }) {
    EXPECT_EQ(text::isHazardous(c.cp), c.hazardous) << std::hex << static_cast<unsigned>(c.cp);
  }
}

TEST(AsciiBlank, ExactlySix) {
  int count = 0;
  for (int c = 0; c < 256; ++c) count += text::isAsciiBlank(static_cast<char>(c));
  EXPECT_EQ(count, 6);
  for (char c : {' ', '\t', '\n', '\r', '\v', '\f'}) EXPECT_TRUE(text::isAsciiBlank(c)) << int(c);
  EXPECT_FALSE(text::isAsciiBlank('\0'));
  EXPECT_FALSE(text::isAsciiBlank('\xA0'));  // a byte, not U+00A0
}

TEST(ForTerminalEdges, NulAndOtherBlanks) {
  EXPECT_EQ(text::forTerminal("a\0b"s), "a\\x00b");
  EXPECT_EQ(text::forTerminal("a\vb\fc"), "a\\x0bb\\x0cc");  // short inner runs: escaped one by one
  EXPECT_EQ(text::forTerminal("\tx"), "\\{1 blank}x");
  EXPECT_EQ(text::forTerminal("\r\nx"), "\\{2 blanks}x");
  EXPECT_EQ(text::forTerminal("  "), "\\{2 spaces}");
  EXPECT_EQ(text::forTerminal("\xC2\x80"), "\\u{0080}");  // C1 as UTF-8
  EXPECT_EQ(text::forTerminal("\x80"), "\\x80");          // the same value as a bad byte
}

TEST(ForTerminalEdges, BlankRunThresholdIsEight) {
  EXPECT_EQ(text::forTerminal("a" + std::string(8, ' ') + "b"), "a" + std::string(8, ' ') + "b");
  EXPECT_EQ(text::forTerminal("a" + std::string(9, ' ') + "b"), "a\\{9 spaces}b");
  EXPECT_EQ(text::forTerminal("a" + std::string(8, ' ') + "\tb"), "a\\{9 blanks}b");
  // Trailing runs are treated like inner ones.
  EXPECT_EQ(text::forTerminal("a   "), "a   ");
  EXPECT_EQ(text::forTerminal("a" + std::string(20, '\n')), "a\\{20 blanks}");
}

TEST(ForTerminalEdges, FourDigitMinimumAndLongerCodePoints) {
  EXPECT_EQ(text::forTerminal("\xE2\x80\x8B"), "\\u{200b}");
  EXPECT_EQ(text::forTerminal("\xF3\xA0\x80\xA0"), "\\u{e0020}");  // TAG SPACE: five digits
  EXPECT_EQ(text::forTerminal("\xC2\xAD"), "\\u{00ad}");           // SOFT HYPHEN
}

TEST(JsonForTerminalEdges, EscapesOnlyHazards) {
  EXPECT_EQ(text::jsonForTerminal("\"a\x7F"
                                  "b\""),
            "\"a\\u007fb\"");
  EXPECT_EQ(text::jsonForTerminal("\"\xC2\xA0\""), "\"\\u00a0\"");
  EXPECT_EQ(text::jsonForTerminal("\"\xF3\xA0\x80\xA0\""), "\"\\udb40\\udc20\"");  // U+E0020
  EXPECT_EQ(text::jsonForTerminal("\"\xEF\xB8\x8F\""), "\"\\ufe0f\"");
  // Kept: quotes, escapes already there, ordinary non-ASCII, spaces, non-BMP
  // that is not hazardous.
  const std::string keep = R"({"k":"a \"q\" \\ \u001b caf)"
                           "\xC3\xA9 \xF0\x9F\x98\x80"
                           R"("})";
  EXPECT_EQ(text::jsonForTerminal(keep), keep);
  // Hazards in keys are escaped too.
  EXPECT_EQ(text::jsonForTerminal("{\"\xE2\x80\xAE\":1}"), "{\"\\u202e\":1}");
  // Not JSON's business, kept as it is: bytes that are no UTF-8.
  EXPECT_EQ(text::jsonForTerminal("\"\xFF\""), "\"\xFF\"");
  EXPECT_EQ(text::jsonForTerminal(""), "");
}

namespace atlasgate::text {
namespace {

// Equal ignoring ASCII case only; the strings' bounds are never crossed
// (boost::beast::iequals in Boost 1.81 reads one byte past the end when only
// the last character's case differs: under ASan this test would catch that).
TEST(Iequals, AsciiCaseOnlyAndWithinBounds) {
  const std::string digest = "Digest";
  const std::string_view lastDiffers(digest.data(), digest.size());
  EXPECT_TRUE(iequals(lastDiffers, "DigesT"));
  EXPECT_TRUE(iequals("chunked", "CHUNKED"));
  EXPECT_TRUE(iequals("", ""));
  EXPECT_FALSE(iequals("bearer", "bearer "));
  EXPECT_FALSE(iequals("auth", "autH-int"));
  EXPECT_FALSE(iequals("[", "{"));                // 0x5b and 0x7b differ by 0x20 but are no letters
  EXPECT_FALSE(iequals("\xc3\xa9", "\xc3\x89"));  // é / É: ASCII only
  auto heap = std::make_unique<char[]>(1);
  heap[0] = 'A';
  EXPECT_TRUE(iequals(std::string_view(heap.get(), 1), "a"));
}

}  // namespace
}  // namespace atlasgate::text

// appendJsonString is the audit log's (and the console's) JSON string writer:
// it must write exactly what Boost.JSON writes for the UTF-8-mended string.
std::string viaBoost(std::string_view s) { return boost::json::serialize(boost::json::string(text::utf8Valid(s))); }

std::string viaAppend(std::string_view s) {
  std::string out = "prefix";
  text::appendJsonString(out, s);
  EXPECT_EQ(out.substr(0, 6), "prefix");
  return out.substr(6);
}

TEST(AppendJsonString, EveryByteAloneAndInContext) {
  for (int b = 0; b < 256; ++b) {
    std::string one(1, static_cast<char>(b));
    EXPECT_EQ(viaAppend(one), viaBoost(one)) << b;
    std::string mid = "ab" + one + "cd\xC3\xA9";
    EXPECT_EQ(viaAppend(mid), viaBoost(mid)) << b;
  }
  EXPECT_EQ(viaAppend(""), "\"\"");
  EXPECT_EQ(viaAppend("<script>\"x\"</script>\x1b[31m"), "\"<script>\\\"x\\\"</script>\\u001b[31m\"");
}

TEST(AppendJsonString, RandomBytesMatchBoostAndParseBack) {
  std::mt19937 rng(20261201);
  // Bias towards the interesting bytes: controls, quotes, backslashes, lead
  // and continuation bytes, so that cut and overlong sequences come up.
  const std::string alphabet = "a\"\\\n\t\x01\x1f\x7f\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80\xC0\xAF\xED\xA0\x80\xFF";
  for (int round = 0; round < 20000; ++round) {
    std::string s;
    std::size_t len = rng() % 24;
    for (std::size_t i = 0; i < len; ++i) s.push_back(alphabet[rng() % alphabet.size()]);
    const std::string mine = viaAppend(s);
    ASSERT_EQ(mine, viaBoost(s)) << round;
    boost::system::error_code ec;
    auto v = boost::json::parse(mine, ec);
    ASSERT_FALSE(ec) << mine;
    ASSERT_TRUE(text::isUtf8(v.as_string()));
  }
}
