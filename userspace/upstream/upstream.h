#pragma once
// The daemon's TLS connections to the targets (Atlas): verified against the
// target's host name, kept alive and shared across agents, TLS sessions
// resumed.
//
// Where they go: only to addresses atlasgate chose itself (the target's
// configured `addresses` and atlasgate's own DNS answers, given with
// setAddresses), never to the address an agent dialled. An address that fails
// is tried last for a while; it never makes the pool refuse the others.
//
// How many: at most `maxConnections` per target (busy, idle and connecting
// together), of which one agent may hold at most `maxPerAgent` at a time (an
// agent that reads its responses slowly, or not at all, keeps only its own
// share busy). A request that finds no idle connection waits in a FIFO queue;
// it is served by whichever comes first, a connection another request
// releases or a new one. atlasgate's own requests (the token endpoint) go to
// the front of the queue and may use one connection beyond the cap, so no
// agent can keep the credential from being refreshed. New connections are opened only while requests wait,
// at most `maxConnecting` at a time per target, so a burst of agents never
// becomes a burst of TCP/TLS handshakes against the target (whose accept
// backlog would drop SYNs; a dropped SYN costs a 1 s kernel retransmit). A
// request still waiting after `queueTimeout` gets an error (503
// ATLASGATE_UPSTREAM_BUSY), never a hang. A failed connect fails the waiting
// requests only when nothing else could serve them (no other connection open
// or being opened).

#include <chrono>
#include <cstdint>
#include <list>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "net/asio.h"
#include "net/tls_stream.h"

namespace atlasgate::upstream {

using namespace net;  // the Asio/Beast vocabulary (net/asio.h): asio, beast, http, ssl, tcp, kUseTuple

struct UpstreamHost;

struct UpstreamConn {
  UpstreamConn(asio::any_io_executor ex, ssl::context& ctx, std::shared_ptr<UpstreamHost> owner);
  ~UpstreamConn();  // gives its slot back to the target's pool
  UpstreamConn(const UpstreamConn&) = delete;
  UpstreamConn& operator=(const UpstreamConn&) = delete;

  TlsSocket stream;
  std::shared_ptr<UpstreamHost> owner;
  tcp::endpoint endpoint;
  std::string holder;  // the agent using it now ("" = idle, or atlasgate's own request)
  bool held = false;   // counted in its holder's share
  std::chrono::steady_clock::time_point idleSince{};
  std::uint64_t uses = 0;
  // Kept with the connection, capacity and all, from request to request:
  // what was read past the last response (empty when it is pooled) and the
  // head of the request being written.
  beast::flat_buffer buffer;
  std::string head;
  // Zeroes the buffer's storage (what was read through it is decrypted).
  void scrub();
};

struct UpstreamLimits {
  std::size_t maxConnections = 64;
  std::size_t maxPerAgent = 16;
  std::size_t maxConnecting = 8;
  std::chrono::milliseconds queueTimeout{10000};
  std::chrono::milliseconds connectTimeout{10000};
};

struct UpstreamStats {
  std::uint64_t connects = 0;
  std::uint64_t connectFailures = 0;
  std::uint64_t reuses = 0;
  std::uint64_t resumedSessions = 0;
  std::uint64_t queued = 0;         // requests that had to wait for a connection
  std::uint64_t queueTimeouts = 0;  // ... and gave up (503 ATLASGATE_UPSTREAM_BUSY)
  double queueWaitSeconds = 0;      // total time spent waiting

  UpstreamStats& operator+=(const UpstreamStats& o) {
    connects += o.connects;
    connectFailures += o.connectFailures;
    reuses += o.reuses;
    resumedSessions += o.resumedSessions;
    queued += o.queued;
    queueTimeouts += o.queueTimeouts;
    queueWaitSeconds += o.queueWaitSeconds;
    return *this;
  }
};

// One target's pool, as status and /metrics show it.
struct UpstreamHostView {
  std::string host;
  std::size_t open = 0;  // busy + idle + connecting
  std::size_t idle = 0;
  std::size_t connecting = 0;
  std::size_t waiting = 0;
  std::size_t addresses = 0;
  UpstreamStats stats;
};

// Pool errors besides socket and TLS errors.
enum class PoolError { QueueTimeout = 1, NoAddress, Closed };
const beast::error_category& poolCategory();
inline beast::error_code make_error_code(PoolError e) { return {static_cast<int>(e), poolCategory()}; }

class UpstreamPool {
 public:
  explicit UpstreamPool(asio::any_io_executor ex) : ex_(std::move(ex)) {}
  ~UpstreamPool();
  UpstreamPool(const UpstreamPool&) = delete;
  UpstreamPool& operator=(const UpstreamPool&) = delete;

  // Registers a target host with its client TLS context (takes ownership).
  void addHost(const std::string& host, SSL_CTX* ctx);
  // A new client TLS context for a host (its upstream CA changed on reload):
  // new connections use it, idle ones are closed. Open ones finish on the
  // old one (each TLS connection holds its own reference to it).
  void setContext(const std::string& host, SSL_CTX* ctx);
  bool hasHost(const std::string& host) const { return hosts_.contains(host); }
  // The addresses atlasgate itself chose for a host (configured + own DNS).
  void setAddresses(const std::string& host, std::vector<tcp::endpoint> addresses);
  void setLimits(const UpstreamLimits& limits);

  struct Acquired {
    beast::error_code ec;
    std::unique_ptr<UpstreamConn> conn;
    bool reused = false;  // an idle keep-alive connection: a failure may mean it went stale
  };
  // An idle connection, a new one, or one released while this request waited.
  // `agent` is the requesting agent's key; "" is atlasgate's own request.
  asio::awaitable<Acquired> acquire(const std::string& host, const std::string& agent);

  // Returns a connection whose last exchange left it reusable. Dropping a
  // connection (its unique_ptr) instead frees its slot.
  void release(std::unique_ptr<UpstreamConn> conn);

  std::size_t idleCount() const;
  UpstreamStats stats() const;  // summed over hosts
  std::vector<UpstreamHostView> hosts() const;
  // Closes every idle connection (drain, reload).
  void clear();
  // Closes idle connections kept longer than kIdleTimeout.
  void sweep();
  // Wakes every waiting request with an error; the pool stays usable (shutdown,
  // before atlasgate's own last requests).
  void failWaiters();
  // failWaiters() and no more connections (end of shutdown).
  void close();

  static constexpr std::chrono::seconds kIdleTimeout{30};

 private:
  void maybeConnect(const std::shared_ptr<UpstreamHost>& h);
  asio::awaitable<void> connectOne(std::shared_ptr<UpstreamHost> h);

  asio::any_io_executor ex_;
  UpstreamLimits limits_;
  std::map<std::string, std::shared_ptr<UpstreamHost>> hosts_;
};

}  // namespace atlasgate::upstream

template <>
struct boost::system::is_error_code_enum<atlasgate::upstream::PoolError> : std::true_type {};
