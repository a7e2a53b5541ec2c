// Agent-controlled text on its way to the operator: UTF-8 cuts and repairs
// (common/text.h), the terminal rendering of `atlasgate status|approvals`,
// and the control socket's UTF-8 guarantee (control::makeUtf8).

#include <gtest/gtest.h>

#include <boost/json.hpp>

#include "common/text.h"
#include "control/control.h"

namespace json = boost::json;
using namespace atlasgate;

namespace {

bool hasRawControl(std::string_view s) {
  for (unsigned char c : s)
    if (c < 0x20 || c == 0x7F) return true;
  return false;
}

}  // namespace

TEST(Utf8, SequencesAreValidatedStrictly) {
  char32_t cp = 0;
  EXPECT_EQ(text::utf8SequenceAt("A", 0, &cp), 1u);
  EXPECT_EQ(cp, U'A');
  EXPECT_EQ(text::utf8SequenceAt("\xC3\xA9", 0, &cp), 2u);
  EXPECT_EQ(cp, U'\u00E9');
  EXPECT_EQ(text::utf8SequenceAt("\xE2\x80\xAE", 0, &cp), 3u);
  EXPECT_EQ(cp, U'\u202E');
  EXPECT_EQ(text::utf8SequenceAt("\xF0\x9F\x98\x80", 0, &cp), 4u);
  EXPECT_EQ(cp, U'\U0001F600');
  EXPECT_EQ(text::utf8SequenceAt("\xC3", 0), 0u);              // truncated
  EXPECT_EQ(text::utf8SequenceAt("\xA9", 0), 0u);              // stray continuation
  EXPECT_EQ(text::utf8SequenceAt("\xC0\x80", 0), 0u);          // overlong NUL
  EXPECT_EQ(text::utf8SequenceAt("\xE0\x80\xAF", 0), 0u);      // overlong '/'
  EXPECT_EQ(text::utf8SequenceAt("\xED\xA0\x80", 0), 0u);      // surrogate
  EXPECT_EQ(text::utf8SequenceAt("\xF4\x90\x80\x80", 0), 0u);  // beyond U+10FFFF
  EXPECT_EQ(text::utf8SequenceAt("\xFF", 0), 0u);
  EXPECT_TRUE(text::isUtf8("plain \xC3\xA9\xE2\x80\xAE"));
  EXPECT_FALSE(text::isUtf8("cut \xC3"));
}

TEST(Utf8, PrefixNeverSplitsACharacter) {
  // A character of every length, starting at every offset around the cut.
  for (std::string ch : {"\xC3\xA9", "\xE2\x82\xAC", "\xF0\x9F\x98\x80"}) {
    for (std::size_t pad = 505; pad <= 512; ++pad) {
      std::string s = std::string(pad, 'a') + ch + "tail";
      std::string_view p = text::utf8Prefix(s, 512);
      EXPECT_LE(p.size(), 512u);
      EXPECT_TRUE(text::isUtf8(p)) << "pad " << pad << " len " << ch.size();
      // Whole characters only: either the character fits, or the cut is before it.
      if (pad + ch.size() <= 512)
        EXPECT_EQ(p.substr(pad, ch.size()), ch);
      else
        EXPECT_EQ(p.size(), pad);
    }
  }
  EXPECT_EQ(text::utf8Prefix("short", 512), "short");
  // Bytes that are no UTF-8 count one each and may be cut anywhere.
  std::string junk(600, '\xFF');
  EXPECT_EQ(text::utf8Prefix(junk, 512).size(), 512u);
}

