#include "policy/token_bucket.h"

#include <gtest/gtest.h>

namespace atlasgate::policy {
namespace {

using namespace std::chrono_literals;

const Clock::time_point kT0 = Clock::time_point(1000h);

TEST(TokenBucket, ThreePerMinute) {
  TokenBucket b(config::Rate{3, 60}, 3, kT0);
  EXPECT_TRUE(b.take(kT0).allowed);
  EXPECT_TRUE(b.take(kT0).allowed);
  EXPECT_TRUE(b.take(kT0).allowed);
  auto refused = b.take(kT0);
  EXPECT_FALSE(refused.allowed);
  EXPECT_EQ(refused.retryAfter, 20s);
  EXPECT_EQ(b.take(kT0 + 19s).retryAfter, 1s);
  EXPECT_FALSE(b.take(kT0 + 19s + 999ms).allowed);
  EXPECT_TRUE(b.take(kT0 + 20s).allowed);
  EXPECT_FALSE(b.take(kT0 + 20s).allowed);
}

TEST(TokenBucket, RetryAfterRoundsUpAndIsAtLeastOneSecond) {
  TokenBucket b(config::Rate{1000, 1}, 1, kT0);  // a token every ms
  EXPECT_TRUE(b.take(kT0).allowed);
  auto r = b.take(kT0);
  EXPECT_FALSE(r.allowed);
  EXPECT_EQ(r.retryAfter, 1s);

  TokenBucket slow(config::Rate{7, 60}, 1, kT0);  // 60/7 = 8.57 s per token
  EXPECT_TRUE(slow.take(kT0).allowed);
  EXPECT_EQ(slow.take(kT0).retryAfter, 9s);
  EXPECT_EQ(slow.take(kT0 + 8s).retryAfter, 1s);
  EXPECT_TRUE(slow.take(kT0 + 8572ms).allowed);
}

TEST(TokenBucket, BurstAndContinuousRefill) {
  TokenBucket b(config::Rate{3, 60}, 5, kT0);
  for (int i = 0; i < 5; ++i) EXPECT_TRUE(b.take(kT0).allowed) << i;
  EXPECT_FALSE(b.take(kT0).allowed);
  EXPECT_DOUBLE_EQ(b.available(kT0 + 10s), 0.5);  // fractional tokens accrue
  EXPECT_FALSE(b.take(kT0 + 10s).allowed);
  EXPECT_TRUE(b.take(kT0 + 20s).allowed);
  EXPECT_DOUBLE_EQ(b.available(kT0 + 24h), 5.0);  // never beyond the burst
  for (int i = 0; i < 5; ++i) EXPECT_TRUE(b.take(kT0 + 24h).allowed);
  EXPECT_FALSE(b.take(kT0 + 24h).allowed);
}

TEST(TokenBucket, AvailableDoesNotTake) {
  TokenBucket b(config::Rate{1, 60}, 1, kT0);
  EXPECT_DOUBLE_EQ(b.available(kT0), 1.0);
  EXPECT_DOUBLE_EQ(b.available(kT0), 1.0);
  EXPECT_TRUE(b.take(kT0).allowed);
  EXPECT_DOUBLE_EQ(b.available(kT0), 0.0);
}

TEST(TokenBucket, ClockSteppingBackDoesNotRefill) {
  TokenBucket b(config::Rate{1, 60}, 1, kT0);
  EXPECT_TRUE(b.take(kT0).allowed);
  EXPECT_FALSE(b.take(kT0 - 1h).allowed);
  EXPECT_TRUE(b.take(kT0 + 60s).allowed);
}

TEST(TokenBucket, HugeValuesDoNotOverflow) {
  TokenBucket b(config::Rate{UINT32_MAX, 86400}, UINT32_MAX, kT0);
  EXPECT_TRUE(b.take(kT0).allowed);
  EXPECT_TRUE(b.take(kT0 + 24h * 365 * 100).allowed);
}

TEST(RuleBuckets, PerAgentAndPerRule) {
  RuleBuckets perAgent(config::Rate{1, 60}, 1, config::RatePer::Agent, 100);
  EXPECT_TRUE(perAgent.take("a", kT0).allowed);
  EXPECT_TRUE(perAgent.take("b", kT0).allowed);
  EXPECT_FALSE(perAgent.take("a", kT0).allowed);
  EXPECT_EQ(perAgent.agentCount(), 2u);

  RuleBuckets perRule(config::Rate{1, 60}, 1, config::RatePer::Rule, 100);
  EXPECT_TRUE(perRule.take("a", kT0).allowed);
  EXPECT_FALSE(perRule.take("b", kT0).allowed);
  EXPECT_EQ(perRule.agentCount(), 0u);
}

TEST(RuleBuckets, EvictsTheLeastRecentlyUsedAgent) {
  RuleBuckets buckets(config::Rate{1, 3600}, 1, config::RatePer::Agent, 2);
  EXPECT_TRUE(buckets.take("a", kT0).allowed);
  EXPECT_TRUE(buckets.take("b", kT0).allowed);
  EXPECT_FALSE(buckets.take("a", kT0).allowed);  // touches a
  EXPECT_TRUE(buckets.take("c", kT0).allowed);   // evicts b
  EXPECT_EQ(buckets.agentCount(), 2u);
  EXPECT_FALSE(buckets.take("a", kT0).allowed);  // a kept its (empty) bucket
  EXPECT_TRUE(buckets.take("b", kT0).allowed);   // b came back full (evicting c)
  EXPECT_TRUE(buckets.take("c", kT0).allowed);
}

TEST(RuleBuckets, CopyStateFrom) {
  RuleBuckets old(config::Rate{1, 60}, 1, config::RatePer::Agent, 10);
  EXPECT_TRUE(old.take("a", kT0).allowed);
  RuleBuckets fresh(config::Rate{1, 60}, 1, config::RatePer::Agent, 10);
  fresh.copyStateFrom(old);
  EXPECT_FALSE(fresh.take("a", kT0).allowed);
  EXPECT_TRUE(fresh.take("b", kT0).allowed);
  EXPECT_TRUE(old.take("b", kT0).allowed);  // independent copies
}

}  // namespace
}  // namespace atlasgate::policy
