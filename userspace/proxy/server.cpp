#include "proxy/server.h"

#include "mongo/scram.h"

#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/write.hpp>
#include <boost/asio/ip/v6_only.hpp>

#include <arpa/inet.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <cstring>
#include <tuple>

#include <openssl/crypto.h>

#include "common/fd.h"
#include "common/log.h"
#include "common/text.h"
#include "credentials/digest.h"
#include "credentials/token_provider.h"
#include "net/http_head.h"
#include "policy/policy.h"
#include "proxy/captured.h"
#include "proxy/errors.h"
#include "proxy/rewrite.h"
#include "tls/server_context.h"
#include "tls/sni.h"

namespace atlasgate::proxy {

using Clock = std::chrono::steady_clock;
using namespace asio::experimental::awaitable_operators;

struct Server::Session {
  ConnectionInfo info;  // requests: see `requests`
  std::atomic<std::uint64_t> requests{0};
  TlsSocket* stream = nullptr;
};

Server::Server(asio::io_context& io, TakeFlowFn takeFlow, tls::ServerContext& tls, UpstreamPool& pool,
               audit::AuditLog& audit, AgentDirectory& agents, Approvals& approvals, std::uint64_t netnsCookie)
    : io_(io),
      takeFlow_(std::move(takeFlow)),
      tls_(tls),
      sslCtx_(std::make_unique<ssl::context>(tls.share())),
      pool_(pool),
      audit_(audit),
      agents_(agents),
      approvals_(approvals),
      netnsCookie_(netnsCookie) {}

Server::~Server() = default;

void Server::joinAs(unsigned worker, Server& home) {
  worker_ = worker;
  home_ = &home;
  shared_ = home.shared_;
  home.peers_.push_back(this);
}

Result<void> Server::listen(std::uint16_t port, bool reusePort) {
  struct Addr {
    const char* text;
    bool required;
  };
  for (Addr a : {Addr{"127.0.0.1", true}, Addr{"::1", false}}) {
    auto acc = std::make_unique<tcp::acceptor>(io_);
    beast::error_code ec;
    tcp::endpoint ep(asio::ip::make_address(a.text), port);
    acc->open(ep.protocol(), ec);
    if (!ec) acc->set_option(asio::socket_base::reuse_address(true), ec);
    // Only the daemon's uid can join the group (the kernel checks): agents
    // run as other users. Agents' namespaces get one listener, no group
    // (Daemon::scanNamespaces): a container's root could join one there.
    if (!ec && reusePort) acc->set_option(asio::detail::socket_option::boolean<SOL_SOCKET, SO_REUSEPORT>(true), ec);
    if (!ec && ep.address().is_v6()) acc->set_option(asio::ip::v6_only(true), ec);
    if (!ec) acc->bind(ep, ec);
    if (!ec) acc->listen(asio::socket_base::max_listen_connections, ec);
    if (ec) {
      if (a.required) return makeError("listen on {}:{}: {}", a.text, port, ec.message());
      log::warn("not listening on [{}]:{}: {}", a.text, port, ec.message());
      continue;
    }
    if (worker_ == 0)
      log::info("listening on {}",
                a.required ? fmt::format("{}:{}", a.text, port) : fmt::format("[{}]:{}", a.text, port));
    asio::co_spawn(io_, acceptLoop(*acc, netnsCookie_), asio::detached);
    acceptors_.push_back(std::move(acc));
  }
  return {};
}

Result<void> Server::adoptListener(int fd, bool v6, std::uint64_t netnsCookie) {
  beast::error_code ec;
  auto acc = std::make_shared<tcp::acceptor>(io_);
  acc->assign(v6 ? tcp::v6() : tcp::v4(), fd, ec);
  if (ec) {
    ::close(fd);
    return makeError("adopt listener: {}", ec.message());
  }
  foreign_[netnsCookie].push_back(acc);
  // The loop holds the acceptor alive until it is closed.
  asio::co_spawn(
      io_, [this, acc, netnsCookie]() -> asio::awaitable<void> { co_await acceptLoop(*acc, netnsCookie); },
      asio::detached);
  return {};
}

void Server::closeListeners(std::uint64_t netnsCookie) {
  auto it = foreign_.find(netnsCookie);
  if (it == foreign_.end()) return;
  for (auto& a : it->second) {
    beast::error_code ec;
    a->close(ec);
  }
  foreign_.erase(it);
}

void Server::stopAccepting() {
  for (auto& a : acceptors_) {
    beast::error_code ec;
    a->close(ec);
  }
  for (auto& [cookie, list] : foreign_)
    for (auto& a : list) {
      beast::error_code ec;
      a->close(ec);
    }
  foreign_.clear();
}

void Server::closeAll() {
  std::lock_guard lock(sessionsMu_);
  for (auto& [id, s] : sessions_) {
    if (s->stream) {
      beast::error_code ec;
      s->stream->socket().shutdown(tcp::socket::shutdown_both, ec);
      s->stream->close();
    }
  }
}

std::vector<ConnectionInfo> Server::connections() const {
  std::lock_guard lock(sessionsMu_);
  std::vector<ConnectionInfo> out;
  for (const auto& [id, s] : sessions_) {
    out.push_back(s->info);
    out.back().requests = s->requests.load(std::memory_order_relaxed);
  }
  return out;
}

namespace {

tcp::endpoint originalEndpoint(const ag_origin& o) {
  std::uint16_t port = ntohs(o.orig_port);
  if (o.family == AG_AF_INET6) {
    asio::ip::address_v6::bytes_type b;
    std::memcpy(b.data(), o.orig_addr, 16);
    return {asio::ip::address_v6(b), port};
  }
  asio::ip::address_v4::bytes_type b;
  std::memcpy(b.data(), o.orig_addr, 4);
  return {asio::ip::address_v4(b), port};
}

}  // namespace

std::string endpointText(const tcp::endpoint& ep) {
  if (ep.address().is_v6()) return fmt::format("[{}]:{}", ep.address().to_string(), ep.port());
  return fmt::format("{}:{}", ep.address().to_string(), ep.port());
}

asio::awaitable<void> Server::acceptLoop(tcp::acceptor& acceptor, std::uint64_t netnsCookie) {
  asio::steady_timer pause(io_);
  for (;;) {
    auto [ec, sock] = co_await acceptor.async_accept(kUseTuple);
    if (ec) {
      if (ec == asio::error::operation_aborted || !acceptor.is_open()) co_return;
      // Out of file descriptors (or kernel memory): the pending connection
      // stays in the backlog. Back off instead of spinning on it, and say so
      // at most once a second.
      auto now = Clock::now();
      if (now - lastAcceptWarning_ >= std::chrono::seconds(1)) {
        log::warn("accept: {} ({} live connections); pausing accepts", ec.message(),
                  counters_.get(Counter::LiveConnections));
        lastAcceptWarning_ = now;
      }
      counters_.add(Counter::AcceptErrors);
      pause.expires_after(std::chrono::milliseconds(50));
      co_await pause.async_wait(kUseTuple);
      continue;
    }
    beast::error_code pec;
    tcp::endpoint peer = sock.remote_endpoint(pec);
    if (pec) continue;
    std::optional<ag_origin> origin = takeFlow_(peer.data(), netnsCookie);
    if (!origin) {
      // Not redirected by the kernel: nobody we can vouch for. Reset it.
      counters_.add(Counter::RefusedNoFlow);
      log::debug("refused {}: no redirect record", endpointText(peer));
      sock.set_option(asio::socket_base::linger(true, 0), pec);
      sock.close(pec);
      continue;
    }
    Flow flow;
    flow.origin = *origin;
    flow.agent = agents_.lookup(origin->cgroup_id);
    flow.originalDst = originalEndpoint(*origin);
    flow.comm.assign(origin->comm, strnlen(origin->comm, sizeof origin->comm));
    if (flow.agent.guarded && holdForDiscovery(runtime()->config->limits.maxConnectionsPerAgent)) {
      // Under a guard, not named yet (a container just started or restarted):
      // wait, off the accept loop, for discovery to name it. (At most
      // max_connections_per_agent wait at once, over all workers: unnamed,
      // they share one cap.)
      counters_.add(Counter::HeldForDiscovery);
      asio::co_spawn(io_, awaitNamed(std::move(sock), std::move(flow)), asio::detached);
      continue;
    }
    admit(std::move(sock), std::move(flow));
  }
}

bool Server::holdForDiscovery(std::uint32_t cap) {
  if (shared_->heldForDiscovery.fetch_add(1, std::memory_order_relaxed) < cap) return true;
  shared_->heldForDiscovery.fetch_sub(1, std::memory_order_relaxed);
  return false;
}

asio::awaitable<void> Server::awaitNamed(tcp::socket sock, Flow flow) {
  auto deadline = Clock::now() + discoverySettle_;
  asio::steady_timer pause(io_);
  while (!flow.agent.known() && flow.agent.guarded && Clock::now() < deadline) {
    pause.expires_after(std::chrono::milliseconds(20));
    co_await pause.async_wait(kUseTuple);
    if (!sock.is_open()) co_return;
    flow.agent = agents_.lookup(flow.origin.cgroup_id);
  }
  shared_->heldForDiscovery.fetch_sub(1, std::memory_order_relaxed);
  admit(std::move(sock), std::move(flow));
}

void Server::admit(tcp::socket sock, Flow flow) {
  beast::error_code pec;
  const ag_origin& origin = flow.origin;
  if (origin.pid == static_cast<std::uint32_t>(::getpid())) {
    // Our own connection, redirected to ourselves: someone moved the daemon
    // into an agent's cgroup. Never loop (nor act as an agent).
    log::error("refused a connection of atlasgate itself: the daemon runs in an agent's cgroup; move it out");
    sock.set_option(asio::socket_base::linger(true, 0), pec);
    sock.close(pec);
    return;
  }
  if (!flow.agent.known()) {
    // The socket's creator sits under no attached root (a socket made
    // before its cgroup was attached and handed elsewhere, a cgroup that
    // vanished, or one under a guard that discovery did not name in time):
    // nobody we can name, so nobody we serve.
    counters_.add(Counter::RefusedUnknownAgent);
    if (auto now = Clock::now(); now - lastUnknownWarning_ >= std::chrono::seconds(1)) {
      log::warn("refused a connection from pid {} ({}): {} is gone or under no attached cgroup{} ({} so far)",
                origin.pid, flow.comm, flow.agent.name,
                flow.agent.guarded ? " (under a guard, not named by discovery in time)" : "",
                counters_.get(Counter::RefusedUnknownAgent));
      lastUnknownWarning_ = now;
    }
    sock.set_option(asio::socket_base::linger(true, 0), pec);
    sock.close(pec);
    return;
  }
  const std::shared_ptr<const Runtime> rt = runtime();
  const config::Limits& caps = rt->config->limits;
  std::uint32_t mine = 0;
  std::uint64_t live = 0;
  bool over = false;
  {
    // Every worker's connections count: one lock per new connection.
    std::lock_guard lock(shared_->mu);
    auto it = shared_->perAgent.find(flow.agent.key);
    mine = it == shared_->perAgent.end() ? 0 : it->second;
    live = shared_->live;
    over = live >= caps.maxConnections || mine >= caps.maxConnectionsPerAgent;
    if (!over) {
      ++shared_->live;
      if (it == shared_->perAgent.end())
        shared_->perAgent.emplace(flow.agent.key, 1);
      else
        ++it->second;
    }
  }
  if (over) {
    counters_.add(Counter::RefusedOverLimit);
    auto now = Clock::now();
    if (now - lastLimitWarning_ >= std::chrono::seconds(1)) {
      log::warn(
          "refused connections over a cap: agent {} has {} (max_connections_per_agent {}), {} in all "
          "(max_connections {})",
          flow.agent.name, mine, caps.maxConnectionsPerAgent, live, caps.maxConnections);
      lastLimitWarning_ = now;
    }
    sock.set_option(asio::socket_base::linger(true, 0), pec);
    sock.close(pec);
    return;
  }
  counters_.add(Counter::Accepted);
  counters_.add(Counter::LiveConnections);
  // Given back when the connection ends, whichever path (and worker) serves it.
  flow.slot = std::shared_ptr<void>(nullptr, [this, shared = shared_, key = flow.agent.key](void*) {
    counters_.sub(Counter::LiveConnections);
    std::lock_guard lock(shared->mu);
    --shared->live;
    auto it = shared->perAgent.find(key);
    if (it != shared->perAgent.end() && --it->second == 0) shared->perAgent.erase(it);
  });
  if (origin.flags & AG_ORIGIN_HANDED)
    log::debug("agent {}: a socket created by pid {} was connected by another process", flow.agent.name, origin.pid);
  flow.id = shared_->nextId.fetch_add(1, std::memory_order_relaxed);
  sock.set_option(tcp::no_delay(true), pec);
  start(std::move(sock), std::move(flow));
}

namespace {

// A connection to an HTTPS target's address (startHere: serve()); the rest
// (MongoDB, all-tls classification) is worker 0's.
bool servedOnWorkers(const Flow& flow) { return flow.origin.target_id != AG_TARGET_NONE; }

}  // namespace

void Server::start(tcp::socket sock, Flow flow) {
  const bool https = servedOnWorkers(flow);
  if (home_ != nullptr && !https) {
    handOff(*home_, std::move(sock), std::move(flow));  // MongoDB and all-tls classification: worker 0
    return;
  }
  if (home_ == nullptr && https && !peers_.empty() && flow.origin.netns_cookie != netnsCookie_) {
    // From an agents' namespace (one listener, worker 0's): in turn.
    std::size_t pick = nextPeer_++ % (peers_.size() + 1);
    if (pick != 0) {
      handOff(*peers_[pick - 1], std::move(sock), std::move(flow));
      return;
    }
  }
  startHere(std::move(sock), std::move(flow));
}

void Server::handOff(Server& to, tcp::socket sock, Flow flow) {
  beast::error_code ec;
  const bool v6 = sock.local_endpoint(ec).address().is_v6();
  UniqueFd fd(ec ? -1 : sock.release(ec));
  if (ec || !fd.valid()) {
    log::warn("conn {} agent {}: handing the connection to worker {} failed: {}", flow.id, flow.agent.name, to.worker_,
              ec.message());
    return;  // the socket (or fd) closes; the slot is given back
  }
  asio::post(to.io_, [&to, fd = std::move(fd), v6, flow = std::move(flow)]() mutable {
    tcp::socket here(to.io_);
    beast::error_code aec;
    here.assign(v6 ? tcp::v6() : tcp::v4(), fd.get(), aec);
    if (aec) return;
    fd.release();
    to.startHere(std::move(here), std::move(flow));
  });
}

void Server::startHere(tcp::socket sock, Flow flow) {
  // No exception may end the daemon: a session that throws is logged and dropped.
  auto logFailure = [id = flow.id](std::exception_ptr e) {
    if (!e) return;
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& x) {
      log::error("conn {}: session ended by an exception: {}", id, x.what());
    } catch (...) {
      log::error("conn {}: session ended by an unknown exception", id);
    }
  };
  const std::uint16_t mongoPort = config::mongodbPort(*runtime()->config);
  const std::uint32_t targetId = flow.origin.target_id;
  if (mongoPort != 0 && flow.originalDst.port() == mongoPort && targetId == AG_TARGET_NONE)
    asio::co_spawn(io_, mongoClassify(std::move(sock), std::move(flow)), logFailure);
  else if (targetId == AG_TARGET_NONE)
    asio::co_spawn(io_, classify(std::move(sock), std::move(flow)), logFailure);
  else
    asio::co_spawn(io_, serve(std::move(sock), std::move(flow)), logFailure);
}

