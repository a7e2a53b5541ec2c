// The BPF object against the running kernel: it loads and passes the
// verifier, pins and attaches where the loader says, and a process in an
// attached cgroup is redirected exactly when ag_decide() says so, with its
// origin handed to the daemon's accept side and forgotten when it closes.
//
// Needs root (CAP_BPF, CAP_NET_ADMIN, cgroup writes). Without it every test
// skips, unless ATLASGATE_REQUIRE_PRIVILEGED=1 makes that a failure. Every
// test uses its own pin root /sys/fs/bpf/atlasgate-bpftest-<pid> and cgroup
// <cgroup2>/atlasgate-bpftest-<pid>, and removes both.

#include "bpf/loader.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace ab = atlasgate::bpf;
namespace fs = std::filesystem;

namespace {

constexpr char kChildComm[] = "agbpf-child";  // fits TASK_COMM_LEN
constexpr char kTarget4[] = "127.0.0.3";
constexpr char kOther4[] = "127.0.0.4";
constexpr std::uint32_t kTargetIndex = 7;
constexpr int kAcceptMs = 5000;
constexpr int kNothingMs = 200;  // how long "nothing arrives" is watched

const char* const kMapNames[] = {"ag_targets4", "ag_targets6",     "ag_origins", "ag_flows",        "ag_creators",
                                 "ag_members",  "ag_member_cache", "ag_control", "ag_name_scratch", "ag_counters"};
const char* const kProgNames[] = {"ag_connect4", "ag_connect6",     "ag_sockops",      "ag_sendmsg4",
                                  "ag_sendmsg6", "ag_getpeername4", "ag_getpeername6", "ag_sock_create"};
const bpf_attach_type kAttachTypes[] = {
    BPF_CGROUP_INET4_CONNECT, BPF_CGROUP_INET6_CONNECT,     BPF_CGROUP_SOCK_OPS,          BPF_CGROUP_UDP4_SENDMSG,
    BPF_CGROUP_UDP6_SENDMSG,  BPF_CGROUP_INET4_GETPEERNAME, BPF_CGROUP_INET6_GETPEERNAME, BPF_CGROUP_INET_SOCK_CREATE};

// The pinned link names of every hook for a cgroup id ("root": the root links).
std::set<std::string> linkNames(const std::string& id) {
  std::set<std::string> out;
  for (const char* p : kProgNames) out.insert(id + "-" + p);
  return out;
}

bool contains(const std::vector<__u32>& ids, __u32 id) { return std::find(ids.begin(), ids.end(), id) != ids.end(); }

class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept {
    reset(std::exchange(o.fd_, -1));
    return *this;
  }
  ~UniqueFd() { reset(); }
  void reset(int fd = -1) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }
  explicit operator bool() const { return fd_ >= 0; }

 private:
  int fd_ = -1;
};

bool requirePrivileged() {
  const char* v = std::getenv("ATLASGATE_REQUIRE_PRIVILEGED");
  return v && std::string(v) == "1";
}

// Returns 0 or errno.
int writeFile(const std::string& path, const std::string& text) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return errno;
  int err = 0;
  if (::write(fd, text.data(), text.size()) != static_cast<ssize_t>(text.size())) err = errno;
  ::close(fd);
  return err;
}

// The calling process's cgroup v2 path, relative to the cgroup2 mount.
std::string ownCgroup2Path() {
  std::ifstream in("/proc/self/cgroup");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("0::", 0) == 0) return line.substr(3);
  return "/";
}

std::vector<pid_t> cgroupProcs(const std::string& cgroup) {
  std::ifstream in(cgroup + "/cgroup.procs");
  std::vector<pid_t> out;
  pid_t p;
  while (in >> p) out.push_back(p);
  return out;
}

std::set<std::string> listDir(const std::string& dir) {
  std::set<std::string> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) out.insert(e.path().filename());
  return out;
}

sockaddr_storage sockaddrOf(int family, const char* addr, std::uint16_t port, socklen_t* len) {
  sockaddr_storage ss{};
  if (family == AF_INET) {
    auto* s = reinterpret_cast<sockaddr_in*>(&ss);
    s->sin_family = AF_INET;
    s->sin_port = htons(port);
    EXPECT_EQ(::inet_pton(AF_INET, addr, &s->sin_addr), 1) << addr;
    *len = sizeof(sockaddr_in);
  } else {
    auto* s = reinterpret_cast<sockaddr_in6*>(&ss);
    s->sin6_family = AF_INET6;
    s->sin6_port = htons(port);
    EXPECT_EQ(::inet_pton(AF_INET6, addr, &s->sin6_addr), 1) << addr;
    *len = sizeof(sockaddr_in6);
  }
  return ss;
}

std::uint16_t portOf(const sockaddr_storage& ss) {
  if (ss.ss_family == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in&>(ss).sin_port);
  return ntohs(reinterpret_cast<const sockaddr_in6&>(ss).sin6_port);
}

std::string str(const sockaddr_storage& ss) {
  char text[INET6_ADDRSTRLEN] = "?";
  if (ss.ss_family == AF_INET) {
    ::inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in&>(ss).sin_addr, text, sizeof text);
    return std::string(text) + ":" + std::to_string(portOf(ss));
  }
  if (ss.ss_family == AF_INET6) {
    ::inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6&>(ss).sin6_addr, text, sizeof text);
    return "[" + std::string(text) + "]:" + std::to_string(portOf(ss));
  }
  return "family " + std::to_string(ss.ss_family);
}

// A listening TCP socket; an invalid fd when the address cannot be bound.
UniqueFd listenOn(int family, const char* addr, std::uint16_t port) {
  UniqueFd fd(::socket(family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) return fd;
  int one = 1;
  ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (family == AF_INET6) ::setsockopt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
  socklen_t len;
  auto sa = sockaddrOf(family, addr, port, &len);
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&sa), len) != 0 || ::listen(fd.get(), 16) != 0) return {};
  return fd;
}

std::uint16_t localPort(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
  return portOf(ss);
}

// Accepts one connection within ms milliseconds; an invalid fd otherwise.
UniqueFd acceptWithin(int listenFd, int ms, sockaddr_storage* peer = nullptr) {
  pollfd p{listenFd, POLLIN, 0};
  if (::poll(&p, 1, ms) != 1) return {};
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  UniqueFd fd(::accept4(listenFd, reinterpret_cast<sockaddr*>(&ss), &len, SOCK_CLOEXEC));
  if (fd && peer) *peer = ss;
  return fd;
}

// connect() a new socket; returns 0 or errno and keeps the socket in fd.
int connectTo(int family, int type, const char* addr, std::uint16_t port, UniqueFd& fd,
              sockaddr_storage* local = nullptr) {
  fd.reset(::socket(family, type | SOCK_CLOEXEC, 0));
  if (!fd) return errno;
  timeval tv{2, 0};  // bounds a TCP connect()
  ::setsockopt(fd.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  socklen_t len;
  auto sa = sockaddrOf(family, addr, port, &len);
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&sa), len) != 0) return errno;
  if (local) {
    socklen_t l = sizeof *local;
    ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(local), &l);
  }
  return 0;
}

