#include "policy/policy.h"

#include <algorithm>
#include <atomic>
#include <sstream>
#include <thread>

#include <fmt/format.h>
#include <gtest/gtest.h>

namespace atlasgate::policy {
namespace {

using namespace std::chrono_literals;
using config::Action;

const Policy::Clock::time_point kT0 = Policy::Clock::time_point(1000h);
constexpr std::string_view kClusterPath = "/api/atlas/v2/groups/{groupId}/clusters/{clusterName}";

config::Rule rule(std::string name, std::string path, Action action, std::vector<std::string> methods = {}) {
  config::Rule r;
  r.name = std::move(name);
  r.path = std::move(path);
  r.action = action;
  r.methods = std::move(methods);
  return r;
}

config::Rule rateRule(std::string name, std::string path, std::uint64_t count, std::uint64_t period,
                      config::RatePer per = config::RatePer::Agent) {
  config::Rule r = rule(std::move(name), std::move(path), Action::RateLimit);
  r.rate = config::Rate{count, period};
  r.per = per;
  return r;
}

config::Condition when(std::string pointer, config::CondOp op, std::vector<std::string> values = {}) {
  config::Condition c;
  c.pointer = std::move(pointer);
  c.op = op;
  c.jsonValues = std::move(values);
  return c;
}

std::shared_ptr<Policy> compile(std::vector<config::Rule> list, Action def = Action::Allow, Options opts = {}) {
  config::Rules rules;
  rules.defaultAction = def;
  rules.list = std::move(list);
  auto p = Policy::compile(rules, opts);
  EXPECT_TRUE(p.ok()) << (p.ok() ? "" : p.error().message);
  return p.ok() ? p.value() : nullptr;
}

Request req(std::string_view method, std::string_view target, std::string_view agent = "agent-1",
            std::optional<std::string_view> body = std::nullopt, std::string_view host = "cloud.mongodb.com") {
  return Request{method, target, host, agent, body};
}

Decision eval(Policy& p, const Request& r, Policy::Clock::time_point now = kT0) { return p.evaluate(r, now); }

Verdict verdict(Policy& p, std::string_view method, std::string_view target) {
  return p.evaluate(req(method, target), kT0).verdict;
}

// ---- paths ------------------------------------------------------------------

TEST(Policy, BlocksClusterDeletionWithEveryPatternForm) {
  auto p = compile({rule("no-cluster-deletion", std::string(kClusterPath), Action::Block, {"DELETE"})});
  auto d = eval(*p, req("DELETE", "/api/atlas/v2/groups/5f1/clusters/Cluster0"));
  EXPECT_EQ(d.verdict, Verdict::Block);
  EXPECT_EQ(d.ruleName, "no-cluster-deletion");
  ASSERT_NE(d.rule, nullptr);
  EXPECT_EQ(d.rule->name, "no-cluster-deletion");
  EXPECT_EQ(d.ruleIndex, 0u);
  EXPECT_EQ(d.path, "/api/atlas/v2/groups/5f1/clusters/Cluster0");

  EXPECT_EQ(verdict(*p, "DELETE", "/api/atlas/v2/groups/5f1/clusters/Cluster0/"), Verdict::Block);
  EXPECT_EQ(verdict(*p, "DELETE", "/api/atlas/v2/groups/5f1/clusters/Cluster0?pretty=true"), Verdict::Block);
  EXPECT_EQ(verdict(*p, "DELETE", "//api/atlas//v2/groups/5f1/clusters/Cluster0//"), Verdict::Block);
  EXPECT_EQ(verdict(*p, "DELETE", "/api/atlas/v2/groups/5f1/clusters"), Verdict::Allow);
  EXPECT_EQ(verdict(*p, "DELETE", "/api/atlas/v2/groups/5f1/clusters/Cluster0/restartPrimaries"), Verdict::Allow);
  EXPECT_EQ(verdict(*p, "GET", "/api/atlas/v2/groups/5f1/clusters/Cluster0"), Verdict::Allow);
}

TEST(Policy, StarAndGlobstarPositions) {
  auto p = compile({
      rule("star", "/a/*/c", Action::Block),
      rule("start", "/**/processes", Action::Approve),
      rule("middle", "/m/**/clusters/{name}", Action::Block),
      rule("end", "/api/atlas/v2/**", Action::LogOnly),
  });
  EXPECT_EQ(eval(*p, req("GET", "/a/b/c")).ruleName, "star");
  EXPECT_EQ(eval(*p, req("GET", "/a/c")).ruleName, "default");
  EXPECT_EQ(eval(*p, req("GET", "/a/b/b/c")).ruleName, "default");
  EXPECT_EQ(eval(*p, req("GET", "/processes")).ruleName, "start");
  EXPECT_EQ(eval(*p, req("GET", "/x/y/processes")).ruleName, "start");
  EXPECT_EQ(eval(*p, req("GET", "/m/clusters/c")).ruleName, "middle");
  EXPECT_EQ(eval(*p, req("GET", "/m/x/y/z/clusters/c/")).ruleName, "middle");
  EXPECT_EQ(eval(*p, req("GET", "/m/x/clusters")).ruleName, "default");
  EXPECT_EQ(eval(*p, req("GET", "/api/atlas/v2")).ruleName, "end");
  EXPECT_EQ(eval(*p, req("GET", "/api/atlas/v2/groups/g/processes")).ruleName, "start");  // first match
  EXPECT_EQ(eval(*p, req("GET", "/api/atlas/v2/groups/g")).ruleName, "end");
}

TEST(Policy, EmptyPathMatchesEverything) {
  auto p = compile({rule("all-deletes", "", Action::Block, {"DELETE"})});
  EXPECT_EQ(verdict(*p, "DELETE", "/"), Verdict::Block);
  EXPECT_EQ(verdict(*p, "DELETE", "/anything/at/all"), Verdict::Block);
  EXPECT_EQ(verdict(*p, "GET", "/anything"), Verdict::Allow);
}

TEST(Policy, PercentEncodedPathsAreDecodedBeforeMatching) {
  auto p = compile({rule("no-cluster-deletion", std::string(kClusterPath), Action::Block, {"DELETE"})});
  EXPECT_EQ(verdict(*p, "DELETE", "/api/atlas/v2/groups/g/%63lusters/Cluster0"), Verdict::Block);
  EXPECT_EQ(verdict(*p, "DELETE", "/%61pi/%61tlas/v2/groups/g/clusters/%43luster0"), Verdict::Block);
  EXPECT_EQ(verdict(*p, "DELETE", "/api/atlas/v2/groups/g/CLUSTERS/Cluster0"), Verdict::Block);  // case
}

TEST(Policy, EncodedSlashCannotDodgeABlock) {
  auto p = compile({rule("no-cluster-deletion", std::string(kClusterPath), Action::Block, {"DELETE"})});
  auto d = eval(*p, req("DELETE", "/api/atlas/v2/groups/g/clusters%2FCluster0"));
  EXPECT_EQ(d.verdict, Verdict::Block);
  EXPECT_TRUE(d.viaAlternatePath);
  EXPECT_EQ(d.path, "/api/atlas/v2/groups/g/clusters/Cluster0");
  EXPECT_EQ(verdict(*p, "DELETE", "/api/atlas/v2/groups%2fg%2Fclusters%2FCluster0"), Verdict::Block);
  EXPECT_EQ(verdict(*p, "DELETE", "/api/atlas/v2/groups/g/clusters/Cluster0;x=1"), Verdict::Block);
}

TEST(Policy, SemicolonParamsCannotDodgeALiteralBlock) {
  auto p = compile({rule("no-prod", "/api/atlas/v2/groups/{g}/clusters/Prod", Action::Block)});
  EXPECT_EQ(verdict(*p, "GET", "/api/atlas/v2/groups/g/clusters/Prod;jsessionid=1"), Verdict::Block);
  EXPECT_EQ(verdict(*p, "GET", "/api/atlas/v2/groups/g/clusters/Staging;x"), Verdict::Allow);
}

// The attack: deny by default, one cluster path allowed; a %2F makes the
// allowed pattern see one segment while a server that decodes it sees a path
// nothing allows. Both readings are decided, the default included.
TEST(Policy, EncodedSlashReadingThatOnlyTheDefaultDecidesIsStillRefused) {
  auto p = compile({rule("read-clusters", "/api/atlas/v2/groups/{g}/clusters/{c}", Action::Allow)}, Action::Block);
  EXPECT_EQ(verdict(*p, "GET", "/api/atlas/v2/groups/X/clusters/C"), Verdict::Allow);
  auto d = eval(*p, req("GET", "/api/atlas/v2/groups/X/clusters/C%2Fbackup%2Fsnapshots"));
  EXPECT_EQ(d.verdict, Verdict::Block);
  EXPECT_EQ(d.ruleName, "default");
  EXPECT_EQ(d.rule, nullptr);
  EXPECT_TRUE(d.viaAlternatePath);
  EXPECT_EQ(d.path, "/api/atlas/v2/groups/X/clusters/C/backup/snapshots");
  EXPECT_EQ(verdict(*p, "DELETE", "/api/atlas/v2/groups/X/clusters/C%2fbackup%2fsnapshots%2F1"), Verdict::Block);

  auto e = p->explain(req("GET", "/api/atlas/v2/groups/X/clusters/C%2Fbackup%2Fsnapshots"));
  EXPECT_EQ(e.ruleName, "default");
  EXPECT_EQ(e.action, Action::Block);
  EXPECT_TRUE(e.viaAlternatePath);
  EXPECT_TRUE(e.checks[0].applies);            // the one-segment reading is allowed by the rule ...
  EXPECT_FALSE(e.alternateChecks[0].applies);  // ... the split one by nothing
}

TEST(Policy, EncodedSlashInAccessListEntry) {
  const std::string path = "/api/atlas/v2/groups/{groupId}/accessList/{entryValue}";
  const std::string target = "/api/atlas/v2/groups/g/accessList/10.0.0.0%2F24";
  {
    // Deny by default, only the one-segment reading allowed: the split
    // reading falls to the default, and the stricter reading wins.
    auto p = compile({rule("may-delete-entries", path, Action::Allow, {"DELETE"})}, Action::Block);
    auto d = eval(*p, req("DELETE", target));
    EXPECT_EQ(d.verdict, Verdict::Block);
    EXPECT_EQ(d.ruleName, "default");
    EXPECT_TRUE(d.viaAlternatePath);
    EXPECT_EQ(verdict(*p, "DELETE", "/api/atlas/v2/groups/g/accessList/10.0.0.1"), Verdict::Allow);
  }
  {
    // Allowing both readings lets it through; the primary reading is reported.
    auto p = compile({rule("may-delete-entries", path, Action::Allow, {"DELETE"}),
                      rule("may-delete-cidr-entries", path + "/{prefixLength}", Action::Allow, {"DELETE"})},
                     Action::Block);
    auto d = eval(*p, req("DELETE", target));
    EXPECT_EQ(d.verdict, Verdict::Allow);
    EXPECT_EQ(d.ruleName, "may-delete-entries");
    EXPECT_FALSE(d.viaAlternatePath);
    EXPECT_EQ(d.path, "/api/atlas/v2/groups/g/accessList/10.0.0.0%2F24");
  }
  {
    auto p = compile({rule("approve-entry-deletion", path, Action::Approve, {"DELETE"})});
    auto d = eval(*p, req("DELETE", target));
    EXPECT_EQ(d.verdict, Verdict::Approve);
    EXPECT_EQ(d.ruleName, "approve-entry-deletion");
    EXPECT_FALSE(d.viaAlternatePath);
  }
  {
    // A stricter rule reached only through the alternate view wins.
    auto p = compile({rule("may-delete-entries", path, Action::Allow, {"DELETE"}),
                      rule("no-deep-deletes", "/api/atlas/v2/groups/{g}/accessList/*/*", Action::Block)},
                     Action::Block);
    auto d = eval(*p, req("DELETE", target));
    EXPECT_EQ(d.verdict, Verdict::Block);
    EXPECT_EQ(d.ruleName, "no-deep-deletes");
  }
  {
    // Deny by default and no rule in either view: the default.
    auto p = compile({}, Action::Block);
    EXPECT_EQ(eval(*p, req("DELETE", target)).verdict, Verdict::Block);
  }
}

// block > approve > rate_limit > log_only > allow; a tie reports the primary
// (one-segment) reading's rule.
TEST(Policy, StricterReadingWinsInTheDocumentedOrder) {
  const std::string one = "/v/{a}";        // the one-segment reading of /v/x%2Fy
  const std::string split = "/v/{a}/{b}";  // its split reading
  const std::string target = "/v/x%2Fy";
  struct Case {
    Action primary, alternate;
    const char* winner;
  };
  for (const Case& c : std::vector<Case>{{Action::Allow, Action::LogOnly, "split"},
                                         {Action::LogOnly, Action::Allow, "one"},
                                         {Action::LogOnly, Action::RateLimit, "split"},
                                         {Action::RateLimit, Action::Approve, "split"},
                                         {Action::Approve, Action::RateLimit, "one"},
                                         {Action::Approve, Action::Block, "split"},
                                         {Action::Block, Action::Approve, "one"},
                                         {Action::Block, Action::Block, "one"},
                                         {Action::Approve, Action::Approve, "one"},
                                         {Action::Allow, Action::Allow, "one"}}) {
    auto make = [](const char* name, const std::string& path, Action a) {
      config::Rule r = a == Action::RateLimit ? rateRule(name, path, 100, 60) : rule(name, path, a);
      return r;
    };
    auto p = compile({make("one", one, c.primary), make("split", split, c.alternate)});
    auto d = eval(*p, req("GET", target));
    std::string label = fmt::format("{} vs {}", config::actionName(c.primary), config::actionName(c.alternate));
    EXPECT_EQ(d.ruleName, c.winner) << label;
    EXPECT_EQ(d.viaAlternatePath, std::string_view(c.winner) == "split") << label;
    EXPECT_EQ(p->explain(req("GET", target)).ruleName, c.winner) << label;
  }
}

// Two rate_limit rules, one per reading: the request counts against both, so
// a %2F cannot move it from a tight budget to a loose one.
TEST(Policy, BothReadingsRateLimitedTakeATokenFromBoth) {
  auto p = compile({rateRule("backups-tight", "/api/atlas/v2/groups/{g}/clusters/{c}/backup/**", 1, 60),
                    rateRule("api-loose", "/api/atlas/v2/**", 100, 60)});
  const std::string_view attack = "/api/atlas/v2/groups/X/clusters/C%2Fbackup%2Fsnapshots";
  auto e = p->explain(req("GET", attack));
  EXPECT_EQ(e.ruleName, "api-loose");
  ASSERT_TRUE(e.alsoCharged.has_value());
  EXPECT_EQ(*e.alsoCharged, 0u);
  EXPECT_NE(e.render().find("also takes a token of rule #1 \"backups-tight\""), std::string::npos) << e.render();

  auto first = eval(*p, req("GET", attack));
  EXPECT_EQ(first.verdict, Verdict::Allow);
  EXPECT_EQ(first.ruleName, "api-loose");  // tie: the primary reading's rule
  EXPECT_EQ(first.alsoChargedRuleIndex, 0u);
  auto second = eval(*p, req("GET", attack));
  EXPECT_EQ(second.verdict, Verdict::RateLimited);  // backups-tight is empty
  EXPECT_EQ(second.retryAfter, 60s);
  // The plain spelling of the same path was charged by the attack.
  EXPECT_EQ(verdict(*p, "GET", "/api/atlas/v2/groups/X/clusters/C/backup/snapshots"), Verdict::RateLimited);
  EXPECT_EQ(eval(*p, req("GET", attack), kT0 + 60s).verdict, Verdict::Allow);
  // Without an encoded slash only one bucket is involved.
  auto plain = eval(*p, req("GET", "/api/atlas/v2/groups/X"));
  EXPECT_EQ(plain.verdict, Verdict::Allow);
  EXPECT_FALSE(plain.alsoChargedRuleIndex.has_value());
}

TEST(Policy, DotSegmentsAreResolved) {
  auto p = compile({rule("no-cluster-deletion", std::string(kClusterPath), Action::Block, {"DELETE"})});
  EXPECT_EQ(verdict(*p, "DELETE", "/api/atlas/v2/groups/x/../x/clusters/C"), Verdict::Block);
  EXPECT_EQ(verdict(*p, "DELETE", "/api/atlas/v2/groups/x/./clusters/./C"), Verdict::Block);
  EXPECT_EQ(verdict(*p, "DELETE", "/api/atlas/v2/groups/x/clusters/C/extra/%2E%2E"), Verdict::Block);
  EXPECT_EQ(verdict(*p, "DELETE", "/api/atlas/v2/groups/x/clusters/C/.."), Verdict::Allow);
}

TEST(Policy, MalformedTargets) {
  auto p = compile({}, Action::Allow);
  for (std::string_view target : {"/..", "/api/../../etc/passwd", "/api/%zz", "/api/%4", "/api/%", "/api/%00",
                                  "/api/groups/g/x%2F..%2F..%2Fother", "/api/..;/admin", "api/x", ""}) {
    auto d = eval(*p, req("GET", target));
    EXPECT_EQ(d.verdict, Verdict::Malformed) << target;
    EXPECT_FALSE(d.malformedReason.empty()) << target;
    EXPECT_EQ(d.rule, nullptr);
  }
}

// ---- methods, hosts, agents ---------------------------------------------------

TEST(Policy, MethodsAreCaseInsensitiveListsAndEmptyMeansAny) {
  auto p =
      compile({rule("writes", "/w/**", Action::Block, {"post", "PUT", "Patch"}), rule("any", "/a", Action::Block)});
  EXPECT_EQ(verdict(*p, "POST", "/w/x"), Verdict::Block);
  EXPECT_EQ(verdict(*p, "post", "/w/x"), Verdict::Block);
  EXPECT_EQ(verdict(*p, "pAtCh", "/w/x"), Verdict::Block);
  EXPECT_EQ(verdict(*p, "GET", "/w/x"), Verdict::Allow);
  EXPECT_EQ(verdict(*p, "DELETE", "/w/x"), Verdict::Allow);
  EXPECT_EQ(verdict(*p, "OPTIONS", "/a"), Verdict::Block);
  EXPECT_EQ(p->rules()[0].methods, (std::vector<std::string>{"POST", "PUT", "PATCH"}));
}

// A server that honours X-HTTP-Method-Override executes DELETE for a POST the
// rules saw as POST: such requests are refused before any rule is looked at.
TEST(Policy, MethodOverrideHeadersAreRefused) {
  auto p = compile({rule("no-cluster-deletion", std::string(kClusterPath), Action::Block, {"DELETE"}),
                    rule("writes-allowed", "/api/**", Action::Allow, {"POST", "GET"})},
                   Action::Block);
  const std::string_view target = "/api/atlas/v2/groups/g/clusters/Cluster0";
  EXPECT_EQ(verdict(*p, "POST", target), Verdict::Allow);  // without an override: the rules decide
  for (std::string_view header : kMethodOverrideHeaders) {
    Request r = req("POST", target);
    r.methodOverride = header;
    auto d = eval(*p, r);
    EXPECT_EQ(d.verdict, Verdict::Malformed) << header;
    EXPECT_EQ(d.rule, nullptr) << header;
    EXPECT_NE(d.malformedReason.find(header), std::string::npos) << d.malformedReason;
    auto e = p->explain(r);
    EXPECT_TRUE(e.malformed) << header;
    EXPECT_EQ(e.malformedReason, d.malformedReason);
    EXPECT_NE(e.render().find("malformed (400)"), std::string::npos) << e.render();
  }
  // Refused whatever the method and the rules: also a GET under default allow.
  auto open = compile({}, Action::Allow);
  Request r = req("GET", "/api/atlas/v2/groups");
  r.methodOverride = kMethodOverrideHeaders[0];
  EXPECT_EQ(eval(*open, r).verdict, Verdict::Malformed);
}

TEST(Policy, HostsAreExactAndCaseInsensitive) {
  config::Rule r = rule("atlas-only", "/**", Action::Block);
  r.hosts = {"cloud.mongodb.com"};
  auto p = compile({r});
  auto host = [&](std::string_view h) { return eval(*p, req("GET", "/x", "a", std::nullopt, h)).verdict; };
  EXPECT_EQ(host("cloud.mongodb.com"), Verdict::Block);
  EXPECT_EQ(host("Cloud.MongoDB.com"), Verdict::Block);
  EXPECT_EQ(host("cloud.mongodb.com:443"), Verdict::Block);
  EXPECT_EQ(host("cloud.mongodb.com."), Verdict::Block);
  EXPECT_EQ(host("cloud-dev.mongodb.com"), Verdict::Allow);
  EXPECT_EQ(host("evil.cloud.mongodb.com"), Verdict::Allow);
  EXPECT_EQ(host(""), Verdict::Allow);
}

TEST(Policy, AgentGlobs) {
  config::Rule ops = rule("ops-may-delete", std::string(kClusterPath), Action::Allow, {"DELETE"});
  ops.agents = {"ops-*", "ns/*"};
  config::Rule block = rule("nobody-else", std::string(kClusterPath), Action::Block, {"DELETE"});
  auto p = compile({ops, block});
  auto as = [&](std::string_view agent) {
    return eval(*p, req("DELETE", "/api/atlas/v2/groups/g/clusters/c", agent)).ruleName;
  };
  EXPECT_EQ(as("ops-bot"), "ops-may-delete");
  EXPECT_EQ(as("ops-"), "ops-may-delete");
  EXPECT_EQ(as("ns/pod-1"), "ops-may-delete");
  EXPECT_EQ(as("ns/sub/pod"), "ops-may-delete");  // '*' crosses '/' (no FNM_PATHNAME)
  EXPECT_EQ(as("dev-bot"), "nobody-else");
  EXPECT_EQ(as("xops-bot"), "nobody-else");
  EXPECT_EQ(as(""), "nobody-else");
  EXPECT_EQ(as(std::string_view("ops-bot\0x", 9)), "nobody-else");
}

// ---- body conditions ----------------------------------------------------------

std::shared_ptr<Policy> sizePolicy(Options opts = {}) {
  config::Rule big = rule("no-big-clusters", "/api/atlas/v2/groups/{g}/clusters", Action::Block, {"POST"});
  big.when = {when("/providerSettings/instanceSizeName", config::CondOp::In, {"\"M40\"", "\"M50\""})};
  return compile({big}, Action::Allow, opts);
}

Decision post(Policy& p, std::optional<std::string_view> body) {
  return p.evaluate(req("POST", "/api/atlas/v2/groups/g/clusters", "a", body), kT0);
}

TEST(Policy, BodyConditionIn) {
  auto p = sizePolicy();
  EXPECT_EQ(post(*p, R"({"providerSettings":{"instanceSizeName":"M40"}})").verdict, Verdict::Block);
  EXPECT_EQ(post(*p, R"({"providerSettings":{"instanceSizeName":"M50"}})").verdict, Verdict::Block);
  EXPECT_EQ(post(*p, R"({"providerSettings":{"instanceSizeName":"M10"}})").verdict, Verdict::Allow);
  EXPECT_EQ(post(*p, R"({"providerSettings":{}})").verdict, Verdict::Allow);  // pointer does not resolve
  EXPECT_EQ(post(*p, R"(["M40"])").verdict, Verdict::Allow);                  // not an object
  EXPECT_EQ(post(*p, R"("M40")").verdict, Verdict::Allow);
  EXPECT_EQ(post(*p, std::nullopt).verdict, Verdict::Allow);
  EXPECT_EQ(post(*p, "").verdict, Verdict::Allow);
}

TEST(Policy, UncheckableBodyIsMalformedByDefault) {
  auto p = sizePolicy();
  auto d = post(*p, R"({"providerSettings":{"instanceSizeName":"M40")");
  EXPECT_EQ(d.verdict, Verdict::Malformed);
  EXPECT_NE(d.malformedReason.find("no-big-clusters"), std::string::npos) << d.malformedReason;

  // Padding the body past the cap must not step around the block.
  std::string padded =
      R"({"pad":")" + std::string(2 << 20, 'x') + R"(","providerSettings":{"instanceSizeName":"M40"}})";
  EXPECT_EQ(post(*p, padded).verdict, Verdict::Malformed);

  // Only candidates whose other filters pass look at the body.
  EXPECT_EQ(p->evaluate(req("GET", "/api/atlas/v2/groups/g/clusters", "a", "{"), kT0).verdict, Verdict::Allow);
  EXPECT_EQ(p->evaluate(req("POST", "/api/atlas/v2/groups/g/other", "a", "{"), kT0).verdict, Verdict::Allow);
}

TEST(Policy, UncheckableBodyMayMeanConditionsFail) {
  Options opts;
  opts.uncheckableBody = UncheckableBody::ConditionsFail;
  opts.maxBodyBytes = 64;
  auto p = sizePolicy(opts);
  EXPECT_EQ(post(*p, R"({"providerSettings":{"instanceSizeName":"M40")").verdict, Verdict::Allow);
  EXPECT_EQ(post(*p, "not json at all").verdict, Verdict::Allow);
  std::string big = R"({"providerSettings":{"instanceSizeName":"M40"},"pad":")" + std::string(100, 'x') + "\"}";
  EXPECT_EQ(post(*p, big).verdict, Verdict::Allow);
  EXPECT_EQ(post(*p, R"({"providerSettings":{"instanceSizeName":"M40"}})").verdict, Verdict::Block);
}

TEST(Policy, BodyConditionsAllMustHold) {
  config::Rule r = rule("big-in-aws", "/c", Action::Block);
  config::Condition size = when("/size", config::CondOp::Matches);
  size.regex = "M[4-9][0-9]";
  r.when = {size, when("/provider", config::CondOp::Equals, {"\"AWS\""}),
            when("/replicationSpecs/0/numShards", config::CondOp::Equals, {"2"}),
            when("/labels/team~1env", config::CondOp::Exists)};
  auto p = compile({r});
  auto v = [&](std::string_view body) { return p->evaluate(req("POST", "/c", "a", body), kT0).verdict; };
  EXPECT_EQ(v(R"({"size":"M40","provider":"AWS","replicationSpecs":[{"numShards":2.0}],"labels":{"team/env":1}})"),
            Verdict::Block);
  EXPECT_EQ(v(R"({"size":"M40","provider":"AWS","replicationSpecs":[{"numShards":"2"}],"labels":{"team/env":1}})"),
            Verdict::Allow);  // typed: "2" is not 2
  EXPECT_EQ(v(R"({"size":"xM40","provider":"AWS","replicationSpecs":[{"numShards":2}],"labels":{"team/env":1}})"),
            Verdict::Allow);  // full match
  EXPECT_EQ(v(R"({"size":"M40","provider":"GCP","replicationSpecs":[{"numShards":2}],"labels":{"team/env":1}})"),
            Verdict::Allow);
  EXPECT_EQ(v(R"({"size":"M40","provider":"AWS","replicationSpecs":[{"numShards":2}],"labels":{"team":1}})"),
            Verdict::Allow);
  EXPECT_EQ(v(R"({"size":"M40","provider":"AWS","replicationSpecs":[],"labels":{"team/env":1}})"), Verdict::Allow);
}

TEST(Policy, NotInAndExistsFalse) {
  config::Rule small = rule("only-small", "/c", Action::Block);
  small.when = {when("/size", config::CondOp::NotIn, {"\"M10\"", "\"M20\""})};
  config::Rule noSize = rule("size-required", "/c", Action::Block);
  config::Condition absent = when("/size", config::CondOp::Exists);
  absent.exists = false;
  noSize.when = {absent};
  auto p = compile({small, noSize});
  auto name = [&](std::optional<std::string_view> body) {
    return p->evaluate(req("POST", "/c", "a", body), kT0).ruleName;
  };
  EXPECT_EQ(name(R"({"size":"M30"})"), "only-small");
  EXPECT_EQ(name(R"({"size":"M10"})"), "default");
  EXPECT_EQ(name(R"({"other":1})"), "size-required");  // not_in does not hold when absent
  EXPECT_EQ(name(std::nullopt), "size-required");
}

// ---- order, default, actions ----------------------------------------------------

TEST(Policy, FirstMatchingRuleDecides) {
  auto p = compile({rule("allow-reads", "/api/**", Action::Allow, {"GET"}), rule("block-api", "/api/**", Action::Block),
                    rule("never", "/api/x", Action::Approve)});
  EXPECT_EQ(eval(*p, req("GET", "/api/x")).ruleName, "allow-reads");
  EXPECT_EQ(eval(*p, req("POST", "/api/x")).ruleName, "block-api");
  EXPECT_EQ(eval(*p, req("POST", "/other")).ruleName, "default");
}

TEST(Policy, Defaults) {
  auto allow = compile({rule("x", "/x", Action::Block)}, Action::Allow);
  auto d = eval(*allow, req("GET", "/y"));
  EXPECT_EQ(d.verdict, Verdict::Allow);
  EXPECT_EQ(d.ruleName, "default");
  EXPECT_EQ(d.rule, nullptr);
  EXPECT_FALSE(d.ruleIndex.has_value());

  auto block = compile({rule("x", "/x", Action::Allow)}, Action::Block);
  EXPECT_EQ(eval(*block, req("GET", "/y")).verdict, Verdict::Block);
  EXPECT_EQ(eval(*block, req("GET", "/y")).action, Action::Block);
  EXPECT_EQ(eval(*block, req("GET", "/x")).verdict, Verdict::Allow);
}

TEST(Policy, LogOnlyAllowsAndCarriesWouldBe) {
  config::Rule r = rule("watch-deletes", "/**", Action::LogOnly, {"DELETE"});
  r.wouldBe = Action::Block;
  r.credential = "readonly";
  auto p = compile({r}, Action::Block);
  auto d = eval(*p, req("DELETE", "/x"));
  EXPECT_EQ(d.verdict, Verdict::Allow);
  EXPECT_EQ(d.action, Action::LogOnly);
  EXPECT_EQ(d.logOnlyWouldBe, Action::Block);
  EXPECT_EQ(d.ruleName, "watch-deletes");
  EXPECT_EQ(d.credential, "readonly");
}

TEST(Policy, ApproveCarriesTimeout) {
  config::Rule r = rule("approve-deletes", std::string(kClusterPath), Action::Approve, {"DELETE"});
  r.timeout = 300s;
  auto p = compile({r, rule("default-timeout", "/x", Action::Approve)});
  auto d = eval(*p, req("DELETE", "/api/atlas/v2/groups/g/clusters/c"));
  EXPECT_EQ(d.verdict, Verdict::Approve);
  EXPECT_EQ(d.approveTimeout, 300s);
  EXPECT_EQ(eval(*p, req("GET", "/x")).approveTimeout, 120s);
}

// ---- rate limiting ------------------------------------------------------------

TEST(Policy, RateLimitThreePerMinute) {
  auto p = compile({rateRule("budget", "/api/**", 3, 60)});
  for (int i = 0; i < 3; ++i) {
    auto d = eval(*p, req("GET", "/api/x"), kT0);
    EXPECT_EQ(d.verdict, Verdict::Allow) << i;
    EXPECT_EQ(d.action, Action::RateLimit);
  }
  auto refused = eval(*p, req("GET", "/api/x"), kT0);
  EXPECT_EQ(refused.verdict, Verdict::RateLimited);
  EXPECT_EQ(refused.retryAfter, 20s);
  EXPECT_EQ(refused.ruleName, "budget");
  EXPECT_EQ(eval(*p, req("GET", "/api/x"), kT0 + 19s).retryAfter, 1s);
  EXPECT_EQ(eval(*p, req("GET", "/api/x"), kT0 + 20s).verdict, Verdict::Allow);
  EXPECT_EQ(eval(*p, req("GET", "/api/x"), kT0 + 20s).verdict, Verdict::RateLimited);
  EXPECT_EQ(eval(*p, req("GET", "/other"), kT0 + 20s).verdict, Verdict::Allow);  // not this rule
}

TEST(Policy, RateLimitBurst) {
  config::Rule r = rateRule("budget", "/api/**", 3, 60);
  r.burst = 6;
  auto p = compile({r});
  for (int i = 0; i < 6; ++i) EXPECT_EQ(eval(*p, req("GET", "/api/x")).verdict, Verdict::Allow) << i;
  EXPECT_EQ(eval(*p, req("GET", "/api/x")).verdict, Verdict::RateLimited);
}

TEST(Policy, RateLimitPerAgentVersusPerRule) {
  auto perAgent = compile({rateRule("budget", "/api/**", 1, 60, config::RatePer::Agent)});
  EXPECT_EQ(eval(*perAgent, req("GET", "/api/x", "a")).verdict, Verdict::Allow);
  EXPECT_EQ(eval(*perAgent, req("GET", "/api/x", "b")).verdict, Verdict::Allow);
  EXPECT_EQ(eval(*perAgent, req("GET", "/api/x", "a")).verdict, Verdict::RateLimited);

  auto perRule = compile({rateRule("budget", "/api/**", 1, 60, config::RatePer::Rule)});
  EXPECT_EQ(eval(*perRule, req("GET", "/api/x", "a")).verdict, Verdict::Allow);
  EXPECT_EQ(eval(*perRule, req("GET", "/api/x", "b")).verdict, Verdict::RateLimited);
}

TEST(Policy, PerAgentBucketsAreCapped) {
  auto p = compile({rateRule("budget", "/api/**", 1, 60)});
  for (int i = 0; i < 10'050; ++i) eval(*p, req("GET", "/api/x", "agent-" + std::to_string(i)));
  EXPECT_EQ(p->bucketAgents(0), 10'000u);

  Options small;
  small.maxAgentsPerRule = 2;
  auto q = compile({rateRule("budget", "/api/**", 1, 3600)}, Action::Allow, small);
  EXPECT_EQ(eval(*q, req("GET", "/api/x", "a")).verdict, Verdict::Allow);
  EXPECT_EQ(eval(*q, req("GET", "/api/x", "b")).verdict, Verdict::Allow);
  EXPECT_EQ(eval(*q, req("GET", "/api/x", "c")).verdict, Verdict::Allow);  // evicts a
  EXPECT_EQ(q->bucketAgents(0), 2u);
  EXPECT_EQ(eval(*q, req("GET", "/api/x", "c")).verdict, Verdict::RateLimited);
  EXPECT_EQ(eval(*q, req("GET", "/api/x", "a")).verdict, Verdict::Allow);  // came back full
}

TEST(Policy, ConcurrentEvaluationTakesExactlyTheBurst) {
  auto p = compile({rateRule("budget", "/api/**", 100, 3600, config::RatePer::Rule)});
  std::atomic<int> allowed{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 500; ++i) {
        if (p->evaluate(req("GET", "/api/x"), kT0).verdict == Verdict::Allow) ++allowed;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(allowed.load(), 100);
}

TEST(Policy, AdoptStateKeepsUnchangedRulesAndResetsChangedOnes) {
  auto old = compile(
      {rateRule("same", "/s/**", 1, 60), rateRule("changed", "/c/**", 1, 60), rateRule("renamed", "/r/**", 1, 60)});
  for (std::string_view t : {"/s/x", "/c/x", "/r/x"}) EXPECT_EQ(eval(*old, req("GET", t)).verdict, Verdict::Allow);
  for (std::string_view t : {"/s/x", "/c/x", "/r/x"})
    EXPECT_EQ(eval(*old, req("GET", t)).verdict, Verdict::RateLimited);

  config::Rule changed = rateRule("changed", "/c/**", 1, 60);
  changed.burst = 2;
  auto next = compile({rule("new-first", "/n", Action::Block), rateRule("same", "/s/**", 1, 60), changed,
                       rateRule("renamed-now", "/r/**", 1, 60)});
  next->adoptStateFrom(*old);
  EXPECT_EQ(eval(*next, req("GET", "/s/x")).verdict, Verdict::RateLimited);  // kept, though it moved
  EXPECT_EQ(eval(*next, req("GET", "/s/x"), kT0 + 60s).verdict, Verdict::Allow);
  EXPECT_EQ(eval(*next, req("GET", "/c/x")).verdict, Verdict::Allow);  // changed: starts full
  EXPECT_EQ(eval(*next, req("GET", "/r/x")).verdict, Verdict::Allow);  // new name: starts full

  // A changed filter (path) also counts as a different rule.
  auto moved = compile({rateRule("same", "/s/y/**", 1, 60)});
  moved->adoptStateFrom(*old);
  EXPECT_EQ(eval(*moved, req("GET", "/s/y/z")).verdict, Verdict::Allow);
}

// ---- explain, table -------------------------------------------------------------

TEST(Policy, ExplainGivesReasonsAndTakesNoTokens) {
  config::Rule hostRule = rule("other-host", "/**", Action::Block);
  hostRule.hosts = {"example.com"};
  config::Rule agentRule = rule("ops-only", "/api/**", Action::Block);
  agentRule.agents = {"ops-*"};
  config::Rule condRule = rule("big", "/api/**", Action::Block);
  condRule.when = {when("/size", config::CondOp::Equals, {"\"M40\""})};
  auto p = compile({rule("deletes", "/**", Action::Block, {"DELETE"}), hostRule,
                    rule("elsewhere", "/other/**", Action::Block), agentRule, condRule,
                    rateRule("budget", "/api/**", 3, 60), rule("unreached", "/**", Action::Block)});

  auto r = req("POST", "/api/x?y=1", "dev-bot", R"({"size":"M10"})");
  for (int i = 0; i < 10; ++i) {
    auto e = p->explain(r, kT0);
    ASSERT_EQ(e.checks.size(), 6u);
    EXPECT_EQ(e.checks[0].reason, "method POST is not one of DELETE");
    EXPECT_EQ(e.checks[1].reason, "host cloud.mongodb.com is not one of example.com");
    EXPECT_EQ(e.checks[2].reason, "path /api/x does not match /other/**");
    EXPECT_EQ(e.checks[3].reason, "agent \"dev-bot\" matches none of ops-*");
    EXPECT_EQ(e.checks[4].reason, "condition 1 (/size equals \"M40\") does not hold");
    EXPECT_TRUE(e.checks[5].applies);
    EXPECT_EQ(e.ruleIndex, 5u);
    EXPECT_EQ(e.ruleName, "budget");
    EXPECT_EQ(e.action, Action::RateLimit);
    ASSERT_TRUE(e.tokensAvailable.has_value());
    EXPECT_DOUBLE_EQ(*e.tokensAvailable, 3.0);
    EXPECT_NE(e.render().find("decision: rate_limit by rule #6 \"budget\""), std::string::npos) << e.render();
  }
  for (int i = 0; i < 3; ++i) EXPECT_EQ(p->evaluate(r, kT0).verdict, Verdict::Allow);
  EXPECT_EQ(p->evaluate(r, kT0).verdict, Verdict::RateLimited);
  EXPECT_DOUBLE_EQ(*p->explain(r, kT0).tokensAvailable, 0.0);
}

TEST(Policy, ExplainMalformedAndAlternateView) {
  auto p = compile({rule("no-cluster-deletion", std::string(kClusterPath), Action::Block, {"DELETE"})});
  auto bad = p->explain(req("DELETE", "/a/../../b"));
  EXPECT_TRUE(bad.malformed);
  EXPECT_NE(bad.render().find("malformed"), std::string::npos);

  auto e = p->explain(req("DELETE", "/api/atlas/v2/groups/g/clusters%2FC"));
  EXPECT_FALSE(e.malformed);
  ASSERT_TRUE(e.alternatePath.has_value());
  EXPECT_EQ(*e.alternatePath, "/api/atlas/v2/groups/g/clusters/C");
  EXPECT_TRUE(e.viaAlternatePath);
  EXPECT_EQ(e.ruleName, "no-cluster-deletion");
  EXPECT_FALSE(e.checks[0].applies);
  EXPECT_TRUE(e.alternateChecks[0].applies);
  EXPECT_NE(e.render().find("through the alternate view"), std::string::npos) << e.render();
}

TEST(Policy, ExplainAgreesWithEvaluate) {
  config::Rule agents = rule("ops", "/api/atlas/v2/groups/{g}/**", Action::Allow);
  agents.agents = {"ops-*"};
  config::Rule cond = rule("big", "/api/atlas/v2/groups/{g}/clusters", Action::Block, {"POST"});
  cond.when = {when("/size", config::CondOp::In, {"\"M40\""})};
  auto p = compile({agents, cond, rule("no-del", std::string(kClusterPath), Action::Block, {"DELETE"}),
                    rule("approve-users", "/api/atlas/v2/groups/*/databaseUsers/**", Action::Approve),
                    rule("log", "/**/processes/**", Action::LogOnly), rule("api", "/api/**", Action::Allow, {"GET"})},
                   Action::Block);
  const std::vector<std::string> targets = {"/api/atlas/v2/groups/g/clusters",
                                            "/api/atlas/v2/groups/g/clusters/c",
                                            "/api/atlas/v2/groups/g/databaseUsers",
                                            "/api/atlas/v2/groups/g/databaseUsers/admin/u",
                                            "/api/atlas/v2/groups/g/processes/h:27017",
                                            "/api/x",
                                            "/other",
                                            "/api/atlas/v2/groups/g/clusters%2Fc",
                                            "/"};
  for (const auto& t : targets) {
    for (std::string_view m : {"GET", "POST", "DELETE"}) {
      for (std::string_view a : {"ops-1", "dev"}) {
        for (std::optional<std::string_view> body :
             {std::optional<std::string_view>(R"({"size":"M40"})"), std::optional<std::string_view>()}) {
          auto r = req(m, t, a, body);
          auto e = p->explain(r, kT0);
          auto d = p->evaluate(r, kT0);
          EXPECT_EQ(e.ruleName, d.ruleName) << m << " " << t << " " << a;
          EXPECT_EQ(e.ruleIndex, d.ruleIndex) << m << " " << t << " " << a;
          EXPECT_EQ(e.viaAlternatePath, d.viaAlternatePath) << m << " " << t;
        }
      }
    }
  }
}

TEST(Policy, TableListsEveryRuleAndTheDefault) {
  config::Rule r = rateRule("atlas-budget", "/api/atlas/v2/**", 60, 60);
  r.loc = {"atlasgate.yaml", 17, 7};
  r.agents = {"ops-*"};
  r.when = {when("/size", config::CondOp::In, {"\"M40\""})};
  config::Rule a = rule("approve", "/x", Action::Approve, {"DELETE"});
  a.hosts = {"cloud.mongodb.com"};
  config::Rule l = rule("watch", "/y", Action::LogOnly);
  l.credential = "ro";
  auto p = compile({r, a, l}, Action::Block);
  std::string t = p->table();
  EXPECT_NE(t.find("atlas-budget"), std::string::npos) << t;
  EXPECT_NE(t.find("rate_limit 60/minute burst 60 per agent"), std::string::npos) << t;
  EXPECT_NE(t.find("atlasgate.yaml:17"), std::string::npos) << t;
  EXPECT_NE(t.find("ops-*"), std::string::npos) << t;
  EXPECT_NE(t.find("/size in [\"M40\"]"), std::string::npos) << t;
  EXPECT_NE(t.find("approve timeout 120s"), std::string::npos) << t;
  EXPECT_NE(t.find("cloud.mongodb.com"), std::string::npos) << t;
  EXPECT_NE(t.find("log_only would_be block credential ro"), std::string::npos) << t;
  EXPECT_NE(t.find("default"), std::string::npos) << t;
  EXPECT_EQ(std::count(t.begin(), t.end(), '\n'), 5);  // header, 3 rules, default
}

// ---- compile ------------------------------------------------------------------

TEST(Policy, CompileErrorsNameTheRuleAndLine) {
  auto fails = [](config::Rule r, std::string_view needle, Action def = Action::Allow) {
    config::Rules rules;
    rules.defaultAction = def;
    r.loc = {"atlasgate.yaml", 12, 5};
    rules.list = {r};
    auto p = Policy::compile(rules);
    ASSERT_FALSE(p.ok()) << needle;
    EXPECT_NE(p.error().message.find(needle), std::string::npos) << p.error().message;
    EXPECT_NE(p.error().message.find("atlasgate.yaml:12:5"), std::string::npos) << p.error().message;
  };
  fails(rule("bad-path", "/api/clu*", Action::Block), "mixes a wildcard");
  fails(rule("bad-path", "api", Action::Block), "must start with '/'");
  config::Rule noRate = rule("no-rate", "/x", Action::RateLimit);
  fails(noRate, "needs a rate");
  config::Rule zeroBurst = rateRule("zero-burst", "/x", 1, 60);
  zeroBurst.burst = 0;
  fails(zeroBurst, "burst");
  config::Rule badRegex = rule("bad-regex", "/x", Action::Block);
  badRegex.when = {when("/a", config::CondOp::Matches)};
  badRegex.when[0].regex = "([";
  fails(badRegex, "rules.list[0].when[0].matches (rule \"bad-regex\")");
  config::Rule badPointer = rule("bad-pointer", "/x", Action::Block);
  badPointer.when = {when("a", config::CondOp::Exists)};
  fails(badPointer, "JSON pointer");
  config::Rule badValue = rule("bad-value", "/x", Action::Block);
  badValue.when = {when("/a", config::CondOp::Equals, {"M40"})};
  fails(badValue, "not JSON");

  config::Rules dup;
  dup.list = {rule("same", "/a", Action::Block), rule("same", "/b", Action::Block)};
  EXPECT_FALSE(Policy::compile(dup).ok());
  config::Rules badDefault;
  badDefault.defaultAction = Action::Approve;
  EXPECT_FALSE(Policy::compile(badDefault).ok());
}

TEST(Policy, OwnsItsRules) {
  std::shared_ptr<Policy> p;
  {
    config::Rules rules;
    rules.list = {rule("no-deletes", "/api/**", Action::Block, {"DELETE"})};
    rules.list[0].when = {when("/a", config::CondOp::Exists)};
    rules.list[0].when[0].exists = false;
    auto compiled = Policy::compile(rules);
    ASSERT_TRUE(compiled.ok());
    p = compiled.value();
  }
  auto d = p->evaluate(req("DELETE", "/api/x"), kT0);
  EXPECT_EQ(d.verdict, Verdict::Block);
  ASSERT_NE(d.rule, nullptr);
  EXPECT_EQ(d.rule->name, "no-deletes");
  EXPECT_EQ(d.rule->path, "/api/**");
}

TEST(Policy, ThousandRules) {
  std::vector<config::Rule> list;
  for (int i = 0; i < 1000; ++i) {
    Action a = i % 3 == 0 ? Action::Block : (i % 3 == 1 ? Action::Approve : Action::Allow);
    list.push_back(rule("r" + std::to_string(i), "/api/atlas/v2/groups/{g}/thing" + std::to_string(i) + "/**", a,
                        {i % 2 ? "GET" : "POST"}));
  }
  list.push_back(rateRule("catch-all", "/api/**", 1000000, 60));
  auto p = compile(std::move(list), Action::Block);
  for (int i = 0; i < 1000; i += 37) {
    std::string target = "/api/atlas/v2/groups/g/thing" + std::to_string(i) + "/x/y";
    auto d = eval(*p, req(i % 2 ? "GET" : "POST", target));
    EXPECT_EQ(d.ruleName, "r" + std::to_string(i));
    EXPECT_EQ(d.ruleIndex, static_cast<std::size_t>(i));
    auto other = eval(*p, req(i % 2 ? "POST" : "GET", target));  // wrong method: falls through
    EXPECT_EQ(other.ruleName, "catch-all");
  }
  EXPECT_EQ(eval(*p, req("GET", "/api/atlas/v2/groups/g/thing1000")).ruleName, "catch-all");
  EXPECT_EQ(eval(*p, req("GET", "/elsewhere")).ruleName, "default");
  for (int n = 0; n < 20000; ++n) eval(*p, req("GET", "/api/atlas/v2/groups/g/thing999/x"));
  EXPECT_EQ(eval(*p, req("GET", "/api/atlas/v2/groups/g/thing999/x")).ruleName, "r999");
}

TEST(Policy, Names) {
  EXPECT_EQ(verdictName(Verdict::RateLimited), "rate_limited");
  EXPECT_EQ(config::actionName(Action::LogOnly), "log_only");
}

// ---- pod labels -------------------------------------------------------------

TEST(Policy, PodLabelSelectorsMatchOnlyPodsWithThoseLabels) {
  config::Rule r = rule("no-writes-for-sandboxes", "/api/atlas/v2/**", Action::Block, {"POST"});
  r.podLabels = "env in (sandbox,dev),team!=ops";
  auto p = compile({r});
  ASSERT_TRUE(p);
  std::map<std::string, std::string> sandbox{{"env", "sandbox"}, {"team", "data"}};
  std::map<std::string, std::string> ops{{"env", "sandbox"}, {"team", "ops"}};
  std::map<std::string, std::string> prod{{"env", "prod"}};
  auto with = [](Request r, const std::map<std::string, std::string>* labels) {
    r.podLabels = labels;
    return r;
  };
  const char* path = "/api/atlas/v2/groups/g/clusters";
  EXPECT_EQ(eval(*p, with(req("POST", path), &sandbox)).verdict, Verdict::Block);
  EXPECT_EQ(eval(*p, with(req("POST", path), &ops)).verdict, Verdict::Allow);
  EXPECT_EQ(eval(*p, with(req("POST", path), &prod)).verdict, Verdict::Allow);
  // An agent that is no pod never matches a pod_labels rule.
  EXPECT_EQ(eval(*p, req("POST", path)).verdict, Verdict::Allow);
  EXPECT_EQ(eval(*p, with(req("GET", path), &sandbox)).verdict, Verdict::Allow);
  auto e = p->explain(with(req("POST", path), &prod));
  ASSERT_FALSE(e.checks.empty());
  EXPECT_NE(e.checks[0].reason.find("pod labels do not match"), std::string::npos) << e.checks[0].reason;
}

TEST(Policy, BadPodLabelSelectorIsACompileError) {
  config::Rule r = rule("bad", "/**", Action::Block);
  r.podLabels = "env in (";
  config::Rules rules;
  rules.list = {r};
  EXPECT_FALSE(Policy::compile(rules).ok());
}

// ---- rules from a file: every check of a rule's meaning is made here ---------

constexpr std::string_view kRulesFile =
    "targets:\n"
    "  - host: cloud.mongodb.com\n"
    "rules:\n"
    "  list:\n"
    "    - name: r\n";

// Loads yaml (kRulesFile, then the rest of the first rule and any more): it
// must load, as its shape is right, and then fail to compile with one line
// that starts "bad.yaml:WHERE: " and contains every one of words.
testing::AssertionResult compileFailsAt(std::string_view rest, std::string_view where,
                                        std::vector<std::string_view> words) {
  auto c = config::parseConfig(std::string(kRulesFile) + std::string(rest), "bad.yaml", false);
  if (!c) return testing::AssertionFailure() << "the loader refused it: " << c.error().message;
  auto p = Policy::compile(c->rules);
  if (p) return testing::AssertionFailure() << "compiled without error";
  const std::string& m = p.error().message;
  const std::string prefix = "bad.yaml:" + std::string(where) + ": ";
  if (m.rfind(prefix, 0) != 0) return testing::AssertionFailure() << "expected prefix \"" << prefix << "\" in: " << m;
  if (m.find('\n') != std::string::npos) return testing::AssertionFailure() << "message is not one line: " << m;
  for (std::string_view w : words) {
    if (m.find(w) == std::string::npos) return testing::AssertionFailure() << "no \"" << w << "\" in: " << m;
  }
  return testing::AssertionSuccess() << m;
}

TEST(PolicyFromFile, BadPathPattern) {
  EXPECT_TRUE(compileFailsAt("      path: api/v2\n      action: block\n", "6:13",
                             {"rules.list[0].path (rule \"r\")", "\"api/v2\" must start with '/'"}));
  EXPECT_TRUE(compileFailsAt("      path: /groups/{groupId\n      action: block\n", "6:13", {"unbalanced braces"}));
  EXPECT_TRUE(compileFailsAt("      path: /groups/x*\n      action: block\n", "6:13", {"mixes a wildcard"}));
  EXPECT_TRUE(compileFailsAt("      path: /a/{id}/b/{id}\n      action: block\n", "6:13", {"{id} appears twice"}));
  EXPECT_TRUE(compileFailsAt("      path: /a?x=1\n      action: block\n", "6:13", {"query"}));
  EXPECT_TRUE(compileFailsAt("      path: /{1a}\n      action: block\n", "6:13", {"\"1a\" is not a parameter name"}));
  EXPECT_TRUE(compileFailsAt("      path: /a/%zz\n      action: block\n", "6:13", {"two hex digits"}));
  EXPECT_TRUE(compileFailsAt("      path: \"/a b\"\n      action: block\n", "6:13", {"spaces or control characters"}));
  EXPECT_TRUE(compileFailsAt("      path: /a/../b\n      action: block\n", "6:13", {"'.' or '..' segments"}));
}

TEST(PolicyFromFile, BadCondition) {
  const std::string when = "      action: block\n      when:\n        - pointer: ";
  EXPECT_TRUE(compileFailsAt(when + "/name\n          matches: \"prod-(\"\n", "9:20",
                             {"rules.list[0].when[0].matches", "\"prod-(\"", "does not compile"}));
  EXPECT_TRUE(compileFailsAt(when + "/name\n          matches: \"\"\n", "9:20", {"needs a regular expression"}));
  EXPECT_TRUE(
      compileFailsAt(when + "name\n          exists: true\n", "8:20",
                     {"rules.list[0].when[0].pointer", "JSON pointer \"name\" must be empty or start with '/'"}));
  EXPECT_TRUE(compileFailsAt(when + "/a~2b\n          exists: true\n", "8:20", {"'~' must be followed by 0 or 1"}));
}

TEST(PolicyFromFile, BadLabelSelector) {
  EXPECT_TRUE(compileFailsAt("      action: block\n      pod_labels: \"env in (\"\n", "7:19",
                             {"rules.list[0].pod_labels", "label selector \"env in (\""}));
  EXPECT_TRUE(compileFailsAt("      action: block\n      container_labels: \" \"\n", "7:25",
                             {"rules.list[0].container_labels", "an empty selector would match every container"}));
}

TEST(PolicyFromFile, DuplicateRuleName) {
  EXPECT_TRUE(compileFailsAt("      action: block\n    - name: r\n      action: allow\n", "7:13",
                             {"rules.list[1].name", "duplicate rule name \"r\"", "first at line 5"}));
  EXPECT_TRUE(compileFailsAt("      action: block\n    - name: rule-2\n      action: block\n    - action: allow\n",
                             "9:7",
                             {"rules.list[2] (rule \"rule-2\")", "first at line 7", "generated", "give it a name"}));
}

TEST(PolicyFromFile, WhatTheActionNeeds) {
  EXPECT_TRUE(compileFailsAt("      action: rate_limit\n      burst: 5\n", "6:15",
                             {"rules.list[0].action", "needs a rate such as 60/minute"}));
  EXPECT_TRUE(compileFailsAt("      action: log_only\n      would_be: rate_limit\n", "7:17",
                             {"rules.list[0].would_be", "needs a rate"}));
}

// A bad rule is reported once, by the policy, naming its index: the loader
// takes it (its shape is right) and the compiler says what is wrong with it.
TEST(PolicyFromFile, ABadRuleIsReportedOnceWithItsIndex) {
  const std::string file = std::string(kRulesFile) +
                           "      action: allow\n"
                           "    - name: second\n"
                           "      path: /groups/{g}/{g}\n"
                           "      action: block\n";
  auto c = config::parseConfig(file, "bad.yaml", false);
  ASSERT_TRUE(c) << c.error().message;
  auto p = Policy::compile(c->rules);
  ASSERT_FALSE(p);
  const std::string& m = p.error().message;
  EXPECT_EQ(m,
            "bad.yaml:8:13: rules.list[1].path (rule \"second\"): path pattern \"/groups/{g}/{g}\": "
            "parameter {g} appears twice");
  auto count = [&](std::string_view w) {
    std::size_t n = 0;
    for (auto at = m.find(w); at != std::string::npos; at = m.find(w, at + 1)) ++n;
    return n;
  };
  EXPECT_EQ(count("rules.list[1]"), 1u);
  EXPECT_EQ(count("appears twice"), 1u);
}

// ---- rules.preset: guardrails, end to end (config -> policy) ------------------

constexpr std::string_view kGuardedFile =
    "targets:\n"
    "  - host: cloud.mongodb.com\n"
    "    credentials:\n"
    "      - name: owner\n"
    "        service_account: {client_id: mdb_sa_id_own, client_secret_env: S}\n"
    "      - name: keys\n"
    "        api_key: {public_key: abcdefgh, private_key_env: K}\n"
    "rules:\n"
    "  preset: guardrails\n"
    "  default: allow\n"
    "  list:\n"
    "    - name: watch-access-list\n"
    "      method: POST\n"
    "      path: /api/atlas/v2/groups/*/accessList\n"
    "      action: log_only\n"
    "    - name: no-cluster-deletion\n"
    "      method: DELETE\n"
    "      path: /api/atlas/v2/groups/*/clusters/*\n"
    "      action: block\n";

std::shared_ptr<Policy> guarded(std::string_view file = kGuardedFile) {
  auto c = config::parseConfig(file, "guard.yaml", false);
  EXPECT_TRUE(c.ok()) << (c.ok() ? "" : c.error().message);
  if (!c.ok()) return nullptr;
  auto p = Policy::compile(c->rules);
  EXPECT_TRUE(p.ok()) << (p.ok() ? "" : p.error().message);
  return p.ok() ? p.value() : nullptr;
}

// verdict and deciding rule
std::pair<Verdict, std::string> decided(Policy& p, std::string_view method, std::string_view target,
                                        std::optional<std::string_view> body = std::nullopt,
                                        std::string_view host = "cloud.mongodb.com") {
  const Decision d = p.evaluate(req(method, target, "agent-1", body, host), kT0);
  return {d.verdict, d.ruleName};
}

using Decided = std::pair<Verdict, std::string>;
const Decided kOpen{Verdict::Approve, "guardrail-open-access-list"};

TEST(PolicyGuardrails, OpenAccessListIsHeld) {
  auto p = guarded();
  ASSERT_NE(p, nullptr);
  const std::string_view v2 = "/api/atlas/v2/groups/5f1/accessList";
  EXPECT_EQ(decided(*p, "POST", v2, R"([{"cidrBlock":"10.0.0.0/24"},{"cidrBlock":"0.0.0.0/0"}])"), kOpen);
  EXPECT_EQ(decided(*p, "POST", v2, R"([{"cidrBlock":"::/0","comment":"x"}])"), kOpen);
  EXPECT_EQ(decided(*p, "POST", v2, R"([{"ipAddress":"1.2.3.4"},{"cidrBlock":"0.0.0.0/00"}])"), kOpen);
  EXPECT_EQ(decided(*p, "POST", v2, R"([{"cidrBlock":"0.0.0.0%2F0"}])"), kOpen);
  EXPECT_EQ(decided(*p, "POST", v2, R"([{"cidrBlock":"0.0.0.0/1"},{"cidrBlock":"128.0.0.0/1"}])"), kOpen);
  EXPECT_EQ(decided(*p, "POST", v2, R"({"cidrBlock":"0.0.0.0/0"})"),
            (Decided{Verdict::Approve, "guardrail-open-access-list-entry"}));
  // The v1.0 API, the same body.
  EXPECT_EQ(decided(*p, "POST", "/api/atlas/v1.0/groups/5f1/accessList", R"([{"cidrBlock":"0.0.0.0/0"}])"), kOpen);
  // Narrow entries fall through to the operator's rules.
  EXPECT_EQ(decided(*p, "POST", v2, R"([{"cidrBlock":"10.0.0.0/24"}])"),
            (Decided{Verdict::Allow, "watch-access-list"}));
  EXPECT_EQ(decided(*p, "POST", v2, R"([{"cidrBlock":"10.0.0.0/8"},{"ipAddress":"0.0.0.0"}])"),
            (Decided{Verdict::Allow, "watch-access-list"}));
  EXPECT_EQ(decided(*p, "POST", v2, "[]"), (Decided{Verdict::Allow, "watch-access-list"}));
  // Reading the list is not held.
  EXPECT_EQ(decided(*p, "GET", v2), (Decided{Verdict::Allow, "default"}));
}

TEST(PolicyGuardrails, AnUnreadableBodyNeverSlipsPast) {
  auto p = guarded();
  ASSERT_NE(p, nullptr);
  const std::string_view v2 = "/api/atlas/v2/groups/5f1/accessList";
  for (std::string_view body : {std::string_view("cidrBlock=0.0.0.0/0"),
                                std::string_view(R"([{"cidrBlock":"0.0.0.0/0"})"), std::string_view("\xff[]")}) {
    const Decision d = p->evaluate(req("POST", v2, "agent-1", body), kT0);
    EXPECT_NE(d.verdict, Verdict::Allow) << body;
    EXPECT_EQ(d.verdict, Verdict::Malformed) << body;
    EXPECT_NE(d.malformedReason.find("guardrail-open-access-list"), std::string::npos) << d.malformedReason;
  }
  // Padded past the policy's body cap.
  const std::string padded =
      R"([{"cidrBlock":"0.0.0.0/0","comment":")" + std::string(p->options().maxBodyBytes, 'x') + R"("}])";
  EXPECT_EQ(p->evaluate(req("POST", v2, "agent-1", padded), kT0).verdict, Verdict::Malformed);
}

TEST(PolicyGuardrails, EncodedPathsAreCaught) {
  auto p = guarded();
  ASSERT_NE(p, nullptr);
  const std::string_view body = R"([{"cidrBlock":"0.0.0.0/0"}])";
  for (std::string_view target :
       {"/api/atlas/v2/groups/x/access%4Cist", "/api/atlas/v2/groups/x/ACCESSLIST",
        "/api/atlas/v2/groups/x/accessList/", "//api/atlas/v2/./groups/x/y/../accessList?pretty=true",
        "/api/atlas/v2/groups/x/%61ccessList", "/api/%61tlas/v1.0/groups/x/accessList",
        "/api/atlas/v2/groups/x%2F..%2Fy/accessList"}) {
    const Decision d = p->evaluate(req("POST", target, "agent-1", body), kT0);
    EXPECT_NE(d.verdict, Verdict::Allow) << target;
    if (d.verdict != Verdict::Malformed) EXPECT_EQ(d.ruleName, "guardrail-open-access-list") << target;
  }
  // %2F inside a segment: the split reading is an access list too.
  EXPECT_EQ(decided(*p, "POST", "/api/atlas/v2/groups/x%2Fy/accessList", body).first, Verdict::Approve);
}

TEST(PolicyGuardrails, InvitationsUsersAndRolesAreHeld) {
  auto p = guarded();
  ASSERT_NE(p, nullptr);
  const std::pair<std::string_view, std::string_view> held[] = {
      {"POST", "/api/atlas/v2/orgs/o1/invites"},
      {"PATCH", "/api/atlas/v2/orgs/o1/invites/i1"},
      {"POST", "/api/atlas/v2/groups/g1/invites"},
      {"PATCH", "/api/atlas/v1.0/groups/g1/invites"},
      {"POST", "/api/atlas/v2/orgs/o1/users"},
      {"POST", "/api/atlas/v2/groups/g1/users"},
      {"PUT", "/api/atlas/v2/groups/g1/users/u1/roles"},
      {"POST", "/api/atlas/v2/orgs/o1/users/u1:addRole"},
      {"PATCH", "/api/atlas/v2/orgs/o1/users/u1"},
      {"POST", "/api/atlas/v2/orgs/o1/teams/t1/users"},
      {"POST", "/api/atlas/v2/orgs/o1/teams/t1:addUser"},
      {"POST", "/api/atlas/v2/groups/g1/teams"},
      {"PATCH", "/api/atlas/v2/groups/g1/teams/t1"},
      {"POST", "/api/atlas/v2/users"},
      {"PATCH", "/api/atlas/v2/orgs/o1/apiKeys/k1"},
      {"POST", "/api/atlas/v2/groups/g1/apiKeys/k1"},
      {"PATCH", "/api/atlas/v2/groups/g1/apiKeys/k1"},
      {"POST", "/api/atlas/v2/orgs/o1/apiKeys/k1/accessList"},
      {"PATCH", "/api/atlas/v2/orgs/o1/serviceAccounts/mdb_sa_id_other"},
      {"POST", "/api/atlas/v2/groups/g1/serviceAccounts/mdb_sa_id_other:invite"},
      {"PATCH", "/api/atlas/v2/groups/g1/serviceAccounts/mdb_sa_id_other"},
      {"POST", "/api/atlas/v2/orgs/o1/serviceAccounts/mdb_sa_id_other/accessList"},
      {"POST", "/api/atlas/v2/groups/g1/serviceAccounts/mdb_sa_id_other/accessList"},
  };
  for (const auto& [method, target] : held) {
    const Decision d = p->evaluate(req(method, target, "agent-1", R"({"roles":["ORG_OWNER"]})"), kT0);
    EXPECT_EQ(d.verdict, Verdict::Approve) << method << " " << target;
    EXPECT_EQ(d.ruleName.rfind("guardrail-", 0), 0u) << method << " " << target << ": " << d.ruleName;
    EXPECT_EQ(d.approveTimeout, 120s) << target;
  }
  EXPECT_EQ(decided(*p, "POST", "/api/atlas/v2/orgs/o1/invites").second, "guardrail-org-invitations");
  // Reading them, and what does not widen access, is not held.
  const std::pair<std::string_view, std::string_view> free[] = {
      {"GET", "/api/atlas/v2/orgs/o1/invites"},          {"GET", "/api/atlas/v2/groups/g1/invites/i1"},
      {"DELETE", "/api/atlas/v2/groups/g1/invites/i1"},  {"GET", "/api/atlas/v2/groups/g1/users"},
      {"DELETE", "/api/atlas/v2/groups/g1/users/u1"},    {"POST", "/api/atlas/v2/orgs/o1/teams"},
      {"GET", "/api/atlas/v2/orgs/o1/apiKeys/k1"},       {"POST", "/api/atlas/v2/groups/g1/clusters"},
      {"POST", "/api/atlas/v2/groups/g1/databaseUsers"},
  };
  for (const auto& [method, target] : free) {
    EXPECT_EQ(decided(*p, method, target, R"({})"), (Decided{Verdict::Allow, "default"})) << method << " " << target;
  }
}

TEST(PolicyGuardrails, AtlasgatesOwnCredential) {
  auto p = guarded();
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(decided(*p, "DELETE", "/api/atlas/v2/orgs/o1/serviceAccounts/mdb_sa_id_own"),
            (Decided{Verdict::Approve, "guardrail-own-credential"}));
  EXPECT_EQ(decided(*p, "DELETE", "/api/atlas/v2/orgs/o1/serviceAccounts/MDB_SA_ID_OWN").first, Verdict::Approve);
  EXPECT_EQ(decided(*p, "DELETE", "/api/atlas/v2/orgs/o1/serviceAccounts/mdb%5Fsa%5Fid%5Fown").first, Verdict::Approve);
  EXPECT_EQ(decided(*p, "DELETE", "/api/atlas/v2/groups/g1/serviceAccounts/mdb_sa_id_own"),
            (Decided{Verdict::Approve, "guardrail-own-credential-project"}));
  EXPECT_EQ(decided(*p, "POST", "/api/atlas/v2/orgs/o1/serviceAccounts/mdb_sa_id_own/secrets"),
            (Decided{Verdict::Approve, "guardrail-own-credential-secrets"}));
  EXPECT_EQ(decided(*p, "DELETE", "/api/atlas/v2/orgs/o1/serviceAccounts/mdb_sa_id_own/secrets/s1"),
            (Decided{Verdict::Approve, "guardrail-own-credential-secrets"}));
  EXPECT_EQ(decided(*p, "POST", "/api/atlas/v2/groups/g1/serviceAccounts/mdb_sa_id_own/secrets"),
            (Decided{Verdict::Approve, "guardrail-own-credential-project-secrets"}));
  // Reading its secrets' list, and deleting another service account, are not held.
  EXPECT_EQ(decided(*p, "GET", "/api/atlas/v2/orgs/o1/serviceAccounts/mdb_sa_id_own/secrets"),
            (Decided{Verdict::Allow, "default"}));
  EXPECT_EQ(decided(*p, "DELETE", "/api/atlas/v2/orgs/o1/serviceAccounts/mdb_sa_id_other"),
            (Decided{Verdict::Allow, "default"}));
  EXPECT_EQ(decided(*p, "POST", "/api/atlas/v2/orgs/o1/serviceAccounts/mdb_sa_id_other/secrets"),
            (Decided{Verdict::Allow, "default"}));
  // An api_key credential: its id is unknown, so every key deletion is held.
  EXPECT_EQ(decided(*p, "DELETE", "/api/atlas/v2/orgs/o1/apiKeys/anything"),
            (Decided{Verdict::Approve, "guardrail-any-api-key-deletion"}));
  // The rules are on the targets' hosts.
  EXPECT_EQ(decided(*p, "DELETE", "/api/atlas/v2/orgs/o1/serviceAccounts/mdb_sa_id_own", std::nullopt, "other.host"),
            (Decided{Verdict::Allow, "default"}));
  // Without an api_key credential there is no such rule.
  std::string noKey(kGuardedFile);
  noKey.erase(noKey.find("      - name: keys\n"), std::string_view("      - name: keys\n        api_key: {public_key: "
                                                                   "abcdefgh, private_key_env: K}\n")
                                                      .size());
  auto q = guarded(noKey);
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(decided(*q, "DELETE", "/api/atlas/v2/orgs/o1/apiKeys/anything"), (Decided{Verdict::Allow, "default"}));
  EXPECT_EQ(q->rules().size(), p->rules().size() - 1);
}

TEST(PolicyGuardrails, LookLikeAnyOtherRule) {
  auto p = guarded();
  ASSERT_NE(p, nullptr);
  // Table: the guardrails first, their source the preset; then the operator's.
  const std::string t = p->table();
  std::istringstream lines(t);
  std::vector<std::string> rows;
  for (std::string line; std::getline(lines, line);) rows.push_back(line);
  ASSERT_EQ(rows.size(), p->rules().size() + 2) << t;
  EXPECT_NE(rows[1].find("guardrail-open-access-list "), std::string::npos) << t;
  EXPECT_NE(rows[1].find("/*/cidrBlock matches"), std::string::npos) << t;
  EXPECT_NE(rows[1].find("approve timeout 120s"), std::string::npos) << t;
  EXPECT_NE(rows[1].find("cloud.mongodb.com"), std::string::npos) << t;
  EXPECT_EQ(rows[1].substr(rows[1].size() - std::string_view("preset:guardrails").size()), "preset:guardrails") << t;
  const std::size_t own = p->rules().size() - 2;
  EXPECT_NE(rows[own].find("preset:guardrails"), std::string::npos) << t;
  EXPECT_NE(rows[own + 1].find("watch-access-list"), std::string::npos) << t;
  EXPECT_NE(rows[own + 1].find("guard.yaml:12"), std::string::npos) << t;
  // explain names them.
  const std::string e =
      p->explain(req("POST", "/api/atlas/v2/groups/g/accessList", "a", R"([{"cidrBlock":"::/0"}])")).render();
  EXPECT_NE(e.find("decision: approve by rule #1 \"guardrail-open-access-list\""), std::string::npos) << e;
  const std::string f =
      p->explain(req("POST", "/api/atlas/v2/groups/g/accessList", "a", R"([{"cidrBlock":"10.1.0.0/16"}])")).render();
  EXPECT_NE(f.find("#1 guardrail-open-access-list: condition 1 (/*/cidrBlock matches"), std::string::npos) << f;
  EXPECT_NE(f.find("watch-access-list\""), std::string::npos) << f;
}

TEST(PolicyGuardrails, ErrorsNameThePreset) {
  config::Rules rules;
  config::Rule g = rule("guardrail-x", "/a/{x}b", Action::Approve);
  g.loc = {"preset:guardrails", 0, 0};
  rules.list = {g, rule("mine", "/a", Action::Allow), rule("broken", "/a/{x}b", Action::Block)};
  rules.presetRules = 1;
  auto p = Policy::compile(rules);
  ASSERT_FALSE(p);
  EXPECT_EQ(p.error().message.rfind("preset:guardrails: rules.preset.path (rule \"guardrail-x\"): ", 0), 0u)
      << p.error().message;
  rules.list[0].path = "/a";
  p = Policy::compile(rules);
  ASSERT_FALSE(p);
  // The operator's rules keep their own index.
  EXPECT_EQ(p.error().message.rfind("rules.list[1].path (rule \"broken\"): ", 0), 0u) << p.error().message;
  rules.list[2] = rule("guardrail-x", "/b", Action::Block);
  p = Policy::compile(rules);
  ASSERT_FALSE(p);
  EXPECT_NE(p.error().message.find("rules.list[1].name (rule \"guardrail-x\"): duplicate rule name \"guardrail-x\" "
                                   "(first at rules.preset)"),
            std::string::npos)
      << p.error().message;
}

TEST(PolicyFromFile, RulesMadeInCodeNameTheirIndex) {
  config::Rules rules;
  rules.list = {rule("fine", "/a", Action::Allow), rule("broken", "/a/{x}b", Action::Block)};
  auto p = Policy::compile(rules);
  ASSERT_FALSE(p);
  EXPECT_EQ(p.error().message.rfind("rules.list[1].path (rule \"broken\"): ", 0), 0u) << p.error().message;
}

}  // namespace
}  // namespace atlasgate::policy
