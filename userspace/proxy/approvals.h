#pragma once
// Requests held by `approve` rules until a person decides (atlasgate
// approvals allow|deny ID) or the rule's timeout passes.

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "proxy/asio.h"

namespace atlasgate::proxy {

enum class ApprovalOutcome { Approved, Denied, TimedOut, Waiting /* wait() was cancelled */ };

struct ApprovalInfo {
  std::uint64_t id = 0;
  std::string agent;
  std::string method;
  std::string host;
  std::string path;
  std::string rule;
  std::string bodyPreview;  // first bytes of the body, for the person deciding
  std::chrono::system_clock::time_point since;
  std::chrono::seconds timeout{0};
};

class Approvals {
 public:
  explicit Approvals(asio::any_io_executor ex) : ex_(std::move(ex)) {}

  // Registers a held request; returns its ID.
  std::uint64_t add(ApprovalInfo info);
  // Suspends until decided or timed out (the entry is then gone). When the
  // wait itself is cancelled, returns Waiting and the entry stays.
  asio::awaitable<ApprovalOutcome> wait(std::uint64_t id);
  // The agent went away: drop its request.
  void abandon(std::uint64_t id);
  // Returns false when no such request is waiting.
  bool decide(std::uint64_t id, bool allow);
  std::vector<ApprovalInfo> pending() const;
  // Shutdown: every held request is denied.
  void denyAll();

 private:
  struct Entry {
    ApprovalInfo info;
    std::optional<bool> decision;
    std::unique_ptr<asio::steady_timer> timer;
  };
  asio::any_io_executor ex_;
  std::map<std::uint64_t, Entry> entries_;
  std::uint64_t nextId_ = 1;
};

}  // namespace atlasgate::proxy