// What a child did inside the cgroup.
struct Report {
  int joinErr = 0;  // errno of joining the cgroup
  int err = 0;      // errno of the action
  sockaddr_storage local{};
  std::uint64_t netns = 0;  // the child's network namespace cookie, after the action
};

// A forked process that names itself kChildComm, joins a cgroup, runs one
// action (typically a connect()) and reports; it keeps the action's socket
// open until finish().
class Child {
 public:
  using Action = std::function<int(UniqueFd& sock, sockaddr_storage& local)>;

  Child(const std::string& cgroup, const Action& action) {
    int rep[2], go[2];
    if (::pipe2(rep, O_CLOEXEC) != 0 || ::pipe2(go, O_CLOEXEC) != 0) {
      ADD_FAILURE() << "pipe: " << std::strerror(errno);
      return;
    }
    pid_ = ::fork();
    if (pid_ == 0) {
      // Hold nothing of the parent's: not its accepted sockets, not the
      // pipes of other children (which would keep their finish() from
      // reaching them).
      for (int fd = 3; fd < 1024; ++fd)
        if (fd != rep[1] && fd != go[0]) ::close(fd);
      ::alarm(30);  // never outlive a wedged test
      ::prctl(PR_SET_NAME, kChildComm, 0, 0, 0);
      Report r;
      if (!cgroup.empty()) r.joinErr = writeFile(cgroup + "/cgroup.procs", std::to_string(::getpid()));
      UniqueFd sock;
      if (r.joinErr == 0) r.err = action(sock, r.local);
      if (auto n = ab::currentNetnsCookie()) r.netns = *n;
      (void)!::write(rep[1], &r, sizeof r);
      char c;
      (void)!::read(go[0], &c, 1);  // finish() or the parent's exit
      sock.reset();
      ::_exit(0);
    }
    ::close(rep[1]);
    ::close(go[0]);
    if (pid_ < 0) {
      ADD_FAILURE() << "fork: " << std::strerror(errno);
      ::close(rep[0]);
      ::close(go[1]);
      return;
    }
    reportFd_.reset(rep[0]);
    goFd_.reset(go[1]);
  }

  ~Child() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  pid_t pid() const { return pid_; }

  // The child's report (waits for it).
  Report report() {
    Report r;
    r.joinErr = -1;
    pollfd p{reportFd_.get(), POLLIN, 0};
    if (::poll(&p, 1, 10000) == 1 && ::read(reportFd_.get(), &r, sizeof r) == sizeof r) return r;
    ADD_FAILURE() << "child " << pid_ << " did not report";
    return r;
  }

  // Lets the child close its socket and exit, and reaps it.
  void finish() {
    if (pid_ <= 0) return;
    (void)!::write(goFd_.get(), "x", 1);
    goFd_.reset();
    int status = 0;
    ::waitpid(pid_, &status, 0);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "child status " << status;
    pid_ = -1;
  }

 private:
  pid_t pid_ = -1;
  UniqueFd reportFd_, goFd_;
};

Child::Action tcpConnect(int family, const char* addr, std::uint16_t port) {
  std::string a = addr;
  return [=](UniqueFd& sock, sockaddr_storage& local) {
    return connectTo(family, SOCK_STREAM, a.c_str(), port, sock, &local);
  };
}

Child::Action udpConnect(const char* addr, std::uint16_t port) {
  std::string a = addr;
  return [=](UniqueFd& sock, sockaddr_storage& local) {
    return connectTo(AF_INET, SOCK_DGRAM, a.c_str(), port, sock, &local);
  };
}

