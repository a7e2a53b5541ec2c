#include "credentials/digest.h"

#include "common/text.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <fmt/format.h>

#include <cctype>

namespace atlasgate::credentials {

namespace {

constexpr std::size_t kMaxHeader = 4096;

using text::iequals;

// Lower-case hex of n bytes (Digest's MD5 values, the nonces' MACs).
std::string hex(const unsigned char* p, std::size_t n) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  out.reserve(n * 2);
  for (std::size_t i = 0; i < n; ++i) {
    out.push_back(digits[p[i] >> 4]);
    out.push_back(digits[p[i] & 15]);
  }
  return out;
}

std::string md5Hex(std::string_view data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), md, &len, EVP_md5(), nullptr);
  return hex(md, len);
}

void skipSpace(std::string_view s, std::size_t& i) {
  while (i < s.size() && (s[i] == ' ' || s[i] == '\t')) ++i;
}

}  // namespace

namespace {

// One parameter's value at h[i]: a quoted-string (backslash escapes) or a
// token; control characters are refused either way.
Result<std::string> paramValue(std::string_view h, std::size_t& i) {
  auto control = [](char ch) { return static_cast<unsigned char>(ch) < 0x20 && ch != '\t'; };
  std::string value;
  if (i < h.size() && h[i] == '"') {
    ++i;
    while (i < h.size()) {
      char ch = h[i++];
      if (control(ch)) return makeError("control character in Digest challenge");
      if (ch == '"') return value;
      if (ch == '\\' && i < h.size()) {
        if (control(h[i])) return makeError("control character in Digest challenge");
        ch = h[i++];
      }
      value.push_back(ch);
    }
    return makeError("unterminated quoted string in Digest challenge");
  }
  std::size_t v = i;
  while (i < h.size() && h[i] != ',' && h[i] != ' ' && h[i] != '\t') {
    if (static_cast<unsigned char>(h[i]) < 0x20) return makeError("control character in Digest challenge");
    ++i;
  }
  return std::string(h.substr(v, i - v));
}

// The comma-separated `key=value` parameters from h[i] on (a challenge's or
// an answer's), each handed to `take`.
template <class Take>
Result<void> eachParam(std::string_view h, std::size_t& i, Take take) {
  while (i < h.size()) {
    skipSpace(h, i);
    if (i < h.size() && h[i] == ',') {
      ++i;
      continue;
    }
    std::size_t k = i;
    while (i < h.size() && (std::isalnum(static_cast<unsigned char>(h[i])) || h[i] == '-' || h[i] == '_')) ++i;
    std::string_view key = h.substr(k, i - k);
    if (key.empty()) return makeError("malformed Digest parameters");
    skipSpace(h, i);
    if (i >= h.size() || h[i] != '=') return makeError("malformed Digest parameters");
    ++i;
    skipSpace(h, i);
    Result<std::string> value = paramValue(h, i);
    if (!value) return value.error();
    take(key, std::move(value.value()));
  }
  return {};
}

void setParam(DigestChallenge& c, std::string_view key, std::string value, bool& sawNonce) {
  if (iequals(key, "realm")) {
    c.realm = std::move(value);
  } else if (iequals(key, "nonce")) {
    c.nonce = std::move(value);
    sawNonce = true;
  } else if (iequals(key, "opaque")) {
    c.opaque = std::move(value);
  } else if (iequals(key, "algorithm")) {
    c.algorithm = std::move(value);
  } else if (iequals(key, "qop")) {
    c.qop = std::move(value);
  } else if (iequals(key, "stale")) {
    c.stale = iequals(value, "true");
  }  // domain, charset, userhash...: not needed
}

// qop may be a list ("auth,auth-int"): we need auth.
bool offersAuth(std::string_view q) {
  while (!q.empty()) {
    auto comma = q.find(',');
    std::string_view one = q.substr(0, comma);
    while (!one.empty() && one.front() == ' ') one.remove_prefix(1);
    while (!one.empty() && one.back() == ' ') one.remove_suffix(1);
    if (iequals(one, "auth")) return true;
    if (comma == std::string_view::npos) break;
    q.remove_prefix(comma + 1);
  }
  return false;
}

}  // namespace

