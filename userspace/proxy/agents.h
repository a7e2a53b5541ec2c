#pragma once
// Names agents after their cgroup. A cgroup made by the launcher is
// "<agents cgroup>/<name>.<launcher pid>", and its agent is <name>; any other
// attached cgroup is named by its path below the cgroup2 mount.

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace atlasgate::proxy {

struct AgentIdentity {
  std::string name;        // for rules and audit
  std::string cgroupPath;  // relative to the cgroup2 mount, "" when unknown
  // The labels of the agent's Kubernetes pod (null: not a discovered pod).
  std::shared_ptr<const std::map<std::string, std::string>> podLabels;
};

// Pure naming rule, for tests: `relPath` is relative to the cgroup2 mount.
std::string agentNameFor(const std::string& relPath, const std::string& agentsRel);

class AgentDirectory {
 public:
  AgentDirectory(std::string cgroupRoot, std::string agentsCgroup);

  // Where to look for cgroup ids (the attached cgroups).
  void setRoots(std::vector<std::string> absolutePaths);
  // A name given by discovery (Kubernetes: "namespace/pod") for a cgroup and
  // everything below it; replaces the path-derived name.
  void setName(const std::string& absolutePath, std::string name,
               std::shared_ptr<const std::map<std::string, std::string>> podLabels = nullptr);
  void forgetName(const std::string& absolutePath);
  AgentIdentity lookup(std::uint64_t cgroupId);

  const std::string& cgroupRoot() const { return root_; }

 private:
  std::string relative(const std::string& abs) const;
  std::string root_;
  std::string agentsRel_;
  std::vector<std::string> roots_;
  std::map<std::uint64_t, AgentIdentity> cache_;
  struct Given {
    std::string name;
    std::shared_ptr<const std::map<std::string, std::string>> labels;
  };
  std::map<std::string, Given> names_;  // relative cgroup path -> given name
};

}  // namespace atlasgate::proxy
