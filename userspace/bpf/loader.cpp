#include "bpf/loader.h"

#include "common/fd.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <algorithm>
#include <sstream>

#include "ag_bpf.skel.h"
#include "common/log.h"

namespace atlasgate::bpf {
namespace {

namespace fs = std::filesystem;

constexpr unsigned long kBpfFsMagic = 0xcafe4a11;
#ifndef SO_NETNS_COOKIE
constexpr int SO_NETNS_COOKIE = 71;
#endif

struct Hook {
  const char* name;  // program name == pin file suffix
  bpf_program* (*get)(ag_bpf*);
};

// Every program attached to agent cgroups.
const Hook kHooks[] = {
    {"ag_connect4", [](ag_bpf* s) { return s->progs.ag_connect4; }},
    {"ag_connect6", [](ag_bpf* s) { return s->progs.ag_connect6; }},
    {"ag_sockops", [](ag_bpf* s) { return s->progs.ag_sockops; }},
    {"ag_sendmsg4", [](ag_bpf* s) { return s->progs.ag_sendmsg4; }},
    {"ag_sendmsg6", [](ag_bpf* s) { return s->progs.ag_sendmsg6; }},
    {"ag_getpeername4", [](ag_bpf* s) { return s->progs.ag_getpeername4; }},
    {"ag_getpeername6", [](ag_bpf* s) { return s->progs.ag_getpeername6; }},
    {"ag_sock_create", [](ag_bpf* s) { return s->progs.ag_sock_create; }},
};

using Fd = UniqueFd;

int libbpfLog(enum libbpf_print_level level, const char* format, va_list args) {
  // libbpf's debug output is a page per load: only on request.
  static const bool verbose = std::getenv("ATLASGATE_LIBBPF_DEBUG") != nullptr;
  if (level == LIBBPF_DEBUG && !verbose) return 0;
  char buf[1024];
  int n = std::vsnprintf(buf, sizeof buf, format, args);
  std::string_view msg(buf, n > 0 ? std::min<std::size_t>(n, sizeof buf - 1) : 0);
  while (!msg.empty() && msg.back() == '\n') msg.remove_suffix(1);
  if (msg.substr(0, 8) == "libbpf: ") msg.remove_prefix(8);
  if (level == LIBBPF_WARN)
    log::warn("libbpf: {}", msg);
  else
    log::info("libbpf: {}", msg);
  return 0;
}

std::string rootLinkPin(const std::string& root, const char* prog) {
  return fmt::format("{}/links/root-{}", root, prog);
}

// This process's cgroup2 path, relative to the mount ("" for the root).
std::string ownCgroupPath() {
  std::ifstream in("/proc/self/cgroup");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("0::", 0) == 0) {
      std::string p = line.substr(3);
      while (!p.empty() && p.front() == '/') p.erase(0, 1);
      return p;
    }
  return {};
}

// The paths a pinned members map holds, whatever build made it (its value
// starts with flags, length and the path in every layout so far).
std::vector<std::string> pinnedMemberPaths(const std::string& pin) {
  std::vector<std::string> out;
  Fd fd(bpf_obj_get(pin.c_str()));
  if (fd.get() < 0) return out;
  bpf_map_info info{};
  __u32 len = sizeof info;
  if (bpf_obj_get_info_by_fd(fd.get(), &info, &len) != 0 || info.key_size != sizeof(std::uint64_t) ||
      info.value_size < 8)
    return out;
  std::vector<char> value(info.value_size);
  std::uint64_t key = 0, next = 0;
  void* prev = nullptr;
  while (bpf_map_get_next_key(fd.get(), prev, &next) == 0) {
    key = next;
    prev = &key;
    if (bpf_map_lookup_elem(fd.get(), &key, value.data()) != 0) continue;
    std::uint32_t n = 0;
    std::memcpy(&n, value.data() + 4, 4);
    if (n <= value.size() - 8) out.emplace_back(value.data() + 8, n);
  }
  return out;
}

}  // namespace