struct Server::Conn {
  TlsSocket& stream;
  const Flow& flow;
  const Runtime& rt;
  const TargetRuntime& target;
  Session& session;
  beast::flat_buffer buffer;
  std::vector<char> relayBuf;  // response body relay, allocated at the first response, reused
  std::string head;            // the relayed response's head, written here (net/http_head.h), reused
  const config::Limits& limits() const { return rt.config->limits; }
};

// One request's audit record, filled as the exchange goes.
struct Server::Exchange {
  audit::Record rec;
  Clock::time_point start = Clock::now();
  bool keepAlive = true;
};

namespace {

// Completes with true when the agent closes or resets its connection, false
// when it sends more bytes (kept in `buffer` for the next request) or when
// the wait is cancelled.
asio::awaitable<bool> agentHangsUp(TlsSocket& stream, beast::flat_buffer& buffer) {
  co_await asio::this_coro::throw_if_cancelled(false);
  // A cancellation emitted before the read starts would not reach it.
  if ((co_await asio::this_coro::cancellation_state).cancelled() != asio::cancellation_type::none) co_return false;
  auto mb = buffer.prepare(4096);
  auto [ec, n] = co_await stream.async_read_some(mb, kUseTuple);
  buffer.commit(n);
  co_return ec&& ec != asio::error::operation_aborted;
}

double msSince(Clock::time_point t) { return std::chrono::duration<double, std::milli>(Clock::now() - t).count(); }

}  // namespace

