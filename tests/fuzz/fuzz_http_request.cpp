// fuzz_http_request: the agent's HTTP/1.1 bytes, after TLS, as the daemon
// reads them (userspace/proxy/server.cpp Server::serve): Beast's
// request_parser<string_body> with the daemon's limits, a keep-alive loop over
// one buffer (pipelining), then checkRequest() and the upstream rewrite
// (prepareUpstreamRequest, keep_alive, prepare_payload, Authorization) of
// userspace/proxy/rewrite.h.
//
// Oracles, beyond ASan/UBSan:
//  * a request checkRequest() lets through has an origin-form target, at most
//    one Content-Length, never both Content-Length and Transfer-Encoding, at
//    most one Host (equal to the SNI host), is not CONNECT and not an upgrade;
//  * the rewritten upstream request carries none of the agent's credentials or
//    hop-by-hop headers, exactly one Host and one Authorization;
//  * no smuggling: the bytes sent upstream parse back as exactly ONE complete
//    request with the same method, target and body, and nothing left over;
//  * the same input delivered in one read and in small reads (TLS records
//    split anywhere) gives the same sequence of outcomes.

#include <cstddef>
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <boost/asio/buffer.hpp>
#include <boost/asio/error.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>

#include "fuzz_common.h"
#include "proxy/rewrite.h"

namespace http = boost::beast::http;
using atlasgate::proxy::checkRequest;
using atlasgate::proxy::prepareUpstreamRequest;

namespace {

constexpr std::string_view kHost = "cloud.mongodb.com";
constexpr std::size_t kHeaderLimit = 16 * 1024;  // limits.max_header_bytes default
constexpr std::size_t kBodyLimit = 1024 * 1024;  // 1 MiB

// A SyncReadStream over the input that hands out at most `step` bytes per read.
class MemStream {
 public:
  MemStream(std::string_view data, std::size_t step) : data_(data), step_(step) {}

  template <class MutableBuffers>
  std::size_t read_some(const MutableBuffers& buffers, boost::system::error_code& ec) {
    ec = {};
    if (pos_ >= data_.size()) {
      ec = boost::asio::error::eof;
      return 0;
    }
    std::size_t n = std::min(step_, data_.size() - pos_);
    n = boost::asio::buffer_copy(buffers, boost::asio::buffer(data_.data() + pos_, n));
    pos_ += n;
    return n;
  }
  template <class MutableBuffers>
  std::size_t read_some(const MutableBuffers& buffers) {
    boost::system::error_code ec;
    std::size_t n = read_some(buffers, ec);
    if (ec) throw boost::system::system_error(ec);
    return n;
  }

