#pragma once
// Phantom tokens for clients that run the OAuth client-credentials flow
// themselves (the MongoDB MCP server, Atlas SDKs). atlasgate answers their
// POST /api/oauth/token locally with a random token bound to the agent that
// asked, and swaps it for the real credential on each API call. A phantom is
// worthless outside atlasgate, and worthless to any other agent.

#include <chrono>
#include <cstddef>
#include <map>
#include <mutex>
#include <string>
#include <string_view>

namespace atlasgate::credentials {

inline constexpr std::string_view kPhantomPrefix = "agp_";

enum class PhantomCheck { NotPhantom, Valid, WrongAgent, Unknown, Expired };

class PhantomTokens {
 public:
  using Clock = std::chrono::steady_clock;
  static constexpr std::chrono::seconds kLifetime{3600};
  static constexpr std::size_t kMaxTokens = 100000;

  // A new phantom for `agentKey` (the agent's cgroup path: stable, unforgeable).
  std::string issue(const std::string& agentKey, Clock::time_point now = Clock::now());
  PhantomCheck check(std::string_view token, const std::string& agentKey, Clock::time_point now = Clock::now());
  // Revokes a phantom, only when it is `agentKey`'s own.
  bool revoke(std::string_view token, const std::string& agentKey);
  std::size_t size() const;

 private:
  struct Entry {
    std::string agentKey;
    Clock::time_point expires;
  };
  mutable std::mutex mu_;
  std::map<std::string, Entry, std::less<>> tokens_;
};

}  // namespace atlasgate::credentials
