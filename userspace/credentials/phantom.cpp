#include "credentials/phantom.h"

#include <openssl/rand.h>

#include <stdexcept>
#include <tuple>

namespace atlasgate::credentials {

namespace {

std::string randomToken() {
  unsigned char raw[32];
  if (RAND_bytes(raw, sizeof raw) != 1) throw std::runtime_error("RAND_bytes failed");
  static const char* alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  std::string token(kPhantomPrefix);
  for (unsigned char b : raw) token.push_back(alphabet[b & 63]);
  return token;
}

}  // namespace

void PhantomTokens::eraseLocked(Tokens::iterator it) {
  const Entry& e = it->second;
  byExpiry_.erase(e.order);
  auto a = byAgent_.find(e.agentKey);
  if (a != byAgent_.end()) {
    a->second.erase(e.order);
    if (a->second.empty()) byAgent_.erase(a);
  }
  tokens_.erase(it);
}

std::string PhantomTokens::issue(const std::string& agentKey, std::size_t maxPerAgent, Clock::time_point now,
                                 std::string credential) {
  if (maxPerAgent < 1) maxPerAgent = 1;
  std::string token = randomToken();
  std::lock_guard lock(mu_);
  // Drop a few expired phantoms (the front of the expiry index): a constant
  // amount per call keeps up with issuance, and the caps below bound the rest.
  for (int i = 0; i < 2 && !byExpiry_.empty() && byExpiry_.begin()->first.first <= now; ++i)
    eraseLocked(byExpiry_.begin()->second);
  // At the agent's cap its oldest goes (a loop: a reload may have lowered
  // the cap); at the daemon's cap, the daemon's oldest.
  auto evict = [&](Tokens::iterator victim) {
    if (victim->second.order.first > now) ++evicted_;
    eraseLocked(victim);
  };
  if (auto a = byAgent_.find(agentKey); a != byAgent_.end()) {
    while (a->second.size() >= maxPerAgent) {
      bool last = a->second.size() == 1;
      evict(a->second.begin()->second);  // the last one takes the agent's index entry with it
      if (last) break;
    }
  }
  while (tokens_.size() >= maxTokens_) evict(byExpiry_.begin()->second);
  auto [it, fresh] = tokens_.try_emplace(token);
  while (!fresh) {  // 192 random bits: not expected to happen
    token = randomToken();
    std::tie(it, fresh) = tokens_.try_emplace(token);
  }
  Order order{now + kLifetime, seq_++};
  it->second = Entry{agentKey, order, std::move(credential)};
  byExpiry_.emplace(order, it);
  byAgent_[agentKey].emplace(order, it);
  return token;
}

PhantomCheck PhantomTokens::check(std::string_view token, const std::string& agentKey, Clock::time_point now,
                                  std::string* credential) {
  if (token.substr(0, kPhantomPrefix.size()) != kPhantomPrefix) return PhantomCheck::NotPhantom;
  std::lock_guard lock(mu_);
  auto it = tokens_.find(token);
  if (it == tokens_.end()) return PhantomCheck::Unknown;
  if (it->second.order.first <= now) {
    eraseLocked(it);
    return PhantomCheck::Expired;
  }
  if (it->second.agentKey != agentKey) return PhantomCheck::WrongAgent;
  if (credential != nullptr) *credential = it->second.credential;
  return PhantomCheck::Valid;
}

bool PhantomTokens::revoke(std::string_view token, const std::string& agentKey) {
  std::lock_guard lock(mu_);
  auto it = tokens_.find(token);
  if (it == tokens_.end() || it->second.agentKey != agentKey) return false;
  eraseLocked(it);
  return true;
}

std::size_t PhantomTokens::size() const {
  std::lock_guard lock(mu_);
  return tokens_.size();
}

std::size_t PhantomTokens::countOf(std::string_view agentKey) const {
  std::lock_guard lock(mu_);
  auto a = byAgent_.find(agentKey);
  return a == byAgent_.end() ? 0 : a->second.size();
}

std::uint64_t PhantomTokens::evicted() const {
  std::lock_guard lock(mu_);
  return evicted_;
}

}  // namespace atlasgate::credentials
