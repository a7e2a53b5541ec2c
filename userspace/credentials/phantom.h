#pragma once
// Phantom tokens for clients that run the OAuth client-credentials flow
// themselves (the MongoDB MCP server, Atlas SDKs). atlasgate answers their
// POST /api/oauth/token locally with a random token bound to the agent that
// asked, and swaps it for the real credential on each API call. A phantom is
// worthless outside atlasgate, and worthless to any other agent.
//
// Bounded: an agent has at most `maxPerAgent` live phantoms (the server
// passes limits.max_phantom_tokens_per_agent) and the daemon at most
// maxTokens. At either cap a new phantom is still issued and the OLDEST one
// goes (the agent's own at its cap, the daemon's oldest at the global cap):
// a client that asks again, e.g. after a restart, keeps working, and what
// is dropped is what is most likely abandoned. Refusing instead would leave
// an agent that leaked its phantoms without any for up to kLifetime.
// Every phantom lives kLifetime, so the oldest is the first to expire.
//
// Every operation is O(log n): tokens are indexed by value, by expiry, and
// per agent by expiry.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>

namespace atlasgate::credentials {

inline constexpr std::string_view kPhantomPrefix = "agp_";

enum class PhantomCheck { NotPhantom, Valid, WrongAgent, Unknown, Expired };

class PhantomTokens {
 public:
  using Clock = std::chrono::steady_clock;
  static constexpr std::chrono::seconds kLifetime{3600};
  static constexpr std::size_t kMaxTokens = 100000;

  explicit PhantomTokens(std::size_t maxTokens = kMaxTokens) : maxTokens_(maxTokens < 1 ? 1 : maxTokens) {}

  // A new phantom for `agentKey` (the agent's cgroup path: stable,
  // unforgeable). When the agent already has maxPerAgent live phantoms, its
  // oldest is revoked; when the daemon has maxTokens, the daemon's oldest.
  // `credential`: the captured credential the phantom stands for ("" = the
  // target's configured one), handed back by check().
  std::string issue(const std::string& agentKey, std::size_t maxPerAgent, Clock::time_point now = Clock::now(),
                    std::string credential = {});
  PhantomCheck check(std::string_view token, const std::string& agentKey, Clock::time_point now = Clock::now(),
                     std::string* credential = nullptr);
  // Revokes a phantom, only when it is `agentKey`'s own.
  bool revoke(std::string_view token, const std::string& agentKey);
  std::size_t size() const;
  // Phantoms held for one agent (expired ones not yet dropped included).
  std::size_t countOf(std::string_view agentKey) const;
  // Phantoms dropped at a cap before their time.
  std::uint64_t evicted() const;

 private:
  // Expiry, then issue order: a strict order even for equal times.
  using Order = std::pair<Clock::time_point, std::uint64_t>;
  struct Entry {
    std::string agentKey;
    Order order;
    std::string credential;
  };
  using Tokens = std::map<std::string, Entry, std::less<>>;
  void eraseLocked(Tokens::iterator it);

  const std::size_t maxTokens_;
  mutable std::mutex mu_;
  Tokens tokens_;
  std::map<Order, Tokens::iterator> byExpiry_;
  std::map<std::string, std::map<Order, Tokens::iterator>, std::less<>> byAgent_;
  std::uint64_t seq_ = 0;
  std::uint64_t evicted_ = 0;
};

}  // namespace atlasgate::credentials