asio::awaitable<void> Server::serve(tcp::socket socket, Flow flow) {
  std::shared_ptr<const Runtime> rt = runtime();  // this connection's snapshot, whatever reloads do
  TlsSocket stream(std::move(socket), *sslCtx_);
  Session session;
  session.stream = &stream;
  session.info = {flow.id, flow.agent.name, flow.origin.pid, flow.comm, endpointText(flow.originalDst), Clock::now(),
                  0,       worker_};
  {
    std::lock_guard lock(sessionsMu_);
    sessions_[flow.id] = &session;
  }
  struct Leave {
    Server* s;
    std::uint64_t id;
    ~Leave() {
      std::lock_guard lock(s->sessionsMu_);
      s->sessions_.erase(id);
    }
  } leave{this, flow.id};

  if (const TargetRuntime* target = co_await handshake(stream, *rt, flow)) {
    Conn c{stream, flow, *rt, *target, session, {}, {}};
    c.buffer.max_size(c.limits().maxHeaderBytes + 64 * 1024);
    while (co_await exchange(c)) {}
  }
  beast::error_code ec;
  stream.expires_after(std::chrono::seconds(2));
  co_await stream.async_shutdown(kUseTuple);
  stream.socket().close(ec);
}

asio::awaitable<const TargetRuntime*> Server::handshake(TlsSocket& stream, const Runtime& rt, const Flow& flow) {
  // Absent SNI means the target that owns the address the agent dialled.
  const std::string* defaultHost = nullptr;
  if (const TargetRuntime* t = rt.findTargetById(flow.origin.target_id)) defaultHost = &t->host;
  tls::ServerContext::setDefaultHost(stream.native_handle(), defaultHost);

  stream.expires_after(rt.config->limits.handshakeTimeout);
  auto [hec] = co_await stream.async_handshake(ssl::stream_base::server, kUseTuple);
  if (hec) {
    counters_.add(Counter::HandshakeFailures);
    log::info("conn {} agent {}: TLS handshake failed: {}", flow.id, flow.agent.name, hec.message());
    co_return nullptr;
  }
  const std::string* selected = tls::ServerContext::selectedHost(stream.native_handle());
  const TargetRuntime* target = selected ? rt.findTarget(*selected) : nullptr;
  if (target)  // else a target a reload removed since the handshake began
    log::debug("conn {} agent {} pid {} comm {} -> {} ({})", flow.id, flow.agent.name, flow.origin.pid, flow.comm,
               target->host, endpointText(flow.originalDst));
  co_return target;
}

