#pragma once
// SCRAM-SHA-256 (RFC 5802, RFC 7677) as MongoDB speaks it: the client side,
// which atlasgate runs on every upstream connection it authenticates, and
// the server side, which answers an agent that authenticates with a phantom
// password. Passwords are printable ASCII (SASLprep is then the identity;
// others are refused). PBKDF2 is costly by design (Atlas: 15000 rounds), so
// salted passwords are cached: a new connection costs two HMACs, not a PBKDF2.

#include <array>
#include <cstdint>
#include <functional>
#include <list>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>

#include "common/result.h"

namespace atlasgate::mongo {

using Key32 = std::array<std::uint8_t, 32>;

// Printable ASCII (0x20-0x7e), 1..1024 bytes: what atlasgate accepts as a password.
Result<void> checkPassword(std::string_view password);

// PBKDF2-HMAC-SHA-256 results, keyed by (password, salt, iterations); the key
// is a SHA-256 over the three, never the password itself. Bounded (LRU).
// Thread-safe.
class SaltedPasswordCache {
 public:
  explicit SaltedPasswordCache(std::size_t capacity = 256) : capacity_(capacity) {}
  Key32 get(std::string_view password, std::string_view salt, std::uint32_t iterations);
  std::size_t derivations() const { return derivations_; }  // PBKDF2 runs so far (tests, bench)

 private:
  std::mutex mu_;
  std::size_t capacity_;
  std::size_t derivations_ = 0;
  std::list<std::pair<std::string, Key32>> lru_;  // front = newest
  std::unordered_map<std::string, std::list<std::pair<std::string, Key32>>::iterator> index_;
};

// One client conversation.
class ScramClient {
 public:
  // nonce: 24 random bytes base64-encoded when empty (tests pass RFC 7677's).
  ScramClient(std::string username, std::string password, SaltedPasswordCache& cache, std::string nonce = {});
  ~ScramClient();  // wipes the password and ServerKey
  // "n,,n=<user>,r=<nonce>" (',' and '=' in the name escaped as =2C and =3D).
  std::string first() const;
  // The server's first message -> the client's final message. Refused: a
  // server nonce that does not extend ours, a salt that is not base64, an
  // iteration count below 4096 or above 1,000,000, unknown mandatory
  // attributes, an "e=" error.
  Result<std::string> final(std::string_view serverFirst);
  // The server's final message must prove it knew the password.
  Result<void> verify(std::string_view serverFinal) const;

 private:
  std::string user_, password_, nonce_, clientFirstBare_, authMessage_;
  Key32 serverKey_{};
  SaltedPasswordCache& cache_;
};

// What a server keeps for one user (never the password).
struct ScramCredential {
  std::string salt;  // raw bytes
  std::uint32_t iterations = 15000;
  Key32 storedKey{};
  Key32 serverKey{};
  static ScramCredential derive(std::string_view password, std::string_view salt, std::uint32_t iterations,
                                SaltedPasswordCache& cache);
};

// One server conversation. lookup(username) gives the user's credential, or
// nullopt: then the conversation goes on with a made-up one and fails at the
// proof, so an unknown name and a wrong password look the same.
class ScramServer {
 public:
  using Lookup = std::function<std::optional<ScramCredential>(std::string_view username)>;
  explicit ScramServer(Lookup lookup, std::string nonce = {});
  // Refused: channel binding asked for ("p="), an authzid, a malformed message.
  Result<std::string> first(std::string_view clientFirst);
  // Refused: nonce or channel binding changed, a wrong proof (compared in constant time).
  Result<std::string> final(std::string_view clientFinal);
  const std::string& username() const { return user_; }
  bool done() const { return done_; }

 private:
  Lookup lookup_;
  std::string nonce_, user_, gs2Header_, clientFirstBare_, serverFirst_;
  ScramCredential cred_;
  bool known_ = false;
  bool done_ = false;
  bool failed_ = false;  // a refused message ends the conversation (no second guess)
};

}  // namespace atlasgate::mongo
