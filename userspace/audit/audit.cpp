#include "audit/audit.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/json.hpp>
#include <ctime>
#include <filesystem>
#include <memory>

#include "common/log.h"

namespace atlasgate::audit {

namespace json = boost::json;

std::string toJson(const Record& r) {
  auto secs = std::chrono::time_point_cast<std::chrono::milliseconds>(r.ts);
  std::time_t t = std::chrono::system_clock::to_time_t(r.ts);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char ts[40];
  std::size_t n = std::strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
  std::snprintf(ts + n, sizeof ts - n, ".%03lldZ",
                static_cast<long long>(secs.time_since_epoch().count() % 1000));
  auto round2 = [](double v) { return static_cast<double>(static_cast<long long>(v * 100 + 0.5)) / 100; };
  json::object o;
  o["ts"] = ts;
  o["agent"] = r.agent;
  o["pid"] = r.pid;
  o["comm"] = r.comm;
  o["cgroup"] = r.cgroup;
  o["method"] = r.method;
  o["host"] = r.host;
  o["path"] = r.path;
  o["rule"] = r.rule;
  o["decision"] = r.decision;
  o["status"] = r.status;
  o["upstream_ms"] = round2(r.upstreamMs);
  o["total_ms"] = round2(r.totalMs);
  o["bytes_in"] = r.bytesIn;
  o["bytes_out"] = r.bytesOut;
  o["credential"] = r.credential;
  o["dst"] = r.dst;
  if (!r.error.empty()) o["error"] = r.error;
  return json::serialize(o);
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
  // O_APPEND + one write(2): a record is never torn by another writer.
  ssize_t n = ::write(fd, line.data(), line.size());
  if (n == static_cast<ssize_t>(line.size())) {
    ++written_;
    return;
  }
  std::uint64_t lost = ++lost_;
  if (lost == 1 || (lost & (lost - 1)) == 0)  // 1, 2, 4, 8...: report without flooding
    log::warn("audit log {}: {} record(s) lost so far ({})", path_, lost,
              n < 0 ? std::strerror(errno) : "short write");
}

}  // namespace atlasgate::audit
