#pragma once
// What the console shows of the traffic: the last decisions (the audit
// records, numbered), requests per minute over the last hour by decision,
// and per-agent counts. Fed by the audit log (one push per record) on the
// daemon's event loop; read by the console on the same loop.
//
// Everything in it is bounded: kKeptDecisions records, kMinutes buckets,
// kMaxAgents agent names (an agent name can be made up by whoever names a
// cgroup or a process; the least recently seen name is forgotten first).

#include <array>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace atlasgate::console {

struct Decision {
  std::uint64_t seq = 0;
  std::string json;  // {"seq":N,"protocol":…, then the audit record's fields}
};

struct AgentCount {
  std::uint64_t requests = 0;
  std::uint64_t blocked = 0;  // block, denied, rate_limited
  std::chrono::system_clock::time_point lastSeen;
};

class Feed {
 public:
  static constexpr std::size_t kKeptDecisions = 1000;
  static constexpr std::size_t kMinutes = 60;
  static constexpr std::size_t kMaxAgents = 4096;

  // One audit record: its fields as the audit log has them (auditJson is
  // the record's JSON object, as written to the log) plus what the counts need.
  void push(std::string_view auditJson, std::string_view agent, std::string_view decision, std::string_view protocol,
            std::chrono::system_clock::time_point ts);

  // The kept decisions after seq (exclusive), oldest first, at most limit.
  std::vector<const Decision*> since(std::uint64_t seq, std::size_t limit) const;
  std::uint64_t last() const { return nextSeq_ - 1; }

  // {"minutes":[{"t":…,"total":N,"<decision>":N…}…]}: the kMinutes minutes
  // up to now's, oldest first, zero-filled.
  std::string statsJson(std::chrono::system_clock::time_point now) const;
  const std::map<std::string, AgentCount, std::less<>>& agents() const { return agents_; }

  // Called after each push (the console wakes its event streams).
  void setObserver(std::function<void()> f) { observer_ = std::move(f); }

 private:
  struct Minute {
    std::int64_t minute = -1;  // minutes since the epoch; -1: empty
    std::map<std::string, std::uint64_t, std::less<>> counts;
  };
  void count(std::string_view agent, std::string_view decision, std::chrono::system_clock::time_point ts);

  std::deque<Decision> kept_;
  std::uint64_t nextSeq_ = 1;
  std::array<Minute, kMinutes> minutes_{};
  std::map<std::string, AgentCount, std::less<>> agents_;
  std::function<void()> observer_;
};

// "2026-12-01T09:12:00Z" (whole seconds, UTC).
std::string isoSeconds(std::chrono::system_clock::time_point t);

}  // namespace atlasgate::console
