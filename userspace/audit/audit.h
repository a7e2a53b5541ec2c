#pragma once
// The audit trail: one JSON line per request (README "Audit log"). A record
// names the credential used, never its secret or token. Writing never blocks
// the data path on a full disk: a failed write is counted as lost.
//
// Batching: with a deferrer (the daemon's event loop), records are gathered
// and written with one write(2) per batch. A record that finds the file
// quiet (nothing written in the last kLinger) is written once the handlers
// that are ready now have run: one request at a time is written at once,
// and waits for no more traffic. Under load, batches go out at most every
// kLinger, so thousands of requests a second cost hundreds of writes, not
// thousands. A batch of kBatchBytes goes out at once, and flush()
// (shutdown, reopen, the destructor) writes what is gathered: a clean stop
// loses nothing.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string_view>
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

// One JSON line (no newline): appended to out, or returned.
void appendJson(std::string& out, const Record& r);
std::string toJson(const Record& r);

class AuditLog {
 public:
  // path "-" writes to stdout.
  static Result<std::unique_ptr<AuditLog>> open(const std::string& path);
  ~AuditLog();
  void write(const Record& r);
  // Writes the gathered records now.
  void flush();
  // How a flush is deferred: f must be called after `delay` (zero: once the
  // handlers ready now have run), on any one thread. Unset (the default):
  // each record is written at once.
  using Deferrer = std::function<void(std::chrono::microseconds delay, std::function<void()> f)>;
  void setDeferrer(Deferrer d) { defer_ = std::move(d); }
  static constexpr std::size_t kBatchBytes = 64 * 1024;
  static constexpr std::chrono::microseconds kLinger{1000};
  std::uint64_t written() const { return written_; }
  std::uint64_t lost() const { return lost_; }
  const std::string& path() const { return path_; }
  // Re-open (log rotation, reload).
  Result<void> reopen();
  // Called with each record and its JSON line (without the newline) after
  // it is written or lost: the console's live view. Set it before the first
  // write and clear it before the observer goes; it runs on the writer's
  // thread (the daemon's event loop).
  using Observer = std::function<void(const Record&, std::string_view json)>;
  void setObserver(Observer o) { observer_ = std::move(o); }

 private:
  AuditLog(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  // Writes lines (records whole records) with one write(2); mu_ held.
  void writeLocked(std::string_view lines, std::uint64_t records);
  std::string path_;
  int fd_ = -1;
  std::mutex mu_;
  std::atomic<std::uint64_t> written_{0};
  std::atomic<std::uint64_t> lost_{0};
  Observer observer_;
  Deferrer defer_;
  std::string pending_;  // gathered lines (under mu_)
  std::uint64_t pendingRecords_ = 0;
  bool flushQueued_ = false;
  std::chrono::steady_clock::time_point lastWrite_{};  // the last batch's write(2)
};

}  // namespace atlasgate::audit
