#pragma once
// What GET /healthz, `atlasgate status` and the atlasgate_healthy gauge say:
// "ok", or "degraded" with one reason per problem. A pure function of facts
// the daemon gathers (attachments, agents.attach, agent namespaces without a
// listener), so that it is tested without a kernel.
//
// Reasons name cgroup paths and namespace inodes (operator data) and never a
// secret. Paths are quoted and escaped for a terminal (text::forTerminal, and
// `"` and `;` as \x22 and \x3b): a cgroup name cannot forge another reason,
// a line, or an escape sequence.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/text.h"

namespace atlasgate::health {

struct HealthFacts {
  // An attached cgroup path: membership is by path, so whatever cgroup is
  // there now is covered, and all there is to know is whether one is.
  struct Attachment {
    std::string path;  // absolute
    bool exists = false;
  };
  std::vector<Attachment> attachments;
  struct Configured {
    std::string path;  // agents.attach, absolute
    bool exists = false;
  };
  std::vector<Configured> configured;
  struct Namespace {
    std::uint64_t inode = 0;
    int pid = 0;        // a process of an agent in it
    std::string error;  // why its listener could not be opened
  };
  std::vector<Namespace> namespacesWithoutListener;
};

struct Health {
  std::vector<std::string> problems;  // empty: healthy
  bool ok() const { return problems.empty(); }
  std::string_view state() const { return ok() ? "ok" : "degraded"; }
};

// The staleness check of one attached path: the reason when no cgroup is
// there (nothing to redirect, and the operator meant something to be), or
// nullopt when one is (attached by path, it is covered whatever its id).
std::optional<std::string> staleAttachment(const std::string& path, bool exists);

// Every problem, configured cgroups first, then attachments, then namespaces;
// at most kMaxHealthProblems reasons and then how many more there are.
constexpr std::size_t kMaxHealthProblems = 16;
Health assessHealth(const HealthFacts& facts);

// A path (or other operator text) inside a reason: quoted, escaped.
std::string quotedForHealth(std::string_view s);

// A reason as it goes out (/healthz, `atlasgate status`): as it is when it
// holds nothing a terminal acts on (it was escaped when made), otherwise
// escaped as a whole (text::forTerminal), so that no line can be forged.
inline std::string reasonForOutput(std::string_view r) {
  for (std::size_t k = 0; k < r.size();) {
    char32_t cp = 0;
    std::size_t n = text::utf8SequenceAt(r, k, &cp);
    if (n == 0 || text::isHazardous(cp)) return text::forTerminal(r);
    k += n;
  }
  return std::string(r);
}

}  // namespace atlasgate::health
