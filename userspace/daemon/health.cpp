#include "daemon/health.h"

#include <fmt/format.h>

#include <set>

#include "common/text.h"

namespace atlasgate::daemon {

std::string quotedForHealth(std::string_view s) {
  std::string out = "\"";
  // forTerminal doubles every backslash, so the \x marks added here cannot
  // be forged by the text itself.
  for (char c : text::forTerminal(s)) {
    if (c == '"')
      out += "\\x22";
    else if (c == ';')
      out += "\\x3b";
    else
      out += c;
  }
  out += '"';
  return out;
}

std::optional<std::string> staleAttachment(const std::string& path, std::uint64_t recordedId,
                                           std::optional<std::uint64_t> currentId) {
  if (!currentId) {
    if (recordedId == 0) return fmt::format("stale attachment: cgroup {} was removed", quotedForHealth(path));
    return fmt::format("stale attachment: cgroup {} (id {}) was removed", quotedForHealth(path), recordedId);
  }
  if (recordedId == 0) return std::nullopt;  // attached by path: whatever cgroup is there now is covered
  if (*currentId != recordedId)
    return fmt::format("stale attachment: cgroup {} was re-created (now id {}, attached id {}): its processes are "
                       "not redirected",
                       quotedForHealth(path), *currentId, recordedId);
  return std::nullopt;
}

Health assessHealth(const HealthFacts& facts) {
  std::vector<std::string> all;
  auto add = [&all](std::string reason) {
    for (const auto& r : all)
      if (r == reason) return;
    all.push_back(std::move(reason));
  };
  std::set<std::string> missingConfigured;
  for (const auto& c : facts.configured)
    if (!c.exists) {
      missingConfigured.insert(c.path);
      add(fmt::format("configured cgroup missing: {} (agents.attach)", quotedForHealth(c.path)));
    }
  std::set<std::uint64_t> attachedIds;
  for (const auto& a : facts.attachments) attachedIds.insert(a.cgroupId);
  for (const auto& a : facts.attachments) {
    if (a.path.empty()) {
      add(fmt::format("attachment of cgroup id {}: its path cannot be found (agents in it are not named and their "
                      "network namespaces get no listener)",
                      a.cgroupId));
      continue;
    }
    if (missingConfigured.contains(a.path)) continue;  // said above
    // The path's cgroup was re-created and attached again: the old link is
    // a harmless leftover of the removed cgroup.
    if (a.currentId && *a.currentId != a.cgroupId && attachedIds.contains(*a.currentId)) continue;
    if (auto why = staleAttachment(a.path, a.cgroupId, a.currentId)) add(std::move(*why));
  }
  for (const auto& n : facts.namespacesWithoutListener)
    add(fmt::format("agent namespace without listener: netns {} (pid {}): {}", n.inode, n.pid,
                    text::forTerminal(n.error.empty() ? std::string_view("listener closed") : n.error)));
  Health h;
  if (all.size() > kMaxHealthProblems) {
    std::size_t more = all.size() - kMaxHealthProblems;
    all.resize(kMaxHealthProblems);
    all.push_back(fmt::format("and {} more problem(s)", more));
  }
  h.problems = std::move(all);
  return h;
}

}  // namespace atlasgate::daemon
