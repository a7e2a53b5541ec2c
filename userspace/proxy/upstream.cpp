#include "proxy/upstream.h"

#include <openssl/ssl.h>

#include "common/log.h"
#include "tls/client_context.h"

namespace atlasgate::proxy {

UpstreamPool::~UpstreamPool() { idle_.clear(); }

void UpstreamPool::addHost(const std::string& host, SSL_CTX* ctx) {
  Host h;
  h.ctx = std::make_unique<ssl::context>(ctx);  // takes ownership
  hosts_[host] = std::move(h);
}

asio::awaitable<std::pair<beast::error_code, std::unique_ptr<UpstreamConn>>> UpstreamPool::acquire(
    const std::string& host, const tcp::endpoint& ep, std::chrono::seconds timeout, bool& reused) {
  reused = false;
  auto key = std::make_pair(host, ep);
  auto now = std::chrono::steady_clock::now();
  if (auto it = idle_.find(key); it != idle_.end()) {
    auto& v = it->second;
    while (!v.empty()) {
      std::unique_ptr<UpstreamConn> c = std::move(v.back());
      v.pop_back();
      if (now - c->idleSince > kIdleTimeout) continue;  // likely closed by the peer
      reused = true;
      ++stats_.reuses;
      ++c->uses;
      co_return std::make_pair(beast::error_code{}, std::move(c));
    }
  }

  auto hit = hosts_.find(host);
  if (hit == hosts_.end())
    co_return std::make_pair(beast::error_code(asio::error::host_not_found), nullptr);
  Host& h = hit->second;
  auto conn = std::make_unique<UpstreamConn>(ex_, *h.ctx);
  conn->host = host;
  conn->endpoint = ep;
  SSL* ssl = conn->stream.native_handle();
  // SNI, host-name verification and a resumable session for `host`.
  if (auto r = tls::prepareClientSsl(ssl, host); !r) {
    log::warn("upstream {}: {}", host, r.error().message);
    co_return std::make_pair(beast::error_code(asio::error::invalid_argument), nullptr);
  }

  auto& lower = beast::get_lowest_layer(conn->stream);
  lower.expires_after(timeout);
  auto [cec] = co_await lower.async_connect(ep, kUseTuple);
  if (cec) {
    ++stats_.connectFailures;
    co_return std::make_pair(cec, nullptr);
  }
  lower.socket().set_option(tcp::no_delay(true));
  auto [hec] = co_await conn->stream.async_handshake(ssl::stream_base::client, kUseTuple);
  if (hec) {
    ++stats_.connectFailures;
    co_return std::make_pair(hec, nullptr);
  }
  lower.expires_never();
  ++stats_.connects;
  if (SSL_session_reused(ssl)) ++stats_.resumedSessions;
  conn->uses = 1;
  co_return std::make_pair(beast::error_code{}, std::move(conn));
}

void UpstreamPool::release(std::unique_ptr<UpstreamConn> conn) {
  if (!conn) return;
  auto& v = idle_[std::make_pair(conn->host, conn->endpoint)];
  if (v.size() >= kMaxIdlePerKey) v.erase(v.begin());  // the oldest goes
  conn->idleSince = std::chrono::steady_clock::now();
  v.push_back(std::move(conn));
}

std::size_t UpstreamPool::idleCount() const {
  std::size_t n = 0;
  for (const auto& [k, v] : idle_) n += v.size();
  return n;
}

void UpstreamPool::clear() { idle_.clear(); }

void UpstreamPool::sweep() {
  auto now = std::chrono::steady_clock::now();
  for (auto it = idle_.begin(); it != idle_.end();) {
    auto& v = it->second;
    // Oldest first: release() appends.
    std::size_t stale = 0;
    while (stale < v.size() && now - v[stale]->idleSince > kIdleTimeout) ++stale;
    v.erase(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(stale));
    it = v.empty() ? idle_.erase(it) : std::next(it);
  }
}

asio::awaitable<RoundTripResult> roundTrip(UpstreamPool& pool, const std::string& host,
                                           const tcp::endpoint& ep,
                                           http::request<http::string_body> request,
                                           std::chrono::seconds timeout, std::size_t bodyLimit) {
  RoundTripResult out;
  request.prepare_payload();
  // One retry when a reused keep-alive connection turns out to be dead.
  for (int attempt = 0; attempt < 2; ++attempt) {
    bool reused = false;
    auto [ec, conn] = co_await pool.acquire(host, ep, timeout, reused);
    if (ec) {
      out.ec = ec;
      out.what = "connect";
      co_return out;
    }
    auto& lower = beast::get_lowest_layer(conn->stream);
    lower.expires_after(timeout);
    auto [wec, wn] = co_await http::async_write(conn->stream, request, kUseTuple);
    if (wec) {
      out.ec = wec;
      out.what = "write";
      if (reused) continue;
      co_return out;
    }
    beast::flat_buffer buf;
    http::response_parser<http::string_body> parser;
    parser.body_limit(bodyLimit);
    auto [rec, rn] = co_await http::async_read(conn->stream, buf, parser, kUseTuple);
    if (rec) {
      out.ec = rec;
      out.what = "read";
      if (reused && rec == http::error::end_of_stream) continue;
      co_return out;
    }
    out.response = parser.release();
    lower.expires_never();
    if (out.response.keep_alive() && buf.size() == 0) pool.release(std::move(conn));
    out.ec = {};
    out.what.clear();
    co_return out;
  }
  co_return out;
}

}  // namespace atlasgate::proxy
