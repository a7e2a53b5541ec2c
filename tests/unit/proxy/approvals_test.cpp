// Held approvals: the body preview the operator sees, and the caps on what
// may be held (limits.max_held_requests, max_held_per_agent,
// max_held_body_bytes).

#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "common/text.h"
#include "proxy/approvals.h"

using namespace atlasgate;
using namespace atlasgate::proxy;

namespace {

ApprovalInfo held(std::string agentKey, std::uint64_t bodyBytes,
                  std::chrono::seconds timeout = std::chrono::seconds(60)) {
  ApprovalInfo info;
  info.agent = agentKey;
  info.agentKey = std::move(agentKey);
  info.bodyBytes = bodyBytes;
  info.timeout = timeout;
  return info;
}

// Runs Approvals::wait to completion (the entry is decided or gone).
ApprovalOutcome waitFor(asio::io_context& io, Approvals& a, std::uint64_t id) {
  std::optional<ApprovalOutcome> out;
  asio::co_spawn(
      io, [&]() -> asio::awaitable<void> { out = co_await a.wait(id); }, asio::detached);
  io.restart();
  io.run();
  return out.value();
}

}  // namespace

TEST(BodyPreview, TwoByteCharacterAcrossTheCutIsLeftOut) {
  // The attack: 'é' (C3 A9) at bytes 511-512; a byte cut leaves a lone C3,
  // which made the control socket's JSON unreadable.
  std::string body = std::string(511, 'a') + "\xC3\xA9" + "rest";
  ApprovalInfo info;
  previewBody(info, body);
  EXPECT_EQ(info.bodyPreview, std::string(511, 'a'));
  EXPECT_TRUE(text::isUtf8(info.bodyPreview));
  EXPECT_EQ(info.bodyBytes, body.size());
  EXPECT_TRUE(info.bodyTruncated);
  EXPECT_EQ(info.bodyLeadingBlanks, 0u);
}

TEST(BodyPreview, WholeShortBodyAndInvalidBytes) {
  ApprovalInfo info;
  previewBody(info, "{\"name\":\"x\xFFy\"}");
  EXPECT_EQ(info.bodyPreview, "{\"name\":\"x\xEF\xBF\xBDy\"}");
  EXPECT_FALSE(info.bodyTruncated);
  EXPECT_EQ(info.bodyBytes, 14u);

  previewBody(info, std::string(512, 'b'));
  EXPECT_EQ(info.bodyPreview.size(), 512u);
  EXPECT_FALSE(info.bodyTruncated);
  previewBody(info, "");
  EXPECT_EQ(info.bodyPreview, "");
  EXPECT_FALSE(info.bodyTruncated);
}

TEST(BodyPreview, LeadingWhitespaceCannotPushThePayloadOut) {
  std::string payload = "{\"name\":\"DROP-EVERYTHING\"}";
  std::string body = std::string(600, ' ') + "\n\t" + payload;
  ApprovalInfo info;
  previewBody(info, body);
  EXPECT_EQ(info.bodyPreview, payload);
  EXPECT_EQ(info.bodyLeadingBlanks, 602u);
  EXPECT_EQ(info.bodyBytes, body.size());
  EXPECT_FALSE(info.bodyTruncated);
  // All blanks: nothing to preview, nothing cut.
  previewBody(info, std::string(700, ' '));
  EXPECT_EQ(info.bodyPreview, "");
  EXPECT_EQ(info.bodyLeadingBlanks, 700u);
  EXPECT_FALSE(info.bodyTruncated);
}

TEST(HeldCaps, PerAgentWholeDaemonAndBodyBytes) {
  asio::io_context io;
  Approvals a(io.get_executor());
  HoldLimits lim{3, 2, 100};

  Admission a1 = a.add(held("A", 10), lim);
  Admission a2 = a.add(held("A", 10), lim);
  ASSERT_NE(a1.id, 0u);
  ASSERT_NE(a2.id, 0u);
  Admission a3 = a.add(held("A", 10), lim);  // A has 2
  EXPECT_EQ(a3.id, 0u);
  EXPECT_EQ(a3.full, HoldCap::PerAgent);
  EXPECT_GE(a3.retryAfter.count(), 1);
  EXPECT_LE(a3.retryAfter.count(), 60);

  Admission b1 = a.add(held("B", 81), lim);  // 10 + 10 + 81 > 100
  EXPECT_EQ(b1.id, 0u);
  EXPECT_EQ(b1.full, HoldCap::BodyBytes);
  Admission b2 = a.add(held("B", 80), lim);  // exactly 100
  ASSERT_NE(b2.id, 0u);
  EXPECT_EQ(a.heldBodyBytes(), 100u);

  Admission c1 = a.add(held("C", 0), lim);  // 3 held in all
  EXPECT_EQ(c1.id, 0u);
  EXPECT_EQ(c1.full, HoldCap::Requests);
  EXPECT_EQ(a.refused(), 3u);
  EXPECT_EQ(a.held(), 3u);
  EXPECT_EQ(a.pending().size(), 3u);

  // A body larger than the whole budget never fits (and does not overflow the sum).
  EXPECT_EQ(a.add(held("D", UINT64_MAX), HoldLimits{10, 10, 100}).full, HoldCap::BodyBytes);

  // Places free up: abandoned, decided (once the requester took the answer).
  a.abandon(a1.id);
  EXPECT_EQ(a.held(), 2u);
  EXPECT_EQ(a.heldBodyBytes(), 90u);
  EXPECT_NE(a.add(held("A", 10), lim).id, 0u);
  EXPECT_TRUE(a.decide(b2.id, false));
  EXPECT_EQ(a.held(), 3u);  // the body is in memory until the requester is answered
  EXPECT_EQ(waitFor(io, a, b2.id), ApprovalOutcome::Denied);
  EXPECT_EQ(a.held(), 2u);
  EXPECT_EQ(a.heldBodyBytes(), 20u);
  Admission b3 = a.add(held("B", 80), lim);
  EXPECT_NE(b3.id, 0u);
}

