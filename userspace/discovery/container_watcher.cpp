// ContainerWatcher (container_watcher.h): the engine's HTTP API over its Unix
// socket, on Asio/Beast. The parsing it relies on is containers.cpp.
#include "discovery/container_watcher.h"

#include <sys/un.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <random>
#include <set>

#include <boost/asio/local/stream_protocol.hpp>

#include "common/log.h"
#include "net/asio.h"

namespace atlasgate::discovery {

// --- the watcher -----------------------------------------------------------------

namespace {

namespace asio = net::asio;
namespace beast = net::beast;
namespace http = net::http;
using net::kUseTuple;
using Local = asio::local::stream_protocol;
using Stream = beast::basic_stream<Local>;

constexpr std::uint32_t kMaxHeaderBytes = 64 * 1024;

// One connection to the engine. While it lives, `*slot` may point at its
// stream so that stop() can cancel the pending operation.
struct Conn {
  explicit Conn(Stream** s) : slot(s) {}
  ~Conn() {
    if (stream && *slot == stream.get()) *slot = nullptr;
  }
  Conn(const Conn&) = delete;
  Conn& operator=(const Conn&) = delete;
  Stream** slot;
  std::unique_ptr<Stream> stream;
  beast::flat_buffer buffer;
};

enum class StreamEnd {
  Stopped,  // stop() was called
  Resync,   // quiet for `resync`: relist
  Dropped,  // the engine closed the stream or the connection broke
  Failed,   // could not open the stream
  Corrupt,  // a line we could not understand, or too long
};

struct StreamOutcome {
  StreamEnd end = StreamEnd::Failed;
  std::string error;
};

}  // namespace

struct ContainerWatcher::Impl {
  Impl(asio::any_io_executor e, ContainerWatcherOptions o, ContainerWatcherCallbacks c)
      : ex(std::move(e)), opt(std::move(o)), cb(std::move(c)), timer(ex), rng(std::random_device{}()) {}

  asio::any_io_executor ex;
  ContainerWatcherOptions opt;
  ContainerWatcherCallbacks cb;
  std::string label;  // canonical filter text
  LabelSelector selector;

  // Executor-only state.
  asio::steady_timer timer;
  Stream* current = nullptr;  // the stream an await is pending on
  std::mt19937_64 rng;
  std::atomic<bool> stopped{false};

  // Shared with status readers.
  mutable std::mutex mu;
  ContainerWatcherStatus st;                   // guarded by mu
  std::map<std::string, ContainerInfo> known;  // by id; written on the executor, guarded by mu
  // Ours, announced, then stopped: the daemon keeps their attachment until
  // they are removed, so their removal is announced too (bounded like known).
  std::set<std::string> stoppedOurs;

  void setError(const std::string& e) {
    log::warn("container watcher: {}", e);
    std::lock_guard lock(mu);
    st.lastError = e;
    st.lastErrorAt = std::chrono::steady_clock::now();
    ++st.failures;
  }
  void refuse(const std::string& why) {
    log::warn("container watcher: {}", why);
    std::lock_guard lock(mu);
    st.lastError = why;
    st.lastErrorAt = std::chrono::steady_clock::now();
    ++st.refused;
  }

  void cancelNow() {
    timer.cancel();
    if (current != nullptr) {
      beast::error_code ignored;
      current->socket().cancel(ignored);
      current->socket().close(ignored);
    }
  }

  // --- the known set (executor only) ---

  // removed: the engine no longer has it (or it is no longer ours); false:
  // it only stopped, or a relist did not show it (stopped, or removed while
  // the stream was down: the daemon's sweep sorts those out).
  void remove(const std::string& id, bool removed) {
    if (stopped) return;
    ContainerInfo gone;
    {
      std::lock_guard lock(mu);
      auto it = known.find(id);
      if (it != known.end()) {
        gone = std::move(it->second);
        known.erase(it);
        st.containers = known.size();
        if (!removed && stoppedOurs.size() < opt.limits.maxContainers) stoppedOurs.insert(id);
      } else if (removed && stoppedOurs.erase(id)) {
        // Stopped earlier (so no longer known), but a stopped container
        // keeps its attachment until it is removed: the daemon must hear
        // of the removal.
        gone.id = id;
      } else {
        return;
      }
      gone.removed = removed;
    }
    log::debug("containers: {} ({}) {}", gone.agentName(), gone.id.substr(0, 12), removed ? "removed" : "stopped");
    if (cb.onDelete) cb.onDelete(gone);
  }

