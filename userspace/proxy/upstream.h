#pragma once
// The daemon's TLS connections to the targets (Atlas): dialled to the
// original destination the agent chose, verified against the target's host
// name, kept alive and shared across agents, TLS sessions resumed.

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/result.h"
#include "proxy/asio.h"

namespace atlasgate::proxy {

struct UpstreamConn {
  UpstreamConn(asio::any_io_executor ex, ssl::context& ctx) : stream(ex, ctx) {}
  TlsStream stream;
  std::string host;
  tcp::endpoint endpoint;
  std::chrono::steady_clock::time_point idleSince{};
  std::uint64_t uses = 0;
};

struct UpstreamStats {
  std::uint64_t connects = 0;
  std::uint64_t connectFailures = 0;
  std::uint64_t reuses = 0;
  std::uint64_t resumedSessions = 0;
};

class UpstreamPool {
 public:
  explicit UpstreamPool(asio::any_io_executor ex) : ex_(std::move(ex)) {}
  ~UpstreamPool();
  UpstreamPool(const UpstreamPool&) = delete;
  UpstreamPool& operator=(const UpstreamPool&) = delete;

  // Registers a target host with its client TLS context (takes ownership).
  void addHost(const std::string& host, SSL_CTX* ctx);
  bool hasHost(const std::string& host) const { return hosts_.contains(host); }

  // An idle connection to (host, endpoint) if one is alive, else a new one.
  // `reused` tells the caller whether a failure may be a stale keep-alive.
  asio::awaitable<std::pair<beast::error_code, std::unique_ptr<UpstreamConn>>> acquire(
      const std::string& host, const tcp::endpoint& ep, std::chrono::seconds timeout, bool& reused);

  // Returns a connection whose last exchange left it reusable.
  void release(std::unique_ptr<UpstreamConn> conn);

  std::size_t idleCount() const;
  const UpstreamStats& stats() const { return stats_; }
  // Closes every idle connection (drain, reload).
  void clear();
  // Closes idle connections kept longer than kIdleTimeout.
  void sweep();

  static constexpr std::size_t kMaxIdlePerKey = 256;
  static constexpr std::chrono::seconds kIdleTimeout{30};

 private:
  struct Host {
    std::unique_ptr<ssl::context> ctx;  // its session store resumes TLS sessions per host
  };
  asio::any_io_executor ex_;
  std::map<std::string, Host> hosts_;
  std::map<std::pair<std::string, tcp::endpoint>, std::vector<std::unique_ptr<UpstreamConn>>> idle_;
  UpstreamStats stats_;
};

// One whole request/response over the pool, for the daemon's own calls (the
// token endpoint): the response body is read fully, up to bodyLimit.
struct RoundTripResult {
  beast::error_code ec;
  std::string what;  // which step failed, for logs
  http::response<http::string_body> response;
};
asio::awaitable<RoundTripResult> roundTrip(UpstreamPool& pool, const std::string& host,
                                           const tcp::endpoint& ep,
                                           http::request<http::string_body> request,
                                           std::chrono::seconds timeout,
                                           std::size_t bodyLimit = 1 << 20);

}  // namespace atlasgate::proxy
