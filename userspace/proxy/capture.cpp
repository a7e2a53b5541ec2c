#include "proxy/capture.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#include <algorithm>
#include <chrono>
#include <array>
#include <memory>

#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <boost/json/value.hpp>
#include <fmt/format.h>

#include "common/text.h"
#include "policy/path.h"

namespace atlasgate::proxy::capture {

namespace json = boost::json;
using text::iequals;

Origin Origin::current(std::string target, std::string owner) {
  return Origin{
      std::move(target), std::move(owner),
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count()};
}

Minted::~Minted() {
  OPENSSL_cleanse(secret.data(), secret.size());
  OPENSSL_cleanse(phantom.data(), phantom.size());
}

// ---- the table ------------------------------------------------------------------

namespace {

using Segments = std::vector<std::string>;

// segs[i..] spells `words` ("*" = any one segment), case-insensitively.
bool spells(const Segments& segs, std::initializer_list<std::string_view> words) {
  if (segs.size() != words.size()) return false;
  std::size_t i = 0;
  for (std::string_view w : words) {
    if (w != "*" && !iequals(segs[i], w)) return false;
    ++i;
  }
  return true;
}

bool scopeWord(std::string_view s) { return iequals(s, "orgs") || iequals(s, "groups"); }

std::string scopeOf(const Segments& s) { return fmt::format("{}/{}", iequals(s[0], "orgs") ? "orgs" : "groups", s[1]); }

std::optional<Plan> mintPlan(const Segments& s) {
  // POST /orgs makes an organization and may answer with its first API key
  // and service account (CreateOrganizationResponse).
  if (s.size() == 1 && iequals(s[0], "orgs")) return Plan{Action::MintOrganization, "orgs", {}, {}};
  if (s.size() == 3 && scopeWord(s[0]) && iequals(s[2], "apiKeys")) return Plan{Action::MintApiKey, scopeOf(s), {}, {}};
  if (s.size() == 3 && scopeWord(s[0]) && iequals(s[2], "serviceAccounts"))
    return Plan{Action::MintServiceAccount, scopeOf(s), {}, {}};
  if (s.size() == 5 && scopeWord(s[0]) && iequals(s[2], "serviceAccounts") && iequals(s[4], "secrets"))
    return Plan{Action::MintServiceAccountSecret, scopeOf(s), s[3], {}};
  if (spells(s, {"groups", "*", "databaseUsers", "*", "certs"}))
    return Plan{Action::MintCertificate, scopeOf(s), s[3], {}};
  if (spells(s, {"groups", "*", "databaseUsers"})) return Plan{Action::SetDatabasePassword, scopeOf(s), {}, {}};
  return std::nullopt;
}

std::optional<Plan> forgetPlan(const Segments& s) {
  using vault::Kind;
  Plan p{Action::Forget, {}, {}, {}};
  if (spells(s, {"orgs", "*", "apiKeys", "*"})) {
    p.forgets.push_back({Kind::ApiKey, s[3]});
  } else if (spells(s, {"orgs", "*", "serviceAccounts", "*"})) {
    // The organization's DELETE ends the account; a project's only removes
    // it from the project ("credentials remain active"): nothing to forget.
    p.forgets.push_back({Kind::ServiceAccountSecret, s[3]});  // every secret of the account
  } else if (s.size() == 6 && scopeWord(s[0]) && iequals(s[2], "serviceAccounts") && iequals(s[4], "secrets")) {
    p.forgets.push_back({Kind::ServiceAccountSecret, s[3] + "/" + s[5]});
  } else if (spells(s, {"groups", "*", "databaseUsers", "*", "*"})) {
    p.forgets.push_back({Kind::DatabaseUser, fmt::format("{}/{}/{}", s[1], s[3], s[4])});
    p.forgets.push_back({Kind::X509Certificate, fmt::format("{}/{}", s[1], s[4])});
  } else {
    return std::nullopt;
  }
  p.scope = scopeOf(s);
  return p;
}

}  // namespace

namespace {

// "v2", "v1.0", "v2.1": any API version, today's or a future one.
bool versionSegment(std::string_view v) {
  if (v.size() < 2 || (v[0] != 'v' && v[0] != 'V')) return false;
  return std::all_of(v.begin() + 1, v.end(), [](char c) { return (c >= '0' && c <= '9') || c == '.'; });
}

std::optional<Plan> planForSegments(std::string_view method, const Segments& all) {
  // /api/atlas/vN/… and the Cloud Manager spelling /api/public/v1.0/…,
  // which the same host may serve.
  if (all.size() < 4 || !iequals(all[0], "api") || !(iequals(all[1], "atlas") || iequals(all[1], "public")) ||
      !versionSegment(all[2]))
    return std::nullopt;
  Segments s(all.begin() + 3, all.end());
  if (iequals(method, "POST")) return mintPlan(s);
  if (iequals(method, "PATCH") && spells(s, {"groups", "*", "databaseUsers", "*", "*"}))
    return Plan{Action::SetDatabasePassword, scopeOf(s), s[3] + "/" + s[4], {}};
  if (iequals(method, "DELETE")) return forgetPlan(s);
  return std::nullopt;
}

}  // namespace

std::optional<Plan> planFor(std::string_view method, std::string_view target) {
  // Only these mint or drop a credential (planForSegments): a GET costs no
  // second reading of its path.
  if (!iequals(method, "POST") && !iequals(method, "PATCH") && !iequals(method, "DELETE")) return std::nullopt;
  auto t = policy::normalizeTarget(target);
  if (!t) return std::nullopt;  // malformed: refused before this by the rules
  // Both readings of the path (path.h): a server that drops ";params" or
  // splits at "%2F" must not see a minting call that capture did not.
  std::optional<Plan> primary = planForSegments(method, t->segments);
  if (primary || !t->alternate) return primary;
  return planForSegments(method, *t->alternate);
}

namespace {

void usersTouched(std::string_view method, const Segments& all, std::string_view body, std::vector<std::string>& out) {
  if (all.size() < 6 || !iequals(all[0], "api") || !(iequals(all[1], "atlas") || iequals(all[1], "public")) ||
      !versionSegment(all[2]) || !iequals(all[3], "groups") || !iequals(all[5], "databaseUsers"))
    return;
  // .../databaseUsers/{db}/{user} and .../databaseUsers/{user}/certs: every
  // segment after databaseUsers may be the user's name.
  if (all.size() >= 7) {
    out.insert(out.end(), all.begin() + 6, all.end());
    return;
  }
  if (all.size() != 6 || !iequals(method, "POST")) return;
  boost::system::error_code ec;
  json::value doc = json::parse(body, ec);
  const json::object* o = ec ? nullptr : doc.if_object();
  const json::value* u = o ? o->if_contains("username") : nullptr;
  out.push_back(u && u->is_string() ? std::string(u->as_string()) : std::string());
}

}  // namespace

std::vector<std::string> databaseUsersTouched(std::string_view method, std::string_view target, std::string_view body) {
  std::vector<std::string> out;
  if (iequals(method, "GET") || iequals(method, "HEAD")) return out;
  auto t = policy::normalizeTarget(target);
  if (!t) return out;
  usersTouched(method, t->segments, body, out);
  if (t->alternate) usersTouched(method, *t->alternate, body, out);
  return out;
}

// ---- phantoms -------------------------------------------------------------------

namespace {

// A uniformly random character of `alphabet` (rejection sampling).
char randomOf(std::string_view alphabet) {
  const unsigned limit = 256 - 256 % alphabet.size();
  for (;;) {
    unsigned char b = 0;
    RAND_bytes(&b, 1);
    if (b < limit) return alphabet[b % alphabet.size()];
  }
}

constexpr std::string_view kDigits = "0123456789";
constexpr std::string_view kLowerHex = "0123456789abcdef";
constexpr std::string_view kUpperHex = "0123456789ABCDEF";
constexpr std::string_view kLower = "abcdefghijklmnopqrstuvwxyz";
constexpr std::string_view kUpper = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";
constexpr std::string_view kAlnum = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

bool allOf(std::string_view s, std::string_view alphabet, std::string_view keep) {
  return std::all_of(s.begin(), s.end(), [&](char c) {
    return alphabet.find(c) != std::string_view::npos || keep.find(c) != std::string_view::npos;
  });
}

// Each character replaced by one of its class; separators kept in place.
std::string sameClasses(std::string_view s) {
  std::string_view letters = allOf(s, kLowerHex, "-_.") ? kLowerHex : allOf(s, kUpperHex, "-_.") ? kUpperHex : "";
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    if (!letters.empty() && letters.find(c) != std::string_view::npos)
      out.push_back(randomOf(letters));
    else if (c >= '0' && c <= '9')
      out.push_back(randomOf(kDigits));
    else if (c >= 'a' && c <= 'z')
      out.push_back(randomOf(kLower));
    else if (c >= 'A' && c <= 'Z')
      out.push_back(randomOf(kUpper));
    else
      out.push_back(c);
  }
  return out;
}

bool isUuid(std::string_view s) {
  if (s.size() != 36) return false;
  for (std::size_t i = 0; i < s.size(); ++i) {
    bool dash = i == 8 || i == 13 || i == 18 || i == 23;
    if (dash != (s[i] == '-')) return false;
    if (!dash &&
        kLowerHex.find(static_cast<char>(std::tolower(static_cast<unsigned char>(s[i])))) == std::string_view::npos)
      return false;
  }
  return true;
}

std::string uuidV4() {
  std::array<unsigned char, 16> b{};
  RAND_bytes(b.data(), b.size());
  b[6] = static_cast<unsigned char>((b[6] & 0x0f) | 0x40);
  b[8] = static_cast<unsigned char>((b[8] & 0x3f) | 0x80);
  std::string out;
  for (std::size_t i = 0; i < b.size(); ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) out.push_back('-');
    out += fmt::format("{:02x}", b[i]);
  }
  return out;
}

