#pragma once
// The agent-facing TLS terminator: accepts redirected connections (and only
// those: a peer without a kernel flow record is closed at once), terminates
// TLS with a leaf minted for the SNI, applies the rules, injects the target's
// credential and relays to the target over the shared upstream pool.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "audit/audit.h"
#include "bpf/loader.h"
#include "config/config.h"
#include "credentials/phantom.h"
#include "proxy/agents.h"
#include "proxy/approvals.h"
#include "proxy/asio.h"
#include "proxy/metrics.h"
#include "proxy/upstream.h"

namespace atlasgate::policy {
class Policy;
}
namespace atlasgate::tls {
class ServerContext;
}
namespace atlasgate::credentials {
class TokenProvider;
class DigestAuth;
}

namespace atlasgate::proxy {

struct CredentialRuntime {
  std::string name;
  std::string description;          // "service_account:<id>", safe to log
  std::vector<std::string> agents;  // globs; empty = every agent
  std::shared_ptr<credentials::TokenProvider> tokens;  // service accounts
  std::shared_ptr<credentials::DigestAuth> digest;     // API keys
};

struct TargetRuntime {
  std::string host;
  std::uint32_t id = 0;  // the daemon's id for this host: what the kernel's targets maps and flows carry
  std::vector<CredentialRuntime> credentials;
};

// Everything a reload replaces. Sessions hold the snapshot they started with.
struct Runtime {
  std::shared_ptr<const config::Config> config;
  std::shared_ptr<policy::Policy> policy;
  std::vector<TargetRuntime> targets;
  const TargetRuntime* findTarget(std::string_view host) const;
  const TargetRuntime* findTargetById(std::uint32_t id) const;
};

// What the kernel told us about a connection.
struct Flow {
  ag_origin origin{};
  AgentIdentity agent;
  tcp::endpoint originalDst;
  std::string comm;
  std::uint64_t id = 0;  // connection number, for logs
  std::shared_ptr<void> slot;  // this connection's place under the connection caps
};

struct ServerStats {
  std::atomic<std::uint64_t> accepted{0};
  std::atomic<std::uint64_t> refusedNoFlow{0};
  std::atomic<std::uint64_t> refusedUnknownAgent{0};  // socket creator under no attached cgroup
  std::atomic<std::uint64_t> heldForDiscovery{0};     // from under a guard, held until discovery named it
  std::atomic<std::uint64_t> acceptErrors{0};         // accept() failed (EMFILE, ENOMEM...)
  std::atomic<std::uint64_t> handshakeFailures{0};
  std::atomic<std::uint64_t> requests{0};
  std::atomic<std::uint64_t> blocked{0};
  std::atomic<std::uint64_t> rateLimited{0};
  std::atomic<std::uint64_t> approvalsHeld{0};
  std::atomic<std::uint64_t> credentialFailures{0};
  std::atomic<std::uint64_t> credentialRetries{0};  // Digest challenges answered, tokens refreshed after a 401
  std::atomic<std::uint64_t> phantomIssued{0};
  std::atomic<std::uint64_t> phantomRefused{0};
  std::atomic<std::uint64_t> upstreamFailures{0};
  std::atomic<std::uint64_t> upstreamBusy{0};       // 503 ATLASGATE_UPSTREAM_BUSY: no pooled connection in time
  std::atomic<std::uint64_t> refusedOverLimit{0};   // connections closed at once: over max_connections(_per_agent)
  std::atomic<std::uint64_t> badRequests{0};
  std::atomic<std::uint64_t> liveConnections{0};
  std::atomic<std::uint64_t> passthrough{0};  // all-tls: non-target TLS spliced through
};

struct ConnectionInfo {
  std::uint64_t id;
  std::string agent;
  std::uint32_t pid;
  std::string comm;
  std::string dst;
  std::chrono::steady_clock::time_point since;
  std::uint64_t requests;
};

class Server {
 public:
  Server(asio::io_context& io, bpf::Loader& loader, tls::ServerContext& tls, UpstreamPool& pool,
         audit::AuditLog& audit, AgentDirectory& agents, Approvals& approvals, std::uint64_t netnsCookie);
  ~Server();

  // Listens on 127.0.0.1:port and [::1]:port (the latter if IPv6 is up).
  Result<void> listen(std::uint16_t port);
  void setRuntime(std::shared_ptr<const Runtime> runtime) { runtime_ = std::move(runtime); }
  // How long a flow from under a guard may wait for discovery to name it.
  void setDiscoverySettle(std::chrono::milliseconds settle) { discoverySettle_ = settle; }
  std::shared_ptr<const Runtime> runtime() const { return runtime_; }