// The ids of the programs attached directly to a cgroup for one hook.
std::vector<__u32> attachedProgs(const std::string& cgroup, bpf_attach_type type) {
  UniqueFd cg(::open(cgroup.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  __u32 ids[16] = {};
  __u32 count = 16, flags = 0;
  if (!cg || bpf_prog_query(cg.get(), type, 0, &flags, ids, &count) != 0) {
    ADD_FAILURE() << "bpf_prog_query " << cgroup << ": " << std::strerror(errno);
    return {};
  }
  return std::vector<__u32>(ids, ids + count);
}

bpf_prog_info pinnedProgInfo(const std::string& path) {
  bpf_prog_info info{};
  UniqueFd fd(bpf_obj_get(path.c_str()));
  if (!fd) {
    ADD_FAILURE() << "bpf_obj_get " << path << ": " << std::strerror(errno);
    return info;
  }
  __u32 len = sizeof info;
  if (bpf_obj_get_info_by_fd(fd.get(), &info, &len) != 0)
    ADD_FAILURE() << "prog info " << path << ": " << std::strerror(errno);
  return info;
}

std::uint64_t monotonicNs() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1000000000ull + ts.tv_nsec;
}

template <class F>
bool eventually(F&& f, int ms = 3000) {
  auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
  while (!f()) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return true;
}

class BpfLoadTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) {
      if (requirePrivileged()) FAIL() << "ATLASGATE_REQUIRE_PRIVILEGED=1 but not running as root";
      GTEST_SKIP() << "not root: loading BPF and moving processes between cgroups needs root";
    }
    ASSERT_TRUE(ab::ensureBpffs()) << "bpffs";
    std::string tag = "atlasgate-bpftest-" + std::to_string(::getpid());
    pinRoot_ = "/sys/fs/bpf/" + tag;
    auto mount = ab::findCgroup2Mount();
    ASSERT_TRUE(mount) << mount.error().message;
    mount_ = *mount;
    home_ = *mount + ownCgroup2Path();
    cgroup_ = *mount + "/" + tag;
    ASSERT_TRUE(::mkdir(cgroup_.c_str(), 0755) == 0 || errno == EEXIST) << cgroup_ << ": " << std::strerror(errno);
    made_ = true;
    auto id = ab::cgroupId(cgroup_);
    ASSERT_TRUE(id) << id.error().message;
    cgroupId_ = *id;
    auto netns = ab::currentNetnsCookie();
    ASSERT_TRUE(netns) << netns.error().message;
    netns_ = *netns;
    proxy_ = listenOn(AF_INET, "127.0.0.1", 0);
    ASSERT_TRUE(proxy_) << "listen on 127.0.0.1: " << std::strerror(errno);
    proxyPort_ = localPort(proxy_.get());
  }

  void TearDown() override {
    if (!made_) return;
    leaveCgroup();
    if (loader_) {
      loader_->unpinAll();
      loader_.reset();
    }
    std::error_code ec;
    fs::remove_all(pinRoot_, ec);  // a test that dropped its loader leaves pins
    EXPECT_FALSE(fs::exists(pinRoot_)) << pinRoot_;
    for (pid_t p : cgroupProcs(cgroup_)) writeFile(home_ + "/cgroup.procs", std::to_string(p));
    EXPECT_EQ(::rmdir(cgroup_.c_str()), 0) << cgroup_ << ": " << std::strerror(errno);
  }

  ab::LoaderOptions options() const {
    ab::LoaderOptions o;
    o.pinRoot = pinRoot_;
    o.proxyPort = proxyPort_;
    return o;
  }

  std::unique_ptr<ab::Loader> open(const ab::LoaderOptions& o) {
    auto r = ab::Loader::open(o);
    if (!r) {
      ADD_FAILURE() << "Loader::open: " << r.error().message;
      return nullptr;
    }
    return std::move(*r);
  }

  // loader_ opened with o, attached to the test cgroup, with kTarget4 set.
  void openAttached(const ab::LoaderOptions& o) {
    loader_ = open(o);
    ASSERT_TRUE(loader_);
    auto a = loader_->attach(cgroup_);
    ASSERT_TRUE(a) << a.error().message;
    auto t = loader_->setTargets({{kTarget4, {kTargetIndex, AG_TARGET_STATIC}}});
    ASSERT_TRUE(t) << t.error().message;
  }
  void openAttached() { openAttached(options()); }

  // Moves the test process itself into / out of the test cgroup.
  void enterCgroup() {
    ASSERT_EQ(writeFile(cgroup_ + "/cgroup.procs", std::to_string(::getpid())), 0);
    inCgroup_ = true;
  }
  void leaveCgroup() {
    if (!inCgroup_) return;
    EXPECT_EQ(writeFile(home_ + "/cgroup.procs", std::to_string(::getpid())), 0) << home_;
    inCgroup_ = false;
  }

  ag_flow_key keyOf(const sockaddr_storage& peer) const {
    return ab::flowKey(reinterpret_cast<const sockaddr*>(&peer), netns_);
  }

  std::array<std::int64_t, AG_CNT__MAX> delta(const std::array<std::uint64_t, AG_CNT__MAX>& before) const {
    auto now = loader_->counters();
    std::array<std::int64_t, AG_CNT__MAX> d{};
    for (int i = 0; i < AG_CNT__MAX; ++i) d[i] = static_cast<std::int64_t>(now[i] - before[i]);
    return d;
  }

  // The proxy listener has nothing to accept (for "not redirected").
  void expectNothingOnProxy() {
    auto fd = acceptWithin(proxy_.get(), kNothingMs);
    EXPECT_FALSE(fd) << "a connection reached the proxy listener";
  }

  // A child in the cgroup dials kTarget4:443; the proxy accepts it. Returns
  // the accepted peer address.
  sockaddr_storage expectRedirected(Child& child, UniqueFd& accepted) {
    Report r = child.report();
    EXPECT_EQ(r.joinErr, 0) << std::strerror(r.joinErr);
    EXPECT_EQ(r.err, 0) << "connect: " << std::strerror(r.err);
    sockaddr_storage peer{};
    accepted = acceptWithin(proxy_.get(), kAcceptMs, &peer);
    EXPECT_TRUE(accepted) << "the proxy listener accepted nothing";
    return peer;
  }

  std::string pinRoot_, mount_, home_, cgroup_;
  std::uint64_t cgroupId_ = 0, netns_ = 0;
  UniqueFd proxy_;
  std::uint16_t proxyPort_ = 0;
  std::unique_ptr<ab::Loader> loader_;
  bool made_ = false, inCgroup_ = false;
};

void expectOrigin(const ag_origin& o, const char* addr, pid_t pid, std::uint64_t cgid, std::uint64_t netns,
                  int family = AG_AF_INET) {
  in_addr want{};
  ASSERT_EQ(::inet_pton(AF_INET, addr, &want), 1);
  EXPECT_EQ(0, std::memcmp(o.orig_addr, &want, 4)) << "orig_addr";
  for (int i = 4; i < 16; ++i) EXPECT_EQ(o.orig_addr[i], 0) << "orig_addr[" << i << "]";
  EXPECT_EQ(o.orig_port, htons(443)) << "orig_port in network order";
  EXPECT_EQ(o.family, family);
  EXPECT_EQ(o.pid, static_cast<__u32>(pid));
  EXPECT_EQ(std::string(o.comm, strnlen(o.comm, sizeof o.comm)), kChildComm);
  EXPECT_EQ(o.cgroup_id, cgid);
  EXPECT_EQ(o.netns_cookie, netns);
  EXPECT_EQ(o.target_id, kTargetIndex);
  EXPECT_GT(o.created_ns, 0u);
  EXPECT_LE(o.created_ns, monotonicNs());
}

// ---------------------------------------------------------------- loading --

// The proxy's key for an accepted client is the kernel's: a dual-stack
// listener sees an IPv4 client as ::ffff:a.b.c.d, sockops keyed it as IPv4.
TEST(FlowKey, V4MappedPeersAreKeyedAsIPv4) {
  sockaddr_in6 mapped{};
  mapped.sin6_family = AF_INET6;
  mapped.sin6_port = htons(40001);
  ASSERT_EQ(inet_pton(AF_INET6, "::ffff:127.0.0.7", &mapped.sin6_addr), 1);
  sockaddr_in plain{};
  plain.sin_family = AF_INET;
  plain.sin_port = htons(40001);
  ASSERT_EQ(inet_pton(AF_INET, "127.0.0.7", &plain.sin_addr), 1);
  ag_flow_key a = ab::flowKey(reinterpret_cast<const sockaddr*>(&mapped), 9);
  ag_flow_key b = ab::flowKey(reinterpret_cast<const sockaddr*>(&plain), 9);
  EXPECT_EQ(std::memcmp(&a, &b, sizeof a), 0);
  EXPECT_EQ(a.family, AG_AF_INET);
  EXPECT_EQ(a.port, 40001);
  EXPECT_EQ(a.netns_cookie, 9u);

  sockaddr_in6 v6{};
  v6.sin6_family = AF_INET6;
  v6.sin6_port = htons(443);
  ASSERT_EQ(inet_pton(AF_INET6, "::1", &v6.sin6_addr), 1);
  ag_flow_key c = ab::flowKey(reinterpret_cast<const sockaddr*>(&v6), 9);
  EXPECT_EQ(c.family, AG_AF_INET6);
  EXPECT_EQ(std::memcmp(c.addr, &v6.sin6_addr, 16), 0);

  sockaddr_un path{};
  path.sun_family = AF_UNIX;
  EXPECT_EQ(ab::flowKey(reinterpret_cast<const sockaddr*>(&path), 9).family, 0);
}

