#pragma once
// The admin endpoint (listen.admin): GET /metrics (Prometheus text format
// 0.0.4), GET /healthz and GET /livez. Plain HTTP on an operator-chosen
// address, read-only.
//
// /livez: 200 "alive" whenever the daemon's event loop answers (a liveness
// probe: restarting the daemon would not mend anything /healthz reports, and
// while it restarts every agent fails closed).
// /healthz: 200 "ok", or 503 "degraded: <reason>; <reason>" naming each
// problem (stale attachment, configured cgroup missing, agent namespace
// without listener: see health/health.h). Reasons hold cgroup paths and
// namespace inodes, escaped, never a secret (a readiness probe).
//
// /metrics names agents and credentials (service-account client ids). With a
// token (listen.admin_token_file) it answers only requests carrying
// `Authorization: Bearer <token>`, compared in constant time, and 401
// otherwise. Without one, anyone who can connect reads it: the address must
// then be loopback on a node whose local users are all trusted. /healthz and
// /livez stay open.

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "config/config.h"
#include "credentials/secret.h"

namespace boost::asio {
class io_context;
}

namespace atlasgate::admin {

struct Handlers {
  std::function<std::string()> metrics;
  // The problems /healthz reports, each one line of escaped text; none: ok.
  std::function<std::vector<std::string>()> problems;
};

class Server {
 public:
  // token: the bearer token /metrics requires; nullopt = /metrics is open.
  static Result<std::unique_ptr<Server>> start(boost::asio::io_context& io, const std::string& address,
                                               Handlers handlers, std::optional<credentials::Secret> token);
  ~Server();
  void stop();
  // Replaces the token (on reload); call on the io_context's thread.
  void setToken(std::optional<credentials::Secret> token);

 private:
  struct Impl;
  explicit Server(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<Impl> impl_;
};

// The token listen.admin_token_file holds (trailing newlines dropped);
// nullopt when none is configured. An unreadable or empty file is an error.
Result<std::optional<credentials::Secret>> readToken(const config::Listen& listen);

// The body of GET /healthz: "ok\n", or "degraded: <reason>; <reason>\n".
std::string healthBody(const std::vector<std::string>& problems);

// Whether an Authorization header value is "Bearer <token>" for this token
// (scheme case-insensitive). Takes the same time whatever the header holds,
// for a given header length: both sides are hashed and the digests compared
// with CRYPTO_memcmp.
bool bearerMatches(std::string_view authorization, std::string_view token);

}  // namespace atlasgate::admin
