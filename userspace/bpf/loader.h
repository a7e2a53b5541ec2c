#pragma once
// Loads atlasgate's BPF object, pins it under /sys/fs/bpf/atlasgate and
// attaches it to cgroups with bpf_links.
//
// Pinning layout (AG_PIN_ROOT):
//   maps/<map name>            shared by every daemon generation
//   progs/<program name>       the programs of the running generation
//   links/<cgroup id>-<prog>   one link per attached cgroup and hook
//
// A restarted daemon re-opens the pinned maps (libbpf reuses them by pin
// path) and moves every pinned link to its freshly loaded programs with
// bpf_link__update_program(): the redirect never lapses, and while no daemon
// runs, redirected connections are refused (fail closed).

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "bpf/abi.h"
#include "common/result.h"

struct ag_bpf;  // the libbpf skeleton
struct bpf_link;

namespace atlasgate::bpf {

// The cgroup v2 mount point, from /proc/self/mountinfo.
Result<std::string> findCgroup2Mount();
// Mounts bpffs on /sys/fs/bpf unless one is there already.
Result<void> ensureBpffs();
// The cgroup id (inode number of its directory) of a cgroup path.
Result<std::uint64_t> cgroupId(const std::string& path);
// The path of a cgroup from its id, by a kernfs file handle opened at the
// cgroup2 mount (`mountFd`); "" when it is gone or cannot be opened (needs
// CAP_DAC_READ_SEARCH). No directory walk. `gone` (if given) tells whether
// the cgroup is known to be removed (rather than the lookup failing).
std::string cgroupPathById(int mountFd, std::uint64_t cgroupId, bool* gone = nullptr);
// The network namespace cookie of the calling thread's namespace.
Result<std::uint64_t> currentNetnsCookie();

struct LoaderOptions {
  std::uint16_t proxyPort = 15443;
  std::uint32_t daemonTgid = 0;
  bool refuseQuic = true;
  bool interceptAll = false;  // intercept: all-tls
  std::string pinRoot = AG_PIN_ROOT;
};

struct Attachment {
  std::string path;  // cgroup path as given (may be empty when only the id is known)
  std::uint64_t cgroupId = 0;
};

class Loader {
 public:
  static Result<std::unique_ptr<Loader>> open(const LoaderOptions& options);
  ~Loader();
  Loader(const Loader&) = delete;
  Loader& operator=(const Loader&) = delete;

  // Attach every hook to a cgroup (idempotent; re-uses a pinned link).
  Result<void> attach(const std::string& cgroupPath);
  // Detach from a cgroup and remove its pinned links.
  Result<void> detach(const std::string& cgroupPath);
  // The same by cgroup id: also for a cgroup that is gone (its path may hold
  // a new cgroup already, e.g. a restarted container's).
  Result<void> detachId(std::uint64_t cgroupId);
  std::vector<Attachment> attachments() const;

  // Remove every pinned link, program and map (SIGTERM with keep_on_exit: false).
  void unpinAll();

  // Targets: replace the IPv4/IPv6 address tables (address text -> target index).
  Result<void> setTargets(const std::map<std::string, ag_target>& addresses);

  // Looks up and deletes the flow record of an accepted client.
  std::optional<ag_origin> takeFlow(const ag_flow_key& key);
  // Number of entries in the flows and origins maps (for status and tests).
  std::size_t flowCount() const;
  std::size_t originCount() const;

  // Summed per-CPU counters, indexed by ag_counter.
  std::array<std::uint64_t, AG_CNT__MAX> counters() const;

  const LoaderOptions& options() const { return options_; }

 private:
  explicit Loader(LoaderOptions options) : options_(std::move(options)) {}
  Result<void> loadAndPin();
  Result<void> adoptPinnedLinks();

  LoaderOptions options_;
  struct ::ag_bpf* skel_ = nullptr;
  // cgroup id -> links of every hook (owned; unpinned only on detach/unpinAll)
  std::map<std::uint64_t, std::vector<struct ::bpf_link*>> links_;
  std::map<std::uint64_t, std::string> paths_;
  std::map<std::string, ag_target> targets_;  // what the targets maps hold now
};

}  // namespace atlasgate::bpf