  void upsert(const ContainerInfo& c) {
    if (stopped) return;
    if (!selector.matches(c.labels)) {
      remove(c.id, true);
      return;
    }
    if (!c.running) {
      remove(c.id, false);
      return;
    }
    {
      std::unique_lock lock(mu);
      for (const auto& [id, other] : known)
        if (id != c.id && other.name == c.name) {
          lock.unlock();
          refuse(fmt::format("container {} claims the name {:?} of container {}: refused while that one runs",
                             c.id.substr(0, 12), c.name, id.substr(0, 12)));
          remove(c.id, true);
          return;
        }
      auto it = known.find(c.id);
      if (it != known.end() && it->second == c) return;
      if (it == known.end() && known.size() >= opt.limits.maxContainers) {
        lock.unlock();
        refuse(fmt::format("container {:?}: already {} containers known, refused", c.name, opt.limits.maxContainers));
        return;
      }
      known[c.id] = c;
      stoppedOurs.erase(c.id);
      st.containers = known.size();
    }
    log::debug("containers: {} ({}) pid {}", c.agentName(), c.id.substr(0, 12), c.pid);
    if (cb.onUpsert) cb.onUpsert(c);
  }

  // --- I/O ---

  std::chrono::milliseconds backoffDelay(unsigned failures) {
    auto d = opt.backoffInitial;
    for (unsigned i = 0; i < failures && d < opt.backoffMax; ++i) d *= 2;
    d = std::min(d, opt.backoffMax);
    std::uniform_int_distribution<long long> jitter(0, d.count() / 2);
    return std::chrono::milliseconds(d.count() - d.count() / 2 + jitter(rng));
  }

  asio::awaitable<void> sleep(std::chrono::milliseconds d) {
    timer.expires_after(d);
    co_await timer.async_wait(kUseTuple);
  }

  // Connects and sends GET target. On error returns a message.
  asio::awaitable<std::string> open(Conn& c, const std::string& target) {
    c.stream = std::make_unique<Stream>(ex);
    current = c.stream.get();
    c.stream->expires_after(opt.requestTimeout);
    auto [cec] = co_await c.stream->async_connect(Local::endpoint(opt.socket), kUseTuple);
    if (stopped) co_return "stopped";
    if (cec) co_return fmt::format("connect to {}: {}", opt.socket, cec.message());
    http::request<http::empty_body> req{http::verb::get, target, 11};
    req.set(http::field::host, "localhost");
    req.set(http::field::accept, "application/json");
    req.set(http::field::user_agent, "atlasgate-discovery/0.1");
    auto [wec, wn] = co_await http::async_write(*c.stream, req, kUseTuple);
    if (stopped) co_return "stopped";
    if (wec) co_return fmt::format("GET {}: write: {}", target, wec.message());
    co_return std::string();
  }

  struct Page {
    std::string error;
    unsigned status = 0;
    std::string body;
  };

  // One GET with the whole (bounded) body read.
  asio::awaitable<Page> get(const std::string& target) {
    Page page;
    Conn c(&current);
    page.error = co_await open(c, target);
    if (!page.error.empty()) co_return page;
    http::response_parser<http::string_body> parser;
    parser.header_limit(kMaxHeaderBytes);
    parser.body_limit(opt.limits.maxResponseBytes);
    auto [rec, rn] = co_await http::async_read(*c.stream, c.buffer, parser, kUseTuple);
    if (stopped) {
      page.error = "stopped";
      co_return page;
    }
    if (rec) {
      page.error = fmt::format("GET {}: read: {}", target, rec.message());
      co_return page;
    }
    page.status = parser.get().result_int();
    page.body = std::move(parser.get().body());
    co_return page;
  }

