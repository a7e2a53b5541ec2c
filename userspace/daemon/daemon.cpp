#include "daemon/daemon.h"
#include "daemon/netns.h"
#include "daemon/privileges.h"

#include <sys/resource.h>
#include <sys/stat.h>
#include <malloc.h>
#include <unistd.h>

#include <boost/asio/signal_set.hpp>
#include <boost/asio/post.hpp>
#include <boost/json.hpp>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "admin/admin.h"
#include "audit/audit.h"
#include "bpf/loader.h"
#include "common/log.h"
#include "common/text.h"
#include "config/config.h"
#include "console/server.h"
#include "control/control.h"
#include "credentials/digest.h"
#include "credentials/secret.h"
#include "credentials/token_provider.h"
#include "discovery/container_watcher.h"
#include "discovery/watcher.h"
#include "dns/resolver.h"
#include "health/health.h"
#include "net/asio.h"
#include "policy/policy.h"
#include "proxy/agents.h"
#include "proxy/approvals.h"
#include "proxy/captured.h"
#include "mongo/scram.h"
#include "proxy/mongo_logins.h"
#include "proxy/server.h"
#include "tls/authority.h"
#include "tls/client_context.h"
#include "tls/server_context.h"
#include "daemon/workers.h"
#include "upstream/upstream.h"
#include "vault/vault.h"

