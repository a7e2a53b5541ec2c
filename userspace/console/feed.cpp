#include "console/feed.h"

#include <fmt/format.h>

#include <algorithm>
#include <ctime>
#include <iterator>

namespace atlasgate::console {

namespace {

std::int64_t minuteOf(std::chrono::system_clock::time_point t) {
  return std::chrono::floor<std::chrono::minutes>(t.time_since_epoch()).count();
}

bool isRefusal(std::string_view d) { return d == "block" || d == "denied" || d == "rate_limited"; }

// Decision names come from atlasgate itself (audit::Record::decision), but
// the stats JSON writes them as keys without escaping: only [a-z_] pass.
bool plainName(std::string_view s) {
  return !s.empty() && s.size() <= 32 &&
         std::all_of(s.begin(), s.end(), [](char c) { return (c >= 'a' && c <= 'z') || c == '_'; });
}

}  // namespace

std::string isoSeconds(std::chrono::system_clock::time_point t) {
  std::time_t s = std::chrono::system_clock::to_time_t(std::chrono::floor<std::chrono::seconds>(t));
  std::tm tm{};
  gmtime_r(&s, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

void Feed::push(std::string_view auditJson, std::string_view agent, std::string_view decision,
                std::string_view protocol, std::chrono::system_clock::time_point ts) {
  Decision d;
  d.seq = nextSeq_++;
  // The audit record is one JSON object: splice the number (and, for an
  // HTTP request, whose record has no protocol field, "https") in front.
  std::string_view rest = auditJson.size() >= 2 && auditJson.front() == '{' ? auditJson.substr(1) : "}";
  d.json.reserve(rest.size() + 48);
  fmt::format_to(std::back_inserter(d.json), "{{\"seq\":{},", d.seq);
  if (protocol.empty()) d.json += "\"protocol\":\"https\",";
  d.json += rest;
  if (d.json.back() == ',') d.json.back() = '}';  // an empty record: {"seq":N,…}
  kept_.push_back(std::move(d));
  if (kept_.size() > kKeptDecisions) kept_.pop_front();
  count(agent, decision, ts);
  if (observer_) observer_();
}

void Feed::count(std::string_view agent, std::string_view decision, std::chrono::system_clock::time_point ts) {
  const std::int64_t m = minuteOf(ts);
  Minute& slot = minutes_[static_cast<std::size_t>(((m % kMinutes) + kMinutes) % kMinutes)];
  if (slot.minute != m) slot = Minute{m, {}};
  const std::string_view name = plainName(decision) ? decision : std::string_view("other");
  auto c = slot.counts.find(name);
  if (c == slot.counts.end()) c = slot.counts.emplace(std::string(name), 0).first;
  ++c->second;

  auto it = agents_.find(agent);
  if (it == agents_.end()) {
    if (agents_.size() >= kMaxAgents) {
      auto oldest = std::min_element(agents_.begin(), agents_.end(), [](const auto& a, const auto& b) {
        return a.second.lastSeen < b.second.lastSeen;
      });
      agents_.erase(oldest);
    }
    it = agents_.emplace(std::string(agent), AgentCount{}).first;
  }
  ++it->second.requests;
  if (isRefusal(decision)) ++it->second.blocked;
  it->second.lastSeen = std::max(it->second.lastSeen, ts);
}

std::vector<const Decision*> Feed::since(std::uint64_t seq, std::size_t limit) const {
  std::vector<const Decision*> out;
  // kept_ is sorted by seq: start at the first one after seq.
  auto it =
      std::upper_bound(kept_.begin(), kept_.end(), seq, [](std::uint64_t s, const Decision& d) { return s < d.seq; });
  // With a limit, the newest ones: a client that fell behind catches up with
  // the present, not with the oldest record still kept.
  std::size_t available = static_cast<std::size_t>(std::distance(it, kept_.end()));
  if (available > limit) std::advance(it, static_cast<std::ptrdiff_t>(available - limit));
  for (; it != kept_.end(); ++it) out.push_back(&*it);
  return out;
}

std::string Feed::statsJson(std::chrono::system_clock::time_point now) const {
  const std::int64_t current = minuteOf(now);
  std::string out = "{\"minutes\":[";
  for (std::int64_t m = current - static_cast<std::int64_t>(kMinutes) + 1; m <= current; ++m) {
    const Minute& slot = minutes_[static_cast<std::size_t>(((m % kMinutes) + kMinutes) % kMinutes)];
    std::uint64_t total = 0;
    std::string counts;
    if (slot.minute == m) {
      for (const auto& [name, n] : slot.counts) {
        total += n;
        fmt::format_to(std::back_inserter(counts), ",\"{}\":{}", name, n);
      }
    }
    if (out.back() != '[') out += ',';
    auto t = std::chrono::system_clock::time_point(std::chrono::minutes(m));
    fmt::format_to(std::back_inserter(out), "{{\"t\":\"{}\",\"total\":{}{}}}", isoSeconds(t), total, counts);
  }
  out += "]}";
  return out;
}

}  // namespace atlasgate::console
