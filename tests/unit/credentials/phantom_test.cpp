// Phantom tokens: per-agent cap (the agent's oldest goes), global cap (the
// daemon's oldest goes), expiry, and O(log n) issuance at the cap.

#include <gtest/gtest.h>

#include <chrono>
#include <set>
#include <vector>

#include "credentials/phantom.h"

using namespace atlasgate::credentials;
using Clock = PhantomTokens::Clock;

TEST(Phantom, IssuedTokenIsBoundToItsAgent) {
  PhantomTokens p;
  auto now = Clock::now();
  std::string t = p.issue("cg/a", 4, now);
  EXPECT_EQ(t.rfind("agp_", 0), 0u);
  EXPECT_EQ(p.check(t, "cg/a", now), PhantomCheck::Valid);
  EXPECT_EQ(p.check(t, "cg/b", now), PhantomCheck::WrongAgent);
  EXPECT_EQ(p.check("agp_unknown", "cg/a", now), PhantomCheck::Unknown);
  EXPECT_EQ(p.check("Bearer-ish", "cg/a", now), PhantomCheck::NotPhantom);
  EXPECT_FALSE(p.revoke(t, "cg/b"));
  EXPECT_TRUE(p.revoke(t, "cg/a"));
  EXPECT_EQ(p.check(t, "cg/a", now), PhantomCheck::Unknown);
  EXPECT_EQ(p.size(), 0u);
  EXPECT_EQ(p.countOf("cg/a"), 0u);
}

TEST(Phantom, PerAgentCapEvictsThatAgentsOldest) {
  PhantomTokens p;
  auto now = Clock::now();
  std::string other = p.issue("cg/other", 3, now);
  std::vector<std::string> mine;
  // Same instant for all: issue order decides.
  for (int i = 0; i < 3; ++i) mine.push_back(p.issue("cg/a", 3, now));
  std::string other2 = p.issue("cg/other", 3, now);
  EXPECT_EQ(p.countOf("cg/a"), 3u);
  mine.push_back(p.issue("cg/a", 3, now));  // over the cap: mine[0] goes
  EXPECT_EQ(p.countOf("cg/a"), 3u);
  EXPECT_EQ(p.check(mine[0], "cg/a", now), PhantomCheck::Unknown);
  for (int i = 1; i < 4; ++i) EXPECT_EQ(p.check(mine[i], "cg/a", now), PhantomCheck::Valid) << i;
  mine.push_back(p.issue("cg/a", 3, now + std::chrono::seconds(1)));  // then mine[1]
  EXPECT_EQ(p.check(mine[1], "cg/a", now), PhantomCheck::Unknown);
  EXPECT_EQ(p.check(mine[2], "cg/a", now), PhantomCheck::Valid);
  // Other agents' phantoms are untouched.
  EXPECT_EQ(p.check(other, "cg/other", now), PhantomCheck::Valid);
  EXPECT_EQ(p.check(other2, "cg/other", now), PhantomCheck::Valid);
  EXPECT_EQ(p.countOf("cg/other"), 2u);
  EXPECT_EQ(p.evicted(), 2u);
  EXPECT_EQ(p.size(), 5u);
}

TEST(Phantom, LoweredCapShrinksTheAgentAtItsNextIssue) {
  PhantomTokens p;
  auto now = Clock::now();
  std::vector<std::string> t;
  for (int i = 0; i < 5; ++i) t.push_back(p.issue("cg/a", 10, now));
  t.push_back(p.issue("cg/a", 2, now));
  EXPECT_EQ(p.countOf("cg/a"), 2u);
  EXPECT_EQ(p.check(t[4], "cg/a", now), PhantomCheck::Valid);
  EXPECT_EQ(p.check(t[5], "cg/a", now), PhantomCheck::Valid);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(p.check(t[i], "cg/a", now), PhantomCheck::Unknown) << i;
  // A cap of 1 keeps only the newest.
  std::string last = p.issue("cg/a", 1, now);
  EXPECT_EQ(p.countOf("cg/a"), 1u);
  EXPECT_EQ(p.check(last, "cg/a", now), PhantomCheck::Valid);
}

