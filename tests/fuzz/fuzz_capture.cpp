// fuzz_capture: credential capture (proxy/capture.h) and the ways an agent
// presents a captured credential (credentials/digest.h, oauth.h).
//
// Input: MODE AUX BODY... (MODE = byte 0 modulo 12, AUX = byte 1):
//   0..6  rewriteResponse(Plan{Action(MODE)}, BODY): MintApiKey,
//         MintServiceAccount, MintServiceAccountSecret, MintCertificate,
//         SetDatabasePassword, MintOrganization, Forget; AUX picks the scope
//         (bit 4) and the plan's object (low bits, some of them hostile)
//   7     swapDatabasePassword(BODY): AUX bit 0 picks POST or PATCH
//   8     planFor(METHOD, TARGET), BODY = METHOD '\n' TARGET
//   9     parseDigestAuthorization(BODY), then verifyDigest
//   10    parseBasicCredentials(BODY)
//   11    Tripwire over BODY, in pieces of AUX + 1 bytes
//
// Oracles, beyond ASan/UBSan:
//  * after a successful rewriteResponse no minted secret appears in the
//    body; every phantom differs from its secret and has its shape (a v4
//    UUID for a UUID, "mdb_sa_sk_" and the same length for a service-account
//    secret, a parseable key for a PEM key); entry names are
//    "captured:<kind>:<object>" in printable ASCII; labels valid UTF-8, at
//    most 256 bytes; nothing minted means the body comes back unchanged;
//  * for UUID and "mdb_sa_sk_" secrets, no string of the answer (decoded
//    JSON) holds a minted secret either;
//  * swapDatabasePassword: Atlas gets the document with only the password
//    changed, to 32 alphanumerics, the agent's password is the phantom; no
//    swap only for a blank body or an object without "password";
//  * planFor: the same plan for the method in lower case, a "/." or "/"
//    prefix, and a query string added; forgets exactly for Action::Forget;
//  * parseDigestAuthorization: no control characters in what it accepts, the
//    values re-quoted parse back the same, verifyDigest agrees with the
//    response computed here, and a fuzzed nonce is never Valid;
//  * parseBasicCredentials: what it accepts, form-encoded and re-encoded,
//    parses back the same; over 4096 bytes is refused;
//  * Tripwire: fed in pieces, it trips exactly when fed whole (for bodies
//    without runs of more than 40 blanks or colons, which the 64-byte seam
//    cannot span).

#include <openssl/evp.h>
#include <openssl/pem.h>

#include <algorithm>
#include <cctype>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <boost/json.hpp>

#include "common/text.h"
#include "credentials/digest.h"
#include "credentials/oauth.h"
#include "fuzz_common.h"
#include "policy/path.h"
#include "proxy/capture.h"

namespace cap = atlasgate::proxy::capture;
namespace cr = atlasgate::credentials;
namespace json = boost::json;
namespace text = atlasgate::text;
using atlasgate::vault::Kind;

