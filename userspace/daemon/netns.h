#pragma once
// Listening sockets inside agents' network namespaces. A container's or pod's
// connect() is redirected to 127.0.0.1 of *its* namespace, so the daemon holds
// a listener there (created on a short-lived thread that setns()es into the
// namespace; the socket stays in it), the way an in-pod ambient mesh node
// proxy does. The upstream leg to a target leaves from the daemon's own
// namespace; a pass-through connection (intercept: all-tls, not a target)
// leaves from the agent's namespace, through a socket made in it
// (tcpSocketIn), so it reaches only what the agent could reach by itself.

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "common/result.h"

namespace atlasgate::daemon {

struct NetnsListener {
  int fd4 = -1;              // 127.0.0.1:port, listening
  int fd6 = -1;              // [::1]:port, listening, or -1 when IPv6 is off there
  std::uint64_t cookie = 0;  // SO_NETNS_COOKIE of that namespace
  int nsfd = -1;             // the namespace itself (/proc/<pid>/ns/net), for tcpSocketIn; the caller closes it
};

// Opens the listeners inside the network namespace of `pid`.
Result<NetnsListener> openListenersIn(int pid, std::uint16_t port);

// A TCP socket (non-blocking, close-on-exec, not connected) created inside
// the network namespace `nsfd`, IPv6 or IPv4; the caller owns the fd.
Result<int> tcpSocketIn(int nsfd, bool v6);

// Network namespace inode of a process (0 when it is gone).
std::uint64_t netnsInode(int pid);

// Processes in the cgroup trees below `roots`, grouped by network namespace
// inode (one sample pid per namespace).
std::map<std::uint64_t, int> namespacesOf(const std::vector<std::string>& roots);

}  // namespace atlasgate::daemon