constexpr std::string_view kSecretPrefix = "mdb_sa_sk_";

}  // namespace

std::string phantomLike(std::string_view secret) {
  for (int attempt = 0; attempt < 16; ++attempt) {
    std::string p;
    if (isUuid(secret))
      p = uuidV4();
    else if (secret.substr(0, kSecretPrefix.size()) == kSecretPrefix)
      p = std::string(kSecretPrefix) + sameClasses(secret.substr(kSecretPrefix.size()));
    else
      p = sameClasses(secret);
    if (p != secret || secret.empty()) return p;
  }
  return uuidV4();  // nothing in it varies (no letter, no digit): not a secret's shape anyway
}

Tripwire::~Tripwire() {
  OPENSSL_cleanse(extra_.data(), extra_.size());
  OPENSSL_cleanse(tail_.data(), tail_.size());
}

bool Tripwire::scan(std::string_view s) const {
  auto hex = [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); };
  for (std::size_t at = s.find("\"privateKey\""); at != std::string_view::npos; at = s.find("\"privateKey\"", at + 1)) {
    std::size_t i = at + 12;
    while (i < s.size() && (s[i] == ' ' || s[i] == ':' || s[i] == '\t')) ++i;
    if (i + 1 < s.size() && s[i] == '"' && hex(s[i + 1])) return true;  // masked values start with '*'
  }
  for (std::size_t at = s.find(kSecretPrefix); at != std::string_view::npos; at = s.find(kSecretPrefix, at + 1)) {
    std::size_t i = at + kSecretPrefix.size();
    if (i < s.size() && s[i] != '.' && s[i] != '*' && s[i] != '"') return true;
  }
  if (s.find("PRIVATE KEY-----") != std::string_view::npos) return true;
  // The extra secret (a password atlasgate set) by its first 8 characters:
  // a piece that ends inside it trips before the rest arrives, so at most 7
  // of its characters can go out ahead of the piece that trips.
  return !extra_.empty() && s.find(std::string_view(extra_).substr(0, kExtraLead)) != std::string_view::npos;
}

