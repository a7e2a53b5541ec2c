// HTTP Digest for Atlas programmatic API keys (credentials/digest.h):
// the response against the RFC 2617 / RFC 7616 worked examples, challenge
// parsing (case, lists, quoting, hostile and oversized input), and the
// Authorization header DigestAuth builds (nc, cnonce, quoting, no CR/LF).

#include <gtest/gtest.h>

#include <cctype>
#include <map>
#include <set>
#include <string>
#include <string_view>

#include "credentials/digest.h"
#include "credentials/secret.h"

using namespace atlasgate::credentials;

namespace {

constexpr std::string_view kAtlasChallenge =
    R"(Digest realm="MMS Public API", domain="", nonce="OQP8hVdJlW4fsbTv0o0d1mJ3t1Tu0dYP", algorithm=MD5, qop="auth", stale=false)";

// The parameters of a "Digest k=v, k="v"" header (values unquoted). Only for
// the headers DigestAuth writes: no commas inside quoted values.
std::map<std::string, std::string> params(std::string_view h) {
  std::map<std::string, std::string> out;
  EXPECT_EQ(h.substr(0, 7), "Digest ");
  h.remove_prefix(7);
  while (!h.empty()) {
    while (!h.empty() && (h.front() == ' ' || h.front() == ',')) h.remove_prefix(1);
    auto eq = h.find('=');
    if (eq == std::string_view::npos) break;
    std::string key(h.substr(0, eq));
    h.remove_prefix(eq + 1);
    std::string value;
    if (!h.empty() && h.front() == '"') {
      h.remove_prefix(1);
      while (!h.empty() && h.front() != '"') {
        if (h.front() == '\\' && h.size() > 1) h.remove_prefix(1);
        value.push_back(h.front());
        h.remove_prefix(1);
      }
      if (!h.empty()) h.remove_prefix(1);
    } else {
      auto comma = h.find(',');
      value = std::string(h.substr(0, comma));
      h.remove_prefix(comma == std::string_view::npos ? h.size() : comma);
    }
    EXPECT_EQ(out.count(key), 0u) << "parameter repeated: " << key;
    out[key] = value;
  }
  return out;
}

bool isLowerHex(std::string_view s) {
  for (char c : s)
    if (!std::isxdigit(static_cast<unsigned char>(c)) || std::isupper(static_cast<unsigned char>(c))) return false;
  return true;
}

}  // namespace

// ---------------------------------------------------------------- response

TEST(DigestResponse, Rfc2617Example) {
  // RFC 2617 section 3.5 (password "Circle Of Life", as the RFC's value
  // requires).
  EXPECT_EQ(digestResponse("Mufasa", "testrealm@host.com", "Circle Of Life", "GET", "/dir/index.html",
                           "dcd98b7102dd2f0e8b11d0f600bfb0c093", "00000001", "0a4f113b", "auth"),
            "6629fae49393a05397450978507c4ef1");
}

TEST(DigestResponse, Rfc7616Md5Example) {
  // RFC 7616 section 3.9.1, algorithm=MD5.
  EXPECT_EQ(digestResponse("Mufasa", "http-auth@example.org", "Circle of Life", "GET", "/dir/index.html",
                           "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", "00000001",
                           "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ", "auth"),
            "8ca523f5e9506fed4657c9700eebdbec");
}

