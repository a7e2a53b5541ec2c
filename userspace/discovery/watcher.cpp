#include "discovery/watcher.h"

#include <arpa/inet.h>

#include <atomic>
#include <cstdlib>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <sstream>

#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "common/log.h"
#include "net/asio.h"
#include "tls/client_context.h"
#include "tls/openssl_ptr.h"

namespace atlasgate::discovery {

using net::kUseTuple;
using net::TlsStream;
namespace asio = net::asio;
namespace beast = net::beast;
namespace http = net::http;
namespace ssl = net::ssl;
using tcp = net::tcp;

// --- URL, token ------------------------------------------------------------------

namespace {

bool isIpv6Literal(const std::string& h) {
  unsigned char buf[16];
  return inet_pton(AF_INET6, h.c_str(), buf) == 1;
}

}  // namespace

std::string ApiServer::url() const {
  return fmt::format("https://{}:{}", isIpv6Literal(host) ? "[" + host + "]" : host, port);
}

std::string ApiServer::hostHeader() const {
  std::string h = isIpv6Literal(host) ? "[" + host + "]" : host;
  if (port != 443) h += fmt::format(":{}", port);
  return h;
}

Result<ApiServer> parseApiServerUrl(std::string_view url) {
  constexpr std::string_view kScheme = "https://";
  if (url.substr(0, kScheme.size()) != kScheme)
    return makeError("API server URL {:?}: must start with https://", std::string(url));
  std::string_view rest = url.substr(kScheme.size());
  size_t slash = rest.find('/');
  std::string_view authority = rest.substr(0, slash);
  if (slash != std::string_view::npos && rest.substr(slash) != "/")
    return makeError("API server URL {:?}: a path is not supported", std::string(url));
  if (authority.find('@') != std::string_view::npos || authority.find('?') != std::string_view::npos)
    return makeError("API server URL {:?}: user info and queries are not supported", std::string(url));
  ApiServer s;
  std::string_view portText;
  if (!authority.empty() && authority.front() == '[') {
    size_t close = authority.find(']');
    if (close == std::string_view::npos) return makeError("API server URL {:?}: unclosed '['", std::string(url));
    s.host = std::string(authority.substr(1, close - 1));
    if (!isIpv6Literal(s.host))
      return makeError("API server URL {:?}: {:?} is not an IPv6 address", std::string(url), s.host);
    std::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') return makeError("API server URL {:?}: junk after ']'", std::string(url));
      portText = after.substr(1);
      if (portText.empty()) return makeError("API server URL {:?}: empty port", std::string(url));
    }
  } else {
    size_t colon = authority.rfind(':');
    s.host = std::string(authority.substr(0, colon));
    if (colon != std::string_view::npos) {
      portText = authority.substr(colon + 1);
      if (portText.empty()) return makeError("API server URL {:?}: empty port", std::string(url));
    }
    if (s.host.find(':') != std::string::npos)
      return makeError("API server URL {:?}: put an IPv6 address in brackets", std::string(url));
  }
  if (s.host.empty()) return makeError("API server URL {:?}: no host", std::string(url));
  if (!portText.empty()) {
    unsigned long port = 0;
    for (char c : portText) {
      if (c < '0' || c > '9')
        return makeError("API server URL {:?}: bad port {:?}", std::string(url), std::string(portText));
      port = port * 10 + static_cast<unsigned long>(c - '0');
      if (port > 65535) return makeError("API server URL {:?}: port out of range", std::string(url));
    }
    if (port == 0) return makeError("API server URL {:?}: port 0", std::string(url));
    s.port = static_cast<std::uint16_t>(port);
  }
  for (char& c : s.host)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return s;
}

Result<std::string> inClusterApiServer() {
  const char* host = std::getenv("KUBERNETES_SERVICE_HOST");
  const char* port = std::getenv("KUBERNETES_SERVICE_PORT");
  if (host == nullptr || *host == '\0')
    return makeError("KUBERNETES_SERVICE_HOST is not set: not running in a pod; set the API server URL explicitly");
  std::string h = host;
  if (isIpv6Literal(h)) h = "[" + h + "]";
  return fmt::format("https://{}:{}", h, port != nullptr && *port != '\0' ? port : "443");
}