bool Tripwire::hit(std::string_view piece) {
  // Within the piece, then across its start (the previous piece's tail
  // followed by this piece's head): longest pattern ~64 bytes, or extra.
  const std::size_t keep = std::max<std::size_t>(1024, extra_.size());
  if (scan(piece)) return true;
  bool found = false;
  if (!tail_.empty()) {  // the first piece has no seam: its head was just scanned
    std::string seam = tail_;
    seam.append(piece.substr(0, std::min(piece.size(), keep)));
    found = scan(seam);
    OPENSSL_cleanse(seam.data(), seam.size());
  }
  if (piece.size() >= keep) {
    tail_.assign(piece.substr(piece.size() - keep));
  } else {
    tail_.append(piece);
    if (tail_.size() > keep) tail_.erase(0, tail_.size() - keep);
  }
  return found;
}

std::string strongPassword() {
  std::string p;
  for (int i = 0; i < 32; ++i) p.push_back(randomOf(kAlnum));  // 32 * log2(62) ≈ 190 bits
  return p;
}

// ---- swapping secrets in a body -------------------------------------------------

namespace {

// Every occurrence of `secret` in body becomes `phantom`. When the secret
// never occurs raw (Atlas escaped a character of it), the caller falls back
// to re-serialising; false here.
bool replaceAll(std::string& body, std::string_view secret, std::string_view phantom) {
  if (secret.empty()) return false;
  bool any = false;
  for (std::size_t at = body.find(secret); at != std::string::npos; at = body.find(secret, at + phantom.size())) {
    body.replace(at, secret.size(), phantom);
    any = true;
  }
  return any;
}

// A secret worth the name: at least 8 letters or digits (else its phantom
// could not differ enough from it, and no Atlas secret looks like that).
bool secretShape(std::string_view s) {
  return std::count_if(s.begin(), s.end(), [](char c) { return std::isalnum(static_cast<unsigned char>(c)); }) >= 8;
}

bool safeId(std::string_view s) {
  return !s.empty() && s.size() <= 256 && std::all_of(s.begin(), s.end(), [](char c) {
    return static_cast<unsigned char>(c) > 0x20 && static_cast<unsigned char>(c) < 0x7f && c != '/';
  });
}

const json::string* stringAt(const json::object& o, std::string_view key) {
  auto it = o.find(key);
  return it == o.end() ? nullptr : it->value().if_string();
}

vault::Entry entryFor(vault::Kind kind, std::string name, const Plan& plan, const Origin& origin) {
  vault::Entry e;
  e.name = fmt::format("captured:{}:{}", vault::kindName(kind), name);
  e.kind = kind;
  e.target = origin.target;
  e.owner = origin.owner;
  e.scope = plan.scope;
  e.object = std::move(name);
  e.createdAt = origin.now;
  return e;
}

Result<Minted> apiKey(const Plan& plan, const json::object& o, const Origin& origin) {
  const json::string* id = stringAt(o, "id");
  const json::string* pub = stringAt(o, "publicKey");
  const json::string* priv = stringAt(o, "privateKey");
  if (!id || !pub || !priv || !safeId(*id) || !safeId(*pub) || !secretShape(*priv))
    return makeError("an API key without a string id, publicKey and privateKey");
  Minted m;
  m.entry = entryFor(vault::Kind::ApiKey, std::string(*id), plan, origin);
  m.entry.lookup = std::string(*pub);
  if (const json::string* desc = stringAt(o, "desc")) m.entry.label = std::string(text::utf8Prefix(*desc, 256));
  m.secret = std::string(*priv);
  m.phantom = phantomLike(m.secret);
  return m;
}

// One element of a service account's `secrets`, or the answer of POST …/secrets.
Result<Minted> saSecret(const Plan& plan, std::string_view clientId, std::string_view label, const json::object& o,
                        const Origin& origin) {
  const json::string* id = stringAt(o, "id");
  const json::string* secret = stringAt(o, "secret");
  if (!id || !safeId(*id) || !secret || !secretShape(*secret))
    return makeError("a secret without a string id and secret");
  Minted m;
  m.entry =
      entryFor(vault::Kind::ServiceAccountSecret, fmt::format("{}/{}", clientId, std::string_view(*id)), plan, origin);
  m.entry.lookup = std::string(clientId);
  m.entry.label = std::string(text::utf8Prefix(label, 256));
  m.secret = std::string(*secret);
  m.phantom = phantomLike(m.secret);
  return m;
}

Result<std::vector<Minted>> serviceAccount(const Plan& plan, const json::object& o, const Origin& origin) {
  const json::string* clientId = stringAt(o, "clientId");
  if (!clientId || !safeId(*clientId)) return makeError("a service account without a string clientId");
  const json::string* name = stringAt(o, "name");
  std::vector<Minted> out;
  auto it = o.find("secrets");
  if (it == o.end()) return makeError("a new service account without secrets");
  const json::array* secrets = it->value().if_array();
  if (!secrets) return makeError("a service account whose secrets are not a list");
  for (const json::value& v : *secrets) {
    const json::object* so = v.if_object();
    if (!so) return makeError("a service account secret that is not an object");
    // Masked (as on a read): nothing to capture. Neither field: a shape
    // atlasgate does not know, which might carry a secret it cannot see.
    if (!so->contains("secret")) {
      if (so->contains("maskedSecretValue")) continue;
      return makeError("a service account secret with neither secret nor maskedSecretValue");
    }
    auto m = saSecret(plan, *clientId, name ? std::string_view(*name) : std::string_view(), *so, origin);
    if (!m) return m.error();
    out.push_back(std::move(*m));
  }
  return out;
}

// POST /orgs: {"organization":{"id":…}, "apiKey":{…privateKey…},
// "serviceAccount":{…secrets…}, "orgOwnerId":…}; each part optional.
Result<std::vector<Minted>> organization(const json::object& o, const Origin& origin) {
  std::vector<Minted> out;
  std::string orgId;
  if (auto it = o.find("organization"); it != o.end() && it->value().is_object())
    if (const json::string* id = stringAt(it->value().as_object(), "id"); id && safeId(*id)) orgId = std::string(*id);
  const Plan scoped{Action::MintOrganization, "orgs/" + (orgId.empty() ? std::string("?") : orgId), {}, {}};
  if (auto it = o.find("apiKey"); it != o.end() && !it->value().is_null()) {
    const json::object* k = it->value().if_object();
    if (!k) return makeError("an organization whose apiKey is not an object");
    auto m = apiKey(scoped, *k, origin);
    if (!m) return m.error();
    out.push_back(std::move(*m));
  }
  if (auto it = o.find("serviceAccount"); it != o.end() && !it->value().is_null()) {
    const json::object* sa = it->value().if_object();
    if (!sa) return makeError("an organization whose serviceAccount is not an object");
    auto ms = serviceAccount(scoped, *sa, origin);
    if (!ms) return ms.error();
    for (auto& m : *ms) out.push_back(std::move(m));
  }
  return out;
}

Result<std::vector<Minted>> mintedIn(const Plan& plan, const json::value& doc, const Origin& origin) {
  const json::object* o = doc.if_object();
  if (!o) return makeError("the answer is not a JSON object");
  std::vector<Minted> out;
  if (plan.action == Action::MintApiKey) {
    auto m = apiKey(plan, *o, origin);
    if (!m) return m.error();
    out.push_back(std::move(*m));
  } else if (plan.action == Action::MintServiceAccount) {
    return serviceAccount(plan, *o, origin);
  } else if (plan.action == Action::MintOrganization) {
    return organization(*o, origin);
  } else if (plan.action == Action::MintServiceAccountSecret) {
    if (!safeId(plan.object)) return makeError("a client id that cannot name a vault entry");
    auto m = saSecret(plan, plan.object, {}, *o, origin);
    if (!m) return m.error();
    out.push_back(std::move(*m));
  }
  return out;
}

// Whether any string of the document (decoded) holds one of the secrets.
bool holdsSecret(const json::value& v, const std::vector<Minted>& minted) {
  if (const auto* s = v.if_string())
    return std::any_of(minted.begin(), minted.end(),
                       [&](const Minted& m) { return std::string_view(*s).find(m.secret) != std::string_view::npos; });
  if (const auto* a = v.if_array())
    return std::any_of(a->begin(), a->end(), [&](const json::value& e) { return holdsSecret(e, minted); });
  if (const auto* o = v.if_object())
    return std::any_of(o->begin(), o->end(), [&](const auto& kv) { return holdsSecret(kv.value(), minted); });
  return false;
}

// Swaps each minted secret in `body`; re-serialises when one is escaped
// (in any of its spellings: the raw swap is checked on the decoded result).
Result<std::string> swapped(std::string body, json::value doc, const std::vector<Minted>& minted) {
  bool raw = true;
  for (const Minted& m : minted) raw = replaceAll(body, m.secret, m.phantom) && raw;
  if (raw) {
    std::error_code ec;
    json::value after = json::parse(body, ec);
    raw = !ec && !holdsSecret(after, minted);
  }
  if (!raw) {
    // Atlas escaped something in a secret: the bytes cannot be kept, the
    // meaning can. Walk the document and swap the string values.
    std::vector<json::value*> stack{&doc};
    while (!stack.empty()) {
      json::value* v = stack.back();
      stack.pop_back();
      if (auto* s = v->if_string()) {
        for (const Minted& m : minted)
          if (*s == m.secret) *s = m.phantom;
      } else if (auto* a = v->if_array()) {
        for (auto& e : *a) stack.push_back(&e);
      } else if (auto* o = v->if_object()) {
        for (auto& kv : *o) stack.push_back(&kv.value());
      }
    }
    body = json::serialize(doc);
  }
  for (const Minted& m : minted)
    if (body.find(m.secret) != std::string::npos) return makeError("a secret is still in the answer");
  std::error_code ec;
  json::value check = json::parse(body, ec);
  if (ec || holdsSecret(check, minted)) return makeError("a secret is still in the answer");
  return body;
}

std::string describeUnclaimed(const Plan& plan, const std::vector<Minted>& minted) {
  std::string out;
  for (const Minted& m : minted) {
    if (!out.empty()) out += ", ";
    out += fmt::format("{} {} in {}{}", vault::kindName(m.entry.kind), text::forTerminal(m.entry.object), plan.scope,
                       m.entry.kind == vault::Kind::ApiKey ? " (public key " + text::forTerminal(m.entry.lookup) + ")"
                                                           : std::string());
  }
  return out;
}

Result<Rewritten> rewriteCertificate(const Plan& plan, std::string_view body, const Origin& origin);

}  // namespace

