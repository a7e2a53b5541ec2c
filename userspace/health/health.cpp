#include "health/health.h"

#include <fmt/format.h>

#include <set>

#include "common/text.h"

namespace atlasgate::health {

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

std::optional<std::string> staleAttachment(const std::string& path, bool exists) {
  if (exists) return std::nullopt;
  return fmt::format("stale attachment: cgroup {} was removed", quotedForHealth(path));
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
  for (const auto& a : facts.attachments) {
    if (missingConfigured.contains(a.path)) continue;  // said above
    if (auto why = staleAttachment(a.path, a.exists)) add(std::move(*why));
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

}  // namespace atlasgate::health
