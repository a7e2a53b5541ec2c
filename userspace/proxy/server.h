#pragma once
// The agent-facing TLS terminator: accepts redirected connections (and only
// those: a peer without a kernel flow record is closed at once), terminates
// TLS with a leaf minted for the SNI, applies the rules, injects the target's
// credential and relays to the target over the shared upstream pool.
//
// This is the transport: accept, admission, TLS, reading requests, holding
// approvals, the credential rounds and the relay. What to do with a request
// is decided in exchange.h, without sockets.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <list>
#include <map>
#include <mutex>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "audit/audit.h"
#include "bpf/abi.h"
#include "config/config.h"
#include "credentials/phantom.h"
#include "net/asio.h"
#include "net/tls_stream.h"
#include "proxy/agents.h"
#include "proxy/approvals.h"
#include "proxy/counters.h"
#include "proxy/exchange.h"
#include "proxy/metrics.h"
#include "mongo/command.h"
#include "policy/policy.h"
#include "proxy/runtime.h"
#include "tls/sni.h"
#include "upstream/call.h"

#include <boost/asio/thread_pool.hpp>

namespace atlasgate::policy {
class Policy;
}
namespace atlasgate::tls {
class ServerContext;
}
namespace atlasgate::mongo {
class SaltedPasswordCache;
}
namespace atlasgate::proxy {
struct MongoConn;
struct MongoMessage;
struct MongoUpstream;
struct AgentHello;
}  // namespace atlasgate::proxy
namespace atlasgate::credentials {
class TokenProvider;
class DigestAuth;
}  // namespace atlasgate::credentials

namespace atlasgate::proxy {

using upstream::PoolError;
using upstream::roundTrip;
using upstream::RoundTripResult;
using upstream::UpstreamConn;  // the upstream pool (upstream/upstream.h), as proxy/ names it
using upstream::UpstreamHostView;
using upstream::UpstreamLimits;
using upstream::UpstreamPool;
using upstream::UpstreamStats;

// "addr:port", "[v6]:port": how logs and audit records name an endpoint.
std::string endpointText(const tcp::endpoint& ep);

struct ConnectionInfo {
  std::uint64_t id;
  std::string agent;
  std::uint32_t pid;
  std::string comm;
  std::string dst;
  std::chrono::steady_clock::time_point since;
  std::uint64_t requests;
  unsigned worker = 0;  // the event loop serving it (0: the daemon's own)
};

// What the workers' servers share: thread-safe.
struct ServerShared {
  credentials::PhantomTokens phantoms;
  std::atomic<std::uint64_t> nextId{1};  // connection numbers, unique across workers
  // limits.max_connections and max_connections_per_agent count every worker.
  std::mutex mu;
  std::uint64_t live = 0;
  std::map<std::string, std::uint32_t, std::less<>> perAgent;  // by agent key
  // Flows waiting in awaitNamed() now, on every worker: unnamed, they share
  // one max_connections_per_agent.
  std::atomic<std::uint32_t> heldForDiscovery{0};
};

// One event loop's server. The daemon's own (worker 0) serves everything;
// with `workers: N` each further worker gets a Server of its own on its own
// io_context (thread), listening on the same port (SO_REUSEPORT) in the
// daemon's network namespace. A worker serves HTTPS targets; a MongoDB or
// all-tls connection it accepts is handed to worker 0, which runs MongoDB,
// classification, pass-through and the listeners in agents' namespaces (and
// hands the HTTPS connections accepted there to the workers in turn).
class Server {
 public:
  // The kernel's record of an accepted connection, consumed (bpf::Loader::take):
  // the peer's address and the network namespace it was accepted in.
  using TakeFlowFn = std::function<std::optional<ag_origin>(const sockaddr* peer, std::uint64_t netnsCookie)>;
  Server(asio::io_context& io, TakeFlowFn takeFlow, tls::ServerContext& tls, UpstreamPool& pool, audit::AuditLog& audit,
         AgentDirectory& agents, Approvals& approvals, std::uint64_t netnsCookie);
  ~Server();

