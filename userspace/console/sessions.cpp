#include "console/sessions.h"

#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include <algorithm>
#include <stdexcept>

namespace atlasgate::console {

namespace {

std::string digest(std::string_view s) {
  unsigned char d[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(s.data()), s.size(), d);
  return std::string(reinterpret_cast<const char*>(d), sizeof d);
}

template <class Map, class Expiry>
void evictOldest(Map& m, Expiry expiry) {
  auto oldest =
      std::min_element(m.begin(), m.end(), [&](const auto& a, const auto& b) { return expiry(a) < expiry(b); });
  if (oldest != m.end()) m.erase(oldest);
}

}  // namespace

std::string randomToken() {
  unsigned char raw[32];
  if (RAND_bytes(raw, sizeof raw) != 1) throw std::runtime_error("RAND_bytes failed");
  static constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  std::string out;
  std::uint32_t acc = 0;
  int bits = 0;
  for (unsigned char b : raw) {
    acc = (acc << 8) | b;
    bits += 8;
    while (bits >= 6) {
      bits -= 6;
      out.push_back(kAlphabet[(acc >> bits) & 63]);
    }
  }
  if (bits > 0) out.push_back(kAlphabet[(acc << (6 - bits)) & 63]);
  OPENSSL_cleanse(raw, sizeof raw);
  return out;
}

std::string Sessions::mintSignIn(SteadyTime now) {
  std::erase_if(signIns_, [&](const auto& e) { return e.second <= now; });
  if (signIns_.size() >= kMaxSignIns) evictOldest(signIns_, [](const auto& e) { return e.second; });
  std::string token = randomToken();
  signIns_[digest(token)] = now + kSignInLifetime;
  return token;
}

Sessions::SignInResult Sessions::signIn(std::string_view token, SteadyTime now, Opened& out) {
  auto it = token.size() == 43 ? signIns_.find(digest(token)) : signIns_.end();
  if (it != signIns_.end() && it->second > now) {
    signIns_.erase(it);  // one use
    std::erase_if(sessions_, [&](const auto& e) { return e.second.expires <= now; });
    if (sessions_.size() >= kMaxSessions) evictOldest(sessions_, [](const auto& e) { return e.second.expires; });
    out.key = randomToken();
    out.csrf = randomToken();
    out.lifetime = lifetime_;
    sessions_[digest(out.key)] = Session{now + lifetime_, digest(out.csrf)};
    return SignInResult::Opened;
  }
  if (it != signIns_.end()) signIns_.erase(it);  // expired
  if (bucketAt_) {
    bucket_ = std::min<double>(kSignInBurst, bucket_ + std::chrono::duration<double>(now - *bucketAt_) / kSignInRefill);
  }
  bucketAt_ = now;
  if (bucket_ < 1) return SignInResult::RateLimited;
  bucket_ -= 1;
  return SignInResult::Refused;
}

const Sessions::Session* Sessions::find(std::string_view key, SteadyTime now) {
  if (key.size() != 43) return nullptr;
  auto it = sessions_.find(digest(key));
  if (it == sessions_.end()) return nullptr;
  if (it->second.expires <= now) {
    sessions_.erase(it);
    return nullptr;
  }
  return &it->second;
}

void Sessions::signOut(std::string_view key) { sessions_.erase(digest(key)); }

bool Sessions::csrfMatches(const Session& s, std::string_view presented) {
  if (presented.size() != 43 || s.csrfDigest.size() != SHA256_DIGEST_LENGTH) return false;
  const std::string d = digest(presented);
  return CRYPTO_memcmp(d.data(), s.csrfDigest.data(), d.size()) == 0;
}

}  // namespace atlasgate::console
