// discovery_watch_driver: runs one PodWatcher and narrates what it sees, for
// tests/fake_k8s/test_discovery_watch.py.
//
//   discovery_watch_driver --api https://127.88.0.1:PORT --token-file F --ca-file F
//       [--node NAME] [--selector SEL] [--backoff-ms 100] [--backoff-max-ms 1000]
//       [--watch-timeout 300] [--page-size 500]
//
// stdout, one JSON object per line:
//   {"event":"upsert","agent":"ns/name","uid":..,"rv":..,"phase":..,"deleted":false,"labels":{..}}
//   {"event":"delete","agent":"ns/name","uid":..}
//   {"event":"status","describe":"...","connected":true,"synced":true,"rv":"..","pods":N,
//    "lists":N,"watches":N,"failures":N,"lastError":".."}      (answer to "status")
//   {"event":"stopped"}                                          (the loop has ended, then exit 0)
// stdin, one command per line: "status", "stop".
// Exit 2 when start() refuses the options (message on stderr).

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <mutex>
#include <string>
#include <thread>

#include <boost/json.hpp>

#include "common/log.h"
#include "discovery/watcher.h"
#include "net/asio.h"

namespace json = boost::json;
namespace asio = boost::asio;
using namespace atlasgate;

namespace {

std::mutex outMu;

void emit(const json::object& o) {
  std::lock_guard lock(outMu);
  std::string line = json::serialize(o);
  std::fwrite(line.data(), 1, line.size(), stdout);
  std::fputc('\n', stdout);
  std::fflush(stdout);
}

json::object podJson(const char* event, const discovery::PodInfo& p) {
  json::object labels;
  for (const auto& [k, v] : p.labels) labels[k] = v;
  return {{"event", event},   {"agent", p.agentName()}, {"uid", p.uid},       {"rv", p.resourceVersion},
          {"phase", p.phase}, {"deleted", p.deleted},   {"node", p.nodeName}, {"labels", labels}};
}

}  // namespace

int main(int argc, char** argv) {
  discovery::WatcherOptions o;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i], v = argv[i + 1];
    if (k == "--api")
      o.apiServer = v;
    else if (k == "--token-file")
      o.tokenFile = v;
    else if (k == "--ca-file")
      o.caFile = v;
    else if (k == "--node")
      o.nodeName = v;
    else if (k == "--selector")
      o.labelSelector = v;
    else if (k == "--backoff-ms")
      o.backoffInitial = std::chrono::milliseconds(std::atoi(v.c_str()));
    else if (k == "--backoff-max-ms")
      o.backoffMax = std::chrono::milliseconds(std::atoi(v.c_str()));
    else if (k == "--watch-timeout")
      o.watchTimeout = std::chrono::seconds(std::atoi(v.c_str()));
    else if (k == "--page-size")
      o.pageSize = static_cast<std::uint32_t>(std::atoi(v.c_str()));
    else {
      std::fprintf(stderr, "unknown option %s\n", k.c_str());
      return 2;
    }
  }
  log::setLevel(log::Level::Debug);

  asio::io_context io;
  auto work = asio::make_work_guard(io);
  discovery::PodWatcher w(io.get_executor(), o,
                          {.onUpsert = [](const discovery::PodInfo& p) { emit(podJson("upsert", p)); },
                           .onDelete = [](const discovery::PodInfo& p) { emit(podJson("delete", p)); }});
  if (auto r = w.start(); !r) {
    std::fprintf(stderr, "start: %s\n", r.error().message.c_str());
    return 2;
  }

  // Commands arrive on a thread of their own and run on the io_context.
  std::thread reader([&] {
    std::string line;
    while (std::getline(std::cin, line)) {
      if (line == "status") {
        asio::post(io, [&] {
          auto s = w.status();
          emit({{"event", "status"},
                {"describe", w.describe()},
                {"running", s.running},
                {"connected", s.connected},
                {"synced", s.synced},
                {"rv", s.resourceVersion},
                {"pods", s.podsKnown},
                {"lists", s.lists},
                {"watches", s.watches},
                {"events", s.events},
                {"failures", s.failures},
                {"lastError", s.lastError}});
        });
      } else if (line == "stop") {
        break;
      }
    }
    // "stop" or end of input: stop from this (foreign) thread, as a daemon's
    // signal handler might; then let the io_context run out of work.
    w.stop();
    asio::post(io, [&] { work.reset(); });
  });

  io.run();
  emit({{"event", "stopped"}, {"running", w.status().running}});
  reader.join();
  return 0;
}
