#include "health/health.h"
#include "admin/admin.h"

#include <algorithm>

#include <gtest/gtest.h>

namespace atlasgate::health {
namespace {

using A = HealthFacts::Attachment;

TEST(Health, OkWhenEveryAttachedPathHasACgroup) {
  HealthFacts f;
  f.attachments = {A{"/sys/fs/cgroup/agents", true}, A{"/sys/fs/cgroup/tool.scope", true}};
  f.configured = {{"/sys/fs/cgroup/tool.scope", true}};
  Health h = assessHealth(f);
  EXPECT_TRUE(h.ok());
  EXPECT_EQ(h.state(), "ok");
  EXPECT_TRUE(h.problems.empty());
  EXPECT_TRUE(assessHealth(HealthFacts{}).ok());
}

TEST(Health, StaleAttachmentIsAPathWithNoCgroup) {
  // Attached by path: whatever cgroup is there (a re-created one too) is
  // covered; a path with none is stale.
  EXPECT_FALSE(staleAttachment("/sys/fs/cgroup/a", true).has_value());
  auto removed = staleAttachment("/sys/fs/cgroup/a", false);
  ASSERT_TRUE(removed.has_value());
  EXPECT_EQ(*removed, "stale attachment: cgroup \"/sys/fs/cgroup/a\" was removed");

  HealthFacts f;
  f.attachments = {A{"/sys/fs/cgroup/a", false}, A{"/sys/fs/cgroup/b", true}};
  Health h = assessHealth(f);
  EXPECT_EQ(h.state(), "degraded");
  ASSERT_EQ(h.problems.size(), 1u);
  EXPECT_EQ(h.problems[0], *removed);
}

TEST(Health, ConfiguredCgroupMissingIsSaidOnce) {
  HealthFacts f;
  f.configured = {{"/sys/fs/cgroup/gone", false}, {"/sys/fs/cgroup/here", true}};
  f.attachments = {A{"/sys/fs/cgroup/gone", false}, A{"/sys/fs/cgroup/here", true}};
  Health h = assessHealth(f);
  ASSERT_EQ(h.problems.size(), 1u);
  EXPECT_EQ(h.problems[0], "configured cgroup missing: \"/sys/fs/cgroup/gone\" (agents.attach)");
}

TEST(Health, NamespaceWithoutListenerComesAfterAttachments) {
  HealthFacts f;
  f.attachments = {A{"/sys/fs/cgroup/a", false}};
  f.namespacesWithoutListener = {{4026532999, 1234, "bind 127.0.0.1:15443: Address already in use"}};
  Health h = assessHealth(f);
  ASSERT_EQ(h.problems.size(), 2u);
  EXPECT_EQ(h.problems[0], "stale attachment: cgroup \"/sys/fs/cgroup/a\" was removed");
  EXPECT_EQ(h.problems[1],
            "agent namespace without listener: netns 4026532999 (pid 1234): bind 127.0.0.1:15443: Address already in "
            "use");
  f.namespacesWithoutListener[0].error.clear();
  EXPECT_NE(assessHealth(f).problems[1].find("listener closed"), std::string::npos);
}

TEST(Health, HostileCgroupNamesCannotForgeReasonsLinesOrEscapes) {
  const std::string evil = "/sys/fs/cgroup/x\x1b[2J\n\"; configured cgroup missing: \"/etc\\\u202e";
  HealthFacts f;
  f.attachments = {A{evil, false}};
  Health h = assessHealth(f);
  ASSERT_EQ(h.problems.size(), 1u);
  const std::string& r = h.problems[0];
  for (char c : r) {
    EXPECT_GE(static_cast<unsigned char>(c), 0x20) << r;
    EXPECT_NE(c, ';') << r;
    EXPECT_NE(c, 0x7f) << r;
  }
  EXPECT_EQ(r.find("\xe2\x80\xae"), std::string::npos);  // the bidi override is escaped
  EXPECT_NE(r.find("\\x1b[2J\\n\\x22\\x3b configured cgroup missing: \\x22/etc\\\\\\u{202e}"), std::string::npos) << r;
  // Exactly the two quotes of the path itself.
  EXPECT_EQ(std::count(r.begin(), r.end(), '"'), 2) << r;
}

TEST(Health, ManyProblemsAreCapped) {
  HealthFacts f;
  for (int i = 0; i < 40; ++i) f.attachments.push_back(A{"/sys/fs/cgroup/c" + std::to_string(i), false});
  Health h = assessHealth(f);
  ASSERT_EQ(h.problems.size(), kMaxHealthProblems + 1);
  EXPECT_EQ(h.problems.back(), "and 24 more problem(s)");
}

TEST(HealthBody, OkOrDegradedWithEveryReasonOnOneLine) {
  EXPECT_EQ(admin::healthBody({}), "ok\n");
  EXPECT_EQ(admin::healthBody({"a \"x\"", "b"}), "degraded: a \"x\"; b\n");
  // A reason that was not escaped when made (never expected) cannot break
  // the line nor reach a terminal raw.
  std::string body = admin::healthBody({"x\ny\x1b]0;t\x07"});
  EXPECT_EQ(body, "degraded: x\\ny\\x1b]0;t\\x07\n");
  EXPECT_EQ(std::count(body.begin(), body.end(), '\n'), 1);
  // An escaped reason is not escaped twice.
  HealthFacts f;
  f.attachments = {A{"/sys/fs/cgroup/a\x1b", false}};
  std::string reason = assessHealth(f).problems.at(0);
  EXPECT_EQ(admin::healthBody({reason}), "degraded: " + reason + "\n");
  EXPECT_EQ(reasonForOutput(reason), reason);
}

}  // namespace
}  // namespace atlasgate::health