asio::awaitable<bool> Server::exchange(Conn& c) {
  // Keep-alive: wait for the next request at most idleTimeout.
  if (c.buffer.size() == 0) {
    c.stream.expires_after(c.limits().idleTimeout);
    if (c.buffer.capacity() == 0) {
      // A new connection takes no buffer until its first request arrives
      // (a later one keeps its buffer, and reads at once: no extra syscall).
      auto [wec] = co_await c.stream.async_wait_readable(kUseTuple);
      if (wec) co_return false;
    }
    auto [ec, n] = co_await c.stream.async_read_some(c.buffer.prepare(4096), kUseTuple);
    if (ec) co_return false;  // closed, reset or idle: nothing to answer
    c.buffer.commit(n);
  }
  Exchange ex;
  ex.rec.agent = c.flow.agent.name;
  ex.rec.pid = c.flow.origin.pid;
  ex.rec.comm = c.flow.comm;
  ex.rec.cgroup = c.flow.agent.cgroupPath;
  ex.rec.host = c.target.host;
  ex.rec.dst = c.session.info.dst;  // formatted once per connection

  std::optional<HttpRequest> req = co_await readRequest(c, ex);
  if (!req) co_return false;
  counters_.add(Counter::Requests);
  Step step = decide(*req, ExchangeContext{c.rt, c.target, c.flow, shared_->phantoms, Clock::now(), captured_}, ex.rec);
  if (auto* held = std::get_if<Hold>(&step)) {
    std::optional<Step> after = co_await hold(c, ex, *req, std::move(*held));
    if (!after) {
      finish(c, ex);
      co_return false;
    }
    step = std::move(*after);
  }
  if (auto* local = std::get_if<LocalResponse>(&step)) co_return co_await answer(c, ex, std::move(*local));
  co_return co_await forward(c, ex, *req, std::get<Forward>(step));
}

asio::awaitable<std::optional<HttpRequest>> Server::readRequest(Conn& c, Exchange& ex) {
  const config::Limits& limits = c.limits();
  // The whole head must arrive within headerTimeout (slow loris).
  http::request_parser<http::string_body> parser;
  parser.header_limit(limits.maxHeaderBytes);
  parser.body_limit(limits.maxBodyBytes);
  c.stream.expires_after(limits.headerTimeout);
  auto [hec, hn] = co_await http::async_read_header(c.stream, c.buffer, parser, kUseTuple);
  if (hec) {
    std::optional<LocalResponse> refusal = readRefusal(hec, false, limits);
    if (!refusal) co_return std::nullopt;  // the agent went away between requests
    ex.rec.method = "-";
    ex.rec.decision = "malformed";
    co_await answer(c, ex, std::move(*refusal));
    co_return std::nullopt;
  }
  ex.rec.method = std::string(parser.get().method_string());
  ex.rec.path = std::string(parser.get().target());
  ex.keepAlive = parser.get().keep_alive();
  std::optional<std::uint64_t> announced;
  if (auto cl = parser.content_length()) announced = *cl;
  if (auto refusal = headRefusal(parser.get(), announced, limits)) {
    ex.rec.decision = "malformed";
    co_await answer(c, ex, std::move(*refusal));
    co_return std::nullopt;
  }
  if (parser.get()[http::field::expect] == "100-continue") {
    http::response<http::empty_body> cont{http::status::continue_, 11};
    co_await http::async_write(c.stream, cont, kUseTuple);
  }
  beast::error_code bec;
  if (!parser.is_done()) {  // a body follows (a request without one is done with its head)
    c.stream.expires_after(limits.requestTimeout);
    std::tie(bec, std::ignore) = co_await http::async_read(c.stream, c.buffer, parser, kUseTuple);
  }
  if (bec) {
    ex.rec.decision = "malformed";
    if (std::optional<LocalResponse> refusal = readRefusal(bec, true, limits)) {
      co_await answer(c, ex, std::move(*refusal));
    } else {  // the agent went away in the middle of a body
      counters_.add(Counter::BadRequests);
      ex.keepAlive = false;
      finish(c, ex);
    }
    co_return std::nullopt;
  }
  HttpRequest req = parser.release();
  ex.rec.bytesIn = req.body().size();
  co_return req;
}

