#pragma once
// Loads atlasgate's BPF object, pins it under /sys/fs/bpf/atlasgate and
// attaches it once, at the cgroup2 root, with bpf_links.
//
// Which cgroups are agents is the members map: attach() and detach() add and
// remove a cgroup *path* there, and the programs decide membership in the
// kernel from the path of the task's cgroup (bpf/member.h). A path outlives
// the cgroup: one removed and re-created at an attached path (a restarted
// container) is redirected from its first connection. The map keeps the
// paths, so a restarted daemon knows them again.
//
// Pinning layout (AG_PIN_ROOT):
//   maps/<map name>            shared by every daemon generation
//   progs/<program name>       the programs of the running generation
//   links/root-<prog>          one link per hook, at the cgroup2 root
//
// A restarted daemon re-opens the pinned maps (libbpf reuses them by pin
// path) and moves the pinned links to its freshly loaded programs with
// bpf_link__update_program(): the redirect never lapses, and while no daemon
// runs, redirected connections are refused (fail closed). Links of the
// earlier layout (links/<cgroup id>-<prog>, one set per attached cgroup) are
// turned into members and retired once the root links stand.

#include <netinet/in.h>
#include <sys/socket.h>

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
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
  // Only spares the daemon's own dials to targets the skip_not_member count:
  // the daemon is never a member (its cgroup cannot be attached).
  std::uint32_t daemonTgid = 0;
  bool refuseQuic = true;
  bool interceptAll = false;    // intercept: all-tls
  std::uint16_t mongoPort = 0;  // a mongodb target's port: every TCP connection to it is redirected; 0 = none
  std::string pinRoot = AG_PIN_ROOT;
};

struct Attachment {
  std::string path;            // absolute cgroup path
  std::uint64_t cgroupId = 0;  // of the cgroup at that path now; 0 when there is none
};

// `path` is `root` or a cgroup below it (whole path components: "a/bc" is
// not below "a/b"). Both absolute, or both relative to the cgroup2 mount,
// where "" (the mount itself) holds every path.
inline bool pathWithin(std::string_view path, std::string_view root) {
  if (root.empty()) return true;
  return path == root || (path.size() > root.size() && path.substr(0, root.size()) == root && path[root.size()] == '/');
}

// The flow key of an accepted client (bpf/sockops.bpf.c keys flows the
// same way): an IPv4 client seen on a dual-stack socket (::ffff:a.b.c.d) is
// keyed as IPv4. Address families other than AF_INET/AF_INET6 get family 0,
// which no flow has.
ag_flow_key flowKey(const sockaddr* peer, std::uint64_t netnsCookie);

// The members map's key for a path relative to the cgroup2 mount, from the
// secret seed kept in ag_control: the hash bpf/member.h computes in the kernel.
std::uint64_t memberPathHash(std::string_view relative, std::uint64_t seed);

class Loader {
 public:
  static Result<std::unique_ptr<Loader>> open(const LoaderOptions& options);
  ~Loader();
  Loader(const Loader&) = delete;
  Loader& operator=(const Loader&) = delete;

  // Make a cgroup path a member (idempotent). With mustExist false a path
  // that does not exist yet is accepted: its cgroup is redirected from the
  // moment it is made.
  Result<void> attach(const std::string& cgroupPath, bool mustExist = true);
  // Remove a path from the members (whether or not its cgroup still exists).
  Result<void> detach(const std::string& cgroupPath);
  // The attached paths (absolute, sorted), from the loader's own record of
  // the members map: no map walk, no stat.
  std::vector<std::string> attachedPaths() const;
  // The same, each with the id of the cgroup at its path now (one stat each).
  std::vector<Attachment> attachments() const;
  const std::string& cgroupMount() const { return mount_; }
  // The members map key of a path relative to the mount (tests).
  std::uint64_t memberKey(std::string_view relative) const { return memberPathHash(relative, seed_); }

  // Remove every pinned link, program and map (SIGTERM with keep_on_exit: false).
  void unpinAll();

  // Targets: replace the IPv4/IPv6 address tables (address text -> target index).
  Result<void> setTargets(const std::map<std::string, ag_target>& addresses);

  // Looks up and deletes the flow record of an accepted client.
  std::optional<ag_origin> takeFlow(const ag_flow_key& key);
  // The same from the accepted socket's peer address and the network
  // namespace it was accepted in: what the proxy asks.
  std::optional<ag_origin> take(const sockaddr* peer, std::uint64_t netnsCookie) {
    return takeFlow(flowKey(peer, netnsCookie));
  }
  // Number of entries in the flows and origins maps (for status and tests).
  std::size_t flowCount() const;
  std::size_t originCount() const;

  // Summed per-CPU counters, indexed by ag_counter.
  std::array<std::uint64_t, AG_CNT__MAX> counters() const;

  const LoaderOptions& options() const { return options_; }

 private:
  explicit Loader(LoaderOptions options) : options_(std::move(options)) {}
  Result<void> loadAndPin();
  Result<void> lockPinRoot();
  Result<void> setAnchor();
  void restoreMembers(const std::vector<std::string>& previous);
  // (key, path relative to the mount) of every entry of the members map.
  std::vector<std::pair<std::uint64_t, std::string>> memberEntries() const;
  Result<void> attachRoot();
  void retireLegacyLinks();
  Result<std::string> relativePath(const std::string& cgroupPath) const;
  void bumpGeneration();
  // Read-modify-write of the one ag_control entry (a pinned map keeps it):
  // `change` (Result<void>(ag_control&)) edits it; `what` names a failed write.
  template <class Fn>
  Result<void> updateControl(std::string_view what, Fn&& change);

  LoaderOptions options_;
  struct ::ag_bpf* skel_ = nullptr;
  std::string mount_;      // the cgroup2 mount; member paths are relative to it
  std::string ownCgroup_;  // the daemon's own cgroup, relative to the mount: never a member
  std::uint64_t seed_ = 0;
  int lockFd_ = -1;  // flock on the pin root: one daemon per pin root
  // One link per hook at the cgroup2 root (owned; unpinned only by unpinAll)
  std::vector<struct ::bpf_link*> links_;
  std::map<std::string, ag_target> targets_;  // what the targets maps hold now
  // The paths the members map holds (absolute), kept with every write of it:
  // the map is written only here (attach, detach, restoreMembers; one daemon
  // per pin root). Not locked: the daemon calls the loader from one thread
  // at a time (start(), then its io_context's only thread).
  std::set<std::string> members_;
};

}  // namespace atlasgate::bpf
