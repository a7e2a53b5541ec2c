#include "mongo/scram.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include <charconv>
#include <stdexcept>
#include <utility>
#include <vector>

namespace atlasgate::mongo {

namespace {

constexpr std::size_t kMaxMessage = 4096;
constexpr std::size_t kMaxUsername = 512;
constexpr std::size_t kMaxPassword = 1024;
constexpr std::uint32_t kMinIterations = 4096;
constexpr std::uint32_t kMaxIterations = 1'000'000;
constexpr std::size_t kMaxServerText = 200;  // of an "e=" message, quoted in our error
constexpr std::size_t kNonceBytes = 24;
constexpr std::size_t kFakeSaltBytes = 28;  // what MongoDB uses for SCRAM-SHA-256 (hash length - 4)

const unsigned char* bytes(std::string_view s) { return reinterpret_cast<const unsigned char*>(s.data()); }
std::string_view view(const Key32& k) { return {reinterpret_cast<const char*>(k.data()), k.size()}; }

// Wipes a secret when the scope ends, however it ends.
template <class T>
struct Wipe {
  T& v;
  ~Wipe() { OPENSSL_cleanse(v.data(), v.size()); }
};

Key32 sha256(std::string_view data) {
  Key32 out{};
  SHA256(bytes(data), data.size(), out.data());
  return out;
}

Key32 hmac(std::string_view key, std::string_view msg) {
  Key32 out{};
  unsigned int len = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), bytes(msg), msg.size(), out.data(), &len);
  return out;
}

std::string randomBytes(std::size_t n) {
  std::string out(n, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(out.data()), static_cast<int>(n)) != 1) {
    throw std::runtime_error("RAND_bytes failed");
  }
  return out;
}

std::string b64encode(std::string_view in) {
  std::string out(4 * ((in.size() + 2) / 3) + 1, '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()), bytes(in), static_cast<int>(in.size()));
  out.resize(n > 0 ? static_cast<std::size_t>(n) : 0);
  return out;
}

bool isB64Char(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' || c == '/';
}

// Strict, canonical base64: EVP_DecodeBlock alone skips blanks, counts the
// padding as zero bytes and ignores stray bits, so validate around it.
std::optional<std::string> b64decode(std::string_view in) {
  if (in.size() % 4 != 0) return std::nullopt;
  std::size_t pad = 0;
  if (!in.empty() && in.back() == '=') pad = in[in.size() - 2] == '=' ? 2 : 1;
  for (std::size_t i = 0; i < in.size() - pad; ++i) {
    if (!isB64Char(in[i])) return std::nullopt;
  }
  if (in.empty()) return std::string();
  std::string out(in.size() / 4 * 3, '\0');
  int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()), bytes(in), static_cast<int>(in.size()));
  if (n < 0 || static_cast<std::size_t>(n) != out.size()) return std::nullopt;
  out.resize(out.size() - pad);
  if (b64encode(out) != in) return std::nullopt;  // non-zero bits in the padding
  return out;
}

bool isPrintable(char c) { return c >= 0x20 && c <= 0x7e; }

// A server's "e=" text, safe to put in our own error (and thus in logs).
std::string sanitize(std::string_view s) {
  std::string out;
  for (char c : s.substr(0, kMaxServerText)) out += isPrintable(c) ? c : '?';
  if (s.size() > kMaxServerText) out += "...";
  return out;
}

// One "x=value" attribute of a SCRAM message; pos is where it starts.
struct Attr {
  char name;
  std::string_view value;
  std::size_t pos;
};

Result<std::vector<Attr>> splitAttrs(std::string_view msg, std::string_view what) {
  std::vector<Attr> out;
  std::size_t pos = 0;
  while (true) {
    std::size_t end = msg.find(',', pos);
    std::string_view part = msg.substr(pos, end == std::string_view::npos ? std::string_view::npos : end - pos);
    bool letter = part.size() >= 2 && ((part[0] >= 'a' && part[0] <= 'z') || (part[0] >= 'A' && part[0] <= 'Z'));
    if (!letter || part[1] != '=') return makeError("SCRAM {}: malformed attribute at offset {}", what, pos);
    out.push_back(Attr{part[0], part.substr(2), pos});
    if (end == std::string_view::npos) break;
    pos = end + 1;
  }
  return out;
}

