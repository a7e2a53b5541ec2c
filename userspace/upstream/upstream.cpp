#include "upstream/upstream.h"

#include <openssl/crypto.h>
#include <openssl/ssl.h>

#include <algorithm>

#include "common/log.h"
#include "tls/client_context.h"

namespace atlasgate::upstream {

using Clock = std::chrono::steady_clock;

namespace {

class PoolCategory : public beast::error_category {
 public:
  const char* name() const noexcept override { return "atlasgate.pool"; }
  std::string message(int ev) const override {
    switch (static_cast<PoolError>(ev)) {
      case PoolError::QueueTimeout: return "no upstream connection became free in time";
      case PoolError::NoAddress: return "no address is known for the target";
      case PoolError::Closed: return "the upstream pool is closed";
    }
    return "upstream pool error";
  }
};

// A failing address is tried again after 100 ms, doubling up to 5 s.
std::chrono::milliseconds addressBackoff(unsigned failures) {
  if (failures == 0) return std::chrono::milliseconds(0);
  unsigned shift = std::min(failures - 1, 6u);
  return std::min(std::chrono::milliseconds(100) * (1u << shift), std::chrono::milliseconds(5000));
}

}  // namespace

const beast::error_category& poolCategory() {
  static const PoolCategory c;
  return c;
}

// One target: its TLS context, addresses, connections and waiting requests.
// Shared with its connections, which give their slot back when they die.
struct UpstreamHost : std::enable_shared_from_this<UpstreamHost> {
  struct Waiter {
    Waiter(asio::any_io_executor ex, std::string a) : timer(std::move(ex)), agent(std::move(a)) {}
    asio::steady_timer timer;
    std::string agent;  // "" = atlasgate's own request: first in line, no share limit
    std::unique_ptr<UpstreamConn> conn;
    beast::error_code ec;
    bool done = false;
    bool reused = false;
  };
  struct Health {
    unsigned failures = 0;
    Clock::time_point retryAt{};
  };

  std::string host;
  asio::any_io_executor ex;
  UpstreamLimits limits;
  std::unique_ptr<ssl::context> ctx;  // its session store resumes TLS sessions per host
  std::vector<tcp::endpoint> addresses;
  std::map<tcp::endpoint, Health> health;
  std::size_t nextAddress = 0;
  std::vector<std::unique_ptr<UpstreamConn>> idle;  // oldest first
  std::list<Waiter*> waiters;                       // FIFO: fair
  std::size_t open = 0;
  std::size_t connecting = 0;
  std::map<std::string, std::size_t> held;  // busy connections by agent
  bool closed = false;
  UpstreamStats stats;

