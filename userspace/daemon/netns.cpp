#include "daemon/netns.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <system_error>
#include <thread>

namespace atlasgate::daemon {

namespace fs = std::filesystem;

#ifndef SO_NETNS_COOKIE
#define SO_NETNS_COOKIE 71
#endif

std::uint64_t netnsInode(int pid) {
  struct stat st {};
  std::string p = "/proc/" + std::to_string(pid) + "/ns/net";
  if (::stat(p.c_str(), &st) != 0) return 0;
  return static_cast<std::uint64_t>(st.st_ino);
}

std::map<std::uint64_t, int> namespacesOf(const std::vector<std::string>& roots) {
  std::map<std::uint64_t, int> out;
  auto scan = [&out](const fs::path& dir) {
    std::ifstream in(dir / "cgroup.procs");
    int pid;
    while (in >> pid) {
      std::uint64_t ino = netnsInode(pid);
      if (ino) out.emplace(ino, pid);
    }
  };
  std::error_code ec;
  for (const auto& r : roots) {
    if (r.empty()) continue;
    scan(r);
    for (auto it = fs::recursive_directory_iterator(r, fs::directory_options::skip_permission_denied, ec);
         it != fs::recursive_directory_iterator(); it.increment(ec)) {
      if (ec) break;
      if (it->is_directory(ec)) scan(it->path());
    }
  }
  return out;
}

namespace {

int listenOn(int family, std::uint16_t port, int& err) {
  int fd = ::socket(family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) {
    err = errno;
    return -1;
  }
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  int rc;
  if (family == AF_INET) {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    rc = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  } else {
    ::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    sockaddr_in6 a{};
    a.sin6_family = AF_INET6;
    a.sin6_port = htons(port);
    a.sin6_addr = in6addr_loopback;
    rc = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  }
  if (rc != 0 || ::listen(fd, SOMAXCONN) != 0) {
    err = errno;
    ::close(fd);
    return -1;
  }
  return fd;
}

// Runs fn on a thread of its own that has entered the network namespace
// `nsfd`: setns() changes only the calling thread, and this one ends right
// after, so no other work ever runs in an agent's namespace. Sockets fn makes
// stay in that namespace. Returns 0, or the errno of setns (or of a thread
// that could not be started).
template <typename Fn>
int inNamespace(int nsfd, Fn&& fn) {
  int err = 0;
  try {
    std::thread t([&] {
      if (::setns(nsfd, CLONE_NEWNET) != 0) {
        err = errno;
        return;
      }
      fn();
    });
    t.join();
  } catch (const std::system_error& e) {
    return e.code().value() ? e.code().value() : EAGAIN;
  }
  return err;
}

}  // namespace

Result<NetnsListener> openListenersIn(int pid, std::uint16_t port) {
  std::string path = "/proc/" + std::to_string(pid) + "/ns/net";
  int nsfd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (nsfd < 0) return sysError(errno, "open {}", path);
  NetnsListener out;
  int err = 0;
  std::string step;
  int setnsErr = inNamespace(nsfd, [&] {
    out.fd4 = listenOn(AF_INET, port, err);
    if (out.fd4 < 0) {
      step = "listen on 127.0.0.1 (is the namespace's loopback up?)";
      return;
    }
    int e6 = 0;
    out.fd6 = listenOn(AF_INET6, port, e6);  // optional
    socklen_t len = sizeof out.cookie;
    if (::getsockopt(out.fd4, SOL_SOCKET, SO_NETNS_COOKIE, &out.cookie, &len) != 0) {
      err = errno;
      step = "SO_NETNS_COOKIE";
    }
  });
  if (setnsErr != 0) {
    err = setnsErr;
    step = "setns";
  }
  if (err != 0 && (out.fd4 < 0 || out.cookie == 0)) {
    if (out.fd4 >= 0) ::close(out.fd4);
    if (out.fd6 >= 0) ::close(out.fd6);
    ::close(nsfd);
    return sysError(err, "network namespace of pid {}: {}", pid, step);
  }
  // Kept: pass-through connections of this namespace's agents are dialled
  // from it, and the fd stays valid whatever becomes of `pid`.
  out.nsfd = nsfd;
  return out;
}

Result<int> tcpSocketIn(int nsfd, bool v6) {
  int fd = -1;
  int err = 0;
  int setnsErr = inNamespace(nsfd, [&] {
    fd = ::socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) err = errno;
  });
  if (setnsErr != 0) return sysError(setnsErr, "enter an agents' network namespace");
  if (fd < 0) return sysError(err, "socket in an agents' network namespace");
  return fd;
}

}  // namespace atlasgate::daemon