  // Listens on 127.0.0.1:port and [::1]:port (the latter if IPv6 is up);
  // with SO_REUSEPORT when every worker listens on the port (workers > 1).
  Result<void> listen(std::uint16_t port, bool reusePort);
  // Makes this a worker of `home` (worker 0): shares its caps, phantoms and
  // connection numbers, and hands it what only worker 0 serves. Before listen.
  void joinAs(unsigned worker, Server& home);
  // Any thread (reloads run on worker 0 while workers read it).
  void setRuntime(std::shared_ptr<const Runtime> runtime) { std::atomic_store(&runtime_, std::move(runtime)); }
  // How long a flow from under a guard may wait for discovery to name it.
  void setDiscoverySettle(std::chrono::milliseconds settle) { discoverySettle_ = settle; }
  std::shared_ptr<const Runtime> runtime() const { return std::atomic_load(&runtime_); }

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
  // Credential capture (nullptr: off). Outlives the server's sessions.
  void setCaptured(Captured* captured) { captured_ = captured; }

  // Stop accepting; live sessions finish their current exchange. On this
  // server's thread (the daemon posts it to workers).
  void stopAccepting();
  // Cancel whatever is still running (end of drain). On this server's thread.
  void closeAll();

  // This worker's own; the daemon sums them (any thread).
  const Counters& counters() const { return counters_; }
  const credentials::PhantomTokens& phantoms() const { return shared_->phantoms; }
  const RequestMetrics& metrics() const { return metrics_; }
  std::vector<ConnectionInfo> connections() const;  // any thread
  unsigned worker() const { return worker_; }

 private:
  struct Session;
  asio::awaitable<void> acceptLoop(tcp::acceptor& acceptor, std::uint64_t netnsCookie);
  // Caps, then serve (or classify, for all-tls); refuses an unnamed agent.
  void admit(tcp::socket sock, Flow flow);
  // An admitted connection: served here, or handed to the worker that serves it.
  void start(tcp::socket sock, Flow flow);
  void startHere(tcp::socket sock, Flow flow);
  // Moves the socket to `to`'s event loop (its thread) and starts it there.
  void handOff(Server& to, tcp::socket sock, Flow flow);
  // A flow from under a guard that discovery has not named yet: re-asks
  // every 20 ms, up to the settle time, then admit() (which refuses it if
  // it is still unnamed).
  asio::awaitable<void> awaitNamed(tcp::socket sock, Flow flow);
  // Takes one of the `cap` places for such flows; false when all are taken.
  bool holdForDiscovery(std::uint32_t cap);
  asio::awaitable<void> serve(tcp::socket socket, Flow flow);
  // intercept: all-tls: peek at the SNI; terminate a target, splice the rest.
  asio::awaitable<void> classify(tcp::socket socket, Flow flow);
  asio::awaitable<void> passthrough(tcp::socket socket, Flow flow);
  // The MongoDB front end (mongo_session.cpp): a connection to the mongodb
  // targets' port. A ClientHello naming a mongodb target is terminated and
  // served; anything else is spliced through.
  asio::awaitable<void> mongoClassify(tcp::socket socket, Flow flow);
  asio::awaitable<void> mongoServe(tcp::socket socket, Flow flow, const TargetRuntime& target, std::string host,
                                   std::shared_ptr<const Runtime> rt);
  friend struct MongoConn;
  asio::awaitable<MongoUpstream> mongoAtlasgateAuth(const Flow& flow, const Runtime& rt, const TargetRuntime& target,
                                                    const std::string& host, ssl::context& upTls);
  // The agent authenticates itself with a captured database user's phantom
  // password: answered here (SCRAM-SHA-256 server), then atlasgate
  // authenticates upstream as that user with the password Atlas has.
  asio::awaitable<MongoUpstream> mongoAgentAuth(TlsSocket& agent, const Flow& flow, const Runtime& rt,
                                                const TargetRuntime& target, const std::string& host,
                                                const MongoMessage& hello, const AgentHello& h, ssl::context& upTls);
  asio::awaitable<void> mongoFromAgent(MongoConn& c);
  asio::awaitable<void> mongoToAgent(MongoConn& c);
  asio::awaitable<bool> mongoMsg(MongoConn& c, MongoMessage& m);
  asio::awaitable<bool> mongoQuery(MongoConn& c, MongoMessage& m);
  asio::awaitable<bool> mongoForward(MongoConn& c, MongoMessage& m, const mongo::CommandInfo& info,
                                     const policy::Decision& d,
                                     const std::function<asio::awaitable<bool>(const mongo::Doc&)>& answer);
  Result<std::pair<policy::Decision, mongo::CommandInfo>> mongoDecide(MongoConn& c, Result<mongo::CommandInfo> info);
  asio::awaitable<std::string_view> mongoHold(MongoConn& c, const MongoMessage& m, const mongo::CommandInfo& info,
                                              const policy::Decision& d);
  void mongoAudit(MongoConn& c, const mongo::CommandInfo& info, const policy::Decision* d, std::string_view decision,
                  std::string_view error, std::size_t bytesIn);
  // The ClientHello, peeked at (bytes stay in the socket); Sni or not.
  asio::awaitable<tls::HelloPeek> peekHello(tcp::socket& socket);
  // The client TLS context for a mongodb target's upstream (its upstream_ca).
  ssl::context* mongoUpstreamTls(const std::optional<std::string>& caFile);