Result<std::string> readTokenFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return sysError(errno, "cannot read the service-account token {}", path);
  std::stringstream ss;
  ss << in.rdbuf();
  std::string t = ss.str();
  size_t b = t.find_first_not_of(" \t\r\n");
  size_t e = t.find_last_not_of(" \t\r\n");
  t = b == std::string::npos ? std::string() : t.substr(b, e - b + 1);
  if (t.empty()) return makeError("the service-account token {} is empty", path);
  for (unsigned char c : t)
    if (c < 0x21 || c == 0x7f)
      return makeError("the service-account token {} holds whitespace or control characters", path);
  return t;
}

// --- the watcher -------------------------------------------------------------------

namespace {

// One TLS connection to the API server, with the context it needs. While it
// lives, `*slot` may point at its stream (so that stop() can cancel the
// pending operation); it never outlives that pointer.
struct Conn {
  explicit Conn(TlsStream** s) : slot(s) {}
  ~Conn() {
    if (stream && *slot == stream.get()) *slot = nullptr;
  }
  Conn(const Conn&) = delete;
  Conn& operator=(const Conn&) = delete;
  TlsStream** slot;
  std::unique_ptr<ssl::context> ctx;
  std::unique_ptr<TlsStream> stream;
  beast::flat_buffer buffer;
};

enum class WatchEnd {
  Stopped,  // stop() was called
  Expired,  // the server ended the stream normally (timeoutSeconds)
  Gone,     // 410: relist
  Dropped,  // connection lost mid-stream: resume from our resourceVersion
  Failed,   // could not open the watch (connect, TLS, auth, HTTP error)
  Corrupt,  // a line we could not understand: relist to be safe
};

struct WatchOutcome {
  WatchEnd end = WatchEnd::Failed;
  std::string error;
  bool gotEvents = false;
};

std::string ago(std::chrono::steady_clock::time_point t) {
  auto s = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now() - t).count();
  return fmt::format("{}s ago", s);
}

std::string authHint(unsigned status) {
  if (status == 401)
    return " (the service-account token was refused: check the token file and that the token is not expired)";
  if (status == 403)
    return " (the service account may not list/watch pods: check the ClusterRole and ClusterRoleBinding)";
  return "";
}

}  // namespace

struct PodWatcher::Impl {
  Impl(asio::any_io_executor e, WatcherOptions o, PodWatcherCallbacks c)
      : ex(std::move(e)), opt(std::move(o)), cb(std::move(c)), timer(ex), rng(std::random_device{}()) {}

  asio::any_io_executor ex;
  WatcherOptions opt;
  PodWatcherCallbacks cb;
  ApiServer server;
  std::string selector;  // canonical text

  // Executor-only state.
  asio::steady_timer timer;
  TlsStream* current = nullptr;       // the stream an await is pending on
  tcp::resolver* resolver = nullptr;  // the resolve pending, if any
  std::mt19937_64 rng;
  ListFreshness freshness = ListFreshness::Any;  // of the next list
  std::atomic<bool> stopped{false};

  // Shared with status readers.
  mutable std::mutex mu;
  WatcherStatus st;                      // guarded by mu
  std::map<std::string, PodInfo> known;  // by uid; written on the executor, guarded by mu

  void setError(const std::string& e) {
    log::warn("kubernetes pod watcher: {}", e);
    std::lock_guard lock(mu);
    st.lastError = e;
    st.lastErrorAt = std::chrono::steady_clock::now();
    ++st.failures;
  }
  void setConnected(bool c) {
    std::lock_guard lock(mu);
    st.connected = c;
  }
  void setResourceVersion(const std::string& rv) {
    if (rv.empty()) return;
    std::lock_guard lock(mu);
    st.resourceVersion = rv;
  }
  std::string resourceVersion() const {
    std::lock_guard lock(mu);
    return st.resourceVersion;
  }

