#include "proxy/approvals.h"

namespace atlasgate::proxy {

asio::awaitable<ApprovalOutcome> Approvals::hold(ApprovalInfo info) {
  std::uint64_t id = nextId_++;
  info.id = id;
  info.since = std::chrono::system_clock::now();
  Entry& e = entries_[id];
  e.info = std::move(info);
  e.timer = std::make_unique<asio::steady_timer>(ex_);
  e.timer->expires_after(e.info.timeout);
  // decide() cancels the timer; expiry without a decision is a timeout.
  co_await e.timer->async_wait(kUseTuple);
  auto it = entries_.find(id);
  ApprovalOutcome out = ApprovalOutcome::TimedOut;
  if (it != entries_.end()) {
    if (it->second.decision) out = *it->second.decision ? ApprovalOutcome::Approved : ApprovalOutcome::Denied;
    entries_.erase(it);
  }
  co_return out;
}

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
