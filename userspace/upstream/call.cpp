#include "upstream/call.h"

#include "common/text.h"
#include "net/http_head.h"

#include <algorithm>
#include <array>
#include <tuple>
#include <vector>

namespace atlasgate::upstream {

Call::~Call() = default;

asio::awaitable<beast::error_code> Call::send(const http::request<http::string_body>& req,
                                              std::chrono::seconds timeout) {
  beast::error_code ec;
  for (int attempt = 0; attempt < 2; ++attempt) {
    auto got = co_await pool_.acquire(host_, agent_);
    if (got.ec) {
      step_ = "connect";
      co_return got.ec;
    }
    conn_ = std::move(got.conn);
    conn_->buffer.clear();
    auto& lower = beast::get_lowest_layer(conn_->stream);
    lower.expires_after(timeout);
    beast::error_code wec;
    if (req.chunked()) {  // not after prepare_payload; Beast frames it if it ever is
      std::tie(wec, std::ignore) = co_await http::async_write(conn_->stream, req, kUseTuple);
    } else {
      net::writeHead(conn_->head, req);
      const std::array<asio::const_buffer, 2> wire{asio::buffer(conn_->head), asio::buffer(req.body())};
      // The head carries the credential: conn_->scrub() cleanses it when
      // the connection goes back to the pool or away.
      std::tie(wec, std::ignore) = co_await asio::async_write(conn_->stream, wire, kUseTuple);
    }
    if (wec) {
      step_ = "write";
      conn_.reset();
      ec = wec;
      if (got.reused) continue;
      co_return ec;
    }
    auto rec = co_await readFinalHead(req.method() == http::verb::head);
    if (rec) {
      step_ = "read";
      const bool nothingRead = conn_->buffer.size() == 0;
      conn_.reset();
      ec = rec;
      // A keep-alive connection the target closed meanwhile: nothing of the
      // request was processed, try once on a fresh one.
      if (got.reused && (rec == http::error::end_of_stream || rec == asio::ssl::error::stream_truncated) && nothingRead)
        continue;
      co_return ec;
    }
    step_.clear();
    keepAlive_ = parser_->get().keep_alive();
    co_return beast::error_code{};
  }
  co_return ec;
}

asio::awaitable<beast::error_code> Call::readFinalHead(bool head) {
  // Interim answers (100 Continue, 103 Early Hints) come before the real
  // one: skipped, or the real one would stay on the wire and go to whoever
  // uses the connection next. 101 would switch protocols: refused.
  for (int interim = 0; interim <= 8; ++interim) {
    parser_.emplace();
    parser_->body_limit(boost::none);
    if (head) parser_->skip(true);
    auto [ec, n] = co_await http::async_read_header(conn_->stream, conn_->buffer, *parser_, kUseTuple);
    if (ec) co_return ec;
    const unsigned status = parser_->get().result_int();
    if (status == 101) co_return http::error::bad_status;
    if (status >= 200) co_return framingError();
  }
  co_return http::error::bad_status;  // an endless run of interim answers
}

// The response's framing must read one way only, for the parser here and
// for the agent, who gets the same head: at most one Transfer-Encoding, and
// then exactly "chunked" and no Content-Length. (Two fields, "identity" and
// "chunked", would be de-chunked here and read as chunked by the agent:
// body bytes of the target's choosing would frame the agent's next response.)
beast::error_code Call::framingError() const {
  const auto& res = parser_->get();
  const std::size_t te = res.count(http::field::transfer_encoding);
  if (te == 0) return {};
  if (te > 1 || !text::iequals(text::trimOws(res[http::field::transfer_encoding]), "chunked") ||
      res.count(http::field::content_length) > 0)
    return http::error::bad_transfer_encoding;
  return {};
}

asio::awaitable<beast::error_code> Call::readSome(char* data, std::size_t size, std::size_t& n,
                                                  std::chrono::seconds timeout) {
  auto& body = parser_->get().body();
  body.data = data;
  body.size = size;
  if (conn_->buffer.size() > 0 && !parser_->is_done()) {
    // Body bytes already read with the head (a small answer is all here):
    // parsed now, without a trip through the event loop.
    beast::error_code ec;
    conn_->buffer.consume(parser_->put(conn_->buffer.data(), ec));
    if (ec == http::error::need_buffer || ec == http::error::need_more) ec = {};
    n = ec ? 0 : size - body.size;
    if (ec || n > 0 || parser_->is_done()) co_return ec;
  }
  beast::get_lowest_layer(conn_->stream).expires_after(timeout);
  auto [ec, rn] = co_await http::async_read(conn_->stream, conn_->buffer, *parser_, kUseTuple);
  if (ec == http::error::need_buffer) ec = {};
  n = ec ? 0 : size - body.size;
  co_return ec;
}

asio::awaitable<beast::error_code> Call::readBody(std::string& body, std::size_t limit, std::chrono::seconds timeout) {
  std::vector<char> piece(16 * 1024);
  while (!parser_->is_done()) {
    std::size_t n = 0;
    if (auto ec = co_await readSome(piece.data(), piece.size(), n, timeout)) co_return ec;
    if (body.size() + n > limit) co_return http::error::body_limit;
    body.append(piece.data(), n);
  }
  co_return beast::error_code{};
}

asio::awaitable<bool> Call::discardBody(std::chrono::seconds timeout) {
  std::vector<char> scratch(8192);
  while (!parser_->is_done()) {
    std::size_t n = 0;
    if (auto ec = co_await readSome(scratch.data(), scratch.size(), n, timeout)) co_return false;
  }
  co_return true;
}

void Call::finish() {
  if (!conn_) return;
  beast::get_lowest_layer(conn_->stream).expires_never();
  if (parser_ && parser_->is_done() && keepAlive_ && conn_->buffer.size() == 0) {
    conn_->scrub();  // what it read (a minted secret, say) does not wait in the pool
    pool_.release(std::move(conn_));
  }
  conn_.reset();
}

asio::awaitable<RoundTripResult> roundTrip(UpstreamPool& pool, const std::string& host,
                                           http::request<http::string_body> request, std::chrono::seconds timeout,
                                           std::size_t bodyLimit) {
  RoundTripResult out;
  request.prepare_payload();
  static const std::string kOwnRequest;  // atlasgate's own: no agent share
  Call call(pool, host, kOwnRequest);
  if (auto ec = co_await call.send(request, timeout)) {
    out.ec = ec;
    out.what = call.failedStep();
    co_return out;
  }
  std::string body;
  if (auto ec = co_await call.readBody(body, bodyLimit, timeout)) {
    out.ec = ec;
    out.what = "read";
    co_return out;
  }
  out.response = http::response<http::string_body>(std::move(call.response().base()), std::move(body));
  call.finish();
  co_return out;
}

}  // namespace atlasgate::upstream