namespace {

constexpr std::string_view kSaPrefix = "mdb_sa_sk_";

bool isUuid(std::string_view s) {
  if (s.size() != 36) return false;
  for (std::size_t i = 0; i < s.size(); ++i) {
    bool dash = i == 8 || i == 13 || i == 18 || i == 23;
    if (dash != (s[i] == '-')) return false;
    if (!dash && !std::isxdigit(static_cast<unsigned char>(s[i]))) return false;
  }
  return true;
}

bool isV4Uuid(std::string_view s) {
  if (!isUuid(s) || s[14] != '4' || std::string_view("89ab").find(s[19]) == std::string_view::npos) return false;
  for (char c : s)
    if (std::isupper(static_cast<unsigned char>(c))) return false;
  return true;
}

bool isAlnum(char c) { return std::isalnum(static_cast<unsigned char>(c)) != 0; }

// Whether any key or string of `v` contains `needle`.
bool holds(const json::value& v, std::string_view needle) {
  if (const json::string* s = v.if_string()) return std::string_view(*s).find(needle) != std::string_view::npos;
  if (const json::object* o = v.if_object()) {
    for (const auto& kv : *o)
      if (kv.key().find(needle) != std::string_view::npos || holds(kv.value(), needle)) return true;
  } else if (const json::array* a = v.if_array()) {
    for (const auto& e : *a)
      if (holds(e, needle)) return true;
  }
  return false;
}

bool printableAscii(std::string_view s) {
  for (char c : s)
    if (static_cast<unsigned char>(c) <= 0x20 || static_cast<unsigned char>(c) >= 0x7f) return false;
  return !s.empty();
}

void checkMinted(const cap::Plan& plan, const cap::Minted& m, const cap::Origin& origin) {
  AG_FUZZ_CHECK(!m.secret.empty(), "an empty secret minted");
  AG_FUZZ_CHECK(m.phantom != m.secret, "a phantom equal to its secret");
  const auto& e = m.entry;
  AG_FUZZ_CHECK(e.name == "captured:" + std::string(atlasgate::vault::kindName(e.kind)) + ":" + e.object, e.name);
  AG_FUZZ_CHECK(printableAscii(e.name), e.name);
  AG_FUZZ_CHECK(e.owner == origin.owner && e.target == origin.target && e.createdAt == origin.now, e.name);
  AG_FUZZ_CHECK(e.label.size() <= 256 && text::isUtf8(e.label), e.label);
  AG_FUZZ_CHECK(!e.pending, "a minted answer made a pending entry");
  Kind want = plan.action == cap::Action::MintApiKey                 ? Kind::ApiKey
              : plan.action == cap::Action::MintCertificate          ? Kind::X509Certificate
              : plan.action == cap::Action::MintServiceAccount       ? Kind::ServiceAccountSecret
              : plan.action == cap::Action::MintServiceAccountSecret ? Kind::ServiceAccountSecret
                                                                     : e.kind;  // an organization: either
  AG_FUZZ_CHECK(e.kind == want, e.name);
  if (isUuid(m.secret)) AG_FUZZ_CHECK(isV4Uuid(m.phantom), m.phantom);
  if (m.secret.substr(0, kSaPrefix.size()) == kSaPrefix)
    AG_FUZZ_CHECK(m.phantom.size() == m.secret.size() && m.phantom.substr(0, kSaPrefix.size()) == kSaPrefix, m.phantom);
  if (e.kind == Kind::X509Certificate) {
    BIO* in = BIO_new_mem_buf(m.phantom.data(), static_cast<int>(m.phantom.size()));
    EVP_PKEY* k = PEM_read_bio_PrivateKey(
        in, nullptr, [](char*, int, int, void*) { return 0; }, nullptr);
    AG_FUZZ_CHECK(k != nullptr, "a phantom key that does not parse");
    EVP_PKEY_free(k);
    BIO_free(in);
  }
}

const std::string kLongObject(300, 'x');
const std::string_view kObjects[] = {"mdb_sa_id_66a1b2c3d4e5f6a7b8c9d0e1",
                                     "alice",
                                     "CN=alice,OU=agents",
                                     "a/b",
                                     "",
                                     kLongObject,
                                     "admin/alice",
                                     "a\x01"};

void rewrite(cap::Action action, std::uint8_t aux, std::string_view body) {
  const cap::Origin origin{"cloud.mongodb.com", "fuzz-agent", 1700000000};
  cap::Plan plan{action, aux & 0x10 ? "groups/g1" : "orgs/o1", std::string(kObjects[aux % std::size(kObjects)]), {}};
  std::error_code ec;
  json::value doc = json::parse(body, ec);
  auto r = cap::rewriteResponse(plan, body, origin);
  if (!r) {
    AG_FUZZ_CHECK(!r.error().message.empty(), "an error without a message");
    return;
  }
  for (const cap::Minted& m : r->minted) {
    checkMinted(plan, m, origin);
    AG_FUZZ_CHECK(r->body.find(m.secret) == std::string::npos, "a minted secret is still in the answer");
  }
  if (r->minted.empty()) AG_FUZZ_CHECK(r->body == body, "nothing minted, yet the body changed");
  if (action == cap::Action::MintCertificate) {
    AG_FUZZ_CHECK(r->minted.size() == 1, "a certificate answer with other than one key");
    AG_FUZZ_CHECK(r->body.find(r->minted[0].phantom) != std::string::npos, "the phantom key is not in the answer");
    return;
  }
  AG_FUZZ_CHECK(!ec, "a rewrite of a body that is not JSON");
  json::value out = json::parse(r->body, ec);
  if (ec) return;  // raw swaps inside escapes or literals of odd secrets: not JSON any more, and no secret
  for (const cap::Minted& m : r->minted) {
    bool shaped = isUuid(m.secret) || m.secret.substr(0, kSaPrefix.size()) == kSaPrefix;
    if (shaped) AG_FUZZ_CHECK(!holds(out, m.secret), "a decoded secret in the answer");
  }
}

void swapPassword(std::uint8_t aux, std::string_view body) {
  const cap::Origin origin{"cloud.mongodb.com", "fuzz-agent", 1700000000};
  cap::Plan plan{cap::Action::SetDatabasePassword, "groups/g1", aux & 1 ? "admin/alice" : "", {}};
  auto r = cap::swapDatabasePassword(plan, body, origin);
  std::error_code ec;
  json::value in = json::parse(body, ec);
  if (!r) {
    AG_FUZZ_CHECK(!r.error().message.empty(), "an error without a message");
    return;
  }
  if (!*r) {
    bool blank = body.find_first_not_of(" \t\r\n") == std::string_view::npos;
    AG_FUZZ_CHECK(blank || (!ec && in.is_object() && !in.as_object().contains("password")),
                  "a password left unswapped");
    return;
  }
  const cap::PasswordSwap& s = **r;
  AG_FUZZ_CHECK(!ec && in.is_object() && in.as_object().contains("password"), "a swap without a password");
  AG_FUZZ_CHECK(s.minted.secret.size() == 32, s.minted.secret);
  for (char c : s.minted.secret) AG_FUZZ_CHECK(isAlnum(c), s.minted.secret);
  AG_FUZZ_CHECK(s.minted.phantom == std::string_view(in.as_object().at("password").as_string()),
                "the phantom is not the agent's password");
  AG_FUZZ_CHECK(s.minted.entry.pending, "a password entry not pending");
  AG_FUZZ_CHECK(s.minted.entry.name.rfind("captured:database_user:g1/", 0) == 0, s.minted.entry.name);
  AG_FUZZ_CHECK(printableAscii(s.minted.entry.name), s.minted.entry.name);
  json::value sent = json::parse(s.body, ec);
  AG_FUZZ_CHECK(!ec, "Atlas would get a body that is not JSON");
  in.as_object()["password"] = s.minted.secret;
  AG_FUZZ_CHECK(sent == in, "more than the password changed");
}

bool samePlan(const std::optional<cap::Plan>& a, const std::optional<cap::Plan>& b) {
  if (a.has_value() != b.has_value()) return false;
  if (!a) return true;
  if (a->action != b->action || a->scope != b->scope || a->object != b->object) return false;
  if (a->forgets.size() != b->forgets.size()) return false;
  for (std::size_t i = 0; i < a->forgets.size(); ++i)
    if (a->forgets[i].kind != b->forgets[i].kind || a->forgets[i].object != b->forgets[i].object) return false;
  return true;
}

void plan(std::string_view in) {
  auto nl = in.find('\n');
  std::string_view method = nl == std::string_view::npos ? std::string_view("POST") : in.substr(0, nl);
  std::string_view target = nl == std::string_view::npos ? in : in.substr(nl + 1);
  auto p = cap::planFor(method, target);
  if (p) {
    AG_FUZZ_CHECK(p->scope == "orgs" || p->scope.rfind("orgs/", 0) == 0 || p->scope.rfind("groups/", 0) == 0, p->scope);
    AG_FUZZ_CHECK((p->action == cap::Action::Forget) == !p->forgets.empty(), "forgets without Action::Forget");
    bool methodFits = p->action == cap::Action::Forget ? text::iequals(method, "DELETE")
                      : p->action == cap::Action::SetDatabasePassword
                          ? text::iequals(method, "POST") || text::iequals(method, "PATCH")
                          : text::iequals(method, "POST");
    AG_FUZZ_CHECK(methodFits, method);
  }
  std::string lower(method);
  for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  AG_FUZZ_CHECK(samePlan(p, cap::planFor(lower, target)), "the method's case changed the plan");
  if (target.empty() || target.front() != '/') return;
  AG_FUZZ_CHECK(samePlan(p, cap::planFor(method, "/." + std::string(target))), "a /. prefix changed the plan");
  AG_FUZZ_CHECK(samePlan(p, cap::planFor(method, "/" + std::string(target))), "a // prefix changed the plan");
  if (target.find_first_of("?#") == std::string_view::npos)
    AG_FUZZ_CHECK(samePlan(p, cap::planFor(method, std::string(target) + "?envelope=true")),
                  "a query string changed the plan");
}

std::string quoted(std::string_view v) {
  std::string out = "\"";
  for (char c : v) {
    if (c == '"' || c == '\\') out.push_back('\\');
    out.push_back(c);
  }
  return out + "\"";
}

const cr::DigestNonces& nonces() {
  static const cr::DigestNonces n;
  return n;
}

void digest(std::string_view header) {
  auto a = cr::parseDigestAuthorization(header);
  if (!a) {
    AG_FUZZ_CHECK(!a.error().message.empty(), "an error without a message");
    return;
  }
  AG_FUZZ_CHECK(header.size() <= 4096, "an over-long Authorization accepted");
  AG_FUZZ_CHECK(!a->username.empty() && !a->nonce.empty() && !a->uri.empty() && !a->response.empty(),
                "a required field is empty");
  const std::string* fields[] = {&a->username, &a->realm, &a->nonce,  &a->uri,       &a->response,
                                 &a->qop,      &a->nc,    &a->cnonce, &a->algorithm, &a->opaque};
  for (const std::string* f : fields)
    for (char c : *f) AG_FUZZ_CHECK(static_cast<unsigned char>(c) >= 0x20 || c == '\t', *f);
  // Re-quoted, the values parse back the same.
  std::string again = "Digest username=" + quoted(a->username) + ", realm=" + quoted(a->realm) +
                      ", nonce=" + quoted(a->nonce) + ", uri=" + quoted(a->uri) + ", response=" + quoted(a->response) +
                      ", qop=" + quoted(a->qop) + ", nc=" + quoted(a->nc) + ", cnonce=" + quoted(a->cnonce) +
                      ", algorithm=" + quoted(a->algorithm) + ", opaque=" + quoted(a->opaque);
  if (again.size() <= 4096) {
    auto b = cr::parseDigestAuthorization(again);
    AG_FUZZ_CHECK(b.ok(), again);
    const std::string* back[] = {&b->username, &b->realm, &b->nonce,  &b->uri,       &b->response,
                                 &b->qop,      &b->nc,    &b->cnonce, &b->algorithm, &b->opaque};
    for (std::size_t i = 0; i < std::size(fields); ++i) AG_FUZZ_CHECK(*fields[i] == *back[i], again);
  }
  // verifyDigest against the response computed here.
  const std::string secret = "6a1c0f5e-2b3d-4c5e-8f90-123456789abc";
  std::string lower = a->response;
  for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  bool want =
      a->realm == cr::kAtlasDigestRealm && (a->algorithm.empty() || text::iequals(a->algorithm, "MD5")) &&
      a->qop == "auth" && !a->nc.empty() && !a->cnonce.empty() &&
      lower == cr::digestResponse(a->username, a->realm, secret, "GET", a->uri, a->nonce, a->nc, a->cnonce, a->qop);
  AG_FUZZ_CHECK(cr::verifyDigest(*a, "GET", secret) == want, "verifyDigest disagrees with the computed response");
  // The same fields answered properly verify.
  cr::DigestAnswer good = *a;
  good.realm = std::string(cr::kAtlasDigestRealm);
  good.qop = "auth";
  good.algorithm = "MD5";
  if (good.nc.empty()) good.nc = "00000001";
  if (good.cnonce.empty()) good.cnonce = "c";
  good.response = cr::digestResponse(good.username, good.realm, secret, "PATCH", good.uri, good.nonce, good.nc,
                                     good.cnonce, good.qop);
  AG_FUZZ_CHECK(cr::verifyDigest(good, "PATCH", secret), "a correct answer refused");
  AG_FUZZ_CHECK(!cr::verifyDigest(good, "GET", secret), "an answer for PATCH accepted for GET");
  AG_FUZZ_CHECK(nonces().check(a->nonce, "atlasgate/fuzz.1") != cr::DigestNonces::Check::Valid, a->nonce);
}

std::string formEncode(std::string_view s) {
  static const char* hex = "0123456789ABCDEF";
  std::string out;
  for (char c : s) {
    unsigned char u = static_cast<unsigned char>(c);
    if (isAlnum(c)) {
      out.push_back(c);
    } else {
      out.push_back('%');
      out.push_back(hex[u >> 4]);
      out.push_back(hex[u & 15]);
    }
  }
  return out;
}

void basic(std::string_view header) {
  auto c = cr::parseBasicCredentials(header);
  if (header.size() > 4096) AG_FUZZ_CHECK(!c, "an over-long Authorization accepted");
  if (!c) return;
  std::string again = "Basic " + cr::basicCredentials(formEncode(c->id), formEncode(c->secret));
  auto d = cr::parseBasicCredentials(again);
  if (again.size() > 4096) return;
  AG_FUZZ_CHECK(d.has_value(), again);
  AG_FUZZ_CHECK(d->id == c->id && d->secret == c->secret, "Basic credentials do not round-trip");
}

void tripwire(std::uint8_t aux, std::string_view body) {
  const std::string extra = "Xy7Qw2Lk9pass";
  cap::Tripwire whole(extra);
  bool all = whole.hit(body);
  cap::Tripwire pieces(extra);
  bool any = false;
  const std::size_t size = std::size_t(aux) + 1;
  for (std::size_t at = 0; at < body.size() && !any; at += size) any = pieces.hit(body.substr(at, size));
  AG_FUZZ_CHECK(!any || all, "a piece tripped on what the whole body does not hold");
  std::size_t run = 0, longest = 0;
  for (char c : body) {
    run = c == ' ' || c == '\t' || c == ':' ? run + 1 : 0;
    longest = std::max(longest, run);
  }
  if (longest <= 40) AG_FUZZ_CHECK(any == all, "a secret split across pieces went through");
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  atlasgate::fuzz::quietLogs();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  if (size < 2) return 0;
  const unsigned mode = data[0] % 12;
  const std::uint8_t aux = data[1];
  std::string_view body(reinterpret_cast<const char*>(data) + 2, size - 2);
  if (mode <= 6) {
    rewrite(static_cast<cap::Action>(mode), aux, body);
  } else if (mode == 7) {
    swapPassword(aux, body);
  } else if (mode == 8) {
    plan(body);
  } else if (mode == 9) {
    digest(body);
  } else if (mode == 10) {
    basic(body);
  } else {
    tripwire(aux, body);
  }
  return 0;
}
