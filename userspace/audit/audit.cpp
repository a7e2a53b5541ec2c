#include "audit/audit.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <charconv>
#include <ctime>
#include <type_traits>
#include <filesystem>
#include <iterator>
#include <memory>

#include "common/log.h"
#include "common/text.h"

namespace atlasgate::audit {

namespace {

// "2026-12-01T08:38:25": formatted once per second per thread (a record is
// written on every request).
std::string_view secondsText(std::chrono::sys_seconds whole) {
  thread_local std::chrono::sys_seconds cached{std::chrono::seconds(-1)};
  thread_local char text[32];
  thread_local std::size_t size = 0;
  if (whole != cached || size == 0) {
    std::time_t t = std::chrono::system_clock::to_time_t(whole);
    std::tm tm{};
    gmtime_r(&t, &tm);
    size = std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%S", &tm);
    cached = whole;
  }
  return {text, size};
}

template <class T>
void appendNumber(std::string& out, T v) {
  char buf[400];  // the longest double in fixed notation is 309 digits and its decimals
  std::to_chars_result r;
  if constexpr (std::is_floating_point_v<T>)
    r = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::fixed, 2);
  else
    r = std::to_chars(buf, buf + sizeof buf, v);
  if (r.ec == std::errc())
    out.append(buf, r.ptr);
  else
    out.push_back('0');  // (not reached: the buffer fits any value) still valid JSON
}

}  // namespace

void appendJson(std::string& out, const Record& r) {
  // Whole seconds rounded down (also before 1970), then the milliseconds.
  auto whole = std::chrono::floor<std::chrono::seconds>(r.ts);
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(r.ts - whole).count();
  // Written by hand rather than through json::object so that durations keep
  // a fixed two-decimal form (Boost.JSON prints doubles in exponent form),
  // and straight into one buffer: this runs once per request. Agent-controlled
  // fields (path, comm, agent and cgroup names) may hold bytes that are no
  // UTF-8: a record is always valid JSON in valid UTF-8 (appendJsonString).
  out.reserve(out.size() + 384 + r.path.size() + r.cgroup.size());
  auto field = [&out](std::string_view key, std::string_view v) {
    out += key;
    text::appendJsonString(out, v);
  };
  auto number = [&out](std::string_view key, auto v) {
    out += key;
    appendNumber(out, v);
  };
  out += "{\"ts\":\"";
  out += secondsText(whole);
  const char millis[] = {'.',
                         static_cast<char>('0' + ms / 100),
                         static_cast<char>('0' + ms / 10 % 10),
                         static_cast<char>('0' + ms % 10),
                         'Z',
                         '"'};
  out.append(millis, sizeof millis);
  field(",\"agent\":", r.agent);
  number(",\"pid\":", r.pid);
  field(",\"comm\":", r.comm);
  field(",\"cgroup\":", r.cgroup);
  field(",\"method\":", r.method);
  field(",\"host\":", r.host);
  field(",\"path\":", r.path);
  field(",\"rule\":", r.rule);
  field(",\"decision\":", r.decision);
  number(",\"status\":", r.status);
  number(",\"upstream_ms\":", r.upstreamMs);
  number(",\"total_ms\":", r.totalMs);
  number(",\"bytes_in\":", r.bytesIn);
  number(",\"bytes_out\":", r.bytesOut);
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
}

std::string toJson(const Record& r) {
  std::string out;
  appendJson(out, r);
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
  // Formatted into this thread's own buffer, which keeps its capacity.
  thread_local std::string line;
  line.clear();
  appendJson(line, r);
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
    const auto quiet = std::chrono::steady_clock::now() - lastWrite_;
    const auto delay = quiet >= kLinger ? std::chrono::microseconds(0)
                                        : kLinger - std::chrono::duration_cast<std::chrono::microseconds>(quiet);
    defer_(delay, [this] { flush(); });
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
  lastWrite_ = std::chrono::steady_clock::now();
  // O_APPEND + one write(2): a record is never torn by another writer.
  ssize_t n = ::write(fd, line.data(), line.size());
  if (n == static_cast<ssize_t>(line.size())) {
    written_ += records;
    return;
  }
  // A full disk: cut the fragment off again, so that the log stays one whole
  // JSON object per line and the next record does not glue onto it.
  // Only on the file this log opened (O_APPEND, so its fragment is at the
  // end): standard output may be shared with other writers, and has no
  // O_APPEND.
  struct stat st {};
  if (n > 0 && fd == fd_ && ::fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size >= n &&
      ::ftruncate(fd, st.st_size - n) != 0) {
    static const char nl = '\n';
    (void)!::write(fd, &nl, 1);
  }
  std::uint64_t lost = lost_ += records;
  if (lost == 1 || (lost & (lost - 1)) == 0)  // 1, 2, 4, 8...: report without flooding
    log::warn("audit log {}: {} record(s) lost so far ({})", path_, lost, n < 0 ? std::strerror(errno) : "short write");
}

}  // namespace atlasgate::audit
