#pragma once
// `workers: N`: the event loops beside the daemon's own. Each is a thread
// running an io_context of its own, with its own proxy::Server (listening on
// the port with SO_REUSEPORT) and its own upstream pool; what they share is
// thread-safe (proxy::ServerShared, the agent directory, approvals, the
// audit log, the vault, token providers, rate limits, the TLS context).
//
// The daemon's thread owns everything else. It reaches a worker's pool or
// server only through call(), which runs a function on the worker's thread
// and waits for it; a worker never waits for the daemon's thread, so this
// cannot deadlock.

#include <pthread.h>

#include <exception>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>

#include <fmt/format.h>

#include "common/log.h"
#include "net/asio.h"

namespace atlasgate::proxy {
class Server;
}
namespace atlasgate::upstream {
class UpstreamPool;
}

namespace atlasgate::daemon {

struct Worker {
  explicit Worker(unsigned i) : index(i), guard(io.get_executor()) {}
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  unsigned index;
  // Declared first: destroyed last, after the server and pool that use it.
  net::asio::io_context io{1};
  net::asio::executor_work_guard<net::asio::io_context::executor_type> guard;
  std::unique_ptr<upstream::UpstreamPool> pool;
  std::unique_ptr<proxy::Server> server;
  std::thread thread;
  std::promise<void> ended;
  std::future<void> endedFuture = ended.get_future();
  bool running = false;

  // Starts the thread (after the daemon dropped its capabilities: a thread
  // keeps the capabilities it was created with).
  void start() {
    running = true;
    thread = std::thread([this] {
      const std::string name = fmt::format("atlasgate-w{}", index);
      ::pthread_setname_np(::pthread_self(), name.c_str());
      for (;;) {
        try {
          io.run();
          break;
        } catch (const std::exception& e) {
          log::error("worker {}: {}", index, e.what());
        } catch (...) {
          log::error("worker {}: unknown exception", index);
        }
      }
      ended.set_value();
    });
  }

  // Runs f on the worker's thread and returns what it returns; before
  // start(), on the caller's. Only the daemon's thread calls this.
  template <class F>
  auto call(F&& f) -> decltype(f()) {
    if (!running) return f();
    using R = decltype(f());
    // Shared: the worker may still be inside the task when the result is
    // ready and this frame returns.
    auto task = std::make_shared<std::packaged_task<R()>>(std::forward<F>(f));
    std::future<R> result = task->get_future();
    net::asio::post(io, [task] { (*task)(); });
    return result.get();
  }

  // Lets the loop end once its work is done (every worker is told before
  // any is waited for: one grace for all, not one each).
  void release() { guard.reset(); }
  enum class End { InTime, Stopped, Stuck };
  // InTime: the loop ended by `deadline`. Otherwise it is stopped (the
  // handler running now finishes, no other runs) and joined: Stopped. Stuck:
  // that handler did not return within `stuck` either (a write(2) to a pipe
  // nobody reads): the thread is left, and the caller must exit at once.
  End finish(std::chrono::steady_clock::time_point deadline, std::chrono::milliseconds stuck) {
    if (!running) return End::InTime;
    running = false;
    if (endedFuture.wait_until(deadline) == std::future_status::ready) {
      thread.join();
      return End::InTime;
    }
    io.stop();
    if (endedFuture.wait_for(stuck) != std::future_status::ready) {
      thread.detach();
      return End::Stuck;
    }
    // Joined: nothing the daemon tears down next (the audit log's observer,
    // approvals' onChange) may still be in use here.
    thread.join();
    return End::Stopped;
  }
};

}  // namespace atlasgate::daemon
