#pragma once
// Watches the Kubernetes API for the pods of one node that match a label
// selector (DaemonSet mode), and reports them as they come and go.
//
//   discovery::WatcherOptions o;                       // in-cluster defaults
//   o.nodeName = std::getenv("NODE_NAME");             // downward API
//   o.labelSelector = "atlasgate.io/inject=true";
//   discovery::PodWatcher w(io.get_executor(), o, {
//       .onUpsert = [&](const discovery::PodInfo& p) { ... findPodCgroup, attach, name p.agentName() },
//       .onDelete = [&](const discovery::PodInfo& p) { ... detach, close its netns listener },
//   });
//   if (auto r = w.start(); !r) ...                    // bad URL / selector; nothing is spawned
//   ...
//   w.stop();                                          // on the executor's thread, or after io.run() returned
//
// How it talks to the API server: GET /api/v1/pods with labelSelector and
// fieldSelector=spec.nodeName=<node> (paged, limit=500; the first list from
// the API server's cache, resourceVersion=0; relists NotOlderThan the last
// version seen), then a watch from the list's resourceVersion with bookmarks. A stream that drops is resumed
// from the last resourceVersion after a capped exponential backoff with
// jitter; "410 Gone" (HTTP 410, or an ERROR event with code 410) relists and
// diffs the fresh list against what was known, so pods deleted during the
// gap are reported deleted. The bearer token is re-read from tokenFile on
// every connection (projected service-account tokens rotate), the server is
// verified against caFile only, by host name or, for an IP literal, by IP
// address. One TCP+TLS connection per request; nothing is kept between them.
//
// The executor must not run the watcher's handlers concurrently: a
// single-threaded io_context, or a strand. Callbacks run on the executor. onUpsert fires for a pod that is new or
// changed (a MODIFIED event, or a relist that found a new resourceVersion);
// a pod whose metadata.deletionTimestamp is set is still reported by
// onUpsert (with deleted = true: it is terminating but its containers still
// run); onDelete fires once when the pod is gone from the API server, stops
// matching the selector, or reaches phase Succeeded/Failed. After stop() no
// callback runs.

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <boost/asio/any_io_executor.hpp>

#include "common/result.h"
#include "discovery/pods.h"

namespace atlasgate::discovery {

inline constexpr const char* kServiceAccountTokenFile = "/var/run/secrets/kubernetes.io/serviceaccount/token";
inline constexpr const char* kServiceAccountCaFile = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";

// An https:// API server URL, split. `host` has no brackets.
struct ApiServer {
  std::string host;
  std::uint16_t port = 443;
  std::string url() const;         // "https://host:port" (IPv6 in brackets)
  std::string hostHeader() const;  // "host", "host:port", "[v6]:port"
};
// Only https; the path must be empty or "/". Error says what is wrong.
Result<ApiServer> parseApiServerUrl(std::string_view url);
// "https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT" (port 443 when
// unset); an error when KUBERNETES_SERVICE_HOST is unset (not in a pod).
Result<std::string> inClusterApiServer();

// A bearer token file: contents with surrounding whitespace removed; an error
// when unreadable, empty, or holding control characters.
Result<std::string> readTokenFile(const std::string& path);

struct WatcherOptions {
  std::string apiServer;  // "" = inClusterApiServer()
  std::string tokenFile = kServiceAccountTokenFile;
  std::string caFile = kServiceAccountCaFile;  // the only trust anchor for the API server
  std::string nodeName;                        // spec.nodeName to watch; "" = every node (development only)
  std::string labelSelector;                   // LabelSelector syntax; "" = every pod
  std::chrono::milliseconds backoffInitial{500};
  std::chrono::milliseconds backoffMax{30000};
  std::chrono::seconds requestTimeout{30};   // connect + TLS + list page; also the watch's response head
  std::chrono::seconds watchTimeout{300};    // asked of the server (timeoutSeconds, randomised in [t, 2t))
  std::uint32_t pageSize = 500;              // list page size (limit=)
  std::uint64_t maxListBytes = 64ull << 20;  // per list page
};

struct PodWatcherCallbacks {
  std::function<void(const PodInfo&)> onUpsert;
  std::function<void(const PodInfo&)> onDelete;
};

struct WatcherStatus {
  bool running = false;    // start() succeeded and stop() has not ended it
  bool connected = false;  // a watch stream is open right now
  bool synced = false;     // at least one full list has been applied
  std::string apiServer;   // https://host:port
  std::string resourceVersion;
  std::size_t podsKnown = 0;
  std::uint64_t lists = 0;     // completed lists (each is a relist after the first)
  std::uint64_t watches = 0;   // watch streams opened (HTTP 200)
  std::uint64_t events = 0;    // watch events handled (bookmarks included)
  std::uint64_t failures = 0;  // failed lists/watches/connections
  std::string lastError;       // "" when there was none
  std::chrono::steady_clock::time_point lastErrorAt{};
};

class PodWatcher {
 public:
  PodWatcher(boost::asio::any_io_executor ex, WatcherOptions options, PodWatcherCallbacks callbacks);
  ~PodWatcher();  // stop()
  PodWatcher(const PodWatcher&) = delete;
  PodWatcher& operator=(const PodWatcher&) = delete;

  // Checks the options (URL, selector) and spawns the list/watch loop on the
  // executor. Connection problems are not errors here: they are retried and
  // shown by status()/describe().
  Result<void> start();

  // Cancels whatever is in flight (connection, read, backoff timer); the loop
  // ends without calling back again. Idempotent; thread-safe.
  void stop();

  // Thread-safe snapshots.
  WatcherStatus status() const;
  std::vector<PodInfo> pods() const;  // the pods currently known (announced, not deleted)
  // One line for `atlasgate status` / logs: "kubernetes https://10.96.0.1:443 node=n1
  // selector=atlasgate.io/inject=true: watching, resourceVersion 123, 2 pods, 1 list, 3 watches,
  // last error 12s ago: ...".
  std::string describe() const;

  struct Impl;

 private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace atlasgate::discovery