  // Inspects one container. nullopt: the engine does not know it (404), or
  // it was refused (bad name, labels: counted and logged).
  asio::awaitable<Result<std::optional<ContainerInfo>>> inspect(const std::string& id) {
    Page p = co_await get(containerInspectTarget(id));
    if (!p.error.empty()) co_return Error{0, "inspect container: " + p.error};
    if (p.status == 404) co_return std::optional<ContainerInfo>();
    if (p.status != 200)
      co_return makeError("inspect container {}: HTTP {}: {}", id.substr(0, 12), p.status, describeStatusBody(p.body));
    auto c = parseContainerInspect(p.body, opt.limits);
    if (!c) {
      refuse(c.error().message);
      co_return std::optional<ContainerInfo>();
    }
    if (c->id != id) {
      refuse(fmt::format("inspect of container {} answered for container {}", id.substr(0, 12), c->id.substr(0, 12)));
      co_return std::optional<ContainerInfo>();
    }
    co_return std::optional<ContainerInfo>(std::move(*c));
  }

  // Lists, inspects each, and applies the difference to what was known.
  asio::awaitable<std::string> list() {
    Page p = co_await get(containersListTarget(label));
    if (stopped) co_return "stopped";
    if (!p.error.empty()) co_return "list containers: " + p.error;
    if (p.status != 200) co_return fmt::format("list containers: HTTP {}: {}", p.status, describeStatusBody(p.body));
    auto listed = parseContainerList(p.body, opt.limits);
    if (!listed) co_return listed.error().message;
    std::vector<ContainerInfo> all;
    std::set<std::string> present;  // the engine still has these, running or not
    for (const ListedContainer& l : *listed) {
      present.insert(l.id);
      if (!l.running) continue;
      auto c = co_await inspect(l.id);
      if (stopped) co_return "stopped";
      if (!c) co_return c.error().message;
      if (*c && selector.matches((*c)->labels)) all.push_back(std::move(**c));
    }
    std::map<std::string, ContainerInfo> before;
    {
      std::lock_guard lock(mu);
      before = known;
    }
    ContainerSetDiff d = diffContainers(before, all);
    // Gone from the list altogether: removed (perhaps while the stream was
    // down, or while an inspect failed), so its attachment goes now; still
    // listed but not running: stopped, kept for a restart.
    for (const ContainerInfo& c : d.deletes) remove(c.id, !present.contains(c.id));
    std::vector<std::string> vanished;
    {
      std::lock_guard lock(mu);
      for (const std::string& id : stoppedOurs)
        if (!present.contains(id)) vanished.push_back(id);
    }
    for (const std::string& id : vanished) remove(id, true);
    for (const ContainerInfo& c : d.upserts) upsert(c);
    {
      std::lock_guard lock(mu);
      st.synced = true;
      ++st.lists;
    }
    log::info("containers: listed {} running container(s) labelled {} ({} new or changed, {} gone)", all.size(), label,
              d.upserts.size(), d.deletes.size());
    co_return std::string();
  }

  // One line of the events stream. Returns an error for a line that is not
  // an event (the stream is then abandoned and the list redone).
  asio::awaitable<std::string> handleLine(std::string_view line) {
    auto ev = parseEngineEvent(line);
    if (!ev) co_return ev.error().message;
    {
      std::lock_guard lock(mu);
      ++st.events;
    }
    if (ev->removal()) {
      remove(ev->id, true);
    } else if (ev->relevant()) {
      auto c = co_await inspect(ev->id);
      if (stopped) co_return std::string();
      if (!c) {
        // The engine could not answer: whatever the container did, a
        // relist after the backoff finds out.
        co_return c.error().message;
      }
      if (*c)
        upsert(**c);
      else
        remove(ev->id, true);
    }
    co_return std::string();
  }

