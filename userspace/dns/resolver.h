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

Result<Answer> resolve(const std::string& host);

// Refresh interval for a TTL: half of it, within [floor, ceiling].
std::chrono::seconds refreshInterval(std::chrono::seconds ttl);

}  // namespace atlasgate::dns
