// The console's decision feed (console/feed.h): numbering, bounds, the
// per-minute counts and the per-agent counts.
#include "console/feed.h"

#include <gtest/gtest.h>

#include <fmt/format.h>

#include <boost/json.hpp>

using namespace atlasgate::console;
using namespace std::chrono_literals;
namespace json = boost::json;

namespace {

const auto kNoon = std::chrono::system_clock::time_point(std::chrono::hours(24 * 20000 + 12));

void push(Feed& f, std::string_view agent, std::string_view decision, std::chrono::system_clock::time_point ts,
          std::string_view protocol = "") {
  std::string line = fmt::format(R"({{"agent":{},"decision":{}}})", json::serialize(json::string(agent)),
                                 json::serialize(json::string(decision)));
  f.push(line, agent, decision, protocol, ts);
}

TEST(Feed, NumbersEachRecordAndMarksHttpRequests) {
  Feed f;
  int woken = 0;
  f.setObserver([&] { ++woken; });
  push(f, "a", "allow", kNoon);
  f.push(R"({"agent":"b","decision":"block","protocol":"mongodb"})", "b", "block", "mongodb", kNoon);
  ASSERT_EQ(f.last(), 2u);
  auto all = f.since(0, 100);
  ASSERT_EQ(all.size(), 2u);
  auto first = json::parse(all[0]->json).as_object();
  EXPECT_EQ(first.at("seq").as_int64(), 1);
  EXPECT_EQ(first.at("protocol").as_string(), "https");
  auto second = json::parse(all[1]->json).as_object();
  EXPECT_EQ(second.at("protocol").as_string(), "mongodb");
  EXPECT_EQ(second.size(), 4u) << "no second protocol field";
  EXPECT_EQ(woken, 2);
}

TEST(Feed, KeepsTheLastThousandAndHandsOutTheNewestFirstWhenLimited) {
  Feed f;
  for (int i = 0; i < 1500; ++i) push(f, "a", "allow", kNoon);
  auto all = f.since(0, 5000);
  ASSERT_EQ(all.size(), Feed::kKeptDecisions);
  EXPECT_EQ(all.front()->seq, 501u);
  EXPECT_EQ(all.back()->seq, 1500u);
  auto some = f.since(0, 10);
  ASSERT_EQ(some.size(), 10u);
  EXPECT_EQ(some.front()->seq, 1491u) << "a client that fell behind catches up with the present";
  EXPECT_EQ(f.since(1495, 100).size(), 5u);
  EXPECT_TRUE(f.since(1500, 100).empty());
  EXPECT_TRUE(f.since(99999, 100).empty());
}

TEST(Feed, CountsRequestsPerMinuteForTheLastHour) {
  Feed f;
  push(f, "a", "allow", kNoon - 90min);  // older than the hour: not shown
  push(f, "a", "allow", kNoon - 59min);
  push(f, "a", "block", kNoon - 59min + 30s);
  push(f, "a", "allow", kNoon + 10s);
  push(f, "a", "allow", kNoon + 20s);
  push(f, "a", "<b>\"x", kNoon + 30s);  // not a decision name: counted as other
  auto stats = json::parse(f.statsJson(kNoon + 40s)).as_object();
  auto& minutes = stats.at("minutes").as_array();
  ASSERT_EQ(minutes.size(), Feed::kMinutes);
  auto& oldest = minutes.front().as_object();
  EXPECT_EQ(oldest.at("total").as_int64(), 2);
  EXPECT_EQ(oldest.at("allow").as_int64(), 1);
  EXPECT_EQ(oldest.at("block").as_int64(), 1);
  auto& now = minutes.back().as_object();
  EXPECT_EQ(now.at("t").as_string(), isoSeconds(kNoon));
  EXPECT_EQ(now.at("total").as_int64(), 3);
  EXPECT_EQ(now.at("allow").as_int64(), 2);
  EXPECT_EQ(now.at("other").as_int64(), 1);
  for (std::size_t i = 1; i + 1 < minutes.size(); ++i) EXPECT_EQ(minutes[i].as_object().at("total").as_int64(), 0);
  // An hour later the old buckets are not reused as if they were new.
  auto later = json::parse(f.statsJson(kNoon + 2h)).as_object();
  for (const auto& m : later.at("minutes").as_array()) EXPECT_EQ(m.as_object().at("total").as_int64(), 0);
}

TEST(Feed, CountsPerAgentAndForgetsTheLeastRecentlySeenPastTheCap) {
  Feed f;
  push(f, "keeper", "allow", kNoon);
  push(f, "keeper", "denied", kNoon + 1s);
  push(f, "keeper", "rate_limited", kNoon + 2s);
  push(f, "old", "allow", kNoon - 1h);
  const auto& a = f.agents().at("keeper");
  EXPECT_EQ(a.requests, 3u);
  EXPECT_EQ(a.blocked, 2u);
  EXPECT_EQ(a.lastSeen, kNoon + 2s);
  for (std::size_t i = 0; i < Feed::kMaxAgents; ++i) push(f, fmt::format("made-up-{}", i), "allow", kNoon + 3s);
  EXPECT_EQ(f.agents().size(), Feed::kMaxAgents);
  EXPECT_FALSE(f.agents().contains("old"));
}

}  // namespace