  void cancelNow() {
    timer.cancel();
    if (resolver != nullptr) resolver->cancel();
    if (current != nullptr) {
      beast::error_code ignored;
      beast::get_lowest_layer(*current).socket().cancel(ignored);
      beast::get_lowest_layer(*current).socket().close(ignored);
    }
  }

  // --- callbacks (executor only) ---

  void upsert(const PodInfo& p) {
    if (stopped) return;
    if (p.terminated()) {
      remove(p);
      return;
    }
    {
      std::lock_guard lock(mu);
      known[p.uid] = p;
      st.podsKnown = known.size();
    }
    log::debug("kubernetes: pod {} (uid {}) {}", p.agentName(), p.uid, p.phase);
    if (cb.onUpsert) cb.onUpsert(p);
  }
  void remove(const PodInfo& p) {
    if (stopped) return;
    {
      std::lock_guard lock(mu);
      if (known.erase(p.uid) == 0) return;  // never announced: nothing to take back
      st.podsKnown = known.size();
    }
    log::debug("kubernetes: pod {} (uid {}) gone", p.agentName(), p.uid);
    if (cb.onDelete) cb.onDelete(p);
  }

  // --- I/O ---

  std::chrono::milliseconds backoffDelay(unsigned failures) {
    auto d = opt.backoffInitial;
    for (unsigned i = 0; i < failures && d < opt.backoffMax; ++i) d *= 2;
    if (d > opt.backoffMax) d = opt.backoffMax;
    // "Equal jitter": half fixed, half random, so that the DaemonSet's pods
    // do not reconnect to the API server in lock step.
    const auto half = d.count() / 2;
    std::uniform_int_distribution<long long> dist(0, half > 0 ? half : 0);
    return std::chrono::milliseconds(d.count() - half + dist(rng));
  }

  asio::awaitable<void> sleep(std::chrono::milliseconds d) {
    timer.expires_after(d);
    co_await timer.async_wait(kUseTuple);
  }

  // Connect, TLS-handshake, verify. On error returns a message.
  asio::awaitable<std::string> connect(Conn& c) {
    auto ctx = tls::makeClientContext(opt.caFile);
    if (!ctx) co_return fmt::format("API server CA {}: {}", opt.caFile, ctx.error().message);
    c.ctx = std::make_unique<ssl::context>(ctx->release());
    c.stream = std::make_unique<TlsStream>(ex, *c.ctx);
    if (auto r = tls::prepareClientSsl(c.stream->native_handle(), server.host); !r)
      co_return fmt::format("TLS setup for {}: {}", server.url(), r.error().message);

    std::vector<tcp::endpoint> endpoints;
    beast::error_code ec;
    auto addr = asio::ip::make_address(server.host, ec);
    if (!ec) {
      endpoints.emplace_back(addr, server.port);
    } else {
      tcp::resolver res(ex);
      resolver = &res;
      auto [rec, results] = co_await res.async_resolve(server.host, std::to_string(server.port), kUseTuple);
      resolver = nullptr;
      if (stopped) co_return "stopped";
      if (rec) co_return fmt::format("resolve {}: {}", server.host, rec.message());
      for (const auto& e : results) endpoints.push_back(e.endpoint());
    }
    auto& lower = beast::get_lowest_layer(*c.stream);
    lower.expires_after(opt.requestTimeout);
    current = c.stream.get();
    auto [cec, ep] = co_await lower.async_connect(endpoints, kUseTuple);
    if (stopped) co_return "stopped";
    if (cec) {
      current = nullptr;
      co_return fmt::format("connect to {}: {}", server.url(), cec.message());
    }
    auto [hec] = co_await c.stream->async_handshake(ssl::stream_base::client, kUseTuple);
    if (stopped) co_return "stopped";
    if (hec) {
      current = nullptr;
      std::string why = hec.message();
      long vr = SSL_get_verify_result(c.stream->native_handle());
      if (vr != X509_V_OK)
        why = fmt::format("certificate verification failed: {} (against {})", X509_verify_cert_error_string(vr),
                          opt.caFile);
      co_return fmt::format("TLS handshake with {}: {}", server.url(), why);
    }
    co_return std::string();
  }

