#pragma once
// HTTP Digest (RFC 7616 / RFC 2617, MD5, qop="auth") for Atlas programmatic
// API keys. Atlas challenges with
//   WWW-Authenticate: Digest realm="MMS Public API", domain="", nonce="…",
//                     algorithm=MD5, qop="auth", stale=false
// atlasgate answers the challenge itself, caches the nonce and reuses it with
// an increasing nc until Atlas marks it stale. Pure logic, no I/O.

#include <cstdint>
#include <map>
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
  std::uint64_t challenges_ = 0;
};

}  // namespace atlasgate::credentials