asio::awaitable<std::optional<Step>> Server::hold(Conn& c, Exchange& ex, HttpRequest& req, Hold h) {
  const config::Limits& limits = c.limits();
  // A held request keeps its body in memory: what may be held is capped.
  Admission admission = approvals_.add(
      h.info, HoldLimits{limits.maxHeldRequests, limits.maxHeldPerAgent, limits.maxHeldBodyBytes}, io_.get_executor());
  if (!admission.id) co_return approvalQueueFull(h, admission, ex.rec);
  counters_.add(Counter::ApprovalsHeld);
  const std::uint64_t id = admission.id;
  log::info("conn {} agent {}: {} {} held for approval by rule \"{}\" (request {})", c.flow.id, c.flow.agent.name,
            ex.rec.method, ex.rec.path, h.decision.ruleName, id);
  c.stream.expires_never();
  // Wait for the decision, but notice an agent that hangs up meanwhile:
  // nobody would receive the answer, so nothing must be done for it.
  std::variant<ApprovalOutcome, bool> first = co_await (approvals_.wait(id) || agentHangsUp(c.stream, c.buffer));
  if (first.index() == 1 && std::get<1>(first)) {
    approvals_.abandon(id);
    log::info("conn {} agent {}: held request {} abandoned: the agent closed the connection", c.flow.id,
              c.flow.agent.name, id);
    ex.rec.decision = "abandoned";
    ex.keepAlive = false;
    co_return std::nullopt;
  }
  ApprovalOutcome outcome = first.index() == 0 ? std::get<0>(first) : ApprovalOutcome::Waiting;
  if (outcome == ApprovalOutcome::Waiting) outcome = co_await approvals_.wait(id);
  if (outcome != ApprovalOutcome::Approved) co_return approvalRefused(h, outcome, ex.rec);
  ex.rec.decision = "approved";
  co_return admitted(req, ExchangeContext{c.rt, c.target, c.flow, shared_->phantoms, Clock::now(), captured_},
                     h.decision, ex.rec);
}

asio::awaitable<bool> Server::answer(Conn& c, Exchange& ex, LocalResponse local) {
  if (local.counter) counters_.add(*local.counter);
  if (local.close) ex.keepAlive = false;
  local.response.keep_alive(ex.keepAlive);
  ex.rec.status = local.response.result_int();
  ex.rec.error = std::string(local.errorCode);
  ex.rec.bytesOut = local.response.body().size();
  c.stream.expires_after(c.limits().requestTimeout);
  auto [ec, n] = co_await http::async_write(c.stream, local.response, kUseTuple);
  finish(c, ex);
  co_return !ec && ex.keepAlive;
}

void Server::finish(Conn& c, Exchange& ex) {
  ex.rec.ts = std::chrono::system_clock::now();
  ex.rec.totalMs = msSince(ex.start);
  audit_.write(ex.rec);
  metrics_.record(ex.rec);
  c.session.requests.fetch_add(1, std::memory_order_relaxed);
}

asio::awaitable<bool> Server::forward(Conn& c, Exchange& ex, HttpRequest& req, Forward& fwd) {
  const CredentialRuntime* cred = fwd.credential;
  upstream::Call call(pool_, c.target.host, c.flow.agent.key);
  std::string token;
  const auto upStart = Clock::now();
  std::optional<LocalResponse> refusal = co_await sendWithCredential(c, ex, req, cred, call, token);
  ex.rec.upstreamMs = msSince(upStart);
  if (refusal) {
    if (!fwd.pending.empty()) {
      // Not sent at all: the pending password goes. Sent, but no answer:
      // Atlas may have set it, so it stays (pending) for the operator.
      if (call.failedStep() == "connect" || call.failedStep().empty()) {
        captured_->discard(fwd.pending);
      } else {
        log::error(
            "conn {} agent {}: database user {}: no answer from Atlas after the request was sent; its new "
            "password is kept as {} (pending) in case Atlas set it",
            c.flow.id, c.flow.agent.name, text::forTerminal(fwd.pendingFinal), text::forTerminal(fwd.pending));
      }
    }
    co_return co_await answer(c, ex, std::move(*refusal));
  }
  const unsigned status = call.response().result_int();
  // A token Atlas refused even after one refresh is not reused.
  if (status == 401 && cred && cred->tokens && !token.empty()) cred->tokens->invalidate(token);
  if (fwd.capture) settleCapture(c, ex, fwd, status);
  if (fwd.capture && status / 100 == 2 && fwd.capture->action != capture::Action::Forget &&
      fwd.capture->action != capture::Action::SetDatabasePassword)
    co_return co_await relayCaptured(c, ex, call, *fwd.capture);
  if (!captured_ || status / 100 != 2) co_return co_await relay(c, ex, call, nullptr);
  capture::Tripwire wire(std::move(fwd.watchFor));
  OPENSSL_cleanse(fwd.watchFor.data(), fwd.watchFor.size());
  co_return co_await relay(c, ex, call, &wire);
}