  // Opens the events stream; once it is open, lists; then follows events
  // until the stream ends.
  asio::awaitable<StreamOutcome> session(bool& listed) {
    listed = false;
    Conn c(&current);
    std::string err = co_await open(c, engineEventsTarget(label));
    if (stopped) co_return StreamOutcome{StreamEnd::Stopped, ""};
    if (!err.empty()) co_return StreamOutcome{StreamEnd::Failed, "events: " + err};
    http::response_parser<http::buffer_body> parser;
    parser.header_limit(kMaxHeaderBytes);
    parser.body_limit(boost::none);
    auto [hec, hn] = co_await http::async_read_header(*c.stream, c.buffer, parser, kUseTuple);
    if (stopped) co_return StreamOutcome{StreamEnd::Stopped, ""};
    if (hec) co_return StreamOutcome{StreamEnd::Failed, "events: reading the response head: " + hec.message()};
    const unsigned status = parser.get().result_int();
    std::string pending;  // bytes of a line not yet complete, or the error body
    char buf[16384];
    auto readSome = [&]() -> asio::awaitable<std::pair<beast::error_code, std::size_t>> {
      parser.get().body().data = buf;
      parser.get().body().size = sizeof buf;
      auto [rec, rn] = co_await http::async_read_some(*c.stream, c.buffer, parser, kUseTuple);
      if (rec == http::error::need_buffer) rec = {};
      co_return std::pair{rec, sizeof buf - parser.get().body().size};
    };
    if (status != 200) {
      c.stream->expires_after(opt.requestTimeout);
      while (!parser.is_done() && pending.size() < 4096) {
        auto [rec, got] = co_await readSome();
        if (stopped) co_return StreamOutcome{StreamEnd::Stopped, ""};
        pending.append(buf, got);
        if (rec) break;
      }
      co_return StreamOutcome{StreamEnd::Failed, fmt::format("events: HTTP {} from {}: {}", status, opt.socket,
                                                             describeStatusBody(pending))};
    }
    {
      std::lock_guard lock(mu);
      ++st.streams;
      st.connected = true;
    }
    struct Clear {
      Impl* self;
      ~Clear() {
        std::lock_guard lock(self->mu);
        self->st.connected = false;
      }
    } clear{this};

    // The stream is open: whatever happens from now on is in it. List.
    std::string lerr = co_await list();
    if (stopped) co_return StreamOutcome{StreamEnd::Stopped, ""};
    if (!lerr.empty()) co_return StreamOutcome{StreamEnd::Failed, lerr};
    listed = true;
    current = c.stream.get();

    while (!parser.is_done()) {
      c.stream->expires_after(opt.resync);
      auto [rec, got] = co_await readSome();
      if (stopped) co_return StreamOutcome{StreamEnd::Stopped, ""};
      pending.append(buf, got);
      if (std::optional<StreamOutcome> end = co_await consumeLines(pending, c)) co_return std::move(*end);
      if (pending.size() > opt.limits.maxEventLineBytes)
        co_return StreamOutcome{StreamEnd::Corrupt,
                                fmt::format("events: a line longer than {} bytes", opt.limits.maxEventLineBytes)};
      if (rec == beast::error::timeout) co_return StreamOutcome{StreamEnd::Resync, ""};
      if (rec)
        co_return StreamOutcome{StreamEnd::Dropped,
                                fmt::format("events stream from {} lost: {}", opt.socket, rec.message())};
    }
    co_return StreamOutcome{StreamEnd::Dropped, fmt::format("events stream from {} ended", opt.socket)};
  }

  // Hands each complete line of `pending` to handleLine; what stays is the
  // start of the next line. An outcome when the stream ends here.
  asio::awaitable<std::optional<StreamOutcome>> consumeLines(std::string& pending, Conn& c) {
    std::size_t start = 0;
    for (std::size_t nl; (nl = pending.find('\n', start)) != std::string::npos; start = nl + 1) {
      std::string_view line(pending.data() + start, nl - start);
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      if (line.empty()) continue;
      if (line.size() > opt.limits.maxEventLineBytes)
        co_return StreamOutcome{StreamEnd::Corrupt, fmt::format("events: a line of {} bytes, more than {}", line.size(),
                                                                opt.limits.maxEventLineBytes)};
      std::string herr = co_await handleLine(line);
      if (stopped) co_return StreamOutcome{StreamEnd::Stopped, ""};
      if (!herr.empty()) co_return StreamOutcome{StreamEnd::Corrupt, "events: " + herr};
      current = c.stream.get();
    }
    pending.erase(0, start);
    co_return std::nullopt;
  }

  static asio::awaitable<void> runLoop(std::shared_ptr<Impl> self) { co_await self->run(); }