  http::request<http::empty_body> makeRequest(const std::string& target, const std::string& token) const {
    http::request<http::empty_body> req{http::verb::get, target, 11};
    req.set(http::field::host, server.hostHeader());
    req.set(http::field::authorization, "Bearer " + token);
    req.set(http::field::accept, "application/json");
    req.set(http::field::user_agent, "atlasgate-discovery/0.1");
    return req;
  }

  struct Page {
    std::string error;
    unsigned status = 0;
    std::string body;
  };

  // One GET with the whole body read (list pages).
  asio::awaitable<Page> get(const std::string& target) {
    Page page;
    auto token = readTokenFile(opt.tokenFile);
    if (!token) {
      page.error = token.error().message;
      co_return page;
    }
    Conn c(&current);
    page.error = co_await connect(c);
    if (!page.error.empty()) co_return page;
    current = c.stream.get();
    auto req = makeRequest(target, *token);
    auto [wec, wn] = co_await http::async_write(*c.stream, req, kUseTuple);
    if (stopped) co_return page;
    if (wec) {
      current = nullptr;
      page.error = fmt::format("GET {}: write: {}", target, wec.message());
      co_return page;
    }
    http::response_parser<http::string_body> parser;
    parser.body_limit(opt.maxListBytes);
    auto [rec, rn] = co_await http::async_read(*c.stream, c.buffer, parser, kUseTuple);
    current = nullptr;
    if (stopped) co_return page;
    if (rec) {
      page.error = fmt::format("GET {}: read: {}", target, rec.message());
      co_return page;
    }
    page.status = parser.get().result_int();
    page.body = std::move(parser.get().body());
    beast::error_code ignored;
    beast::get_lowest_layer(*c.stream).socket().close(ignored);
    co_return page;
  }

  // Lists every page; on success replaces what we know and calls back. The
  // first list may be served from the API server's cache (any version); a
  // relist asks for nothing older than what we had seen, so that a lagging
  // API server cannot take us back in time; after a 410 on a list, a quorum
  // read.
  asio::awaitable<std::string> list() {
    std::vector<PodInfo> all;
    std::string cont, rv;
    const std::string lastSeen = resourceVersion();
    int restarts = 0;
    do {
      const std::string target = podsListTarget(selector, opt.nodeName, opt.pageSize, cont, freshness, lastSeen);
      Page page = co_await get(target);
      if (stopped) co_return "stopped";
      if (!page.error.empty()) co_return "list pods: " + page.error;
      if (page.status == 410 && restarts++ < 3) {
        // The continue token, or the version we asked for, is gone: start
        // over with a quorum read.
        freshness = ListFreshness::Consistent;
        all.clear();
        cont.clear();
        continue;
      }
      if (page.status != 200)
        co_return fmt::format("list pods: HTTP {} from {}: {}{}", page.status, server.url(),
                              describeStatusBody(page.body), authHint(page.status));
      auto parsed = parsePodList(page.body);
      if (!parsed) co_return "list pods: " + parsed.error().message;
      for (PodInfo& p : parsed->pods) all.push_back(std::move(p));
      cont = parsed->continueToken;
      rv = parsed->resourceVersion;
    } while (!cont.empty());
    if (rv.empty()) co_return "list pods: the answer has no metadata.resourceVersion";

    std::map<std::string, PodInfo> before;
    {
      std::lock_guard lock(mu);
      before = known;
    }
    freshness = ListFreshness::NotOlderThan;
    PodSetDiff d = diffPods(before, all);
    for (const PodInfo& p : d.deletes) remove(p);
    for (const PodInfo& p : d.upserts) upsert(p);
    {
      std::lock_guard lock(mu);
      st.resourceVersion = rv;
      st.synced = true;
      ++st.lists;
    }
    log::info("kubernetes: listed {} pod(s) on {} matching {:?} at resourceVersion {} ({} new or changed, {} gone)",
              all.size(), opt.nodeName.empty() ? "every node" : opt.nodeName, selector, rv, d.upserts.size(),
              d.deletes.size());
    co_return std::string();
  }

