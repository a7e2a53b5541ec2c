#pragma once
// Sealing for the vault: AES-256-GCM (OpenSSL 3 EVP) under a 32-byte key.
//
//   blob = version (1 byte, kSealVersion) | nonce (12) | ciphertext | tag (16)
//
// A fresh random nonce per seal. The additional authenticated data says what
// the blob is for (vault.cpp binds the row and the role), so a blob opened in
// any other place fails authentication instead of yielding another secret.
// Key material and plaintext buffers are wiped with OPENSSL_cleanse.

#include <array>
#include <cstddef>
#include <string>
#include <string_view>

#include "common/result.h"

namespace atlasgate::vault {

inline constexpr unsigned char kSealVersion = 1;
inline constexpr std::size_t kNonceBytes = 12;
inline constexpr std::size_t kTagBytes = 16;
inline constexpr std::size_t kSealOverhead = 1 + kNonceBytes + kTagBytes;

// Zeroes the whole buffer of s (its capacity, not only its size: a string
// that was moved from or shortened keeps old bytes there), then clears it.
void wipe(std::string& s);

// The vault key: 32 bytes, zeroed when destroyed or moved from. Move-only.
class Key {
 public:
  static constexpr std::size_t kBytes = 32;
  Key() = default;
  ~Key();
  Key(Key&& o) noexcept;
  Key& operator=(Key&& o) noexcept;
  Key(const Key&) = delete;
  Key& operator=(const Key&) = delete;

  unsigned char* data() { return bytes_.data(); }
  const unsigned char* data() const { return bytes_.data(); }

 private:
  std::array<unsigned char, kBytes> bytes_{};
};

// A fresh key from RAND_priv_bytes.
Result<Key> randomKey();

// The blob of plain under key, authenticated together with aad.
Result<std::string> seal(const Key& key, std::string_view plain, std::string_view aad);

// Opens a blob into out (wiped first, and again on failure). Fails, and
// never yields garbage, when the blob was altered, sealed under another key
// or for another aad. Messages say which check failed, never any content.
Result<void> unseal(const Key& key, std::string_view blob, std::string_view aad, std::string& out);

}  // namespace atlasgate::vault