TEST_F(BpfLoadTest, ProgramsPassTheVerifierAndArePinned) {
  loader_ = open(options());
  ASSERT_TRUE(loader_);

  EXPECT_EQ(listDir(pinRoot_), (std::set<std::string>{"links", "maps", "progs"}));
  EXPECT_EQ(listDir(pinRoot_ + "/maps"), std::set<std::string>(std::begin(kMapNames), std::end(kMapNames)));
  EXPECT_EQ(listDir(pinRoot_ + "/progs"), std::set<std::string>(std::begin(kProgNames), std::end(kProgNames)));
  // Attached once, at the cgroup2 root, one link per hook.
  EXPECT_EQ(listDir(pinRoot_ + "/links"), linkNames("root"));
  for (std::size_t i = 0; i < std::size(kAttachTypes); ++i)
    EXPECT_TRUE(
        contains(attachedProgs(mount_, kAttachTypes[i]), pinnedProgInfo(pinRoot_ + "/progs/" + kProgNames[i]).id))
        << kProgNames[i] << " is not attached at the root";

  EXPECT_EQ(pinnedProgInfo(pinRoot_ + "/progs/ag_connect4").type, BPF_PROG_TYPE_CGROUP_SOCK_ADDR);
  EXPECT_EQ(pinnedProgInfo(pinRoot_ + "/progs/ag_connect6").type, BPF_PROG_TYPE_CGROUP_SOCK_ADDR);
  EXPECT_EQ(pinnedProgInfo(pinRoot_ + "/progs/ag_sockops").type, BPF_PROG_TYPE_SOCK_OPS);

  EXPECT_TRUE(loader_->attachments().empty());
  EXPECT_EQ(loader_->flowCount(), 0u);
  EXPECT_EQ(loader_->originCount(), 0u);
  // Every process's sockets are judged now (membership walks count them);
  // nothing else may have happened.
  auto c = loader_->counters();
  for (int i = 0; i < AG_CNT__MAX; ++i) {
    if (i != AG_CNT_MEMBER_WALKS) {
      EXPECT_EQ(c[i], 0u) << ag_counter_names[i];
    }
  }

  // The pinned targets map is the one the loader writes.
  ASSERT_TRUE(loader_->setTargets({{kTarget4, {kTargetIndex, AG_TARGET_STATIC}}, {"2001:db8::3", {1, 0}}}));
  UniqueFd map(bpf_obj_get((pinRoot_ + "/maps/ag_targets4").c_str()));
  ASSERT_TRUE(map) << std::strerror(errno);
  in_addr key{};
  ASSERT_EQ(::inet_pton(AF_INET, kTarget4, &key), 1);
  ag_target t{};
  ASSERT_EQ(bpf_map_lookup_elem(map.get(), &key.s_addr, &t), 0);
  EXPECT_EQ(t.id, kTargetIndex);
  EXPECT_EQ(t.flags, static_cast<__u32>(AG_TARGET_STATIC));

  // Replacing the table drops what is no longer listed.
  ASSERT_TRUE(loader_->setTargets({{"2001:db8::3", {1, 0}}}));
  EXPECT_NE(bpf_map_lookup_elem(map.get(), &key.s_addr, &t), 0);
  EXPECT_FALSE(loader_->setTargets({{"not-an-address", {0, 0}}}));
}

TEST_F(BpfLoadTest, AttachAddsAMemberPathIdempotentlyAndDetachRemovesIt) {
  loader_ = open(options());
  ASSERT_TRUE(loader_);
  UniqueFd members(bpf_obj_get((pinRoot_ + "/maps/ag_members").c_str()));
  ASSERT_TRUE(members) << std::strerror(errno);
  const std::string rel = cgroup_.substr(mount_.size() + 1);
  const std::uint64_t key = loader_->memberKey(rel);

  for (int round = 0; round < 2; ++round) {
    SCOPED_TRACE("attach #" + std::to_string(round + 1));
    auto a = loader_->attach(cgroup_);
    ASSERT_TRUE(a) << a.error().message;
    auto att = loader_->attachments();
    ASSERT_EQ(att.size(), 1u);
    EXPECT_EQ(att[0].path, cgroup_);
    EXPECT_EQ(att[0].cgroupId, cgroupId_);
    EXPECT_EQ(loader_->attachedPaths(), std::vector<std::string>{cgroup_});
    ag_member m{};
    ASSERT_EQ(bpf_map_lookup_elem(members.get(), &key, &m), 0);
    EXPECT_EQ(std::string(m.path, m.len), rel);
  }
  // Nothing is attached to the cgroup itself: the root links serve it.
  EXPECT_EQ(listDir(pinRoot_ + "/links"), linkNames("root"));
  for (auto type : kAttachTypes) EXPECT_TRUE(attachedProgs(cgroup_, type).empty()) << "attach type " << type;

  auto d = loader_->detach(cgroup_);
  ASSERT_TRUE(d) << d.error().message;
  EXPECT_TRUE(loader_->attachments().empty());
  EXPECT_TRUE(loader_->attachedPaths().empty());
  ag_member m{};
  EXPECT_NE(bpf_map_lookup_elem(members.get(), &key, &m), 0);
  EXPECT_FALSE(loader_->detach(cgroup_)) << "detaching twice must say it is not attached";

  // A path with no cgroup: refused unless the caller wants it guarded ahead.
  const std::string future = cgroup_ + "-not-yet";
  EXPECT_FALSE(loader_->attach(future));
  ASSERT_TRUE(loader_->attach(future, false));
  auto att = loader_->attachments();
  ASSERT_EQ(att.size(), 1u);
  EXPECT_EQ(att[0].path, future);
  EXPECT_EQ(att[0].cgroupId, 0u);
  ASSERT_TRUE(loader_->detach(future));

  // Paths outside the cgroup2 mount, or too deep for the kernel's walk.
  EXPECT_FALSE(loader_->attach("/tmp", false));
  EXPECT_FALSE(loader_->attach(mount_ + "/../etc", false));
  EXPECT_FALSE(loader_->attach("relative/path", false));
  std::string deep = mount_;
  for (int i = 0; i <= AG_MEMBER_DEPTH_MAX; ++i) deep += "/d";
  EXPECT_FALSE(loader_->attach(deep, false));
  EXPECT_TRUE(loader_->attachments().empty());
}

// -------------------------------------------------------------- behaviour --

