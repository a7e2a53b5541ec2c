#pragma once
// Who an agent is, from the cgroup of the socket's creator (the kernel's
// word, see bpf/sock_create.bpf.c).
//
// An agent is named by the attached root it sits under, never by the cgroup
// it happens to be in: anything below that root — a child cgroup the agent
// made itself in a delegated subtree — is the same agent with the same
// rules. The roots, in order of precedence:
//   * a discovered Kubernetes pod's cgroup: "namespace/pod"; a discovered
//     container's (discovery.containers): "container/<name>";
//   * a launcher cgroup "<agents cgroup>/<NAME>.<pid>": NAME;
//   * a cgroup attached with `atlasgate attach` or agents.attach: its path
//     below the cgroup2 mount (the longest attached path that contains it).
// A cgroup under no attached root is no agent: its flows are refused.
//
// A guard (discovery.containers.guard_cgroup) is attached, but is no agent's
// root: it is the stable parent under which an engine makes (and, on every
// restart, re-makes) its containers' cgroups. Anything under it that
// discovery has not named is `guarded`: redirected by the kernel from its
// first connection, held by the daemon until discovery names it, refused if
// that does not happen in time — never served unnamed, never direct.

#include <cstdint>
#include <map>
#include <set>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace atlasgate::proxy {

struct AgentIdentity {
  std::string name;        // for rules and audit
  std::string key;         // the agent's root, relative to the cgroup2 mount; "" = no agent (refuse)
  std::string cgroupPath;  // the creator's own cgroup, relative to the cgroup2 mount
  // The labels of the agent's Kubernetes pod (null: not a discovered pod).
  std::shared_ptr<const std::map<std::string, std::string>> podLabels;
  // The labels of the agent's container (null: not a discovered container).
  std::shared_ptr<const std::map<std::string, std::string>> containerLabels;
  bool guarded = false;  // no agent (yet), under a guard: wait for discovery to name it
  bool known() const { return !key.empty(); }
};

// Whose labels a discovered agent carries: rules select them with
// pod_labels or container_labels.
enum class LabelKind { Pod, Container };

struct GivenName {
  std::string name;
  std::shared_ptr<const std::map<std::string, std::string>> labels;
  LabelKind kind = LabelKind::Pod;
};

// The pure naming rule, for tests. Every path is relative to the cgroup2
// mount, without leading or trailing slashes.
AgentIdentity identifyAgent(const std::string& relPath, const std::string& agentsRel,
                            const std::vector<std::string>& attachedRels, const std::map<std::string, GivenName>& given,
                            const std::vector<std::string>& guardRels = {});

class AgentDirectory {
 public:
  AgentDirectory(std::string cgroupRoot, std::string agentsCgroup);
  ~AgentDirectory();
  AgentDirectory(const AgentDirectory&) = delete;
  AgentDirectory& operator=(const AgentDirectory&) = delete;

  // The attached cgroups (absolute paths).
  void setRoots(std::vector<std::string> absolutePaths);
  // The attached guards (absolute paths; also among the roots).
  void setGuards(std::vector<std::string> absolutePaths);
  // A name given by discovery (Kubernetes: "namespace/pod") for a cgroup and
  // everything below it; replaces the path-derived name.
  void setName(const std::string& absolutePath, std::string name,
               std::shared_ptr<const std::map<std::string, std::string>> podLabels = nullptr,
               LabelKind kind = LabelKind::Pod);
  void forgetName(const std::string& absolutePath);
  // The agent a cgroup id belongs to (cached; cgroup ids are never reused).
  AgentIdentity lookup(std::uint64_t cgroupId);

  const std::string& cgroupRoot() const { return root_; }

 private:
  std::string relative(const std::string& abs) const;
  // The cgroup's path from its id (bpf::cgroupPathById: no directory walk).
  std::string pathOf(std::uint64_t cgroupId);
  std::string root_;
  int rootFd_ = -1;
  std::string agentsRel_;
  std::vector<std::string> rootsRel_;
  std::vector<std::string> guardsRel_;
  // Workers look agents up from their own threads (Daemon: workers).
  std::mutex mu_;
  std::map<std::uint64_t, AgentIdentity> cache_;
  std::set<std::uint64_t> gone_;            // ids whose cgroup was removed
  std::map<std::string, GivenName> names_;  // relative cgroup path -> given name
};

}  // namespace atlasgate::proxy