TEST(DigestResponse, EveryInputCounts) {
  const std::string base = digestResponse("u", "r", "s", "GET", "/a", "n", "00000001", "c", "auth");
  EXPECT_EQ(base.size(), 32u);
  EXPECT_TRUE(isLowerHex(base)) << base;
  std::set<std::string> all{base};
  all.insert(digestResponse("U", "r", "s", "GET", "/a", "n", "00000001", "c", "auth"));
  all.insert(digestResponse("u", "R", "s", "GET", "/a", "n", "00000001", "c", "auth"));
  all.insert(digestResponse("u", "r", "S", "GET", "/a", "n", "00000001", "c", "auth"));
  all.insert(digestResponse("u", "r", "s", "get", "/a", "n", "00000001", "c", "auth"));
  all.insert(digestResponse("u", "r", "s", "GET", "/A", "n", "00000001", "c", "auth"));
  all.insert(digestResponse("u", "r", "s", "GET", "/a", "N", "00000001", "c", "auth"));
  all.insert(digestResponse("u", "r", "s", "GET", "/a", "n", "00000002", "c", "auth"));
  all.insert(digestResponse("u", "r", "s", "GET", "/a", "n", "00000001", "C", "auth"));
  all.insert(digestResponse("u", "r", "s", "GET", "/a", "n", "00000001", "c", "auth-int"));
  EXPECT_EQ(all.size(), 10u);
  // Fields are joined with ':' unescaped (RFC 7616 3.4.2): a colon moved
  // across a field boundary gives the same A1, hence the same response.
  EXPECT_EQ(digestResponse("u:r", "", "s", "GET", "/a", "n", "1", "c", "auth"),
            digestResponse("u", "r:", "s", "GET", "/a", "n", "1", "c", "auth"));
  // Embedded NUL is part of the secret, not its end.
  EXPECT_NE(digestResponse("u", "r", std::string_view("s\0x", 3), "GET", "/a", "n", "1", "c", "auth"),
            digestResponse("u", "r", "s", "GET", "/a", "n", "1", "c", "auth"));
}

// ---------------------------------------------------------------- challenge

TEST(DigestChallenge, AtlasChallenge) {
  auto c = parseDigestChallenge(kAtlasChallenge);
  ASSERT_TRUE(c) << c.error().message;
  EXPECT_EQ(c->realm, "MMS Public API");
  EXPECT_EQ(c->nonce, "OQP8hVdJlW4fsbTv0o0d1mJ3t1Tu0dYP");
  EXPECT_EQ(c->opaque, "");
  EXPECT_EQ(c->algorithm, "MD5");
  EXPECT_EQ(c->qop, "auth");
  EXPECT_FALSE(c->stale);
}

TEST(DigestChallenge, Rfc7616ChallengeWithOpaqueAndQopList) {
  // RFC 7616 section 3.9.1 (the SHA-256 alternative of that example is
  // refused: see OnlyMd5IsAccepted).
  auto c = parseDigestChallenge(
      R"(Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=MD5, )"
      R"(nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS")");
  ASSERT_TRUE(c) << c.error().message;
  EXPECT_EQ(c->realm, "http-auth@example.org");
  EXPECT_EQ(c->nonce, "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v");
  EXPECT_EQ(c->opaque, "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS");
  EXPECT_EQ(c->qop, "auth");  // the one we use, out of the list
}

TEST(DigestChallenge, SchemeAndKeysAreCaseInsensitive) {
  auto c = parseDigestChallenge(R"(dIgEsT REALM="R", NoNcE="abc", ALGORITHM=md5, QOP="AUTH", STALE=TRUE)");
  ASSERT_TRUE(c) << c.error().message;
  EXPECT_EQ(c->realm, "R");
  EXPECT_EQ(c->nonce, "abc");
  EXPECT_EQ(c->qop, "auth");
  EXPECT_TRUE(c->stale);
}

TEST(DigestChallenge, DefaultsAndOptionalWhitespace) {
  // No algorithm: MD5. Tokens unquoted, whitespace around '=' and ',' and a
  // leading blank are allowed, empty list elements are skipped.
  auto c = parseDigestChallenge(" \tDigest  nonce = abc ,, ,qop=auth,realm=\"x\" ,");
  ASSERT_TRUE(c) << c.error().message;
  EXPECT_EQ(c->nonce, "abc");
  EXPECT_EQ(c->realm, "x");
  EXPECT_EQ(c->algorithm, "MD5");
  EXPECT_FALSE(c->stale);
}

TEST(DigestChallenge, StaleOnlyWhenTrue) {
  auto quoted = parseDigestChallenge(R"(Digest nonce="n", qop="auth", stale="true")");
  ASSERT_TRUE(quoted);
  EXPECT_TRUE(quoted->stale);
  for (std::string_view v : {"false", "FALSE", "yes", "1", "\"\"", "truex"}) {
    auto c = parseDigestChallenge(std::string(R"(Digest nonce="n", qop="auth", stale=)") + std::string(v));
    ASSERT_TRUE(c) << v;
    EXPECT_FALSE(c->stale) << v;
  }
}

