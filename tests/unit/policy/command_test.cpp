// Policy::evaluateCommand(): MongoDB commands decided by protocol: mongodb
// rules, and those rules kept out of the HTTP side (evaluate, explain).

#include <algorithm>
#include <map>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "config/config.h"
#include "policy/policy.h"

namespace atlasgate::policy {
namespace {

using namespace std::chrono_literals;
using config::Action;

const Policy::Clock::time_point kT0 = Policy::Clock::time_point(1000h);
constexpr std::string_view kMongoHost = "*.mongodb.net";

config::Rule mongoRule(std::string name, Action action, std::vector<std::string> commands = {},
                       std::vector<std::string> databases = {}, std::vector<std::string> collections = {}) {
  config::Rule r;
  r.name = std::move(name);
  r.protocol = config::Protocol::Mongodb;
  r.action = action;
  r.commands = std::move(commands);
  r.databases = std::move(databases);
  r.collections = std::move(collections);
  return r;
}

config::Rule rateLimited(config::Rule r, std::uint64_t count, std::uint64_t period,
                         config::RatePer per = config::RatePer::Agent) {
  r.action = Action::RateLimit;
  r.rate = config::Rate{count, period};
  r.per = per;
  return r;
}

config::Rule httpsRule(std::string name, std::string path, Action action) {
  config::Rule r;
  r.name = std::move(name);
  r.path = std::move(path);
  r.action = action;
  return r;
}

std::shared_ptr<Policy> compile(std::vector<config::Rule> list, Action def = Action::Allow) {
  config::Rules rules;
  rules.defaultAction = def;
  rules.list = std::move(list);
  auto p = Policy::compile(rules);
  EXPECT_TRUE(p.ok()) << (p.ok() ? "" : p.error().message);
  return p.ok() ? p.value() : nullptr;
}

CommandRequest command(std::vector<CommandAccess> accesses, std::string_view agent = "agent-1",
                       std::string_view host = kMongoHost) {
  CommandRequest r;
  r.host = host;
  r.agent = agent;
  r.accesses = std::move(accesses);
  return r;
}

// One access.
Decision run(Policy& p, std::string_view cmd, std::string_view db, std::string_view coll,
             std::string_view agent = "agent-1", std::string_view host = kMongoHost) {
  return p.evaluateCommand(command({{cmd, db, coll}}, agent, host), kT0);
}

std::string ruleOf(Policy& p, std::string_view cmd, std::string_view db, std::string_view coll) {
  return run(p, cmd, db, coll).ruleName;
}

// ---- which rule decides one access -------------------------------------------

TEST(PolicyCommand, FirstApplyingRuleDecidesElseTheDefault) {
  auto p = compile({mongoRule("no-drops", Action::Block, {"drop", "dropDatabase"}),
                    mongoRule("app-reads", Action::Allow, {"find", "aggregate"}, {"app"}),
                    mongoRule("anything-in-app", Action::Approve, {}, {"app"})},
                   Action::Block);
  ASSERT_TRUE(p);
  Decision d = run(*p, "find", "app", "users");
  EXPECT_EQ(d.verdict, Verdict::Allow);
  EXPECT_EQ(d.ruleName, "app-reads");
  EXPECT_EQ(d.ruleIndex, 1u);
  ASSERT_NE(d.rule, nullptr);
  EXPECT_EQ(d.rule->name, "app-reads");
  EXPECT_EQ(d.action, Action::Allow);
  EXPECT_EQ(d.path, "app.users");
  EXPECT_TRUE(d.credential.empty());

  d = run(*p, "drop", "app", "users");  // the first rule, though later ones apply too
  EXPECT_EQ(d.verdict, Verdict::Block);
  EXPECT_EQ(d.ruleName, "no-drops");

  d = run(*p, "insert", "app", "users");
  EXPECT_EQ(d.verdict, Verdict::Approve);
  EXPECT_EQ(d.ruleName, "anything-in-app");
  EXPECT_EQ(d.approveTimeout, 120s);

  d = run(*p, "find", "other", "users");
  EXPECT_EQ(d.verdict, Verdict::Block);
  EXPECT_EQ(d.ruleName, "default");
  EXPECT_EQ(d.rule, nullptr);
  EXPECT_FALSE(d.ruleIndex.has_value());
  EXPECT_EQ(d.action, Action::Block);
  EXPECT_EQ(d.path, "other.users");

  auto open = compile({mongoRule("no-drops", Action::Block, {"drop"})});
  d = run(*open, "find", "x", "y");
  EXPECT_EQ(d.verdict, Verdict::Allow);
  EXPECT_EQ(d.ruleName, "default");
  EXPECT_EQ(d.action, Action::Allow);
}

TEST(PolicyCommand, CommandGlobsIgnoreCase) {
  auto p =
      compile({mongoRule("drops", Action::Block, {"drop*"}), mongoRule("exact", Action::Approve, {"findAndModify"})});
  ASSERT_TRUE(p);
  for (std::string_view c : {"drop", "dropDatabase", "DROP", "DropIndexes", "dropsearchindex"})
    EXPECT_EQ(ruleOf(*p, c, "app", "c"), "drops") << c;
  for (std::string_view c : {"findAndModify", "findandmodify", "FINDANDMODIFY"})
    EXPECT_EQ(ruleOf(*p, c, "app", "c"), "exact") << c;
  for (std::string_view c : {"find", "xdrop", "findAndModify2", ""})
    EXPECT_EQ(ruleOf(*p, c, "app", "c"), "default") << c;
}

TEST(PolicyCommand, DatabaseGlobsIgnoreCase) {
  auto p = compile({mongoRule("prod", Action::Block, {}, {"prod_*", "Admin"})});
  ASSERT_TRUE(p);
  for (std::string_view db : {"prod_eu", "PROD_us", "Prod_", "admin", "ADMIN", "Admin"})
    EXPECT_EQ(ruleOf(*p, "find", db, "c"), "prod") << db;
  for (std::string_view db : {"prod", "production", "myprod_eu", "admin2", ""})
    EXPECT_EQ(ruleOf(*p, "find", db, "c"), "default") << db;
}

TEST(PolicyCommand, CollectionGlobsAreCaseSensitive) {
  auto p = compile({mongoRule("users", Action::Block, {}, {}, {"Users", "audit.*"})});
  ASSERT_TRUE(p);
  for (std::string_view c : {"Users", "audit.2024", "audit."}) EXPECT_EQ(ruleOf(*p, "find", "app", c), "users") << c;
  for (std::string_view c : {"users", "USERS", "Audit.2024", "audit", "Users2"})
    EXPECT_EQ(ruleOf(*p, "find", "app", c), "default") << c;
}

// A database-level access (collection "") is matched by a rule without a
// collection filter, or one whose filter lists "*" itself - not by any other glob.
TEST(PolicyCommand, DatabaseLevelAccessAndCollectionFilters) {
  auto p = compile({mongoRule("named", Action::Block, {"named"}, {}, {"users"}),
                    mongoRule("glob", Action::Block, {"glob"}, {}, {"?*", "**", "[a-z]*"}),
                    mongoRule("star", Action::Block, {"star"}, {}, {"users", "*"}),
                    mongoRule("none", Action::Block, {"none"})});
  ASSERT_TRUE(p);
  // A database-level access may reach any collection: a restrictive rule
  // naming collections applies to it (fail closed)...
  EXPECT_EQ(ruleOf(*p, "named", "app", ""), "named");
  EXPECT_EQ(ruleOf(*p, "named", "app", "users"), "named");
  EXPECT_EQ(ruleOf(*p, "glob", "app", ""), "glob");
  EXPECT_EQ(ruleOf(*p, "glob", "app", "users"), "glob");
  EXPECT_EQ(ruleOf(*p, "star", "app", ""), "star");
  EXPECT_EQ(ruleOf(*p, "star", "app", "anything"), "star");
  EXPECT_EQ(ruleOf(*p, "none", "app", ""), "none");
  EXPECT_EQ(ruleOf(*p, "none", "app", "anything"), "none");
  // Decision::path of a database-level access is the database alone.
  EXPECT_EQ(run(*p, "star", "app", "").path, "app");
  EXPECT_EQ(run(*p, "star", "app", "users").path, "app.users");
  // ...and an allow rule naming collections does not allow it.
  auto allow = compile({mongoRule("named", Action::Allow, {"named"}, {}, {"users"}),
                        mongoRule("star", Action::Allow, {"star"}, {}, {"*"})},
                       Action::Block);
  ASSERT_TRUE(allow);
  EXPECT_EQ(ruleOf(*allow, "named", "app", ""), "default");
  EXPECT_EQ(ruleOf(*allow, "named", "app", "users"), "named");
  EXPECT_EQ(ruleOf(*allow, "star", "app", ""), "star");
}

TEST(PolicyCommand, HostIsTheTargetAsConfigured) {
  config::Rule r = mongoRule("atlas", Action::Block);
  r.hosts = {"*.mongodb.net"};
  config::Rule other = mongoRule("local", Action::Approve);
  other.hosts = {"db.internal.example"};
  auto p = compile({r, other});
  ASSERT_TRUE(p);
  auto host = [&](std::string_view h) { return run(*p, "find", "app", "c", "agent-1", h).ruleName; };
  EXPECT_EQ(host("*.mongodb.net"), "atlas");
  EXPECT_EQ(host("*.MongoDB.NET"), "atlas");
  EXPECT_EQ(host("*.mongodb.net."), "atlas");
  EXPECT_EQ(host("cluster0.ab1cd.mongodb.net"), "default");  // a name is not its pattern
  EXPECT_EQ(host("*.example.net"), "default");
  EXPECT_EQ(host("db.internal.example"), "local");
  EXPECT_EQ(host("DB.Internal.Example"), "local");
  auto any = compile({mongoRule("any", Action::Block)});
  EXPECT_EQ(run(*any, "find", "app", "c", "agent-1", "whatever.example").ruleName, "any");
}

TEST(PolicyCommand, AgentGlobsAndLabels) {
  config::Rule ops = mongoRule("ops", Action::Allow);
  ops.agents = {"ops-*", "pod/ns/*"};
  config::Rule sandbox = mongoRule("sandbox", Action::Block);
  sandbox.podLabels = "env=sandbox";
  config::Rule box = mongoRule("box", Action::Approve);
  box.containerLabels = "role=agent";
  auto p = compile({ops, sandbox, box}, Action::Block);
  ASSERT_TRUE(p);
  EXPECT_EQ(run(*p, "find", "a", "c", "ops-1").ruleName, "ops");
  EXPECT_EQ(run(*p, "find", "a", "c", "pod/ns/x").ruleName, "ops");
  EXPECT_EQ(run(*p, "find", "a", "c", "dev").ruleName, "default");
  EXPECT_EQ(run(*p, "find", "a", "c", "").ruleName, "default");

  std::map<std::string, std::string> sandboxPod{{"env", "sandbox"}}, prodPod{{"env", "prod"}};
  std::map<std::string, std::string> agentBox{{"role", "agent"}};
  auto with = [&](const std::map<std::string, std::string>* pod, const std::map<std::string, std::string>* ctr) {
    CommandRequest r = command({{"find", "a", "c"}}, "dev");
    r.podLabels = pod;
    r.containerLabels = ctr;
    return p->evaluateCommand(r, kT0).ruleName;
  };
  EXPECT_EQ(with(&sandboxPod, nullptr), "sandbox");
  EXPECT_EQ(with(&prodPod, nullptr), "default");
  EXPECT_EQ(with(nullptr, &agentBox), "box");
  EXPECT_EQ(with(&prodPod, &agentBox), "box");
  EXPECT_EQ(with(nullptr, nullptr), "default");
}

// ---- several accesses: the strictest wins ------------------------------------

// block > approve > rate_limit > log_only > allow; a tie keeps the earlier access.
TEST(PolicyCommand, StrictestAccessWinsInTheDocumentedOrder) {
  const std::vector<Action> order = {Action::Allow, Action::LogOnly, Action::RateLimit, Action::Approve, Action::Block};
  for (std::size_t a = 0; a < order.size(); ++a) {
    for (std::size_t b = 0; b < order.size(); ++b) {
      config::Rule first = mongoRule("first", order[a], {}, {}, {"one"});
      config::Rule second = mongoRule("second", order[b], {}, {}, {"two"});
      if (order[a] == Action::RateLimit) first = rateLimited(first, 5, 60);
      if (order[b] == Action::RateLimit) second = rateLimited(second, 5, 60);
      auto p = compile({first, second});
      ASSERT_TRUE(p);
      for (bool swapped : {false, true}) {
        std::vector<CommandAccess> accesses = {{"find", "db", "one"}, {"insert", "db", "two"}};
        if (swapped) std::swap(accesses[0], accesses[1]);
        const Decision d = p->evaluateCommand(command(accesses), kT0);
        const bool secondWins = b > a || (b == a && swapped);
        const std::string what = fmt::format("{} then {}{}", config::actionName(order[a]), config::actionName(order[b]),
                                             swapped ? " (swapped)" : "");
        EXPECT_EQ(d.ruleName, secondWins ? "second" : "first") << what;
        EXPECT_EQ(d.path, secondWins ? "db.two" : "db.one") << what;
        EXPECT_EQ(d.action, order[std::max(a, b)]) << what;
      }
    }
  }
}

TEST(PolicyCommand, TheDefaultCountsLikeARule) {
  // $lookup into another collection: the read of the hidden one decides.
  auto p = compile({mongoRule("reads", Action::Allow, {"find", "aggregate"}, {"app"}, {"orders"}),
                    mongoRule("careful", Action::Approve, {}, {"app"}, {"payments"})},
                   Action::Block);
  ASSERT_TRUE(p);
  Decision d = p->evaluateCommand(command({{"aggregate", "app", "orders"}, {"aggregate", "app", "secrets"}}), kT0);
  EXPECT_EQ(d.verdict, Verdict::Block);
  EXPECT_EQ(d.ruleName, "default");
  EXPECT_EQ(d.path, "app.secrets");
  d = p->evaluateCommand(command({{"aggregate", "app", "orders"}, {"aggregate", "app", "payments"}}), kT0);
  EXPECT_EQ(d.verdict, Verdict::Approve);
  EXPECT_EQ(d.ruleName, "careful");
  EXPECT_EQ(d.path, "app.payments");
  d = p->evaluateCommand(command({{"aggregate", "app", "orders"}, {"find", "app", "orders"}}), kT0);
  EXPECT_EQ(d.verdict, Verdict::Allow);
  EXPECT_EQ(d.ruleName, "reads");
  // With default allow, one blocked access is enough.
  auto open = compile({mongoRule("no-audit", Action::Block, {}, {}, {"audit"})});
  d = open->evaluateCommand(command({{"find", "app", "a"}, {"find", "app", "audit"}, {"find", "app", "b"}}), kT0);
  EXPECT_EQ(d.verdict, Verdict::Block);
  EXPECT_EQ(d.path, "app.audit");
}

TEST(PolicyCommand, NoAccessesIsTheDefault) {
  for (Action def : {Action::Allow, Action::Block}) {
    auto p = compile({mongoRule("all", Action::Approve)}, def);
    const Decision d = p->evaluateCommand(command({}), kT0);
    EXPECT_EQ(d.ruleName, "default");
    EXPECT_EQ(d.action, def);
    EXPECT_EQ(d.verdict, def == Action::Block ? Verdict::Block : Verdict::Allow);
    EXPECT_EQ(d.path, "");
  }
}

TEST(PolicyCommand, LogOnlyAllowsAndCarriesWouldBe) {
  config::Rule watch = mongoRule("watch", Action::LogOnly, {"delete"});
  watch.wouldBe = Action::Approve;
  auto p = compile({watch, mongoRule("ok", Action::Allow)});
  const Decision d = p->evaluateCommand(command({{"find", "a", "x"}, {"delete", "a", "y"}}), kT0);
  EXPECT_EQ(d.verdict, Verdict::Allow);
  EXPECT_EQ(d.ruleName, "watch");
  EXPECT_EQ(d.action, Action::LogOnly);
  EXPECT_EQ(d.logOnlyWouldBe, Action::Approve);
  EXPECT_EQ(d.path, "a.y");
}

// ---- rate_limit: one token per command ---------------------------------------

TEST(PolicyCommand, RateLimitTakesOneTokenPerCommand) {
  auto p = compile({rateLimited(mongoRule("budget", Action::Allow, {"find", "getMore"}), 2, 60)});
  ASSERT_TRUE(p);
  // Three accesses decided by the one rule: still one token.
  const CommandRequest three = command({{"find", "a", "x"}, {"find", "a", "y"}, {"getMore", "a", "z"}});
  EXPECT_EQ(p->evaluateCommand(three, kT0).verdict, Verdict::Allow);
  EXPECT_EQ(p->evaluateCommand(three, kT0).verdict, Verdict::Allow);
  const Decision refused = p->evaluateCommand(three, kT0);
  EXPECT_EQ(refused.verdict, Verdict::RateLimited);
  EXPECT_EQ(refused.ruleName, "budget");
  EXPECT_EQ(refused.action, Action::RateLimit);
  EXPECT_GT(refused.retryAfter, 0s);
  EXPECT_LE(refused.retryAfter, 30s);
  // Per agent: another agent has its own bucket; time refills.
  EXPECT_EQ(p->evaluateCommand(command({{"find", "a", "x"}}, "agent-2"), kT0).verdict, Verdict::Allow);
  EXPECT_EQ(p->bucketAgents(0), 2u);
  EXPECT_EQ(p->evaluateCommand(three, kT0 + 30s).verdict, Verdict::Allow);
  // A command the rule does not decide takes nothing.
  EXPECT_EQ(p->evaluateCommand(command({{"insert", "a", "x"}}), kT0 + 30s).ruleName, "default");
  EXPECT_EQ(p->evaluateCommand(three, kT0 + 30s).verdict, Verdict::RateLimited);
}

TEST(PolicyCommand, RateLimitPerRuleIsShared) {
  auto p = compile({rateLimited(mongoRule("shared", Action::Allow), 1, 3600, config::RatePer::Rule)});
  ASSERT_TRUE(p);
  EXPECT_EQ(p->evaluateCommand(command({{"find", "a", "x"}}, "one"), kT0).verdict, Verdict::Allow);
  EXPECT_EQ(p->evaluateCommand(command({{"find", "a", "x"}}, "two"), kT0).verdict, Verdict::RateLimited);
}

// ---- mongodb rules stay out of the HTTP side, and https rules out of this -----

Request http(std::string_view method, std::string_view target) {
  return Request{method, target, "cloud.mongodb.com", "agent-1", std::nullopt};
}

TEST(PolicyCommand, AMongodbRuleNeverDecidesARequest) {
  // No filter at all: it would match anything, were it offered.
  auto p = compile({mongoRule("mongo-block-all", Action::Block), httpsRule("api", "/api/**", Action::Approve)});
  ASSERT_TRUE(p);
  Decision d = p->evaluate(http("DELETE", "/api/atlas/v2/groups/g"), kT0);
  EXPECT_EQ(d.verdict, Verdict::Approve);
  EXPECT_EQ(d.ruleName, "api");
  EXPECT_EQ(d.ruleIndex, 1u);
  d = p->evaluate(http("GET", "/other"), kT0);
  EXPECT_EQ(d.verdict, Verdict::Allow);
  EXPECT_EQ(d.ruleName, "default");

  const Explanation e = p->explain(http("GET", "/other"), kT0);
  ASSERT_EQ(e.checks.size(), 2u);
  EXPECT_FALSE(e.checks[0].applies);
  EXPECT_EQ(e.checks[0].name, "mongo-block-all");
  EXPECT_EQ(e.checks[0].reason, "a protocol: mongodb rule (it decides commands, not requests)");
  EXPECT_EQ(e.ruleName, "default");
  const Explanation api = p->explain(http("GET", "/api/x"), kT0);
  EXPECT_EQ(api.ruleName, "api");
  EXPECT_NE(api.render().find("#1 mongo-block-all: a protocol: mongodb rule"), std::string::npos) << api.render();

  // The same rule as https blocks everything.
  config::Rule https = mongoRule("mongo-block-all", Action::Block);
  https.protocol = config::Protocol::Https;
  https.commands.clear();
  auto h = compile({https});
  EXPECT_EQ(h->evaluate(http("GET", "/other"), kT0).verdict, Verdict::Block);
}

TEST(PolicyCommand, HttpsRulesNeverDecideACommand) {
  auto p = compile({httpsRule("block-all", "", Action::Block), httpsRule("anything", "/**", Action::Approve),
                    mongoRule("writes", Action::Approve, {"insert"})});
  ASSERT_TRUE(p);
  Decision d = run(*p, "find", "app", "c");
  EXPECT_EQ(d.verdict, Verdict::Allow);
  EXPECT_EQ(d.ruleName, "default");
  d = run(*p, "insert", "app", "c");
  EXPECT_EQ(d.ruleName, "writes");
  EXPECT_EQ(d.ruleIndex, 2u);
}

// ---- table, reload, compile --------------------------------------------------

TEST(PolicyCommand, TableShowsMongodbFilters) {
  config::Rule r = mongoRule("reads", Action::Approve, {"find", "aggregate"}, {"app"}, {"users", "orders"});
  r.hosts = {"*.mongodb.net"};
  r.loc = {"atlasgate.yaml", 31, 7};
  auto p = compile({r, mongoRule("bare", Action::Block)});
  ASSERT_TRUE(p);
  const std::string t = p->table();
  EXPECT_NE(t.find("mongodb command [find,aggregate] database [app] collection [users,orders]"), std::string::npos)
      << t;
  EXPECT_NE(t.find("mongodb command [] database [] collection []"), std::string::npos) << t;
  EXPECT_NE(t.find("*.mongodb.net"), std::string::npos) << t;
  EXPECT_NE(t.find("approve timeout 120s"), std::string::npos) << t;
  EXPECT_NE(t.find("atlasgate.yaml:31"), std::string::npos) << t;
  EXPECT_EQ(std::count(t.begin(), t.end(), '\n'), 4);  // header, 2 rules, default
}

// Exhausts rule 0's bucket for agent-1 (burst 1).
void exhaust(Policy& p) {
  EXPECT_EQ(p.evaluateCommand(command({{"find", "app", "c"}}), kT0).verdict, Verdict::Allow);
  EXPECT_EQ(p.evaluateCommand(command({{"find", "app", "c"}}), kT0).verdict, Verdict::RateLimited);
}

TEST(PolicyCommand, AdoptStateKeepsBucketsOnlyForTheSameFilters) {
  const config::Rule base = rateLimited(mongoRule("budget", Action::Allow, {"find"}, {"app"}, {"c"}), 1, 3600);
  auto old = compile({base});
  ASSERT_TRUE(old);
  exhaust(*old);

  auto same = compile({base});
  same->adoptStateFrom(*old);
  EXPECT_EQ(same->evaluateCommand(command({{"find", "app", "c"}}), kT0).verdict, Verdict::RateLimited);

  std::vector<config::Rule> changed(3, base);
  changed[0].commands = {"find", "count"};
  changed[1].databases = {"app", "app2"};
  changed[2].collections = {"c", "d"};
  for (const config::Rule& r : changed) {
    auto next = compile({r});
    next->adoptStateFrom(*old);
    EXPECT_EQ(next->evaluateCommand(command({{"find", "app", "c"}}), kT0).verdict, Verdict::Allow) << fmt::format(
        "[{}] [{}] [{}]", fmt::join(r.commands, ","), fmt::join(r.databases, ","), fmt::join(r.collections, ","));
  }
  // An https rule of that name is another rule, whatever its other fields.
  config::Rule https = rateLimited(httpsRule("budget", "", Action::Allow), 1, 3600);
  auto asHttps = compile({https});
  asHttps->adoptStateFrom(*old);
  EXPECT_EQ(asHttps->evaluate(http("GET", "/x"), kT0).verdict, Verdict::Allow);
  // ... and back: a mongodb rule does not inherit an https rule's bucket.
  EXPECT_EQ(asHttps->evaluate(http("GET", "/x"), kT0).verdict, Verdict::RateLimited);
  config::Rule bare = rateLimited(mongoRule("budget", Action::Allow), 1, 3600);
  auto back = compile({bare});
  back->adoptStateFrom(*asHttps);
  EXPECT_EQ(back->evaluateCommand(command({{"find", "app", "c"}}), kT0).verdict, Verdict::Allow);
}

TEST(PolicyCommand, EmptyOrOverlongGlobIsACompileError) {
  const std::string overlong(257, 'x');
  for (int which = 0; which < 6; ++which) {
    config::Rule r = mongoRule("bad", Action::Block);
    r.loc = {"atlasgate.yaml", 9, 7};
    auto& globs = which % 3 == 0 ? r.commands : which % 3 == 1 ? r.databases : r.collections;
    globs = {"ok", which < 3 ? std::string() : overlong};
    config::Rules rules;
    rules.list = {r};
    auto p = Policy::compile(rules);
    ASSERT_FALSE(p.ok()) << which;
    EXPECT_EQ(p.error().message,
              "atlasgate.yaml:9:7: rules.list[0] (rule \"bad\"): empty or overlong command/database/collection")
        << which;
  }
  config::Rule longest = mongoRule("fine", Action::Block, {std::string(256, 'x')});
  EXPECT_TRUE(compile({longest}));
}

// ---- from a config file ------------------------------------------------------

TEST(PolicyCommand, RulesLoadedFromAFile) {
  auto c = config::parseConfig(
      "targets:\n"
      "  - host: cloud.mongodb.com\n"
      "  - host: \"*.mongodb.net\"\n"
      "    protocol: mongodb\n"
      "rules:\n"
      "  default: block\n"
      "  list:\n"
      "    - name: no-drops\n"
      "      protocol: mongodb\n"
      "      command: [drop*, renameCollection]\n"
      "      action: block\n"
      "    - name: app\n"
      "      protocol: mongodb\n"
      "      host: \"*.mongodb.net\"\n"
      "      database: app\n"
      "      collection: \"*\"\n"
      "      action: allow\n"
      "    - name: api\n"
      "      path: /**\n"
      "      action: allow\n",
      "m.yaml", false);
  ASSERT_TRUE(c.ok()) << c.error().message;
  auto compiled = Policy::compile(c->rules);
  ASSERT_TRUE(compiled.ok()) << compiled.error().message;
  Policy& p = **compiled;
  EXPECT_EQ(run(p, "DropDatabase", "app", "").ruleName, "no-drops");
  EXPECT_EQ(run(p, "find", "App", "x").ruleName, "app");
  EXPECT_EQ(run(p, "listCollections", "app", "").ruleName, "app");
  EXPECT_EQ(run(p, "find", "other", "x").ruleName, "default");
  EXPECT_EQ(p.evaluate(http("DELETE", "/x"), kT0).ruleName, "api");
}

}  // namespace
}  // namespace atlasgate::policy
