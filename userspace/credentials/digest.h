#pragma once
// HTTP Digest (RFC 7616 / RFC 2617, MD5, qop="auth") for Atlas programmatic
// API keys. Atlas challenges with
//   WWW-Authenticate: Digest realm="MMS Public API", domain="", nonce="…",
//                     algorithm=MD5, qop="auth", stale=false
// atlasgate answers the challenge itself, caches the nonce and reuses it with
// an increasing nc until Atlas marks it stale. Pure logic, no I/O.

#include <chrono>
#include <cstdint>
#include <map>
#include <atomic>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

#include "common/result.h"
#include "credentials/secret.h"

namespace atlasgate::credentials {

struct DigestChallenge {
  std::string realm;
  std::string nonce;
  std::string opaque;
  std::string algorithm = "MD5";
  std::string qop;  // "auth" (other qops are refused)
  bool stale = false;
};

// Parses one WWW-Authenticate value. Untrusted input: bounded, never throws.
Result<DigestChallenge> parseDigestChallenge(std::string_view header);

// response = MD5(MD5(user:realm:secret):nonce:nc:cnonce:qop:MD5(method:uri))
std::string digestResponse(std::string_view user, std::string_view realm, std::string_view secret,
                           std::string_view method, std::string_view uri, std::string_view nonce, std::string_view nc,
                           std::string_view cnonce, std::string_view qop);

class DigestAuth {
 public:
  DigestAuth(std::string publicKey, Secret privateKey)
      : publicKey_(std::move(publicKey)), privateKey_(std::move(privateKey)) {}

  // The Authorization value for a request, from the cached nonce; nullopt
  // when no challenge has been seen yet (send without, expect a 401).
  std::optional<std::string> authorize(std::string_view method, std::string_view uri);
  // A 401's challenge: remember its nonce (nc starts again at 1).
  Result<void> onChallenge(std::string_view wwwAuthenticate);
  // Forget the nonce (after a refusal that was not a stale nonce).
  void reset();

  const std::string& publicKey() const { return publicKey_; }
  std::uint64_t challenges() const { return challenges_; }

 private:
  std::string publicKey_;
  Secret privateKey_;
  std::mutex mu_;
  std::optional<DigestChallenge> challenge_;
  std::uint32_t nc_ = 0;
  std::atomic<std::uint64_t> challenges_{0};  // read by status on another thread (workers)
};

// --- atlasgate as the Digest server -------------------------------------------
// For API keys atlasgate captured: the agent holds the public key and a
// phantom private key, so atlasgate challenges the agent itself, checks the
// answer against the phantom, and talks to Atlas with the real key.

inline constexpr std::string_view kAtlasDigestRealm = "MMS Public API";

// One Authorization: Digest value from an agent. Untrusted: bounded, never throws.
struct DigestAnswer {
  std::string username, realm, nonce, uri, response, qop, nc, cnonce, algorithm, opaque;
};
Result<DigestAnswer> parseDigestAuthorization(std::string_view header);

// Stateless nonces: the time they were made and an HMAC over it and the
// agent they were made for, so a nonce is worthless to another agent and
// goes stale after kLifetime. Nothing to store, nothing to expire.
class DigestNonces {
 public:
  using Clock = std::chrono::system_clock;
  static constexpr std::chrono::seconds kLifetime{300};
  enum class Check { Valid, Stale, Invalid };

  DigestNonces();  // a random key, new with each daemon
  ~DigestNonces();
  DigestNonces(const DigestNonces&) = delete;
  DigestNonces& operator=(const DigestNonces&) = delete;

  std::string issue(std::string_view agentKey, Clock::time_point now = Clock::now()) const;
  Check check(std::string_view nonce, std::string_view agentKey, Clock::time_point now = Clock::now()) const;
  // A WWW-Authenticate value as Atlas sends it (the Go client splits on ", ").
  std::string challenge(std::string_view agentKey, bool stale, Clock::time_point now = Clock::now()) const;

 private:
  std::string mac(std::uint64_t at, std::string_view agentKey) const;
  unsigned char key_[32];
};

// Whether `a` answers (method, uri) with `secret` as the password: realm,
// algorithm (MD5) and qop (auth) as challenged, the response compared in
// constant time. The caller checks the nonce and that a.uri is the request's.
bool verifyDigest(const DigestAnswer& a, std::string_view method, std::string_view secret);

}  // namespace atlasgate::credentials
