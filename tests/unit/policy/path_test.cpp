#include "policy/path.h"

#include <random>

#include <gtest/gtest.h>

#include "policy/path_index.h"

namespace atlasgate::policy {
namespace {

using Segs = std::vector<std::string>;

Segs norm(std::string_view target) {
  auto r = normalizePath(target);
  EXPECT_TRUE(r.ok()) << target << ": " << (r.ok() ? "" : r.error().message);
  return r.ok() ? r.value() : Segs{};
}

bool malformed(std::string_view target) { return !normalizeTarget(target).ok(); }

std::vector<PatternSegment> pat(std::string_view p) {
  auto r = parsePattern(p);
  EXPECT_TRUE(r.ok()) << p << ": " << (r.ok() ? "" : r.error().message);
  return r.ok() ? r.value() : std::vector<PatternSegment>{};
}

TEST(NormalizePath, SplitsAndCollapsesEmptySegments) {
  EXPECT_EQ(norm("/"), Segs{});
  EXPECT_EQ(norm("/a/b"), (Segs{"a", "b"}));
  EXPECT_EQ(norm("/a/b/"), (Segs{"a", "b"}));
  EXPECT_EQ(norm("//a///b//"), (Segs{"a", "b"}));
}

TEST(NormalizePath, IgnoresQueryAndFragment) {
  EXPECT_EQ(norm("/a/b?x=/../../c&y=%zz"), (Segs{"a", "b"}));
  EXPECT_EQ(norm("/a/b/?pretty=true"), (Segs{"a", "b"}));
  EXPECT_EQ(norm("/a#frag/x"), (Segs{"a"}));
}

TEST(NormalizePath, PercentDecodesEachSegmentOnce) {
  EXPECT_EQ(norm("/api/%63lusters/%44ELETE"), (Segs{"api", "clusters", "DELETE"}));
  EXPECT_EQ(norm("/a%2520b"), (Segs{"a%20b"}));  // decoded once only
  EXPECT_EQ(norm("/x%2fy"), (Segs{"x/y"}));      // kept whole in the primary view
}

TEST(NormalizePath, ResolvesDotSegments) {
  EXPECT_EQ(norm("/a/./b/../c"), (Segs{"a", "c"}));
  EXPECT_EQ(norm("/a/b/%2E%2E/c"), (Segs{"a", "c"}));
  EXPECT_EQ(norm("/a/b/%2e/c"), (Segs{"a", "b", "c"}));
  EXPECT_EQ(norm("/a/.."), Segs{});
  EXPECT_EQ(norm("/a/..."), (Segs{"a", "..."}));
}

TEST(NormalizePath, RejectsEscapingTheRoot) {
  EXPECT_TRUE(malformed("/.."));
  EXPECT_TRUE(malformed("/a/../.."));
  EXPECT_TRUE(malformed("/a/%2e%2e/%2E%2E"));
  EXPECT_FALSE(malformed("/a/../b"));
}

TEST(NormalizePath, RejectsInvalidEscapes) {
  EXPECT_TRUE(malformed("/a/%zz"));
  EXPECT_TRUE(malformed("/a/%4"));
  EXPECT_TRUE(malformed("/a/%"));
  EXPECT_TRUE(malformed("/a/b%g1"));
  EXPECT_TRUE(malformed("/a/%00"));
  EXPECT_FALSE(malformed("/a/%41"));
}

TEST(NormalizePath, RejectsNonOriginForm) {
  EXPECT_TRUE(malformed(""));
  EXPECT_TRUE(malformed("*"));
  EXPECT_TRUE(malformed("a/b"));
  EXPECT_TRUE(malformed("https://cloud.mongodb.com/api"));
}

TEST(NormalizeTarget, AlternateViewForEncodedSlashes) {
  auto n = normalizeTarget("/api/groups/g/clusters%2FCluster0");
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(n->segments, (Segs{"api", "groups", "g", "clusters/Cluster0"}));
  ASSERT_TRUE(n->alternate.has_value());
  EXPECT_EQ(*n->alternate, (Segs{"api", "groups", "g", "clusters", "Cluster0"}));

  auto plain = normalizeTarget("/api/groups/g/clusters/Cluster0");
  ASSERT_TRUE(plain.ok());
  EXPECT_FALSE(plain->alternate.has_value());
}

TEST(NormalizeTarget, AlternateViewDropsSemicolonParams) {
  auto n = normalizeTarget("/api;jsessionid=1/clusters/Prod;x=y");
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(n->segments, (Segs{"api;jsessionid=1", "clusters", "Prod;x=y"}));
  ASSERT_TRUE(n->alternate.has_value());
  EXPECT_EQ(*n->alternate, (Segs{"api", "clusters", "Prod"}));
}

TEST(NormalizeTarget, DotsHiddenBehindEncodedSlashOrParamsAreMalformed) {
  EXPECT_TRUE(malformed("/api/groups/g/x%2F..%2F..%2Fother"));
  EXPECT_TRUE(malformed("/api/groups/g/%2E%2E%2Fother"));
  EXPECT_TRUE(malformed("/api/..;/admin"));
  EXPECT_TRUE(malformed("/api/.;x/admin"));
  EXPECT_FALSE(malformed("/api/accessList/10.0.0.0%2F24"));
}

TEST(NormalizeTarget, InvariantsOnRandomTargets) {
  // A poor man's fuzzer: whatever comes in, a successful result has no
  // empty or dot segments, the alternate view has no '/' inside a segment,
  // and the display form normalises back to the same primary view.
  std::mt19937 rng(7);
  const std::string alphabet = "/./%2F2fEe;a0?3#";
  for (int t = 0; t < 20000; ++t) {
    std::string target = "/";
    std::size_t len = std::uniform_int_distribution<std::size_t>(0, 24)(rng);
    for (std::size_t k = 0; k < len; ++k) {
      target.push_back(alphabet[std::uniform_int_distribution<std::size_t>(0, alphabet.size() - 1)(rng)]);
    }
    auto n = normalizeTarget(target);
    if (!n.ok()) {
      EXPECT_FALSE(n.error().message.empty());
      continue;
    }
    for (const auto& s : n->segments) {
      ASSERT_FALSE(s.empty() || s == "." || s == "..") << target;
    }
    if (n->alternate) {
      for (const auto& s : *n->alternate) {
        ASSERT_FALSE(s.empty() || s == "." || s == ".." || s.find('/') != std::string::npos) << target;
      }
    }
    auto again = normalizePath(displayPath(n->segments));
    ASSERT_TRUE(again.ok()) << target;
    ASSERT_EQ(again.value(), n->segments) << target;
  }
}

TEST(DisplayPath, EncodesAmbiguousBytes) {
  EXPECT_EQ(displayPath({}), "/");
  EXPECT_EQ(displayPath({"a", "10.0.0.0/24", "x y", "50%"}), "/a/10.0.0.0%2F24/x%20y/50%25");
  EXPECT_EQ(displayPath({std::string("\n\x7f")}), "/%0A%7F");
}

TEST(ParsePattern, Forms) {
  auto p = pat("/api/{groupId}/*/**/End%20x/");
  ASSERT_EQ(p.size(), 5u);
  EXPECT_EQ(p[0].kind, PatternSegment::Kind::Literal);
  EXPECT_EQ(p[1].kind, PatternSegment::Kind::One);
  EXPECT_EQ(p[2].kind, PatternSegment::Kind::One);
  EXPECT_EQ(p[3].kind, PatternSegment::Kind::Any);
  EXPECT_EQ(p[4].text, "end x");            // decoded, lower-cased
  EXPECT_EQ(pat("/a/**/**/b").size(), 3u);  // "**/**" is "**"
  ASSERT_EQ(pat("").size(), 1u);            // empty = any path
  EXPECT_EQ(pat("")[0].kind, PatternSegment::Kind::Any);
}

TEST(ParsePattern, Errors) {
  EXPECT_FALSE(parsePattern("api/x").ok());
  EXPECT_FALSE(parsePattern("/api/clu*").ok());
  EXPECT_FALSE(parsePattern("/api/{a}b").ok());
  EXPECT_FALSE(parsePattern("/api/{}").ok());
  EXPECT_FALSE(parsePattern("/api/../x").ok());
  EXPECT_FALSE(parsePattern("/api/%zz").ok());
  EXPECT_FALSE(parsePattern("/api?x=1").ok());
  EXPECT_FALSE(parsePattern("/api/a%2Fb").ok());
}

TEST(MatchPattern, SingleSegmentWildcards) {
  auto p = pat("/api/groups/{groupId}/clusters/*");
  EXPECT_TRUE(matchPattern(p, {"api", "groups", "g", "clusters", "c"}));
  EXPECT_FALSE(matchPattern(p, {"api", "groups", "g", "clusters"}));
  EXPECT_FALSE(matchPattern(p, {"api", "groups", "g", "clusters", "c", "d"}));
  EXPECT_TRUE(matchPattern(p, {"API", "Groups", "g", "CLUSTERS", "c"}));  // literals ignore case
}

TEST(MatchPattern, GlobstarAtStartMiddleEnd) {
  auto start = pat("/**/processes");
  EXPECT_TRUE(matchPattern(start, {"processes"}));
  EXPECT_TRUE(matchPattern(start, {"a", "b", "processes"}));
  EXPECT_FALSE(matchPattern(start, {"a", "processes", "x"}));

  auto middle = pat("/api/**/clusters/{name}");
  EXPECT_TRUE(matchPattern(middle, {"api", "clusters", "c"}));
  EXPECT_TRUE(matchPattern(middle, {"api", "a", "b", "clusters", "c"}));
  EXPECT_TRUE(matchPattern(middle, {"api", "clusters", "clusters", "clusters", "c"}));
  EXPECT_FALSE(matchPattern(middle, {"api", "a", "clusters"}));

  auto end = pat("/api/atlas/v2/**");
  EXPECT_TRUE(matchPattern(end, {"api", "atlas", "v2"}));
  EXPECT_TRUE(matchPattern(end, {"api", "atlas", "v2", "x", "y"}));
  EXPECT_FALSE(matchPattern(end, {"api", "atlas"}));
  EXPECT_FALSE(matchPattern(end, {"api", "atlas", "v1", "x"}));

  EXPECT_TRUE(matchPattern(pat(""), {}));
  EXPECT_TRUE(matchPattern(pat("/"), {}));
  EXPECT_FALSE(matchPattern(pat("/"), {"a"}));
}

TEST(PathIndex, AgreesWithMatchPatternOnRandomPatterns) {
  // The trie and the direct matcher must give the same answer.
  std::mt19937 rng(42);
  const std::vector<std::string> words = {"a", "b", "c"};
  auto pick = [&](std::size_t n) { return std::uniform_int_distribution<std::size_t>(0, n - 1)(rng); };
  std::vector<std::vector<PatternSegment>> patterns;
  PathIndex index;
  for (std::uint32_t i = 0; i < 300; ++i) {
    std::string p;
    std::size_t len = pick(5);
    for (std::size_t k = 0; k < len; ++k) {
      switch (pick(5)) {
        case 0: p += "/*"; break;
        case 1: p += "/**"; break;
        case 2: p += "/{x" + std::to_string(k) + "}"; break;  // parameter names are unique
        default: p += "/" + words[pick(words.size())]; break;
      }
    }
    if (p.empty()) p = "/";
    patterns.push_back(pat(p));
    index.add(patterns.back(), i);
  }
  for (int t = 0; t < 2000; ++t) {
    Segs segs;
    std::size_t len = pick(6);
    for (std::size_t k = 0; k < len; ++k) segs.push_back(words[pick(words.size())]);
    std::vector<std::uint32_t> expected;
    for (std::uint32_t i = 0; i < patterns.size(); ++i) {
      if (matchPattern(patterns[i], segs)) expected.push_back(i);
    }
    ASSERT_EQ(index.candidates(segs), expected) << displayPath(segs);
  }
}

TEST(PathIndex, SharesPrefixes) {
  PathIndex index;
  for (std::uint32_t i = 0; i < 100; ++i) index.add(pat("/api/atlas/v2/groups/{g}/x" + std::to_string(i)), i);
  EXPECT_EQ(index.nodeCount(), 1u + 5u + 100u);
  EXPECT_EQ(index.candidates({"api", "atlas", "v2", "groups", "g", "x42"}), std::vector<std::uint32_t>{42});
  EXPECT_TRUE(index.candidates({"api", "atlas", "v2", "groups", "g", "y"}).empty());
}

}  // namespace
}  // namespace atlasgate::policy
