#pragma once
// One request to a target over the pool: the one upstream client, used by
// the proxy (which streams the response body to the agent) and by the
// daemon's own calls (roundTrip: the token endpoint).
//
//   Call call(pool, host, agentKey);
//   if (auto ec = co_await call.send(req, timeout)) ... call.failedStep()
//   call.response() ...                       // the head is here
//   co_await call.readSome(buf, n, timeout)   // the body, piece by piece
//   call.finish();                            // connection back to the pool
//
// send() retries once on a fresh connection when a reused keep-alive one
// turns out dead before anything of the request was processed (write failed,
// or the target closed it without a byte of response). The request must be
// complete (prepare_payload done): it may be written twice.

#include <chrono>
#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "net/asio.h"
#include "upstream/upstream.h"

namespace atlasgate::upstream {

class Call {
 public:
  // `agent` is the requesting agent's key (its share of the pool); "" is
  // atlasgate's own request. Both are referenced, not copied (the call is
  // on every request's path): they must outlive the Call.
  Call(UpstreamPool& pool, const std::string& host, const std::string& agent)
      : pool_(pool), host_(host), agent_(agent) {}
  ~Call();
  Call(const Call&) = delete;
  Call& operator=(const Call&) = delete;

  // Writes the request and reads the response head. The timeout bounds the
  // write and the head (not the wait for a pooled connection: the pool's
  // queue timeout does).
  asio::awaitable<beast::error_code> send(const http::request<http::string_body>& req, std::chrono::seconds timeout);
  // "connect", "write" or "read" after send() failed.
  std::string_view failedStep() const { return step_; }

  // The response: head after send(); body pieces land where readSome puts them.
  http::response<http::buffer_body>& response() { return parser_->get(); }
  bool done() const { return parser_->is_done(); }
  // The body is framed by chunks (false: by Content-Length, or by the end of
  // the connection, or there is none).
  bool chunked() const { return parser_->chunked(); }
  // The body runs until the target closes the connection (neither length
  // nor chunks): the agent's connection must end with it.
  bool endsAtClose() const { return !parser_->is_done() && !parser_->chunked() && !parser_->content_length(); }
  // Reads the next piece of the body into [data, data+size); n is how much.
  asio::awaitable<beast::error_code> readSome(char* data, std::size_t size, std::size_t& n,
                                              std::chrono::seconds timeout);
  // Reads the rest of the body into `body`; http::error::body_limit when it
  // would grow past `limit` (what was read stays, for the caller to wipe).
  asio::awaitable<beast::error_code> readBody(std::string& body, std::size_t limit, std::chrono::seconds timeout);
  // Reads and drops the rest of the body; false when the connection failed.
  asio::awaitable<bool> discardBody(std::chrono::seconds timeout);

  // The response was read whole: the connection goes back to the pool if
  // the target keeps it alive and sent nothing more. Otherwise it is closed.
  void finish();
  // Drops the connection (the response will not be read whole).
  void abandon() { conn_.reset(); }

 private:
  // The response head after any 1xx interim answers.
  asio::awaitable<beast::error_code> readFinalHead(bool head);
  beast::error_code framingError() const;

  UpstreamPool& pool_;
  const std::string& host_;
  const std::string& agent_;
  std::unique_ptr<UpstreamConn> conn_;
  std::optional<http::response_parser<http::buffer_body>> parser_;
  std::string step_;
  bool keepAlive_ = false;
};

// One whole request/response over the pool, for the daemon's own calls (the
// token endpoint): the response body is read fully, up to bodyLimit.
struct RoundTripResult {
  beast::error_code ec;
  std::string what;  // which step failed, for logs
  http::response<http::string_body> response;
};
asio::awaitable<RoundTripResult> roundTrip(UpstreamPool& pool, const std::string& host,
                                           http::request<http::string_body> request, std::chrono::seconds timeout,
                                           std::size_t bodyLimit = 1 << 20);

}  // namespace atlasgate::upstream