Result<void> checkSize(std::string_view msg, std::string_view what) {
  if (msg.empty()) return makeError("SCRAM {}: empty message", what);
  if (msg.size() > kMaxMessage) return makeError("SCRAM {}: {} bytes, more than {}", what, msg.size(), kMaxMessage);
  return {};
}

// "e=" (a server's refusal) and "m=" (an extension we would have to
// understand) are answered the same way wherever they may appear.
Result<void> refuseErrorOrMandatory(const Attr& first, std::string_view what) {
  if (first.name == 'e') return makeError("SCRAM {}: the server refused: {}", what, sanitize(first.value));
  if (first.name == 'm') return makeError("SCRAM {}: unsupported mandatory extension", what);
  return {};
}

bool validNonce(std::string_view n) {
  if (n.empty()) return false;
  for (char c : n) {
    if (c < 0x21 || c > 0x7e || c == ',') return false;
  }
  return true;
}

std::string encodeSaslName(std::string_view name) {
  std::string out;
  for (char c : name) {
    if (c == ',') {
      out += "=2C";
    } else if (c == '=') {
      out += "=3D";
    } else {
      out += c;
    }
  }
  return out;
}

std::optional<std::string> decodeSaslName(std::string_view s) {
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '=') {
      out += s[i];
    } else if (s.substr(i, 3) == "=2C") {
      out += ',', i += 2;
    } else if (s.substr(i, 3) == "=3D") {
      out += '=', i += 2;
    } else {
      return std::nullopt;
    }
  }
  return out;
}

// Usernames go to logs and audit records: no control characters.
bool validUsername(std::string_view u) {
  if (u.empty() || u.size() > kMaxUsername) return false;
  for (char c : u) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) return false;
  }
  return true;
}

std::optional<std::uint32_t> parseIterations(std::string_view s) {
  if (s.empty() || s.size() > 7) return std::nullopt;
  std::uint32_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size()) return std::nullopt;
  return v;
}

Key32 xorKeys(const Key32& a, const Key32& b) {
  Key32 out{};
  for (std::size_t i = 0; i < out.size(); ++i) out[i] = a[i] ^ b[i];
  return out;
}

// The proof a client sends (ClientKey XOR ClientSignature).
Key32 clientProof(const Key32& saltedPassword, std::string_view authMessage) {
  Key32 clientKey = hmac(view(saltedPassword), "Client Key");
  Wipe<Key32> wipeClientKey{clientKey};
  Key32 storedKey = sha256(view(clientKey));
  Wipe<Key32> wipeStoredKey{storedKey};
  Key32 signature = hmac(view(storedKey), authMessage);
  return xorKeys(clientKey, signature);
}

// Process-wide, so that repeated probes for one unknown name see one salt.
const Key32& fakeCredentialKey() {
  static const Key32 key = [] {
    Key32 k{};
    std::string r = randomBytes(k.size());
    std::copy(r.begin(), r.end(), k.begin());
    OPENSSL_cleanse(r.data(), r.size());
    return k;
  }();
  return key;
}

ScramCredential fakeCredential(std::string_view username) {
  const std::string_view key = view(fakeCredentialKey());
  ScramCredential c;
  Key32 salt = hmac(key, "salt:" + std::string(username));
  c.salt.assign(reinterpret_cast<const char*>(salt.data()), kFakeSaltBytes);
  c.storedKey = hmac(key, "stored:" + std::string(username));
  c.serverKey = hmac(key, "server:" + std::string(username));
  return c;
}

