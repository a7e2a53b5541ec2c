#pragma once
// Requests held by `approve` rules until a person decides (atlasgate
// approvals allow|deny ID) or the rule's timeout passes.
//
// A held request keeps its whole body in memory, so what may be held is
// capped (limits.max_held_requests, max_held_per_agent, max_held_body_bytes):
// add() refuses a request over a cap, and the agent is told to retry later.

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "net/asio.h"

namespace atlasgate::proxy {

using namespace net;  // the Asio/Beast vocabulary (net/asio.h): asio, beast, http, ssl, tcp, kUseTuple

enum class ApprovalOutcome { Approved, Denied, TimedOut, Waiting /* wait() was cancelled */ };

struct ApprovalInfo {
  std::uint64_t id = 0;
  std::string agent;
  std::string agentKey;  // whom the per-agent cap counts (the agent's cgroup); not shown
  std::string method;
  std::string host;
  std::string path;
  std::string rule;
  std::string bodyPreview;              // the start of the body, well-formed UTF-8 (see previewBody)
  std::uint64_t bodyLeadingBlanks = 0;  // ASCII whitespace bytes before the preview, not in it
  std::uint64_t bodyBytes = 0;          // size of the whole body, held in memory meanwhile
  bool bodyTruncated = false;           // the body goes on after the preview
  std::chrono::system_clock::time_point since;
  std::chrono::seconds timeout{0};
};

inline constexpr std::size_t kBodyPreviewBytes = 512;

// Fills the body fields of info from the body. The preview starts after the
// body's leading ASCII whitespace (only counted, in bodyLeadingBlanks: an
// agent cannot push what matters out of the preview with padding), holds at
// most kBodyPreviewBytes bytes, is cut on a UTF-8 character boundary, and
// has each byte that is not UTF-8 replaced by U+FFFD, so the control
// socket's JSON (which must be UTF-8) always carries it.
void previewBody(ApprovalInfo& info, std::string_view body);

struct HoldLimits {
  std::uint64_t maxRequests = 0;   // whole daemon
  std::uint64_t maxPerAgent = 0;   // same agentKey
  std::uint64_t maxBodyBytes = 0;  // sum of bodyBytes of everything held
};

enum class HoldCap { None, Requests, PerAgent, BodyBytes };

struct Admission {
  std::uint64_t id = 0;                // 0: refused
  HoldCap full = HoldCap::None;        // the cap that refused it
  std::chrono::seconds retryAfter{0};  // when a place is expected to free up (at least 1 s)
};

// Thread-safe: workers hold requests from their own threads. A held
// request's timer lives on the executor of whoever waits for it; decide()
// and denyAll() (the daemon's thread) cancel it there, by a post.
class Approvals {
 public:
  explicit Approvals(asio::any_io_executor ex) : ex_(std::move(ex)), owner_(std::this_thread::get_id()) {}

  // `waiter`: the executor wait(id) will run on (default: the daemon's).
  Admission add(ApprovalInfo info, const HoldLimits& limits, asio::any_io_executor waiter = {});
  asio::awaitable<ApprovalOutcome> wait(std::uint64_t id);
  void abandon(std::uint64_t id);
  bool decide(std::uint64_t id, bool allow);
  std::vector<ApprovalInfo> pending() const;
  void denyAll();
  // Runs on the thread that made this object (posted there from others).
  void setOnChange(std::function<void()> f) { onChange_ = std::move(f); }

  std::size_t held() const;
  std::uint64_t heldBodyBytes() const;
  std::uint64_t refused() const;

 private:
  struct Entry {
    ApprovalInfo info;
    std::optional<bool> decision;
    std::shared_ptr<asio::steady_timer> timer;
  };
  // mu_ held; the caller calls changed() once it is released.
  void erase(std::map<std::uint64_t, Entry>::iterator it);
  void changed();
  // Ends a wait on the timer, on the timer's own executor.
  void wake(const std::shared_ptr<asio::steady_timer>& timer);

  asio::any_io_executor ex_;
  std::thread::id owner_;
  mutable std::mutex mu_;
  std::map<std::uint64_t, Entry> entries_;
  std::map<std::string, std::size_t, std::less<>> perAgent_;  // held entries per agentKey
  std::uint64_t heldBodyBytes_ = 0;
  std::uint64_t refused_ = 0;
  std::uint64_t nextId_ = 1;
  std::function<void()> onChange_;
};

}  // namespace atlasgate::proxy