asio::awaitable<bool> Server::tripRelay(Conn& c, Exchange& ex, upstream::Call& call, bool headSent) {
  call.abandon();
  counters_.add(Counter::CaptureFailures);
  log::error(
      "conn {} agent {}: {} {}: Atlas' answer shows what looks like a minted secret on a call capture does not "
      "know; the answer is withheld. Check what this call created in Atlas.",
      c.flow.id, c.flow.agent.name, ex.rec.method, text::forTerminal(ex.rec.path));
  if (!headSent)
    co_return co_await answer(
        c, ex,
        refuse(Refusal::CaptureFailed,
               "Atlas' answer carried a credential atlasgate could not capture, so it is withheld."));
  // Part of the answer went out already: it ends broken, never completed.
  ex.rec.error = std::string(kCaptureFailed);
  ex.keepAlive = false;
  finish(c, ex);
  co_return false;
}

void Server::settleCapture(Conn& c, Exchange& ex, const Forward& fwd, unsigned status) {
  if (!fwd.pending.empty()) {
    if (status / 100 != 2) {
      captured_->discard(fwd.pending);
    } else if (auto r = captured_->activate(fwd.pending, fwd.pendingFinal); !r) {
      log::error("conn {} agent {}: database user password for {} set in Atlas, but the vault failed: {}", c.flow.id,
                 c.flow.agent.name, text::forTerminal(fwd.pendingFinal), r.error().message);
    } else {
      counters_.add(Counter::Captured);
      ex.rec.captured = fwd.pendingFinal;
      log::info("conn {} agent {}: captured {} (Atlas got a password the agent never saw)", c.flow.id,
                c.flow.agent.name, text::forTerminal(fwd.pendingFinal));
    }
  }
  if (fwd.capture->action == capture::Action::Forget && status / 100 == 2) {
    for (const std::string& name : captured_->forget(c.target.host, fwd.capture->forgets)) {
      log::info("conn {} agent {}: {} deleted through the API: dropped from the vault", c.flow.id, c.flow.agent.name,
                text::forTerminal(name));
      ex.rec.captured = name;
    }
  }
}

namespace {

// Reads the whole body, up to cap; "" or why it could not be.
asio::awaitable<std::string> readWhole(upstream::Call& call, std::string& body, std::size_t cap,
                                       std::chrono::seconds timeout) {
  if (auto enc = call.response()[http::field::content_encoding]; !enc.empty() && !text::iequals(enc, "identity"))
    co_return "the answer is content-encoded";
  auto ec = co_await call.readBody(body, cap, timeout);
  if (ec == http::error::body_limit) co_return fmt::format("it is larger than capture.max_response_bytes ({})", cap);
  if (ec) co_return "reading it failed: " + ec.message();
  co_return std::string();
}

}  // namespace

asio::awaitable<bool> Server::relayCaptured(Conn& c, Exchange& ex, upstream::Call& call, const capture::Plan& plan) {
  const unsigned status = call.response().result_int();
  std::string body;
  std::string why = co_await readWhole(call, body, c.rt.config->capture.maxResponseBytes, c.limits().upstreamTimeout);
  std::string unclaimed = "see the Atlas organization or project of the request";
  Result<capture::Rewritten> rw = makeError("{}", why);
  if (why.empty())
    rw = capture::rewriteResponse(plan, body, capture::Origin::current(c.target.host, c.flow.agent.name));
  if (rw) {
    unclaimed = rw->unclaimed;
    if (auto stored = captured_->store(rw->minted); !stored) rw = makeError("the vault: {}", stored.error().message);
  }
  OPENSSL_cleanse(body.data(), body.size());
  if (!rw) {
    // Never the real secret: the agent gets a refusal, the operator the
    // object that now exists in Atlas without anyone holding its secret.
    call.abandon();
    counters_.add(Counter::CaptureFailures);
    log::error(
        "conn {} agent {}: {} {}: Atlas answered {} but its secret could not be captured ({}); the answer is "
        "withheld. Unclaimed in Atlas now: {}",
        c.flow.id, c.flow.agent.name, ex.rec.method, text::forTerminal(ex.rec.path), status, rw.error().message,
        unclaimed);
    co_return co_await answer(c, ex,
                              refuse(Refusal::CaptureFailed,
                                     "atlasgate could not keep the credential Atlas created for this request, so the "
                                     "answer is withheld. The object may exist in Atlas now; delete it and retry."));
  }
  call.finish();
  for (const capture::Minted& m : rw->minted) {
    counters_.add(Counter::Captured);
    if (!ex.rec.captured.empty()) ex.rec.captured += ",";
    ex.rec.captured += m.entry.name;
    log::info("conn {} agent {}: captured {} ({}); the agent holds a phantom", c.flow.id, c.flow.agent.name,
              text::forTerminal(m.entry.name), text::forTerminal(m.entry.label));
  }
  prepareAgentResponse(call.response());
  co_return co_await sendCaptured(c, ex, call.response(), rw->body);
}

asio::awaitable<bool> Server::sendCaptured(Conn& c, Exchange& ex, const http::response<http::buffer_body>& head,
                                           std::string& body) {
  // The head as Atlas sent it, but framed by Content-Length for the new body.
  http::response<http::string_body> res{head.result(), head.version()};
  for (const auto& f : head) {
    if (f.name() == http::field::content_length || f.name() == http::field::transfer_encoding) continue;
    res.insert(f.name_string(), f.value());
  }
  res.body() = std::move(body);
  res.prepare_payload();
  res.keep_alive(ex.keepAlive);
  ex.rec.status = res.result_int();
  ex.rec.bytesOut = res.body().size();
  c.stream.expires_after(c.limits().requestTimeout);
  auto [ec, n] = co_await http::async_write(c.stream, res, kUseTuple);
  finish(c, ex);
  co_return !ec && ex.keepAlive;
}

