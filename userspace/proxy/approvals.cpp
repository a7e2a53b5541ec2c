#include "proxy/approvals.h"

namespace atlasgate::proxy {

std::uint64_t Approvals::add(ApprovalInfo info) {
  std::uint64_t id = nextId_++;
  info.id = id;
  info.since = std::chrono::system_clock::now();
  Entry& e = entries_[id];
  e.info = std::move(info);
  e.timer = std::make_unique<asio::steady_timer>(ex_);
  e.timer->expires_after(e.info.timeout);
  return id;
}

asio::awaitable<ApprovalOutcome> Approvals::wait(std::uint64_t id) {
  co_await asio::this_coro::throw_if_cancelled(false);
  for (;;) {
    auto it = entries_.find(id);
    if (it == entries_.end()) co_return ApprovalOutcome::TimedOut;
    asio::steady_timer& timer = *it->second.timer;
    // decide() cancels the timer; expiry without a decision is a timeout.
    co_await timer.async_wait(kUseTuple);
    it = entries_.find(id);
    if (it == entries_.end()) co_return ApprovalOutcome::TimedOut;
    if (it->second.decision) {
      bool allow = *it->second.decision;
      entries_.erase(it);
      co_return allow ? ApprovalOutcome::Approved : ApprovalOutcome::Denied;
    }
    if (std::chrono::steady_clock::now() >= it->second.timer->expiry()) {
      entries_.erase(it);
      co_return ApprovalOutcome::TimedOut;
    }
    auto cs = co_await asio::this_coro::cancellation_state;
    if (cs.cancelled() != asio::cancellation_type::none) co_return ApprovalOutcome::Waiting;
  }
}

void Approvals::abandon(std::uint64_t id) { entries_.erase(id); }

bool Approvals::decide(std::uint64_t id, bool allow) {
  auto it = entries_.find(id);
  if (it == entries_.end() || it->second.decision) return false;
  it->second.decision = allow;
  it->second.timer->cancel();
  return true;
}

void Approvals::denyAll() {
  for (auto& [id, e] : entries_)
    if (!e.decision) {
      e.decision = false;
      e.timer->cancel();
    }
}

std::vector<ApprovalInfo> Approvals::pending() const {
  std::vector<ApprovalInfo> out;
  for (const auto& [id, e] : entries_)
    if (!e.decision) out.push_back(e.info);
  return out;
}

}  // namespace atlasgate::proxy
