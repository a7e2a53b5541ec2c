// OAuth2 client credentials (credentials/oauth.h, implemented in
// token_provider.cpp): HTTP Basic credentials of the token request, and the
// token endpoint's answer (exact values, missing, wrong-typed, oversized and
// hostile fields; errors never carry the token).

#include <gtest/gtest.h>

#include <string>
#include <string_view>

#include "credentials/oauth.h"

using namespace atlasgate::credentials;
using std::chrono::seconds;

namespace {

constexpr std::int64_t kYear = 365 * 24 * 3600;

std::string errorOf(unsigned status, std::string_view body) {
  auto r = parseTokenResponse(status, body);
  EXPECT_FALSE(r) << "accepted: " << body;
  return r ? std::string() : r.error().message;
}

}  // namespace

// ---------------------------------------------------------------- Basic

TEST(OAuthBasic, Rfc7617Example) {
  EXPECT_EQ(basicCredentials("Aladdin", "open sesame"), "QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
}

TEST(OAuthBasic, PaddingForEveryLength) {
  EXPECT_EQ(basicCredentials("", ""), "Og==");    // ":"
  EXPECT_EQ(basicCredentials("a", ""), "YTo=");   // "a:"
  EXPECT_EQ(basicCredentials("a", "b"), "YTpi");  // "a:b"
  EXPECT_EQ(basicCredentials("ab", "c"), "YWI6Yw==");
  EXPECT_EQ(basicCredentials("mdb_sa_id_0123", "mdb_sa_sk_abc"), "bWRiX3NhX2lkXzAxMjM6bWRiX3NhX3NrX2FiYw==");
}

TEST(OAuthBasic, BytesAreEncodedAsTheyAre) {
  // Colons in the secret, NUL, CR/LF and non-ASCII: all inside the base64,
  // none in the output (no header injection through a secret).
  EXPECT_EQ(basicCredentials("a", std::string_view("\0", 1)), "YToA");
  EXPECT_EQ(basicCredentials("id", "s:e:c"), "aWQ6czplOmM=");
  EXPECT_EQ(basicCredentials("id", "\r\nX: y"), "aWQ6DQpYOiB5");
  EXPECT_EQ(basicCredentials("\xC3\xA9", "\xFF"), "w6k6/w==");
}

TEST(OAuthBasic, LargeInputIsNotCut) {
  // EVP_EncodeBlock writes no line breaks: one line, the full length.
  std::string secret(300000, 'x');
  std::string out = basicCredentials("id", secret);
  EXPECT_EQ(out.size(), 4 * ((secret.size() + 3 + 2) / 3));
  EXPECT_EQ(out.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="),
            std::string::npos);
  EXPECT_EQ(out.substr(0, 4), "aWQ6");  // "id:"
}

// ---------------------------------------------------------------- token response

TEST(OAuthToken, AtlasAnswer) {
  auto r = parseTokenResponse(
      200, R"({"access_token":"eyJhbGciOiJSUzI1NiJ9.e30.sig","expires_in":3600,"token_type":"Bearer"})");
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->accessToken, "eyJhbGciOiJSUzI1NiJ9.e30.sig");
  EXPECT_EQ(r->expiresIn, seconds(3600));
}

TEST(OAuthToken, TokenTypeIsCaseInsensitive) {
  for (std::string_view t : {"bearer", "BEARER", "BeArEr"}) {
    auto r = parseTokenResponse(200, std::string(R"({"access_token":"t","token_type":")") + std::string(t) + "\"}");
    ASSERT_TRUE(r) << t;
    EXPECT_EQ(r->accessToken, "t");
  }
}

TEST(OAuthToken, MissingExpiresInMeansAnHour) {
  auto r = parseTokenResponse(200, R"({"access_token":"t","token_type":"Bearer"})");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->expiresIn, seconds(3600));
}

