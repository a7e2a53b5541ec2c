#pragma once
// Container discovery: labelled containers of a local Podman or Docker engine
// become agents, named "container/<name>".
//
//   discovery::ContainerWatcherOptions o;
//   o.socket = "/run/podman/podman.sock";             // or /run/docker.sock
//   o.label = "atlasgate.io/inject=true";
//   discovery::ContainerWatcher w(io.get_executor(), o, {
//       .onUpsert = [&](const discovery::ContainerInfo& c) {
//           auto cg = discovery::findContainerCgroup("/sys/fs/cgroup", c);   // absolute path
//           ... attach *cg, name it c.agentName(), rules see c.labels },
//       .onDelete = [&](const discovery::ContainerInfo& c) { ... detach },
//   });
//   if (auto r = w.start(); !r) ...                    // bad options; nothing is spawned
//   w.stop();                                          // on the executor's thread, or after io.run() returned
//
// How it talks to the engine: the Docker-compatible HTTP API (Podman's
// `podman system service` serves it too) over the engine's Unix socket, one
// connection per request, HTTP/1.1:
//   GET /v1.41/events?filters={"type":["container"],"label":[L]}   opened first, kept open
//   GET /v1.41/containers/json?filters={"label":[L]}               the running labelled containers
//   GET /v1.41/containers/<id>/json                                each one's State.Pid, Name, Config.Labels
// The events stream is opened before the list, so nothing that happens in
// between is missed; an event only says "look at container <id> again" (it is
// inspected afresh), so seeing a change twice is harmless. When the stream
// ends (engine restart, socket gone) the watcher reconnects after a capped
// exponential backoff with jitter, relists and diffs: containers removed
// meanwhile are reported deleted. The stream is also re-opened and the list
// redone every `resync` as a safety net.
//
// The engine's bytes are untrusted: every response and event line is bounded,
// ids must be 64 hex digits, names the engine's own [A-Za-z0-9][A-Za-z0-9_.-]*,
// labels are bounded in number and size, and a container claiming the name
// of another known container is refused (not reported) until that one is gone.
// A refused container is never attached: its connections are not redirected
// and it holds no credential.
//
// The executor must not run the watcher's handlers concurrently (a
// single-threaded io_context, or a strand). Callbacks run on the executor.
// onUpsert fires for a running labelled container that is new or changed
// (name, labels, pid: a restarted container has a new pid and a new cgroup);
// onDelete fires once when it stops, is removed, or stops matching. After
// stop() no callback runs.

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <boost/asio/any_io_executor.hpp>

#include "common/result.h"
#include "discovery/containers.h"

namespace atlasgate::discovery {

struct ContainerWatcherOptions {
  std::string socket = "/run/podman/podman.sock";  // the engine's API socket (Unix)
  std::string label = "atlasgate.io/inject=true";  // "key" or "key=value"
  std::chrono::milliseconds backoffInitial{250};
  std::chrono::milliseconds backoffMax{10000};
  std::chrono::seconds requestTimeout{10};  // connect + one list/inspect; also the events' response head
  std::chrono::seconds resync{300};         // relist this often while the stream is quiet
  EngineLimits limits;
};

struct ContainerWatcherCallbacks {
  std::function<void(const ContainerInfo&)> onUpsert;
  std::function<void(const ContainerInfo&)> onDelete;
};

struct ContainerWatcherStatus {
  bool running = false;    // start() succeeded and stop() has not ended it
  bool connected = false;  // the events stream is open
  bool synced = false;     // at least one full list has been applied
  std::size_t containers = 0;
  std::uint64_t lists = 0;
  std::uint64_t streams = 0;   // events streams opened (HTTP 200)
  std::uint64_t events = 0;    // events handled
  std::uint64_t failures = 0;  // failed requests / lost streams / garbage
  std::uint64_t refused = 0;   // containers refused (bad name or labels, name already taken)
  std::string lastError;
  std::chrono::steady_clock::time_point lastErrorAt{};
};

class ContainerWatcher {
 public:
  ContainerWatcher(boost::asio::any_io_executor ex, ContainerWatcherOptions options,
                   ContainerWatcherCallbacks callbacks);
  ~ContainerWatcher();  // stop()
  ContainerWatcher(const ContainerWatcher&) = delete;
  ContainerWatcher& operator=(const ContainerWatcher&) = delete;

  // Checks the options and spawns the loop. An engine that is not there yet
  // is no error: it is retried and shown by status()/describe().
  Result<void> start();
  // Cancels whatever is in flight; no callback runs afterwards. Idempotent; thread-safe.
  void stop();

  // Thread-safe snapshots.
  ContainerWatcherStatus status() const;
  std::vector<ContainerInfo> containers() const;  // announced and not deleted
  // One line for `atlasgate status`: "containers /run/podman/podman.sock label=...:
  // watching, 2 containers, 1 list, ...".
  std::string describe() const;

  struct Impl;

 private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace atlasgate::discovery
