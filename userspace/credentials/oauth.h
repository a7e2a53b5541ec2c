#pragma once
// Pure pieces of the OAuth2 client-credentials flow, apart from I/O so that
// they are unit-tested (tests/unit/credentials/oauth_test.cpp) and fuzzed
// (tests/fuzz/fuzz_oauth.cpp) directly.

#include <chrono>
#include <optional>
#include <string>
#include <string_view>

#include "common/result.h"

namespace atlasgate::credentials {

struct TokenResponse {
  std::string accessToken;
  std::chrono::seconds expiresIn{0};
};

// Parses a token endpoint answer. Errors never contain the body's tokens;
// for OAuth error bodies they carry the (truncated) `error` code.
Result<TokenResponse> parseTokenResponse(unsigned status, std::string_view body);

// base64("id:secret") for HTTP Basic.
std::string basicCredentials(std::string_view id, std::string_view secret);

// The client id and secret of an `Authorization: Basic …` value (RFC 6749
// 2.3.1: each form-urlencoded before base64). nullopt when it is not Basic,
// not base64, or has no ':'. Untrusted: bounded, never throws.
struct ClientCredentials {
  std::string id;
  std::string secret;
  ~ClientCredentials();
};
std::optional<ClientCredentials> parseBasicCredentials(std::string_view authorization);

}  // namespace atlasgate::credentials
