#include "credentials/digest.h"

#include "common/text.h"

#include <openssl/evp.h>
#include <openssl/rand.h>

#include <cctype>

namespace atlasgate::credentials {

namespace {

constexpr std::size_t kMaxHeader = 4096;

using text::iequals;

std::string md5Hex(std::string_view data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), md, &len, EVP_md5(), nullptr);
  static const char* hex = "0123456789abcdef";
  std::string out;
  out.reserve(len * 2);
  for (unsigned i = 0; i < len; ++i) {
    out.push_back(hex[md[i] >> 4]);
    out.push_back(hex[md[i] & 15]);
  }
  return out;
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
  while (i < h.size()) {
    skipSpace(h, i);
    if (i < h.size() && h[i] == ',') {
      ++i;
      continue;
    }
    std::size_t k = i;
    while (i < h.size() && (std::isalnum(static_cast<unsigned char>(h[i])) || h[i] == '-' || h[i] == '_')) ++i;
    std::string_view key = h.substr(k, i - k);
    if (key.empty()) return makeError("malformed Digest challenge");
    skipSpace(h, i);
    if (i >= h.size() || h[i] != '=') return makeError("malformed Digest challenge");
    ++i;
    skipSpace(h, i);
    Result<std::string> value = paramValue(h, i);
    if (!value) return value.error();
    setParam(c, key, std::move(value.value()), sawNonce);
  }
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

}  // namespace atlasgate::credentials