  asio::awaitable<void> run() {
    unsigned failures = 0;
    while (!stopped) {
      const auto began = std::chrono::steady_clock::now();
      bool listed = false;
      StreamOutcome o = co_await session(listed);
      if (stopped || o.end == StreamEnd::Stopped) break;
      if (o.end == StreamEnd::Resync) {
        log::debug("containers: events quiet for {}s: relisting", opt.resync.count());
        failures = 0;
        continue;
      }
      // A stream that lived a while was a success: start the backoff over.
      if (listed && std::chrono::steady_clock::now() - began > std::chrono::seconds(10)) failures = 0;
      setError(o.error);
      co_await sleep(backoffDelay(failures++));
    }
    {
      std::lock_guard lock(mu);
      st.running = false;
      st.connected = false;
    }
    log::info("container watcher stopped");
  }
};

ContainerWatcher::ContainerWatcher(asio::any_io_executor ex, ContainerWatcherOptions options,
                                   ContainerWatcherCallbacks callbacks)
    : impl_(std::make_shared<Impl>(std::move(ex), std::move(options), std::move(callbacks))) {}

ContainerWatcher::~ContainerWatcher() { stop(); }

Result<void> ContainerWatcher::start() {
  Impl& i = *impl_;
  {
    std::lock_guard lock(i.mu);
    if (i.st.running) return makeError("the container watcher is already running");
  }
  if (i.stopped) return makeError("the container watcher was stopped");
  if (i.opt.socket.empty() || i.opt.socket.front() != '/')
    return makeError("container engine socket {:?}: expected an absolute path", i.opt.socket);
  if (i.opt.socket.size() >= sizeof(sockaddr_un{}.sun_path))
    return makeError("container engine socket {:?}: path too long for a Unix socket", i.opt.socket);
  auto sel = parseContainerLabelFilter(i.opt.label);
  if (!sel) return sel.error();
  if (i.opt.backoffInitial.count() <= 0 || i.opt.backoffMax < i.opt.backoffInitial)
    return makeError("container watcher: backoff must be positive, with max >= initial");
  if (i.opt.requestTimeout.count() <= 0 || i.opt.resync.count() <= 0)
    return makeError("container watcher: timeouts must be positive");
  i.selector = std::move(*sel);
  i.label = i.selector.str();
  {
    std::lock_guard lock(i.mu);
    i.st.running = true;
  }
  log::info("container watcher: {} label {}", i.opt.socket, i.label);
  asio::co_spawn(i.ex, Impl::runLoop(impl_), [](std::exception_ptr e) {
    if (!e) return;
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& ex) {
      log::error("container watcher died: {}", ex.what());
    }
  });
  return {};
}

void ContainerWatcher::stop() {
  if (impl_->stopped.exchange(true)) return;
  asio::dispatch(impl_->ex, [impl = impl_] { impl->cancelNow(); });
}

ContainerWatcherStatus ContainerWatcher::status() const {
  std::lock_guard lock(impl_->mu);
  return impl_->st;
}

std::vector<ContainerInfo> ContainerWatcher::containers() const {
  std::lock_guard lock(impl_->mu);
  std::vector<ContainerInfo> out;
  out.reserve(impl_->known.size());
  for (const auto& [id, c] : impl_->known) out.push_back(c);
  return out;
}

std::string ContainerWatcher::describe() const {
  ContainerWatcherStatus s = status();
  auto plural = [](std::uint64_t n, const char* one, const char* many) {
    return fmt::format("{} {}", n, n == 1 ? one : many);
  };
  std::string out = fmt::format("containers {} label={}: ", impl_->opt.socket, impl_->opt.label);
  out += !s.running ? "stopped" : s.connected ? "watching" : s.synced ? "reconnecting" : "not synced yet";
  out += fmt::format(", {}, {}, {}, {}, {}, {} refused", plural(s.containers, "container", "containers"),
                     plural(s.lists, "list", "lists"), plural(s.streams, "stream", "streams"),
                     plural(s.events, "event", "events"), plural(s.failures, "failure", "failures"), s.refused);
  if (!s.lastError.empty()) {
    auto ago = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now() - s.lastErrorAt);
    out += fmt::format(", last error {}s ago: {}", ago.count(), s.lastError);
  }
  return out;
}

}  // namespace atlasgate::discovery
