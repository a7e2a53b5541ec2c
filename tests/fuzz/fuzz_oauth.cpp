// fuzz_oauth: what the token endpoint and Atlas send back to the credential
// code - credentials::parseTokenResponse(status, body) (oauth.h, in
// token_provider.cpp) and the Digest side: parseDigestChallenge() and the
// DigestAuth round (onChallenge, then authorize) whose output becomes the
// Authorization header atlasgate sends upstream.
//
// Input: STATUS '\n' BODY, STATUS up to 3 decimal digits (no digits or no
// newline: status 200 and the whole input is the body). The body is fed to
// both parsers (token endpoint JSON and WWW-Authenticate value).
//
// Oracles, beyond ASan/UBSan:
//  * a token error message never carries the access_token (oauth.h promise);
//  * an accepted token response has a non-empty token and a positive lifetime
//    no longer than 2^30 s (what TokenProvider::refresh's arithmetic takes);
//  * the Authorization header built from any accepted challenge holds no
//    CR, LF or NUL (no header injection upstream), and, when the challenge's
//    values are plain (no '"' or '\\'), parses back with the same realm,
//    nonce and opaque.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include <boost/json.hpp>

#include "credentials/digest.h"
#include "credentials/oauth.h"
#include "credentials/secret.h"
#include "fuzz_common.h"

namespace cr = atlasgate::credentials;

namespace {

bool plain(std::string_view s) { return s.find_first_of("\"\\") == std::string_view::npos; }

void tokenResponse(unsigned status, std::string_view body) {
  auto r = cr::parseTokenResponse(status, body);
  if (r) {
    AG_FUZZ_CHECK(status == 200, "a token accepted from a non-200 answer");
    AG_FUZZ_CHECK(!r->accessToken.empty(), "empty token accepted");
    AG_FUZZ_CHECK(r->expiresIn.count() > 0, "non-positive lifetime accepted");
    // TokenProvider::refresh adds the lifetime to a steady_clock time point
    // (nanoseconds) and scales it (ttl * 8 / 10 in milliseconds); the parser
    // caps unsigned values at 2^30 s for that: every accepted value must fit.
    AG_FUZZ_CHECK(r->expiresIn.count() <= (std::int64_t{1} << 30),
                  "unbounded expires_in accepted: " + std::to_string(r->expiresIn.count()) + " s");
    return;
  }
  const std::string& msg = r.error().message;
  AG_FUZZ_CHECK(!msg.empty(), "error without a message");
  // The body's access_token must not leak into the (logged) error.
  boost::system::error_code ec;
  boost::json::value v = boost::json::parse(body, ec);
  if (ec || !v.is_object()) return;
  const auto* at = v.as_object().if_contains("access_token");
  if (!at || !at->is_string() || at->as_string().size() < 8) return;
  std::string token(at->as_string());
  // The OAuth `error` code and the token_type are echoed on purpose: only a
  // token that is not also one of those counts.
  for (const char* echoed : {"error", "token_type"}) {
    const auto* e = v.as_object().if_contains(echoed);
    if (e && e->is_string() && std::string_view(e->as_string()).find(token) != std::string_view::npos) return;
  }
  // Exact leak test: the same answer with another token of the same length
  // must give the very same message (a fuzzed token can also happen to be
  // text of the fixed message, which is no leak).
  boost::json::object other = v.as_object();
  other["access_token"] = std::string(token.size(), token[0] == 'q' ? 'z' : 'q');
  auto again = atlasgate::credentials::parseTokenResponse(status, boost::json::serialize(other));
  if (!again && again.error().message == msg) return;
  AG_FUZZ_CHECK(msg.find(token) == std::string::npos, "token in error message: " + msg);
}

void digest(std::string_view header) {
  auto c = cr::parseDigestChallenge(header);
  if (!c) {
    AG_FUZZ_CHECK(!c.error().message.empty(), "error without a message");
    return;
  }
  AG_FUZZ_CHECK(!c->nonce.empty(), "challenge without a nonce accepted");
  AG_FUZZ_CHECK(c->qop == "auth", c->qop);

  cr::DigestAuth auth("abcdefgh", cr::Secret("fuzz-private-key"));
  AG_FUZZ_CHECK(!auth.authorize("GET", "/api/atlas/v2/groups"), "authorize before any challenge");
  auto on = auth.onChallenge(header);
  AG_FUZZ_CHECK(on.ok(), "parseDigestChallenge accepts what onChallenge refuses");
  for (int round = 0; round < 2; ++round) {
    auto h = auth.authorize("GET", "/api/atlas/v2/groups?itemsPerPage=5");
    AG_FUZZ_CHECK(h.has_value(), "no Authorization after a challenge");
    // Beast hands the challenge over without CR, LF or NUL; then none may
    // appear in what goes back upstream either.
    if (header.find_first_of(std::string_view("\r\n\0", 3)) == std::string_view::npos)
      AG_FUZZ_CHECK(h->find_first_of(std::string_view("\r\n\0", 3)) == std::string::npos,
                    "CR, LF or NUL in the Authorization header sent upstream: " + *h);
    if (plain(c->realm) && plain(c->nonce) && plain(c->opaque)) {
      auto back = cr::parseDigestChallenge(*h);
      AG_FUZZ_CHECK(back.ok(), "Authorization does not parse back: " + *h);
      AG_FUZZ_CHECK(back->realm == c->realm && back->nonce == c->nonce && back->opaque == c->opaque,
                    "Authorization parameters differ from the challenge: " + *h);
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  atlasgate::fuzz::quietLogs();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  unsigned status = 200;
  auto nl = in.find('\n');
  if (nl != std::string_view::npos && nl >= 1 && nl <= 3 &&
      in.substr(0, nl).find_first_not_of("0123456789") == std::string_view::npos) {
    status = 0;
    for (char ch : in.substr(0, nl)) status = status * 10 + static_cast<unsigned>(ch - '0');
    in.remove_prefix(nl + 1);
  }
  tokenResponse(status, in);
  digest(in);
  return 0;
}
