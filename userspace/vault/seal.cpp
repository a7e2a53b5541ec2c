#include "vault/seal.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include <algorithm>
#include <climits>
#include <memory>

namespace atlasgate::vault {

namespace {

struct CtxFree {
  void operator()(EVP_CIPHER_CTX* c) const { EVP_CIPHER_CTX_free(c); }  // cleanses the key schedule
};
using Ctx = std::unique_ptr<EVP_CIPHER_CTX, CtxFree>;

const unsigned char* bytes(std::string_view s) { return reinterpret_cast<const unsigned char*>(s.data()); }
unsigned char* bytes(std::string& s) { return reinterpret_cast<unsigned char*>(s.data()); }

}  // namespace

void wipe(std::string& s) {
  // resize() to the capacity makes every byte of the buffer part of the
  // string (no reallocation), so the cleanse reaches all of it.
  s.resize(s.capacity());
  if (!s.empty()) OPENSSL_cleanse(s.data(), s.size());
  s.clear();
}

Key::~Key() { OPENSSL_cleanse(bytes_.data(), bytes_.size()); }

Key::Key(Key&& o) noexcept : bytes_(o.bytes_) { OPENSSL_cleanse(o.bytes_.data(), o.bytes_.size()); }

Key& Key::operator=(Key&& o) noexcept {
  if (this != &o) {
    bytes_ = o.bytes_;
    OPENSSL_cleanse(o.bytes_.data(), o.bytes_.size());
  }
  return *this;
}

Result<Key> randomKey() {
  Key k;
  if (RAND_priv_bytes(k.data(), static_cast<int>(Key::kBytes)) != 1) {
    return makeError("cannot draw a vault key: the OpenSSL random generator failed");
  }
  return k;
}

Result<std::string> seal(const Key& key, std::string_view plain, std::string_view aad) {
  if (plain.size() > INT_MAX - kSealOverhead || aad.size() > INT_MAX) return makeError("seal: input too large");
  std::string blob(kSealOverhead + plain.size(), '\0');
  blob[0] = static_cast<char>(kSealVersion);
  unsigned char* nonce = bytes(blob) + 1;
  unsigned char* ct = nonce + kNonceBytes;
  unsigned char* tag = ct + plain.size();
  if (RAND_bytes(nonce, kNonceBytes) != 1) return makeError("seal: the OpenSSL random generator failed");
  Ctx ctx(EVP_CIPHER_CTX_new());
  int len = 0;
  bool ok = ctx && EVP_EncryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, nullptr, nullptr) == 1 &&
            EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_IVLEN, kNonceBytes, nullptr) == 1 &&
            EVP_EncryptInit_ex(ctx.get(), nullptr, nullptr, key.data(), nonce) == 1 &&
            EVP_EncryptUpdate(ctx.get(), nullptr, &len, bytes(aad), static_cast<int>(aad.size())) == 1 &&
            EVP_EncryptUpdate(ctx.get(), ct, &len, bytes(plain), static_cast<int>(plain.size())) == 1 &&
            static_cast<std::size_t>(len) == plain.size() && EVP_EncryptFinal_ex(ctx.get(), ct + len, &len) == 1 &&
            len == 0 && EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_GET_TAG, kTagBytes, tag) == 1;
  if (!ok) return makeError("seal: AES-256-GCM encryption failed");
  return blob;
}

Result<void> unseal(const Key& key, std::string_view blob, std::string_view aad, std::string& out) {
  wipe(out);
  if (blob.size() < kSealOverhead) return makeError("sealed blob is truncated ({} bytes)", blob.size());
  if (static_cast<unsigned char>(blob[0]) != kSealVersion) {
    return makeError("sealed blob has unknown version {}", static_cast<unsigned>(static_cast<unsigned char>(blob[0])));
  }
  if (blob.size() > INT_MAX || aad.size() > INT_MAX) return makeError("sealed blob too large");
  const unsigned char* nonce = bytes(blob) + 1;
  const unsigned char* ct = nonce + kNonceBytes;
  std::size_t ctLen = blob.size() - kSealOverhead;
  // The tag is const here; EVP's set-tag control takes a non-const pointer
  // but only copies from it.
  unsigned char tag[kTagBytes];
  std::copy(ct + ctLen, ct + ctLen + kTagBytes, tag);
  out.assign(ctLen, '\0');
  Ctx ctx(EVP_CIPHER_CTX_new());
  int len = 0;
  bool ok = ctx && EVP_DecryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, nullptr, nullptr) == 1 &&
            EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_IVLEN, kNonceBytes, nullptr) == 1 &&
            EVP_DecryptInit_ex(ctx.get(), nullptr, nullptr, key.data(), nonce) == 1 &&
            EVP_DecryptUpdate(ctx.get(), nullptr, &len, bytes(aad), static_cast<int>(aad.size())) == 1 &&
            EVP_DecryptUpdate(ctx.get(), bytes(out), &len, ct, static_cast<int>(ctLen)) == 1 &&
            static_cast<std::size_t>(len) == ctLen &&
            EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_TAG, kTagBytes, tag) == 1;
  // Final checks the tag: only now may the plaintext be believed.
  if (!ok || EVP_DecryptFinal_ex(ctx.get(), bytes(out) + len, &len) != 1) {
    wipe(out);
    return makeError("sealed blob does not authenticate");
  }
  return {};
}

}  // namespace atlasgate::vault