void appendLengthPrefixed(std::string& out, std::string_view s) {
  std::uint64_t n = s.size();
  for (int i = 7; i >= 0; --i) out += static_cast<char>((n >> (8 * i)) & 0xff);
  out.append(s);
}

}  // namespace

Result<void> checkPassword(std::string_view password) {
  if (password.empty() || password.size() > kMaxPassword) {
    return makeError("password must be 1 to {} bytes, is {}", kMaxPassword, password.size());
  }
  for (char c : password) {
    if (!isPrintable(c)) return makeError("password must be printable ASCII (SCRAM's SASLprep is not implemented)");
  }
  return {};
}

Key32 SaltedPasswordCache::get(std::string_view password, std::string_view salt, std::uint32_t iterations) {
  std::string material;
  Wipe<std::string> wipeMaterial{material};
  material.reserve(password.size() + salt.size() + 24);
  appendLengthPrefixed(material, password);
  appendLengthPrefixed(material, salt);
  appendLengthPrefixed(material, std::to_string(iterations));
  Key32 digest = sha256(material);
  const std::string key(view(digest));
  {
    std::lock_guard lock(mu_);
    if (auto it = index_.find(key); it != index_.end()) {
      lru_.splice(lru_.begin(), lru_, it->second);
      return it->second->second;
    }
  }
  // PBKDF2 outside the lock: one slow derivation must not stall the others.
  Key32 out{};
  PKCS5_PBKDF2_HMAC(password.data(), static_cast<int>(password.size()), bytes(salt), static_cast<int>(salt.size()),
                    static_cast<int>(iterations), EVP_sha256(), static_cast<int>(out.size()), out.data());
  std::lock_guard lock(mu_);
  ++derivations_;
  if (capacity_ == 0 || index_.count(key) != 0) return out;
  lru_.emplace_front(key, out);
  index_[key] = lru_.begin();
  while (lru_.size() > capacity_) {
    index_.erase(lru_.back().first);
    OPENSSL_cleanse(lru_.back().second.data(), lru_.back().second.size());
    lru_.pop_back();
  }
  return out;
}

ScramCredential ScramCredential::derive(std::string_view password, std::string_view salt, std::uint32_t iterations,
                                        SaltedPasswordCache& cache) {
  ScramCredential c;
  c.salt = std::string(salt);
  c.iterations = iterations;
  Key32 salted = cache.get(password, salt, iterations);
  Wipe<Key32> wipeSalted{salted};
  Key32 clientKey = hmac(view(salted), "Client Key");
  Wipe<Key32> wipeClientKey{clientKey};
  c.storedKey = sha256(view(clientKey));
  c.serverKey = hmac(view(salted), "Server Key");
  return c;
}

// ---- client ----

ScramClient::ScramClient(std::string username, std::string password, SaltedPasswordCache& cache, std::string nonce)
    : user_(std::move(username)), password_(std::move(password)), nonce_(std::move(nonce)), cache_(cache) {
  if (nonce_.empty()) nonce_ = b64encode(randomBytes(kNonceBytes));
  clientFirstBare_ = "n=" + encodeSaslName(user_) + ",r=" + nonce_;
}

ScramClient::~ScramClient() {
  OPENSSL_cleanse(password_.data(), password_.size());
  OPENSSL_cleanse(serverKey_.data(), serverKey_.size());
}

std::string ScramClient::first() const { return "n,," + clientFirstBare_; }

