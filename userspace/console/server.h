#pragma once
// The console over HTTP (listen.console): console.h's Console behind a
// Beast server on the daemon's event loop, and the event stream
// (GET /api/v1/events, Server-Sent Events) that pushes each decision and
// each change of the held requests to the open pages at once.
//
// Bounded: kMaxConnections connections (kMaxStreams of them event streams),
// 64 KiB request bodies, 10 s to send a request or to take a write. An event
// stream ends when its session does.

#include <chrono>
#include <memory>
#include <string>

#include "common/result.h"
#include "console/console.h"
#include "console/feed.h"

namespace boost::asio {
class io_context;
}

namespace atlasgate::console {

class Server {
 public:
  static constexpr std::size_t kMaxConnections = 64;
  static constexpr std::size_t kMaxStreams = 16;

  static Result<std::unique_ptr<Server>> start(boost::asio::io_context& io, const std::string& address,
                                               std::chrono::seconds sessionLifetime, Handlers handlers);
  ~Server();
  void stop();

  // A one-time sign-in link (`atlasgate console-url`).
  std::string signInUrl();
  // The held requests changed (one held, decided, timed out, abandoned).
  void approvalsChanged(std::size_t pending);
  Feed& feed();

 private:
  struct Impl;
  explicit Server(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<Impl> impl_;
};

}  // namespace atlasgate::console