TEST(DigestChallenge, QuotedPairsAreUnescaped) {
  auto c = parseDigestChallenge(R"(Digest realm="a\"b\\c,d", nonce="n\o", qop="auth")");
  ASSERT_TRUE(c) << c.error().message;
  EXPECT_EQ(c->realm, "a\"b\\c,d");
  EXPECT_EQ(c->nonce, "no");
  // A tab inside a quoted string is allowed.
  auto t = parseDigestChallenge("Digest realm=\"a\tb\", nonce=\"n\", qop=auth");
  ASSERT_TRUE(t) << t.error().message;
  EXPECT_EQ(t->realm, "a\tb");
}

TEST(DigestChallenge, QopWithoutAuthIsRefused) {
  EXPECT_FALSE(parseDigestChallenge(R"(Digest nonce="n")"));  // RFC 2069 style
  EXPECT_FALSE(parseDigestChallenge(R"(Digest nonce="n", qop="auth-int")"));
  EXPECT_FALSE(parseDigestChallenge(R"(Digest nonce="n", qop="")"));
  EXPECT_FALSE(parseDigestChallenge(R"(Digest nonce="n", qop="authx, xauth")"));
  auto list = parseDigestChallenge(R"(Digest nonce="n", qop="auth-int,  auth  ")");
  ASSERT_TRUE(list) << list.error().message;
  EXPECT_EQ(list->qop, "auth");
  auto err = parseDigestChallenge(R"(Digest nonce="n", qop="auth-int")");
  ASSERT_FALSE(err);
  EXPECT_EQ(err.error().message, "Digest challenge without qop=auth");
}

TEST(DigestChallenge, OnlyMd5IsAccepted) {
  for (std::string_view alg : {"SHA-256", "sha-256", "SHA-512-256", "MD5-sess", "\"MD5 \"", "\"\""}) {
    auto c = parseDigestChallenge(std::string(R"(Digest nonce="n", qop="auth", algorithm=)") + std::string(alg));
    EXPECT_FALSE(c) << alg;
  }
  auto sha = parseDigestChallenge(R"(Digest nonce="n", qop="auth", algorithm=SHA-256)");
  ASSERT_FALSE(sha);
  EXPECT_EQ(sha.error().message, "unsupported Digest algorithm SHA-256");
  // The echoed algorithm is cut at 32 bytes.
  auto longAlg = parseDigestChallenge(R"(Digest nonce="n", qop="auth", algorithm=)" + std::string(200, 'A'));
  ASSERT_FALSE(longAlg);
  EXPECT_EQ(longAlg.error().message, "unsupported Digest algorithm " + std::string(32, 'A'));
  auto quotedMd5 = parseDigestChallenge(R"(Digest nonce="n", qop="auth", algorithm="md5")");
  EXPECT_TRUE(quotedMd5);
}

TEST(DigestChallenge, NotDigestOrNoNonce) {
  for (std::string_view h : {"", "   ", "Basic realm=\"x\"", "Digestrealm=\"x\", nonce=\"n\", qop=auth", "Diges",
                             "Bearer nonce=\"n\"", "Digest", "Digest ", "Digest realm=\"x\", qop=auth",
                             "Digest nonce=\"\", qop=auth", "Digest nonce=, qop=auth"}) {
    EXPECT_FALSE(parseDigestChallenge(h)) << '[' << h << ']';
  }
  EXPECT_EQ(parseDigestChallenge("Basic realm=\"x\"").error().message, "not a Digest challenge");
  EXPECT_EQ(parseDigestChallenge("Digest realm=\"x\", qop=auth").error().message, "Digest challenge without a nonce");
}

TEST(DigestChallenge, MalformedParameters) {
  for (std::string_view h : {
           "Digest =x, nonce=n, qop=auth",                     // no key
           "Digest nonce",                                     // no '='
           "Digest nonce n, qop=auth",                         // no '='
           "Digest nonce=\"abc, qop=auth",                     // unterminated
           "Digest nonce=\"abc\\",                             // escape at the very end
           "Digest nonce=\"n\", qop=auth, Basic realm=\"x\"",  // a second challenge
           "Digest n\xC3\xA9=\"v\", nonce=n, qop=auth",        // non-ASCII key
       }) {
    EXPECT_FALSE(parseDigestChallenge(h)) << '[' << h << ']';
  }
  EXPECT_EQ(parseDigestChallenge("Digest nonce=\"abc").error().message,
            "unterminated quoted string in Digest challenge");
  EXPECT_EQ(parseDigestChallenge("Digest nonce").error().message, "malformed Digest parameters");
}

