// Phantom tokens, the edges phantom_test.cpp leaves out: the token's form,
// exact prefix matching (case, embedded NUL, truncation), the expiry instant,
// degenerate caps, and revocation of what is not there.

#include <gtest/gtest.h>

#include <chrono>
#include <set>
#include <string>

#include "credentials/phantom.h"

using namespace atlasgate::credentials;
using Clock = PhantomTokens::Clock;

TEST(PhantomFormat, PrefixAnd32UrlSafeCharacters) {
  PhantomTokens p;
  auto now = Clock::now();
  std::set<std::string> seen;
  for (int i = 0; i < 500; ++i) {
    std::string t = p.issue("cg/a", 1000, now);
    ASSERT_EQ(t.size(), kPhantomPrefix.size() + 32) << t;
    ASSERT_EQ(t.substr(0, 4), "agp_");
    ASSERT_EQ(t.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", 4),
              std::string::npos)
        << t;
    seen.insert(t);
  }
  EXPECT_EQ(seen.size(), 500u);
  EXPECT_EQ(p.size(), 500u);
}

TEST(PhantomFormat, OnlyTheExactPrefixIsAPhantom) {
  PhantomTokens p;
  auto now = Clock::now();
  std::string t = p.issue("cg/a", 4, now);
  std::string body = t.substr(4);
  EXPECT_EQ(p.check("AGP_" + body, "cg/a", now), PhantomCheck::NotPhantom);
  EXPECT_EQ(p.check("Agp_" + body, "cg/a", now), PhantomCheck::NotPhantom);
  EXPECT_EQ(p.check(" " + t, "cg/a", now), PhantomCheck::NotPhantom);
  EXPECT_EQ(p.check("", "cg/a", now), PhantomCheck::NotPhantom);
  EXPECT_EQ(p.check("agp", "cg/a", now), PhantomCheck::NotPhantom);
  EXPECT_EQ(p.check("agp_", "cg/a", now), PhantomCheck::Unknown);
  // Near misses of a live token are unknown, not valid.
  EXPECT_EQ(p.check(t + " ", "cg/a", now), PhantomCheck::Unknown);
  EXPECT_EQ(p.check(t.substr(0, t.size() - 1), "cg/a", now), PhantomCheck::Unknown);
  EXPECT_EQ(p.check(t + std::string(1, '\0'), "cg/a", now), PhantomCheck::Unknown);
  std::string withNul = t;
  withNul[10] = '\0';
  EXPECT_EQ(p.check(withNul, "cg/a", now), PhantomCheck::Unknown);
  std::string upper = t;
  for (std::size_t i = 4; i < upper.size(); ++i)
    if (upper[i] >= 'a' && upper[i] <= 'z') upper[i] = static_cast<char>(upper[i] - 32);
  if (upper != t) EXPECT_EQ(p.check(upper, "cg/a", now), PhantomCheck::Unknown);
  EXPECT_EQ(p.check(t, "cg/a", now), PhantomCheck::Valid);
}

TEST(PhantomFormat, AgentKeysCompareExactly) {
  PhantomTokens p;
  auto now = Clock::now();
  std::string t = p.issue("/sys/fs/cgroup/a", 4, now);
  EXPECT_EQ(p.check(t, "/sys/fs/cgroup/A", now), PhantomCheck::WrongAgent);
  EXPECT_EQ(p.check(t, "/sys/fs/cgroup/a/", now), PhantomCheck::WrongAgent);
  EXPECT_EQ(p.check(t, std::string("/sys/fs/cgroup/a\0", 17), now), PhantomCheck::WrongAgent);
  EXPECT_EQ(p.check(t, "", now), PhantomCheck::WrongAgent);
  EXPECT_EQ(p.check(t, "/sys/fs/cgroup/a", now), PhantomCheck::Valid);
  // An empty agent key is a key like any other.
  std::string e = p.issue("", 4, now);
  EXPECT_EQ(p.check(e, "", now), PhantomCheck::Valid);
  EXPECT_EQ(p.check(e, "/sys/fs/cgroup/a", now), PhantomCheck::WrongAgent);
  EXPECT_EQ(p.countOf(""), 1u);
}

TEST(PhantomFormat, ExpiresAtExactlyItsLifetime) {
  PhantomTokens p;
  auto t0 = Clock::now();
  std::string t = p.issue("cg/a", 4, t0);
  EXPECT_EQ(p.check(t, "cg/a", t0 + PhantomTokens::kLifetime - std::chrono::nanoseconds(1)), PhantomCheck::Valid);
  EXPECT_EQ(p.check(t, "cg/a", t0 + PhantomTokens::kLifetime), PhantomCheck::Expired);
  EXPECT_EQ(p.size(), 0u);
  EXPECT_EQ(p.countOf("cg/a"), 0u);
  EXPECT_EQ(p.evicted(), 0u);  // expiry is no eviction
}

TEST(PhantomFormat, ExpiredCheckedByAnotherAgentIsStillExpired) {
  PhantomTokens p;
  auto t0 = Clock::now();
  std::string t = p.issue("cg/a", 4, t0);
  EXPECT_EQ(p.check(t, "cg/b", t0 + PhantomTokens::kLifetime), PhantomCheck::Expired);
  EXPECT_EQ(p.check(t, "cg/a", t0), PhantomCheck::Unknown);
}

TEST(PhantomFormat, ZeroCapsMeanOne) {
  PhantomTokens global(0);
  auto now = Clock::now();
  std::string a = global.issue("cg/a", 10, now);
  std::string b = global.issue("cg/b", 10, now);
  EXPECT_EQ(global.size(), 1u);
  EXPECT_EQ(global.check(a, "cg/a", now), PhantomCheck::Unknown);
  EXPECT_EQ(global.check(b, "cg/b", now), PhantomCheck::Valid);
  EXPECT_EQ(global.evicted(), 1u);

  PhantomTokens perAgent;
  std::string x = perAgent.issue("cg/a", 0, now);
  std::string y = perAgent.issue("cg/a", 0, now);
  EXPECT_EQ(perAgent.countOf("cg/a"), 1u);
  EXPECT_EQ(perAgent.check(x, "cg/a", now), PhantomCheck::Unknown);
  EXPECT_EQ(perAgent.check(y, "cg/a", now), PhantomCheck::Valid);
}

TEST(PhantomFormat, RevokeOnlyWhatIsThere) {
  PhantomTokens p;
  auto now = Clock::now();
  std::string t = p.issue("cg/a", 4, now);
  EXPECT_FALSE(p.revoke("agp_nothing", "cg/a"));
  EXPECT_FALSE(p.revoke("", "cg/a"));
  EXPECT_FALSE(p.revoke(t, ""));
  EXPECT_EQ(p.size(), 1u);
  EXPECT_TRUE(p.revoke(t, "cg/a"));
  EXPECT_FALSE(p.revoke(t, "cg/a"));  // twice: gone
  EXPECT_EQ(p.countOf("cg/a"), 0u);
  EXPECT_EQ(p.evicted(), 0u);  // revocation is no eviction
}