Result<Rewritten> rewriteResponse(const Plan& plan, std::string_view body, const Origin& origin) {
  if (plan.action == Action::MintCertificate) return rewriteCertificate(plan, body, origin);
  std::error_code ec;
  json::value doc = json::parse(body, ec);
  if (ec) return makeError("the answer is not JSON ({})", ec.message());
  auto minted = mintedIn(plan, doc, origin);
  if (!minted) return minted.error();
  Rewritten out;
  out.unclaimed = describeUnclaimed(plan, *minted);
  auto b = swapped(std::string(body), std::move(doc), *minted);
  if (!b) return b.error();
  out.body = std::move(*b);
  out.minted = std::move(*minted);
  return out;
}

// ---- X.509 ----------------------------------------------------------------------

namespace {

struct PkeyFree {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
};
struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
using Pkey = std::unique_ptr<EVP_PKEY, PkeyFree>;
using Bio = std::unique_ptr<BIO, BioFree>;

std::string bioText(BIO* b) {
  char* p = nullptr;
  long n = BIO_get_mem_data(b, &p);
  return n > 0 ? std::string(p, static_cast<std::size_t>(n)) : std::string();
}

// A fresh key of the same algorithm and size as `real`, in the same PEM form.
Result<std::string> phantomKey(std::string_view pem) {
  Bio in(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  // No passphrase: an encrypted key is refused, never prompted for.
  auto noPassphrase = [](char*, int, int, void*) -> int { return 0; };
  Pkey real(PEM_read_bio_PrivateKey(in.get(), nullptr, noPassphrase, nullptr));
  if (!real) return makeError("a private key block that does not parse");
  if (EVP_PKEY_get_bits(real.get()) > 4096) return makeError("a private key larger than 4096 bits");
  Pkey fresh;
  if (EVP_PKEY_is_a(real.get(), "RSA")) {
    fresh.reset(EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", static_cast<size_t>(EVP_PKEY_get_bits(real.get()))));
  } else if (EVP_PKEY_is_a(real.get(), "EC")) {
    char group[64] = {};
    size_t len = 0;
    if (EVP_PKEY_get_group_name(real.get(), group, sizeof group, &len) != 1)
      return makeError("an EC key without a curve");
    fresh.reset(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", group));
  } else if (EVP_PKEY_is_a(real.get(), "ED25519")) {
    fresh.reset(EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519"));
  } else {
    return makeError("a private key of a type atlasgate cannot imitate");
  }
  if (!fresh) return makeError("cannot make a phantom key");
  Bio out(BIO_new(BIO_s_mem()));
  bool traditional =
      pem.find("-----BEGIN RSA PRIVATE KEY-----") == 0 || pem.find("-----BEGIN EC PRIVATE KEY-----") == 0;
  int ok = traditional
               ? PEM_write_bio_PrivateKey_traditional(out.get(), fresh.get(), nullptr, nullptr, 0, nullptr, nullptr)
               : PEM_write_bio_PrivateKey(out.get(), fresh.get(), nullptr, nullptr, 0, nullptr, nullptr);
  if (ok != 1) return makeError("cannot write a phantom key");
  std::string text = bioText(out.get());
  if (!text.empty() && text.back() == '\n' && !pem.empty() && pem.back() != '\n') text.pop_back();
  return text;
}

// The serial of the first certificate in the bundle, in hex.
std::string firstSerial(std::string_view body) {
  Bio in(BIO_new_mem_buf(body.data(), static_cast<int>(body.size())));
  std::unique_ptr<X509, X509Free> cert(PEM_read_bio_X509(in.get(), nullptr, nullptr, nullptr));
  if (!cert) return {};
  BIGNUM* bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert.get()), nullptr);
  if (!bn) return {};
  char* hex = BN_bn2hex(bn);
  std::string out = hex ? hex : "";
  OPENSSL_free(hex);
  BN_free(bn);
  return out;
}

// [begin, end) of each "-----BEGIN … PRIVATE KEY-----" block, END line included.
std::vector<std::pair<std::size_t, std::size_t>> keyBlocks(std::string_view body) {
  std::vector<std::pair<std::size_t, std::size_t>> out;
  std::size_t at = 0;
  while ((at = body.find("-----BEGIN ", at)) != std::string_view::npos) {
    std::size_t eol = body.find("-----", at + 11);
    if (eol == std::string_view::npos) break;
    std::string_view label = body.substr(at + 11, eol - at - 11);
    std::size_t stop = body.find(fmt::format("-----END {}-----", label), eol);
    if (stop == std::string_view::npos) break;
    stop += label.size() + 14;
    if (label.size() >= 11 && label.substr(label.size() - 11) == "PRIVATE KEY") out.emplace_back(at, stop);
    at = stop;
  }
  return out;
}

Result<Rewritten> rewriteCertificate(const Plan& plan, std::string_view body, const Origin& origin) {
  if (body.find("PRIVATE KEY") != std::string_view::npos && keyBlocks(body).empty())
    return makeError("a private key that is not a complete PEM block");
  auto blocks = keyBlocks(body);
  if (blocks.empty()) return makeError("a certificate answer without a private key");
  // Every "PRIVATE KEY-----" must belong to a complete block (BEGIN and END):
  // an unfinished one would go out as it came.
  std::size_t marks = 0;
  for (std::size_t at = body.find("PRIVATE KEY-----"); at != std::string_view::npos;
       at = body.find("PRIVATE KEY-----", at + 1))
    ++marks;
  if (marks != 2 * blocks.size()) return makeError("a private key that is not a complete PEM block");
  if (!safeId(plan.object)) return makeError("a user name that cannot name a vault entry");
  std::string serial = firstSerial(body);
  if (serial.empty()) return makeError("a certificate answer without a readable certificate");
  Rewritten out;
  out.body = std::string(body);
  for (auto it = blocks.rbegin(); it != blocks.rend(); ++it) {  // from the end: offsets stay valid
    std::string_view real = body.substr(it->first, it->second - it->first);
    auto fake = phantomKey(real);
    if (!fake) return fake.error();
    Minted m;
    m.entry = entryFor(vault::Kind::X509Certificate,
                       fmt::format("{}/{}/{}", plan.scope.substr(plan.scope.find('/') + 1), plan.object, serial), plan,
                       origin);
    m.entry.lookup = plan.object;
    m.secret = std::string(real);
    m.phantom = std::move(*fake);
    out.body.replace(it->first, it->second - it->first, m.phantom);
    out.minted.push_back(std::move(m));
  }
  if (out.minted.size() > 1)  // one certificate, one key: anything else is not what Atlas sends
    return makeError("a certificate answer with {} private keys", out.minted.size());
  out.unclaimed = fmt::format("an X.509 certificate (serial {}) for database user {} in {}", serial,
                              text::forTerminal(plan.object), plan.scope);
  return out;
}

}  // namespace

// ---- database users -------------------------------------------------------------

Result<std::optional<PasswordSwap>> swapDatabasePassword(const Plan& plan, std::string_view body,
                                                         const Origin& origin) {
  // A body atlasgate cannot read might still be one Atlas reads (a lenient
  // parser: a byte-order mark, trailing data) and set the agent's own
  // password: refused, never passed on unread.
  if (body.find_first_not_of(" \t\r\n") == std::string_view::npos) return std::optional<PasswordSwap>();
  std::error_code ec;
  json::value doc = json::parse(body, ec);
  if (ec) return makeError("the body is not JSON atlasgate can read ({})", ec.message());
  json::object* o = doc.if_object();
  if (!o) return makeError("the body is not a JSON object");
  if (!o->contains("password")) return std::optional<PasswordSwap>();
  const json::string* given = (*o)["password"].if_string();
  if (!given) return makeError("password must be a string");
  std::string user, db;
  if (plan.object.empty()) {  // POST: the user is named in the body
    const json::string* u = stringAt(*o, "username");
    const json::string* d = stringAt(*o, "databaseName");
    if (!u || !safeId(*u)) return makeError("username must be a non-empty string without '/' or control characters");
    user = std::string(*u);
    db = d && safeId(*d) ? std::string(*d) : "admin";
  } else {
    db = plan.object.substr(0, plan.object.find('/'));
    user = plan.object.substr(plan.object.find('/') + 1);
    if (!safeId(user) || !safeId(db)) return makeError("the user's name cannot name a vault entry");
  }
  PasswordSwap out;
  out.minted.entry =
      entryFor(vault::Kind::DatabaseUser,
               fmt::format("{}/{}/{}", plan.scope.substr(plan.scope.find('/') + 1), db, user), plan, origin);
  out.minted.entry.lookup = user;
  out.minted.entry.pending = true;
  out.minted.phantom = std::string(*given);
  out.minted.secret = strongPassword();
  (*o)["password"] = out.minted.secret;
  out.body = json::serialize(doc);
  json::string& left = (*o)["password"].as_string();
  OPENSSL_cleanse(left.data(), left.size());
  return std::optional<PasswordSwap>(std::move(out));
}

}  // namespace atlasgate::proxy::capture
