#pragma once
// Small helpers shared by the fuzz targets.

#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "common/log.h"

namespace atlasgate::fuzz {

// An oracle failed: print why and abort, so libFuzzer keeps the input.
[[noreturn]] inline void fail(const char* what, std::string_view detail = {}) {
  std::fprintf(stderr, "\n=== atlasgate fuzz oracle failed: %s\n", what);
  if (!detail.empty()) std::fprintf(stderr, "=== detail: %.*s\n", static_cast<int>(detail.size()), detail.data());
  std::abort();
}

#define AG_FUZZ_CHECK(cond, detail)                        \
  do {                                                     \
    if (!(cond)) ::atlasgate::fuzz::fail(#cond, (detail)); \
  } while (0)

// The daemon's own log lines are noise here (and slow): errors only.
inline void quietLogs() { log::setLevel(log::Level::Error); }

}  // namespace atlasgate::fuzz
