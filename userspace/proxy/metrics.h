#pragma once
// Request metrics for Prometheus (/metrics on listen.admin). Label values are
// bounded: at most kMaxAgents agent names (the rest count as "_other"),
// decisions and status codes are small closed sets.

#include <array>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <tuple>

#include "audit/audit.h"

namespace atlasgate::proxy {

class Histogram {
 public:
  static constexpr std::array<double, 14> kBucketsMs = {1,   2,   5,    10,   25,   50,    100,
                                                        250, 500, 1000, 2500, 5000, 10000, 30000};
  void observe(double ms);
  void merge(const Histogram& o);
  // Appends name_bucket/_sum/_count lines (the HELP/TYPE lines are the caller's).
  void render(std::string& out, const std::string& name, const std::string& labels) const;

 private:
  std::array<std::uint64_t, kBucketsMs.size()> counts_{};
  std::uint64_t count_ = 0;
  double sum_ = 0;
};

class RequestMetrics {
 public:
  static constexpr std::size_t kMaxAgents = 100;
  void record(const audit::Record& r);
  // Adds another worker's figures (the agent cap holds for the sum).
  void merge(const RequestMetrics& o);
  std::string render() const;

 private:
  void count(std::string_view agent, std::string_view decision, unsigned status, std::uint64_t n);  // mu_ held
  mutable std::mutex mu_;
  // agent, decision, status; looked up by string_views (no copies per request)
  std::map<std::tuple<std::string, std::string, unsigned>, std::uint64_t, std::less<>> requests_;
  std::map<std::string, bool, std::less<>> agents_;
  Histogram total_;
  Histogram upstream_;
};

// Escapes a Prometheus label value.
std::string promLabel(std::string_view v);

}  // namespace atlasgate::proxy