  struct Conn;      // one HTTP connection's state (server.cpp)
  struct Exchange;  // one request's audit record and keep-alive
  // The TLS handshake; the target the SNI named, or nullptr (close).
  asio::awaitable<const TargetRuntime*> handshake(TlsSocket& stream, const Runtime& rt, const Flow& flow);
  // One request and its answer; false when the connection ends.
  asio::awaitable<bool> exchange(Conn& c);
  // Reads the next request; nullopt when the connection ends (whatever had
  // to be answered and audited was).
  asio::awaitable<std::optional<HttpRequest>> readRequest(Conn& c, Exchange& ex);
  // Holds a request for an operator; nullopt when the agent hung up meanwhile.
  asio::awaitable<std::optional<Step>> hold(Conn& c, Exchange& ex, HttpRequest& req, Hold h);
  // Writes an answer atlasgate gives itself; false when the connection ends.
  asio::awaitable<bool> answer(Conn& c, Exchange& ex, LocalResponse local);
  // Sends the request with its credential, then relays the response.
  asio::awaitable<bool> forward(Conn& c, Exchange& ex, HttpRequest& req, Forward& fwd);
  // The credential rounds: a Digest challenge (or stale nonce) answered, or
  // one token refresh after a 401. Returns the refusal when there is none to
  // relay (no credential, target unreachable).
  asio::awaitable<std::optional<LocalResponse>> sendWithCredential(Conn& c, Exchange& ex, HttpRequest& req,
                                                                   const CredentialRuntime* cred, upstream::Call& call,
                                                                   std::string& token);
  // Streams the response body (chunked stays chunked); false when the connection ends.
  asio::awaitable<bool> relay(Conn& c, Exchange& ex, upstream::Call& call, capture::Tripwire* wire);
  // The tripwire saw a secret: withheld (503 if nothing was sent yet).
  asio::awaitable<bool> tripRelay(Conn& c, Exchange& ex, upstream::Call& call, bool headSent);
  // A 2xx minting answer: read whole, its secrets sealed and swapped for
  // phantoms, sent with a Content-Length; withheld (503) if it cannot be.
  asio::awaitable<bool> relayCaptured(Conn& c, Exchange& ex, upstream::Call& call, const capture::Plan& plan);
  // What Atlas' answer means for the vault: a pending password kept or
  // dropped, deleted objects forgotten.
  void settleCapture(Conn& c, Exchange& ex, const Forward& fwd, unsigned status);
  asio::awaitable<bool> sendCaptured(Conn& c, Exchange& ex, const http::response<http::buffer_body>& head,
                                     std::string& body);
  void finish(Conn& c, Exchange& ex);

  asio::io_context& io_;
  TakeFlowFn takeFlow_;
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
  mutable std::mutex sessionsMu_;  // connections() reads it from the daemon's thread
  std::map<std::uint64_t, Session*> sessions_;
  std::shared_ptr<ServerShared> shared_ = std::make_shared<ServerShared>();
  unsigned worker_ = 0;
  Server* home_ = nullptr;      // a worker's worker 0
  std::vector<Server*> peers_;  // worker 0's workers
  std::size_t nextPeer_ = 0;    // worker 0: whom the next connection from an agents' namespace goes to
  std::chrono::steady_clock::time_point lastAcceptWarning_{};
  std::chrono::steady_clock::time_point lastLimitWarning_{};
  std::chrono::steady_clock::time_point lastUnknownWarning_{};
  std::chrono::milliseconds discoverySettle_{3000};
  Counters counters_;
  Captured* captured_ = nullptr;
  RequestMetrics metrics_;
  std::map<std::string, std::unique_ptr<ssl::context>> mongoTls_;  // by upstream_ca ("" = system trust)
  std::unique_ptr<mongo::SaltedPasswordCache> scramCache_;
  std::unique_ptr<asio::thread_pool> resolvers_;  // dns::resolve blocks
};

}  // namespace atlasgate::proxy