TEST_F(BpfLoadTest, TcpToTargetIsRedirectedWithItsOrigin) {
  openAttached();
  auto before = loader_->counters();
  const auto origins = loader_->originCount();

  Child child(cgroup_, tcpConnect(AF_INET, kTarget4, 443));
  UniqueFd accepted;
  Report r = child.report();
  ASSERT_EQ(r.joinErr, 0) << std::strerror(r.joinErr);
  ASSERT_EQ(r.err, 0) << "connect: " << std::strerror(r.err);
  sockaddr_storage peer{};
  accepted = acceptWithin(proxy_.get(), kAcceptMs, &peer);
  ASSERT_TRUE(accepted) << "the proxy listener accepted nothing";
  // The accepted peer is the child's socket.
  EXPECT_EQ(str(peer), str(r.local));
  EXPECT_EQ(loader_->originCount(), origins + 1);

  auto o = loader_->takeFlow(keyOf(peer));
  ASSERT_TRUE(o) << "no flow for " << str(peer);
  expectOrigin(*o, kTarget4, child.pid(), cgroupId_, netns_);
  // sock_create saw the socket made: the origin names its creator.
  EXPECT_EQ(o->flags, static_cast<__u32>(AG_ORIGIN_CREATOR));
  EXPECT_FALSE(loader_->takeFlow(keyOf(peer))) << "takeFlow must consume the entry";

  auto d = delta(before);
  EXPECT_EQ(d[AG_CNT_SOCK_CREATED], 1);
  EXPECT_EQ(d[AG_CNT_CREATOR_UPDATE_ERR], 0);
  EXPECT_EQ(d[AG_CNT_CONNECT4], 1);
  EXPECT_EQ(d[AG_CNT_REDIRECTED4], 1);
  EXPECT_EQ(d[AG_CNT_ESTABLISHED], 1);
  EXPECT_EQ(d[AG_CNT_ESTABLISHED_NO_ORIGIN], 0);
  EXPECT_EQ(d[AG_CNT_ORIGIN_UPDATE_ERR], 0);
  EXPECT_EQ(d[AG_CNT_FLOW_UPDATE_ERR], 0);
  child.finish();
}

TEST_F(BpfLoadTest, OriginIsForgottenWhenTheClientCloses) {
  openAttached();
  auto before = loader_->counters();
  const auto origins = loader_->originCount();
  const auto flows = loader_->flowCount();

  // One flow the "daemon" takes, one it never does: closing removes both.
  Child taken(cgroup_, tcpConnect(AF_INET, kTarget4, 443));
  UniqueFd a1;
  auto peer1 = expectRedirected(taken, a1);
  Child untaken(cgroup_, tcpConnect(AF_INET, kTarget4, 443));
  UniqueFd a2;
  expectRedirected(untaken, a2);
  EXPECT_EQ(loader_->originCount(), origins + 2);
  EXPECT_EQ(loader_->flowCount(), flows + 2);
  EXPECT_TRUE(loader_->takeFlow(keyOf(peer1)));
  EXPECT_EQ(loader_->flowCount(), flows + 1);

  // Client closes first for one, server first for the other.
  taken.finish();
  a1.reset();
  a2.reset();
  untaken.finish();
  EXPECT_TRUE(eventually([&] { return loader_->originCount() == origins; }))
      << "origins left: " << loader_->originCount() - origins;
  EXPECT_TRUE(eventually([&] { return loader_->flowCount() == flows; }))
      << "flows left: " << loader_->flowCount() - flows;
  EXPECT_EQ(delta(before)[AG_CNT_CLOSED], 2);
}

TEST_F(BpfLoadTest, NonTargetAndOtherPortsAreNotRedirected) {
  openAttached();
  auto before = loader_->counters();

  {
    // Non-target on 443: goes where it was going (a listener of our own when
    // 127.0.0.4:443 can be bound, else nowhere: ECONNREFUSED).
    UniqueFd other = listenOn(AF_INET, kOther4, 443);
    Child child(cgroup_, tcpConnect(AF_INET, kOther4, 443));
    Report r = child.report();
    ASSERT_EQ(r.joinErr, 0);
    if (other) {
      EXPECT_EQ(r.err, 0) << std::strerror(r.err);
      EXPECT_TRUE(acceptWithin(other.get(), kAcceptMs)) << "127.0.0.4:443 got nothing";
    }
    expectNothingOnProxy();
    child.finish();
  }
  {
    // Target on another port: reaches the real 127.0.0.3:<port>.
    UniqueFd other = listenOn(AF_INET, kTarget4, 0);
    ASSERT_TRUE(other);
    std::uint16_t port = localPort(other.get());
    Child child(cgroup_, tcpConnect(AF_INET, kTarget4, port));
    Report r = child.report();
    ASSERT_EQ(r.joinErr, 0);
    EXPECT_EQ(r.err, 0) << std::strerror(r.err);
    EXPECT_TRUE(acceptWithin(other.get(), kAcceptMs)) << "127.0.0.3:" << port << " got nothing";
    expectNothingOnProxy();
    child.finish();
  }
  {
    // Target on a closed port: refused by the kernel, not redirected.
    Child child(cgroup_, tcpConnect(AF_INET, kTarget4, 444));
    Report r = child.report();
    EXPECT_EQ(r.err, ECONNREFUSED) << std::strerror(r.err);
    expectNothingOnProxy();
    child.finish();
  }

  auto d = delta(before);
  // A non-target destination is not even looked at (nor counted): the hook
  // runs for every connect() on the machine.
  EXPECT_EQ(d[AG_CNT_CONNECT4], 2);
  EXPECT_EQ(d[AG_CNT_SKIP_NOT_TARGET], 0);
  EXPECT_EQ(d[AG_CNT_SKIP_PORT], 2);
  EXPECT_EQ(d[AG_CNT_REDIRECTED4], 0);
  EXPECT_EQ(d[AG_CNT_ESTABLISHED], 0);
  EXPECT_EQ(loader_->originCount(), 0u);
}

TEST_F(BpfLoadTest, UdpToTargetOn443IsRefused) {
  openAttached();
  auto before = loader_->counters();

  Child quic(cgroup_, udpConnect(kTarget4, 443));
  EXPECT_EQ(quic.report().err, EPERM);
  quic.finish();
  Child other(cgroup_, udpConnect(kOther4, 443));
  EXPECT_EQ(other.report().err, 0);
  other.finish();
  Child dns(cgroup_, udpConnect(kTarget4, 53));
  EXPECT_EQ(dns.report().err, 0);
  dns.finish();

  auto d = delta(before);
  EXPECT_EQ(d[AG_CNT_CONNECT4], 2);  // kOther4 is no target: not looked at
  EXPECT_EQ(d[AG_CNT_UDP_REFUSED], 1);
  EXPECT_EQ(d[AG_CNT_SKIP_NOT_TCP], 0);
  EXPECT_EQ(d[AG_CNT_SKIP_PORT], 1);
  EXPECT_EQ(loader_->originCount(), 0u);
}

TEST_F(BpfLoadTest, UdpIsAllowedWhenRefuseQuicIsOff) {
  auto o = options();
  o.refuseQuic = false;
  openAttached(o);
  auto before = loader_->counters();
  Child quic(cgroup_, udpConnect(kTarget4, 443));
  EXPECT_EQ(quic.report().err, 0);
  quic.finish();
  auto d = delta(before);
  EXPECT_EQ(d[AG_CNT_UDP_REFUSED], 0);
  EXPECT_EQ(d[AG_CNT_SKIP_NOT_TCP], 1);
}