  // Handles one line of the watch stream.
  WatchOutcome handleLine(std::string_view line, bool& done) {
    WatchOutcome out;
    auto ev = parseWatchEvent(line);
    if (!ev) {
      done = true;
      out.end = WatchEnd::Corrupt;
      out.error = ev.error().message;
      return out;
    }
    {
      std::lock_guard lock(mu);
      ++st.events;
    }
    switch (ev->type) {
      case WatchEventType::Added:
      case WatchEventType::Modified: upsert(*ev->pod); break;
      case WatchEventType::Deleted: remove(*ev->pod); break;
      case WatchEventType::Bookmark: break;
      case WatchEventType::Error:
        done = true;
        out.end = ev->gone() ? WatchEnd::Gone : WatchEnd::Failed;
        out.error = fmt::format("watch pods: ERROR event: {}: {} ({})", ev->reason, ev->message, ev->code);
        return out;
    }
    setResourceVersion(ev->resourceVersion);
    return out;
  }

  asio::awaitable<WatchOutcome> watch() {
    WatchOutcome out;
    auto token = readTokenFile(opt.tokenFile);
    if (!token) {
      out.error = "watch pods: " + token.error().message;
      co_return out;
    }
    Conn c(&current);
    out.error = co_await connect(c);
    if (stopped) co_return WatchOutcome{WatchEnd::Stopped, "", false};
    if (!out.error.empty()) {
      out.error = "watch pods: " + out.error;
      co_return out;
    }
    std::uniform_int_distribution<std::uint32_t> dist(0, static_cast<std::uint32_t>(opt.watchTimeout.count()));
    const std::uint32_t timeoutSeconds = static_cast<std::uint32_t>(opt.watchTimeout.count()) + dist(rng);
    const std::string target = podsWatchTarget(selector, opt.nodeName, resourceVersion(), timeoutSeconds);

    auto& lower = beast::get_lowest_layer(*c.stream);
    current = c.stream.get();
    struct Clear {
      Impl* self;
      ~Clear() {
        self->current = nullptr;
        self->setConnected(false);
      }
    } clear{this};

    http::response_parser<http::buffer_body> parser;
    out.error = co_await startWatch(c, makeRequest(target, *token), parser);
    if (stopped) co_return WatchOutcome{WatchEnd::Stopped, "", false};
    if (!out.error.empty()) co_return out;
    const unsigned status = parser.get().result_int();
    const bool ok = status == 200;
    if (ok) {
      setConnected(true);
      std::lock_guard lock(mu);
      ++st.watches;
    }
    // Beyond this many seconds without a byte (not even a bookmark), the
    // connection is presumed dead.
    const auto idle = std::chrono::seconds(timeoutSeconds) + std::chrono::seconds(60);

    std::string pending;    // bytes of a line not yet complete
    std::string errorBody;  // non-200: the Status body
    char buf[16384];
    while (!parser.is_done()) {
      parser.get().body().data = buf;
      parser.get().body().size = sizeof buf;
      lower.expires_after(ok ? std::chrono::duration_cast<std::chrono::steady_clock::duration>(idle)
                             : std::chrono::duration_cast<std::chrono::steady_clock::duration>(opt.requestTimeout));
      auto [rec, rn] = co_await http::async_read_some(*c.stream, c.buffer, parser, kUseTuple);
      if (stopped) co_return WatchOutcome{WatchEnd::Stopped, "", out.gotEvents};
      if (rec == http::error::need_buffer) rec = {};
      const size_t got = sizeof buf - parser.get().body().size;
      if (!ok) {
        if (errorBody.size() < 65536) errorBody.append(buf, got);
      } else {
        pending.append(buf, got);
        if (std::optional<WatchOutcome> end = consumeLines(pending, out)) co_return std::move(*end);
      }
      if (rec) {
        if (!ok) break;
        out.end = WatchEnd::Dropped;
        out.error = rec == beast::error::timeout
                        ? fmt::format("watch pods: no data for {}s: connection presumed dead", idle.count())
                        : fmt::format("watch pods: stream from {} lost: {}", server.url(), rec.message());
        co_return out;
      }
    }
    co_return streamEnded(ok, status, errorBody, pending, std::move(out));
  }

