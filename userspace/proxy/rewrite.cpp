#include "proxy/rewrite.h"

#include "common/text.h"

#include <algorithm>
#include <cctype>
#include <vector>

#include <boost/beast/http/field.hpp>
#include <boost/beast/http/rfc7230.hpp>

namespace atlasgate::proxy {

namespace http = boost::beast::http;

namespace {

using text::iequals;

std::string_view hostWithoutPort(std::string_view h) {
  if (!h.empty() && h.front() == '[') {
    auto close = h.find(']');
    return close == std::string_view::npos ? h : h.substr(0, close + 1);
  }
  auto colon = h.rfind(':');
  if (colon != std::string_view::npos && h.find(':') == colon) {
    std::string_view port = h.substr(colon + 1);
    if (port == "443" || port.empty()) return h.substr(0, colon);
    return h;  // another port: keep it, the comparison fails
  }
  return h;
}

// Every Connection header's tokens: repeated headers are one list (RFC 9110).
template <class Fields>
std::vector<std::string> connectionTokens(const Fields& f) {
  std::vector<std::string> named;
  for (auto [it, end] = f.equal_range(http::field::connection); it != end; ++it)
    for (auto const& token : http::token_list{it->value()}) named.emplace_back(token);
  return named;
}

template <class Fields>
void stripHopByHop(Fields& f) {
  std::vector<std::string> named = connectionTokens(f);
  for (const auto& n : named) {
    // Never let Connection remove what framing depends on.
    if (iequals(n, "transfer-encoding") || iequals(n, "content-length") || iequals(n, "host")) continue;
    f.erase(n);
  }
  f.erase(http::field::connection);
  f.erase(http::field::keep_alive);
  f.erase(http::field::proxy_connection);
  f.erase(http::field::te);
  f.erase(http::field::trailer);
  f.erase(http::field::upgrade);
}

}  // namespace

RequestCheck checkRequest(http::request<http::string_body>& req, std::string_view host) {
  RequestCheck out;
  auto fail = [&](Refusal refusal, std::string detail) {
    out.ok = false;
    out.refusal = refusal;
    out.detail = std::move(detail);
    return out;
  };
  if (req.method() == http::verb::connect)
    return fail(Refusal::MethodNotAllowed,
                "CONNECT is not supported: atlasgate terminates TLS for the Atlas API only.");
  if (req.method() == http::verb::trace) return fail(Refusal::MethodNotAllowed, "TRACE is not supported.");
  if (req.count(http::field::upgrade) > 0) return fail(Refusal::BadRequest, "Protocol upgrades are not supported.");
  if (req.count(http::field::content_length) > 1) return fail(Refusal::BadRequest, "Repeated Content-Length headers.");
  if (req.count(http::field::content_length) > 0 && req.count(http::field::transfer_encoding) > 0)
    return fail(Refusal::BadRequest, "Both Content-Length and Transfer-Encoding are present.");
  if (req.count(http::field::host) > 1) return fail(Refusal::BadRequest, "Repeated Host headers.");
  if (req.count(http::field::transfer_encoding) > 0) {
    // Only plain chunked framing is understood end to end; anything else
    // ("gzip, chunked") would reach Atlas with framing we did not check.
    if (req.count(http::field::transfer_encoding) > 1 ||
        !iequals(text::trimOws(req[http::field::transfer_encoding]), "chunked"))
      return fail(Refusal::NotImplemented, "Only Transfer-Encoding: chunked is supported.");
  }

  std::string_view target = req.target();
  if (target.empty()) return fail(Refusal::BadRequest, "Empty request target.");
  if (target.front() != '/') {
    // absolute-form: https://host[:443]/path
    std::string_view rest = target;
    if (rest.size() >= 8 && iequals(rest.substr(0, 8), "https://"))
      rest.remove_prefix(8);
    else if (rest.size() >= 7 && iequals(rest.substr(0, 7), "http://"))
      rest.remove_prefix(7);
    else
      return fail(Refusal::BadRequest, "The request target must be an absolute path.");
    auto slash = rest.find('/');
    std::string_view authority = rest.substr(0, slash);
    if (!iequals(hostWithoutPort(authority), host))
      return fail(Refusal::Misdirected, "The request names another host than the one this connection is for.");
    std::string origin = slash == std::string_view::npos ? std::string("/") : std::string(rest.substr(slash));
    req.target(origin);
  }
  if (req.count(http::field::host) == 0) {
    if (req.version() >= 11) return fail(Refusal::BadRequest, "HTTP/1.1 request without a Host header.");
  } else if (!iequals(hostWithoutPort(req[http::field::host]), host)) {
    return fail(Refusal::Misdirected, "The Host header does not match the TLS server name.");
  }
  return out;
}

void prepareUpstreamRequest(http::request<http::string_body>& req, std::string_view host) {
  stripHopByHop(req);
  req.erase(http::field::authorization);
  req.erase(http::field::proxy_authorization);
  req.erase(http::field::expect);
  req.set(http::field::host, host);
}

void prepareAgentResponse(http::response<http::buffer_body>& res) {
  // Transfer-Encoding is framing for the serializer; keep it.
  std::vector<std::string> named = connectionTokens(res);
  for (const auto& n : named)
    if (!iequals(n, "transfer-encoding") && !iequals(n, "content-length")) res.erase(n);
  res.erase(http::field::connection);
  res.erase(http::field::keep_alive);
  res.erase(http::field::proxy_connection);
  res.erase(http::field::upgrade);
}

}  // namespace atlasgate::proxy