TEST(HeldCaps, TimedOutRequestsFreeTheirPlace) {
  asio::io_context io;
  Approvals a(io.get_executor());
  HoldLimits lim{1, 1, 1000};
  Admission first = a.add(held("A", 500, std::chrono::seconds(0)), lim);
  ASSERT_NE(first.id, 0u);
  Admission refused = a.add(held("B", 1), lim);
  EXPECT_EQ(refused.full, HoldCap::Requests);
  EXPECT_EQ(refused.retryAfter.count(), 1);  // at least one second, even when due now
  EXPECT_EQ(waitFor(io, a, first.id), ApprovalOutcome::TimedOut);
  EXPECT_EQ(a.held(), 0u);
  EXPECT_EQ(a.heldBodyBytes(), 0u);
  EXPECT_NE(a.add(held("B", 1), lim).id, 0u);
}

TEST(HeldCaps, RetryAfterFollowsTheSoonestRelevantTimeout) {
  asio::io_context io;
  Approvals a(io.get_executor());
  HoldLimits lim{10, 1, 1000};
  ASSERT_NE(a.add(held("A", 1, std::chrono::seconds(300)), lim).id, 0u);
  ASSERT_NE(a.add(held("B", 1, std::chrono::seconds(5)), lim).id, 0u);
  // A's own request frees A's place, not B's.
  Admission r = a.add(held("A", 1), lim);
  EXPECT_EQ(r.full, HoldCap::PerAgent);
  EXPECT_GT(r.retryAfter.count(), 200);
  EXPECT_LE(r.retryAfter.count(), 300);
}

// workers: a request held on a worker's loop (its own thread) is decided
// from the daemon's thread. The decision must wake the waiter there, even
// when it comes between the waiter's look at the entry and its wait (the
// cancel is posted to the waiter's loop), and onChange runs on the daemon's
// thread only.
TEST(HeldAcrossThreads, DecisionFromTheDaemonWakesAWaiterOnAWorker) {
  asio::io_context daemon;
  Approvals a(daemon.get_executor());
  std::atomic<int> changesOffThread{0};
  const auto daemonThread = std::this_thread::get_id();
  a.setOnChange([&] {
    if (std::this_thread::get_id() != daemonThread) ++changesOffThread;
  });
  const HoldLimits lim{1000, 1000, 1 << 20};
  for (int round = 0; round < 200; ++round) {
    asio::io_context worker;
    std::atomic<std::uint64_t> id{0};
    std::optional<ApprovalOutcome> out;
    std::thread t([&] {
      asio::co_spawn(
          worker,
          [&]() -> asio::awaitable<void> {
            Admission ad = a.add(held("A", 1), lim, worker.get_executor());
            id = ad.id;
            out = co_await a.wait(ad.id);
          },
          asio::detached);
      worker.run();
    });
    while (id == 0) std::this_thread::yield();
    if (round % 2 == 1) std::this_thread::sleep_for(std::chrono::microseconds(50 * (round % 7)));
    EXPECT_TRUE(a.decide(id, round % 3 != 0));
    t.join();  // the worker's loop ends only once the wait completed
    ASSERT_TRUE(out.has_value());
    EXPECT_EQ(*out, round % 3 != 0 ? ApprovalOutcome::Approved : ApprovalOutcome::Denied);
  }
  daemon.run();  // the posted onChange calls
  EXPECT_EQ(changesOffThread, 0);
  EXPECT_EQ(a.held(), 0u);
}

TEST(HeldAcrossThreads, DenyAllWakesEveryWorker) {
  asio::io_context daemon;
  Approvals a(daemon.get_executor());
  const HoldLimits lim{1000, 1000, 1 << 20};
  std::vector<std::unique_ptr<asio::io_context>> loops;
  std::vector<std::thread> threads;
  std::atomic<int> denied{0}, added{0};
  for (int w = 0; w < 4; ++w) {
    loops.push_back(std::make_unique<asio::io_context>());
    asio::io_context& io = *loops.back();
    threads.emplace_back([&] {
      for (int i = 0; i < 5; ++i)
        asio::co_spawn(
            io,
            [&]() -> asio::awaitable<void> {
              Admission ad = a.add(held("A", 1), lim, io.get_executor());
              ++added;
              if (co_await a.wait(ad.id) == ApprovalOutcome::Denied) ++denied;
            },
            asio::detached);
      io.run();
    });
  }
  while (added < 20) std::this_thread::yield();
  a.denyAll();
  for (auto& t : threads) t.join();
  EXPECT_EQ(denied, 20);
  EXPECT_EQ(a.held(), 0u);
}