Result<std::string> findCgroup2Mount() {
  std::ifstream in("/proc/self/mountinfo");
  if (!in) return sysError(errno, "open /proc/self/mountinfo");
  std::string line;
  while (std::getline(in, line)) {
    // "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw"
    auto sep = line.find(" - ");
    if (sep == std::string::npos) continue;
    std::istringstream post(line.substr(sep + 3));
    std::string fstype;
    post >> fstype;
    if (fstype != "cgroup2") continue;
    std::istringstream pre(line.substr(0, sep));
    std::string id, parent, dev, root, mountPoint;
    pre >> id >> parent >> dev >> root >> mountPoint;
    if (root != "/") continue;  // a bind mount of a sub-tree
    return mountPoint;
  }
  return makeError("no cgroup v2 mount found in /proc/self/mountinfo (atlasgate needs cgroup v2)");
}

Result<void> ensureBpffs() {
  const char* dir = "/sys/fs/bpf";
  struct statfs st {};
  if (::statfs(dir, &st) == 0 && static_cast<unsigned long>(st.f_type) == kBpfFsMagic) return {};
  ::mkdir(dir, 0700);
  if (::mount("bpf", dir, "bpf", 0, "mode=0700") != 0) return sysError(errno, "mount bpffs on {}", dir);
  log::info("mounted bpffs on {}", dir);
  return {};
}

Result<std::uint64_t> cgroupId(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return sysError(errno, "cgroup {}", path);
  if (!S_ISDIR(st.st_mode)) return makeError("cgroup {}: not a directory", path);
  // On cgroup2 the directory's inode number is the cgroup id that
  // bpf_get_current_cgroup_id() reports.
  return static_cast<std::uint64_t>(st.st_ino);
}

