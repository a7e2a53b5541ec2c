#include "proxy/server.h"

#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/write.hpp>
#include <boost/asio/ip/v6_only.hpp>

#include <arpa/inet.h>
#include <sys/socket.h>
#include <unistd.h>
#include <fnmatch.h>

#include <boost/json.hpp>
#include <cctype>
#include <cstring>

#include "common/log.h"
#include "credentials/digest.h"
#include "credentials/token_provider.h"
#include "policy/policy.h"
#include "proxy/errors.h"
#include "proxy/rewrite.h"
#include "tls/server_context.h"
#include "tls/sni.h"

namespace atlasgate::proxy {

namespace json = boost::json;
using Clock = std::chrono::steady_clock;
using namespace asio::experimental::awaitable_operators;

ErrorResponse makeErrorResponse(unsigned status, std::string_view errorCode, std::string_view detail,
                                const std::vector<std::string>& parameters, bool shouldRetry,
                                unsigned httpVersion) {
  ErrorResponse res{static_cast<http::status>(status), httpVersion};
  json::object o;
  o["error"] = status;
  o["errorCode"] = errorCode;
  std::string_view reason = http::obsolete_reason(static_cast<http::status>(status));
  o["reason"] = reason;
  o["detail"] = detail;
  json::array params;
  for (const auto& p : parameters) params.emplace_back(p);
  o["parameters"] = std::move(params);
  res.set(http::field::content_type, "application/json");
  res.set(http::field::server, "atlasgate");
  res.set("x-should-retry", shouldRetry ? "true" : "false");
  res.body() = json::serialize(o);
  res.prepare_payload();
  return res;
}

const TargetRuntime* Runtime::findTarget(std::string_view host) const {
  for (const auto& t : targets)
    if (t.host == host) return &t;
  return nullptr;
}

const TargetRuntime* Runtime::findTargetById(std::uint32_t id) const {
  for (const auto& t : targets)
    if (t.id == id) return &t;
  return nullptr;
}

struct Server::Session {
  ConnectionInfo info;
  TlsStream* stream = nullptr;
};

Server::Server(asio::io_context& io, bpf::Loader& loader, tls::ServerContext& tls, UpstreamPool& pool,
               audit::AuditLog& audit, AgentDirectory& agents, Approvals& approvals, std::uint64_t netnsCookie)
    : io_(io),
      loader_(loader),
      tls_(tls),
      sslCtx_(std::make_unique<ssl::context>(tls.share())),
      pool_(pool),
      audit_(audit),
      agents_(agents),
      approvals_(approvals),
      netnsCookie_(netnsCookie) {}

Server::~Server() = default;

Result<void> Server::listen(std::uint16_t port) {
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
    if (!ec && ep.address().is_v6()) acc->set_option(asio::ip::v6_only(true), ec);
    if (!ec) acc->bind(ep, ec);
    if (!ec) acc->listen(asio::socket_base::max_listen_connections, ec);
    if (ec) {
      if (a.required) return makeError("listen on {}:{}: {}", a.text, port, ec.message());
      log::warn("not listening on [{}]:{}: {}", a.text, port, ec.message());
      continue;
    }
    log::info("listening on {}", a.required ? fmt::format("{}:{}", a.text, port) : fmt::format("[{}]:{}", a.text, port));
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
  asio::co_spawn(io_, [this, acc, netnsCookie]() -> asio::awaitable<void> { co_await acceptLoop(*acc, netnsCookie); },
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
  for (auto& [id, s] : sessions_) {
    if (s->stream) {
      beast::error_code ec;
      beast::get_lowest_layer(*s->stream).socket().shutdown(tcp::socket::shutdown_both, ec);
      beast::get_lowest_layer(*s->stream).close();
    }
  }
}

std::vector<ConnectionInfo> Server::connections() const {
  std::vector<ConnectionInfo> out;
  for (const auto& [id, s] : sessions_) out.push_back(s->info);
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

std::string endpointText(const tcp::endpoint& ep) {
  if (ep.address().is_v6()) return fmt::format("[{}]:{}", ep.address().to_string(), ep.port());
  return fmt::format("{}:{}", ep.address().to_string(), ep.port());
}

}  // namespace

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
        log::warn("accept: {} ({} live connections); pausing accepts", ec.message(), stats_.liveConnections.load());
        lastAcceptWarning_ = now;
      }
      ++stats_.acceptErrors;
      pause.expires_after(std::chrono::milliseconds(50));
      co_await pause.async_wait(kUseTuple);
      continue;
    }
    beast::error_code pec;
    tcp::endpoint peer = sock.remote_endpoint(pec);
    if (pec) continue;
    ag_flow_key key{};
    key.netns_cookie = netnsCookie;
    key.port = peer.port();
    if (peer.address().is_v4()) {
      key.family = AG_AF_INET;
      auto b = peer.address().to_v4().to_bytes();
      std::memcpy(key.addr, b.data(), 4);
    } else {
      auto a6 = peer.address().to_v6();
      if (a6.is_v4_mapped()) {
        key.family = AG_AF_INET;
        auto b = asio::ip::make_address_v4(asio::ip::v4_mapped, a6).to_bytes();
        std::memcpy(key.addr, b.data(), 4);
      } else {
        key.family = AG_AF_INET6;
        auto b = a6.to_bytes();
        std::memcpy(key.addr, b.data(), 16);
      }
    }
    std::optional<ag_origin> origin = loader_.takeFlow(key);
    if (!origin) {
      // Not redirected by the kernel: nobody we can vouch for. Reset it.
      ++stats_.refusedNoFlow;
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
    if (flow.agent.guarded && heldForDiscovery_ < runtime_->config->limits.maxConnectionsPerAgent) {
      // Under a guard, not named yet (a container just started or restarted):
      // wait, off the accept loop, for discovery to name it. (At most
      // max_connections_per_agent wait at once: unnamed, they share one cap.)
      ++stats_.heldForDiscovery;
      ++heldForDiscovery_;
      asio::co_spawn(io_, awaitNamed(std::move(sock), std::move(flow)), asio::detached);
      continue;
    }
    admit(std::move(sock), std::move(flow));
  }
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
  --heldForDiscovery_;
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
    ++stats_.refusedUnknownAgent;
    if (auto now = Clock::now(); now - lastUnknownWarning_ >= std::chrono::seconds(1)) {
      log::warn("refused a connection from pid {} ({}): {} is gone or under no attached cgroup{} ({} so far)",
                origin.pid, flow.comm, flow.agent.name,
                flow.agent.guarded ? " (under a guard, not named by discovery in time)" : "",
                stats_.refusedUnknownAgent.load());
      lastUnknownWarning_ = now;
    }
    sock.set_option(asio::socket_base::linger(true, 0), pec);
    sock.close(pec);
    return;
  }
  const config::Limits& caps = runtime_->config->limits;
  std::uint32_t& mine = perAgentConnections_[flow.agent.key];
  if (stats_.liveConnections.load() >= caps.maxConnections || mine >= caps.maxConnectionsPerAgent) {
    ++stats_.refusedOverLimit;
    if (mine == 0) perAgentConnections_.erase(flow.agent.key);
    auto now = Clock::now();
    if (now - lastLimitWarning_ >= std::chrono::seconds(1)) {
      log::warn("refused connections over a cap: agent {} has {} (max_connections_per_agent {}), {} in all "
                "(max_connections {})",
                flow.agent.name, mine, caps.maxConnectionsPerAgent, stats_.liveConnections.load(),
                caps.maxConnections);
      lastLimitWarning_ = now;
    }
    sock.set_option(asio::socket_base::linger(true, 0), pec);
    sock.close(pec);
    return;
  }
  ++stats_.accepted;
  ++mine;
  ++stats_.liveConnections;
  // Given back when the connection ends, whichever path serves it.
  flow.slot = std::shared_ptr<void>(nullptr, [this, key = flow.agent.key](void*) {
    --stats_.liveConnections;
    auto it = perAgentConnections_.find(key);
    if (it != perAgentConnections_.end() && --it->second == 0) perAgentConnections_.erase(it);
  });
  if (origin.flags & AG_ORIGIN_HANDED)
    log::debug("agent {}: a socket created by pid {} was connected by another process", flow.agent.name, origin.pid);
  flow.id = nextId_++;
  sock.set_option(tcp::no_delay(true), pec);
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
  if (origin.target_id == AG_TARGET_NONE)
    asio::co_spawn(io_, classify(std::move(sock), std::move(flow)), logFailure);
  else
    asio::co_spawn(io_, serve(std::move(sock), std::move(flow)), logFailure);
}

