#include "proxy/agents.h"

#include <sys/stat.h>

#include <filesystem>

namespace atlasgate::proxy {
namespace fs = std::filesystem;

std::string agentNameFor(const std::string& relPath, const std::string& agentsRel) {
  std::string rel = relPath;
  if (!agentsRel.empty() && rel.size() > agentsRel.size() && rel.compare(0, agentsRel.size(), agentsRel) == 0 &&
      rel[agentsRel.size()] == '/') {
    std::string leaf = rel.substr(agentsRel.size() + 1);
    if (auto slash = leaf.find('/'); slash != std::string::npos) leaf.resize(slash);
    // "<name>.<pid>" from the launcher: the pid is not part of the name.
    if (auto dot = leaf.rfind('.'); dot != std::string::npos && dot + 1 < leaf.size() &&
        leaf.find_first_not_of("0123456789", dot + 1) == std::string::npos && dot > 0)
      leaf.resize(dot);
    return leaf;
  }
  return rel.empty() ? std::string("/") : rel;
}

AgentDirectory::AgentDirectory(std::string cgroupRoot, std::string agentsCgroup)
    : root_(std::move(cgroupRoot)) {
  agentsRel_ = relative(agentsCgroup);
}

std::string AgentDirectory::relative(const std::string& abs) const {
  if (abs.compare(0, root_.size(), root_) == 0) {
    std::string r = abs.substr(root_.size());
    while (!r.empty() && r.front() == '/') r.erase(r.begin());
    while (!r.empty() && r.back() == '/') r.pop_back();
    return r;
  }
  return abs;
}

void AgentDirectory::setName(const std::string& absolutePath, std::string name,
                             std::shared_ptr<const std::map<std::string, std::string>> podLabels) {
  Given& g = names_[relative(absolutePath)];
  bool same = g.name == name && ((!g.labels && !podLabels) || (g.labels && podLabels && *g.labels == *podLabels));
  if (same) return;  // called for every known pod each second: keep the cache
  g = Given{std::move(name), std::move(podLabels)};
  cache_.clear();
}

void AgentDirectory::forgetName(const std::string& absolutePath) {
  names_.erase(relative(absolutePath));
  cache_.clear();
}

void AgentDirectory::setRoots(std::vector<std::string> absolutePaths) {
  roots_ = std::move(absolutePaths);
  cache_.clear();
}

AgentIdentity AgentDirectory::lookup(std::uint64_t cgroupId) {
  if (auto it = cache_.find(cgroupId); it != cache_.end()) return it->second;
  AgentIdentity id;
  auto found = [&](const fs::path& p) {
    id.cgroupPath = relative(p.string());
    id.name = agentNameFor(id.cgroupPath, agentsRel_);
    // A discovered pod's containers sit in child cgroups of the pod's.
    for (const auto& [rel, given] : names_)
      if (id.cgroupPath == rel || (id.cgroupPath.size() > rel.size() && id.cgroupPath.compare(0, rel.size(), rel) == 0 &&
                                   id.cgroupPath[rel.size()] == '/')) {
        id.name = given.name;
        id.podLabels = given.labels;
      }
  };
  std::error_code ec;
  for (const std::string& r : roots_) {
    struct stat st {};
    if (::stat(r.c_str(), &st) == 0 && st.st_ino == cgroupId) {
      found(r);
      break;
    }
    for (auto it = fs::recursive_directory_iterator(r, fs::directory_options::skip_permission_denied, ec);
         it != fs::recursive_directory_iterator(); it.increment(ec)) {
      if (ec) break;
      if (!it->is_directory(ec)) continue;
      if (::stat(it->path().c_str(), &st) == 0 && st.st_ino == cgroupId) {
        found(it->path());
        break;
      }
    }
    if (!id.name.empty()) break;
  }
  if (id.name.empty()) {
    id.name = "cgroup:" + std::to_string(cgroupId);  // gone already, or outside every root
    return id;                                        // not cached: it may appear later
  }
  if (cache_.size() > 4096) cache_.clear();
  cache_[cgroupId] = id;
  return id;
}

}  // namespace atlasgate::proxy
