#pragma once
// Responses atlasgate writes itself, in Atlas' own error shape so Atlas SDKs
// parse them (README "What the agent sees"). Every body is non-empty JSON.
//
// Every refusal is one row of kRefusals: its status, its errorCode, the
// counter it bumps, whether the agent should retry and whether the
// connection ends with it. Code that refuses names the row and gives the
// detail; nothing else about the response is decided at the call site.

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <boost/beast/http/message.hpp>
#include <boost/beast/http/string_body.hpp>

#include "proxy/counters.h"

namespace atlasgate::proxy {

inline constexpr std::string_view kBlocked = "ATLASGATE_BLOCKED";
inline constexpr std::string_view kRateLimited = "ATLASGATE_RATE_LIMITED";
inline constexpr std::string_view kApprovalDenied = "ATLASGATE_APPROVAL_DENIED";
inline constexpr std::string_view kApprovalQueueFull = "ATLASGATE_APPROVAL_QUEUE_FULL";
inline constexpr std::string_view kCredentialUnavailable = "ATLASGATE_CREDENTIAL_UNAVAILABLE";
inline constexpr std::string_view kUpstreamUnavailable = "ATLASGATE_UPSTREAM_UNAVAILABLE";
inline constexpr std::string_view kUpstreamTimeout = "ATLASGATE_UPSTREAM_TIMEOUT";
inline constexpr std::string_view kUpstreamBusy = "ATLASGATE_UPSTREAM_BUSY";
inline constexpr std::string_view kBadRequest = "ATLASGATE_BAD_REQUEST";
inline constexpr std::string_view kMisdirected = "ATLASGATE_MISDIRECTED_REQUEST";
inline constexpr std::string_view kHeadersTooLarge = "ATLASGATE_HEADERS_TOO_LARGE";
inline constexpr std::string_view kBodyTooLarge = "ATLASGATE_BODY_TOO_LARGE";
inline constexpr std::string_view kRequestTimeout = "ATLASGATE_REQUEST_TIMEOUT";
inline constexpr std::string_view kNotSupported = "ATLASGATE_NOT_SUPPORTED";
inline constexpr std::string_view kInvalidToken = "ATLASGATE_INVALID_TOKEN";
inline constexpr std::string_view kCaptureFailed = "ATLASGATE_CAPTURE_FAILED";
inline constexpr std::string_view kNotAuthorized = "ATLASGATE_NOT_AUTHORIZED";

using ErrorResponse = boost::beast::http::response<boost::beast::http::string_body>;

// {"error":status,"errorCode":code,"reason":<status text>,"detail":detail,"parameters":params}
ErrorResponse makeErrorResponse(unsigned status, std::string_view errorCode, std::string_view detail,
                                const std::vector<std::string>& parameters = {}, bool shouldRetry = false,
                                unsigned httpVersion = 11);

enum class Refusal : std::uint8_t {
  RequestTimeout,         // head or body too slow
  HeadersTooLarge,        // head over max_header_bytes, or over max_headers fields
  BodyTooLarge,           // body over max_body_bytes
  BadRequest,             // malformed framing, smuggling attempt, unforwardable
  MethodNotAllowed,       // CONNECT, TRACE
  NotImplemented,         // a transfer coding other than chunked
  Misdirected,            // Host or an absolute-form target names another host than the SNI
  Malformed,              // the rules engine found the request malformed (method override...)
  Blocked,                // a block rule
  RateLimited,            // a rate_limit rule
  ApprovalQueueFull,      // an approve rule, over a max_held_* cap
  ApprovalDenied,         // an approve rule: denied or not approved in time
  InvalidToken,           // a phantom token of another agent, expired or unknown
  NoCredential,           // no credential of the target is this agent's
  CredentialUnavailable,  // the credential could not be obtained (token endpoint failure)
  UpstreamBusy,           // no upstream connection became free in time
  UpstreamTimeout,        // the target did not answer in time
  UpstreamUnavailable,    // the target could not be reached
  CaptureFailed,          // a minted secret could not be sealed: the answer is withheld
  DigestRequired,         // a Digest challenge for a captured API key (first, stale, or refused answer)
  kCount
};

struct RefusalInfo {
  Refusal refusal;
  unsigned status;
  std::string_view code;
  std::optional<Counter> counter;  // bumped when the refusal is sent
  bool retry;                      // x-should-retry
  bool closes;                     // the connection ends after this answer
};

inline constexpr std::array<RefusalInfo, static_cast<std::size_t>(Refusal::kCount)> kRefusals{{
    {Refusal::RequestTimeout, 408, kRequestTimeout, Counter::BadRequests, false, true},
    {Refusal::HeadersTooLarge, 431, kHeadersTooLarge, Counter::BadRequests, false, true},
    {Refusal::BodyTooLarge, 413, kBodyTooLarge, Counter::BadRequests, false, true},
    {Refusal::BadRequest, 400, kBadRequest, Counter::BadRequests, false, true},
    {Refusal::MethodNotAllowed, 405, kBadRequest, Counter::BadRequests, false, true},
    {Refusal::NotImplemented, 501, kBadRequest, Counter::BadRequests, false, true},
    {Refusal::Misdirected, 421, kMisdirected, Counter::BadRequests, false, false},
    {Refusal::Malformed, 400, kBadRequest, Counter::BadRequests, false, true},
    {Refusal::Blocked, 403, kBlocked, Counter::Blocked, false, false},
    {Refusal::RateLimited, 429, kRateLimited, Counter::RateLimited, true, false},
    {Refusal::ApprovalQueueFull, 429, kApprovalQueueFull, std::nullopt, true, false},
    {Refusal::ApprovalDenied, 403, kApprovalDenied, std::nullopt, false, false},
    {Refusal::InvalidToken, 401, kInvalidToken, Counter::PhantomRefused, false, false},
    {Refusal::NoCredential, 503, kCredentialUnavailable, Counter::CredentialFailures, false, false},
    {Refusal::CredentialUnavailable, 503, kCredentialUnavailable, Counter::CredentialFailures, true, false},
    {Refusal::UpstreamBusy, 503, kUpstreamBusy, Counter::UpstreamBusy, true, false},
    {Refusal::UpstreamTimeout, 504, kUpstreamTimeout, Counter::UpstreamFailures, true, false},
    {Refusal::UpstreamUnavailable, 502, kUpstreamUnavailable, Counter::UpstreamFailures, true, false},
    {Refusal::CaptureFailed, 503, kCaptureFailed, Counter::CaptureFailures, false, false},
    {Refusal::DigestRequired, 401, kNotAuthorized, std::nullopt, false, false},
}};

static_assert(tableInOrder(kRefusals, &RefusalInfo::refusal), "kRefusals rows must follow enum Refusal");

inline const RefusalInfo& refusalInfo(Refusal r) { return kRefusals[static_cast<std::size_t>(r)]; }

// The response for a refusal. retryAfter > 0 adds Retry-After (seconds).
ErrorResponse refusalResponse(Refusal r, std::string_view detail, const std::vector<std::string>& parameters = {},
                              long long retryAfter = 0);

}  // namespace atlasgate::proxy