namespace atlasgate::daemon {

namespace fs = std::filesystem;
namespace json = boost::json;
using namespace proxy;  // asio, tcp, kUseTuple
using health::assessHealth, health::Health, health::HealthFacts;

namespace {

constexpr std::size_t kMaxAddressesPerHost = 64;

// Each worker has a pool of its own: the caps are shared out among them.
UpstreamLimits upstreamLimits(const config::Limits& l, std::size_t workers) {
  auto share = [workers](std::size_t cap) { return std::max<std::size_t>(1, (cap + workers - 1) / workers); };
  UpstreamLimits u;
  u.maxConnections = share(l.maxUpstreamConnections);
  u.maxPerAgent = share(l.maxUpstreamConnectionsPerAgent);
  u.maxConnecting = share(u.maxConnecting);
  u.queueTimeout = l.upstreamQueueTimeout;
  u.connectTimeout = l.upstreamConnectTimeout;
  return u;
}

// Every agent connection is a file descriptor: take the hard limit.
void raiseFileLimit() {
  struct rlimit rl {};
  if (::getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
  if (rl.rlim_cur < rl.rlim_max) {
    rlim_t was = rl.rlim_cur;
    rl.rlim_cur = rl.rlim_max;
    if (::setrlimit(RLIMIT_NOFILE, &rl) == 0) log::info("open files limit raised from {} to {}", was, rl.rlim_cur);
  }
}

std::string absoluteCgroup(const std::string& mount, const std::string& cgroup) {
  if (!cgroup.empty() && cgroup.front() == '/') return cgroup;
  return mount + "/" + cgroup;
}

// Targets are known by host: each host gets an id once (never reused while
// the daemon runs), which is what the kernel's targets maps and the flows
// carry, so a reload may add, remove and reorder targets.
struct AddressEntry {
  std::uint32_t targetId = 0;  // the kernel's table holds one target per address
  bool isStatic = false;
  std::chrono::steady_clock::time_point retireAt{};  // DNS: when it may be dropped
  std::set<std::uint32_t> targets;  // ids of every target that claims it (two names, one load balancer)
};

class Daemon {
 public:
  explicit Daemon(Options o)
      : opts_(std::move(o)), signals_(io_, SIGTERM, SIGINT, SIGHUP), approvals_(io_.get_executor()) {}
  int run();

 private:
  Result<void> start();
  Result<std::shared_ptr<const Runtime>> buildRuntime(std::shared_ptr<const config::Config> cfg,
                                                      const Runtime* previous);
  Result<void> applyTargets();
  Result<std::shared_ptr<proxy::DatabaseLogins>> databaseLogin(const config::DatabaseUser& u,
                                                               const std::string& description);
  Result<void> temporaryUsers(const config::Config& cfg, Runtime& rt);
  void agentGone(const std::string& name);
  void resolverThread();
  void trimMemory();
  std::uint64_t connectionPeak_ = 0;  // live agent connections, highest since the last trim
  asio::awaitable<void> signalLoop();
  asio::awaitable<void> netnsLoop();
  void scanNamespaces();
  std::vector<std::string> attachedRoots() const;
  asio::awaitable<void> shutdown();
  Result<void> reload();
  // The phases of start().
  Result<void> startTls();
  Result<void> openVault();
  Result<void> publishCa() const;
  Result<void> startKernel(std::shared_ptr<const Runtime> rt);
  Result<void> startEndpoints();
  json::value control(const json::object& req);
  json::value status();
  // The sections of status().
  json::value statusConnections();
  json::value statusCredentials();
  json::value controlCredentials(const std::string& c, const json::object& req);
  json::value statusTargets();
  json::value statusCounters();
  json::value statusUpstream();
  json::value statusBpf();
  json::array statusAttached();
  json::array statusPods();
  json::array statusContainers();
  json::value approvalsJson();
  // listen.console: what the console asks for, and its wiring.
  Result<void> startConsole();
  console::Handlers consoleHandlers();
  json::object consoleAgents();
  Result<void> revokeCaptured(std::string_view name, std::string_view by);
  Result<std::string> consoleExplain(const console::ExplainQuery& q);
  std::string metrics();
  Health health() const;  // what /healthz, status and atlasgate_healthy say
  void writeRuntimeFile();

  Options opts_;
  asio::io_context io_;
  asio::signal_set signals_;
  Approvals approvals_;
  std::shared_ptr<const config::Config> config_;
  std::string cgroupMount_;
  std::string agentsCgroup_;
  std::unique_ptr<bpf::Loader> loader_;
  std::shared_ptr<const tls::Authority> authority_;
  std::unique_ptr<tls::ServerContext> serverTls_;
  std::unique_ptr<UpstreamPool> pool_;
  std::unique_ptr<audit::AuditLog> audit_;
  std::unique_ptr<AgentDirectory> agents_;
  std::unique_ptr<proxy::Captured> captured_;  // credential capture; before server_: outlives its sessions
  std::unique_ptr<Server> server_;
  std::unique_ptr<control::Server> control_;
  std::unique_ptr<admin::Server> admin_;
  std::unique_ptr<console::Server> console_;  // the audit log and approvals_ call into it: cleared in run()
  // workers: N (workers.h): after what they use, so they go first.
  std::vector<std::unique_ptr<Worker>> workers_;
  std::thread::id mainThread_ = std::this_thread::get_id();
  // Runs f on every upstream pool, each on its own thread (waiting for each).
  void forEachPool(const std::function<void(UpstreamPool&)>& f);
  std::vector<Server*> servers();
  std::vector<UpstreamPool*> pools();
  std::uint64_t counterSum(proxy::Counter c);
  UpstreamStats poolStats();
  std::size_t poolIdle();
  std::vector<UpstreamHostView> poolHosts();
  Result<void> startWorkers(const std::shared_ptr<const Runtime>& rt, std::uint64_t netnsCookie);
  void stopWorkers();
  std::unique_ptr<discovery::PodWatcher> pods_;
  struct AttachedPod {
    std::string name;    // namespace/pod
    std::string cgroup;  // absolute
  };
  std::map<std::string, AttachedPod> attachedPods_;  // by pod uid
  std::string podCgroupRoot_;
  Result<void> startDiscovery();
  void podUpsert(const discovery::PodInfo& pod);
  void podDelete(const discovery::PodInfo& pod);
  // discovery.containers: labelled containers of a local Podman/Docker engine.
  std::unique_ptr<discovery::ContainerWatcher> containers_;
  struct AttachedContainer {
    std::string name;        // container/<name>
    std::string cgroup;      // absolute
    std::uint64_t cgroupId;  // a restarted container gets a new cgroup at the same path
    // Stopped, not removed: its path stays a member (and keeps its name), so
    // a start again is redirected from its first connection. Detached by the
    // sweep once stopped for kStoppedContainerKeep with no cgroup at the path.
    std::optional<std::chrono::steady_clock::time_point> stoppedSince;
  };
  static constexpr auto kStoppedContainerKeep = std::chrono::minutes(2);
  std::map<std::string, AttachedContainer> attachedContainers_;  // by container id
  std::string containerGuard_;  // discovery.containers.guard_cgroup, absolute; "" = none
  bool underGuard(const std::string& cgroup) const {
    return !containerGuard_.empty() && cgroup != containerGuard_ && bpf::pathWithin(cgroup, containerGuard_);
  }
  std::map<std::string, std::string> containerProblems_;  // by id: the last one logged
  void containerUpsert(const discovery::ContainerInfo& c);
  void containerDelete(const discovery::ContainerInfo& c);
  // Detaches its path unless it is `keep` (the path it moved to, attached already).
  void containerDetach(std::map<std::string, AttachedContainer>::iterator it, const std::string& keep = {});
  void sweepStoppedContainers();
  std::map<std::string, std::shared_ptr<credentials::TokenProvider>> tokenProviders_;
  std::map<std::string, std::shared_ptr<proxy::TemporaryUsers>> temporaryUsers_;  // by definition
  std::vector<std::string> extraAttached_;  // attached at run time with `atlasgate attach`

  std::mutex addrMu_;  // addresses_ is shared with the resolver thread
  std::map<std::string, AddressEntry> addresses_;
  std::map<std::string, std::uint32_t> targetIds_;  // host -> id (under addrMu_)
  std::uint32_t targetIdLocked(const std::string& host) {
    auto [it, fresh] = targetIds_.try_emplace(host, static_cast<std::uint32_t>(targetIds_.size()));
    return it->second;
  }
  std::map<std::string, std::string> dnsState_;  // host -> last result, for status
  std::thread resolver_;
  std::mutex stopMu_;
  std::condition_variable stopCv_;
  bool stopping_ = false;
  bool forced_ = false;

  struct ForeignNs {
    std::uint64_t cookie = 0;
    int pid = 0;
    int misses = 0;
    int nsfd = -1;  // the namespace, open: its agents' pass-through connections are dialled from it
  };
  std::uint64_t ownNetns_ = 0;
  std::map<std::uint64_t, ForeignNs> netns_;    // by namespace inode, with a listener
  std::map<std::uint64_t, int> netnsFailures_;  // by inode: failed attempts (retried with backoff)
  struct NetnsFailure {
    int pid = 0;
    std::string error;
  };
  std::map<std::uint64_t, NetnsFailure> netnsErrors_;  // by inode: the last failure, for health()
  asio::steady_timer netnsTimer_{io_};
  asio::steady_timer auditTimer_{io_};  // the audit log's deferred flush (one at a time)
};

Result<void> Daemon::start() {
  auto cfg = config::loadConfig(opts_.configPath);
  if (!cfg) return cfg.error();
  config_ = std::make_shared<const config::Config>(std::move(cfg.value()));
  // The rules' meaning is the policy's to check: before anything is created.
  if (auto pol = policy::Policy::compile(config_->rules); !pol) return pol.error();
  log::Level level;
  if (log::parseLevel(config_->logLevel, level)) log::setLevel(level);
  credentials::hardenProcess();
  raiseFileLimit();
  if (::geteuid() != 0)
    return makeError("atlasgate daemon must run as root (it loads BPF programs and attaches cgroups)");

  auto mount = bpf::findCgroup2Mount();
  if (!mount) return mount.error();
  cgroupMount_ = *mount;
  agentsCgroup_ = absoluteCgroup(cgroupMount_, config_->agents.cgroup);
  std::error_code ec;
  fs::create_directories(agentsCgroup_, ec);
  if (ec) return makeError("create agents cgroup {}: {}", agentsCgroup_, ec.message());

  // TLS first: a broken CA or upstream CA should fail before BPF is touched.
  if (auto r = startTls(); !r) return r;
  auto audit = audit::AuditLog::open(config_->auditLog);
  if (!audit) return audit.error();
  audit_ = std::move(audit.value());
  // Records go out in batches (audit.h): a flush after this turn of the
  // loop, or, while records keep coming, after the audit log's linger.
  audit_->setDeferrer([this](std::chrono::microseconds delay, std::function<void()> f) {
    asio::post(io_, [this, delay, f = std::move(f)]() mutable {
      if (delay.count() == 0) return f();
      auditTimer_.expires_after(delay);
      auditTimer_.async_wait([f = std::move(f)](beast::error_code) { f(); });
    });
  });
  auto rt = buildRuntime(config_, nullptr);
  if (!rt) return rt.error();
  if (auto r = startKernel(*rt); !r) return r;
  if (auto r = startEndpoints(); !r) return r;
  if (auto r = startDiscovery(); !r) return r;
  writeRuntimeFile();
  ::malloc_trim(0);  // what parsing the config and making the CA used
  // Everything that needed full root is done; keep only what serving needs.
  if (auto r = dropCapabilities(); !r) return r;
  log::info("capabilities now: {}", effectiveCapabilities());
  for (auto& w : workers_) w->start();  // after the drop: threads keep what they were made with
  if (!workers_.empty()) log::info("{} workers serve agents' HTTPS connections", workers_.size() + 1);
  return {};
}

Result<void> Daemon::startWorkers(const std::shared_ptr<const Runtime>& rt, std::uint64_t netnsCookie) {
  for (auto& w : workers_) {
    w->server = std::make_unique<Server>(
        w->io, [this](const sockaddr* peer, std::uint64_t netns) { return loader_->take(peer, netns); }, *serverTls_,
        *w->pool, *audit_, *agents_, approvals_, netnsCookie);
    w->server->joinAs(w->index, *server_);
    w->server->setRuntime(rt);
    w->server->setCaptured(captured_.get());
    if (auto r = w->server->listen(config_->listen.port, true); !r)
      return makeError("worker {}: {}", w->index, r.error().message);
  }
  return {};
}

std::vector<Server*> Daemon::servers() {
  std::vector<Server*> out{server_.get()};
  for (auto& w : workers_)
    if (w->server) out.push_back(w->server.get());
  return out;
}

std::vector<UpstreamPool*> Daemon::pools() {
  std::vector<UpstreamPool*> out{pool_.get()};
  for (auto& w : workers_) out.push_back(w->pool.get());
  return out;
}

void Daemon::forEachPool(const std::function<void(UpstreamPool&)>& f) {
  f(*pool_);
  for (auto& w : workers_) w->call([&] { f(*w->pool); });
}

std::uint64_t Daemon::counterSum(proxy::Counter c) {
  std::uint64_t n = 0;
  for (Server* s : servers()) n += s->counters().get(c);
  return n;
}

UpstreamStats Daemon::poolStats() {
  UpstreamStats sum = pool_->stats();
  for (auto& w : workers_) sum += w->call([&] { return w->pool->stats(); });
  return sum;
}

std::size_t Daemon::poolIdle() {
  std::size_t n = pool_->idleCount();
  for (auto& w : workers_) n += w->call([&] { return w->pool->idleCount(); });
  return n;
}

std::vector<UpstreamHostView> Daemon::poolHosts() {
  std::vector<UpstreamHostView> out = pool_->hosts();
  for (auto& w : workers_)
    for (const UpstreamHostView& h : w->call([&] { return w->pool->hosts(); }))
      for (UpstreamHostView& o : out) {
        if (o.host != h.host) continue;
        o.open += h.open;
        o.idle += h.idle;
        o.connecting += h.connecting;
        o.waiting += h.waiting;
        o.stats += h.stats;
      }
  return out;
}

// The workers' loops end once their sessions are gone (shutdown() drained
// them); one still busy after the grace makes the exit a forced one. One
// whose handler does not even return then is stuck in a system call: the
// daemon exits there, as nothing it would tear down is safe from that
// thread (the pins stay: agents' connections are refused until a restart).
void Daemon::stopWorkers() {
  for (auto& w : workers_) w->release();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  for (auto& w : workers_) {
    switch (w->finish(deadline, std::chrono::seconds(1))) {
      case Worker::End::InTime: break;
      case Worker::End::Stopped:
        log::warn("worker {} did not finish in time: stopped", w->index);
        forced_ = true;
        break;
      case Worker::End::Stuck:
        log::error("worker {} is stuck in a handler: exiting without cleanup", w->index);
        std::fflush(nullptr);
        std::_Exit(1);
    }
  }
}

Result<void> Daemon::publishCa() const {
  // Only the public certificate and the bundle: pods mount this directory.
  std::error_code pec;
  fs::create_directories(config_->publishCaDir, pec);
  ::chmod(config_->publishCaDir.c_str(), 0755);
  for (const std::string& src : {authority_->paths().caCert, authority_->paths().trustBundle}) {
    fs::path dst = fs::path(config_->publishCaDir) / fs::path(src).filename();
    fs::path tmp = dst;
    tmp += ".tmp";
    fs::copy_file(src, tmp, fs::copy_options::overwrite_existing, pec);
    if (!pec) {
      ::chmod(tmp.c_str(), 0644);
      fs::rename(tmp, dst, pec);
    }
    if (pec) return makeError("publish {} to {}: {}", src, config_->publishCaDir, pec.message());
  }
  log::info("published the CA certificate and trust bundle in {}", config_->publishCaDir);
  return {};
}

Result<void> Daemon::startTls() {
  std::vector<std::string> hosts;
  for (const auto& t : config_->targets) hosts.push_back(t.host);
  auto ca = tls::Authority::loadOrCreate(config_->stateDir, hosts);
  if (!ca) return ca.error();
  authority_ = std::make_shared<const tls::Authority>(std::move(ca.value()));
  if (!config_->publishCaDir.empty())
    if (auto r = publishCa(); !r) return r;
  auto stls = tls::ServerContext::create(authority_);
  if (!stls) return stls.error();
  serverTls_ = std::make_unique<tls::ServerContext>(std::move(stls.value()));
  pool_ = std::make_unique<UpstreamPool>(io_.get_executor());
  for (unsigned i = 1; i < config_->workers; ++i) {
    workers_.push_back(std::make_unique<Worker>(i));
    workers_.back()->pool = std::make_unique<UpstreamPool>(workers_.back()->io.get_executor());
  }
  for (const auto& t : config_->targets) {
    // A mongodb target's servers are dialled by the MongoDB front end, per name.
    if (t.protocol != config::Protocol::Https) continue;
    for (UpstreamPool* pool : pools()) {
      auto cctx = tls::makeClientContext(t.upstreamCa);
      if (!cctx) return makeError("target {}: {}", t.host, cctx.error().message);
      pool->addHost(t.host, cctx.value().release());
    }
  }
  for (UpstreamPool* pool : pools()) pool->setLimits(upstreamLimits(config_->limits, config_->workers));
  return openVault();
}

// Capture on: the vault must open, or the daemon does not start (a minting
// answer would otherwise have nowhere to go but the agent).
Result<void> Daemon::openVault() {
  if (!config_->capture.enabled) {
    log::warn("capture.enabled is false: credentials Atlas mints through atlasgate reach the agents");
    return {};
  }
  const std::string key =
      config_->capture.keyFile.empty() ? config_->stateDir + "/vault.key" : config_->capture.keyFile;
  auto v = vault::Vault::open(config_->stateDir + "/vault.db", key);
  if (!v) return makeError("capture: {}", v.error().message);
  log::info("capture: vault {} holds {} credential(s)", (*v)->path(), (*v)->size());
  captured_ = std::make_unique<proxy::Captured>(io_.get_executor(), *pool_, std::move(*v),
                                                std::chrono::seconds(config_->limits.upstreamTimeout));
  captured_->configure(config_->capture);
  return {};
}

// The BPF programs and maps, the listeners, and the attached cgroups: in
// this order, so that the first redirected connection finds us listening.
Result<void> Daemon::startKernel(std::shared_ptr<const Runtime> rt) {
  bpf::LoaderOptions lo;
  lo.proxyPort = config_->listen.port;
  lo.daemonTgid = static_cast<std::uint32_t>(::getpid());
  lo.refuseQuic = config_->bpf.refuseQuic;
  lo.pinRoot = config_->bpf.pinRoot;
  lo.interceptAll = config_->intercept == config::Intercept::AllTls;
  lo.mongoPort = config::mongodbPort(*config_);
  auto loader = bpf::Loader::open(lo);
  if (!loader) return loader.error();
  loader_ = std::move(loader.value());
  if (auto r = applyTargets(); !r) return r;

  auto cookie = bpf::currentNetnsCookie();
  if (!cookie) return cookie.error();
  agents_ = std::make_unique<AgentDirectory>(cgroupMount_, agentsCgroup_);
  server_ = std::make_unique<Server>(
      io_, [this](const sockaddr* peer, std::uint64_t netns) { return loader_->take(peer, netns); }, *serverTls_,
      *pool_, *audit_, *agents_, approvals_, *cookie);
  server_->setRuntime(rt);
  server_->setCaptured(captured_.get());
  // Listen before attaching, so that the first redirected connection finds us.
  if (auto r = server_->listen(config_->listen.port, !workers_.empty()); !r) return r;
  if (auto r = startWorkers(rt, *cookie); !r) return r;

  if (auto r = loader_->attach(agentsCgroup_); !r) return r;
  for (const auto& p : config_->agents.attach) {
    // A configured path that has no cgroup yet is attached all the same:
    // the kernel redirects its cgroup from the moment it is made (/healthz
    // reports it missing meanwhile).
    if (auto r = loader_->attach(p, false); !r) return r;
  }
  // Every attachment, not only the configured ones: cgroups attached by hand
  // before a restart are attached still (the pins) and their agents must
  // keep their names, or their connections are refused as unknown.
  agents_->setRoots(attachedRoots());
  return {};
}

Result<void> Daemon::startEndpoints() {
  auto ctl = control::Server::start(io_, opts_.runDir + "/control.sock",
                                    [this](const json::object& req) { return control(req); });
  if (!ctl) return ctl.error();
  control_ = std::move(ctl.value());
  if (config_->listen.admin) {
    auto adminToken = admin::readToken(config_->listen);
    if (!adminToken) return adminToken.error();
    auto adm = admin::Server::start(io_, *config_->listen.admin,
                                    {[this] { return metrics(); }, [this] { return health().problems; }},
                                    std::move(adminToken.value()));
    if (!adm) return adm.error();
    admin_ = std::move(adm.value());
  }
  if (config_->listen.console) return startConsole();
  return {};
}

Result<std::shared_ptr<const Runtime>> Daemon::buildRuntime(std::shared_ptr<const config::Config> cfg,
                                                            const Runtime* previous) {
  auto rt = std::make_shared<Runtime>();
  rt->config = cfg;
  auto pol = policy::Policy::compile(cfg->rules);
  if (!pol) return pol.error();
  rt->policy = std::move(pol.value());
  if (previous && previous->policy) rt->policy->adoptStateFrom(*previous->policy);
  std::map<std::string, std::shared_ptr<credentials::TokenProvider>> providers;
  for (const auto& t : cfg->targets) {
    TargetRuntime tr;
    tr.host = t.host;
    tr.protocol = t.protocol;
    {
      std::lock_guard lock(addrMu_);
      tr.id = targetIdLocked(t.host);
    }
    for (const auto& c : t.credentials) {
      CredentialRuntime cr;
      cr.name = c.name;
      cr.description = c.describe();
      cr.agents = c.agents;
      if (c.serviceAccount) {
        const auto& sa = *c.serviceAccount;
        auto secret = credentials::readSecret(sa.clientSecret, "client secret of " + cr.description);
        if (!secret) return secret.error();
        // A provider survives a reload when nothing about it changed, so its
        // token does too.
        std::string key = fmt::format("{}|{}|{}|{}|{}", t.host, sa.clientId, sa.clientSecret.file, sa.clientSecret.env,
                                      std::hash<std::string_view>{}(secret->view()));
        auto it = tokenProviders_.find(key);
        if (it != tokenProviders_.end()) {
          cr.tokens = it->second;
        } else {
          cr.tokens = std::make_shared<credentials::TokenProvider>(
              io_.get_executor(), *pool_, t.host, sa.clientId, std::move(secret.value()), cfg->limits.upstreamTimeout);
        }
        providers[key] = cr.tokens;
      } else if (c.apiKey) {
        auto secret = credentials::readSecret(c.apiKey->privateKey, "private key of " + cr.description);
        if (!secret) return secret.error();
        cr.digest = std::make_shared<credentials::DigestAuth>(c.apiKey->publicKey, std::move(secret.value()));
      } else if (c.databaseUser) {
        auto login = databaseLogin(*c.databaseUser, cr.description);
        if (!login) return login.error();
        cr.database = std::move(login.value());
      }
      tr.credentials.push_back(std::move(cr));
    }
    rt->targets.push_back(std::move(tr));
  }
  if (auto r = temporaryUsers(*cfg, *rt); !r) return r.error();
  tokenProviders_ = std::move(providers);
  return std::shared_ptr<const Runtime>(std::move(rt));
}

Result<std::shared_ptr<proxy::DatabaseLogins>> Daemon::databaseLogin(const config::DatabaseUser& u,
                                                                     const std::string& description) {
  auto secret = credentials::readSecret(u.password, "password of " + description);
  if (!secret) return secret.error();
  if (auto ok = mongo::checkPassword(secret->view()); !ok) return makeError("{}: {}", description, ok.error().message);
  proxy::DatabaseLogin login{u.username, std::string(secret->view()), u.authSource, false};
  return std::shared_ptr<proxy::DatabaseLogins>(std::make_shared<proxy::StaticLogin>(std::move(login)));
}

static asio::awaitable<void> forgetAgent(std::shared_ptr<proxy::TemporaryUsers> users, std::string name) {
  co_await users->forget(std::move(name));
}

// A discovered agent went away: its temporary database users are deleted.
void Daemon::agentGone(const std::string& name) {
  for (auto& [key, users] : temporaryUsers_) asio::co_spawn(io_, forgetAgent(users, name), asio::detached);
}

// A plain function: GCC 12 mishandles the captures of coroutine lambdas.
static asio::awaitable<void> removeTemporaryUsers(std::shared_ptr<proxy::TemporaryUsers> users) {
  co_await users->removeAll();
}

// temporary_user credentials: minted with the credential of their https
// target (config/ checked there is exactly one). A manager survives a reload
// when nothing about it changed, so the users it made do too.
Result<void> Daemon::temporaryUsers(const config::Config& cfg, Runtime& rt) {
  std::map<std::string, std::shared_ptr<proxy::TemporaryUsers>> kept;
  for (std::size_t i = 0; i < cfg.targets.size(); ++i) {
    for (std::size_t k = 0; k < cfg.targets[i].credentials.size(); ++k) {
      const config::Credential& c = cfg.targets[i].credentials[k];
      if (!c.temporaryUser) continue;
      const proxy::TargetRuntime* api = nullptr;
      for (const auto& t : rt.targets)
        if (t.protocol == config::Protocol::Https && !t.credentials.empty() &&
            (c.temporaryUser->apiHost.empty() || t.host == c.temporaryUser->apiHost))
          api = &t;
      if (api == nullptr)
        return makeError("temporary_user of {}: no https target with a credential", rt.targets[i].host);
      const auto& spec = *c.temporaryUser;
      std::string key = fmt::format("{}|{}|{}|{}|{}|{}", cfg.targets[i].host, c.name, spec.groupId, api->host,
                                    api->credentials.front().description, spec.lifetime.count());
      for (const auto& r : spec.roles) key += "|" + r.roleName + "@" + r.databaseName + "." + r.collectionName;
      for (const auto& sc : spec.scopes) key += "|scope:" + sc;
      auto it = temporaryUsers_.find(key);
      auto users = it != temporaryUsers_.end()
                       ? it->second
                       : std::make_shared<proxy::TemporaryUsers>(*pool_, api->host, api->credentials.front(), spec,
                                                                 cfg.limits.upstreamTimeout);
      kept[key] = users;
      rt.targets[i].credentials[k].database = users;
    }
  }
  // Managers a reload dropped: their users are deleted.
  for (auto& [key, users] : temporaryUsers_)
    if (!kept.contains(key)) asio::co_spawn(io_, removeTemporaryUsers(users), asio::detached);
  temporaryUsers_ = std::move(kept);
  return {};
}

Result<void> Daemon::applyTargets() {
  std::map<std::string, ag_target> table;
  std::map<std::uint32_t, const config::Target*> configured;  // by id
  std::map<std::string, std::vector<tcp::endpoint>> byHost;   // every host ever known: removed ones get none
  {
    std::lock_guard lock(addrMu_);
    auto now = std::chrono::steady_clock::now();
    for (const auto& t : config_->targets) configured[targetIdLocked(t.host)] = &t;
    std::erase_if(dnsState_, [&](const auto& kv) {
      return std::none_of(config_->targets.begin(), config_->targets.end(),
                          [&](const config::Target& t) { return t.host == kv.first; });
    });
    for (const auto& [host, id] : targetIds_) byHost[host];
    // Static addresses of the current config.
    for (auto it = addresses_.begin(); it != addresses_.end();)
      it = it->second.isStatic ? addresses_.erase(it) : std::next(it);
    for (const auto& [id, t] : configured)
      for (const auto& a : t->addresses) {
        AddressEntry& e = addresses_[a];
        if (!e.isStatic) e = AddressEntry{id, true, {}, {}};
        e.targets.insert(id);
      }
    for (auto it = addresses_.begin(); it != addresses_.end();) {
      AddressEntry& e = it->second;
      // Resolved addresses of targets a reload removed go with them.
      std::erase_if(e.targets, [&](std::uint32_t id) { return !configured.contains(id); });
      if ((!e.isStatic && e.retireAt <= now) || e.targets.empty()) {
        it = addresses_.erase(it);
        continue;
      }
      if (!e.targets.contains(e.targetId)) e.targetId = *e.targets.begin();
      ++it;
    }
    for (const auto& [addr, e] : addresses_) {
      table[addr] = ag_target{e.targetId, e.isStatic ? static_cast<__u32>(AG_TARGET_STATIC) : 0u};
      // The upstream pool dials only these addresses, whatever address an
      // agent chose; an address two targets share serves both.
      beast::error_code ec;
      auto a = asio::ip::make_address(addr, ec);
      if (ec) continue;
      for (std::uint32_t id : e.targets)
        byHost[configured.at(id)->host].emplace_back(a, configured.at(id)->upstreamPort);
    }
  }
  forEachPool([&](UpstreamPool& pool) {
    for (const auto& [host, endpoints] : byHost) pool.setAddresses(host, endpoints);
  });
  return loader_->setTargets(table);
}

void Daemon::resolverThread() {
  std::map<std::string, std::chrono::steady_clock::time_point> nextAt;
  for (;;) {
    auto cfg = std::atomic_load(&config_);
    auto now = std::chrono::steady_clock::now();
    auto wake = now + std::chrono::seconds(30);
    bool changed = false;
    for (const auto& t : cfg->targets) {
      if (!t.resolve) continue;
      auto& at = nextAt[t.host];
      if (now < at) {
        wake = std::min(wake, at);
        continue;
      }
      auto ans = dns::resolve(t.host, cfg->dns.servers);
      std::lock_guard lock(addrMu_);
      if (!ans) {
        // Keep the addresses we have; try again soon.
        dnsState_[t.host] = ans.error().message;
        at = now + std::min<std::chrono::seconds>(std::chrono::seconds(15), cfg->dns.maxRefresh);
        log::debug("dns: {}", ans.error().message);
      } else {
        auto interval = dns::refreshInterval(ans->ttl, cfg->dns.minRefresh, cfg->dns.maxRefresh);
        at = now + interval;
        std::size_t n = 0;
        const std::uint32_t id = targetIdLocked(t.host);
        for (const auto& a : ans->addresses) {
          if (++n > kMaxAddressesPerHost) break;
          auto& e = addresses_[a];
          if (!e.isStatic) {
            if (e.retireAt == std::chrono::steady_clock::time_point{}) changed = true;
            if (e.targets.empty()) e.targetId = id;
            e.targets.insert(id);
            // Kept through the next refresh and a grace period after it, so
            // agents that resolved it a little earlier are still caught.
            e.retireAt = now + ans->ttl + interval + cfg->dns.grace;
          }
        }
        dnsState_[t.host] = fmt::format("{} address(es), ttl {}s, next refresh in {}s", ans->addresses.size(),
                                        ans->ttl.count(), interval.count());
      }
      wake = std::min(wake, at);
    }
    {
      // Addresses past their grace period go out of the kernel's table too.
      std::lock_guard lock(addrMu_);
      for (const auto& [addr, e] : addresses_)
        if (!e.isStatic && e.retireAt <= now) changed = true;
    }
    if (changed)
      asio::post(io_, [this] {
        if (auto r = applyTargets(); !r) log::warn("updating target addresses: {}", r.error().message);
      });
    std::unique_lock lock(stopMu_);
    if (stopCv_.wait_until(lock, wake, [this] { return stopping_; })) return;
  }
}

asio::awaitable<void> Daemon::signalLoop() {
  for (;;) {
    auto [ec, sig] = co_await signals_.async_wait(kUseTuple);
    if (ec) co_return;
    if (sig == SIGHUP) {
      if (auto r = reload(); !r) log::error("reload refused, the running config stays in force: {}", r.error().message);
      continue;
    }
    log::info("signal {}: draining", sig);
    co_await shutdown();
    co_return;
  }
}

Result<void> Daemon::startDiscovery() {
  if (config_->containers) {
    if (!config_->containers->guardCgroup.empty()) {
      // Attached once, before any container is seen: a container started or
      // restarted later is redirected from its first connection, and held
      // until discovery names it (or refused). The engine may not have made
      // it yet: make it (the engine uses an existing parent as it is).
      containerGuard_ = absoluteCgroup(cgroupMount_, config_->containers->guardCgroup);
      std::error_code gec;
      fs::create_directories(containerGuard_, gec);
      if (gec) return makeError("discovery.containers.guard_cgroup {}: {}", containerGuard_, gec.message());
      if (auto r = loader_->attach(containerGuard_); !r) return r;
      agents_->setGuards({containerGuard_});
      agents_->setRoots(attachedRoots());
      for (Server* s : servers()) s->setDiscoverySettle(config_->containers->settle);
      log::info("containers under {} are redirected from their first connection (guard)", containerGuard_);
    }
    discovery::ContainerWatcherOptions co;
    co.socket = config_->containers->socket;
    co.label = config_->containers->label;
    containers_ = std::make_unique<discovery::ContainerWatcher>(
        io_.get_executor(), co,
        discovery::ContainerWatcherCallbacks{[this](const discovery::ContainerInfo& c) { containerUpsert(c); },
                                             [this](const discovery::ContainerInfo& c) { containerDelete(c); }});
    if (auto r = containers_->start(); !r) return r;
  }
  if (!config_->kubernetes) return {};
  const auto& k = *config_->kubernetes;
  const char* node = std::getenv(k.nodeNameEnv.c_str());
  if (!node || !*node)
    return makeError("discovery.kubernetes: ${} is not set (the DaemonSet sets it from spec.nodeName)", k.nodeNameEnv);
  podCgroupRoot_ = k.cgroupRoot.empty() ? cgroupMount_ : k.cgroupRoot;
  discovery::WatcherOptions wo;
  wo.apiServer = k.apiServer;
  wo.tokenFile = k.tokenFile;
  wo.caFile = k.caFile;
  wo.labelSelector = k.labelSelector;
  wo.nodeName = node;
  pods_ = std::make_unique<discovery::PodWatcher>(
      io_.get_executor(), wo,
      discovery::PodWatcherCallbacks{[this](const discovery::PodInfo& p) { podUpsert(p); },
                                     [this](const discovery::PodInfo& p) { podDelete(p); }});
  if (auto r = pods_->start(); !r) return r;
  log::info("watching pods on node {} with labels {}", node, k.labelSelector);
  return {};
}

void Daemon::podUpsert(const discovery::PodInfo& pod) {
  auto labels = std::make_shared<const std::map<std::string, std::string>>(pod.labels.begin(), pod.labels.end());
  if (auto it = attachedPods_.find(pod.uid); it != attachedPods_.end()) {
    agents_->setName(it->second.cgroup, pod.agentName(), labels);  // labels may have changed
    return;
  }
  if (pod.deleted) return;
  auto cg = discovery::findPodCgroup(podCgroupRoot_, pod);
  if (!cg) {
    log::debug("pod {}: {}", pod.agentName(), cg.error().message);  // no cgroup yet: retried by the sweep
    return;
  }
  if (auto r = loader_->attach(*cg); !r) {
    log::warn("pod {}: {}", pod.agentName(), r.error().message);
    return;
  }
  agents_->setName(*cg, pod.agentName(), labels);
  attachedPods_[pod.uid] = AttachedPod{pod.agentName(), *cg};
  agents_->setRoots(attachedRoots());
  log::info("pod {} attached ({})", pod.agentName(), *cg);
}

void Daemon::podDelete(const discovery::PodInfo& pod) {
  auto it = attachedPods_.find(pod.uid);
  if (it == attachedPods_.end()) return;
  if (auto r = loader_->detach(it->second.cgroup); !r) log::warn("pod {}: {}", it->second.name, r.error().message);
  agents_->forgetName(it->second.cgroup);
  agentGone(it->second.name);
  log::info("pod {} detached", it->second.name);
  attachedPods_.erase(it);
  agents_->setRoots(attachedRoots());
}

void Daemon::containerUpsert(const discovery::ContainerInfo& c) {
  auto labels = std::make_shared<const std::map<std::string, std::string>>(c.labels);
  auto problem = [&](const std::string& why) {  // logged once per container and reason
    std::string& last = containerProblems_[c.id];
    if (last != why) log::warn("{}", why);
    last = why;
  };
  auto cg = discovery::findContainerCgroup(cgroupMount_, c);
  auto cgid = cg ? bpf::cgroupId(*cg) : Result<std::uint64_t>(cg.error());
  auto it = attachedContainers_.find(c.id);
  if (it != attachedContainers_.end()) {
    auto& a = it->second;
    a.stoppedSince.reset();
    // Its cgroup cannot be found right now (a restart in progress, its
    // process not readable), or it is at the same path (restarted: a new
    // cgroup there, redirected by the kernel from its first connection as
    // the path is what the members map holds): keep the attachment, update
    // name, labels and id. Only a container found at another path moves.
    if (!cgid || *cg == a.cgroup) {
      if (cgid && *cgid != a.cgroupId) {
        log::info("{} restarted (new cgroup id {} at {})", c.agentName(), *cgid, a.cgroup);
        a.cgroupId = *cgid;
      }
      a.name = c.agentName();
      agents_->setName(a.cgroup, c.agentName(), labels, LabelKind::Container);
      return;
    }
    // Elsewhere now (re-created by the engine under another parent): the new
    // path is attached before the old one goes, so that no moment leaves
    // the container unredirected; if it cannot be attached, the old stays.
    if (!underGuard(*cg))
      if (auto r = loader_->attach(*cg); !r)
        return problem(
            fmt::format("container {}: {} (its attachment at {} stays)", c.name, r.error().message, a.cgroup));
    containerDetach(it, *cg);
  }
  if (!cgid) {
    problem(fmt::format("container {}: {}", c.name, cgid.error().message));  // retried by the sweep
    return;
  }
  // A cgroup that a pod or another container holds is not taken over.
  for (const auto& [id, other] : attachedContainers_)
    if (other.cgroupId == *cgid)
      return problem(fmt::format("container {}: cgroup {} is already {}'s", c.name, *cg, other.name));
  for (const auto& [uid, pod] : attachedPods_)
    if (pod.cgroup == *cg) return problem(fmt::format("container {}: cgroup {} is pod {}'s", c.name, *cg, pod.name));
  // Under the guard the container is redirected already (from its first
  // connection): naming it is all there is to do.
  if (!underGuard(*cg))
    if (auto r = loader_->attach(*cg); !r) return problem(fmt::format("container {}: {}", c.name, r.error().message));
  containerProblems_.erase(c.id);
  agents_->setName(*cg, c.agentName(), labels, LabelKind::Container);
  attachedContainers_[c.id] = AttachedContainer{c.agentName(), *cg, *cgid, std::nullopt};
  agents_->setRoots(attachedRoots());
  log::info("{} attached ({}, id {})", c.agentName(), *cg, *cgid);
}

void Daemon::containerDetach(std::map<std::string, AttachedContainer>::iterator it, const std::string& keep) {
  const AttachedContainer& a = it->second;
  if (!underGuard(a.cgroup) && a.cgroup != keep)
    if (auto r = loader_->detach(a.cgroup); !r) log::warn("{}: {}", a.name, r.error().message);
  // The path may hold the container's next cgroup already: it is named
  // again when that one is attached.
  agents_->forgetName(a.cgroup);
  if (keep.empty()) agentGone(a.name);  // not a restart: the agent is gone
  log::info("{} detached ({})", a.name, a.cgroup);
  attachedContainers_.erase(it);
  agents_->setRoots(attachedRoots());
}

void Daemon::containerDelete(const discovery::ContainerInfo& c) {
  containerProblems_.erase(c.id);
  auto it = attachedContainers_.find(c.id);
  if (it == attachedContainers_.end()) return;
  if (c.removed) return containerDetach(it);
  // Only stopped: `podman restart` is a stop and a start, and the start
  // makes a new cgroup at the same path. Keeping the path a member (and its
  // name) leaves no moment in which the container is not redirected.
  if (!it->second.stoppedSince) {
    it->second.stoppedSince = std::chrono::steady_clock::now();
    log::info("{} stopped; its cgroup path stays attached for a restart", it->second.name);
  }
}

void Daemon::sweepStoppedContainers() {
  auto now = std::chrono::steady_clock::now();
  for (auto it = attachedContainers_.begin(); it != attachedContainers_.end();) {
    auto next = std::next(it);
    const auto& a = it->second;
    if (a.stoppedSince && now - *a.stoppedSince > kStoppedContainerKeep && !fs::exists(a.cgroup)) containerDetach(it);
    it = next;
  }
}

std::vector<std::string> Daemon::attachedRoots() const {
  std::vector<std::string> roots{agentsCgroup_};
  for (auto& path : loader_->attachedPaths())
    if (path != agentsCgroup_) roots.push_back(std::move(path));
  return roots;
}

void Daemon::scanNamespaces() {
  // Which network namespaces do the agents live in? Every one but ours gets
  // listeners; a namespace nobody uses any more loses them.
  std::map<std::uint64_t, int> seen = namespacesOf(attachedRoots());
  for (auto& [ino, ns] : netns_) ns.misses = seen.contains(ino) ? 0 : ns.misses + 1;
  for (auto it = netns_.begin(); it != netns_.end();) {
    if (it->second.misses >= 2) {
      log::info("network namespace {} has no agents left: closing its listeners", it->first);
      server_->closeListeners(it->second.cookie);
      ::close(it->second.nsfd);  // pass-through flows still pending from it are refused
      it = netns_.erase(it);
    } else {
      ++it;
    }
  }
  for (const auto& [ino, pid] : seen) {
    if (ino == ownNetns_ || netns_.contains(ino)) continue;
    int& failures = netnsFailures_[ino];
    if (failures > 0 && failures % 8 != 0) {  // retry every 8th scan after a failure
      ++failures;
      continue;
    }
    auto l = openListenersIn(pid, config_->listen.port);
    std::string error = l ? std::string() : l.error().message;
    if (l) {
      // Without its IPv4 listener the namespace is not served: a failure
      // like any other (retried, and reported by health()).
      if (auto r = server_->adoptListener(l->fd4, false, l->cookie); !r) {
        error = r.error().message;
        if (l->fd6 >= 0) ::close(l->fd6);
        ::close(l->nsfd);
      }
    }
    if (!error.empty()) {
      if (failures++ == 0) log::warn("agents' network namespace {}: {}", ino, error);
      netnsErrors_[ino] = NetnsFailure{pid, error};
      continue;
    }
    netnsFailures_.erase(ino);
    netnsErrors_.erase(ino);
    if (l->fd6 >= 0)
      if (auto r = server_->adoptListener(l->fd6, true, l->cookie); !r) log::warn("{}", r.error().message);
    netns_[ino] = ForeignNs{l->cookie, pid, 0, l->nsfd};
    log::info("listening in network namespace {} (of pid {}) on 127.0.0.1:{}", ino, pid, config_->listen.port);
  }
  for (auto it = netnsFailures_.begin(); it != netnsFailures_.end();)
    it = seen.contains(it->first) ? std::next(it) : netnsFailures_.erase(it);
  for (auto it = netnsErrors_.begin(); it != netnsErrors_.end();)
    it = netnsFailures_.contains(it->first) ? std::next(it) : netnsErrors_.erase(it);
}

// glibc keeps freed memory for reuse: after 10,000 agent connections have
// come and gone the daemon would stay at their peak for good. When the live
// connections have fallen well below their peak since the last trim, the
// free pages go back to the kernel (malloc_trim; a few ms, every 10 s at most).
void Daemon::trimMemory() {
  const std::uint64_t live = counterSum(proxy::Counter::LiveConnections);
  connectionPeak_ = std::max(connectionPeak_, live);
  if (connectionPeak_ < live + 1024) return;
  ::malloc_trim(0);
  connectionPeak_ = live;
}

asio::awaitable<void> Daemon::netnsLoop() {
  ownNetns_ = netnsInode(::getpid());
  // Pass-through connections of agents in another namespace leave from that
  // namespace; one we do not serve (any more) has none to give, and the flow
  // is refused rather than dialled from ours.
  server_->setNamespaceSockets([this](std::uint64_t cookie, bool v6) -> Result<int> {
    for (const auto& [ino, ns] : netns_)
      if (ns.cookie == cookie) return tcpSocketIn(ns.nsfd, v6);
    return makeError("network namespace with cookie {} is not served (any more)", cookie);
  });
  for (unsigned tick = 0;; ++tick) {
    scanNamespaces();
    if (tick % 20 == 0)
      forEachPool([](UpstreamPool& p) { p.sweep(); });  // every 10 s: idle upstream connections past their time
    if (tick % 20 == 10) trimMemory();
    if (pods_ && tick % 2 == 0)
      for (const auto& p : pods_->pods()) podUpsert(p);  // pods whose cgroup appeared after their event
    if (containers_ && tick % 2 == 1) {
      for (const auto& c : containers_->containers()) containerUpsert(c);  // a cgroup replaced between events
      sweepStoppedContainers();
    }
    netnsTimer_.expires_after(std::chrono::milliseconds(500));
    auto [ec] = co_await netnsTimer_.async_wait(kUseTuple);
    if (ec) co_return;
  }
}

asio::awaitable<void> Daemon::shutdown() {
  server_->stopAccepting();
  for (auto& w : workers_) w->call([&] { w->server->stopAccepting(); });
  asio::steady_timer t(io_);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (counterSum(proxy::Counter::LiveConnections) > 0 && std::chrono::steady_clock::now() < deadline) {
    t.expires_after(std::chrono::milliseconds(100));
    co_await t.async_wait(kUseTuple);
  }
  approvals_.denyAll();
  netnsTimer_.cancel();
  if (pods_) pods_->stop();
  if (containers_) containers_->stop();
  server_->closeAll();
  for (auto& w : workers_) w->call([&] { w->server->closeAll(); });
  // Requests still queued for an upstream connection belong to agents that
  // are gone: they must never be sent. The pool stays open for the revokes.
  forEachPool([](UpstreamPool& p) { p.failWaiters(); });
  // Temporary database users go before the credential that deletes them.
  for (auto& [k, users] : temporaryUsers_) co_await users->removeAll();
  for (auto& [k, p] : tokenProviders_) co_await p->revoke();
  if (control_) control_->stop();
  if (admin_) admin_->stop();
  if (console_) console_->stop();
  forEachPool([](UpstreamPool& p) { p.close(); });
  {
    std::lock_guard lock(stopMu_);
    stopping_ = true;
  }
  stopCv_.notify_all();
  // Closed sessions unwind on their own; whatever is still running after
  // 2 s is cut short by stopping the loop.
  for (int i = 0; i < 20 && counterSum(proxy::Counter::LiveConnections) > 0; ++i) {
    t.expires_after(std::chrono::milliseconds(100));
    co_await t.async_wait(kUseTuple);
  }
  if (counterSum(proxy::Counter::LiveConnections) > 0) {
    forced_ = true;
    io_.stop();
  }
}

Result<void> Daemon::reload() {
  auto cfg = config::loadConfig(opts_.configPath);
  if (!cfg) return cfg.error();
  auto next = std::make_shared<const config::Config>(std::move(cfg.value()));
  // What cannot change without a restart.
  if (next->listen.port != config_->listen.port) return makeError("listen.port changes need a restart");
  if (next->listen.admin != config_->listen.admin) return makeError("listen.admin changes need a restart");
  if (next->listen.console != config_->listen.console || next->listen.consoleSession != config_->listen.consoleSession)
    return makeError("listen.console and listen.console_session changes need a restart");
  if (next->stateDir != config_->stateDir) return makeError("state_dir changes need a restart");
  if (next->capture.enabled != config_->capture.enabled || next->capture.keyFile != config_->capture.keyFile)
    return makeError("capture.enabled and capture.key_file changes need a restart");
  if (next->intercept != config_->intercept) return makeError("intercept changes need a restart");
  if (next->workers != config_->workers) return makeError("workers changes need a restart");
  if (config::mongodbPort(*next) != config::mongodbPort(*config_))
    return makeError("adding or removing mongodb targets, or changing their port, needs a restart");
  // Targets may be added, removed and changed. A host the CA was not made
  // for cannot be added: its name constraints list the hosts, so agents
  // would have to trust a new CA (a restart makes it).
  // New or changed upstream TLS, one per pool (freed if the reload fails).
  std::map<std::string, std::vector<tls::SslCtxPtr>> contexts;
  for (const auto& t : next->targets) {
    const auto& caHosts = authority_->hosts();
    if (std::find(caHosts.begin(), caHosts.end(), t.host) == caHosts.end())
      return makeError(
          "target {} is new to the CA (made for [{}]): adding a host needs a restart, which makes a new "
          "CA that agents must then trust",
          t.host, fmt::join(authority_->hosts(), ", "));
    if (t.protocol == config::Protocol::Mongodb) continue;
    const config::Target* was = nullptr;
    for (const auto& o : config_->targets)
      if (o.host == t.host) was = &o;
    if (was && was->upstreamCa == t.upstreamCa && pool_->hasHost(t.host)) continue;
    for (std::size_t i = 0; i < pools().size(); ++i) {
      auto cctx = tls::makeClientContext(t.upstreamCa);
      if (!cctx) return makeError("target {}: {}", t.host, cctx.error().message);
      contexts[t.host].push_back(std::move(cctx.value()));
    }
  }
  auto rt = buildRuntime(next, server_->runtime().get());
  if (!rt) return rt.error();
  auto adminToken = admin::readToken(next->listen);  // re-read: a rotated token takes effect
  if (!adminToken) return adminToken.error();
  std::atomic_store(&config_, std::shared_ptr<const config::Config>(next));
  for (auto& [host, ctxs] : contexts) {
    std::size_t i = 0;
    forEachPool([&](UpstreamPool& p) { p.setContext(host, ctxs[i++].release()); });  // the pool owns it
  }
  contexts.clear();
  if (auto r = applyTargets(); !r) return r;
  forEachPool([&](UpstreamPool& p) { p.setLimits(upstreamLimits(next->limits, next->workers)); });
  for (const auto& p : next->agents.attach)
    if (auto r = loader_->attach(p, false); !r) log::warn("reload: {}", r.error().message);
  log::Level level;
  if (log::parseLevel(next->logLevel, level)) log::setLevel(level);
  for (Server* srv : servers()) srv->setRuntime(rt.value());
  if (captured_) captured_->configure(next->capture);  // capture.share
  if (admin_) admin_->setToken(std::move(adminToken.value()));
  if (auto r = audit_->reopen(); !r) log::warn("reload: {}", r.error().message);
  log::info("configuration reloaded from {}", opts_.configPath);
  ::malloc_trim(0);  // the previous rules and runtime, once their last user is gone
  return {};
}

json::value Daemon::control(const json::object& req) {
  auto cmd = req.if_contains("cmd");
  std::string c = cmd && cmd->is_string() ? std::string(cmd->as_string()) : "";
  auto fail = [](std::string m) { return json::value(json::object{{"ok", false}, {"error", m}}); };
  if (c == "status") return status();
  if (c == "reload") {
    if (auto r = reload(); !r) return fail(r.error().message);
    return json::object{{"ok", true}};
  }
  if (c == "attach" || c == "detach") {
    auto p = req.if_contains("path");
    if (!p || !p->is_string()) return fail("missing path");
    std::string path = absoluteCgroup(cgroupMount_, std::string(p->as_string()));
    auto r = c == "attach" ? loader_->attach(path) : loader_->detach(path);
    if (!r) return fail(r.error().message);
    agents_->setRoots(attachedRoots());
    return json::object{{"ok", true}, {"path", path}};
  }
  if (c == "credentials" || c == "revoke_credential") return controlCredentials(c, req);
  if (c == "approvals") return approvalsJson();
  if (c == "console_url") {
    if (!console_) return fail("the console is off: set listen.console (README \"Console\")");
    return json::object{{"ok", true}, {"url", console_->signInUrl()}};
  }
  if (c == "decide") {
    auto id = req.if_contains("id");
    auto allow = req.if_contains("allow");
    if (!id || !id->is_int64() || !allow || !allow->is_bool()) return fail("decide needs id and allow");
    if (!approvals_.decide(static_cast<std::uint64_t>(id->as_int64()), allow->as_bool()))
      return fail(fmt::format("no held request with id {}", id->as_int64()));
    return json::object{{"ok", true}};
  }
  return fail("unknown command " + c);
}

json::value Daemon::approvalsJson() {
  json::array list;
  auto now = std::chrono::system_clock::now();
  for (const auto& a : approvals_.pending())
    list.push_back(json::object{{"id", a.id},
                                {"agent", a.agent},
                                {"method", a.method},
                                {"host", a.host},
                                {"path", a.path},
                                {"rule", a.rule},
                                {"body", a.bodyPreview},
                                {"body_leading_whitespace", a.bodyLeadingBlanks},
                                {"body_bytes", a.bodyBytes},
                                {"body_truncated", a.bodyTruncated},
                                {"waiting_s", std::chrono::duration_cast<std::chrono::seconds>(now - a.since).count()},
                                {"timeout_s", a.timeout.count()}});
  return json::object{{"ok", true}, {"approvals", list}};
}

// ---- the console (listen.console) -------------------------------------------

Result<void> Daemon::startConsole() {
  auto srv = console::Server::start(io_, *config_->listen.console, config_->listen.consoleSession, consoleHandlers());
  if (!srv) return srv.error();
  console_ = std::move(srv.value());
  audit_->setObserver([this](const audit::Record& r, std::string_view line) {
    if (std::this_thread::get_id() == mainThread_) {
      console_->feed().push(line, r.agent, r.decision, r.protocol, r.ts);
      return;
    }
    // A worker's record: the console lives on the daemon's thread.
    asio::post(io_, [this, line = std::string(line), agent = r.agent, decision = r.decision, protocol = r.protocol,
                     ts = r.ts] {
      if (console_) console_->feed().push(line, agent, decision, protocol, ts);
    });
  });
  approvals_.setOnChange([this] { console_->approvalsChanged(approvals_.pending().size()); });
  return {};
}

console::Handlers Daemon::consoleHandlers() {
  console::Handlers h;
  h.approvals = [this] { return approvalsJson(); };
  h.decide = [this](std::uint64_t id, bool allow) {
    if (!approvals_.decide(id, allow)) return false;
    log::info("held request {} {} in the console", id, allow ? "allowed" : "denied");
    return true;
  };
  h.agents = [this] { return consoleAgents(); };
  h.rules = [this] { return server_->runtime()->policy->table(); };
  h.explain = [this](const console::ExplainQuery& q) { return consoleExplain(q); };
  h.credentials = [this] {
    json::value captured = captured_ ? controlCredentials("credentials", {}) : json::value(json::object{});
    auto* list = captured.is_object() ? captured.as_object().if_contains("credentials") : nullptr;
    return json::value(json::object{{"capture", captured_ != nullptr},
                                    {"captured", list ? *list : json::array{}},
                                    {"configured", statusCredentials()}});
  };
  h.revoke = [this](std::string_view name) { return revokeCaptured(name, "in the console"); };
  return h;
}

Result<void> Daemon::revokeCaptured(std::string_view name, std::string_view by) {
  if (!captured_) return makeError("credential capture is off (capture.enabled: false)");
  auto r = captured_->revoke(name);
  if (!r) return r.error();
  if (!*r) return makeError("no captured credential named {}", text::forTerminal(name));
  log::info("captured credential {} revoked {}", text::forTerminal(name), by);
  return {};
}

json::object Daemon::consoleAgents() {
  return json::object{{"connections", statusConnections()},
                      {"attached", statusAttached()},
                      {"pods", statusPods()},
                      {"containers", statusContainers()}};
}

// The same question as `atlasgate check --explain`, put to the running rules.
Result<std::string> Daemon::consoleExplain(const console::ExplainQuery& q) {
  auto rt = server_->runtime();
  policy::Request req;
  req.method = q.method;
  req.target = q.path;
  req.host = q.host.empty() ? std::string_view(config_->targets.front().host) : std::string_view(q.host);
  req.agent = q.agent;
  if (q.body) req.body = std::string_view(*q.body);
  return rt->policy->explain(req).render();
}

Health Daemon::health() const {
  HealthFacts f;
  std::set<std::string> stopped;  // kept attached on purpose, for a restart
  for (const auto& [id, c] : attachedContainers_)
    if (c.stoppedSince) stopped.insert(c.cgroup);
  for (auto& path : loader_->attachedPaths()) {
    if (stopped.contains(path)) continue;
    bool exists = bpf::cgroupId(path).ok();
    f.attachments.push_back({std::move(path), exists});
  }
  for (const auto& p : config_->agents.attach) f.configured.push_back({p, bpf::cgroupId(p).ok()});
  for (const auto& [ino, e] : netnsErrors_) f.namespacesWithoutListener.push_back({ino, e.pid, e.error});
  return assessHealth(f);
}

json::value Daemon::statusConnections() {
  json::array conns;
  auto now = std::chrono::steady_clock::now();
  std::vector<proxy::ConnectionInfo> all;
  for (Server* srv : servers())
    for (auto& c : srv->connections()) all.push_back(std::move(c));
  std::sort(all.begin(), all.end(), [](const auto& a, const auto& b) { return a.id < b.id; });
  for (const auto& c : all)
    conns.push_back(json::object{{"id", c.id},
                                 {"worker", c.worker},
                                 {"agent", c.agent},
                                 {"pid", c.pid},
                                 {"comm", c.comm},
                                 {"dst", c.dst},
                                 {"requests", c.requests},
                                 {"age_s", std::chrono::duration_cast<std::chrono::seconds>(now - c.since).count()}});
  return conns;
}

// {"cmd":"credentials"}: the vault's entries, by name (never a secret);
// {"cmd":"revoke_credential","name":N}: one dropped, unusable at once.
json::value Daemon::controlCredentials(const std::string& c, const json::object& req) {
  auto fail = [](std::string m) { return json::value(json::object{{"ok", false}, {"error", m}}); };
  if (!captured_) return fail("credential capture is off (capture.enabled: false)");
  if (c == "revoke_credential") {
    auto n = req.if_contains("name");
    if (!n || !n->is_string()) return fail("revoke_credential needs name");
    if (auto r = revokeCaptured(std::string_view(n->as_string()), "by an operator"); !r) return fail(r.error().message);
    return json::object{{"ok", true}};
  }
  auto all = captured_->list();
  if (!all) return fail(all.error().message);
  json::array list;
  for (const auto& e : *all)
    list.push_back(json::object{{"name", e.name},
                                {"kind", vault::kindName(e.kind)},
                                {"target", e.target},
                                {"owner", e.owner},
                                {"scope", e.scope},
                                {"object", e.object},
                                {"lookup", e.lookup},
                                {"label", e.label},
                                {"created_at", e.createdAt},
                                {"state", e.pending ? "pending" : "active"}});
  return json::object{{"ok", true}, {"credentials", list}};
}

json::value Daemon::statusCredentials() {
  json::array tokens;
  for (const auto& t : server_->runtime()->targets)
    for (const auto& c : t.credentials)
      tokens.push_back(json::object{{"host", t.host},
                                    {"credential", c.description},
                                    {"state", c.tokens ? c.tokens->describeState() : "api key"},
                                    {"fetches", c.tokens ? c.tokens->stats().fetches : 0},
                                    {"failures", c.tokens ? c.tokens->stats().failures : 0}});
  return tokens;
}

json::value Daemon::statusTargets() {
  json::object targets;
  {
    std::lock_guard lock(addrMu_);
    std::map<std::uint32_t, std::string> hostOf;
    for (const auto& [host, id] : targetIds_) hostOf[id] = host;
    for (const auto& [addr, e] : addresses_) {
      auto& entry = targets[hostOf[e.targetId]];
      if (!entry.is_object()) entry = json::object{{"addresses", json::array{}}};
      json::object a{{"address", addr}, {"source", e.isStatic ? "static" : "dns"}};
      if (!e.isStatic)
        a["kept_for_s"] =
            std::chrono::duration_cast<std::chrono::seconds>(e.retireAt - std::chrono::steady_clock::now()).count();
      entry.as_object()["addresses"].as_array().push_back(std::move(a));
    }
    for (const auto& [host, state] : dnsState_) {
      auto& entry = targets[host];
      if (!entry.is_object()) entry = json::object{{"addresses", json::array{}}};
      entry.as_object()["dns"] = state;
    }
  }
  return targets;
}

json::value Daemon::statusCounters() {
  const UpstreamStats pool = poolStats();  // summed over targets (and workers): once
  json::object counters;
  for (const auto& row : proxy::kCounterTable) counters[row.status] = counterSum(row.counter);
  counters["approvals_refused"] = approvals_.refused();
  counters["phantom_tokens_live"] = server_->phantoms().size();
  counters["audit_written"] = audit_->written();
  counters["audit_lost"] = audit_->lost();
  counters["upstream_idle"] = poolIdle();
  counters["upstream_connects"] = pool.connects;
  counters["upstream_reuses"] = pool.reuses;
  auto tc = serverTls_->counters();
  counters["tls_refused_unknown_sni"] = tc.refusedUnknownSni;
  counters["tls_refused_missing_sni"] = tc.refusedMissingSni;
  counters["tls_leaves_minted"] = tc.leavesMinted;
  counters["tls_evicted_names"] = tc.evictedNames;  // names under a pattern pushed out by newer ones
  return counters;
}

json::value Daemon::statusUpstream() {
  json::array upstream;
  for (const auto& h : poolHosts())
    upstream.push_back(json::object{{"host", h.host},
                                    {"open", h.open},
                                    {"idle", h.idle},
                                    {"connecting", h.connecting},
                                    {"waiting", h.waiting},
                                    {"addresses", h.addresses},
                                    {"max", config_->limits.maxUpstreamConnections},
                                    {"connects", h.stats.connects},
                                    {"connect_failures", h.stats.connectFailures},
                                    {"queued", h.stats.queued},
                                    {"queue_timeouts", h.stats.queueTimeouts},
                                    {"queue_wait_s", h.stats.queueWaitSeconds}});
  return upstream;
}

json::value Daemon::statusBpf() {
  json::object bpfc;
  auto bc = loader_->counters();
  for (int i = 0; i < AG_CNT__MAX; ++i) bpfc[ag_counter_names[i]] = bc[i];
  bpfc["flows_pending"] = loader_->flowCount();
  bpfc["origins"] = loader_->originCount();
  return bpfc;
}

json::array Daemon::statusAttached() {
  json::array agents;
  for (const auto& a : loader_->attachments())
    agents.push_back(json::object{{"cgroup", a.path}, {"cgroup_id", a.cgroupId}});
  return agents;
}

json::array Daemon::statusPods() {
  json::array pods;
  for (const auto& [uid, p] : attachedPods_)
    pods.push_back(json::object{{"pod", p.name}, {"uid", uid}, {"cgroup", p.cgroup}});
  return pods;
}

json::array Daemon::statusContainers() {
  json::array cs;
  for (const auto& [id, a] : attachedContainers_)
    cs.push_back(json::object{{"container", a.name},
                              {"id", id},
                              {"cgroup", a.cgroup},
                              {"cgroup_id", a.cgroupId},
                              {"state", a.stoppedSince ? "stopped" : "running"}});
  return cs;
}

json::value Daemon::status() {
  json::object o;
  o["ok"] = true;
  {
    Health h = health();
    json::array problems;
    for (auto& p : h.problems) problems.push_back(json::string(p));
    o["health"] = json::object{{"state", h.state()}, {"problems", std::move(problems)}};
  }
  o["pid"] = ::getpid();
  o["config"] = opts_.configPath;
  o["listen_port"] = config_->listen.port;
  json::array workers;  // each event loop's share
  for (Server* srv : servers())
    workers.push_back(json::object{{"worker", srv->worker()},
                                   {"accepted", srv->counters().get(proxy::Counter::Accepted)},
                                   {"live_connections", srv->counters().get(proxy::Counter::LiveConnections)},
                                   {"requests", srv->counters().get(proxy::Counter::Requests)}});
  o["workers"] = std::move(workers);
  o["attached"] = statusAttached();
  o["connections"] = statusConnections();
  o["credentials"] = statusCredentials();
  o["targets"] = statusTargets();
  o["counters"] = statusCounters();
  o["upstream"] = statusUpstream();
  o["bpf"] = statusBpf();
  o["approvals_pending"] = approvals_.pending().size();
  if (captured_) {
    auto all = captured_->list();
    o["capture"] = json::object{{"enabled", true}, {"vault_entries", all ? all->size() : 0}};
  } else {
    o["capture"] = json::object{{"enabled", false}};
  }
  json::array nss;
  for (const auto& [ino, ns] : netns_)
    nss.push_back(json::object{{"netns", ino}, {"cookie", ns.cookie}, {"pid", ns.pid}});
  o["agent_namespaces"] = nss;
  if (pods_) o["kubernetes"] = json::object{{"watch", pods_->describe()}, {"attached_pods", statusPods()}};
  if (containers_) {
    o["containers"] = json::object{
        {"watch", containers_->describe()}, {"attached_containers", statusContainers()}, {"guard", containerGuard_}};
  }
  return o;
}

std::string Daemon::metrics() {
  std::string out;
  if (workers_.empty()) {
    out = server_->metrics().render();
  } else {
    proxy::RequestMetrics merged;
    for (Server* srv : servers()) merged.merge(srv->metrics());
    out = merged.render();
  }
  auto counter = [&out](std::string_view name, std::string_view help, std::string_view type) {
    fmt::format_to(std::back_inserter(out), "# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
  };
  counter("atlasgate_healthy",
          "1 when /healthz says ok, 0 when degraded (the reasons: GET /healthz, atlasgate status).", "gauge");
  fmt::format_to(std::back_inserter(out), "atlasgate_healthy {}\n", health().ok() ? 1 : 0);
  for (const auto& row : proxy::kCounterTable) {
    counter(row.metric, row.help, row.gauge ? "gauge" : "counter");
    fmt::format_to(std::back_inserter(out), "{} {}\n", row.metric, counterSum(row.counter));
  }
  counter("atlasgate_upstream_pool_idle", "Idle upstream connections kept for reuse.", "gauge");
  fmt::format_to(std::back_inserter(out), "atlasgate_upstream_pool_idle {}\n", poolIdle());
  auto hostViews = poolHosts();
  auto perHost = [&](const char* name, const char* help, const char* type, auto value) {
    counter(name, help, type);
    for (const auto& h : hostViews)
      fmt::format_to(std::back_inserter(out), "{}{{host=\"{}\"}} {}\n", name, proxy::promLabel(h.host), value(h));
  };
  perHost("atlasgate_upstream_pool_open", "Upstream connections open (busy, idle, connecting), by target.", "gauge",
          [](const UpstreamHostView& h) { return h.open; });
  perHost("atlasgate_upstream_pool_max", "Cap on upstream connections per target (limits.max_upstream_connections).",
          "gauge", [&](const UpstreamHostView&) { return config_->limits.maxUpstreamConnections; });
  perHost("atlasgate_upstream_queue_length", "Requests waiting for a free upstream connection now.", "gauge",
          [](const UpstreamHostView& h) { return h.waiting; });
  perHost("atlasgate_upstream_queued_total", "Requests that found no idle upstream connection and waited.", "counter",
          [](const UpstreamHostView& h) { return h.stats.queued; });
  perHost("atlasgate_upstream_queue_timeouts_total",
          "Requests that waited past limits.upstream_queue_timeout (503 ATLASGATE_UPSTREAM_BUSY).", "counter",
          [](const UpstreamHostView& h) { return h.stats.queueTimeouts; });
  perHost("atlasgate_upstream_queue_wait_seconds_total", "Time requests spent waiting for an upstream connection.",
          "counter", [](const UpstreamHostView& h) { return fmt::format("{:.6f}", h.stats.queueWaitSeconds); });
  perHost("atlasgate_upstream_connect_failures_total", "Failed upstream TCP/TLS connection attempts.", "counter",
          [](const UpstreamHostView& h) { return h.stats.connectFailures; });
  counter("atlasgate_upstream_connects_total", "Upstream TLS connections opened, by TLS session resumption.",
          "counter");
  const UpstreamStats pool = poolStats();  // summed over targets (and workers): once
  fmt::format_to(std::back_inserter(out), "atlasgate_upstream_connects_total{{resumed=\"false\"}} {}\n",
                 pool.connects - pool.resumedSessions);
  fmt::format_to(std::back_inserter(out), "atlasgate_upstream_connects_total{{resumed=\"true\"}} {}\n",
                 pool.resumedSessions);
  counter("atlasgate_token_refreshes_total", "Service-account token fetches, by credential and result.", "counter");
  for (const auto& t : server_->runtime()->targets)
    for (const auto& c : t.credentials)
      if (c.tokens) {
        const auto& ts = c.tokens->stats();
        fmt::format_to(std::back_inserter(out),
                       "atlasgate_token_refreshes_total{{credential=\"{}\",result=\"ok\"}} {}\n"
                       "atlasgate_token_refreshes_total{{credential=\"{}\",result=\"error\"}} {}\n",
                       proxy::promLabel(c.description), ts.fetches - ts.failures, proxy::promLabel(c.description),
                       ts.failures);
      }
  counter("atlasgate_audit_records_lost_total", "Audit records that could not be written.", "counter");
  fmt::format_to(std::back_inserter(out), "atlasgate_audit_records_lost_total {}\n", audit_->lost());
  counter("atlasgate_approvals_pending", "Requests held by approve rules now.", "gauge");
  fmt::format_to(std::back_inserter(out), "atlasgate_approvals_pending {}\n", approvals_.pending().size());
  counter("atlasgate_approvals_refused_total", "Requests not held: a max_held_* cap was reached (429).", "counter");
  fmt::format_to(std::back_inserter(out), "atlasgate_approvals_refused_total {}\n", approvals_.refused());
  counter("atlasgate_bpf_events_total", "Kernel-side events of the BPF programs (per-CPU counters summed).", "counter");
  auto bc = loader_->counters();
  for (int i = 0; i < AG_CNT__MAX; ++i)
    fmt::format_to(std::back_inserter(out), "atlasgate_bpf_events_total{{event=\"{}\"}} {}\n", ag_counter_names[i],
                   bc[i]);
  counter("atlasgate_bpf_flows_pending", "Established redirected connections not yet accepted.", "gauge");
  fmt::format_to(std::back_inserter(out), "atlasgate_bpf_flows_pending {}\n", loader_->flowCount());
  return out;
}

void Daemon::writeRuntimeFile() {
  json::object o{{"pid", ::getpid()},
                 {"agents_cgroup", agentsCgroup_},
                 {"ca_cert", authority_->paths().caCert},
                 {"trust_bundle", authority_->paths().trustBundle},
                 {"listen_port", config_->listen.port},
                 {"control_socket", opts_.runDir + "/control.sock"},
                 {"config", opts_.configPath}};
  std::string tmp = opts_.runDir + "/runtime.json.tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << json::serialize(o) << "\n";
  }
  ::chmod(tmp.c_str(), 0644);
  std::error_code ec;
  fs::rename(tmp, opts_.runDir + "/runtime.json", ec);
}

int Daemon::run() {
  if (auto r = start(); !r) {
    log::error("{}", r.error().message);
    return 1;
  }
  resolver_ = std::thread([this] { resolverThread(); });
  asio::co_spawn(io_, signalLoop(), asio::detached);
  asio::co_spawn(io_, netnsLoop(), asio::detached);
  log::info("atlasgate ready: {} target(s), listening on port {}, agents cgroup {}", config_->targets.size(),
            config_->listen.port, agentsCgroup_);
  io_.run();
  stopWorkers();
  audit_->setDeferrer(nullptr);
  audit_->flush();               // a stopped loop runs no deferred flush: nothing gathered is lost
  audit_->setObserver(nullptr);  // the console goes before the audit log and approvals_
  approvals_.setOnChange(nullptr);
  {
    std::lock_guard lock(stopMu_);
    stopping_ = true;
  }
  stopCv_.notify_all();
  if (resolver_.joinable()) resolver_.join();
  std::error_code ec;
  fs::remove(opts_.runDir + "/runtime.json", ec);
  if (!config_->bpf.keepOnExit) {
    loader_->unpinAll();
  } else {
    log::info(
        "BPF programs stay attached (bpf.keep_on_exit): agents' Atlas connections are refused until atlasgate "
        "restarts");
  }
  log::info("atlasgate stopped");
  if (forced_) {
    // Sessions that did not finish in time still hold frames on the loop;
    // tearing those down would touch freed state. Nothing is left to flush.
    std::fflush(nullptr);
    std::_Exit(0);
  }
  return 0;
}

}  // namespace

int run(const Options& options) {
  Daemon d(options);
  return d.run();
}

}  // namespace atlasgate::daemon
