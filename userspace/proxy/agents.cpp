#include "proxy/agents.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "bpf/loader.h"

namespace atlasgate::proxy {

namespace {

// "<name>.<pid>" from the launcher: the pid is not part of the name.
std::string launcherName(std::string leaf) {
  if (auto dot = leaf.rfind('.'); dot != std::string::npos && dot > 0 && dot + 1 < leaf.size() &&
                                  leaf.find_first_not_of("0123456789", dot + 1) == std::string::npos)
    leaf.resize(dot);
  return leaf;
}

}  // namespace

AgentIdentity identifyAgent(const std::string& rel, const std::string& agentsRel,
                            const std::vector<std::string>& attachedRels, const std::map<std::string, GivenName>& given,
                            const std::vector<std::string>& guardRels) {
  AgentIdentity id;
  id.cgroupPath = rel;
  // A discovered pod: its containers sit in child cgroups of the pod's.
  const std::string* best = nullptr;
  for (const auto& [r, g] : given)
    if (bpf::pathWithin(rel, r) && (!best || r.size() > best->size())) best = &r;
  if (best) {
    const GivenName& g = given.at(*best);
    id.key = *best;
    id.name = g.name;
    (g.kind == LabelKind::Container ? id.containerLabels : id.podLabels) = g.labels;
    return id;
  }
  bool agentsAttached = false;
  for (const auto& r : attachedRels) agentsAttached = agentsAttached || r == agentsRel;
  if (agentsAttached && !agentsRel.empty() && rel.size() > agentsRel.size() && bpf::pathWithin(rel, agentsRel)) {
    std::string leaf = rel.substr(agentsRel.size() + 1);
    if (auto slash = leaf.find('/'); slash != std::string::npos) leaf.resize(slash);
    id.key = agentsRel + "/" + leaf;
    id.name = launcherName(leaf);
    return id;
  }
  best = nullptr;
  auto isGuard = [&](const std::string& r) {
    return std::find(guardRels.begin(), guardRels.end(), r) != guardRels.end();
  };
  for (const auto& r : attachedRels)
    if (bpf::pathWithin(rel, r) && !isGuard(r) && (!best || r.size() > best->size())) best = &r;
  // An attached cgroup below a guard still names its subtree; the guard
  // itself names nothing.
  for (const auto& g : guardRels)
    if (bpf::pathWithin(rel, g) && (!best || g.size() > best->size())) {
      id.guarded = true;
      return id;
    }
  if (best) {
    id.key = best->empty() ? std::string("/") : *best;
    id.name = id.key;
  }
  return id;
}

AgentDirectory::AgentDirectory(std::string cgroupRoot, std::string agentsCgroup) : root_(std::move(cgroupRoot)) {
  agentsRel_ = relative(agentsCgroup);
  rootFd_ = ::open(root_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
}

AgentDirectory::~AgentDirectory() {
  if (rootFd_ >= 0) ::close(rootFd_);
}

std::string AgentDirectory::relative(const std::string& abs) const {
  std::string r = abs;
  if (abs.compare(0, root_.size(), root_) == 0 && (abs.size() == root_.size() || abs[root_.size()] == '/'))
    r = abs.substr(root_.size());
  while (!r.empty() && r.front() == '/') r.erase(r.begin());
  while (!r.empty() && r.back() == '/') r.pop_back();
  return r;
}

void AgentDirectory::setName(const std::string& absolutePath, std::string name,
                             std::shared_ptr<const std::map<std::string, std::string>> podLabels, LabelKind kind) {
  std::lock_guard lock(mu_);
  GivenName& g = names_[relative(absolutePath)];
  bool same = g.name == name && g.kind == kind &&
              ((!g.labels && !podLabels) || (g.labels && podLabels && *g.labels == *podLabels));
  if (same) return;  // called for every known pod each second: keep the cache
  g = GivenName{std::move(name), std::move(podLabels), kind};
  cache_.clear();
}

void AgentDirectory::forgetName(const std::string& absolutePath) {
  std::lock_guard lock(mu_);
  names_.erase(relative(absolutePath));
  cache_.clear();
}

void AgentDirectory::setGuards(std::vector<std::string> absolutePaths) {
  std::lock_guard lock(mu_);
  guardsRel_.clear();
  for (const auto& p : absolutePaths) guardsRel_.push_back(relative(p));
  cache_.clear();
}

void AgentDirectory::setRoots(std::vector<std::string> absolutePaths) {
  std::lock_guard lock(mu_);
  rootsRel_.clear();
  for (const auto& p : absolutePaths) rootsRel_.push_back(relative(p));
  cache_.clear();
}

std::string AgentDirectory::pathOf(std::uint64_t cgroupId) {
  // By file handle only, never by walking the tree: an agent can make the
  // daemon look up cgroups that are gone (sockets outliving their cgroup),
  // and a walk per connection would stall the event loop.
  bool gone = false;
  std::string p = bpf::cgroupPathById(rootFd_, cgroupId, &gone);
  if (gone) {
    // Removed: cgroup ids are never reused, so it stays gone.
    if (gone_.size() >= 65536) gone_.clear();
    gone_.insert(cgroupId);
  }
  return p;
}

AgentIdentity AgentDirectory::lookup(std::uint64_t cgroupId) {
  std::lock_guard lock(mu_);
  if (auto it = cache_.find(cgroupId); it != cache_.end()) return it->second;
  AgentIdentity id;
  if (gone_.contains(cgroupId)) {
    id.name = "cgroup:" + std::to_string(cgroupId);
    return id;
  }
  std::string abs = pathOf(cgroupId);
  if (!abs.empty()) id = identifyAgent(relative(abs), agentsRel_, rootsRel_, names_, guardsRel_);
  if (!id.known()) {
    // Gone, or under no attached root: refused, and the latter not cached
    // (a root attached later may claim it).
    id.name = "cgroup:" + std::to_string(cgroupId);
    id.key.clear();
    return id;
  }
  if (cache_.size() > 4096) cache_.clear();
  cache_[cgroupId] = id;
  return id;
}

}  // namespace atlasgate::proxy