TEST(OAuthToken, ExpiresInIsCappedAtAYear) {
  auto big = parseTokenResponse(200, R"({"access_token":"t","token_type":"Bearer","expires_in":99999999999})");
  ASSERT_TRUE(big);
  EXPECT_EQ(big->expiresIn, seconds(kYear));
  auto u64 = parseTokenResponse(200, R"({"access_token":"t","token_type":"Bearer","expires_in":18446744073709551615})");
  ASSERT_TRUE(u64);
  EXPECT_EQ(u64->expiresIn, seconds(kYear));
  auto dbl = parseTokenResponse(200, R"({"access_token":"t","token_type":"Bearer","expires_in":1e300})");
  ASSERT_TRUE(dbl);
  EXPECT_EQ(dbl->expiresIn, seconds(kYear));
  auto exact = parseTokenResponse(200, R"({"access_token":"t","token_type":"Bearer","expires_in":31536000})");
  ASSERT_TRUE(exact);
  EXPECT_EQ(exact->expiresIn, seconds(kYear));
  auto frac = parseTokenResponse(200, R"({"access_token":"t","token_type":"Bearer","expires_in":59.9})");
  ASSERT_TRUE(frac);
  EXPECT_EQ(frac->expiresIn, seconds(59));  // truncated
  auto one = parseTokenResponse(200, R"({"access_token":"t","token_type":"Bearer","expires_in":1})");
  ASSERT_TRUE(one);
  EXPECT_EQ(one->expiresIn, seconds(1));
}

TEST(OAuthToken, NonPositiveOrNonNumericExpiresInIsRefused) {
  const std::string head = R"({"access_token":"t","token_type":"Bearer","expires_in":)";
  EXPECT_EQ(errorOf(200, head + "0}"), "token endpoint answered expires_in 0");
  EXPECT_EQ(errorOf(200, head + "-5}"), "token endpoint answered expires_in -5");
  EXPECT_EQ(errorOf(200, head + "-9223372036854775808}"), "token endpoint answered expires_in -9223372036854775808");
  EXPECT_EQ(errorOf(200, head + "0.5}"), "token endpoint answered expires_in 0");  // truncates to 0
  EXPECT_FALSE(parseTokenResponse(200, head + "-0.0}"));
  EXPECT_FALSE(parseTokenResponse(200, head + "-1e300}"));
  for (std::string_view v : {"\"3600\"", "null", "true", "[3600]", "{}"})
    EXPECT_EQ(errorOf(200, head + std::string(v) + "}"), "token endpoint answered a non-numeric expires_in") << v;
}

TEST(OAuthToken, MissingOrWrongTypedFields) {
  EXPECT_EQ(errorOf(200, R"({"token_type":"Bearer","expires_in":3600})"), "token endpoint answer has no access_token");
  EXPECT_EQ(errorOf(200, R"({"access_token":"","token_type":"Bearer"})"), "token endpoint answer has no access_token");
  EXPECT_EQ(errorOf(200, R"({"access_token":123,"token_type":"Bearer"})"), "token endpoint answer has no access_token");
  EXPECT_EQ(errorOf(200, R"({"access_token":null,"token_type":"Bearer"})"),
            "token endpoint answer has no access_token");
  EXPECT_EQ(errorOf(200, R"({"access_token":"t"})"), "token endpoint answer has no token_type");
  EXPECT_EQ(errorOf(200, R"({"access_token":"t","token_type":1})"), "token endpoint answer has no token_type");
  EXPECT_EQ(errorOf(200, R"({"access_token":"t","token_type":"mac"})"),
            "token endpoint answered token_type mac, not Bearer");
  EXPECT_EQ(errorOf(200, R"({"access_token":"t","token_type":""})"), "token endpoint answered token_type , not Bearer");
  EXPECT_EQ(errorOf(200, R"({"access_token":"t","token_type":"Bearer "})"),
            "token endpoint answered token_type Bearer , not Bearer");
  // Keys are case-sensitive (RFC 6749 names them in lower case).
  EXPECT_EQ(errorOf(200, R"({"Access_Token":"t","token_type":"Bearer"})"), "token endpoint answer has no access_token");
}