namespace {

// Per-request context the handler fills in for the audit record.
struct Exchange {
  audit::Record rec;
  Clock::time_point start;
  bool keepAlive = true;
};

const CredentialRuntime* chooseCredential(const TargetRuntime& t, const std::string& agent,
                                          std::string_view wanted) {
  for (const auto& c : t.credentials) {
    if (!wanted.empty()) {
      if (c.name == wanted) return &c;
      continue;
    }
    if (c.agents.empty()) return &c;
    for (const auto& g : c.agents)
      if (::fnmatch(g.c_str(), agent.c_str(), 0) == 0) return &c;
  }
  return nullptr;
}

std::string_view decisionName(policy::Verdict v) {
  switch (v) {
    case policy::Verdict::Allow: return "allow";
    case policy::Verdict::Block: return "block";
    case policy::Verdict::RateLimited: return "rate_limited";
    case policy::Verdict::Approve: return "approve";
    case policy::Verdict::Malformed: return "malformed";
  }
  return "?";
}


// Completes with true when the agent closes or resets its connection, false
// when it sends more bytes (kept in `buffer` for the next request) or when
// the wait is cancelled.
asio::awaitable<bool> agentHangsUp(TlsStream& stream, beast::flat_buffer& buffer) {
  co_await asio::this_coro::throw_if_cancelled(false);
  auto mb = buffer.prepare(4096);
  auto [ec, n] = co_await stream.async_read_some(mb, kUseTuple);
  buffer.commit(n);
  co_return ec && ec != asio::error::operation_aborted;
}

constexpr std::string_view kTokenPath = "/api/oauth/token";
constexpr std::string_view kRevokePath = "/api/oauth/revoke";

bool iequalsAscii(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y));
         });
}

std::string_view trimAscii(std::string_view v) {
  while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
  while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.remove_suffix(1);
  return v;
}

