#pragma once
// Pure request/response transforms of the terminator, apart from I/O so
// that they are unit-tested with plain messages (tests/unit/proxy/
// rewrite_test.cpp) and fuzzed (tests/fuzz/fuzz_http_request.cpp).

#include <string>
#include <string_view>

#include <boost/beast/http/buffer_body.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/beast/http/string_body.hpp>

#include "proxy/errors.h"

namespace atlasgate::proxy {

struct RequestCheck {
  bool ok = true;
  Refusal refusal = Refusal::BadRequest;  // when !ok: its status, code and whether the connection ends
  std::string detail;
  unsigned status() const { return ok ? 0 : refusalInfo(refusal).status; }
  // Framing in doubt: never reuse the connection.
  bool closeConnection() const { return !ok && refusalInfo(refusal).closes; }
};

// Refuses what must not be forwarded: CONNECT, upgrades, absolute-form
// targets for other hosts, a Host that does not match the TLS SNI, ambiguous
// framing (Content-Length with Transfer-Encoding, repeated Content-Length or
// Host). Rewrites an absolute-form target for `host` into origin-form.
RequestCheck checkRequest(boost::beast::http::request<boost::beast::http::string_body>& req, std::string_view host);

// Strips hop-by-hop headers (RFC 9110 7.6.1, incl. those the Connection
// header names), the agent's Authorization and Proxy-Authorization, and
// Expect (the body is already here); sets Host.
void prepareUpstreamRequest(boost::beast::http::request<boost::beast::http::string_body>& req, std::string_view host);

// Strips hop-by-hop headers from a response before it goes to the agent
// (Transfer-Encoding stays: the serializer re-frames the body).
void prepareAgentResponse(boost::beast::http::response<boost::beast::http::buffer_body>& res);

}  // namespace atlasgate::proxy