  // Sends the watch request and reads the response head; "" or what failed.
  asio::awaitable<std::string> startWatch(Conn& c, http::request<http::empty_body> req,
                                          http::response_parser<http::buffer_body>& parser) {
    auto [wec, wn] = co_await http::async_write(*c.stream, req, kUseTuple);
    if (wec) co_return fmt::format("watch pods: write: {}", wec.message());
    parser.body_limit(boost::none);
    auto [hec, hn] = co_await http::async_read_header(*c.stream, c.buffer, parser, kUseTuple);
    if (hec) co_return fmt::format("watch pods: reading the response head: {}", hec.message());
    co_return std::string();
  }

  // Hands each complete line of `pending` to handleLine; what stays is the
  // start of the next line. An outcome when the watch ends here.
  std::optional<WatchOutcome> consumeLines(std::string& pending, WatchOutcome& out) {
    size_t start = 0;
    for (size_t nl; (nl = pending.find('\n', start)) != std::string::npos; start = nl + 1) {
      std::string_view line(pending.data() + start, nl - start);
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      if (line.empty()) continue;
      bool done = false;
      WatchOutcome r = handleLine(line, done);
      if (stopped) return WatchOutcome{WatchEnd::Stopped, "", true};
      out.gotEvents = true;
      if (done) {
        r.gotEvents = true;
        return r;
      }
    }
    pending.erase(0, start);
    if (pending.size() > opt.maxListBytes) {
      out.end = WatchEnd::Corrupt;
      out.error = "watch pods: an event line longer than the list limit";
      return out;
    }
    return std::nullopt;
  }

  // The response ended: a refusal (non-200), or the watch's own end.
  WatchOutcome streamEnded(bool ok, unsigned status, const std::string& errorBody, const std::string& pending,
                           WatchOutcome out) {
    if (!ok) {
      out.end = status == 410 ? WatchEnd::Gone : WatchEnd::Failed;
      out.error = fmt::format("watch pods: HTTP {} from {}: {}{}", status, server.url(), describeStatusBody(errorBody),
                              authHint(status));
      return out;
    }
    // A last line without its newline still counts.
    if (!pending.empty()) {
      bool done = false;
      WatchOutcome r = handleLine(pending, done);
      if (done) return r;
    }
    out.end = WatchEnd::Expired;
    return out;
  }

  // The coroutine owns a reference: the state outlives the PodWatcher handle
  // until the loop has seen stop().
  static asio::awaitable<void> runLoop(std::shared_ptr<Impl> self) { co_await self->run(); }

  asio::awaitable<void> run() {
    bool needList = true;
    unsigned failures = 0;
    while (!stopped) {
      if (needList) {
        std::string err = co_await list();
        if (stopped) break;
        if (!err.empty()) {
          setError(err);
          co_await sleep(backoffDelay(failures++));
          continue;
        }
        needList = false;
      }
      WatchOutcome w = co_await watch();
      if (stopped) break;
      if (w.gotEvents) failures = 0;
      switch (w.end) {
        case WatchEnd::Stopped: break;
        case WatchEnd::Expired:
          log::debug("kubernetes: watch ended by the server; resuming at {}", resourceVersion());
          // A server that ends every watch at once must not make us spin.
          if (!w.gotEvents) co_await sleep(backoffDelay(failures++));
          continue;
        case WatchEnd::Gone:
          log::info("kubernetes: {}; relisting", w.error);
          {
            std::lock_guard lock(mu);
            st.lastError = w.error;
            st.lastErrorAt = std::chrono::steady_clock::now();
          }
          needList = true;
          if (!w.gotEvents) co_await sleep(backoffDelay(failures++));
          continue;
        case WatchEnd::Corrupt: needList = true; [[fallthrough]];
        case WatchEnd::Dropped:
        case WatchEnd::Failed:
          setError(w.error);
          co_await sleep(backoffDelay(failures++));
          continue;
      }
    }
    {
      std::lock_guard lock(mu);
      st.running = false;
      st.connected = false;
    }
    log::info("kubernetes pod watcher stopped");
  }
};