asio::awaitable<std::optional<LocalResponse>> Server::sendWithCredential(Conn& c, Exchange& ex, HttpRequest& req,
                                                                         const CredentialRuntime* cred,
                                                                         upstream::Call& call, std::string& token) {
  const config::Limits& limits = c.limits();
  // The body is buffered, so a replay is exact.
  for (int round = 0; round < 3; ++round) {
    bool sentAuth = false;
    if (cred && cred->tokens) {
      Result<std::string> t = co_await cred->tokens->token();
      if (!t) {
        // The reason names the service account (its client id): the log
        // and the audit record (credential) keep it, the agent does not.
        log::warn("conn {} agent {}: credential {} unavailable: {}", c.flow.id, c.flow.agent.name, cred->description,
                  t.error().message);
        co_return refuse(Refusal::CredentialUnavailable,
                         "The credential for this request is unavailable right now (token endpoint failure); "
                         "retry later.");
      }
      token = std::move(t.value());
      req.set(http::field::authorization, "Bearer " + token);
      sentAuth = true;
    } else if (cred && cred->digest) {
      if (auto h = cred->digest->authorize(req.method_string(), req.target())) {
        req.set(http::field::authorization, *h);
        sentAuth = true;
      } else {
        req.erase(http::field::authorization);
      }
    }
    if (auto ec = co_await call.send(req, limits.upstreamTimeout)) {
      if (ec == PoolError::QueueTimeout) co_return upstreamBusy(c.target.host, limits);
      log::warn("conn {} agent {}: upstream {} {} failed: {}", c.flow.id, c.flow.agent.name, c.target.host,
                call.failedStep(), ec.message());
      co_return upstreamRefusal(ec, call.failedStep(), c.target.host);
    }
    if (call.response().result_int() != 401 || round == 2) break;
    bool retry = false;
    if (cred && cred->digest) {
      std::string_view www = call.response()[http::field::www_authenticate];
      auto ch = credentials::parseDigestChallenge(www);
      // The first challenge, or a stale nonce: answer it. A refusal of a
      // fresh answer is real (wrong key): relay it.
      if (ch && (!sentAuth || ch->stale)) {
        (void)cred->digest->onChallenge(www);
        retry = true;
      } else if (sentAuth) {
        cred->digest->reset();
      }
    } else if (cred && cred->tokens && round == 0) {
      cred->tokens->invalidate(token);
      retry = true;
    }
    if (!retry) break;
    counters_.add(Counter::CredentialRetries);
    // Discard the 401's body; keep the connection if it can be reused.
    if (co_await call.discardBody(limits.upstreamTimeout)) call.finish();
    call.abandon();
  }
  co_return std::nullopt;
}

asio::awaitable<bool> Server::relay(Conn& c, Exchange& ex, upstream::Call& call, capture::Tripwire* wire) {
  const config::Limits& limits = c.limits();
  auto& res = call.response();
  ex.rec.status = res.result_int();
  prepareAgentResponse(res);
  // A body that ends when the target closes ends the agent's connection too:
  // the agent has no other way to find its end.
  if (call.endsAtClose()) ex.keepAlive = false;
  res.keep_alive(ex.keepAlive);
  if (c.relayBuf.empty()) c.relayBuf.resize(16 * 1024);
  // The body goes on piece by piece as it arrives. A chunked one is framed
  // again by Beast's serializer; any other goes as it came, the first piece
  // in one write with the head. Framing is the parser's (the head's agrees:
  // Call refuses a head that reads two ways); a response with no body (to
  // HEAD, 204, 304) gets no chunks, whatever its head says.
  const bool chunked = call.chunked() && !call.done();
  std::optional<http::response_serializer<http::buffer_body>> sr;
  if (chunked)
    sr.emplace(res);
  else
    net::writeHead(c.head, res);
  bool headSent = false;
  beast::error_code relayErr;
  bool agentFailed = false;
  bool tripped = false;  // a secret capture did not plan for: the agent gets none of it
  do {
    std::size_t n = 0;
    if (!call.done()) {
      if (auto ec = co_await call.readSome(c.relayBuf.data(), c.relayBuf.size(), n, limits.upstreamTimeout)) {
        relayErr = ec;
        break;
      }
      if (wire && wire->hit(std::string_view(c.relayBuf.data(), n))) {
        relayErr = beast::error_code(boost::asio::error::access_denied);
        tripped = true;
        break;
      }
      ex.rec.bytesOut += n;
    }
    c.stream.expires_after(limits.requestTimeout);
    beast::error_code wec;
    if (chunked) {
      res.body().data = n ? c.relayBuf.data() : nullptr;
      res.body().size = n;
      res.body().more = !call.done();
      std::tie(wec, std::ignore) = co_await http::async_write(c.stream, *sr, kUseTuple);
      if (wec == http::error::need_buffer) wec = {};
    } else {
      const std::array<asio::const_buffer, 2> out{headSent ? asio::const_buffer() : asio::buffer(c.head),
                                                  asio::buffer(c.relayBuf.data(), n)};
      std::tie(wec, std::ignore) = co_await asio::async_write(c.stream, out, kUseTuple);
    }
    headSent = chunked ? sr->is_header_done() : !wec;
    if (wec) {
      relayErr = wec;
      agentFailed = true;
      break;
    }
  } while (!call.done() || (chunked && !sr->is_done()));

  if (tripped) co_return co_await tripRelay(c, ex, call, headSent);
  if (relayErr) {
    // The agent must see a broken response, never a fabricated complete one.
    log::warn("conn {} agent {}: relaying the response failed ({} side): {}", c.flow.id, c.flow.agent.name,
              agentFailed ? "agent" : "upstream", relayErr.message());
    ex.rec.error = agentFailed ? "AGENT_WRITE_FAILED" : "UPSTREAM_RESPONSE_TRUNCATED";
    call.abandon();
    finish(c, ex);
    co_return false;
  }
  call.finish();
  finish(c, ex);
  co_return ex.keepAlive;
}