TEST(Utf8, ValidReplacesEachBadByte) {
  EXPECT_EQ(text::utf8Valid("ok \xC3\xA9"), "ok \xC3\xA9");
  EXPECT_EQ(text::utf8Valid("a\xFF"
                            "b"),
            "a\xEF\xBF\xBD"
            "b");
  EXPECT_EQ(text::utf8Valid("\xC3"), "\xEF\xBF\xBD");
  EXPECT_EQ(text::utf8Valid("\xED\xA0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_TRUE(text::isUtf8(text::utf8Valid("\x80\xBF\xC0\xC1\xF5\xFE\xFF")));
}

TEST(ForTerminal, ControlsAreEscapedNeverRaw) {
  std::string attack = "\x1b[2J\x1b[1;1H\x1b]0;title\x07\r\nok\tok\x7f\x01";
  std::string shown = text::forTerminal(attack);
  EXPECT_FALSE(hasRawControl(shown)) << shown;
  EXPECT_EQ(shown, "\\x1b[2J\\x1b[1;1H\\x1b]0;title\\x07\\r\\nok\\tok\\x7f\\x01");
}

TEST(ForTerminal, C1BidiAndInvisibleCodePointsAreEscaped) {
  EXPECT_EQ(text::forTerminal("a\xC2\x9B"
                              "31m"),
            "a\\u{009b}31m");                                                 // C1 CSI
  EXPECT_EQ(text::forTerminal("x\xE2\x80\xAEgnp.exe"), "x\\u{202e}gnp.exe");  // RIGHT-TO-LEFT OVERRIDE
  EXPECT_EQ(text::forTerminal("a\xE2\x81\xA6"
                              "b"),
            "a\\u{2066}b");  // LEFT-TO-RIGHT ISOLATE
  EXPECT_EQ(text::forTerminal("a\xE2\x80\x8B"
                              "b"),
            "a\\u{200b}b");  // ZERO WIDTH SPACE
  EXPECT_EQ(text::forTerminal("a\xC2\xA0"
                              "b"),
            "a\\u{00a0}b");  // NO-BREAK SPACE
  EXPECT_EQ(text::forTerminal("a\xEF\xBB\xBF"
                              "b"),
            "a\\u{feff}b");  // BOM
  EXPECT_EQ(text::forTerminal("a\xF3\xA0\x80\x81"
                              "b"),
            "a\\u{e0001}b");  // LANGUAGE TAG
  // Ordinary text outside ASCII stays readable.
  EXPECT_EQ(text::forTerminal("caf\xC3\xA9 \xE6\x97\xA5\xE6\x9C\xAC \xF0\x9F\x98\x80"),
            "caf\xC3\xA9 \xE6\x97\xA5\xE6\x9C\xAC \xF0\x9F\x98\x80");
}

TEST(ForTerminal, BadBytesAndBackslashesAreUnambiguous) {
  EXPECT_EQ(text::forTerminal("a\xFF\xC3"), "a\\xff\\xc3");
  // A literal "\x1b" in the text cannot pass for an escaped ESC.
  EXPECT_EQ(text::forTerminal("\\x1b"), "\\\\x1b");
  EXPECT_EQ(text::forTerminal("\\{600 spaces}"), "\\\\{600 spaces}");
}

TEST(ForTerminal, LeadingAndLongBlankRunsAreCounted) {
  EXPECT_EQ(text::forTerminal(std::string(600, ' ') + "payload"), "\\{600 spaces}payload");
  EXPECT_EQ(text::forTerminal(" x"), "\\{1 space}x");
  EXPECT_EQ(text::forTerminal("\n\n\t x"), "\\{4 blanks}x");
  EXPECT_EQ(text::forTerminal("a" + std::string(9, ' ') + "b"), "a\\{9 spaces}b");
  // Short runs inside the text stay as they are.
  EXPECT_EQ(text::forTerminal("a   b"), "a   b");
  EXPECT_EQ(text::forTerminal("a\n b"), "a\\n b");
  EXPECT_EQ(text::forTerminal(""), "");
}

TEST(JsonForTerminal, SameDataNoHazard) {
  json::object o{{"comm",
                  "\x1b[2J\xC2\x9B"
                  "1m\xE2\x80\xAE\x7f"},
                 {"tag", "\xF3\xA0\x80\x81"},
                 {"ok", "caf\xC3\xA9"}};
  std::string raw = json::serialize(o);
  std::string safe = text::jsonForTerminal(raw);
  EXPECT_FALSE(hasRawControl(safe)) << safe;
  EXPECT_EQ(safe.find("\xC2\x9B"), std::string::npos);
  EXPECT_EQ(safe.find("\xE2\x80\xAE"), std::string::npos);
  EXPECT_NE(safe.find("\\u202e"), std::string::npos);
  EXPECT_NE(safe.find("\\udb40\\udc01"), std::string::npos);  // U+E0001 as a surrogate pair
  EXPECT_NE(safe.find("caf\xC3\xA9"), std::string::npos);
  // Exactly the same data.
  EXPECT_EQ(json::parse(safe), json::value(o));
}

TEST(ControlUtf8, AnswersWithBadBytesStillParse) {
  json::value v = json::object{{"ok", true},
                               {"connections", json::array{json::object{{"comm",
                                                                         "\xFF\xFE"
                                                                         "evil\xC3"},
                                                                        {"pid", 7}}}},
                               {"approvals", json::array{json::object{{"body", std::string(511, 'a') + "\xC3"}}}}};
  v.as_object()["bad\xFFkey"] = "v";
  control::makeUtf8(v);
  std::string wire = json::serialize(v);
  boost::system::error_code ec;
  json::value back = json::parse(wire, ec);
  ASSERT_FALSE(ec) << ec.message();
  const auto& o = back.as_object();
  EXPECT_EQ(o.at("connections").at(0).at("comm").as_string(),
            "\xEF\xBF\xBD\xEF\xBF\xBD"
            "evil\xEF\xBF\xBD");
  EXPECT_EQ(o.at("connections").at(0).at("pid").as_int64(), 7);
  EXPECT_EQ(o.at("approvals").at(0).at("body").as_string(), std::string(511, 'a') + "\xEF\xBF\xBD");
  EXPECT_TRUE(o.contains("bad\xEF\xBF\xBDkey"));
  EXPECT_TRUE(o.at("ok").as_bool());
}
