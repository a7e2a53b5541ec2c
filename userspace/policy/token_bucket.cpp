#include "policy/token_bucket.h"

#include <algorithm>

namespace atlasgate::policy {

namespace {

constexpr std::uint64_t kNanosPerSecond = 1'000'000'000;

}  // namespace

TokenBucket::TokenBucket(const config::Rate& rate, std::uint64_t burst, Clock::time_point now)
    : count_(rate.count),
      unit_(static_cast<Wide>(rate.periodSeconds) * kNanosPerSecond),
      capacity_(unit_ * burst),
      credit_(capacity_),
      last_(now) {}

TokenBucket::Wide TokenBucket::creditAt(Clock::time_point now) const {
  if (now <= last_) return credit_;  // an injected clock may step back: no refill
  auto elapsed = std::chrono::duration_cast<std::chrono::nanoseconds>(now - last_).count();
  Wide missing = capacity_ - credit_;
  // elapsed * count could exceed 128 bits only for absurd spans: clamp first.
  Wide elapsedNs = static_cast<Wide>(elapsed);
  if (count_ == 0) return credit_;
  if (elapsedNs >= missing / count_ + 1) return capacity_;
  return std::min(capacity_, credit_ + elapsedNs * count_);
}

TokenBucket::Outcome TokenBucket::take(Clock::time_point now) {
  credit_ = creditAt(now);
  if (now > last_) last_ = now;
  if (credit_ >= unit_) {
    credit_ -= unit_;
    return {};
  }
  Wide deficit = unit_ - credit_;                                  // token-ns still missing
  Wide waitNs = count_ ? (deficit + count_ - 1) / count_ : unit_;  // ns until one token
  Wide waitS = (waitNs + kNanosPerSecond - 1) / kNanosPerSecond;
  return {false, std::chrono::seconds(std::max<std::int64_t>(1, static_cast<std::int64_t>(waitS)))};
}

double TokenBucket::available(Clock::time_point now) const {
  return static_cast<double>(creditAt(now)) / static_cast<double>(unit_);
}

RuleBuckets::RuleBuckets(const config::Rate& rate, std::uint64_t burst, config::RatePer per, std::size_t maxAgents)
    : rate_(rate), burst_(burst), per_(per), maxAgents_(std::max<std::size_t>(1, maxAgents)) {}

TokenBucket::Outcome RuleBuckets::take(std::string_view agent, Clock::time_point now) {
  std::lock_guard lock(mu_);
  if (per_ == config::RatePer::Rule) {
    if (!ruleBucket_) ruleBucket_.emplace(rate_, burst_, now);
    return ruleBucket_->take(now);
  }
  if (auto it = byAgent_.find(agent); it != byAgent_.end()) {
    lru_.splice(lru_.begin(), lru_, it->second);
    return it->second->second.take(now);
  }
  if (lru_.size() >= maxAgents_) {
    byAgent_.erase(lru_.back().first);
    lru_.pop_back();
  }
  lru_.emplace_front(std::string(agent), TokenBucket(rate_, burst_, now));
  byAgent_.emplace(lru_.front().first, lru_.begin());
  return lru_.front().second.take(now);
}

double RuleBuckets::available(std::string_view agent, Clock::time_point now) const {
  std::lock_guard lock(mu_);
  if (per_ == config::RatePer::Rule) {
    return ruleBucket_ ? ruleBucket_->available(now) : static_cast<double>(burst_);
  }
  auto it = byAgent_.find(agent);
  return it == byAgent_.end() ? static_cast<double>(burst_) : it->second->second.available(now);
}

std::size_t RuleBuckets::agentCount() const {
  std::lock_guard lock(mu_);
  return lru_.size();
}

void RuleBuckets::copyStateFrom(const RuleBuckets& other) {
  if (&other == this) return;
  std::scoped_lock lock(mu_, other.mu_);
  ruleBucket_ = other.ruleBucket_;
  lru_ = other.lru_;
  byAgent_.clear();
  while (lru_.size() > maxAgents_) lru_.pop_back();
  for (auto it = lru_.begin(); it != lru_.end(); ++it) byAgent_.emplace(it->first, it);
}

}  // namespace atlasgate::policy
