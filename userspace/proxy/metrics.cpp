#include "proxy/metrics.h"

#include <fmt/format.h>

namespace atlasgate::proxy {

std::string promLabel(std::string_view v) {
  std::string out;
  out.reserve(v.size());
  for (char c : v) {
    if (c == '\\')
      out += "\\\\";
    else if (c == '"')
      out += "\\\"";
    else if (c == '\n')
      out += "\\n";
    else
      out.push_back(c);
  }
  return out;
}

void Histogram::observe(double ms) {
  for (std::size_t i = 0; i < kBucketsMs.size(); ++i)
    if (ms <= kBucketsMs[i]) ++counts_[i];
  ++count_;
  sum_ += ms / 1000.0;
}

void Histogram::merge(const Histogram& o) {
  for (std::size_t i = 0; i < kBucketsMs.size(); ++i) counts_[i] += o.counts_[i];
  count_ += o.count_;
  sum_ += o.sum_;
}

void Histogram::render(std::string& out, const std::string& name, const std::string& labels) const {
  std::string sep = labels.empty() ? "" : ",";
  for (std::size_t i = 0; i < kBucketsMs.size(); ++i)
    fmt::format_to(std::back_inserter(out), "{}_bucket{{{}{}le=\"{}\"}} {}\n", name, labels, sep,
                   kBucketsMs[i] / 1000.0, counts_[i]);
  fmt::format_to(std::back_inserter(out), "{}_bucket{{{}{}le=\"+Inf\"}} {}\n", name, labels, sep, count_);
  std::string braces = labels.empty() ? "" : "{" + labels + "}";
  fmt::format_to(std::back_inserter(out), "{}_sum{} {}\n{}_count{} {}\n", name, braces, sum_, name, braces, count_);
}

void RequestMetrics::count(std::string_view agent, std::string_view decision, unsigned status, std::uint64_t n) {
  if (!agents_.contains(agent)) {
    if (agents_.size() >= kMaxAgents)
      agent = "_other";
    else
      agents_.emplace(std::string(agent), true);
  }
  const std::tuple<std::string_view, std::string_view, unsigned> key{agent, decision, status};
  if (auto it = requests_.find(key); it != requests_.end())
    it->second += n;
  else
    requests_.emplace(std::tuple<std::string, std::string, unsigned>{agent, decision, status}, n);
}

void RequestMetrics::merge(const RequestMetrics& o) {
  std::scoped_lock lock(mu_, o.mu_);
  for (const auto& [k, n] : o.requests_) count(std::get<0>(k), std::get<1>(k), std::get<2>(k), n);
  total_.merge(o.total_);
  upstream_.merge(o.upstream_);
}

void RequestMetrics::record(const audit::Record& r) {
  std::lock_guard lock(mu_);
  count(r.agent, r.decision, r.status, 1);
  total_.observe(r.totalMs);
  if (r.upstreamMs > 0) upstream_.observe(r.upstreamMs);
}

std::string RequestMetrics::render() const {
  std::lock_guard lock(mu_);
  std::string out;
  out += "# HELP atlasgate_requests_total Requests by agent, decision and HTTP status.\n";
  out += "# TYPE atlasgate_requests_total counter\n";
  for (const auto& [k, n] : requests_)
    fmt::format_to(std::back_inserter(out),
                   "atlasgate_requests_total{{agent=\"{}\",decision=\"{}\",status=\"{}\"}} {}\n",
                   promLabel(std::get<0>(k)), promLabel(std::get<1>(k)), std::get<2>(k), n);
  out += "# HELP atlasgate_request_duration_seconds Time from the request head to the end of the response.\n";
  out += "# TYPE atlasgate_request_duration_seconds histogram\n";
  total_.render(out, "atlasgate_request_duration_seconds", "");
  out += "# HELP atlasgate_upstream_duration_seconds Time from sending upstream to the response head.\n";
  out += "# TYPE atlasgate_upstream_duration_seconds histogram\n";
  upstream_.render(out, "atlasgate_upstream_duration_seconds", "");
  return out;
}

}  // namespace atlasgate::proxy
