// container_watch_driver: runs one ContainerWatcher and narrates what it sees,
// for tests/fake_engine/test_container_watch.py.
//
//   container_watch_driver --socket PATH [--label L] [--backoff-ms 50]
//       [--backoff-max-ms 500] [--resync-s 300] [--max-containers N] [--max-listed N]
//       [--max-event-line N] [--max-response N] [--request-timeout-s 10]
//
// stdout, one JSON object per line:
//   {"event":"upsert","agent":"container/x","id":..,"pid":N,"labels":{..}}
//   {"event":"delete","agent":"container/x","id":..,"removed":true|false}
//   {"event":"status","describe":"...","connected":..,"synced":..,"containers":N,"lists":N,
//    "streams":N,"events":N,"failures":N,"refused":N,"lastError":".."}    (answer to "status")
//   {"event":"stopped"}                                                  (the loop has ended, then exit 0)
// stdin, one command per line: "status", "stop".
// Exit 2 when start() refuses the options (message on stderr).

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <mutex>
#include <string>
#include <thread>

#include <boost/json.hpp>

#include "common/log.h"
#include "discovery/container_watcher.h"
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

json::object containerJson(const char* event, const discovery::ContainerInfo& c) {
  json::object labels;
  for (const auto& [k, v] : c.labels) labels[k] = v;
  return {{"event", event}, {"agent", c.agentName()}, {"id", c.id},
          {"pid", c.pid},   {"removed", c.removed},   {"labels", labels}};
}

}  // namespace

int main(int argc, char** argv) {
  discovery::ContainerWatcherOptions o;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i], v = argv[i + 1];
    auto n = [&] { return std::strtoull(v.c_str(), nullptr, 10); };
    if (k == "--socket")
      o.socket = v;
    else if (k == "--label")
      o.label = v;
    else if (k == "--backoff-ms")
      o.backoffInitial = std::chrono::milliseconds(n());
    else if (k == "--backoff-max-ms")
      o.backoffMax = std::chrono::milliseconds(n());
    else if (k == "--resync-s")
      o.resync = std::chrono::seconds(n());
    else if (k == "--request-timeout-s")
      o.requestTimeout = std::chrono::seconds(n());
    else if (k == "--max-containers")
      o.limits.maxContainers = n();
    else if (k == "--max-listed")
      o.limits.maxListed = n();
    else if (k == "--max-event-line")
      o.limits.maxEventLineBytes = n();
    else if (k == "--max-response")
      o.limits.maxResponseBytes = n();
    else {
      std::fprintf(stderr, "unknown option %s\n", k.c_str());
      return 2;
    }
  }
  log::setLevel(log::Level::Debug);

  asio::io_context io;
  auto work = asio::make_work_guard(io);
  discovery::ContainerWatcher w(
      io.get_executor(), o,
      {.onUpsert = [](const discovery::ContainerInfo& c) { emit(containerJson("upsert", c)); },
       .onDelete = [](const discovery::ContainerInfo& c) { emit(containerJson("delete", c)); }});
  if (auto r = w.start(); !r) {
    std::fprintf(stderr, "start: %s\n", r.error().message.c_str());
    return 2;
  }

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
                {"containers", s.containers},
                {"lists", s.lists},
                {"streams", s.streams},
                {"events", s.events},
                {"failures", s.failures},
                {"refused", s.refused},
                {"lastError", s.lastError}});
        });
      } else if (line == "stop") {
        break;
      }
    }
    w.stop();
    asio::post(io, [&] { work.reset(); });
  });

  io.run();
  emit({{"event", "stopped"}, {"running", w.status().running}});
  reader.join();
  return 0;
}