  // A listening socket opened inside an agent's network namespace (takes the fd).
  Result<void> adoptListener(int fd, bool v6, std::uint64_t netnsCookie);
  // Closes the listeners of a namespace that no agent uses any more.
  void closeListeners(std::uint64_t netnsCookie);
  std::size_t foreignNamespaces() const { return foreign_.size(); }
  // Makes a TCP socket (fd, owned by the caller) inside the agents' network
  // namespace with the given cookie, or fails when that namespace is not
  // served. Pass-through connections of agents outside the daemon's own
  // namespace leave through it; without it (or when it fails) they are reset.
  using NamespaceSocketFn = std::function<Result<int>(std::uint64_t netnsCookie, bool v6)>;
  void setNamespaceSockets(NamespaceSocketFn fn) { namespaceSocket_ = std::move(fn); }

  // Stop accepting; live sessions finish their current exchange.
  void stopAccepting();
  // Cancel whatever is still running (end of drain).
  void closeAll();

  const ServerStats& stats() const { return stats_; }
  const credentials::PhantomTokens& phantoms() const { return phantoms_; }
  const RequestMetrics& metrics() const { return metrics_; }
  std::vector<ConnectionInfo> connections() const;

 private:
  struct Session;
  asio::awaitable<void> acceptLoop(tcp::acceptor& acceptor, std::uint64_t netnsCookie);
  // Caps, then serve (or classify, for all-tls); refuses an unnamed agent.
  void admit(tcp::socket sock, Flow flow);
  // A flow from under a guard that discovery has not named yet: re-asks
  // every 20 ms, up to the settle time, then admit() (which refuses it if
  // it is still unnamed).
  asio::awaitable<void> awaitNamed(tcp::socket sock, Flow flow);
  asio::awaitable<void> serve(tcp::socket socket, Flow flow);
  // intercept: all-tls: peek at the SNI; terminate a target, splice the rest.
  asio::awaitable<void> classify(tcp::socket socket, Flow flow);
  asio::awaitable<void> passthrough(tcp::socket socket, Flow flow);

  struct UpstreamResult {
    bool ok = false;
    beast::error_code ec;
    std::string step;  // connect, write, read
  };
  // Writes req to the target (one retry on a fresh connection when a reused
  // keep-alive one turns out dead) and reads the response head into rpo.
  asio::awaitable<UpstreamResult> sendUpstream(const std::string& host, const std::string& agent,
                                               const config::Limits& limits, http::request<http::string_body>& req,
                                               std::unique_ptr<UpstreamConn>& up, beast::flat_buffer& buffer,
                                               std::optional<http::response_parser<http::buffer_body>>& rpo);
  // Reads and discards the rest of a response body; false if the connection failed.
  asio::awaitable<bool> drainBody(UpstreamConn& up, beast::flat_buffer& buffer,
                                  http::response_parser<http::buffer_body>& parser, std::chrono::seconds timeout);
  // POST /api/oauth/token and /api/oauth/revoke, answered here with phantoms.
  http::response<http::string_body> answerOAuthLocally(const http::request<http::string_body>& req, bool token,
                                                       const std::string& agentKey);
  static std::string agentKey(const Flow& flow);

  asio::io_context& io_;
  bpf::Loader& loader_;
  tls::ServerContext& tls_;
  std::unique_ptr<ssl::context> sslCtx_;
  UpstreamPool& pool_;
  audit::AuditLog& audit_;
  AgentDirectory& agents_;
  Approvals& approvals_;
  std::uint64_t netnsCookie_;
  NamespaceSocketFn namespaceSocket_;
  std::shared_ptr<const Runtime> runtime_;
  std::vector<std::unique_ptr<tcp::acceptor>> acceptors_;
  // Listeners in agents' network namespaces, by namespace cookie.
  std::map<std::uint64_t, std::vector<std::shared_ptr<tcp::acceptor>>> foreign_;
  std::map<std::uint64_t, Session*> sessions_;
  std::uint64_t nextId_ = 1;
  std::map<std::string, std::uint32_t> perAgentConnections_;  // by agent key
  std::chrono::steady_clock::time_point lastAcceptWarning_{};
  std::chrono::steady_clock::time_point lastLimitWarning_{};
  std::chrono::steady_clock::time_point lastUnknownWarning_{};
  std::chrono::milliseconds discoverySettle_{3000};
  std::uint32_t heldForDiscovery_ = 0;  // flows waiting in awaitNamed() now
  ServerStats stats_;
  credentials::PhantomTokens phantoms_;
  RequestMetrics metrics_;
};

}  // namespace atlasgate::proxy