  bool mayHold(const std::string& agent) const {
    if (agent.empty()) return true;
    auto it = held.find(agent);
    return it == held.end() || it->second < limits.maxPerAgent;
  }
  // The connection now serves `agent`'s request.
  void hold(UpstreamConn& c, const std::string& agent) {
    c.holder = agent;
    c.held = !agent.empty();
    if (c.held) ++held[agent];
  }
  // The connection is back (idle or gone): its holder's share shrinks.
  void unhold(UpstreamConn& c) {
    if (c.held) {
      auto it = held.find(c.holder);
      if (it != held.end() && --it->second == 0) held.erase(it);
    }
    c.held = false;
    c.holder.clear();
  }
  // Hands `c` to the longest-waiting request that may take one (atlasgate's
  // own first; an agent at its share waits for its own to come back); false
  // if none waits.
  bool grant(std::unique_ptr<UpstreamConn>& c, bool reused) {
    for (auto it = waiters.begin(); it != waiters.end(); ++it) {
      Waiter* w = *it;
      if (!mayHold(w->agent)) continue;
      waiters.erase(it);
      hold(*c, w->agent);
      w->conn = std::move(c);
      w->reused = reused;
      w->done = true;
      w->timer.cancel();
      return true;
    }
    return false;
  }
  void failAll(beast::error_code ec) {
    while (!waiters.empty()) {
      Waiter* w = waiters.front();
      waiters.pop_front();
      w->ec = ec;
      w->done = true;
      w->timer.cancel();
    }
  }
  // Waiting requests a new connection could serve now.
  std::size_t eligibleWaiters(bool& own) const {
    std::size_t n = 0;
    own = false;
    for (const Waiter* w : waiters)
      if (mayHold(w->agent)) {
        ++n;
        own = own || w->agent.empty();
      }
    return n;
  }
  bool allAddressesFailing() {
    for (const auto& a : addresses)
      if (health[a].failures == 0) return false;
    return true;
  }
  // Opens connections while requests wait for more than are being opened.
  void maybeConnect();
  asio::awaitable<void> connectOne();
  tcp::endpoint pickAddress(Clock::time_point now);
  void slotFreed(UpstreamConn& c) {
    unhold(c);
    if (open > 0) --open;
    if (!closed) maybeConnect();
  }
};

UpstreamConn::UpstreamConn(asio::any_io_executor ex, ssl::context& ctx, std::shared_ptr<UpstreamHost> o)
    : stream(tcp::socket(std::move(ex)), ctx), owner(std::move(o)) {}

UpstreamConn::~UpstreamConn() {
  scrub();
  if (owner) owner->slotFreed(*this);
}

void UpstreamConn::scrub() {
  buffer.clear();
  auto all = buffer.prepare(buffer.capacity());  // the storage it has: nothing is allocated
  OPENSSL_cleanse(all.data(), all.size());
  OPENSSL_cleanse(head.data(), head.size());
}

void UpstreamHost::maybeConnect() {
  // One connection beyond the cap is kept for atlasgate's own requests.
  bool own = false;
  while (!closed && !addresses.empty() && eligibleWaiters(own) > connecting &&
         (open < limits.maxConnections || (own && open < limits.maxConnections + 1)) &&
         connecting < limits.maxConnecting) {
    ++open;
    ++connecting;
    asio::co_spawn(
        ex, [self = shared_from_this()]() { return self->connectOne(); }, asio::detached);
  }
}

tcp::endpoint UpstreamHost::pickAddress(Clock::time_point now) {
  // Round robin over the addresses that are not backing off; if all are,
  // the one that may be retried soonest.
  std::size_t n = addresses.size();
  std::size_t best = nextAddress % n;
  for (std::size_t i = 0; i < n; ++i) {
    std::size_t k = (nextAddress + i) % n;
    const Health& hk = health[addresses[k]];
    if (hk.retryAt <= now) {
      best = k;
      break;
    }
    if (hk.retryAt < health[addresses[best]].retryAt) best = k;
  }
  nextAddress = best + 1;
  return addresses[best];
}

asio::awaitable<void> UpstreamHost::connectOne() {
  // `open` and `connecting` were counted by maybeConnect. The connection's
  // destructor gives the `open` slot back; `connecting` is ours to undo.
  auto self = shared_from_this();
  auto now = Clock::now();
  tcp::endpoint ep = pickAddress(now);
  auto conn = std::make_unique<UpstreamConn>(ex, *ctx, self);
  conn->endpoint = ep;
  beast::error_code ec;
  if (Health& hh = health[ep]; hh.retryAt > now) {
    asio::steady_timer pause(ex);
    pause.expires_at(hh.retryAt);
    co_await pause.async_wait(kUseTuple);
  }
  SSL* ssl = conn->stream.native_handle();
  if (closed) {
    ec = PoolError::Closed;
  } else if (auto r = tls::prepareClientSsl(ssl, host); !r) {
    // SNI, host-name verification and a resumable session for `host`.
    log::warn("upstream {}: {}", host, r.error().message);
    ec = asio::error::invalid_argument;
  } else {
    conn->stream.expires_after(limits.connectTimeout);  // TCP and TLS together
    auto [cec] = co_await conn->stream.async_connect(ep, kUseTuple);
    ec = cec;
    if (!ec) {
      beast::error_code ignored;
      conn->stream.socket().set_option(tcp::no_delay(true), ignored);
      auto [hec] = co_await conn->stream.async_handshake(ssl::stream_base::client, kUseTuple);
      ec = hec;
    }
    conn->stream.expires_never();
  }
  --connecting;
  if (ec) {
    ++stats.connectFailures;
    Health& hh = health[ep];
    ++hh.failures;
    hh.retryAt = Clock::now() + addressBackoff(hh.failures);
    log::warn("upstream {} {}: connect failed: {}", host, ep.address().to_string(), ec.message());
    // No established connection could serve the waiting requests: tell them
    // now (502/504) rather than at their queue timeout. Otherwise they keep
    // waiting for a busy connection to be released a moment later, and this
    // slot goes to a new attempt (another address first, if there is one).
    // (A connect still in flight to another, healthy address may serve them:
    // then they wait for it.)
    std::size_t established = open - connecting - 1;  // `open` still counts this one
    if (established == 0 && (connecting == 0 || allAddressesFailing())) failAll(ec);
    conn.reset();  // frees the slot; may start another attempt
    co_return;
  }
  health[ep] = Health{};
  ++stats.connects;
  if (SSL_session_reused(ssl)) ++stats.resumedSessions;
  conn->uses = 1;
  if (!grant(conn, false)) {
    conn->idleSince = Clock::now();
    idle.push_back(std::move(conn));
  }
}

UpstreamPool::~UpstreamPool() { close(); }

void UpstreamPool::addHost(const std::string& host, SSL_CTX* ctx) {
  auto h = std::make_shared<UpstreamHost>();
  h->host = host;
  h->ex = ex_;
  h->limits = limits_;
  h->ctx = std::make_unique<ssl::context>(ctx);  // takes ownership
  hosts_[host] = std::move(h);
}

void UpstreamPool::setContext(const std::string& host, SSL_CTX* ctx) {
  auto it = hosts_.find(host);
  if (it == hosts_.end()) return addHost(host, ctx);
  it->second->ctx = std::make_unique<ssl::context>(ctx);
  it->second->idle.clear();
}

void UpstreamPool::setAddresses(const std::string& host, std::vector<tcp::endpoint> addresses) {
  auto it = hosts_.find(host);
  if (it == hosts_.end()) return;
  UpstreamHost& h = *it->second;
  std::sort(addresses.begin(), addresses.end());
  addresses.erase(std::unique(addresses.begin(), addresses.end()), addresses.end());
  if (addresses == h.addresses) return;
  h.addresses = std::move(addresses);
  for (auto hit = h.health.begin(); hit != h.health.end();)
    hit = std::binary_search(h.addresses.begin(), h.addresses.end(), hit->first) ? std::next(hit) : h.health.erase(hit);
  // Idle connections to addresses atlasgate no longer chooses are closed.
  std::erase_if(
      h.idle, [&](const auto& c) { return !std::binary_search(h.addresses.begin(), h.addresses.end(), c->endpoint); });
  h.maybeConnect();
}

void UpstreamPool::setLimits(const UpstreamLimits& limits) {
  limits_ = limits;
  limits_.maxConnections = std::max<std::size_t>(1, limits_.maxConnections);
  limits_.maxConnecting = std::clamp<std::size_t>(limits_.maxConnecting, 1, limits_.maxConnections);
  limits_.maxPerAgent = std::clamp<std::size_t>(limits_.maxPerAgent, 1, limits_.maxConnections);
  for (auto& [name, h] : hosts_) {
    h->limits = limits_;
    h->maybeConnect();
  }
}

asio::awaitable<UpstreamPool::Acquired> UpstreamPool::acquire(const std::string& host, const std::string& agent) {
  Acquired out;
  auto it = hosts_.find(host);
  if (it == hosts_.end()) {
    out.ec = asio::error::host_not_found;
    co_return out;
  }
  std::shared_ptr<UpstreamHost> h = it->second;
  auto now = Clock::now();
  while (!h->idle.empty() && h->mayHold(agent)) {
    std::unique_ptr<UpstreamConn> c = std::move(h->idle.back());  // the warmest
    h->idle.pop_back();
    if (now - c->idleSince > kIdleTimeout) continue;  // likely closed by the peer
    ++h->stats.reuses;
    ++c->uses;
    h->hold(*c, agent);
    out.conn = std::move(c);
    out.reused = true;
    co_return out;
  }
  if (h->closed) {
    out.ec = PoolError::Closed;
    co_return out;
  }
  if (h->addresses.empty() && h->open == 0) {
    out.ec = PoolError::NoAddress;
    co_return out;
  }

  UpstreamHost::Waiter w(ex_, agent);
  // atlasgate's own requests go before every agent's (FIFO among themselves).
  auto pos = h->waiters.end();
  if (agent.empty())
    pos = std::find_if(h->waiters.begin(), h->waiters.end(), [](const auto* x) { return !x->agent.empty(); });
  auto self = h->waiters.insert(pos, &w);
  // The frame may be destroyed while waiting (shutdown): never leave a
  // dangling waiter behind.
  struct Unlink {
    UpstreamHost& h;
    UpstreamHost::Waiter& w;
    std::list<UpstreamHost::Waiter*>::iterator pos;
    ~Unlink() {
      if (!w.done) h.waiters.erase(pos);
    }
  } unlink{*h, w, self};
  ++h->stats.queued;
  h->maybeConnect();
  w.timer.expires_after(h->limits.queueTimeout);
  auto start = Clock::now();
  co_await w.timer.async_wait(kUseTuple);
  h->stats.queueWaitSeconds += std::chrono::duration<double>(Clock::now() - start).count();
  if (!w.done) {
    ++h->stats.queueTimeouts;
    out.ec = PoolError::QueueTimeout;
    co_return out;
  }
  out.ec = w.ec;
  out.conn = std::move(w.conn);
  out.reused = w.reused;
  if (out.conn) ++out.conn->uses;
  co_return out;
}

void UpstreamPool::release(std::unique_ptr<UpstreamConn> conn) {
  if (!conn || !conn->owner) return;
  std::shared_ptr<UpstreamHost> h = conn->owner;
  h->unhold(*conn);
  if (h->closed) return;
  if (!std::binary_search(h->addresses.begin(), h->addresses.end(), conn->endpoint)) return;  // retired address
  if (h->grant(conn, true)) {
    ++h->stats.reuses;
    return;
  }
  conn->idleSince = Clock::now();
  h->idle.push_back(std::move(conn));
}

std::size_t UpstreamPool::idleCount() const {
  std::size_t n = 0;
  for (const auto& [k, h] : hosts_) n += h->idle.size();
  return n;
}

UpstreamStats UpstreamPool::stats() const {
  UpstreamStats s;
  for (const auto& [k, h] : hosts_) s += h->stats;
  return s;
}

std::vector<UpstreamHostView> UpstreamPool::hosts() const {
  std::vector<UpstreamHostView> out;
  for (const auto& [name, h] : hosts_)
    out.push_back(UpstreamHostView{name, h->open, h->idle.size(), h->connecting, h->waiters.size(), h->addresses.size(),
                                   h->stats});
  return out;
}

void UpstreamPool::clear() {
  for (auto& [k, h] : hosts_) h->idle.clear();
}

void UpstreamPool::sweep() {
  auto now = Clock::now();
  for (auto& [k, h] : hosts_) {
    // Oldest first: release() appends.
    auto& v = h->idle;
    std::size_t stale = 0;
    while (stale < v.size() && now - v[stale]->idleSince > kIdleTimeout) ++stale;
    v.erase(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(stale));
  }
}

void UpstreamPool::failWaiters() {
  for (auto& [k, h] : hosts_) h->failAll(PoolError::Closed);
}

void UpstreamPool::close() {
  for (auto& [k, h] : hosts_) {
    h->closed = true;
    h->failAll(PoolError::Closed);
    h->idle.clear();
  }
}

}  // namespace atlasgate::upstream