Result<std::string> ScramClient::final(std::string_view serverFirst) {
  constexpr std::string_view what = "server-first";
  if (!authMessage_.empty()) return makeError("SCRAM client: final() called twice");
  if (!validUsername(user_))
    return makeError("SCRAM client: username must be 1 to {} bytes, no controls", kMaxUsername);
  if (!validNonce(nonce_)) return makeError("SCRAM client: nonce must be printable ASCII without ','");
  if (auto ok = checkPassword(password_); !ok) return ok.error();
  if (auto ok = checkSize(serverFirst, what); !ok) return ok.error();
  auto attrs = splitAttrs(serverFirst, what);
  if (!attrs) return attrs.error();
  const auto& a = *attrs;
  if (auto ok = refuseErrorOrMandatory(a[0], what); !ok) return ok.error();
  if (a.size() < 3 || a[0].name != 'r' || a[1].name != 's' || a[2].name != 'i') {
    return makeError("SCRAM {}: expected r=, s=, i= in that order", what);
  }
  std::string_view nonce = a[0].value;
  if (!validNonce(nonce) || nonce.size() <= nonce_.size() || nonce.substr(0, nonce_.size()) != nonce_) {
    return makeError("SCRAM {}: the server's nonce does not extend ours", what);
  }
  auto salt = b64decode(a[1].value);
  if (!salt || salt->empty()) return makeError("SCRAM {}: the salt is not non-empty base64", what);
  auto iterations = parseIterations(a[2].value);
  if (!iterations || *iterations < kMinIterations || *iterations > kMaxIterations) {
    return makeError("SCRAM {}: iteration count '{}' not in [{}, {}]", what, sanitize(a[2].value.substr(0, 16)),
                     kMinIterations, kMaxIterations);
  }
  Key32 salted = cache_.get(password_, *salt, *iterations);
  Wipe<Key32> wipeSalted{salted};
  std::string withoutProof = "c=biws,r=" + std::string(nonce);
  authMessage_ = clientFirstBare_ + "," + std::string(serverFirst) + "," + withoutProof;
  Key32 proof = clientProof(salted, authMessage_);
  serverKey_ = hmac(view(salted), "Server Key");
  OPENSSL_cleanse(password_.data(), password_.size());  // no longer needed
  password_.clear();
  return withoutProof + ",p=" + b64encode(view(proof));
}

Result<void> ScramClient::verify(std::string_view serverFinal) const {
  constexpr std::string_view what = "server-final";
  if (authMessage_.empty()) return makeError("SCRAM client: verify() before final()");
  if (auto ok = checkSize(serverFinal, what); !ok) return ok.error();
  auto attrs = splitAttrs(serverFinal, what);
  if (!attrs) return attrs.error();
  const Attr& v = attrs->front();
  if (v.name == 'e') return makeError("SCRAM {}: the server refused: {}", what, sanitize(v.value));
  if (v.name != 'v') return makeError("SCRAM {}: expected v=", what);
  auto signature = b64decode(v.value);
  Key32 expected = hmac(view(serverKey_), authMessage_);
  if (!signature || signature->size() != expected.size() ||
      CRYPTO_memcmp(signature->data(), expected.data(), expected.size()) != 0) {
    return makeError("SCRAM {}: the server's signature is wrong (it does not know the password)", what);
  }
  return {};
}

// ---- server ----

ScramServer::ScramServer(Lookup lookup, std::string nonce) : lookup_(std::move(lookup)), nonce_(std::move(nonce)) {
  if (nonce_.empty()) nonce_ = b64encode(randomBytes(kNonceBytes));
}

namespace {

// The GS2 header: "n,," or "y,," (no channel binding, no authzid); its length.
Result<std::size_t> parseGs2Header(std::string_view msg) {
  if (msg.starts_with("p=")) return makeError("SCRAM client-first: channel binding is not supported");
  if (!msg.starts_with("n,") && !msg.starts_with("y,")) return makeError("SCRAM client-first: malformed GS2 header");
  if (msg.substr(2).starts_with("a="))
    return makeError("SCRAM client-first: an authorization identity is not supported");
  if (!msg.substr(2).starts_with(",")) return makeError("SCRAM client-first: malformed GS2 header");
  return std::size_t{3};
}

}  // namespace