Result<std::uint64_t> currentNetnsCookie() {
  Fd fd(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (fd.get() < 0) return sysError(errno, "socket");
  std::uint64_t cookie = 0;
  socklen_t len = sizeof cookie;
  if (::getsockopt(fd.get(), SOL_SOCKET, SO_NETNS_COOKIE, &cookie, &len) != 0)
    return sysError(errno, "getsockopt(SO_NETNS_COOKIE) (kernel >= 5.14 needed)");
  return cookie;
}

Result<std::unique_ptr<Loader>> Loader::open(const LoaderOptions& options) {
  libbpf_set_print(libbpfLog);
  if (auto r = ensureBpffs(); !r) return r.error();
  auto mount = findCgroup2Mount();
  if (!mount) return mount.error();
  std::unique_ptr<Loader> loader(new Loader(options));
  loader->mount_ = *mount;
  loader->ownCgroup_ = ownCgroupPath();
  if (auto r = loader->lockPinRoot(); !r) return r.error();
  // What the pinned members map holds, read before anything may replace it
  // (a map of an older, incompatible build is re-created on load).
  auto previous = pinnedMemberPaths(options.pinRoot + "/maps/ag_members");
  if (auto r = loader->loadAndPin(); !r) return r.error();
  if (auto r = loader->setAnchor(); !r) return r.error();
  loader->restoreMembers(previous);
  if (auto r = loader->attachRoot(); !r) return r.error();
  loader->retireLegacyLinks();
  return loader;
}

Result<void> Loader::loadAndPin() {
  std::error_code ec;
  const std::string& root = options_.pinRoot;
  for (const char* sub : {"", "/maps", "/progs", "/links"}) {
    fs::create_directories(root + sub, ec);
    if (ec) return makeError("create {}{}: {}", root, sub, ec.message());
  }

  for (int attempt = 0; attempt < 2; ++attempt) {
    skel_ = ag_bpf__open();
    if (!skel_) return sysError(errno, "open BPF skeleton");
    skel_->rodata->ag_proxy_port = options_.proxyPort;
    skel_->rodata->ag_daemon_tgid = options_.daemonTgid;
    skel_->rodata->ag_refuse_quic = options_.refuseQuic ? 1 : 0;
    skel_->rodata->ag_intercept_all = options_.interceptAll ? 1 : 0;
    skel_->rodata->ag_mongo_port = options_.mongoPort;

    // Maps persist across daemon generations: re-use the pinned ones.
    bpf_map* map;
    bpf_object__for_each_map(map, skel_->obj) {
      if (bpf_map__is_internal(map)) continue;  // .rodata belongs to one generation
      std::string pin = fmt::format("{}/maps/{}", root, bpf_map__name(map));
      if (bpf_map__set_pin_path(map, pin.c_str()) != 0) return sysError(errno, "set pin path {}", pin);
    }
    int err = ag_bpf__load(skel_);
    if (err == 0) break;
    ag_bpf__destroy(skel_);
    skel_ = nullptr;
    if (attempt == 1) return sysError(-err, "load BPF programs (is the kernel >= 5.17 with BTF?)");
    // A pinned map from an older, incompatible build: start those afresh.
    // Links still attached keep working with their old maps until they are
    // updated below, so agents are never left unredirected.
    log::warn("pinned BPF maps could not be re-used ({}); re-creating them", std::strerror(-err));
    fs::remove_all(root + "/maps", ec);
    fs::create_directories(root + "/maps", ec);
  }

  for (const Hook& h : kHooks) {
    std::string pin = fmt::format("{}/progs/{}", root, h.name);
    ::unlink(pin.c_str());
    if (bpf_program__pin(h.get(skel_), pin.c_str()) != 0) return sysError(errno, "pin program {}", pin);
  }
  return {};
}

Result<void> Loader::lockPinRoot() {
  std::error_code ec;
  fs::create_directories(options_.pinRoot, ec);
  if (ec) return makeError("create {}: {}", options_.pinRoot, ec.message());
  lockFd_ = ::open(options_.pinRoot.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (lockFd_ < 0) return sysError(errno, "open {}", options_.pinRoot);
  // One writer of the members map and its generation.
  if (::flock(lockFd_, LOCK_EX | LOCK_NB) != 0)
    return sysError(errno, "{} is in use by another atlasgate daemon", options_.pinRoot);
  return {};
}

template <class Fn>
Result<void> Loader::updateControl(std::string_view what, Fn&& change) {
  // The daemon is the map's only writer (the flock on the pin root).
  __u32 zero = 0;
  ag_control ctl{};
  int fd = bpf_map__fd(skel_->maps.ag_control);
  bpf_map_lookup_elem(fd, &zero, &ctl);  // a pinned map keeps its generation and seed
  if (auto r = change(ctl); !r) return r;
  if (bpf_map_update_elem(fd, &zero, &ctl, BPF_ANY) != 0) return sysError(errno, "{}", what);
  return {};
}

Result<void> Loader::setAnchor() {
  auto anchor = cgroupId(mount_);
  if (!anchor) return anchor.error();
  return updateControl("set the membership anchor", [&](ag_control& ctl) -> Result<void> {
    ctl.anchor_id = *anchor;
    ctl.gen += 1;
    if (ctl.seed == 0 && ::getrandom(&ctl.seed, sizeof ctl.seed, 0) != sizeof ctl.seed)
      return sysError(errno, "getrandom");
    seed_ = ctl.seed;
    return {};
  });
}

void Loader::restoreMembers(const std::vector<std::string>& previous) {
  // Every entry keyed by this seed; entries a re-created map lost, back. A
  // path that cannot be restored is reported, and stays out: nothing else
  // could be done about it.
  int fd = bpf_map__fd(skel_->maps.ag_members);
  auto have = memberEntries();
  std::set<std::string> paths(previous.begin(), previous.end());
  for (auto& [k, path] : have) {
    paths.insert(path);
    if (k != memberPathHash(path, seed_)) bpf_map_delete_elem(fd, &k);
  }
  std::size_t restored = 0;
  for (const auto& rel : paths) {
    std::string abs = rel.empty() ? mount_ : mount_ + "/" + rel;
    auto r = attach(abs, false);
    if (!r)
      log::warn("attached path {} from the pinned members map cannot be restored: {}", abs, r.error().message);
    else
      ++restored;
  }
  if (!have.empty() && have.size() != paths.size())
    log::info("restored {} attached path(s) into the re-created members map", restored);
  bumpGeneration();
  // From here on the record follows every write; start it from what the
  // map holds now (entries kept that could not be attached again included).
  members_.clear();
  for (auto& [k, rel] : memberEntries()) members_.insert(rel.empty() ? mount_ : mount_ + "/" + rel);
}

void Loader::bumpGeneration() {
  // The programs read gen before the members map (bpf/member.h), so the
  // update must land after the change.
  auto r = updateControl("bump the membership generation", [](ag_control& ctl) -> Result<void> {
    ctl.gen += 1;
    return {};
  });
  if (!r) log::warn("{}", r.error().message);
}

Result<void> Loader::attachRoot() {
  // Links pinned by an earlier generation: move them to our programs, so the
  // redirect never lapses. Hooks without a pinned link are attached afresh.
  Fd cg(::open(mount_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (cg.get() < 0) return sysError(errno, "open cgroup2 mount {}", mount_);
  std::size_t adopted = 0;
  for (const Hook& h : kHooks) {
    std::string pin = rootLinkPin(options_.pinRoot, h.name);
    bpf_link* link = ::access(pin.c_str(), F_OK) == 0 ? bpf_link__open(pin.c_str()) : nullptr;
    if (link && bpf_link__update_program(link, h.get(skel_)) == 0) {
      links_.push_back(link);
      ++adopted;
      continue;
    }
    if (link) {
      log::warn("pinned link {} cannot be updated ({}); attaching afresh", pin, std::strerror(errno));
      bpf_link__unpin(link);
      bpf_link__destroy(link);
    }
    link = bpf_program__attach_cgroup(h.get(skel_), cg.get());
    if (!link) return sysError(errno, "attach {} to the cgroup2 root {}", h.name, mount_);
    ::unlink(pin.c_str());
    if (bpf_link__pin(link, pin.c_str()) != 0) {
      int e = errno;
      bpf_link__destroy(link);
      return sysError(e, "pin link {}", pin);
    }
    links_.push_back(link);
  }
  if (adopted) log::info("re-used {} pinned hook link(s) from a previous run", adopted);
  if (!members_.empty()) log::info("{} attached cgroup path(s) kept in the pinned members map", members_.size());
  return {};
}

void Loader::retireLegacyLinks() {
  // links/<cgroup id>-<prog>: one set per cgroup, from builds before the
  // members map. Their cgroups become members (now that the root links
  // stand, nothing is left unredirected), then the links go.
  std::error_code ec;
  auto mfd = Fd(::open(mount_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  std::map<std::uint64_t, bool> migrated;  // cgroup id -> now a member (or gone)
  for (const auto& entry : fs::directory_iterator(options_.pinRoot + "/links", ec)) {
    std::string file = entry.path().filename();
    if (file.rfind("root-", 0) == 0) continue;
    auto dash = file.find('-');
    std::uint64_t cgid = dash == std::string::npos ? 0 : std::strtoull(file.substr(0, dash).c_str(), nullptr, 10);
    bool moved = true;
    if (cgid) {
      if (auto it = migrated.find(cgid); it != migrated.end()) {
        moved = it->second;
      } else {
        bool gone = false;
        std::string path = cgroupPathById(mfd.get(), cgid, &gone);
        if (path.empty()) {
          moved = gone;
          if (gone)
            log::info("pinned link of cgroup id {}: its cgroup is gone", cgid);
          else
            log::warn("pinned link of cgroup id {}: its path cannot be found; the link stays", cgid);
        } else if (auto r = attach(path); !r) {
          moved = false;
          log::warn("pinned link of {}: {}; the link stays", path, r.error().message);
        }
        migrated[cgid] = moved;
      }
    }
    if (!moved) continue;  // still redirecting its cgroup the old way
    if (bpf_link* link = bpf_link__open(entry.path().c_str())) {
      bpf_link__unpin(link);
      bpf_link__detach(link);
      bpf_link__destroy(link);
    } else {
      ::unlink(entry.path().c_str());
    }
  }
  if (!migrated.empty())
    log::info("moved {} per-cgroup attachment(s) of an earlier build to the members map", migrated.size());
}

std::string cgroupPathById(int mountFd, std::uint64_t cgroupId, bool* gone) {
  if (gone) *gone = false;
  if (mountFd < 0) return {};
  // FILEID_KERNFS: a cgroup2 file handle is its 8-byte id.
  struct {
    struct file_handle fh;
    std::uint64_t id;
  } h{};
  h.fh.handle_bytes = sizeof(std::uint64_t);
  h.fh.handle_type = 0xfe;
  std::memcpy(h.fh.f_handle, &cgroupId, sizeof cgroupId);
  Fd fd(::open_by_handle_at(mountFd, &h.fh, O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (fd.get() < 0) {
    if (gone) *gone = errno == ESTALE || errno == ENOENT;
    return {};
  }
  std::error_code ec;
  std::string p = fs::read_symlink("/proc/self/fd/" + std::to_string(fd.get()), ec).string();
  if (ec) return {};
  // Removed meanwhile: the link reads "<path> (deleted)"; and removed right
  // after the read, the path no longer names this id.
  constexpr std::string_view kDeleted = " (deleted)";
  struct stat st {};
  if ((p.size() >= kDeleted.size() && p.compare(p.size() - kDeleted.size(), kDeleted.size(), kDeleted) == 0) ||
      ::stat(p.c_str(), &st) != 0 || st.st_ino != cgroupId) {
    if (gone) *gone = true;
    return {};
  }
  return p;
}

Loader::~Loader() {
  // Close our handles only: pinned links stay attached unless detached or
  // unpinAll() ran.
  for (bpf_link* l : links_) bpf_link__destroy(l);
  if (skel_) ag_bpf__destroy(skel_);
  if (lockFd_ >= 0) ::close(lockFd_);
}

std::uint64_t memberPathHash(std::string_view relative, std::uint64_t seed) {
  // bpf/member.h (ag_hash_down) and atlasgate_abi.h: per name, its length,
  // then its bytes as native-endian 8-byte words, the last zero-padded.
  std::uint64_t h = seed;
  std::size_t i = 0;
  while (i < relative.size()) {
    std::size_t slash = relative.find('/', i);
    if (slash == std::string_view::npos) slash = relative.size();
    std::string_view name = relative.substr(i, slash - i);
    h = ag_path_hash_level(h, name.size());
    for (std::size_t j = 0; j < name.size(); j += 8) {
      std::uint64_t word = 0;
      std::memcpy(&word, name.data() + j, std::min<std::size_t>(8, name.size() - j));
      h = ag_path_hash_word(h, word);
    }
    i = slash + 1;
  }
  return h;
}

Result<std::string> Loader::relativePath(const std::string& cgroupPath) const {
  fs::path p = fs::path(cgroupPath).lexically_normal();
  fs::path rel = p.lexically_relative(fs::path(mount_).lexically_normal());
  if (!p.is_absolute() || rel.empty() || *rel.begin() == "..")
    return makeError("{} is not a cgroup below the cgroup2 mount {}", cgroupPath, mount_);
  std::string out = rel == "." ? std::string() : rel.string();
  while (!out.empty() && out.back() == '/') out.pop_back();
  std::size_t depth = 0;
  for (const auto& part : fs::path(out)) {
    if (part.string().size() >= AG_MEMBER_NAME_MAX) return makeError("cgroup {}: a name is too long", cgroupPath);
    ++depth;
  }
  if (out.empty()) return makeError("the whole cgroup2 hierarchy ({}) cannot be attached: it holds atlasgate", mount_);
  if (ownCgroup_ == out || ownCgroup_.rfind(out + "/", 0) == 0)
    return makeError("cgroup {} holds atlasgate itself (cgroup /{}): it cannot be an agent's", cgroupPath, ownCgroup_);
  if (depth > AG_MEMBER_DEPTH_MAX)
    return makeError("cgroup {} is {} levels deep; at most {} below {} can be attached", cgroupPath, depth,
                     AG_MEMBER_DEPTH_MAX, mount_);
  if (out.size() >= AG_MEMBER_PATH_MAX) return makeError("cgroup path {} is too long", cgroupPath);
  return out;
}

Result<void> Loader::attach(const std::string& cgroupPath, bool mustExist) {
  auto rel = relativePath(cgroupPath);
  if (!rel) return rel.error();
  auto id = cgroupId(cgroupPath);
  if (!id && mustExist) return id.error();
  std::uint64_t key = memberPathHash(*rel, seed_);
  int fd = bpf_map__fd(skel_->maps.ag_members);
  ag_member m{};
  const std::string path = mount_ + "/" + *rel;
  if (bpf_map_lookup_elem(fd, &key, &m) == 0) {
    if (std::string_view(m.path, std::min<std::size_t>(m.len, sizeof m.path)) == *rel) {
      members_.insert(path);
      return {};
    }
    return makeError("cgroup {}: its path hash is taken by {} (rename one of them)", cgroupPath,
                     std::string_view(m.path, std::min<std::size_t>(m.len, sizeof m.path)));
  }
  m = {};
  m.len = static_cast<__u32>(rel->size());
  std::memcpy(m.path, rel->data(), rel->size());
  if (bpf_map_update_elem(fd, &key, &m, BPF_NOEXIST) != 0) return sysError(errno, "attach cgroup {}", cgroupPath);
  members_.insert(path);
  bumpGeneration();
  if (id)
    log::info("attached to cgroup {} (id {})", cgroupPath, *id);
  else
    log::info("attached to cgroup path {} (no cgroup there yet: redirected from the moment it is made)", cgroupPath);
  return {};
}

Result<void> Loader::detach(const std::string& cgroupPath) {
  auto rel = relativePath(cgroupPath);
  if (!rel) return rel.error();
  std::uint64_t key = memberPathHash(*rel, seed_);
  int fd = bpf_map__fd(skel_->maps.ag_members);
  ag_member m{};
  if (bpf_map_lookup_elem(fd, &key, &m) != 0 ||
      std::string_view(m.path, std::min<std::size_t>(m.len, sizeof m.path)) != *rel)
    return makeError("cgroup {} is not attached", cgroupPath);
  if (bpf_map_delete_elem(fd, &key) != 0) return sysError(errno, "detach cgroup {}", cgroupPath);
  members_.erase(mount_ + "/" + *rel);
  bumpGeneration();
  log::info("detached from cgroup {}", cgroupPath);
  return {};
}

std::vector<std::pair<std::uint64_t, std::string>> Loader::memberEntries() const {
  std::vector<std::pair<std::uint64_t, std::string>> out;
  int fd = bpf_map__fd(skel_->maps.ag_members);
  std::uint64_t key = 0, next = 0;
  void* prev = nullptr;
  while (bpf_map_get_next_key(fd, prev, &next) == 0) {
    key = next;
    prev = &key;
    ag_member m{};
    if (bpf_map_lookup_elem(fd, &key, &m) == 0)
      out.emplace_back(key, std::string(m.path, std::min<std::size_t>(m.len, sizeof m.path)));
  }
  return out;
}

std::vector<std::string> Loader::attachedPaths() const { return {members_.begin(), members_.end()}; }

std::vector<Attachment> Loader::attachments() const {
  std::vector<Attachment> out;
  out.reserve(members_.size());
  for (const auto& path : members_) {
    auto id = cgroupId(path);
    out.push_back({path, id ? *id : 0});
  }
  return out;
}

void Loader::unpinAll() {
  for (bpf_link* l : links_) {
    bpf_link__unpin(l);
    bpf_link__detach(l);
    bpf_link__destroy(l);
  }
  links_.clear();
  std::error_code ec;
  fs::remove_all(options_.pinRoot, ec);
  if (ec) log::warn("remove {}: {}", options_.pinRoot, ec.message());
  log::info("removed BPF attachments and pins under {}", options_.pinRoot);
}

namespace {
// Canonical text of an address (inet_ntop's), v4-mapped IPv6 as plain IPv4:
// connect6 looks mapped destinations up in the IPv4 map.
std::optional<std::string> canonicalAddress(const std::string& text) {
  in_addr a4{};
  in6_addr a6{};
  char out[INET6_ADDRSTRLEN] = {};
  if (::inet_pton(AF_INET, text.c_str(), &a4) == 1) {
    ::inet_ntop(AF_INET, &a4, out, sizeof out);
  } else if (::inet_pton(AF_INET6, text.c_str(), &a6) == 1) {
    if (IN6_IS_ADDR_V4MAPPED(&a6))
      ::inet_ntop(AF_INET, &a6.s6_addr[12], out, sizeof out);
    else
      ::inet_ntop(AF_INET6, &a6, out, sizeof out);
  } else {
    return std::nullopt;
  }
  return std::string(out);
}
}  // namespace

Result<void> Loader::setTargets(const std::map<std::string, ag_target>& given) {
  std::map<std::string, ag_target> addresses;
  for (const auto& [text, t] : given) {
    auto c = canonicalAddress(text);
    if (!c) return makeError("not an IP address: {}", text);
    addresses[*c] = t;
  }
  int fd4 = bpf_map__fd(skel_->maps.ag_targets4);
  int fd6 = bpf_map__fd(skel_->maps.ag_targets6);
  auto apply = [&](const std::string& text, const ag_target* value) -> Result<void> {
    in_addr a4{};
    ag_addr6 a6{};
    int rc;
    if (::inet_pton(AF_INET, text.c_str(), &a4) == 1) {
      __u32 key = a4.s_addr;
      rc = value ? bpf_map_update_elem(fd4, &key, value, BPF_ANY) : bpf_map_delete_elem(fd4, &key);
    } else if (::inet_pton(AF_INET6, text.c_str(), a6.addr) == 1) {
      rc = value ? bpf_map_update_elem(fd6, &a6, value, BPF_ANY) : bpf_map_delete_elem(fd6, &a6);
    } else {
      return makeError("not an IP address: {}", text);
    }
    if (rc != 0 && !(value == nullptr && errno == ENOENT))
      return sysError(errno, "{} target address {}", value ? "add" : "remove", text);
    return {};
  };
  for (const auto& [text, t] : addresses)
    if (auto r = apply(text, &t); !r) return r;
  for (const auto& [text, t] : targets_)
    if (!addresses.contains(text))
      if (auto r = apply(text, nullptr); !r) return r;
  // Entries we did not put there (an earlier generation's) are dropped too.
  for (int fd : {fd4, fd6}) {
    bool v4 = fd == fd4;
    std::array<std::uint8_t, 16> key{}, next{};
    void* prev = nullptr;
    std::vector<std::array<std::uint8_t, 16>> stale;
    while (bpf_map_get_next_key(fd, prev, next.data()) == 0) {
      char text[INET6_ADDRSTRLEN] = {};
      ::inet_ntop(v4 ? AF_INET : AF_INET6, next.data(), text, sizeof text);
      if (!addresses.contains(text)) stale.push_back(next);
      key = next;
      prev = key.data();
    }
    for (auto& k : stale) bpf_map_delete_elem(fd, k.data());
  }
  targets_ = addresses;
  return {};
}

ag_flow_key flowKey(const sockaddr* peer, std::uint64_t netnsCookie) {
  ag_flow_key key{};
  key.netns_cookie = netnsCookie;
  if (peer->sa_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(peer);
    key.family = AG_AF_INET;
    key.port = ntohs(in->sin_port);
    std::memcpy(key.addr, &in->sin_addr, 4);
  } else if (peer->sa_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(peer);
    key.port = ntohs(in6->sin6_port);
    if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
      key.family = AG_AF_INET;
      std::memcpy(key.addr, &in6->sin6_addr.s6_addr[12], 4);
    } else {
      key.family = AG_AF_INET6;
      std::memcpy(key.addr, &in6->sin6_addr, 16);
    }
  }
  return key;
}

std::optional<ag_origin> Loader::takeFlow(const ag_flow_key& key) {
  int fd = bpf_map__fd(skel_->maps.ag_flows);
  ag_origin o{};
  if (bpf_map_lookup_elem(fd, &key, &o) != 0) return std::nullopt;
  bpf_map_delete_elem(fd, &key);
  return o;
}

namespace {
std::size_t countEntries(int fd, std::size_t keySize) {
  std::vector<std::uint8_t> key(keySize), next(keySize);
  void* prev = nullptr;
  std::size_t n = 0;
  while (bpf_map_get_next_key(fd, prev, next.data()) == 0) {
    ++n;
    key = next;
    prev = key.data();
  }
  return n;
}
}  // namespace

std::size_t Loader::flowCount() const { return countEntries(bpf_map__fd(skel_->maps.ag_flows), sizeof(ag_flow_key)); }

std::size_t Loader::originCount() const { return countEntries(bpf_map__fd(skel_->maps.ag_origins), sizeof(__u64)); }

std::array<std::uint64_t, AG_CNT__MAX> Loader::counters() const {
  std::array<std::uint64_t, AG_CNT__MAX> out{};
  int ncpu = libbpf_num_possible_cpus();
  if (ncpu <= 0) return out;
  std::vector<std::uint64_t> values(static_cast<std::size_t>(ncpu));
  int fd = bpf_map__fd(skel_->maps.ag_counters);
  for (__u32 i = 0; i < AG_CNT__MAX; ++i) {
    if (bpf_map_lookup_elem(fd, &i, values.data()) != 0) continue;
    for (std::uint64_t v : values) out[i] += v;
  }
  return out;
}

}  // namespace atlasgate::bpf