PodWatcher::PodWatcher(asio::any_io_executor ex, WatcherOptions options, PodWatcherCallbacks callbacks)
    : impl_(std::make_shared<Impl>(std::move(ex), std::move(options), std::move(callbacks))) {}

PodWatcher::~PodWatcher() { stop(); }

Result<void> PodWatcher::start() {
  Impl& i = *impl_;
  {
    std::lock_guard lock(i.mu);
    if (i.st.running) return makeError("the pod watcher is already running");
  }
  if (i.stopped) return makeError("the pod watcher was stopped");
  std::string url = i.opt.apiServer;
  if (url.empty()) {
    auto u = inClusterApiServer();
    if (!u) return u.error();
    url = *u;
  }
  auto server = parseApiServerUrl(url);
  if (!server) return server.error();
  auto sel = LabelSelector::parse(i.opt.labelSelector);
  if (!sel) return sel.error();
  if (i.opt.backoffInitial.count() <= 0 || i.opt.backoffMax < i.opt.backoffInitial)
    return makeError("pod watcher: backoff must be positive, with max >= initial");
  if (i.opt.watchTimeout.count() <= 0 || i.opt.requestTimeout.count() <= 0 || i.opt.pageSize == 0)
    return makeError("pod watcher: timeouts and the page size must be positive");
  i.server = *server;
  i.selector = sel->str();
  {
    std::lock_guard lock(i.mu);
    i.st.running = true;
    i.st.apiServer = i.server.url();
  }
  if (i.opt.nodeName.empty()) log::warn("kubernetes pod watcher: no node name: watching the pods of every node");
  log::info("kubernetes pod watcher: {} node={} selector={:?}", i.server.url(),
            i.opt.nodeName.empty() ? "*" : i.opt.nodeName, i.selector);
  asio::co_spawn(i.ex, Impl::runLoop(impl_), [](std::exception_ptr e) {
    if (!e) return;
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& ex) {
      log::error("kubernetes pod watcher died: {}", ex.what());
    }
  });
  return {};
}

void PodWatcher::stop() {
  if (impl_->stopped.exchange(true)) return;
  asio::dispatch(impl_->ex, [impl = impl_] { impl->cancelNow(); });
}

WatcherStatus PodWatcher::status() const {
  std::lock_guard lock(impl_->mu);
  return impl_->st;
}

std::vector<PodInfo> PodWatcher::pods() const {
  std::lock_guard lock(impl_->mu);
  std::vector<PodInfo> out;
  out.reserve(impl_->known.size());
  for (const auto& [uid, p] : impl_->known) out.push_back(p);
  return out;
}

std::string PodWatcher::describe() const {
  WatcherStatus s = status();
  const Impl& i = *impl_;
  std::string out =
      fmt::format("kubernetes {} node={} selector={:?}: ", s.apiServer.empty() ? "(not started)" : s.apiServer,
                  i.opt.nodeName.empty() ? "*" : i.opt.nodeName, i.opt.labelSelector);
  if (!s.running)
    out += "stopped";
  else if (s.connected)
    out += "watching";
  else if (s.synced)
    out += "reconnecting";
  else
    out += "not synced yet";
  out += fmt::format(", resourceVersion {}, {} pod{}, {} list{}, {} watch{}, {} event{}, {} failure{}",
                     s.resourceVersion.empty() ? "-" : s.resourceVersion, s.podsKnown, s.podsKnown == 1 ? "" : "s",
                     s.lists, s.lists == 1 ? "" : "s", s.watches, s.watches == 1 ? "" : "es", s.events,
                     s.events == 1 ? "" : "s", s.failures, s.failures == 1 ? "" : "s");
  if (!s.lastError.empty()) out += fmt::format(", last error {}: {}", ago(s.lastErrorAt), s.lastError);
  return out;
}

}  // namespace atlasgate::discovery
