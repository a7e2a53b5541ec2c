#include "console/server.h"

#include <fmt/format.h>

#include <list>
#include <set>

#include "common/log.h"
#include "net/asio.h"

namespace atlasgate::console {

using namespace net;  // asio, beast, http, tcp, kUseTuple

namespace {

constexpr auto kIoTimeout = std::chrono::seconds(10);
constexpr auto kPingEvery = std::chrono::seconds(15);
constexpr std::size_t kMaxBody = 64 * 1024;
constexpr std::size_t kMaxHeader = 16 * 1024;

Request fromBeast(const http::request<http::string_body>& in) {
  Request r;
  r.method = std::string(in.method_string());
  r.target = std::string(in.target());
  r.host = std::string(in[http::field::host]);
  r.hasOrigin = in.find(http::field::origin) != in.end();
  r.origin = std::string(in[http::field::origin]);
  r.secFetchSite = std::string(in["Sec-Fetch-Site"]);
  r.cookie = std::string(in[http::field::cookie]);
  r.csrf = std::string(in["X-CSRF-Token"]);
  r.lastEventId = std::string(in["Last-Event-ID"]);
  r.contentType = std::string(in[http::field::content_type]);
  r.body = in.body();
  return r;
}

http::response<http::string_body> toBeast(Response&& r, unsigned version, bool keepAlive) {
  http::response<http::string_body> out{static_cast<http::status>(r.status), version};
  for (const auto& [k, v] : kSecurityHeaders) out.set(k, v);
  out.set(http::field::content_type, r.contentType);
  for (const auto& [k, v] : r.headers) out.insert(k, v);
  out.body() = std::move(r.body);
  out.keep_alive(keepAlive);
  out.prepare_payload();
  return out;
}

// A request with more than one Host (or Cookie) header is ambiguous: which
// one was checked and which one used would depend on who reads it.
bool ambiguous(const http::request<http::string_body>& req) {
  return req.count(http::field::host) != 1 || req.count(http::field::cookie) > 1 ||
         req.count(http::field::origin) > 1 || req.count("X-CSRF-Token") > 1;
}

}  // namespace

struct Server::Impl : std::enable_shared_from_this<Server::Impl> {
  Impl(asio::io_context& io, const std::string& address, std::chrono::seconds lifetime, Handlers h)
      : acceptor(io), console(address, lifetime, std::move(h), feed) {}

  struct Stream {
    beast::tcp_stream* socket;
    asio::steady_timer wake;
    bool approvalsDirty = true;  // the first event tells the page how many wait
  };

  // An open connection. At the cap, a new connection pushes out the oldest
  // one that has not shown a session: whoever can connect (agents included)
  // cannot lock the operator out by holding connections open.
  struct Slot {
    beast::tcp_stream* stream;
    bool signedIn = false;
  };
  tcp::acceptor acceptor;
  Feed feed;
  Console console;
  std::list<Slot> open;  // oldest first; closed on stop()
  std::set<Stream*> streams;
  std::size_t pendingApprovals = 0;

  void wakeStreams(bool approvals) {
    for (auto* s : streams) {
      s->approvalsDirty = s->approvalsDirty || approvals;
      s->wake.cancel();
    }
  }

  // Each coroutine holds the Impl (self): a frame that outlives the Server
  // (destroyed with the io_context) must not touch freed memory.
  asio::awaitable<void> serve(std::shared_ptr<Impl> self, tcp::socket sock);
  asio::awaitable<void> streamEvents(beast::tcp_stream& stream, const Response& grant);
  std::string pendingEvents(Stream& s, std::uint64_t& seq);

  // Makes room for a new connection; false when every slot is signed in.
  bool makeRoom() {
    if (open.size() < kMaxConnections) return true;
    for (auto& slot : open) {
      if (slot.signedIn) continue;
      beast::error_code ec;
      slot.stream->socket().shutdown(tcp::socket::shutdown_both, ec);
      slot.stream->socket().close(ec);  // its coroutine ends and frees the slot
      return true;
    }
    return false;
  }