 private:
  std::string_view data_;
  std::size_t step_;
  std::size_t pos_ = 0;
};

bool has(const http::request<http::string_body>& req, http::field f) { return req.count(f) > 0; }

std::string describe(const http::request<http::string_body>& req) {
  std::ostringstream os;
  os << req.base();
  return os.str();
}

// Re-parses what would be written upstream: exactly one complete request.
void checkUpstreamWire(const std::string& wire, const http::request<http::string_body>& sent) {
  http::request_parser<http::string_body> p;
  p.header_limit(UINT32_MAX);
  p.body_limit(boost::none);
  p.eager(true);
  boost::system::error_code ec;
  std::size_t used = 0;
  while (!p.is_done() && used < wire.size()) {
    std::size_t n = p.put(boost::asio::buffer(wire.data() + used, wire.size() - used), ec);
    if (ec == http::error::need_more) {
      ec = {};
      if (n == 0) break;
    }
    AG_FUZZ_CHECK(!ec, "the request sent upstream does not parse: " + ec.message() + "\n" + wire);
    used += n;
  }
  if (!p.is_done()) {
    p.put_eof(ec);
    AG_FUZZ_CHECK(!ec && p.is_done(), "the request sent upstream is incomplete: " + ec.message() + "\n" + wire);
  }
  AG_FUZZ_CHECK(used == wire.size(), "bytes left over after the request sent upstream (smuggling)\n" + wire);
  const auto& got = p.get();
  AG_FUZZ_CHECK(got.method_string() == sent.method_string(), wire);
  AG_FUZZ_CHECK(got.target() == sent.target(), wire);
  AG_FUZZ_CHECK(got.body() == sent.body(), "upstream sees another body\n" + wire);
  AG_FUZZ_CHECK(got.count(http::field::host) == 1 && got[http::field::host] == kHost, wire);
  AG_FUZZ_CHECK(got.count(http::field::authorization) == 1, wire);
}

// One parsed request through checkRequest and the upstream rewrite. Returns
// whether the daemon would go on reading this connection.
bool process(http::request<http::string_body> req, std::vector<std::string>& outcomes) {
  const bool keepAlive = req.keep_alive();
  auto check = checkRequest(req, kHost);
  if (!check.ok) {
    AG_FUZZ_CHECK(check.status() == 400 || check.status() == 405 || check.status() == 421 || check.status() == 501,
                  check.detail);
    AG_FUZZ_CHECK(!check.detail.empty(), "refusal without a detail");
    outcomes.push_back("refused " + std::to_string(check.status()));
    return keepAlive && !check.closeConnection();
  }
  std::string what = describe(req);
  AG_FUZZ_CHECK(!req.target().empty() && req.target().front() == '/',
                "target not origin-form after checkRequest\n" + what);
  AG_FUZZ_CHECK(req.method() != http::verb::connect, what);
  AG_FUZZ_CHECK(!has(req, http::field::upgrade), what);
  AG_FUZZ_CHECK(req.count(http::field::content_length) <= 1, what);
  AG_FUZZ_CHECK(!(has(req, http::field::content_length) && has(req, http::field::transfer_encoding)), what);
  AG_FUZZ_CHECK(req.count(http::field::host) <= 1, what);
  if (req.version() >= 11) AG_FUZZ_CHECK(req.count(http::field::host) == 1, what);

  // What Server::serve does before writing upstream.
  const std::string method(req.method_string());
  const std::string target(req.target());
  const std::string body = req.body();
  prepareUpstreamRequest(req, kHost);
  what = describe(req);
  for (auto f : {http::field::authorization, http::field::proxy_authorization, http::field::expect,
                 http::field::connection, http::field::keep_alive, http::field::proxy_connection, http::field::te,
                 http::field::trailer, http::field::upgrade})
    AG_FUZZ_CHECK(!has(req, f), "hop-by-hop or agent header forwarded\n" + what);
  AG_FUZZ_CHECK(req.count(http::field::host) == 1 && req[http::field::host] == kHost, what);
  req.keep_alive(true);  // adds "Connection: keep-alive" to an HTTP/1.0 request
  try {
    req.prepare_payload();
  } catch (const std::invalid_argument& e) {
    // Beast refuses to frame a TRACE with a body; in the daemon this
    // exception ends the connection's coroutine without an answer (reported).
    AG_FUZZ_CHECK(req.method() == http::verb::trace, e.what());
    outcomes.push_back("prepare_payload threw");
    return false;
  }
  req.set(http::field::authorization, "Bearer fuzz-token");
  what = describe(req);
  AG_FUZZ_CHECK(req.method_string() == method && req.target() == target && req.body() == body, what);

  std::ostringstream os;
  os << req;
  std::string wire = os.str();
  checkUpstreamWire(wire, req);
  outcomes.push_back(std::move(wire));
  return keepAlive;
}

// Server::serve's read loop over one connection.
std::vector<std::string> serve(std::string_view input, std::size_t step) {
  std::vector<std::string> outcomes;
  MemStream stream(input, step);
  boost::beast::flat_buffer buffer;
  buffer.max_size(kHeaderLimit + 64 * 1024);
  boost::system::error_code ec;
  for (int requests = 0; requests < 64; ++requests) {
    if (buffer.size() == 0) {
      auto mb = buffer.prepare(4096);
      std::size_t n = stream.read_some(mb, ec);
      if (ec) break;
      buffer.commit(n);
    }
    http::request_parser<http::string_body> parser;
    parser.header_limit(kHeaderLimit);
    parser.body_limit(kBodyLimit);
    http::read_header(stream, buffer, parser, ec);
    if (ec) {
      if (ec == http::error::end_of_stream) break;
      outcomes.push_back(ec == http::error::header_limit || ec == http::error::buffer_overflow ? "431" : "400");
      break;
    }
    if (auto cl = parser.content_length(); cl && *cl > kBodyLimit) {
      outcomes.push_back("413");
      break;
    }
    http::read(stream, buffer, parser, ec);
    if (ec) {
      outcomes.push_back(ec == http::error::body_limit ? "413" : "400 body");
      break;
    }
    if (!process(parser.release(), outcomes)) break;
  }
  return outcomes;
}

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += "[" + x + "]\n";
  return s;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  atlasgate::fuzz::quietLogs();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  std::string_view input(reinterpret_cast<const char*>(data), size);
  auto whole = serve(input, SIZE_MAX);
  // TLS records may split the stream anywhere: small reads must not change
  // what the parser makes of it.
  auto pieces = serve(input, 1 + size % 13);
  AG_FUZZ_CHECK(whole == pieces, "one read:\n" + join(whole) + "small reads:\n" + join(pieces));
  return 0;
}
