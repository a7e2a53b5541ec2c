#pragma once
// Target addresses from DNS, with their TTLs (res_nquery: getaddrinfo does
// not report TTLs). Blocking; the daemon calls it from its resolver thread.

#include <chrono>
#include <string>
#include <vector>

#include "common/result.h"

namespace atlasgate::dns {

struct Answer {
  std::vector<std::string> addresses;  // A and AAAA, as text
  std::chrono::seconds ttl{0};         // smallest TTL seen
};

// `servers`: "IPv4" or "IPv4:port" resolvers to ask; empty = /etc/resolv.conf.
Result<Answer> resolve(const std::string& host, const std::vector<std::string>& servers = {});

// Refresh interval for a TTL: half of it, within [floor, ceiling].
std::chrono::seconds refreshInterval(std::chrono::seconds ttl, std::chrono::seconds floor = std::chrono::seconds(10),
                                     std::chrono::seconds ceiling = std::chrono::seconds(600));

}  // namespace atlasgate::dns
