#include "admin/admin.h"

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include <set>

#include "common/log.h"
#include "common/text.h"
#include "health/health.h"
#include "net/asio.h"

namespace atlasgate::admin {

using namespace net;  // asio, beast, http, tcp, kUseTuple

namespace {

bool asciiIEqual(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    auto lower = [](char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; };
    if (lower(a[i]) != lower(b[i])) return false;
  }
  return true;
}

}  // namespace

std::string healthBody(const std::vector<std::string>& problems) {
  if (problems.empty()) return "ok\n";
  std::string out = "degraded: ";
  for (std::size_t i = 0; i < problems.size(); ++i) {
    if (i) out += "; ";
    out += health::reasonForOutput(problems[i]);  // escaped again if it must be
  }
  out += "\n";
  return out;
}

bool bearerMatches(std::string_view authorization, std::string_view token) {
  authorization = text::trimOws(authorization);
  std::string_view presented;
  // Not secret: whether the header has the Bearer form at all.
  if (authorization.size() > 7 && asciiIEqual(authorization.substr(0, 7), "bearer ")) {
    presented = text::trimOws(authorization.substr(7));
  }
  // Hash both so that the comparison takes the same time for every guess,
  // whatever its length; CRYPTO_memcmp does not stop at the first difference.
  unsigned char want[SHA256_DIGEST_LENGTH], got[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(token.data()), token.size(), want);
  SHA256(reinterpret_cast<const unsigned char*>(presented.data()), presented.size(), got);
  const bool equal = CRYPTO_memcmp(want, got, sizeof want) == 0;
  OPENSSL_cleanse(want, sizeof want);
  return equal && !token.empty() && !presented.empty();
}

Result<std::optional<credentials::Secret>> readToken(const config::Listen& listen) {
  if (listen.adminTokenFile.empty()) return std::optional<credentials::Secret>();
  config::SecretRef ref;
  ref.file = listen.adminTokenFile;
  auto secret = credentials::readSecret(ref, "listen.admin_token_file");
  if (!secret) return secret.error();
  return std::optional<credentials::Secret>(std::move(secret.value()));
}

struct Server::Impl {
  Impl(asio::io_context& io, Handlers h, std::optional<credentials::Secret> t)
      : acceptor(io), handlers(std::move(h)), token(std::move(t)) {}
  tcp::acceptor acceptor;
  Handlers handlers;
  std::optional<credentials::Secret> token;  // /metrics needs it when set
  std::set<beast::tcp_stream*> open;         // closed on stop(), so shutdown never waits on a scraper

  asio::awaitable<void> serve(tcp::socket sock) {
    beast::tcp_stream stream(std::move(sock));
    Tracked<beast::tcp_stream, std::set<beast::tcp_stream*>> tracked(open, &stream);
    beast::flat_buffer buf;
    for (;;) {
      http::request<http::empty_body> req;
      stream.expires_after(std::chrono::seconds(10));
      auto [ec, n] = co_await http::async_read(stream, buf, req, kUseTuple);
      if (ec) co_return;
      http::response<http::string_body> res{http::status::ok, req.version()};
      std::string_view target = req.target();
      target = target.substr(0, target.find('?'));
      if (req.method() != http::verb::get && req.method() != http::verb::head) {
        res.result(http::status::method_not_allowed);
        res.set(http::field::content_type, "text/plain");
        res.body() = "GET only\n";
      } else if (target == "/metrics" && token && !bearerMatches(req[http::field::authorization], token->view())) {
        res.result(http::status::unauthorized);
        res.set(http::field::www_authenticate, "Bearer realm=\"atlasgate\"");
        res.set(http::field::content_type, "text/plain");
        res.body() = "unauthorized\n";
      } else if (target == "/metrics") {
        res.set(http::field::content_type, "text/plain; version=0.0.4; charset=utf-8");
        res.body() = handlers.metrics();
      } else if (target == "/healthz") {
        res.set(http::field::content_type, "text/plain; charset=utf-8");
        res.set(http::field::cache_control, "no-store");
        res.body() = healthBody(handlers.problems ? handlers.problems() : std::vector<std::string>{});
        if (res.body() != "ok\n") res.result(http::status::service_unavailable);
      } else if (target == "/livez") {
        res.set(http::field::content_type, "text/plain");
        res.set(http::field::cache_control, "no-store");
        res.body() = "alive\n";
      } else {
        res.result(http::status::not_found);
        res.set(http::field::content_type, "text/plain");
        res.body() = "not found: try /metrics, /healthz or /livez\n";
      }
      res.keep_alive(req.keep_alive());
      res.prepare_payload();
      auto [wec, wn] = co_await http::async_write(stream, res, kUseTuple);
      if (wec || !res.keep_alive()) co_return;
    }
  }

  asio::awaitable<void> acceptLoop() {
    for (;;) {
      auto [ec, sock] = co_await acceptor.async_accept(kUseTuple);
      if (ec) {
        if (ec == asio::error::operation_aborted || !acceptor.is_open()) co_return;
        continue;
      }
      asio::co_spawn(acceptor.get_executor(), serve(std::move(sock)), asio::detached);
    }
  }
};

Server::~Server() { stop(); }

void Server::stop() {
  if (impl_ && impl_->acceptor.is_open()) {
    beast::error_code ec;
    impl_->acceptor.close(ec);
    for (auto* s : impl_->open) s->socket().close(ec);
  }
}

void Server::setToken(std::optional<credentials::Secret> token) {
  if (impl_) impl_->token = std::move(token);
}

Result<std::unique_ptr<Server>> Server::start(asio::io_context& io, const std::string& address, Handlers handlers,
                                              std::optional<credentials::Secret> token) {
  auto parsed = parseListenAddress(address);
  if (!parsed) return makeError("listen.admin: expected HOST:PORT with an IP address or localhost, got {}", address);
  beast::error_code ec;
  const bool protectedMetrics = token.has_value();
  auto impl = std::make_shared<Impl>(io, std::move(handlers), std::move(token));
  tcp::endpoint ep = *parsed;
  impl->acceptor.open(ep.protocol(), ec);
  if (!ec) impl->acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) impl->acceptor.bind(ep, ec);
  if (!ec) impl->acceptor.listen(64, ec);
  if (ec) return makeError("listen.admin {}: {}", address, ec.message());
  asio::co_spawn(io, impl->acceptLoop(), asio::detached);
  log::info("admin endpoint on http://{}/metrics, /healthz and /livez ({})", address,
            protectedMetrics ? "/metrics requires the bearer token of listen.admin_token_file"
                             : "/metrics is open to anyone who can connect: no listen.admin_token_file");
  return std::unique_ptr<Server>(new Server(impl));
}

}  // namespace atlasgate::admin