TEST_F(BpfLoadTest, ProcessOutsideTheCgroupIsLeftAlone) {
  openAttached();
  auto before = loader_->counters();
  // Unredirected, it goes to 127.0.0.3:443 itself (normally: refused).
  UniqueFd sock;
  (void)connectTo(AF_INET, SOCK_STREAM, kTarget4, 443, sock);
  expectNothingOnProxy();
  auto d = delta(before);
  EXPECT_EQ(d[AG_CNT_CONNECT4], 0) << "connect4 ran for a process outside the cgroup";
  EXPECT_EQ(d[AG_CNT_REDIRECTED4], 0);
}

TEST_F(BpfLoadTest, TheDaemonsCgroupCannotBeAttachedAndItsPidExemptsNoMember) {
  // The daemon is never a member: attaching its own cgroup, an ancestor of
  // it or the whole hierarchy is refused.
  auto o = options();
  o.daemonTgid = static_cast<std::uint32_t>(::getpid());
  openAttached(o);
  EXPECT_FALSE(loader_->attach(home_));
  EXPECT_FALSE(loader_->attach(mount_));
  if (home_ != mount_) {
    const std::string parent = fs::path(home_).parent_path().string();
    if (parent != mount_) {
      EXPECT_FALSE(loader_->attach(parent));
    }
  }
  // A member whose pid is the daemon's (after the daemon exited, an agent
  // may be given its number) is redirected like any other.
  auto before = loader_->counters();
  enterCgroup();
  UniqueFd sock;
  (void)connectTo(AF_INET, SOCK_STREAM, kTarget4, 443, sock);
  leaveCgroup();
  UniqueFd accepted(acceptWithin(proxy_.get(), kAcceptMs));
  EXPECT_TRUE(accepted) << "a member with the daemon's pid went around the redirect";
  auto d = delta(before);
  EXPECT_EQ(d[AG_CNT_REDIRECTED4], 1);
}

TEST_F(BpfLoadTest, V4MappedDialLandsOnTheIpv4Listener) {
  openAttached();
  auto before = loader_->counters();
  Child child(cgroup_, tcpConnect(AF_INET6, "::ffff:127.0.0.3", 443));
  UniqueFd accepted;
  Report r = child.report();
  ASSERT_EQ(r.err, 0) << std::strerror(r.err);
  EXPECT_EQ(str(r.local).rfind("[::ffff:127.0.0.1]:", 0), 0u) << str(r.local);
  sockaddr_storage peer{};
  accepted = acceptWithin(proxy_.get(), kAcceptMs, &peer);
  ASSERT_TRUE(accepted);
  EXPECT_EQ(peer.ss_family, AF_INET);
  EXPECT_EQ(portOf(peer), portOf(r.local));

  auto o = loader_->takeFlow(keyOf(peer));
  ASSERT_TRUE(o) << "no AF_INET flow for " << str(peer);
  expectOrigin(*o, kTarget4, child.pid(), cgroupId_, netns_, AG_AF_INET);
  auto d = delta(before);
  EXPECT_EQ(d[AG_CNT_CONNECT6], 1);
  EXPECT_EQ(d[AG_CNT_REDIRECTED6], 1);
  EXPECT_EQ(d[AG_CNT_CONNECT4], 0);
  EXPECT_EQ(d[AG_CNT_ESTABLISHED], 1);
  child.finish();
}

TEST_F(BpfLoadTest, NativeIpv6TargetGoesToLoopback6) {
  UniqueFd proxy6 = listenOn(AF_INET6, "::1", proxyPort_);
  if (!proxy6) GTEST_SKIP() << "cannot listen on [::1]:" << proxyPort_ << ": " << std::strerror(errno);
  openAttached();
  ASSERT_TRUE(loader_->setTargets({{kTarget4, {kTargetIndex, 0}}, {"2001:db8::3", {kTargetIndex, 0}}}));
  auto before = loader_->counters();

  Child child(cgroup_, tcpConnect(AF_INET6, "2001:db8::3", 443));
  Report r = child.report();
  ASSERT_EQ(r.err, 0) << std::strerror(r.err);
  sockaddr_storage peer{};
  UniqueFd accepted = acceptWithin(proxy6.get(), kAcceptMs, &peer);
  ASSERT_TRUE(accepted) << "[::1]:" << proxyPort_ << " accepted nothing";
  EXPECT_EQ(str(peer), str(r.local));

  auto o = loader_->takeFlow(keyOf(peer));
  ASSERT_TRUE(o) << "no AF_INET6 flow for " << str(peer);
  in6_addr want{};
  ASSERT_EQ(::inet_pton(AF_INET6, "2001:db8::3", &want), 1);
  EXPECT_EQ(0, std::memcmp(o->orig_addr, &want, 16));
  EXPECT_EQ(o->orig_port, htons(443));
  EXPECT_EQ(o->family, AG_AF_INET6);
  EXPECT_EQ(o->pid, static_cast<__u32>(child.pid()));
  EXPECT_EQ(o->cgroup_id, cgroupId_);
  auto d = delta(before);
  EXPECT_EQ(d[AG_CNT_REDIRECTED6], 1);
  EXPECT_EQ(d[AG_CNT_ESTABLISHED], 1);
  child.finish();
}

TEST_F(BpfLoadTest, ProxyDownFailsClosedAndForgetsTheOrigin) {
  // A proxy port nobody listens on: the daemon is down.
  UniqueFd probe = listenOn(AF_INET, "127.0.0.1", 0);
  ASSERT_TRUE(probe);
  auto o = options();
  o.proxyPort = localPort(probe.get());
  probe.reset();
  openAttached(o);
  auto before = loader_->counters();
  const auto origins = loader_->originCount();

  Child child(cgroup_, tcpConnect(AF_INET, kTarget4, 443));
  EXPECT_EQ(child.report().err, ECONNREFUSED);
  child.finish();
  EXPECT_TRUE(eventually([&] { return loader_->originCount() == origins; }))
      << "the origin of a refused connection stays behind";
  auto d = delta(before);
  EXPECT_EQ(d[AG_CNT_REDIRECTED4], 1);
  EXPECT_EQ(d[AG_CNT_ESTABLISHED], 0);
  EXPECT_EQ(d[AG_CNT_CLOSED], 1);
  EXPECT_EQ(loader_->flowCount(), 0u);
}

