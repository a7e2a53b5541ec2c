#pragma once
// Who may use the console. `atlasgate console-url` mints a sign-in token
// (a one-time link): the first GET /signin?token=… consumes it and opens a
// session. A session has two secrets, and every API request must show both:
//  - its key, in an HttpOnly, SameSite=Strict cookie;
//  - its CSRF token, which the page gets once, in the fragment of the
//    sign-in redirect (never sent to a server, never served by an API), and
//    sends in X-CSRF-Token.
// The cookie alone is not enough because browsers send a host's cookies to
// every port of it: a page that a local process serves on another port of
// 127.0.0.1 receives the console's cookie. It never sees the token.
//
// Tokens, session keys and CSRF tokens are 32 random bytes (RAND_bytes),
// base64url. Only their SHA-256 digests are kept, so that a memory read of
// the daemon's maps (or a timing difference in a map lookup) tells nothing
// usable; a presented CSRF token's digest is compared with CRYPTO_memcmp.
//
// Time is passed in (steady clock), so that expiry is tested without waiting.

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>

namespace atlasgate::console {

using SteadyTime = std::chrono::steady_clock::time_point;

class Sessions {
 public:
  static constexpr std::chrono::minutes kSignInLifetime{10};
  static constexpr std::size_t kMaxSignIns = 16;  // unused links kept; the oldest goes first
  static constexpr std::size_t kMaxSessions = 64;
  // Failed sign-ins: a bucket of kSignInBurst attempts, one back every
  // kSignInRefill. Only misses are charged and a live link is always
  // honoured: guessing a 256-bit token is hopeless anyway, the bucket bounds
  // the work, and a local process must not be able to lock the operator out.
  static constexpr int kSignInBurst = 10;
  static constexpr std::chrono::seconds kSignInRefill{6};

  explicit Sessions(std::chrono::seconds sessionLifetime) : lifetime_(sessionLifetime) {}

  // A new one-time sign-in token.
  std::string mintSignIn(SteadyTime now);

  struct Opened {
    std::string key;   // the cookie's value
    std::string csrf;  // the page's token (the redirect's fragment)
    std::chrono::seconds lifetime{0};
  };
  enum class SignInResult { Opened, Refused, RateLimited };
  // Consumes a sign-in token and opens a session. Refused: unknown, used or
  // expired token; RateLimited: too many refused attempts lately (a live
  // token is honoured even then).
  SignInResult signIn(std::string_view token, SteadyTime now, Opened& out);

  struct Session {
    SteadyTime expires;
    std::string csrfDigest;  // SHA-256 of the page's token
  };
  // The live session with this key; an expired one is forgotten.
  const Session* find(std::string_view key, SteadyTime now);
  void signOut(std::string_view key);
  static bool csrfMatches(const Session& s, std::string_view presented);

  std::size_t open() const { return sessions_.size(); }
  std::size_t pendingSignIns() const { return signIns_.size(); }

 private:
  std::chrono::seconds lifetime_;
  std::map<std::string, SteadyTime> signIns_;  // digest -> expiry
  std::map<std::string, Session> sessions_;    // digest -> session
  double bucket_ = kSignInBurst;
  std::optional<SteadyTime> bucketAt_;
};

// 32 random bytes, base64url without padding (43 characters).
std::string randomToken();

}  // namespace atlasgate::console
