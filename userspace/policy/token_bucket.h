#pragma once
// Token buckets for `rate_limit` rules.
//
// A bucket holds up to `burst` tokens and refills continuously at
// count/period (fractional tokens accrue); it starts full. A request takes one
// token; when less than one is left it is refused with the whole number of
// seconds (rounded up, at least 1) until one token will be there.
//
// Arithmetic is exact: credit is kept in "token-nanoseconds of a period"
// (1 token = period in ns), so "3/minute" refuses the 4th request with
// Retry-After 20 and accepts it again exactly 20 s later, with no rounding
// drift. 128-bit intermediates make every burst/period combination safe.

#include <chrono>
#include <cstdint>
#include <list>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>

#include "config/config.h"

namespace atlasgate::policy {

using Clock = std::chrono::steady_clock;

class TokenBucket {
 public:
  struct Outcome {
    bool allowed = true;
    std::chrono::seconds retryAfter{0};  // when refused
  };

  TokenBucket(const config::Rate& rate, std::uint64_t burst, Clock::time_point now);  // starts full

  Outcome take(Clock::time_point now);
  double available(Clock::time_point now) const;  // a peek: changes nothing

 private:
  using Wide = unsigned __int128;
  Wide creditAt(Clock::time_point now) const;

  std::uint64_t count_;  // tokens per period
  Wide unit_;            // one token: the period in ns
  Wide capacity_;        // burst tokens
  Wide credit_;
  Clock::time_point last_;
};

// The buckets of one rule: a single one (`per: rule`) or one per agent
// (`per: agent`), the latter capped at maxAgents with least-recently-used
// eviction (an evicted agent comes back with a full bucket). Thread-safe.
class RuleBuckets {
 public:
  RuleBuckets(const config::Rate& rate, std::uint64_t burst, config::RatePer per, std::size_t maxAgents);

  TokenBucket::Outcome take(std::string_view agent, Clock::time_point now);
  double available(std::string_view agent, Clock::time_point now) const;  // full when never used
  std::size_t agentCount() const;

  // Replaces this rule's state with a copy of other's (same definition).
  void copyStateFrom(const RuleBuckets& other);

 private:
  using Lru = std::list<std::pair<std::string, TokenBucket>>;  // front = most recently used

  config::Rate rate_;
  std::uint64_t burst_;
  config::RatePer per_;
  std::size_t maxAgents_;

  mutable std::mutex mu_;
  std::optional<TokenBucket> ruleBucket_;
  Lru lru_;
  std::unordered_map<std::string_view, Lru::iterator> byAgent_;  // keys view the strings in lru_
};

}  // namespace atlasgate::policy