TEST_F(BpfLoadTest, DirectDialToTheProxyHasNoFlow) {
  // An agent dialling the terminator itself gets no flow record (the
  // acceptor then refuses it); sockops counts it.
  openAttached();
  auto before = loader_->counters();
  Child child(cgroup_, tcpConnect(AF_INET, "127.0.0.1", proxyPort_));
  Report r = child.report();
  ASSERT_EQ(r.err, 0) << std::strerror(r.err);
  sockaddr_storage peer{};
  UniqueFd accepted = acceptWithin(proxy_.get(), kAcceptMs, &peer);
  ASSERT_TRUE(accepted);
  EXPECT_FALSE(loader_->takeFlow(keyOf(peer)));
  auto d = delta(before);
  EXPECT_EQ(d[AG_CNT_REDIRECTED4], 0);  // loopback is no target: not even looked at
  EXPECT_EQ(d[AG_CNT_ESTABLISHED_NO_ORIGIN], 1);
  EXPECT_EQ(d[AG_CNT_ESTABLISHED], 0);
  EXPECT_EQ(loader_->originCount(), 0u);
  child.finish();
}

// Brings lo up in the calling process's (new) network namespace.
int loopbackUp() {
  UniqueFd s(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!s) return errno;
  ifreq ifr{};
  std::strcpy(ifr.ifr_name, "lo");
  if (::ioctl(s.get(), SIOCGIFFLAGS, &ifr) != 0) return errno;
  ifr.ifr_flags |= IFF_UP;
  if (::ioctl(s.get(), SIOCSIFFLAGS, &ifr) != 0) return errno;
  return 0;
}

TEST_F(BpfLoadTest, AgentInAnotherNetnsIsRedirectedToItsOwnLoopback) {
  openAttached();
  const std::uint16_t port = proxyPort_;

  // No listener in the agent's namespace: connection refused (fail closed).
  Child lonely(cgroup_, [](UniqueFd& sock, sockaddr_storage& local) {
    if (::unshare(CLONE_NEWNET) != 0) return errno;
    if (int e = loopbackUp()) return e;
    return connectTo(AF_INET, SOCK_STREAM, kTarget4, 443, sock, &local);
  });
  Report r = lonely.report();
  EXPECT_EQ(r.err, ECONNREFUSED) << std::strerror(r.err);
  expectNothingOnProxy();
  lonely.finish();

  // A listener in the agent's namespace (the daemon's per-namespace socket)
  // gets it, and the flow is keyed by that namespace's cookie.
  Child child(cgroup_, [port](UniqueFd& sock, sockaddr_storage& local) {
    if (::unshare(CLONE_NEWNET) != 0) return errno;
    if (int e = loopbackUp()) return e;
    UniqueFd listener = listenOn(AF_INET, "127.0.0.1", port);
    if (!listener) return errno;
    if (int e = connectTo(AF_INET, SOCK_STREAM, kTarget4, 443, sock, &local)) return e;
    UniqueFd accepted = acceptWithin(listener.get(), kAcceptMs);
    if (!accepted) return ETIMEDOUT;
    // Kept open until the child exits: closing could end the flow early.
    (void)listener.release();
    (void)accepted.release();
    return 0;
  });
  r = child.report();
  ASSERT_EQ(r.err, 0) << std::strerror(r.err);
  ASSERT_NE(r.netns, 0u);
  EXPECT_NE(r.netns, netns_);
  expectNothingOnProxy();

  ag_flow_key key = keyOf(r.local);  // the client address, as the listener saw it
  EXPECT_FALSE(loader_->takeFlow(key)) << "found under the wrong namespace's cookie";
  key.netns_cookie = r.netns;
  auto o = loader_->takeFlow(key);
  ASSERT_TRUE(o) << "no flow for " << str(r.local) << " in netns " << r.netns;
  expectOrigin(*o, kTarget4, child.pid(), cgroupId_, r.netns);
  child.finish();
}

// ---------------------------------------------------------------- restart --

TEST_F(BpfLoadTest, RestartedLoaderAdoptsThePinnedLinks) {
  openAttached();
  const auto progBefore = pinnedProgInfo(pinRoot_ + "/progs/ag_connect4").id;
  ASSERT_TRUE(contains(attachedProgs(mount_, BPF_CGROUP_INET4_CONNECT), progBefore));

  // The daemon goes away without unpinning: the links stay attached and the
  // redirect keeps working with nobody holding the skeleton.
  loader_.reset();
  EXPECT_EQ(listDir(pinRoot_ + "/links"), linkNames("root"));
  Child between(cgroup_, tcpConnect(AF_INET, kTarget4, 443));
  UniqueFd a1;
  auto peer1 = expectRedirected(between, a1);

  // The next generation picks up links, maps and their contents: the
  // members map gives back the attached path itself.
  loader_ = open(options());
  ASSERT_TRUE(loader_);
  EXPECT_EQ(loader_->attachedPaths(), std::vector<std::string>{cgroup_});
  auto att = loader_->attachments();
  ASSERT_EQ(att.size(), 1u);
  EXPECT_EQ(att[0].path, cgroup_);
  EXPECT_EQ(att[0].cgroupId, cgroupId_);
  auto o1 = loader_->takeFlow(keyOf(peer1));
  ASSERT_TRUE(o1) << "the flow recorded between generations is lost";
  expectOrigin(*o1, kTarget4, between.pid(), cgroupId_, netns_);

  // The same links now run the new generation's programs.
  const auto progAfter = pinnedProgInfo(pinRoot_ + "/progs/ag_connect4").id;
  EXPECT_NE(progAfter, progBefore);
  auto atRoot = attachedProgs(mount_, BPF_CGROUP_INET4_CONNECT);
  EXPECT_TRUE(contains(atRoot, progAfter));
  EXPECT_FALSE(contains(atRoot, progBefore));
  EXPECT_EQ(listDir(pinRoot_ + "/links"), linkNames("root"));

  auto before = loader_->counters();
  Child after(cgroup_, tcpConnect(AF_INET, kTarget4, 443));
  UniqueFd a2;
  auto peer2 = expectRedirected(after, a2);
  auto o2 = loader_->takeFlow(keyOf(peer2));
  ASSERT_TRUE(o2);
  expectOrigin(*o2, kTarget4, after.pid(), cgroupId_, netns_);
  EXPECT_EQ(delta(before)[AG_CNT_REDIRECTED4], 1);
  between.finish();
  after.finish();
}

TEST_F(BpfLoadTest, RestartAppliesTheNewGenerationsConfig) {
  openAttached();
  {
    Child quic(cgroup_, udpConnect(kTarget4, 443));
    EXPECT_EQ(quic.report().err, EPERM);
    quic.finish();
  }
  loader_.reset();
  auto o = options();
  o.refuseQuic = false;
  loader_ = open(o);
  ASSERT_TRUE(loader_);
  EXPECT_EQ(loader_->attachments().size(), 1u);
  Child quic(cgroup_, udpConnect(kTarget4, 443));
  EXPECT_EQ(quic.report().err, 0) << "the adopted links still run the old generation's programs";
  quic.finish();
}