asio::awaitable<void> Server::classify(tcp::socket socket, Flow flow) {
  // The destination is no known target address: what the ClientHello names
  // decides. Bytes are only peeked at, so a spliced connection gets them all.
  tls::HelloPeek hello = co_await peekHello(socket);
  if (hello.status == tls::HelloStatus::Sni) {
    const auto rt = runtime();
    const auto& targets = rt->targets;
    for (std::size_t i = 0; i < targets.size(); ++i)
      if (targets[i].host == hello.host && targets[i].protocol == config::Protocol::Https) {
        flow.origin.target_id = targets[i].id;
        co_await serve(std::move(socket), std::move(flow));
        co_return;
      }
  }
  if (hello.status == tls::HelloStatus::NeedMore && !socket.is_open()) co_return;
  co_await passthrough(std::move(socket), std::move(flow));
}

asio::awaitable<tls::HelloPeek> Server::peekHello(tcp::socket& socket) {
  const auto limits = runtime()->config->limits;
  auto deadline = Clock::now() + limits.handshakeTimeout;
  std::vector<std::uint8_t> peek(5 + 16384 + 2048);
  asio::steady_timer pause(io_);
  tls::HelloPeek hello;
  // Ends the connection: nothing usable arrived in time.
  auto drop = [&] {
    beast::error_code ignored;
    socket.close(ignored);
    return tls::HelloPeek{};
  };
  for (;;) {
    socket.non_blocking(true);
    ssize_t n = ::recv(socket.native_handle(), peek.data(), peek.size(), MSG_PEEK);
    if (n == 0) co_return drop();  // closed before saying anything
    if (n > 0) {
      hello = tls::peekClientHello(std::span<const std::uint8_t>(peek.data(), static_cast<std::size_t>(n)));
      if (hello.status != tls::HelloStatus::NeedMore || static_cast<std::size_t>(n) == peek.size()) break;
    } else if (errno != EAGAIN && errno != EWOULDBLOCK) {
      co_return drop();
    }
    if (Clock::now() >= deadline) co_return drop();
    if (n < 0) {
      auto [ec] = co_await socket.async_wait(tcp::socket::wait_read, kUseTuple);
      if (ec) co_return drop();
    } else {
      // Part of a record is here; the rest follows shortly.
      pause.expires_after(std::chrono::milliseconds(5));
      co_await pause.async_wait(kUseTuple);
    }
  }
  co_return hello;
}

namespace {

asio::awaitable<void> pump(beast::tcp_stream& from, beast::tcp_stream& to, std::chrono::seconds idle) {
  std::vector<char> buf(16 * 1024);
  for (;;) {
    from.expires_after(idle);
    auto [ec, n] = co_await from.async_read_some(asio::buffer(buf), kUseTuple);
    if (ec) {
      beast::error_code ignored;
      if (ec == asio::error::eof) {
        to.socket().shutdown(tcp::socket::shutdown_send, ignored);  // half-close, as the peer did
      } else {
        from.socket().close(ignored);
        to.socket().close(ignored);
      }
      co_return;
    }
    auto [wec, wn] = co_await asio::async_write(to, asio::buffer(buf.data(), n), kUseTuple);
    if (wec) {
      beast::error_code ignored;
      from.socket().close(ignored);
      to.socket().close(ignored);
      co_return;
    }
  }
}

}  // namespace

asio::awaitable<void> Server::passthrough(tcp::socket socket, Flow flow) {
  counters_.add(Counter::Passthrough);
  const auto limits = runtime()->config->limits;
  beast::tcp_stream agent(std::move(socket));
  auto refuse = [&](const std::string& why) {
    log::info("conn {} agent {}: pass-through to {} failed: {}", flow.id, flow.agent.name,
              endpointText(flow.originalDst), why);
    beast::error_code ignored;
    agent.socket().set_option(asio::socket_base::linger(true, 0), ignored);  // reset on close
  };
  beast::tcp_stream upstream(io_);
  if (flow.origin.netns_cookie != netnsCookie_) {
    // The agent lives in a network namespace of its own: dial from there, so
    // it reaches what it could reach anyway and nothing more (our namespace
    // may reach services the agent's cannot). Never fall back to ours.
    bool v6 = flow.originalDst.address().is_v6();
    Result<int> fd = namespaceSocket_ ? namespaceSocket_(flow.origin.netns_cookie, v6)
                                      : Result<int>(makeError("no socket source for agents' namespaces"));
    if (!fd) {
      refuse(fd.error().message);
      co_return;
    }
    beast::error_code aec;
    upstream.socket().assign(v6 ? tcp::v6() : tcp::v4(), *fd, aec);
    if (aec) {
      ::close(*fd);
      refuse(aec.message());
      co_return;
    }
  }
  upstream.expires_after(limits.upstreamTimeout);
  auto [ec] = co_await upstream.async_connect(flow.originalDst, kUseTuple);
  if (ec) {
    refuse(ec.message());
    co_return;
  }
  upstream.socket().set_option(tcp::no_delay(true), ec);
  log::debug("conn {} agent {}: not a target, spliced through to {}", flow.id, flow.agent.name,
             endpointText(flow.originalDst));
  co_await (pump(agent, upstream, limits.requestTimeout) && pump(upstream, agent, limits.requestTimeout));
}

}  // namespace atlasgate::proxy
