#include "audit/audit.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ctime>
#include <filesystem>
#include <iterator>
#include <memory>

#include "common/log.h"
#include "common/text.h"

namespace atlasgate::audit {

std::string toJson(const Record& r) {
  // Whole seconds rounded down (also before 1970), then the milliseconds.
  auto whole = std::chrono::floor<std::chrono::seconds>(r.ts);
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(r.ts - whole).count();
  std::time_t t = std::chrono::system_clock::to_time_t(whole);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char ts[40];
  std::size_t n = std::strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
  std::snprintf(ts + n, sizeof ts - n, ".%03lldZ", static_cast<long long>(ms));
  // Written by hand rather than through json::object so that durations keep
  // a fixed two-decimal form (Boost.JSON prints doubles in exponent form),
  // and straight into one buffer: this runs once per request. Agent-controlled
  // fields (path, comm, agent and cgroup names) may hold bytes that are no
  // UTF-8: a record is always valid JSON in valid UTF-8 (appendJsonString).
  std::string out;
  out.reserve(384 + r.path.size() + r.cgroup.size());
  auto field = [&out](std::string_view key, std::string_view v) {
    out += key;
    text::appendJsonString(out, v);
  };
  field("{\"ts\":", ts);
  field(",\"agent\":", r.agent);
  fmt::format_to(std::back_inserter(out), ",\"pid\":{}", r.pid);
  field(",\"comm\":", r.comm);
  field(",\"cgroup\":", r.cgroup);
  field(",\"method\":", r.method);
  field(",\"host\":", r.host);
  field(",\"path\":", r.path);
  field(",\"rule\":", r.rule);
  field(",\"decision\":", r.decision);
  fmt::format_to(std::back_inserter(out),
                 ",\"status\":{},\"upstream_ms\":{:.2f},\"total_ms\":{:.2f},\"bytes_in\":{},\"bytes_out\":{}", r.status,
                 r.upstreamMs, r.totalMs, r.bytesIn, r.bytesOut);
  field(",\"credential\":", r.credential);
  field(",\"dst\":", r.dst);
  if (!r.error.empty()) field(",\"error\":", r.error);
  if (!r.captured.empty()) field(",\"captured\":", r.captured);
  if (!r.protocol.empty()) {
    field(",\"protocol\":", r.protocol);
    field(",\"command\":", r.command);
    field(",\"database\":", r.database);
    field(",\"collection\":", r.collection);
  }
  out.push_back('}');
  return out;
}

Result<std::unique_ptr<AuditLog>> AuditLog::open(const std::string& path) {
  if (path == "-") return std::unique_ptr<AuditLog>(new AuditLog(path, -1));
  std::error_code ec;
  auto parent = std::filesystem::path(path).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent, ec);
  int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
  if (fd < 0) return sysError(errno, "open audit log {}", path);
  return std::unique_ptr<AuditLog>(new AuditLog(path, fd));
}

AuditLog::~AuditLog() {
  flush();
  if (fd_ >= 0) ::close(fd_);
}

Result<void> AuditLog::reopen() {
  if (path_ == "-") return {};
  int fd = ::open(path_.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
  if (fd < 0) return sysError(errno, "open audit log {}", path_);
  flush();  // what was gathered goes to the file it was gathered for
  std::lock_guard lock(mu_);
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
  return {};
}

void AuditLog::write(const Record& r) {
  std::string line = toJson(r);
  if (observer_) observer_(r, line);
  line.push_back('\n');
  std::lock_guard lock(mu_);
  if (!defer_) {
    writeLocked(line, 1);
    return;
  }
  pending_ += line;
  ++pendingRecords_;
  if (pending_.size() >= kBatchBytes) {
    writeLocked(pending_, pendingRecords_);
    pending_.clear();
    pendingRecords_ = 0;
  } else if (!flushQueued_) {
    flushQueued_ = true;
    defer_([this] { flush(); });
  }
}

void AuditLog::flush() {
  std::lock_guard lock(mu_);
  flushQueued_ = false;
  if (pending_.empty()) return;
  writeLocked(pending_, pendingRecords_);
  pending_.clear();
  pendingRecords_ = 0;
}

void AuditLog::writeLocked(std::string_view line, std::uint64_t records) {
  int fd = path_ == "-" ? STDOUT_FILENO : fd_;
  struct stat st {};
  bool regular = ::fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
  // O_APPEND + one write(2): a record is never torn by another writer.
  ssize_t n = ::write(fd, line.data(), line.size());
  if (n == static_cast<ssize_t>(line.size())) {
    written_ += records;
    return;
  }
  // A full disk: cut the fragment off again, so that the log stays one whole
  // JSON object per line and the next record does not glue onto it.
  if (n > 0 && regular && ::ftruncate(fd, st.st_size) != 0) {
    static const char nl = '\n';
    (void)!::write(fd, &nl, 1);
  }
  std::uint64_t lost = lost_ += records;
  if (lost == 1 || (lost & (lost - 1)) == 0)  // 1, 2, 4, 8...: report without flooding
    log::warn("audit log {}: {} record(s) lost so far ({})", path_, lost, n < 0 ? std::strerror(errno) : "short write");
}

}  // namespace atlasgate::audit