TEST_F(BpfLoadTest, ReCreatedCgroupIsRedirectedFromItsFirstConnection) {
  openAttached();
  // Removed and made again at the same path (a restarted container or
  // systemd unit): a new cgroup id that no one has told the loader about.
  ASSERT_EQ(::rmdir(cgroup_.c_str()), 0) << std::strerror(errno);
  ASSERT_EQ(::mkdir(cgroup_.c_str(), 0755), 0) << std::strerror(errno);
  auto id = ab::cgroupId(cgroup_);
  ASSERT_TRUE(id);
  ASSERT_NE(*id, cgroupId_);
  Child child(cgroup_, tcpConnect(AF_INET, kTarget4, 443));
  UniqueFd accepted;
  auto peer = expectRedirected(child, accepted);
  auto o = loader_->takeFlow(keyOf(peer));
  ASSERT_TRUE(o);
  EXPECT_EQ(o->cgroup_id, *id);
  child.finish();
  cgroupId_ = *id;
}

TEST_F(BpfLoadTest, CgroupsBelowAMemberAreMembersAndSiblingsAreNot) {
  openAttached();
  const std::string child = cgroup_ + "/delegated", sibling = cgroup_ + "-sibling";
  ASSERT_EQ(::mkdir(child.c_str(), 0755), 0) << std::strerror(errno);
  ASSERT_EQ(::mkdir(sibling.c_str(), 0755), 0) << std::strerror(errno);
  {
    Child in(child, tcpConnect(AF_INET, kTarget4, 443));
    UniqueFd accepted;
    expectRedirected(in, accepted);
    in.finish();
  }
  {
    // "<cgroup>-sibling" shares a prefix of bytes, not of path components.
    auto before = loader_->counters();
    Child out(sibling, tcpConnect(AF_INET, kTarget4, 443));
    EXPECT_EQ(out.report().joinErr, 0);
    expectNothingOnProxy();
    out.finish();
    EXPECT_GE(delta(before)[AG_CNT_SKIP_NOT_MEMBER], 1);
  }
  // Detach: a cached "member" verdict must not outlive it.
  ASSERT_TRUE(loader_->detach(cgroup_));
  {
    Child gone(child, tcpConnect(AF_INET, kTarget4, 443));
    EXPECT_EQ(gone.report().joinErr, 0);
    expectNothingOnProxy();
    gone.finish();
  }
  EXPECT_EQ(::rmdir(child.c_str()), 0) << std::strerror(errno);
  EXPECT_EQ(::rmdir(sibling.c_str()), 0) << std::strerror(errno);
}

TEST_F(BpfLoadTest, NestingDeepBelowAMemberDoesNotEscape) {
  // An agent with a delegated subtree nests cgroups far deeper than the
  // levels a member path may have (AG_MEMBER_DEPTH_MAX): the walk keeps the
  // levels nearest the root, so it is still a member.
  openAttached();
  std::vector<std::string> made;
  std::string path = cgroup_;
  for (int i = 0; i < 3 * AG_MEMBER_DEPTH_MAX; ++i) {
    path += "/n";
    ASSERT_EQ(::mkdir(path.c_str(), 0755), 0) << path << ": " << std::strerror(errno);
    made.push_back(path);
  }
  {
    Child deep(path, tcpConnect(AF_INET, kTarget4, 443));
    UniqueFd accepted;
    expectRedirected(deep, accepted);
    deep.finish();
  }
  for (auto it = made.rbegin(); it != made.rend(); ++it) EXPECT_EQ(::rmdir(it->c_str()), 0) << *it;
}

TEST_F(BpfLoadTest, LinksOfTheEarlierPerCgroupLayoutBecomeMembers) {
  // A generation from before the members map left one link per hook on the
  // cgroup itself, pinned as links/<cgroup id>-<prog>.
  {
    auto first = open(options());
    ASSERT_TRUE(first);
  }
  UniqueFd prog(bpf_obj_get((pinRoot_ + "/progs/ag_connect4").c_str()));
  UniqueFd cg(::open(cgroup_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  ASSERT_TRUE(prog && cg);
  UniqueFd link(bpf_link_create(prog.get(), cg.get(), BPF_CGROUP_INET4_CONNECT, nullptr));
  ASSERT_TRUE(link) << std::strerror(errno);
  const std::string legacy = pinRoot_ + "/links/" + std::to_string(cgroupId_) + "-ag_connect4";
  ASSERT_EQ(bpf_obj_pin(link.get(), legacy.c_str()), 0) << std::strerror(errno);
  link.reset();

  loader_ = open(options());
  ASSERT_TRUE(loader_);
  auto att = loader_->attachments();
  ASSERT_EQ(att.size(), 1u);
  EXPECT_EQ(att[0].path, cgroup_);
  EXPECT_EQ(listDir(pinRoot_ + "/links"), linkNames("root"));
  EXPECT_TRUE(attachedProgs(cgroup_, BPF_CGROUP_INET4_CONNECT).empty()) << "the per-cgroup link is still attached";
  ASSERT_TRUE(loader_->setTargets({{kTarget4, {kTargetIndex, AG_TARGET_STATIC}}}));
  Child child(cgroup_, tcpConnect(AF_INET, kTarget4, 443));
  UniqueFd accepted;
  expectRedirected(child, accepted);
  child.finish();
}

TEST_F(BpfLoadTest, SetTargetsKeepsAddressesWrittenNonCanonically) {
  // Addresses typed in a config need not be in inet_ntop's canonical form.
  loader_ = open(options());
  ASSERT_TRUE(loader_);
  ASSERT_TRUE(loader_->setTargets({{"2001:0DB8:0:0::3", {1, 0}}, {kTarget4, {2, 0}}}));
  UniqueFd map6(bpf_obj_get((pinRoot_ + "/maps/ag_targets6").c_str()));
  ASSERT_TRUE(map6);
  ag_addr6 key{};
  ASSERT_EQ(::inet_pton(AF_INET6, "2001:db8::3", key.addr), 1);
  ag_target t{};
  EXPECT_EQ(bpf_map_lookup_elem(map6.get(), &key, &t), 0)
      << "setTargets() added 2001:0DB8:0:0::3 and then deleted it as stale";
}

TEST_F(BpfLoadTest, UnpinAllRemovesThePinRootAndTheAttachments) {
  openAttached();
  std::vector<__u32> ours;
  for (const char* p : kProgNames) ours.push_back(pinnedProgInfo(pinRoot_ + "/progs/" + p).id);
  loader_->unpinAll();
  EXPECT_FALSE(fs::exists(pinRoot_));
  for (std::size_t i = 0; i < std::size(kAttachTypes); ++i)
    EXPECT_FALSE(contains(attachedProgs(mount_, kAttachTypes[i]), ours[i])) << kProgNames[i] << " still at the root";

  Child child(cgroup_, tcpConnect(AF_INET, kTarget4, 443));
  EXPECT_EQ(child.report().joinErr, 0);
  expectNothingOnProxy();  // no longer redirected
  child.finish();
  loader_.reset();
}

}  // namespace