// Value of `key` in an application/x-www-form-urlencoded body ("" if absent).
std::string formValue(std::string_view body, std::string_view key) {
  while (!body.empty()) {
    auto amp = body.find('&');
    std::string_view pair = body.substr(0, amp);
    auto eq = pair.find('=');
    if (pair.substr(0, eq) == key && eq != std::string_view::npos) {
      std::string out;
      std::string_view v = pair.substr(eq + 1);
      for (std::size_t i = 0; i < v.size(); ++i) {
        if (v[i] == '+') {
          out.push_back(' ');
        } else if (v[i] == '%' && i + 2 < v.size() + 0 && std::isxdigit(static_cast<unsigned char>(v[i + 1])) &&
                   std::isxdigit(static_cast<unsigned char>(v[i + 2]))) {
          out.push_back(static_cast<char>(std::stoi(std::string(v.substr(i + 1, 2)), nullptr, 16)));
          i += 2;
        } else {
          out.push_back(v[i]);
        }
      }
      return out;
    }
    if (amp == std::string_view::npos) break;
    body.remove_prefix(amp + 1);
  }
  return {};
}

}  // namespace

asio::awaitable<void> Server::serve(tcp::socket socket, Flow flow) {
  std::shared_ptr<const Runtime> rt = runtime_;
  const config::Limits& limits = rt->config->limits;
  TlsStream stream(std::move(socket), *sslCtx_);
  auto& lower = beast::get_lowest_layer(stream);

  Session session;
  session.stream = &stream;
  session.info = {flow.id, flow.agent.name, flow.origin.pid, flow.comm, endpointText(flow.originalDst),
                  Clock::now(), 0};
  sessions_[flow.id] = &session;
  struct Leave {
    Server* s;
    std::uint64_t id;
    ~Leave() { s->sessions_.erase(id); }
  } leave{this, flow.id};

  // Absent SNI means the target that owns the address the agent dialled.
  const std::string* defaultHost = nullptr;
  if (const TargetRuntime* t = rt->findTargetById(flow.origin.target_id)) defaultHost = &t->host;
  tls::ServerContext::setDefaultHost(stream.native_handle(), defaultHost);

  lower.expires_after(limits.handshakeTimeout);
  auto [hec] = co_await stream.async_handshake(ssl::stream_base::server, kUseTuple);
  if (hec) {
    ++stats_.handshakeFailures;
    log::info("conn {} agent {}: TLS handshake failed: {}", flow.id, flow.agent.name, hec.message());
    co_return;
  }
  const std::string* selected = tls::ServerContext::selectedHost(stream.native_handle());
  const TargetRuntime* target = selected ? rt->findTarget(*selected) : nullptr;
  if (!target) co_return;  // a target a reload removed since the handshake began
  const std::string host = target->host;
  log::debug("conn {} agent {} pid {} comm {} -> {} ({})", flow.id, flow.agent.name, flow.origin.pid, flow.comm,
             host, endpointText(flow.originalDst));

  beast::flat_buffer buffer;
  buffer.max_size(limits.maxHeaderBytes + 64 * 1024);
  std::vector<char> relayBuf;  // response body relay, allocated at the first response, reused
  for (;;) {
    // Keep-alive: wait for the next request at most idleTimeout.
    if (buffer.size() == 0) {
      lower.expires_after(limits.idleTimeout);
      auto mb = buffer.prepare(4096);
      auto [rec, rn] = co_await stream.async_read_some(mb, kUseTuple);
      if (rec) break;  // closed, reset or idle: nothing to answer
      buffer.commit(rn);
    }

    Exchange ex;
    ex.start = Clock::now();
    ex.rec.agent = flow.agent.name;
    ex.rec.pid = flow.origin.pid;
    ex.rec.comm = flow.comm;
    ex.rec.cgroup = flow.agent.cgroupPath;
    ex.rec.host = host;
    ex.rec.dst = endpointText(flow.originalDst);

    // The whole head must arrive within headerTimeout (slow loris).
    http::request_parser<http::string_body> parser;
    parser.header_limit(limits.maxHeaderBytes);
    parser.body_limit(limits.maxBodyBytes);
    lower.expires_after(limits.headerTimeout);
    auto [hrec, hn] = co_await http::async_read_header(stream, buffer, parser, kUseTuple);

    auto answer = [&](ErrorResponse res, std::string_view code) -> asio::awaitable<bool> {
      res.keep_alive(ex.keepAlive);
      ex.rec.status = res.result_int();
      ex.rec.error = std::string(code);
      ex.rec.bytesOut = res.body().size();
      lower.expires_after(limits.requestTimeout);
      auto [wec, wn] = co_await http::async_write(stream, res, kUseTuple);
      co_return !wec;
    };
    auto finish = [&] {
      ex.rec.ts = std::chrono::system_clock::now();
      ex.rec.totalMs = std::chrono::duration<double, std::milli>(Clock::now() - ex.start).count();
      audit_.write(ex.rec);
      metrics_.record(ex.rec);
      ++session.info.requests;
    };

    if (hrec) {
      if (hrec == http::error::end_of_stream || hrec == asio::ssl::error::stream_truncated) break;
      ex.keepAlive = false;
      ++stats_.badRequests;
      if (hrec == beast::error::timeout) {
        {
        ErrorResponse errRes = makeErrorResponse(408, kRequestTimeout, "The request head did not arrive in time.");
        co_await answer(std::move(errRes), kRequestTimeout);
      }
      } else if (hrec == http::error::body_limit) {
        ErrorResponse errRes = makeErrorResponse(
            413, kBodyTooLarge, fmt::format("The request body exceeds {} bytes.", limits.maxBodyBytes));
        co_await answer(std::move(errRes), kBodyTooLarge);
      } else if (hrec == http::error::header_limit || hrec == http::error::buffer_overflow) {
        {
        ErrorResponse errRes = makeErrorResponse(431, kHeadersTooLarge,
                                          fmt::format("The request head exceeds {} bytes.", limits.maxHeaderBytes));
        co_await answer(std::move(errRes), kHeadersTooLarge);
      }
      } else {
        {
        ErrorResponse errRes = makeErrorResponse(400, kBadRequest, fmt::format("Malformed HTTP request: {}.", hrec.message()));
        co_await answer(std::move(errRes), kBadRequest);
      }
      }
      ex.rec.method = "-";
      ex.rec.decision = "malformed";
      finish();
      break;
    }

    auto& head = parser.get();
    ex.rec.method = std::string(head.method_string());
    ex.rec.path = std::string(head.target());
    ex.keepAlive = head.keep_alive();
    if (static_cast<std::size_t>(std::distance(head.begin(), head.end())) > limits.maxHeaders) {
      ex.keepAlive = false;
      ++stats_.badRequests;
      {
        ErrorResponse errRes = makeErrorResponse(
            431, kHeadersTooLarge, fmt::format("The request has more than {} header fields.", limits.maxHeaders));
        co_await answer(std::move(errRes), kHeadersTooLarge);
      }
      ex.rec.decision = "malformed";
      finish();
      break;
    }
    if (auto cl = parser.content_length(); cl && *cl > limits.maxBodyBytes) {
      ex.keepAlive = false;
      ++stats_.badRequests;
      {
        ErrorResponse errRes = makeErrorResponse(413, kBodyTooLarge,
                                        fmt::format("The request body exceeds {} bytes.", limits.maxBodyBytes));
        co_await answer(std::move(errRes), kBodyTooLarge);
      }
      ex.rec.decision = "malformed";
      finish();
      break;
    }
    if (head[http::field::expect] == "100-continue") {
      http::response<http::empty_body> cont{http::status::continue_, 11};
      co_await http::async_write(stream, cont, kUseTuple);
    }
    lower.expires_after(limits.requestTimeout);
    auto [brec, bn] = co_await http::async_read(stream, buffer, parser, kUseTuple);
    if (brec) {
      ex.keepAlive = false;
      ++stats_.badRequests;
      if (brec == http::error::body_limit)
        {
        ErrorResponse errRes = makeErrorResponse(413, kBodyTooLarge,
                                          fmt::format("The request body exceeds {} bytes.", limits.maxBodyBytes));
        co_await answer(std::move(errRes), kBodyTooLarge);
      }
      else if (brec == beast::error::timeout)
        {
        ErrorResponse errRes = makeErrorResponse(408, kRequestTimeout, "The request body did not arrive in time.");
        co_await answer(std::move(errRes), kRequestTimeout);
      }
      else if (brec != http::error::end_of_stream && brec != asio::ssl::error::stream_truncated)
        {
        ErrorResponse errRes = makeErrorResponse(400, kBadRequest, fmt::format("Malformed HTTP request body: {}.", brec.message()));
        co_await answer(std::move(errRes), kBadRequest);
      }
      ex.rec.decision = "malformed";
      finish();
      break;
    }
    http::request<http::string_body> req = parser.release();
    ex.rec.bytesIn = req.body().size();
    ++stats_.requests;

    // Framing and addressing checks (smuggling, misdirection).
    RequestCheck check = checkRequest(req, host);
    ex.rec.path = std::string(req.target());  // absolute-form is now origin-form
    if (!check.ok) {
      ex.keepAlive = ex.keepAlive && !check.closeConnection;
      ++stats_.badRequests;
      {
        ErrorResponse errRes = makeErrorResponse(check.status, check.status == 421 ? kMisdirected : kBadRequest, check.detail);
        co_await answer(std::move(errRes), check.status == 421 ? kMisdirected : kBadRequest);
      }
      ex.rec.decision = "malformed";
      finish();
      if (!ex.keepAlive) break;
      continue;
    }

    // Rules decide before any credential is touched.
    policy::Request preq;
    preq.method = req.method_string();
    preq.target = req.target();
    preq.host = host;
    preq.agent = flow.agent.name;
    preq.podLabels = flow.agent.podLabels.get();
    preq.containerLabels = flow.agent.containerLabels.get();
    if (!req.body().empty()) preq.body = std::string_view(req.body());
    // A method-override header makes the request Malformed (policy.h).
    for (std::string_view name : policy::kMethodOverrideHeaders) {
      if (req.find(name) != req.end()) {
        preq.methodOverride = name;
        break;
      }
    }
    policy::Decision d = rt->policy->evaluate(preq, Clock::now());
    ex.rec.rule = std::string(d.ruleName);
    ex.rec.decision = std::string(decisionName(d.verdict));
    if (d.logOnlyWouldBe) ex.rec.decision = "log_only";

    bool proceed = true;
    switch (d.verdict) {
      case policy::Verdict::Allow:
        break;
      case policy::Verdict::Malformed:
        ++stats_.badRequests;
        ex.keepAlive = false;
        {
        ErrorResponse errRes = makeErrorResponse(400, kBadRequest, fmt::format("Malformed request: {}.", d.malformedReason));
        co_await answer(std::move(errRes), kBadRequest);
      }
        proceed = false;
        break;
      case policy::Verdict::Block: {
        ++stats_.blocked;
        std::string detail = fmt::format("Blocked by rule \"{}\": {} {} is not allowed for agent \"{}\".", d.ruleName,
                                         ex.rec.method, ex.rec.path, flow.agent.name);
        {
        ErrorResponse errRes = makeErrorResponse(403, kBlocked, detail, {std::string(d.ruleName)});
        co_await answer(std::move(errRes), kBlocked);
      }
        proceed = false;
        break;
      }
      case policy::Verdict::RateLimited: {
        ++stats_.rateLimited;
        auto secs = std::max<long long>(1, d.retryAfter.count());
        std::string detail =
            fmt::format("Rate limit of rule \"{}\" exceeded for agent \"{}\". Please retry after {} seconds.",
                        d.ruleName, flow.agent.name, secs);
        ErrorResponse res = makeErrorResponse(429, kRateLimited, detail, {std::string(d.ruleName)}, true);
        res.set(http::field::retry_after, std::to_string(secs));
        co_await answer(std::move(res), kRateLimited);
        proceed = false;
        break;
      }
      case policy::Verdict::Approve: {
        ApprovalInfo info;
        info.agent = flow.agent.name;
        info.agentKey = agentKey(flow);
        info.method = ex.rec.method;
        info.host = host;
        info.path = ex.rec.path;
        info.rule = std::string(d.ruleName);
        previewBody(info, req.body());
        info.timeout = d.approveTimeout.count() > 0 ? d.approveTimeout : std::chrono::seconds(120);
        // A held request keeps its body in memory: what may be held is capped.
        Admission admitted = approvals_.add(
            std::move(info), HoldLimits{limits.maxHeldRequests, limits.maxHeldPerAgent, limits.maxHeldBodyBytes});
        if (!admitted.id) {
          const char* cap = admitted.full == HoldCap::PerAgent ? "this agent's held requests (max_held_per_agent)"
                            : admitted.full == HoldCap::BodyBytes
                                ? "the bodies of held requests (max_held_body_bytes)"
                                : "held requests (max_held_requests)";
          log::info("conn {} agent {}: {} {} not held for approval by rule \"{}\": the cap on {} is reached",
                    flow.id, flow.agent.name, ex.rec.method, ex.rec.path, d.ruleName, cap);
          ex.rec.decision = "approval_queue_full";
          ErrorResponse res = makeErrorResponse(
              429, kApprovalQueueFull,
              fmt::format("Request {} {} needs an operator's approval (rule \"{}\"), but the cap on {} is reached. "
                          "Please retry after {} seconds.",
                          ex.rec.method, ex.rec.path, d.ruleName, cap, admitted.retryAfter.count()),
              {std::string(d.ruleName)}, true);
          res.set(http::field::retry_after, std::to_string(admitted.retryAfter.count()));
          co_await answer(std::move(res), kApprovalQueueFull);
          proceed = false;
          break;
        }
        ++stats_.approvalsHeld;
        std::uint64_t approvalId = admitted.id;
        log::info("conn {} agent {}: {} {} held for approval by rule \"{}\" (request {})", flow.id, flow.agent.name,
                  ex.rec.method, ex.rec.path, d.ruleName, approvalId);
        lower.expires_never();
        // Wait for the decision, but notice an agent that hangs up meanwhile:
        // nobody would receive the answer, so nothing must be done for it.
        std::variant<ApprovalOutcome, bool> first =
            co_await (approvals_.wait(approvalId) || agentHangsUp(stream, buffer));
        ApprovalOutcome outcome = first.index() == 0 ? std::get<0>(first) : ApprovalOutcome::Waiting;
        if (first.index() == 1 && std::get<1>(first)) {
          approvals_.abandon(approvalId);
          log::info("conn {} agent {}: held request {} abandoned: the agent closed the connection", flow.id,
                    flow.agent.name, approvalId);
          ex.rec.decision = "abandoned";
          ex.keepAlive = false;
          finish();
          break;
        }
        if (outcome == ApprovalOutcome::Waiting) outcome = co_await approvals_.wait(approvalId);
        if (outcome == ApprovalOutcome::Approved) {
          ex.rec.decision = "approved";
          break;
        }
        ex.rec.decision = outcome == ApprovalOutcome::Denied ? "denied" : "approval_timeout";
        std::string detail = fmt::format(
            "Request {} {} for agent \"{}\" was {} (rule \"{}\").", ex.rec.method, ex.rec.path, flow.agent.name,
            outcome == ApprovalOutcome::Denied ? "denied by an operator" : "not approved in time", d.ruleName);
        {
        ErrorResponse errRes = makeErrorResponse(403, kApprovalDenied, detail, {std::string(d.ruleName)});
        co_await answer(std::move(errRes), kApprovalDenied);
      }
        proceed = false;
        break;
      }
    }
    if (!proceed) {
      finish();
      if (!ex.keepAlive) break;
      continue;
    }

    // Clients that run the OAuth flow themselves get a phantom token here.
    std::string_view pathOnly = req.target().substr(0, req.target().find('?'));
    if (req.method() == http::verb::post && (pathOnly == kTokenPath || pathOnly == kRevokePath)) {
      http::response<http::string_body> res = answerOAuthLocally(req, pathOnly == kTokenPath, agentKey(flow));
      res.keep_alive(ex.keepAlive);
      ex.rec.status = res.result_int();
      ex.rec.bytesOut = res.body().size();
      ex.rec.decision = "local";
      lower.expires_after(limits.requestTimeout);
      auto [wec, wn] = co_await http::async_write(stream, res, kUseTuple);
      finish();
      if (wec || !ex.keepAlive) break;
      continue;
    }
    // A phantom token must be this agent's own, and alive; any other bearer
    // the agent sends is simply dropped below.
    if (std::string_view authz = req[http::field::authorization]; authz.size() > 7 && iequalsAscii(authz.substr(0, 7), "bearer ")) {
      credentials::PhantomCheck pc = phantoms_.check(trimAscii(authz.substr(7)), agentKey(flow));
      if (pc != credentials::PhantomCheck::NotPhantom && pc != credentials::PhantomCheck::Valid) {
        const char* why = pc == credentials::PhantomCheck::WrongAgent ? "was issued to another agent"
                          : pc == credentials::PhantomCheck::Expired  ? "has expired"
                                                                      : "is not known";
        {
          ErrorResponse errRes = makeErrorResponse(
              401, kInvalidToken, fmt::format("The access token {}; request a new one from /api/oauth/token.", why));
          co_await answer(std::move(errRes), kInvalidToken);
        }
        ex.rec.decision = "invalid_token";
        ++stats_.phantomRefused;
        finish();
        if (!ex.keepAlive) break;
        continue;
      }
    }

    // Credentials: the agent's own are dropped; the target's are injected.
    const CredentialRuntime* cred = nullptr;
    if (!target->credentials.empty()) {
      cred = chooseCredential(*target, flow.agent.name, d.credential);
      if (!cred) {
        ++stats_.credentialFailures;
        // The agent learns nothing about the credentials; the log names them.
        log::warn("conn {} agent {}: no credential of {} for this agent{}", flow.id, flow.agent.name, host,
                  d.credential.empty() ? std::string() : fmt::format(" (rule \"{}\" names credential \"{}\")",
                                                                     d.ruleName, d.credential));
        {
          ErrorResponse errRes = makeErrorResponse(503, kCredentialUnavailable,
                                                   "No credential is available for this request.", {}, false);
          co_await answer(std::move(errRes), kCredentialUnavailable);
        }
        finish();
        if (!ex.keepAlive) break;
        continue;
      }
      ex.rec.credential = cred->description;
    }
    prepareUpstreamRequest(req, host);
    req.keep_alive(true);
    std::string payloadError;
    try {
      req.prepare_payload();
    } catch (const std::exception& e) {  // e.g. a body on a method that cannot have one
      payloadError = e.what();
    }
    if (!payloadError.empty()) {
      ++stats_.badRequests;
      ex.keepAlive = false;
      {
        ErrorResponse errRes =
            makeErrorResponse(400, kBadRequest, fmt::format("Cannot forward this request: {}.", payloadError));
        co_await answer(std::move(errRes), kBadRequest);
      }
      ex.rec.decision = "malformed";
      finish();
      break;
    }

    // Send, answering what the credential needs: a Digest challenge (or a
    // stale nonce), or one token refresh when Atlas rejects a token we
    // believed valid. The body is buffered, so a replay is exact.
    std::string token;
    std::unique_ptr<UpstreamConn> up;
    beast::flat_buffer upBuffer;
    std::optional<http::response_parser<http::buffer_body>> rpo;
    UpstreamResult ur;
    bool credentialFailed = false;
    auto upStart = Clock::now();
    for (int round = 0; round < 3; ++round) {
      bool sentAuth = false;
      if (cred && cred->tokens) {
        Result<std::string> t = co_await cred->tokens->token();
        if (!t) {
          ++stats_.credentialFailures;
          // The reason names the service account (its client id): the log
          // and the audit record (credential) keep it, the agent does not.
          log::warn("conn {} agent {}: credential {} unavailable: {}", flow.id, flow.agent.name, cred->description,
                    t.error().message);
          {
            ErrorResponse errRes = makeErrorResponse(
                503, kCredentialUnavailable,
                "The credential for this request is unavailable right now (token endpoint failure); retry later.", {},
                true);
            co_await answer(std::move(errRes), kCredentialUnavailable);
          }
          credentialFailed = true;
          break;
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
      ur = co_await sendUpstream(host, flow.agent.key, limits, req, up, upBuffer, rpo);
      if (!ur.ok || rpo->get().result_int() != 401 || round == 2) break;
      bool retry = false;
      if (cred && cred->digest) {
        std::string_view www = rpo->get()[http::field::www_authenticate];
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
      ++stats_.credentialRetries;
      // Discard the 401's body; keep the connection if it can be reused.
      bool drained = co_await drainBody(*up, upBuffer, *rpo, limits.upstreamTimeout);
      if (drained && rpo->get().keep_alive() && upBuffer.size() == 0) pool_.release(std::move(up));
      up.reset();
    }
    if (credentialFailed) {
      finish();
      if (!ex.keepAlive) break;
      continue;
    }
    if (!ur.ok && ur.ec == PoolError::QueueTimeout) {
      // Every upstream connection of this target stayed busy: not a failure
      // of the target, a queue that did not move in time.
      ++stats_.upstreamBusy;
      auto secs = std::max<long long>(1, limits.upstreamQueueTimeout.count());
      ErrorResponse res = makeErrorResponse(
          503, kUpstreamBusy,
          fmt::format("All {} connections to {} stayed busy for {} seconds. Please retry after {} seconds.",
                      limits.maxUpstreamConnections, host, limits.upstreamQueueTimeout.count(), secs),
          {}, true);
      res.set(http::field::retry_after, std::to_string(secs));
      co_await answer(std::move(res), kUpstreamBusy);
      ex.rec.upstreamMs = std::chrono::duration<double, std::milli>(Clock::now() - upStart).count();
      finish();
      if (!ex.keepAlive) break;
      continue;
    }
    if (!ur.ok) {
      ++stats_.upstreamFailures;
      bool timeout = ur.ec == beast::error::timeout;
      log::warn("conn {} agent {}: upstream {} {} failed: {}", flow.id, flow.agent.name, host, ur.step,
                ur.ec.message());
      {
        ErrorResponse errRes = makeErrorResponse(
            timeout ? 504 : 502, timeout ? kUpstreamTimeout : kUpstreamUnavailable,
            fmt::format("{} could not be reached ({} failed: {}).", host, ur.step, ur.ec.message()), {}, true);
        co_await answer(std::move(errRes), timeout ? kUpstreamTimeout : kUpstreamUnavailable);
      }
      ex.rec.upstreamMs = std::chrono::duration<double, std::milli>(Clock::now() - upStart).count();
      finish();
      if (!ex.keepAlive) break;
      continue;
    }

    // Relay the response, streaming its body (chunked stays chunked).
    auto& rp = *rpo;
    auto& res = rp.get();
    unsigned status = res.result_int();
    if (status == 401 && cred && cred->tokens && !token.empty()) cred->tokens->invalidate(token);
    bool upstreamKeepAlive = res.keep_alive();
    prepareAgentResponse(res);
    res.keep_alive(ex.keepAlive);
    ex.rec.status = status;
    ex.rec.upstreamMs = std::chrono::duration<double, std::milli>(Clock::now() - upStart).count();

    if (relayBuf.empty()) relayBuf.resize(16 * 1024);
    http::response_serializer<http::buffer_body> sr{res};
    beast::error_code relayErr;
    bool agentFailed = false;
    auto& ulower = beast::get_lowest_layer(up->stream);
    do {
      if (!rp.is_done()) {
        res.body().data = relayBuf.data();
        res.body().size = relayBuf.size();
        ulower.expires_after(limits.upstreamTimeout);
        auto [rec, rn] = co_await http::async_read(up->stream, upBuffer, rp, kUseTuple);
        if (rec == http::error::need_buffer) rec = {};
        if (rec) {
          relayErr = rec;
          break;
        }
        res.body().size = relayBuf.size() - res.body().size;
        res.body().data = relayBuf.data();
        res.body().more = !rp.is_done();
        ex.rec.bytesOut += res.body().size;
      } else {
        res.body().data = nullptr;
        res.body().size = 0;
        res.body().more = false;
      }
      lower.expires_after(limits.requestTimeout);
      auto [wec, wn] = co_await http::async_write(stream, sr, kUseTuple);
      if (wec == http::error::need_buffer) wec = {};
      if (wec) {
        relayErr = wec;
        agentFailed = true;
        break;
      }
    } while (!rp.is_done() || !sr.is_done());

    if (relayErr) {
      // The agent must see a broken response, never a fabricated complete one.
      log::warn("conn {} agent {}: relaying the response failed ({} side): {}", flow.id, flow.agent.name,
                agentFailed ? "agent" : "upstream", relayErr.message());
      ex.rec.error = agentFailed ? "AGENT_WRITE_FAILED" : "UPSTREAM_RESPONSE_TRUNCATED";
      finish();
      break;
    }
    ulower.expires_never();
    if (upstreamKeepAlive && upBuffer.size() == 0) pool_.release(std::move(up));
    finish();
    if (!ex.keepAlive) break;
  }

  beast::error_code ec;
  lower.expires_after(std::chrono::seconds(2));
  co_await stream.async_shutdown(kUseTuple);
  lower.socket().close(ec);
}

std::string Server::agentKey(const Flow& flow) {
  // The cgroup path (with the launcher's ".<pid>") identifies one agent run;
  // an agent cannot put itself into another agent's cgroup.
  return flow.agent.key;
}

http::response<http::string_body> Server::answerOAuthLocally(const http::request<http::string_body>& req, bool token,
                                                             const std::string& key) {
  http::response<http::string_body> res{http::status::ok, req.version()};
  res.set(http::field::content_type, "application/json");
  res.set(http::field::cache_control, "no-store");
  res.set(http::field::pragma, "no-cache");
  res.set(http::field::server, "atlasgate");
  if (token) {
    std::string grant = formValue(req.body(), "grant_type");
    if (grant != "client_credentials") {
      res.result(http::status::bad_request);
      res.body() = json::serialize(json::object{
          {"error", grant.empty() ? "invalid_request" : "unsupported_grant_type"},
          {"error_description", grant.empty() ? "grant_type is missing" : "only client_credentials is supported"}});
    } else {
      ++stats_.phantomIssued;
      json::object o;
      // At the agent's cap its oldest phantom goes (see credentials/phantom.h).
      o["access_token"] = phantoms_.issue(key, runtime_->config->limits.maxPhantomTokensPerAgent);
      o["expires_in"] = credentials::PhantomTokens::kLifetime.count();
      o["token_type"] = "Bearer";
      res.body() = json::serialize(o);
    }
  } else {
    phantoms_.revoke(formValue(req.body(), "token"), key);
    res.body() = "{}";
  }
  res.prepare_payload();
  return res;
}

asio::awaitable<Server::UpstreamResult> Server::sendUpstream(
    const std::string& host, const std::string& agent, const config::Limits& limits,
    http::request<http::string_body>& req, std::unique_ptr<UpstreamConn>& up, beast::flat_buffer& buffer,
    std::optional<http::response_parser<http::buffer_body>>& rpo) {
  UpstreamResult r;
  for (int attempt = 0; attempt < 2; ++attempt) {
    buffer.clear();
    auto got = co_await pool_.acquire(host, agent);
    if (got.ec) {
      r.ec = got.ec;
      r.step = "connect";
      co_return r;
    }
    bool reused = got.reused;
    up = std::move(got.conn);
    auto& ulower = beast::get_lowest_layer(up->stream);
    ulower.expires_after(limits.upstreamTimeout);
    auto [wec, wn] = co_await http::async_write(up->stream, req, kUseTuple);
    if (wec) {
      r.ec = wec;
      r.step = "write";
      up.reset();
      if (reused) continue;
      co_return r;
    }
    rpo.emplace();
    rpo->body_limit(boost::none);
    if (req.method() == http::verb::head) rpo->skip(true);
    auto [rec, rn] = co_await http::async_read_header(up->stream, buffer, *rpo, kUseTuple);
    if (rec) {
      r.ec = rec;
      r.step = "read";
      up.reset();
      // A keep-alive connection the target closed meanwhile: nothing of the
      // request was processed, try once on a fresh one.
      if (reused && (rec == http::error::end_of_stream || rec == asio::ssl::error::stream_truncated) &&
          buffer.size() == 0)
        continue;
      co_return r;
    }
    r.ok = true;
    r.ec = {};
    r.step.clear();
    co_return r;
  }
  co_return r;
}

asio::awaitable<bool> Server::drainBody(UpstreamConn& up, beast::flat_buffer& buffer,
                                        http::response_parser<http::buffer_body>& parser,
                                        std::chrono::seconds timeout) {
  std::vector<char> scratch(8192);
  auto& lower = beast::get_lowest_layer(up.stream);
  while (!parser.is_done()) {
    parser.get().body().data = scratch.data();
    parser.get().body().size = scratch.size();
    lower.expires_after(timeout);
    auto [ec, n] = co_await http::async_read(up.stream, buffer, parser, kUseTuple);
    if (ec == http::error::need_buffer) continue;
    if (ec) co_return false;
  }
  lower.expires_never();
  co_return true;
}

asio::awaitable<void> Server::classify(tcp::socket socket, Flow flow) {
  // The destination is no known target address: what the ClientHello names
  // decides. Bytes are only peeked at, so a spliced connection gets them all.
  const auto limits = runtime_->config->limits;
  auto deadline = Clock::now() + limits.handshakeTimeout;
  std::vector<std::uint8_t> peek(5 + 16384 + 2048);
  asio::steady_timer pause(io_);
  tls::HelloPeek hello;
  for (;;) {
    socket.non_blocking(true);
    ssize_t n = ::recv(socket.native_handle(), peek.data(), peek.size(), MSG_PEEK);
    if (n == 0) co_return;  // closed before saying anything
    if (n > 0) {
      hello = tls::peekClientHello(std::span<const std::uint8_t>(peek.data(), static_cast<std::size_t>(n)));
      if (hello.status != tls::HelloStatus::NeedMore || static_cast<std::size_t>(n) == peek.size()) break;
    } else if (errno != EAGAIN && errno != EWOULDBLOCK) {
      co_return;
    }
    if (Clock::now() >= deadline) co_return;
    if (n < 0) {
      auto [ec] = co_await socket.async_wait(tcp::socket::wait_read, kUseTuple);
      if (ec) co_return;
    } else {
      // Part of a record is here; the rest follows shortly.
      pause.expires_after(std::chrono::milliseconds(5));
      co_await pause.async_wait(kUseTuple);
    }
  }
  if (hello.status == tls::HelloStatus::Sni) {
    const auto& targets = runtime_->targets;
    for (std::size_t i = 0; i < targets.size(); ++i)
      if (targets[i].host == hello.host) {
        flow.origin.target_id = targets[i].id;
        co_await serve(std::move(socket), std::move(flow));
        co_return;
      }
  }
  co_await passthrough(std::move(socket), std::move(flow));
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
  ++stats_.passthrough;
  const auto limits = runtime_->config->limits;
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
