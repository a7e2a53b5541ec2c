#include "control/control.h"

#include "common/fd.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/write.hpp>
#include <boost/json.hpp>
#include <filesystem>

#include "common/log.h"
#include "common/text.h"
#include "net/asio.h"

namespace atlasgate::control {

namespace json = boost::json;
using net::kUseTuple;
namespace asio = boost::asio;
using local = asio::local::stream_protocol;

void makeUtf8(json::value& v) {
  if (v.is_string()) {
    if (!text::isUtf8(v.get_string())) v = text::utf8Valid(v.get_string());
  } else if (v.is_array()) {
    for (auto& e : v.get_array()) makeUtf8(e);
  } else if (v.is_object()) {
    json::object& o = v.get_object();
    bool keysOk = true;
    for (auto& [k, e] : o) {
      makeUtf8(e);
      keysOk = keysOk && text::isUtf8(k);
    }
    if (!keysOk) {
      json::object fixed;
      for (auto& [k, e] : o) fixed[text::utf8Valid(k)] = std::move(e);
      v = std::move(fixed);
    }
  }
}

struct Server::Impl {
  Impl(asio::io_context& io, std::string p, Handler h) : acceptor(io), path(std::move(p)), handler(std::move(h)) {}
  local::acceptor acceptor;
  std::string path;
  Handler handler;

  asio::awaitable<void> serveClient(local::socket sock) {
    std::string line;
    auto [rec, n] = co_await asio::async_read_until(sock, asio::dynamic_buffer(line, 64 * 1024), '\n', kUseTuple);
    if (rec) co_return;
    json::value answer;
    boost::system::error_code ec;
    json::value req = json::parse(std::string_view(line).substr(0, n), ec);
    if (ec || !req.is_object())
      answer = json::object{{"ok", false}, {"error", "request is not a JSON object"}};
    else
      answer = handler(req.as_object());
    makeUtf8(answer);
    std::string out = json::serialize(answer) + "\n";
    co_await asio::async_write(sock, asio::buffer(out), kUseTuple);
  }

  asio::awaitable<void> acceptLoop() {
    for (;;) {
      auto [ec, sock] = co_await acceptor.async_accept(kUseTuple);
      if (ec) {
        if (ec == asio::error::operation_aborted || !acceptor.is_open()) co_return;
        continue;
      }
      // Root only: the socket file is 0600, and the peer is checked too.
      struct ucred cred {};
      socklen_t len = sizeof cred;
      if (::getsockopt(sock.native_handle(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || cred.uid != 0) continue;
      asio::co_spawn(acceptor.get_executor(), serveClient(std::move(sock)), asio::detached);
    }
  }
};

Server::Server(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Server::~Server() { stop(); }

void Server::stop() {
  if (!impl_) return;
  boost::system::error_code ec;
  if (impl_->acceptor.is_open()) {
    impl_->acceptor.close(ec);
    ::unlink(impl_->path.c_str());
  }
}

Result<std::unique_ptr<Server>> Server::start(asio::io_context& io, const std::string& path, Handler handler) {
  std::error_code fec;
  std::filesystem::create_directories(std::filesystem::path(path).parent_path(), fec);
  ::chmod(std::filesystem::path(path).parent_path().c_str(), 0755);
  ::unlink(path.c_str());
  auto impl = std::make_unique<Impl>(io, path, std::move(handler));
  boost::system::error_code ec;
  mode_t old = ::umask(0177);  // the socket is born 0600
  impl->acceptor.open(local(), ec);
  if (!ec) impl->acceptor.bind(local::endpoint(path), ec);
  ::umask(old);
  if (!ec) impl->acceptor.listen(16, ec);
  if (ec) return makeError("control socket {}: {}", path, ec.message());
  ::chmod(path.c_str(), 0600);
  asio::co_spawn(io, impl->acceptLoop(), asio::detached);
  return std::unique_ptr<Server>(new Server(std::move(impl)));
}

Result<json::value> call(const std::string& path, const json::object& request, int timeoutMs) {
  UniqueFd owned(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  const int fd = owned.get();
  if (fd < 0) return sysError(errno, "socket");
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path) return makeError("control socket path too long: {}", path);
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    int e = errno;
    if (e == ENOENT || e == ECONNREFUSED)
      return makeError("the atlasgate daemon is not running (no control socket at {})", path);
    if (e == EACCES) return makeError("permission denied on {} (the control socket is root's: use sudo)", path);
    return sysError(e, "connect {}", path);
  }
  std::string out = json::serialize(request) + "\n";
  if (::write(fd, out.data(), out.size()) != static_cast<ssize_t>(out.size())) return sysError(errno, "write");
  std::string in;
  char buf[4096];
  for (;;) {
    pollfd p{fd, POLLIN, 0};
    int pr = ::poll(&p, 1, timeoutMs);
    if (pr == 0) return makeError("the daemon did not answer in time");
    if (pr < 0) return sysError(errno, "poll");
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0) return sysError(errno, "read");
    if (n == 0) break;
    in.append(buf, static_cast<std::size_t>(n));
    if (in.find('\n') != std::string::npos) break;
  }
  boost::system::error_code ec;
  json::value v = json::parse(in, ec);
  if (ec) return makeError("the daemon sent an unreadable answer");
  return v;
}

}  // namespace atlasgate::control
