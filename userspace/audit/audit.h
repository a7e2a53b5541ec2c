#pragma once
// The audit trail: one JSON line per request (README "Audit log"). A record
// names the credential used, never its secret or token. Writing never blocks
// the data path on a full disk: a failed write is counted as lost.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>

#include "common/result.h"

namespace atlasgate::audit {

struct Record {
  std::chrono::system_clock::time_point ts;
  std::string agent;
  std::uint32_t pid = 0;
  std::string comm;
  std::string cgroup;
  std::string method;
  std::string host;
  std::string path;
  std::string rule;      // deciding rule, "default" when none matched
  std::string decision;  // allow, block, rate_limited, approved, denied, log_only, error, local
  unsigned status = 0;
  double upstreamMs = 0;
  double totalMs = 0;
  std::uint64_t bytesIn = 0;
  std::uint64_t bytesOut = 0;
  std::string credential;  // e.g. service_account:mdb_sa_id_..., "" when none
  std::string dst;         // original destination the agent dialled, "addr:port"
  std::string error;       // errorCode when atlasgate answered itself
  std::string captured;    // vault entries this request made or dropped ("captured:api_key:<id>", ...), by name
  // MongoDB commands (protocol "mongodb"; "" = an HTTP request): the
  // command's name, database and collection ("" when it has none).
  std::string protocol;
  std::string command;
  std::string database;
  std::string collection;
};

std::string toJson(const Record& r);

class AuditLog {
 public:
  // path "-" writes to stdout.
  static Result<std::unique_ptr<AuditLog>> open(const std::string& path);
  ~AuditLog();
  void write(const Record& r);
  std::uint64_t written() const { return written_; }
  std::uint64_t lost() const { return lost_; }
  const std::string& path() const { return path_; }
  // Re-open (log rotation, reload).
  Result<void> reopen();

 private:
  AuditLog(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  std::string path_;
  int fd_ = -1;
  std::mutex mu_;
  std::atomic<std::uint64_t> written_{0};
  std::atomic<std::uint64_t> lost_{0};
};

}  // namespace atlasgate::audit