Result<std::string> ScramServer::first(std::string_view clientFirst) {
  constexpr std::string_view what = "client-first";
  if (failed_ || !serverFirst_.empty()) return makeError("SCRAM server: first() out of order");
  failed_ = true;  // until this succeeds
  if (auto ok = checkSize(clientFirst, what); !ok) return ok.error();
  auto gs2 = parseGs2Header(clientFirst);
  if (!gs2) return gs2.error();
  std::string_view bare = clientFirst.substr(*gs2);
  auto attrs = splitAttrs(bare, what);
  if (!attrs) return attrs.error();
  const auto& a = *attrs;
  if (auto ok = refuseErrorOrMandatory(a[0], what); !ok) return ok.error();
  if (a.size() < 2 || a[0].name != 'n' || a[1].name != 'r') return makeError("SCRAM {}: expected n=, r=", what);
  auto user = decodeSaslName(a[0].value);
  if (!user) return makeError("SCRAM {}: bad '=' escape in the username", what);
  if (!validUsername(*user))
    return makeError("SCRAM {}: username must be 1 to {} bytes, no controls", what, kMaxUsername);
  if (!validNonce(a[1].value)) return makeError("SCRAM {}: nonce must be printable ASCII without ','", what);
  std::optional<ScramCredential> cred = lookup_(*user);
  known_ = cred.has_value();
  cred_ = known_ ? std::move(*cred) : fakeCredential(*user);
  if (cred_.salt.empty()) return makeError("SCRAM server: the credential of '{}' has no salt", sanitize(*user));
  user_ = std::move(*user);
  gs2Header_ = std::string(clientFirst.substr(0, *gs2));
  clientFirstBare_ = std::string(bare);
  serverFirst_ = "r=" + std::string(a[1].value) + nonce_ + ",s=" + b64encode(cred_.salt) +
                 ",i=" + std::to_string(cred_.iterations);
  failed_ = false;
  return serverFirst_;
}

Result<std::string> ScramServer::final(std::string_view clientFinal) {
  constexpr std::string_view what = "client-final";
  if (failed_ || serverFirst_.empty() || done_) return makeError("SCRAM server: final() out of order");
  failed_ = true;  // one attempt per conversation
  if (auto ok = checkSize(clientFinal, what); !ok) return ok.error();
  auto attrs = splitAttrs(clientFinal, what);
  if (!attrs) return attrs.error();
  const auto& a = *attrs;
  if (auto ok = refuseErrorOrMandatory(a[0], what); !ok) return ok.error();
  if (a.size() < 3 || a[0].name != 'c' || a[1].name != 'r' || a.back().name != 'p') {
    return makeError("SCRAM {}: expected c=, r=, ..., p=", what);
  }
  auto binding = b64decode(a[0].value);
  if (!binding || *binding != gs2Header_) return makeError("SCRAM {}: channel binding does not match", what);
  std::string_view fullNonce = std::string_view(serverFirst_).substr(2, serverFirst_.find(',') - 2);
  if (a[1].value != fullNonce) return makeError("SCRAM {}: nonce does not match", what);
  auto proof = b64decode(a.back().value);
  if (!proof || proof->size() != Key32{}.size()) return makeError("SCRAM {}: malformed proof", what);
  std::string_view withoutProof = clientFinal.substr(0, a.back().pos - 1);
  std::string authMessage = clientFirstBare_ + "," + serverFirst_ + "," + std::string(withoutProof);
  Key32 signature = hmac(view(cred_.storedKey), authMessage);
  Key32 clientKey{};
  for (std::size_t i = 0; i < clientKey.size(); ++i)
    clientKey[i] = static_cast<std::uint8_t>((*proof)[i]) ^ signature[i];
  Wipe<Key32> wipeClientKey{clientKey};
  Key32 stored = sha256(view(clientKey));
  bool match = CRYPTO_memcmp(stored.data(), cred_.storedKey.data(), stored.size()) == 0;
  if (!match || !known_) return makeError("SCRAM: authentication failed");
  done_ = true;
  failed_ = false;
  return "v=" + b64encode(view(hmac(view(cred_.serverKey), authMessage)));
}

}  // namespace atlasgate::mongo
