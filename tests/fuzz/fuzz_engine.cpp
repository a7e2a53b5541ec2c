// fuzz_engine: the container engine's bytes (discovery.containers). The
// engine's API socket is trusted to exist, not to be sane: a compromised or
// confused engine, or a container's own labels and name, reach these parsers.
// Each input is fed to parseContainerInspect, parseContainerList,
// parseEngineEvent (line by line) and, split at its first NUL into
// (/proc/<pid>/cgroup text, id), to containerCgroupFromProc.
//
// Oracles, beyond ASan/UBSan:
//  * an accepted inspect has a 64-hex id, a name that containerName accepts
//    unchanged, and labels within the limits;
//  * every listed id is 64 lower-case hex digits, no more than maxListed;
//  * an accepted cgroup path is relative, holds the id, and has no "..", "."
//    component and no control character.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "discovery/containers.h"
#include "fuzz_common.h"

namespace d = atlasgate::discovery;

namespace {

bool isHexId(std::string_view id) {
  if (id.size() != 64) return false;
  for (char c : id)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const bool quiet = (atlasgate::fuzz::quietLogs(), true);
  (void)quiet;
  std::string_view in(reinterpret_cast<const char*>(data), size);
  d::EngineLimits limits;

  if (auto c = d::parseContainerInspect(in, limits)) {
    AG_FUZZ_CHECK(isHexId(c->id), c->id);
    auto name = d::containerName(c->name, limits);
    AG_FUZZ_CHECK(name && *name == c->name, c->name);
    AG_FUZZ_CHECK(c->labels.size() <= limits.maxLabels, c->name);
  }
  if (auto listed = d::parseContainerList(in, limits)) {
    AG_FUZZ_CHECK(listed->size() <= limits.maxListed, "too many ids");
    for (const auto& l : *listed) AG_FUZZ_CHECK(isHexId(l.id), l.id);
  }
  std::string_view rest = in;
  while (!rest.empty()) {
    auto nl = rest.find('\n');
    std::string_view line = rest.substr(0, nl);
    if (auto e = d::parseEngineEvent(line)) AG_FUZZ_CHECK(e->id.empty() || isHexId(e->id), e->id);
    if (nl == std::string_view::npos) break;
    rest.remove_prefix(nl + 1);
  }
  if (auto nul = in.find('\0'); nul != std::string_view::npos) {
    std::string_view proc = in.substr(0, nul), id = in.substr(nul + 1);
    if (auto p = d::containerCgroupFromProc(proc, id)) {
      AG_FUZZ_CHECK(!p->empty() && p->front() != '/', *p);
      AG_FUZZ_CHECK(p->find(id) != std::string::npos, *p);
      for (char c : *p) AG_FUZZ_CHECK(static_cast<unsigned char>(c) >= 0x20 && c != 0x7f, *p);
      std::string_view s = *p;
      while (!s.empty()) {
        auto slash = s.find('/');
        std::string_view comp = s.substr(0, slash);
        AG_FUZZ_CHECK(comp != ".." && comp != "." && !comp.empty(), *p);
        if (slash == std::string_view::npos) break;
        s.remove_prefix(slash + 1);
      }
    }
  }
  return 0;
}
