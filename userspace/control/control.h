#pragma once
// The control socket (/run/atlasgate/control.sock, mode 0600, root): one JSON
// object per line in each direction. Requests: {"cmd":"status"},
// {"cmd":"attach","path":…}, {"cmd":"detach","path":…}, {"cmd":"reload"},
// {"cmd":"approvals"}, {"cmd":"decide","id":N,"allow":bool}.
// Answers carry "ok": true|false and "error" when false.

#include <functional>
#include <memory>
#include <string>

#include <boost/json/value.hpp>

#include "common/result.h"

namespace boost::asio {
class io_context;
}

namespace atlasgate::control {

inline constexpr const char* kDefaultSocket = "/run/atlasgate/control.sock";

using Handler = std::function<boost::json::value(const boost::json::object& request)>;

class Server {
 public:
  static Result<std::unique_ptr<Server>> start(boost::asio::io_context& io, const std::string& path, Handler handler);
  ~Server();
  void stop();

 private:
  struct Impl;
  explicit Server(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Answers carry strings that agents control (process names, paths, cgroup
// names, body previews), which may be any bytes, but a JSON text must be
// UTF-8 and the client's parser refuses one that is not. The server passes
// every answer through this: each byte that is not part of well-formed UTF-8
// becomes U+FFFD, in values and in keys.
void makeUtf8(boost::json::value& v);

// Client side (the CLI): sends one request, returns the answer.
Result<boost::json::value> call(const std::string& path, const boost::json::object& request, int timeoutMs = 150000);

}  // namespace atlasgate::control
