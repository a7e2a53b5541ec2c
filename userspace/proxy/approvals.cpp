#include "proxy/approvals.h"

#include <algorithm>

#include "common/text.h"

namespace atlasgate::proxy {

void previewBody(ApprovalInfo& info, std::string_view body) {
  std::size_t blanks = 0;
  while (blanks < body.size() && text::isAsciiBlank(body[blanks])) ++blanks;
  std::string_view head = text::utf8Prefix(body.substr(blanks), kBodyPreviewBytes);
  info.bodyPreview = text::utf8Valid(head);
  info.bodyLeadingBlanks = blanks;
  info.bodyBytes = body.size();
  info.bodyTruncated = blanks + head.size() < body.size();
}

Admission Approvals::add(ApprovalInfo info, const HoldLimits& limits, asio::any_io_executor waiter) {
  Admission a;
  {
    std::lock_guard lock(mu_);
    auto agentIt = perAgent_.find(info.agentKey);
    std::size_t ofAgent = agentIt == perAgent_.end() ? 0 : agentIt->second;
    if (entries_.size() >= limits.maxRequests)
      a.full = HoldCap::Requests;
    else if (ofAgent >= limits.maxPerAgent)
      a.full = HoldCap::PerAgent;
    else if (info.bodyBytes > limits.maxBodyBytes || heldBodyBytes_ > limits.maxBodyBytes - info.bodyBytes)
      a.full = HoldCap::BodyBytes;
    if (a.full != HoldCap::None) {
      ++refused_;
      // A place frees up at the latest when the first relevant held request
      // times out (earlier if someone decides).
      auto now = asio::steady_timer::clock_type::now();
      auto soonest = asio::steady_timer::clock_type::time_point::max();
      for (const auto& [id, e] : entries_)
        if (a.full != HoldCap::PerAgent || e.info.agentKey == info.agentKey)
          soonest = std::min(soonest, e.timer->expiry());
      auto wait = soonest == asio::steady_timer::clock_type::time_point::max()
                      ? std::chrono::seconds(1)
                      : std::chrono::ceil<std::chrono::seconds>(soonest - now);
      a.retryAfter = std::max(wait, std::chrono::seconds(1));
      return a;
    }
    std::uint64_t id = nextId_++;
    info.id = id;
    info.since = std::chrono::system_clock::now();
    ++perAgent_[info.agentKey];
    heldBodyBytes_ += info.bodyBytes;
    Entry& e = entries_[id];
    e.info = std::move(info);
    e.timer = std::make_shared<asio::steady_timer>(waiter ? waiter : ex_);
    e.timer->expires_after(e.info.timeout);
    a.id = id;
  }
  changed();
  return a;
}

void Approvals::erase(std::map<std::uint64_t, Entry>::iterator it) {
  heldBodyBytes_ -= it->second.info.bodyBytes;
  if (auto p = perAgent_.find(it->second.info.agentKey); p != perAgent_.end() && --p->second == 0) perAgent_.erase(p);
  entries_.erase(it);
}

void Approvals::changed() {
  if (!onChange_) return;
  if (std::this_thread::get_id() == owner_)
    onChange_();
  else
    asio::post(ex_, [this] {
      if (onChange_) onChange_();
    });
}

void Approvals::wake(const std::shared_ptr<asio::steady_timer>& timer) {
  if (std::this_thread::get_id() == owner_ && timer->get_executor() == ex_)
    timer->cancel();
  else
    asio::post(timer->get_executor(), [timer] { timer->cancel(); });
}

asio::awaitable<ApprovalOutcome> Approvals::wait(std::uint64_t id) {
  co_await asio::this_coro::throw_if_cancelled(false);
  // The decision and the deadline are looked at before each wait, so a
  // request decided before wait() started is not left waiting for its timer.
  // (A decision made after the look posts the timer's cancel to this
  // thread, where it runs after the wait below has begun.)
  bool waited = false;
  for (;;) {
    std::shared_ptr<asio::steady_timer> timer;
    std::optional<ApprovalOutcome> outcome;
    {
      std::lock_guard lock(mu_);
      auto it = entries_.find(id);
      if (it == entries_.end()) co_return ApprovalOutcome::TimedOut;
      if (it->second.decision) {
        outcome = *it->second.decision ? ApprovalOutcome::Approved : ApprovalOutcome::Denied;
        erase(it);
      } else if (std::chrono::steady_clock::now() >= it->second.timer->expiry()) {
        outcome = ApprovalOutcome::TimedOut;
        erase(it);
      } else {
        timer = it->second.timer;
      }
    }
    if (outcome) {
      changed();
      co_return *outcome;
    }
    if (waited) {
      auto cs = co_await asio::this_coro::cancellation_state;
      if (cs.cancelled() != asio::cancellation_type::none) co_return ApprovalOutcome::Waiting;
    }
    // decide() cancels the timer; expiry without a decision is a timeout.
    co_await timer->async_wait(kUseTuple);
    waited = true;
  }
}

void Approvals::abandon(std::uint64_t id) {
  {
    std::lock_guard lock(mu_);
    auto it = entries_.find(id);
    if (it == entries_.end()) return;
    erase(it);
  }
  changed();
}

bool Approvals::decide(std::uint64_t id, bool allow) {
  {
    std::lock_guard lock(mu_);
    auto it = entries_.find(id);
    if (it == entries_.end() || it->second.decision) return false;
    it->second.decision = allow;
    wake(it->second.timer);
  }
  changed();
  return true;
}

void Approvals::denyAll() {
  std::lock_guard lock(mu_);
  for (auto& [id, e] : entries_)
    if (!e.decision) {
      e.decision = false;
      wake(e.timer);
    }
}

std::vector<ApprovalInfo> Approvals::pending() const {
  std::lock_guard lock(mu_);
  std::vector<ApprovalInfo> out;
  for (const auto& [id, e] : entries_)
    if (!e.decision) out.push_back(e.info);
  return out;
}

std::size_t Approvals::held() const {
  std::lock_guard lock(mu_);
  return entries_.size();
}

std::uint64_t Approvals::heldBodyBytes() const {
  std::lock_guard lock(mu_);
  return heldBodyBytes_;
}

std::uint64_t Approvals::refused() const {
  std::lock_guard lock(mu_);
  return refused_;
}

}  // namespace atlasgate::proxy
