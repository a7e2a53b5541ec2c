#pragma once
// The admin endpoint (listen.admin): GET /metrics (Prometheus text format
// 0.0.4) and GET /healthz. Plain HTTP on an operator-chosen address, read-only.

#include <functional>
#include <memory>
#include <string>

#include "common/result.h"

namespace boost::asio {
class io_context;
}

namespace atlasgate::admin {

struct Handlers {
  std::function<std::string()> metrics;
  std::function<bool()> healthy;
};

class Server {
 public:
  static Result<std::unique_ptr<Server>> start(boost::asio::io_context& io, const std::string& address,
                                               Handlers handlers);
  ~Server();
  void stop();

 private:
  struct Impl;
  explicit Server(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<Impl> impl_;
};

}  // namespace atlasgate::admin