Result<DigestChallenge> parseDigestChallenge(std::string_view h) {
  if (h.size() > kMaxHeader) return makeError("Digest challenge too long");
  std::size_t i = 0;
  skipSpace(h, i);
  if (h.size() - i < 6 || !iequals(h.substr(i, 6), "Digest") ||
      (h.size() > i + 6 && h[i + 6] != ' ' && h[i + 6] != '\t'))
    return makeError("not a Digest challenge");
  i += 6;
  DigestChallenge c;
  bool sawNonce = false;
  auto params =
      eachParam(h, i, [&](std::string_view key, std::string value) { setParam(c, key, std::move(value), sawNonce); });
  if (!params) return params.error();
  if (!sawNonce || c.nonce.empty()) return makeError("Digest challenge without a nonce");
  if (!iequals(c.algorithm, "MD5")) return makeError("unsupported Digest algorithm {}", c.algorithm.substr(0, 32));
  if (!offersAuth(c.qop)) return makeError("Digest challenge without qop=auth");
  c.qop = "auth";
  return c;
}

std::string digestResponse(std::string_view user, std::string_view realm, std::string_view secret,
                           std::string_view method, std::string_view uri, std::string_view nonce, std::string_view nc,
                           std::string_view cnonce, std::string_view qop) {
  std::string a1;
  a1.append(user).append(":").append(realm).append(":").append(secret);
  std::string ha1 = md5Hex(a1);
  OPENSSL_cleanse(a1.data(), a1.size());
  std::string ha2 = md5Hex(std::string(method) + ":" + std::string(uri));
  std::string r = ha1 + ":" + std::string(nonce) + ":" + std::string(nc) + ":" + std::string(cnonce) + ":" +
                  std::string(qop) + ":" + ha2;
  std::string out = md5Hex(r);
  OPENSSL_cleanse(ha1.data(), ha1.size());
  OPENSSL_cleanse(r.data(), r.size());
  return out;
}

std::optional<std::string> DigestAuth::authorize(std::string_view method, std::string_view uri) {
  std::lock_guard lock(mu_);
  if (!challenge_) return std::nullopt;
  ++nc_;
  char nc[9];
  std::snprintf(nc, sizeof nc, "%08x", nc_);
  unsigned char raw[8];
  RAND_bytes(raw, sizeof raw);
  char cnonce[17];
  for (int i = 0; i < 8; ++i) std::snprintf(cnonce + 2 * i, 3, "%02x", raw[i]);
  const DigestChallenge& c = *challenge_;
  // Quoted-string values: escape what would end or break the quotes.
  auto q = [](std::string_view v) {
    std::string out;
    for (char ch : v) {
      if (ch == '"' || ch == '\\') out.push_back('\\');
      if (ch == '\r' || ch == '\n') continue;
      out.push_back(ch);
    }
    return out;
  };
  std::string resp = digestResponse(publicKey_, c.realm, privateKey_.view(), method, uri, c.nonce, nc, cnonce, c.qop);
  std::string h = "Digest username=\"" + q(publicKey_) + "\", realm=\"" + q(c.realm) + "\", nonce=\"" + q(c.nonce) +
                  "\", uri=\"" + q(uri) + "\", cnonce=\"" + cnonce + "\", nc=" + nc + ", qop=" + c.qop +
                  ", response=\"" + resp + "\", algorithm=MD5";
  if (!c.opaque.empty()) h += ", opaque=\"" + q(c.opaque) + "\"";
  return h;
}

Result<void> DigestAuth::onChallenge(std::string_view wwwAuthenticate) {
  auto c = parseDigestChallenge(wwwAuthenticate);
  if (!c) return c.error();
  std::lock_guard lock(mu_);
  challenge_ = std::move(c.value());
  nc_ = 0;
  ++challenges_;
  return {};
}

void DigestAuth::reset() {
  std::lock_guard lock(mu_);
  challenge_.reset();
  nc_ = 0;
}

