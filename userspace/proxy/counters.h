#pragma once
// The data plane's counters, in one table: `atlasgate status` (counters.<key>)
// and /metrics (<metric>) are both rendered from it, so a counter is added in
// one place and cannot be missing from either.

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace atlasgate::proxy {

enum class Counter : std::uint8_t {
  Accepted,
  RefusedNoFlow,
  RefusedUnknownAgent,
  HeldForDiscovery,
  AcceptErrors,
  HandshakeFailures,
  Requests,
  Blocked,
  RateLimited,
  ApprovalsHeld,
  CredentialFailures,
  CredentialRetries,
  PhantomIssued,
  PhantomRefused,
  UpstreamFailures,
  UpstreamBusy,
  RefusedOverLimit,
  BadRequests,
  LiveConnections,
  Passthrough,
  Captured,
  CaptureFailures,
  CapturedRefused,
  kCount
};

struct CounterInfo {
  Counter counter;
  std::string_view status;  // key under "counters" in `atlasgate status`
  std::string_view metric;  // Prometheus name
  bool gauge;               // false: a monotonic counter
  std::string_view help;
};

inline constexpr std::array<CounterInfo, static_cast<std::size_t>(Counter::kCount)> kCounterTable{{
    {Counter::Accepted, "accepted", "atlasgate_connections_accepted_total", false,
     "Redirected agent connections accepted."},
    {Counter::RefusedNoFlow, "refused_no_flow", "atlasgate_flows_refused_total", false,
     "Connections refused: no kernel redirect record."},
    {Counter::RefusedUnknownAgent, "refused_unknown_agent", "atlasgate_connections_refused_unknown_agent_total", false,
     "Connections refused: the socket's creator is under no attached cgroup."},
    {Counter::HeldForDiscovery, "held_for_discovery", "atlasgate_connections_held_for_discovery_total", false,
     "Connections from under a guard held until discovery named their container."},
    {Counter::AcceptErrors, "accept_errors", "atlasgate_accept_errors_total", false,
     "accept() failures (out of file descriptors or memory)."},
    {Counter::HandshakeFailures, "handshake_failures", "atlasgate_tls_handshake_failures_total", false,
     "Agent TLS handshakes that failed (incl. unknown SNI)."},
    {Counter::Requests, "requests", "atlasgate_http_requests_read_total", false,
     "HTTP requests read whole from agents."},
    {Counter::Blocked, "blocked", "atlasgate_requests_blocked_total", false, "Requests blocked by a rule (403)."},
    {Counter::RateLimited, "rate_limited", "atlasgate_requests_rate_limited_total", false,
     "Requests refused by a rate_limit rule (429)."},
    {Counter::ApprovalsHeld, "approvals_held", "atlasgate_approvals_held_total", false,
     "Requests held for an operator's approval."},
    {Counter::CredentialFailures, "credential_failures", "atlasgate_credential_failures_total", false,
     "Requests answered 503: no credential, or the credential could not be obtained."},
    {Counter::CredentialRetries, "credential_retries", "atlasgate_credential_retries_total", false,
     "Digest challenges answered and tokens refreshed after a 401."},
    {Counter::PhantomIssued, "phantom_tokens_issued", "atlasgate_phantom_tokens_issued_total", false,
     "Phantom tokens issued to agents that run the OAuth flow themselves."},
    {Counter::PhantomRefused, "phantom_tokens_refused", "atlasgate_phantom_tokens_refused_total", false,
     "Requests with an unknown, expired or another agent's phantom token (401)."},
    {Counter::UpstreamFailures, "upstream_failures", "atlasgate_upstream_failures_total", false,
     "Requests the target could not be reached for (502/504)."},
    {Counter::UpstreamBusy, "upstream_busy", "atlasgate_upstream_busy_total", false,
     "Requests that found every upstream connection busy in time (503)."},
    {Counter::RefusedOverLimit, "refused_over_limit", "atlasgate_connections_refused_over_limit_total", false,
     "Agent connections closed at once: over limits.max_connections or max_connections_per_agent."},
    {Counter::BadRequests, "bad_requests", "atlasgate_bad_requests_total", false,
     "Malformed, oversized, slow or misdirected requests (4xx from atlasgate)."},
    {Counter::LiveConnections, "live_connections", "atlasgate_connections_live", true, "Agent connections open now."},
    {Counter::Passthrough, "passthrough_connections", "atlasgate_passthrough_connections_total", false,
     "intercept: all-tls: connections to non-targets spliced through."},
    {Counter::Captured, "credentials_captured", "atlasgate_credentials_captured_total", false,
     "Credentials Atlas minted (or passwords agents set) sealed into the vault; the agent got a phantom."},
    {Counter::CaptureFailures, "capture_failures", "atlasgate_capture_failures_total", false,
     "Minting responses withheld because the secret could not be sealed (503)."},
    {Counter::CapturedRefused, "captured_refused", "atlasgate_captured_credentials_refused_total", false,
     "Digest or OAuth attempts with a captured credential's phantom that failed (401)."},
}};

// Tables indexed by an enum (this one, kRefusals): row i must be the row of
// enum value i, or a lookup returns another row. `key` is the row's enum member.
template <class Table, class Member>
consteval bool tableInOrder(const Table& table, Member key) {
  for (std::size_t i = 0; i < table.size(); ++i)
    if (static_cast<std::size_t>(table[i].*key) != i) return false;
  return true;
}
static_assert(tableInOrder(kCounterTable, &CounterInfo::counter), "kCounterTable rows must follow enum Counter");

class Counters {
 public:
  void add(Counter c, std::uint64_t n = 1) { at(c).fetch_add(n, std::memory_order_relaxed); }
  void sub(Counter c, std::uint64_t n = 1) { at(c).fetch_sub(n, std::memory_order_relaxed); }
  std::uint64_t get(Counter c) const { return values_[static_cast<std::size_t>(c)].load(std::memory_order_relaxed); }

 private:
  std::atomic<std::uint64_t>& at(Counter c) { return values_[static_cast<std::size_t>(c)]; }
  std::array<std::atomic<std::uint64_t>, static_cast<std::size_t>(Counter::kCount)> values_{};
};

}  // namespace atlasgate::proxy
