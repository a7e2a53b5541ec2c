#pragma once
// Responses atlasgate writes itself, in Atlas' own error shape so Atlas SDKs
// parse them (README "What the agent sees"). Every body is non-empty JSON.

#include <string>
#include <string_view>
#include <vector>

#include <boost/beast/http/message.hpp>
#include <boost/beast/http/string_body.hpp>

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

using ErrorResponse = boost::beast::http::response<boost::beast::http::string_body>;

// {"error":status,"errorCode":code,"reason":<status text>,"detail":detail,"parameters":params}
ErrorResponse makeErrorResponse(unsigned status, std::string_view errorCode, std::string_view detail,
                                const std::vector<std::string>& parameters = {}, bool shouldRetry = false,
                                unsigned httpVersion = 11);

}  // namespace atlasgate::proxy