TEST(Phantom, GlobalCapEvictsTheOldestNotTheAlphabeticallyFirst) {
  constexpr std::size_t kCap = 1000;
  PhantomTokens p(kCap);
  auto now = Clock::now();
  std::vector<std::string> t;
  for (std::size_t i = 0; i < kCap; ++i) t.push_back(p.issue("cg/" + std::to_string(i % 50), 100, now));
  EXPECT_EQ(p.size(), kCap);
  std::string newest = p.issue("cg/new", 100, now);
  EXPECT_EQ(p.size(), kCap);
  EXPECT_EQ(p.check(t[0], "cg/0", now), PhantomCheck::Unknown);
  for (std::size_t i = 1; i < kCap; ++i)
    ASSERT_EQ(p.check(t[i], "cg/" + std::to_string(i % 50), now), PhantomCheck::Valid) << i;
  EXPECT_EQ(p.check(newest, "cg/new", now), PhantomCheck::Valid);
}

TEST(Phantom, ExpiredPhantomsAreRefusedAndGoFirst) {
  PhantomTokens p(3);
  auto t0 = Clock::now();
  std::string old1 = p.issue("cg/a", 10, t0);
  std::string old2 = p.issue("cg/b", 10, t0 + std::chrono::seconds(1));
  auto later = t0 + PhantomTokens::kLifetime + std::chrono::seconds(1);
  EXPECT_EQ(p.check(old1, "cg/a", later), PhantomCheck::Expired);
  EXPECT_EQ(p.check(old1, "cg/a", later), PhantomCheck::Unknown);  // and forgotten
  // Issuing drops what has expired before anything alive.
  std::string fresh1 = p.issue("cg/c", 10, later + std::chrono::seconds(1));
  std::string fresh2 = p.issue("cg/c", 10, later + std::chrono::seconds(1));
  std::string fresh3 = p.issue("cg/c", 10, later + std::chrono::seconds(1));
  EXPECT_EQ(p.check(old2, "cg/b", later), PhantomCheck::Unknown);  // expired, dropped by an issue
  EXPECT_EQ(p.size(), 3u);
  std::string fresh4 = p.issue("cg/d", 10, later + std::chrono::seconds(2));
  EXPECT_EQ(p.check(fresh1, "cg/c", later), PhantomCheck::Unknown);  // global cap 3: the oldest alive went
  EXPECT_EQ(p.check(fresh2, "cg/c", later), PhantomCheck::Valid);
  EXPECT_EQ(p.check(fresh3, "cg/c", later), PhantomCheck::Valid);
  EXPECT_EQ(p.check(fresh4, "cg/d", later), PhantomCheck::Valid);
  EXPECT_EQ(p.countOf("cg/b"), 0u);
  EXPECT_EQ(p.evicted(), 1u);  // only fresh1 went before its time
}

// Sanity check of the complexity: at the global cap of 100,000 live phantoms
// each issuance used to scan the whole map. 20,000 issuances at the cap must
// take nowhere near 20,000 full scans (2e9 node visits, many seconds).
TEST(Phantom, IssuingAtTheGlobalCapIsCheap) {
  PhantomTokens p;
  auto now = Clock::now();
  std::vector<std::string> first;
  for (std::size_t i = 0; i < PhantomTokens::kMaxTokens; ++i) {
    std::string t = p.issue("cg/" + std::to_string(i % 2000), 64, now);
    if (i < 10) first.push_back(t);
  }
  ASSERT_EQ(p.size(), PhantomTokens::kMaxTokens);
  auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < 20000; ++i) p.issue("cg/late-" + std::to_string(i % 1000), 64, now);
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_LT(seconds, 5.0);
  EXPECT_EQ(p.size(), PhantomTokens::kMaxTokens);
  for (const auto& t : first) EXPECT_EQ(p.check(t, "cg/0", now), PhantomCheck::Unknown);
}