namespace {

void setAnswerParam(DigestAnswer& a, std::string_view key, std::string value) {
  struct Field {
    std::string_view name;
    std::string DigestAnswer::*member;
  };
  static constexpr Field kFields[] = {{"username", &DigestAnswer::username},
                                      {"realm", &DigestAnswer::realm},
                                      {"nonce", &DigestAnswer::nonce},
                                      {"uri", &DigestAnswer::uri},
                                      {"response", &DigestAnswer::response},
                                      {"qop", &DigestAnswer::qop},
                                      {"nc", &DigestAnswer::nc},
                                      {"cnonce", &DigestAnswer::cnonce},
                                      {"algorithm", &DigestAnswer::algorithm},
                                      {"opaque", &DigestAnswer::opaque}};
  for (const Field& f : kFields)
    if (iequals(key, f.name)) a.*f.member = std::move(value);
}

}  // namespace

Result<DigestAnswer> parseDigestAuthorization(std::string_view h) {
  if (h.size() > kMaxHeader) return makeError("Digest authorization too long");
  std::size_t i = 0;
  skipSpace(h, i);
  if (h.size() - i < 7 || !iequals(h.substr(i, 7), "Digest ")) return makeError("not a Digest authorization");
  i += 7;
  DigestAnswer a;
  auto params =
      eachParam(h, i, [&](std::string_view key, std::string value) { setAnswerParam(a, key, std::move(value)); });
  if (!params) return params.error();
  if (a.username.empty() || a.nonce.empty() || a.uri.empty() || a.response.empty())
    return makeError("Digest authorization without username, nonce, uri or response");
  return a;
}

DigestNonces::DigestNonces() { RAND_priv_bytes(key_, sizeof key_); }
DigestNonces::~DigestNonces() { OPENSSL_cleanse(key_, sizeof key_); }

std::string DigestNonces::mac(std::uint64_t at, std::string_view agentKey) const {
  std::string msg = std::to_string(at);
  msg.push_back('\0');
  msg.append(agentKey);
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), key_, sizeof key_, reinterpret_cast<const unsigned char*>(msg.data()), msg.size(), md, &len);
  return hex(md, 16);
}

std::string DigestNonces::issue(std::string_view agentKey, Clock::time_point now) const {
  auto at =
      static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::seconds>(now.time_since_epoch()).count());
  return fmt::format("{:016x}{}", at, mac(at, agentKey));
}

DigestNonces::Check DigestNonces::check(std::string_view nonce, std::string_view agentKey,
                                        Clock::time_point now) const {
  if (nonce.size() != 48) return Check::Invalid;
  std::uint64_t at = 0;
  for (char ch : nonce.substr(0, 16)) {
    int v = ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1;
    if (v < 0) return Check::Invalid;
    at = at << 4 | static_cast<std::uint64_t>(v);
  }
  const std::string want = mac(at, agentKey);
  if (CRYPTO_memcmp(want.data(), nonce.data() + 16, want.size()) != 0) return Check::Invalid;
  auto nowSecs = std::chrono::duration_cast<std::chrono::seconds>(now.time_since_epoch()).count();
  if (static_cast<long long>(at) > nowSecs + 5) return Check::Invalid;  // from the future: not ours
  return nowSecs - static_cast<long long>(at) > kLifetime.count() ? Check::Stale : Check::Valid;
}

std::string DigestNonces::challenge(std::string_view agentKey, bool stale, Clock::time_point now) const {
  return fmt::format("Digest realm=\"{}\", domain=\"\", nonce=\"{}\", algorithm=MD5, qop=\"auth\", stale={}",
                     kAtlasDigestRealm, issue(agentKey, now), stale ? "true" : "false");
}

bool verifyDigest(const DigestAnswer& a, std::string_view method, std::string_view secret) {
  if (a.realm != kAtlasDigestRealm) return false;
  if (!a.algorithm.empty() && !iequals(a.algorithm, "MD5")) return false;
  if (a.qop != "auth" || a.nc.empty() || a.cnonce.empty()) return false;
  std::string want = digestResponse(a.username, a.realm, secret, method, a.uri, a.nonce, a.nc, a.cnonce, a.qop);
  std::string got = a.response;
  for (char& ch : got) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  bool same = got.size() == want.size() && CRYPTO_memcmp(got.data(), want.data(), want.size()) == 0;
  OPENSSL_cleanse(want.data(), want.size());
  return same;
}

}  // namespace atlasgate::credentials
