// The naming rule: an agent is named by the attached root it sits under,
// never by the cgroup it happens to be in.

#include <gtest/gtest.h>

#include "proxy/agents.h"

namespace atlasgate::proxy {
namespace {

const std::string kAgents = "atlasgate";
const std::vector<std::string> kRoots = {"atlasgate", "system.slice/svc.service", "system.slice/svc.service/inner"};

AgentIdentity id(const std::string& rel, const std::map<std::string, GivenName>& given = {}) {
  return identifyAgent(rel, kAgents, kRoots, given);
}

TEST(AgentNames, LauncherCgroupIsNamedWithoutItsPid) {
  auto a = id("atlasgate/ops-bot.4242");
  EXPECT_EQ(a.name, "ops-bot");
  EXPECT_EQ(a.key, "atlasgate/ops-bot.4242");
  EXPECT_EQ(a.cgroupPath, "atlasgate/ops-bot.4242");
  EXPECT_TRUE(a.known());
}

TEST(AgentNames, ChildCgroupsAnAgentMadeAreTheSameAgent) {
  auto a = id("atlasgate/ops-bot.4242/evil/deeper");
  EXPECT_EQ(a.name, "ops-bot");
  EXPECT_EQ(a.key, "atlasgate/ops-bot.4242");
  EXPECT_EQ(a.cgroupPath, "atlasgate/ops-bot.4242/evil/deeper");
  // A child named like another launcher cgroup changes nothing.
  EXPECT_EQ(id("atlasgate/ops-bot.4242/admin.1").name, "ops-bot");
}

TEST(AgentNames, AttachedCgroupIsNamedByItsPathAndKeepsItForChildren) {
  EXPECT_EQ(id("system.slice/svc.service").name, "system.slice/svc.service");
  auto child = id("system.slice/svc.service/child");
  EXPECT_EQ(child.name, "system.slice/svc.service");
  EXPECT_EQ(child.key, "system.slice/svc.service");
  // A sibling whose name shares a prefix is not below it.
  EXPECT_FALSE(id("system.slice/svc.service2").known());
}

TEST(AgentNames, LongestAttachedRootWins) {
  EXPECT_EQ(id("system.slice/svc.service/inner/x").name, "system.slice/svc.service/inner");
}

TEST(AgentNames, OutsideEveryRootIsNoAgent) {
  auto a = id("user.slice/user-1000.slice/session-1.scope");
  EXPECT_FALSE(a.known());
  EXPECT_TRUE(a.key.empty());
  EXPECT_FALSE(id("").known());
  EXPECT_FALSE(id("atlasgate2/x.1").known());
}

TEST(AgentNames, DiscoveredPodNameCoversItsContainers) {
  std::map<std::string, GivenName> given;
  auto labels =
      std::make_shared<const std::map<std::string, std::string>>(std::map<std::string, std::string>{{"app", "bot"}});
  given["kubepods.slice/pod123"] = GivenName{"team-a/bot-0", labels};
  auto a = identifyAgent("kubepods.slice/pod123/cri-containerd-abc.scope", kAgents, {"kubepods.slice/pod123"}, given);
  EXPECT_EQ(a.name, "team-a/bot-0");
  EXPECT_EQ(a.key, "kubepods.slice/pod123");
  ASSERT_TRUE(a.podLabels);
  EXPECT_EQ(a.podLabels->at("app"), "bot");
}

TEST(AgentNames, AgentsCgroupNotAttachedNamesNothingBelowIt) {
  auto a = identifyAgent("atlasgate/ops-bot.1", kAgents, {"system.slice/svc.service"}, {});
  EXPECT_FALSE(a.known());
}

}  // namespace
}  // namespace atlasgate::proxy

namespace atlasgate::proxy {
namespace {

TEST(AgentNames, UnderAGuardOnlyDiscoveryNames) {
  const std::vector<std::string> roots = {"atlasgate", "machine.slice", "machine.slice/attached.scope"};
  const std::vector<std::string> guards = {"machine.slice"};
  std::map<std::string, GivenName> given;
  given["machine.slice/libpod-abc"] = GivenName{"container/bot", nullptr, LabelKind::Container};
  // Named by discovery: an agent, with its container's name.
  auto a = identifyAgent("machine.slice/libpod-abc/sub", "atlasgate", roots, given, guards);
  EXPECT_EQ(a.name, "container/bot");
  EXPECT_FALSE(a.guarded);
  // A new (or restarted) container not named yet: held, never named after the guard.
  auto b = identifyAgent("machine.slice/libpod-def", "atlasgate", roots, given, guards);
  EXPECT_FALSE(b.known());
  EXPECT_TRUE(b.guarded);
  EXPECT_FALSE(identifyAgent("machine.slice", "atlasgate", roots, given, guards).known());
  // A cgroup attached by hand below the guard names its own subtree.
  EXPECT_EQ(identifyAgent("machine.slice/attached.scope/x", "atlasgate", roots, given, guards).name,
            "machine.slice/attached.scope");
  // Outside the guard nothing changes.
  EXPECT_FALSE(identifyAgent("user.slice/x", "atlasgate", roots, given, guards).guarded);
}

}  // namespace
}  // namespace atlasgate::proxy
