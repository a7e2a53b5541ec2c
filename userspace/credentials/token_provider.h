#pragma once
// OAuth2 client credentials for an Atlas service account: the token is
// fetched, cached, refreshed before it expires (at 80% of its lifetime at the
// latest), one refresh at a time however many requests wait (single flight).
// While no valid token can be had, callers are answered at once with the
// last error (capped exponential backoff with jitter between attempts), so an
// agent gets a 503 rather than a hang.

#include <chrono>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>

#include "common/result.h"
#include "credentials/secret.h"
#include "net/asio.h"
#include "upstream/call.h"

namespace atlasgate::credentials {

struct TokenStats {
  std::uint64_t fetches = 0;
  std::uint64_t failures = 0;
  std::uint64_t invalidations = 0;
};

class TokenProvider {
 public:
  using Clock = std::chrono::steady_clock;

  TokenProvider(net::asio::any_io_executor ex, upstream::UpstreamPool& pool, std::string host, std::string clientId,
                Secret secret, std::chrono::seconds timeout);

  // A valid bearer token, or an error whose message is safe to show. The
  // token endpoint is reached over the pool, at an address atlasgate chose.
  // Callable from any thread (workers): a cached token is copied under a
  // lock; waiting for a fetch happens on the provider's executor.
  net::asio::awaitable<Result<std::string>> token();

  // The upstream answered 401 for this token: do not inject it again.
  void invalidate(const std::string& token);

  // Revokes the current token (clean shutdown).
  net::asio::awaitable<void> revoke();

  // For status: "valid, expires in 3412s", "refreshing", "failing: …".
  std::string describeState() const;
  TokenStats stats() const;
  const std::string& clientId() const { return clientId_; }

 private:
  // On ex_: a token, waiting for the refresh in flight (or starting one).
  net::asio::awaitable<Result<std::string>> fetched();
  net::asio::awaitable<void> refresh();
  bool isRefreshing() const;
  bool valid(Clock::time_point now) const;  // mu_ held
  std::string basicAuth() const;

  net::asio::any_io_executor ex_;
  upstream::UpstreamPool& pool_;
  std::string host_;
  std::string clientId_;
  Secret secret_;
  std::chrono::seconds timeout_;

  // What refresh() writes and callers on other threads read (ex_ alone
  // touches wake_).
  mutable std::mutex mu_;
  Secret token_;
  Clock::time_point expiresAt_{};
  Clock::time_point refreshAt_{};
  std::chrono::milliseconds margin_{5000};  // no injection this close to expiry
  bool refreshing_ = false;
  net::asio::steady_timer wake_;  // cancelled when a refresh completes
  std::string lastError_;
  unsigned failures_ = 0;
  Clock::time_point nextAttempt_{};
  TokenStats stats_;
};

}  // namespace atlasgate::credentials
