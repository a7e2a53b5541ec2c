#include "credentials/phantom.h"

#include <openssl/rand.h>

namespace atlasgate::credentials {

std::string PhantomTokens::issue(const std::string& agentKey, Clock::time_point now) {
  unsigned char raw[32];
  RAND_bytes(raw, sizeof raw);
  static const char* alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  std::string token(kPhantomPrefix);
  for (unsigned char b : raw) token.push_back(alphabet[b & 63]);
  std::lock_guard lock(mu_);
  if (tokens_.size() >= kMaxTokens) {
    // Drop what has expired; if still full, the oldest-expiring half.
    for (auto it = tokens_.begin(); it != tokens_.end();)
      it = it->second.expires <= now ? tokens_.erase(it) : std::next(it);
    while (tokens_.size() >= kMaxTokens) tokens_.erase(tokens_.begin());
  }
  tokens_[token] = Entry{agentKey, now + kLifetime};
  return token;
}

PhantomCheck PhantomTokens::check(std::string_view token, const std::string& agentKey, Clock::time_point now) {
  if (token.substr(0, kPhantomPrefix.size()) != kPhantomPrefix) return PhantomCheck::NotPhantom;
  std::lock_guard lock(mu_);
  auto it = tokens_.find(token);
  if (it == tokens_.end()) return PhantomCheck::Unknown;
  if (it->second.expires <= now) {
    tokens_.erase(it);
    return PhantomCheck::Expired;
  }
  return it->second.agentKey == agentKey ? PhantomCheck::Valid : PhantomCheck::WrongAgent;
}

bool PhantomTokens::revoke(std::string_view token, const std::string& agentKey) {
  std::lock_guard lock(mu_);
  auto it = tokens_.find(token);
  if (it == tokens_.end() || it->second.agentKey != agentKey) return false;
  tokens_.erase(it);
  return true;
}

std::size_t PhantomTokens::size() const {
  std::lock_guard lock(mu_);
  return tokens_.size();
}

}  // namespace atlasgate::credentials
