#include "audit/audit.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/json.hpp>
#include <ctime>
#include <filesystem>
#include <iterator>
#include <memory>

#include "common/log.h"
#include "common/text.h"

namespace atlasgate::audit {

namespace json = boost::json;

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
  // a fixed two-decimal form (Boost.JSON prints doubles in exponent form).
  // Agent-controlled fields (path, comm, agent and cgroup names) may hold
  // bytes that are no UTF-8: a record is always valid JSON in valid UTF-8.
  auto q = [](std::string_view v) { return json::serialize(json::string_view(text::utf8Valid(v))); };
  std::string out;
  out.reserve(512);
  fmt::format_to(std::back_inserter(out),
                 "{{\"ts\":{},\"agent\":{},\"pid\":{},\"comm\":{},\"cgroup\":{},\"method\":{},\"host\":{},"
                 "\"path\":{},\"rule\":{},\"decision\":{},\"status\":{},\"upstream_ms\":{:.2f},\"total_ms\":{:.2f},"
                 "\"bytes_in\":{},\"bytes_out\":{},\"credential\":{},\"dst\":{}",
                 q(ts), q(r.agent), r.pid, q(r.comm), q(r.cgroup), q(r.method), q(r.host), q(r.path), q(r.rule),
                 q(r.decision), r.status, r.upstreamMs, r.totalMs, r.bytesIn, r.bytesOut, q(r.credential), q(r.dst));
  if (!r.error.empty()) fmt::format_to(std::back_inserter(out), ",\"error\":{}", q(r.error));
  if (!r.captured.empty()) fmt::format_to(std::back_inserter(out), ",\"captured\":{}", q(r.captured));
  if (!r.protocol.empty()) {
    fmt::format_to(std::back_inserter(out), ",\"protocol\":{},\"command\":{},\"database\":{},\"collection\":{}",
                   q(r.protocol), q(r.command), q(r.database), q(r.collection));
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
  if (fd_ >= 0) ::close(fd_);
}

Result<void> AuditLog::reopen() {
  if (path_ == "-") return {};
  int fd = ::open(path_.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
  if (fd < 0) return sysError(errno, "open audit log {}", path_);
  std::lock_guard lock(mu_);
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
  return {};
}

void AuditLog::write(const Record& r) {
  std::string line = toJson(r);
  line.push_back('\n');
  std::lock_guard lock(mu_);
  int fd = path_ == "-" ? STDOUT_FILENO : fd_;
  struct stat st {};
  bool regular = ::fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
  // O_APPEND + one write(2): a record is never torn by another writer.
  ssize_t n = ::write(fd, line.data(), line.size());
  if (n == static_cast<ssize_t>(line.size())) {
    ++written_;
    return;
  }
  // A full disk: cut the fragment off again, so that the log stays one whole
  // JSON object per line and the next record does not glue onto it.
  if (n > 0 && regular && ::ftruncate(fd, st.st_size) != 0) {
    static const char nl = '\n';
    (void)!::write(fd, &nl, 1);
  }
  std::uint64_t lost = ++lost_;
  if (lost == 1 || (lost & (lost - 1)) == 0)  // 1, 2, 4, 8...: report without flooding
    log::warn("audit log {}: {} record(s) lost so far ({})", path_, lost, n < 0 ? std::strerror(errno) : "short write");
}

}  // namespace atlasgate::audit