TEST(OAuthToken, BodiesThatAreNoJsonObject) {
  const std::string want = "token endpoint answered 200 with a body that is not a JSON object";
  for (std::string_view b : {"", " ", "null", "[]", "\"access_token\"", "{", "{\"access_token\":\"t\",}",
                             "<html>502 Bad Gateway</html>", "access_token=t&token_type=bearer"})
    EXPECT_EQ(errorOf(200, b), want) << b;
  // Trailing garbage after the object.
  EXPECT_EQ(errorOf(200, R"({"access_token":"t","token_type":"Bearer"}x)"), want);
  // Invalid UTF-8 inside a string: Boost.JSON refuses it.
  EXPECT_EQ(errorOf(200, "{\"access_token\":\"\xFF\",\"token_type\":\"Bearer\"}"), want);
  // Deep nesting is refused, not a stack overflow.
  std::string deep =
      R"({"access_token":"t","token_type":"Bearer","x":)" + std::string(100000, '[') + std::string(100000, ']') + "}";
  EXPECT_EQ(errorOf(200, deep), want);
}

TEST(OAuthToken, ErrorsNeverCarryTheToken) {
  const std::string token = "SECRET-TOKEN-VALUE";
  for (std::string_view tail : {R"(,"token_type":"mac"})", R"(})", R"(,"token_type":"Bearer","expires_in":-1})",
                                R"(,"token_type":"Bearer","expires_in":"x"})"}) {
    std::string body = R"({"access_token":")" + token + "\"" + std::string(tail);
    auto r = parseTokenResponse(200, body);
    ASSERT_FALSE(r) << body;
    EXPECT_EQ(r.error().message.find(token), std::string::npos) << r.error().message;
  }
  // Nor on an error status, even when the token is there.
  auto e = parseTokenResponse(401, R"({"access_token":")" + token + R"(","token_type":"Bearer"})");
  ASSERT_FALSE(e);
  EXPECT_EQ(e.error().message, "token endpoint answered 401 (unknown)");
  // A token_type that repeats the token is cut at 32 bytes in the message.
  auto tt = parseTokenResponse(200, R"({"access_token":"t","token_type":")" + std::string(40, 'Z') + token + "\"}");
  ASSERT_FALSE(tt);
  EXPECT_EQ(tt.error().message, "token endpoint answered token_type " + std::string(32, 'Z') + ", not Bearer");
}

TEST(OAuthToken, ErrorStatusCarriesTheOAuthErrorCode) {
  EXPECT_EQ(errorOf(401, R"({"error":"invalid_client","error_description":"Bad client credentials"})"),
            "token endpoint answered 401 (invalid_client)");
  EXPECT_EQ(errorOf(400, R"({"error":"invalid_grant"})"), "token endpoint answered 400 (invalid_grant)");
  EXPECT_EQ(errorOf(500, "<html>oops</html>"), "token endpoint answered 500 (unknown)");
  EXPECT_EQ(errorOf(503, ""), "token endpoint answered 503 (unknown)");
  EXPECT_EQ(errorOf(401, R"({"error":42})"), "token endpoint answered 401 (unknown)");
  EXPECT_EQ(errorOf(401, R"(["invalid_client"])"), "token endpoint answered 401 (unknown)");
  // Even a 2xx other than 200 is a failure.
  EXPECT_EQ(errorOf(201, R"({"access_token":"t","token_type":"Bearer"})"), "token endpoint answered 201 (unknown)");
  EXPECT_EQ(errorOf(204, ""), "token endpoint answered 204 (unknown)");
  // The code is cut at 64 bytes.
  EXPECT_EQ(errorOf(400, R"({"error":")" + std::string(1000, 'e') + "\"}"),
            "token endpoint answered 400 (" + std::string(64, 'e') + ")");
}

TEST(OAuthToken, DuplicateKeysTakeTheLast) {
  // Boost.JSON keeps the last of duplicate keys: the answer is read once,
  // consistently (no "first for the check, last for the use").
  auto r = parseTokenResponse(
      200, R"({"access_token":"first","access_token":"second","token_type":"mac","token_type":"Bearer"})");
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->accessToken, "second");
}

TEST(OAuthToken, LargeTokenIsKeptWhole) {
  std::string token(1 << 20, 'a');
  auto r = parseTokenResponse(200, R"({"access_token":")" + token + R"(","token_type":"Bearer","expires_in":60})");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->accessToken, token);
  EXPECT_EQ(r->expiresIn, seconds(60));
}

TEST(OAuthToken, JsonEscapesAreDecoded) {
  auto r = parseTokenResponse(200, R"({"access_token":"a\u0062\/c","token_type":"\u0042earer"})");
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->accessToken, "ab/c");
}
