#include "common/log.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <iterator>
#include <string>

namespace atlasgate::log {
namespace {

std::atomic<int> gLevel{static_cast<int>(Level::Info)};

const char* levelName(Level level) {
  switch (level) {
    case Level::Debug: return "debug";
    case Level::Info: return "info";
    case Level::Warn: return "warn";
    case Level::Error: return "error";
  }
  return "?";
}

}  // namespace

void setLevel(Level level) { gLevel.store(static_cast<int>(level)); }

bool parseLevel(std::string_view name, Level& out) {
  if (name == "debug")
    out = Level::Debug;
  else if (name == "info")
    out = Level::Info;
  else if (name == "warn")
    out = Level::Warn;
  else if (name == "error")
    out = Level::Error;
  else
    return false;
  return true;
}

bool enabled(Level level) { return static_cast<int>(level) >= gLevel.load(std::memory_order_relaxed); }

void write(Level level, std::string_view message) {
  auto now = std::chrono::system_clock::now();
  std::time_t t = std::chrono::system_clock::to_time_t(now);
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
  std::tm tm{};
  gmtime_r(&t, &tm);
  char ts[32];
  std::strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
  std::string line = fmt::format("{}.{:03}Z atlasgate {}: ", ts, ms, levelName(level));
  // Messages quote agent-controlled text (process names, paths, cgroup
  // names): a control character never reaches the log as itself, so no
  // agent can forge a line or drive the reader's terminal.
  line.reserve(line.size() + message.size() + 1);
  for (char c : message) {
    auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f)
      fmt::format_to(std::back_inserter(line), "\\x{:02x}", u);
    else
      line.push_back(c);
  }
  line.push_back('\n');
  // One write(2) per line so concurrent lines never interleave.
  ssize_t rc = ::write(STDERR_FILENO, line.data(), line.size());
  (void)rc;
}

}  // namespace atlasgate::log