  asio::awaitable<void> acceptLoop(std::shared_ptr<Impl> self) {
    asio::steady_timer pause(acceptor.get_executor());
    for (;;) {
      auto [ec, sock] = co_await acceptor.async_accept(kUseTuple);
      if (ec) {
        if (ec == asio::error::operation_aborted || !acceptor.is_open()) co_return;
        // Out of descriptors or memory: back off rather than spin the loop.
        log::warn("console: accept: {}", ec.message());
        pause.expires_after(std::chrono::milliseconds(200));
        co_await pause.async_wait(kUseTuple);
        continue;
      }
      if (!makeRoom()) continue;  // dropped: the socket closes here
      asio::co_spawn(acceptor.get_executor(), serve(self, std::move(sock)), asio::detached);
    }
  }
};

asio::awaitable<void> Server::Impl::serve(std::shared_ptr<Impl> self, tcp::socket sock) {
  beast::tcp_stream stream(std::move(sock));
  auto slot = open.insert(open.end(), Slot{&stream});
  struct Forget {
    std::list<Slot>& open;
    std::list<Slot>::iterator slot;
    ~Forget() { open.erase(slot); }
  } forget{open, slot};
  beast::flat_buffer buf;
  for (;;) {
    http::request_parser<http::string_body> parser;
    parser.body_limit(kMaxBody);
    parser.header_limit(kMaxHeader);
    stream.expires_after(kIoTimeout);
    auto [ec, n] = co_await http::async_read(stream, buf, parser, kUseTuple);
    if (ec) co_return;
    auto& req = parser.get();
    Response res;
    if (ambiguous(req)) {
      res.status = 400;
      res.contentType = "text/plain; charset=utf-8";
      res.body = "atlasgate console: one Host, Cookie, Origin and X-CSRF-Token header at most\n";
    } else {
      res = console.handle(fromBeast(req), std::chrono::steady_clock::now(), std::chrono::system_clock::now());
    }
    if (res.eventStream) {
      slot->signedIn = true;
      if (streams.size() >= kMaxStreams) {
        res = Response{};
        res.status = 503;
        res.body = R"({"ok":false,"error":"too many open event streams"})";
      } else {
        co_await streamEvents(stream, res);
        co_return;
      }
    }
    slot->signedIn = slot->signedIn || res.signedIn;
    // Only a signed-in page keeps its connection: others get their answer
    // and the connection closes.
    auto out = toBeast(std::move(res), req.version(), req.keep_alive() && slot->signedIn);
    stream.expires_after(kIoTimeout);
    auto [wec, wn] = co_await http::async_write(stream, out, kUseTuple);
    if (wec || !out.keep_alive()) co_return;
  }
}

std::string Server::Impl::pendingEvents(Stream& s, std::uint64_t& seq) {
  std::string out;
  for (const Decision* d : feed.since(seq, Feed::kKeptDecisions)) {
    fmt::format_to(std::back_inserter(out), "event: decision\nid: {}\ndata: {}\n\n", d->seq, d->json);
    seq = d->seq;
  }
  if (s.approvalsDirty) {
    fmt::format_to(std::back_inserter(out), "event: approvals\ndata: {{\"pending\":{}}}\n\n", pendingApprovals);
    s.approvalsDirty = false;
  }
  return out;
}

asio::awaitable<void> Server::Impl::streamEvents(beast::tcp_stream& stream, const Response& grant) {
  Stream s{&stream, asio::steady_timer(acceptor.get_executor())};
  Tracked<Stream, std::set<Stream*>> tracked(streams, &s);
  std::string head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nConnection: close\r\n";
  for (const auto& [k, v] : kSecurityHeaders) fmt::format_to(std::back_inserter(head), "{}: {}\r\n", k, v);
  head += "\r\nretry: 2000\n\n";
  // A client that names no event starts from now; one that reconnects
  // (Last-Event-ID) gets what it missed, as far as it is still kept.
  std::uint64_t seq = grant.lastEventId ? grant.lastEventId : feed.last();
  std::string out = std::move(head);
  for (;;) {
    auto now = std::chrono::steady_clock::now();
    auto expiry = console.sessionExpiry(grant.session, now);
    if (!expiry) co_return;  // signed out or expired: the page finds out with its next call
    out += pendingEvents(s, seq);
    if (!out.empty()) {
      stream.expires_after(kIoTimeout);  // a reader that stops reading is dropped
      auto [ec, n] = co_await asio::async_write(stream, asio::buffer(out), kUseTuple);
      if (ec) co_return;
      out.clear();
      continue;  // what came in during the write goes out before any wait
    }
    s.wake.expires_at(std::min(now + kPingEvery, *expiry));
    auto [wec] = co_await s.wake.async_wait(kUseTuple);
    if (!acceptor.is_open()) co_return;
    if (!wec) out = ": ping\n\n";  // the timer ran out: keep proxies and the browser sure we are here
  }
}

Server::~Server() { stop(); }

void Server::stop() {
  if (!impl_ || !impl_->acceptor.is_open()) return;
  beast::error_code ec;
  impl_->acceptor.close(ec);
  for (auto& slot : impl_->open) slot.stream->socket().close(ec);
  for (auto* s : impl_->streams) s->wake.cancel();
}

std::string Server::signInUrl() { return impl_->console.signInUrl(std::chrono::steady_clock::now()); }

void Server::approvalsChanged(std::size_t pending) {
  impl_->pendingApprovals = pending;
  impl_->wakeStreams(true);
}

Feed& Server::feed() { return impl_->feed; }

Result<std::unique_ptr<Server>> Server::start(asio::io_context& io, const std::string& address,
                                              std::chrono::seconds sessionLifetime, Handlers handlers) {
  auto ep = parseListenAddress(address);
  if (!ep) return makeError("listen.console: expected HOST:PORT with an IP address or localhost, got {}", address);
  // Requests must name the console's address in Host: a wildcard has none.
  auto ip = ep->address();
  if (ip.is_unspecified() || (ip.is_v6() && ip.to_v6().is_v4_mapped() &&
                              asio::ip::make_address_v4(asio::ip::v4_mapped, ip.to_v6()).is_unspecified()))
    return makeError("listen.console: bind one address (127.0.0.1:15445), not {}", address);
  auto impl = std::make_shared<Impl>(io, address, sessionLifetime, std::move(handlers));
  impl->feed.setObserver([raw = impl.get()] { raw->wakeStreams(false); });
  beast::error_code ec;
  impl->acceptor.open(ep->protocol(), ec);
  if (!ec) impl->acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) impl->acceptor.bind(*ep, ec);
  if (!ec) impl->acceptor.listen(64, ec);
  if (ec) return makeError("listen.console {}: {}", address, ec.message());
  asio::co_spawn(io, impl->acceptLoop(impl), asio::detached);
  if (!ep->address().is_loopback())
    log::warn(
        "console on http://{}/ is reachable from other machines, in clear text: bind it to loopback and "
        "reach it through an SSH tunnel",
        address);
  log::info("console on http://{}/ (sign in with a link from `atlasgate console-url`)", address);
  return std::unique_ptr<Server>(new Server(impl));
}

}  // namespace atlasgate::console