TEST(DigestChallenge, ControlCharactersAreRefused) {
  // In quoted strings, after a backslash, and in tokens: CR, LF, NUL, ESC.
  for (char ctl : {'\r', '\n', '\0', '\x1b', '\x7f' /* DEL is not < 0x20: allowed */}) {
    std::string c(1, ctl);
    std::string quoted = "Digest nonce=\"a" + c + "b\", qop=auth";
    std::string escaped = "Digest nonce=\"a\\" + c + "b\", qop=auth";
    std::string token = "Digest nonce=a" + c + "b, qop=auth";
    if (ctl == '\x7f') {
      EXPECT_TRUE(parseDigestChallenge(quoted));
      continue;
    }
    auto q = parseDigestChallenge(quoted);
    ASSERT_FALSE(q) << int(ctl);
    EXPECT_EQ(q.error().message, "control character in Digest challenge");
    EXPECT_FALSE(parseDigestChallenge(escaped)) << int(ctl);
    EXPECT_FALSE(parseDigestChallenge(token)) << int(ctl);
  }
  // Header splitting attempt in the realm.
  EXPECT_FALSE(parseDigestChallenge("Digest realm=\"x\r\nX-Injected: 1\", nonce=n, qop=auth"));
}

TEST(DigestChallenge, InvalidUtf8ValuesAreKeptAsBytes) {
  auto c = parseDigestChallenge("Digest realm=\"\xFF\xC3\", nonce=\"\xE2\x80\xAE\", qop=auth");
  ASSERT_TRUE(c) << c.error().message;
  EXPECT_EQ(c->realm, "\xFF\xC3");
  EXPECT_EQ(c->nonce, "\xE2\x80\xAE");
}

TEST(DigestChallenge, SizeIsBounded) {
  const std::string head = "Digest qop=auth, nonce=\"";
  // Exactly 4096 bytes: accepted; 4097: refused before parsing.
  std::string fits = head + std::string(4096 - head.size() - 1, 'n') + "\"";
  ASSERT_EQ(fits.size(), 4096u);
  auto ok = parseDigestChallenge(fits);
  ASSERT_TRUE(ok) << ok.error().message;
  EXPECT_EQ(ok->nonce.size(), 4096 - head.size() - 1);
  std::string over = head + std::string(4096 - head.size(), 'n') + "\"";
  ASSERT_EQ(over.size(), 4097u);
  auto tooLong = parseDigestChallenge(over);
  ASSERT_FALSE(tooLong);
  EXPECT_EQ(tooLong.error().message, "Digest challenge too long");
  EXPECT_FALSE(parseDigestChallenge(std::string(1 << 20, ',')));
}

TEST(DigestChallenge, UnknownParametersAreIgnored) {
  auto c = parseDigestChallenge(
      R"(Digest domain="/ /x", charset=UTF-8, userhash=true, x-custom_1="v", nonce="n", qop="auth")");
  ASSERT_TRUE(c) << c.error().message;
  EXPECT_EQ(c->nonce, "n");
}

// ---------------------------------------------------------------- DigestAuth

TEST(DigestAuth, NoHeaderBeforeAChallenge) {
  DigestAuth d("pub", Secret("priv"));
  EXPECT_FALSE(d.authorize("GET", "/api/atlas/v2/groups"));
  EXPECT_EQ(d.challenges(), 0u);
  EXPECT_EQ(d.publicKey(), "pub");
}

TEST(DigestAuth, HeaderAnswersTheChallenge) {
  DigestAuth d("pubkey", Secret("9f2a-priv"));
  ASSERT_TRUE(d.onChallenge(
      R"(Digest realm="MMS Public API", domain="", nonce="N0nce", opaque="0p", algorithm=MD5, qop="auth", stale=false)"));
  EXPECT_EQ(d.challenges(), 1u);
  auto h = d.authorize("GET", "/api/atlas/v2/groups?pretty=true");
  ASSERT_TRUE(h);
  auto p = params(*h);
  EXPECT_EQ(p.size(), 10u) << *h;
  EXPECT_EQ(p["username"], "pubkey");
  EXPECT_EQ(p["realm"], "MMS Public API");
  EXPECT_EQ(p["nonce"], "N0nce");
  EXPECT_EQ(p["uri"], "/api/atlas/v2/groups?pretty=true");
  EXPECT_EQ(p["nc"], "00000001");
  EXPECT_EQ(p["qop"], "auth");
  EXPECT_EQ(p["algorithm"], "MD5");
  EXPECT_EQ(p["opaque"], "0p");
  EXPECT_EQ(p["cnonce"].size(), 16u);
  EXPECT_TRUE(isLowerHex(p["cnonce"])) << p["cnonce"];
  EXPECT_EQ(p["response"],
            digestResponse("pubkey", "MMS Public API", "9f2a-priv", "GET", "/api/atlas/v2/groups?pretty=true", "N0nce",
                           "00000001", p["cnonce"], "auth"));
  // The secret is never in the header.
  EXPECT_EQ(h->find("9f2a-priv"), std::string::npos);
}

TEST(DigestAuth, NcCountsUpCnonceChangesAndAChallengeRestarts) {
  DigestAuth d("u", Secret("s"));
  ASSERT_TRUE(d.onChallenge(R"(Digest realm="r", nonce="a", qop="auth")"));
  std::set<std::string> cnonces;
  for (int i = 1; i <= 17; ++i) {
    auto p = params(*d.authorize("POST", "/x"));
    char want[9];
    std::snprintf(want, sizeof want, "%08x", i);
    EXPECT_EQ(p["nc"], want);
    EXPECT_EQ(p.count("opaque"), 0u);  // none in the challenge: none sent
    cnonces.insert(p["cnonce"]);
  }
  EXPECT_EQ(cnonces.size(), 17u);
  // nc is hex: the 16th request is 00000010.
  ASSERT_TRUE(d.onChallenge(R"(Digest realm="r", nonce="b", qop="auth", stale=true)"));
  EXPECT_EQ(d.challenges(), 2u);
  auto p = params(*d.authorize("POST", "/x"));
  EXPECT_EQ(p["nonce"], "b");
  EXPECT_EQ(p["nc"], "00000001");
}

TEST(DigestAuth, RefusedChallengeKeepsTheOldNonce) {
  DigestAuth d("u", Secret("s"));
  ASSERT_TRUE(d.onChallenge(R"(Digest realm="r", nonce="keep", qop="auth")"));
  (void)d.authorize("GET", "/");
  auto bad = d.onChallenge(R"(Digest realm="r", nonce="new", qop="auth", algorithm=SHA-256)");
  ASSERT_FALSE(bad);
  EXPECT_EQ(d.challenges(), 1u);
  auto p = params(*d.authorize("GET", "/"));
  EXPECT_EQ(p["nonce"], "keep");
  EXPECT_EQ(p["nc"], "00000002");
  d.reset();
  EXPECT_FALSE(d.authorize("GET", "/"));
  ASSERT_TRUE(d.onChallenge(R"(Digest realm="r", nonce="again", qop="auth")"));
  EXPECT_EQ(params(*d.authorize("GET", "/"))["nc"], "00000001");
}

TEST(DigestAuth, HostileValuesCannotBreakTheHeader) {
  // Quotes and backslashes from the challenge are re-escaped; CR/LF from the
  // caller's uri or the configured key never reach the header.
  DigestAuth d("pub\"lic\r\nX-Evil: 1", Secret("s"));
  ASSERT_TRUE(d.onChallenge(R"(Digest realm="a\"b\\c", nonce="n\"x", opaque="o\\p", qop="auth")"));
  auto h = d.authorize("GET", "/p\"q\r\nHost: evil");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->find_first_of(std::string_view("\r\n\0", 3)), std::string::npos) << *h;
  EXPECT_NE(h->find(R"(realm="a\"b\\c")"), std::string::npos) << *h;
  EXPECT_NE(h->find(R"(nonce="n\"x")"), std::string::npos) << *h;
  EXPECT_NE(h->find(R"(opaque="o\\p")"), std::string::npos) << *h;
  EXPECT_NE(h->find(R"(username="pub\"licX-Evil: 1")"), std::string::npos) << *h;
  EXPECT_NE(h->find(R"(uri="/p\"qHost: evil")"), std::string::npos) << *h;
  auto p = params(*h);
  EXPECT_EQ(p["realm"], "a\"b\\c");
  EXPECT_EQ(p["nonce"], "n\"x");
  EXPECT_EQ(p["opaque"], "o\\p");
}
