// The pure exchange decision (proxy/exchange.h): every branch of decide()
// and admitted(), the refusals of a read, a hold and the upstream, and the
// refusal table itself. No sockets: messages in, steps out.

#include <gtest/gtest.h>

#include <boost/json/parse.hpp>
#include <boost/system/errc.hpp>

#include <boost/asio/ssl/error.hpp>
#include <boost/beast/core/error.hpp>
#include <boost/beast/http/error.hpp>

#include "policy/policy.h"
#include "proxy/exchange.h"

namespace atlasgate::proxy {
namespace {

namespace http = boost::beast::http;
namespace json = boost::json;
using config::Action;

constexpr std::string_view kHost = "cloud.mongodb.com";
constexpr std::string_view kClusters = "/api/atlas/v2/groups/g1/clusters";

config::Rule rule(std::string name, std::string path, Action action, std::vector<std::string> methods = {}) {
  config::Rule r;
  r.name = std::move(name);
  r.path = std::move(path);
  r.action = action;
  r.methods = std::move(methods);
  return r;
}

CredentialRuntime credential(std::string name, std::vector<std::string> agents = {}) {
  CredentialRuntime c;
  c.name = name;
  c.description = "api_key:" + name;
  c.agents = std::move(agents);
  return c;
}

// One target, its credentials and rules; flows of named agents.
class ExchangeTest : public ::testing::Test {
 protected:
  void setRules(std::vector<config::Rule> list, Action def = Action::Allow) {
    auto cfg = std::make_shared<config::Config>();
    cfg->rules.defaultAction = def;
    cfg->rules.list = std::move(list);
    auto p = policy::Policy::compile(cfg->rules);
    ASSERT_TRUE(p.ok()) << p.error().message;
    rt_.config = cfg;
    rt_.policy = p.value();
  }
  void SetUp() override {
    setRules({});
    TargetRuntime t;
    t.host = std::string(kHost);
    t.id = 7;
    rt_.targets.push_back(std::move(t));
  }
  TargetRuntime& target() { return rt_.targets.front(); }
  Flow flow(std::string agent) {
    Flow f;
    f.agent.name = agent;
    f.agent.key = "atlasgate/" + agent + ".1";
    return f;
  }
  HttpRequest request(http::verb verb, std::string_view target, std::string body = {}) {
    HttpRequest r{verb, target, 11};
    r.set(http::field::host, kHost);
    if (!body.empty()) {
      r.body() = std::move(body);
      r.prepare_payload();
    }
    return r;
  }
  Step run(HttpRequest& req, const Flow& f) {
    rec_ = audit::Record{};
    rec_.method = std::string(req.method_string());
    rec_.path = std::string(req.target());
    return decide(req, ExchangeContext{rt_, target(), f, phantoms_, now_}, rec_);
  }
  static LocalResponse local(const Step& s) {
    EXPECT_TRUE(std::holds_alternative<LocalResponse>(s));
    return std::get<LocalResponse>(s);
  }
  static json::object body(const LocalResponse& l) { return json::parse(l.response.body()).as_object(); }

  Runtime rt_;
  credentials::PhantomTokens phantoms_;
  std::chrono::steady_clock::time_point now_ = std::chrono::steady_clock::now();
  audit::Record rec_;
};

TEST_F(ExchangeTest, AllowedRequestIsForwardedWithTheAgentsCredentialAndItsOwnDropped) {
  target().credentials = {credential("ops", {"ops-*"}), credential("all")};
  HttpRequest req = request(http::verb::get, kClusters);
  req.set(http::field::authorization, "Basic c3RvbGVuOmNyZWRz");
  req.set(http::field::connection, "keep-alive, x-drop");
  req.set("x-drop", "1");
  Step s = run(req, flow("ops-bot"));
  ASSERT_TRUE(std::holds_alternative<Forward>(s));
  EXPECT_EQ(std::get<Forward>(s).credential->name, "ops");
  EXPECT_EQ(req.count(http::field::authorization), 0u);
  EXPECT_EQ(req.count("x-drop"), 0u);
  EXPECT_EQ(req[http::field::host], kHost);
  EXPECT_EQ(rec_.decision, "allow");
  EXPECT_EQ(rec_.rule, "default");
  EXPECT_EQ(rec_.credential, "api_key:ops");

  Step other = run(req, flow("reporter"));
  ASSERT_TRUE(std::holds_alternative<Forward>(other));
  EXPECT_EQ(std::get<Forward>(other).credential->name, "all");
}

TEST_F(ExchangeTest, TargetWithoutCredentialsForwardsWithNone) {
  HttpRequest req = request(http::verb::get, kClusters);
  Step s = run(req, flow("a"));
  ASSERT_TRUE(std::holds_alternative<Forward>(s));
  EXPECT_EQ(std::get<Forward>(s).credential, nullptr);
  EXPECT_EQ(rec_.credential, "");
}

TEST_F(ExchangeTest, NoCredentialForThisAgentIs503AndNamesNone) {
  target().credentials = {credential("ops", {"ops-*"})};
  HttpRequest req = request(http::verb::get, kClusters);
  const LocalResponse& l = local(run(req, flow("intruder")));
  EXPECT_EQ(l.response.result_int(), 503u);
  EXPECT_EQ(l.errorCode, kCredentialUnavailable);
  EXPECT_EQ(l.counter, Counter::CredentialFailures);
  EXPECT_FALSE(l.close);
  EXPECT_EQ(l.response["x-should-retry"], "false");
  EXPECT_EQ(l.response.body().find("ops"), std::string::npos);
}

TEST_F(ExchangeTest, RuleNamesTheCredential) {
  auto r = rule("deploy", std::string(kClusters), Action::Allow, {"POST"});
  r.credential = "all";
  setRules({r});
  target().credentials = {credential("ops"), credential("all")};
  HttpRequest req = request(http::verb::post, kClusters, "{}");
  Step s = run(req, flow("a"));
  ASSERT_TRUE(std::holds_alternative<Forward>(s));
  EXPECT_EQ(std::get<Forward>(s).credential->name, "all");
  EXPECT_EQ(rec_.rule, "deploy");
}

TEST_F(ExchangeTest, BlockIs403WithTheRuleAndKeepsTheConnection) {
  setRules({rule("no-delete", "/api/atlas/v2/groups/*/clusters/*", Action::Block, {"DELETE"})});
  HttpRequest req = request(http::verb::delete_, "/api/atlas/v2/groups/g1/clusters/c1");
  const LocalResponse& l = local(run(req, flow("a")));
  EXPECT_EQ(l.response.result_int(), 403u);
  EXPECT_EQ(l.errorCode, kBlocked);
  EXPECT_EQ(l.counter, Counter::Blocked);
  EXPECT_FALSE(l.close);
  json::object b = body(l);
  EXPECT_EQ(b["errorCode"].as_string(), kBlocked);
  EXPECT_EQ(b["error"].to_number<unsigned>(), 403u);
  EXPECT_EQ(b["parameters"].as_array().at(0).as_string(), "no-delete");
  EXPECT_EQ(rec_.decision, "block");
}

TEST_F(ExchangeTest, RateLimitIs429WithRetryAfter) {
  auto r = rule("slow", "", Action::RateLimit);
  r.rate = config::Rate{1, 60};
  setRules({r});
  HttpRequest first = request(http::verb::get, kClusters);
  EXPECT_TRUE(std::holds_alternative<Forward>(run(first, flow("a"))));
  HttpRequest second = request(http::verb::get, kClusters);
  const LocalResponse& l = local(run(second, flow("a")));
  EXPECT_EQ(l.response.result_int(), 429u);
  EXPECT_EQ(l.errorCode, kRateLimited);
  EXPECT_EQ(l.response["x-should-retry"], "true");
  EXPECT_GE(std::stoi(std::string(l.response[http::field::retry_after])), 1);
  EXPECT_EQ(rec_.decision, "rate_limited");
}

TEST_F(ExchangeTest, LogOnlyForwardsAndSaysSo) {
  setRules({rule("watch", "", Action::LogOnly)});
  HttpRequest req = request(http::verb::get, kClusters);
  EXPECT_TRUE(std::holds_alternative<Forward>(run(req, flow("a"))));
  EXPECT_EQ(rec_.decision, "log_only");
}

TEST_F(ExchangeTest, ApproveHoldsThenEachOutcome) {
  auto r = rule("ask", "", Action::Approve, {"POST"});
  r.timeout = std::chrono::seconds(30);
  setRules({r});
  target().credentials = {credential("all")};
  HttpRequest req = request(http::verb::post, kClusters, std::string(4, ' ') + "{\"name\":\"c1\"}");
  Step s = run(req, flow("a"));
  ASSERT_TRUE(std::holds_alternative<Hold>(s));
  const Hold& h = std::get<Hold>(s);
  EXPECT_EQ(h.info.agent, "a");
  EXPECT_EQ(h.info.agentKey, "atlasgate/a.1");
  EXPECT_EQ(h.info.path, kClusters);
  EXPECT_EQ(h.info.rule, "ask");
  EXPECT_EQ(h.info.bodyPreview, "{\"name\":\"c1\"}");
  EXPECT_EQ(h.info.bodyLeadingBlanks, 4u);
  EXPECT_EQ(h.info.timeout, std::chrono::seconds(30));
  EXPECT_EQ(rec_.decision, "approve");
  EXPECT_EQ(req.count(http::field::authorization), 0u);  // nothing is prepared before approval

  audit::Record denied = rec_;
  LocalResponse d = approvalRefused(h, ApprovalOutcome::Denied, denied);
  EXPECT_EQ(d.response.result_int(), 403u);
  EXPECT_EQ(d.errorCode, kApprovalDenied);
  EXPECT_EQ(denied.decision, "denied");
  EXPECT_NE(d.response.body().find("denied by an operator"), std::string::npos);

  audit::Record late = rec_;
  LocalResponse t = approvalRefused(h, ApprovalOutcome::TimedOut, late);
  EXPECT_EQ(late.decision, "approval_timeout");
  EXPECT_NE(t.response.body().find("not approved in time"), std::string::npos);

  audit::Record full = rec_;
  Admission refused;
  refused.full = HoldCap::PerAgent;
  refused.retryAfter = std::chrono::seconds(7);
  LocalResponse q = approvalQueueFull(h, refused, full);
  EXPECT_EQ(q.response.result_int(), 429u);
  EXPECT_EQ(q.errorCode, kApprovalQueueFull);
  EXPECT_EQ(q.response[http::field::retry_after], "7");
  EXPECT_NE(q.response.body().find("max_held_per_agent"), std::string::npos);
  EXPECT_EQ(full.decision, "approval_queue_full");

  Flow f = flow("a");
  Step after = admitted(req, ExchangeContext{rt_, target(), f, phantoms_, now_}, h.decision, rec_);
  ASSERT_TRUE(std::holds_alternative<Forward>(after));
  EXPECT_EQ(std::get<Forward>(after).credential->name, "all");
}

TEST_F(ExchangeTest, MethodOverrideIsMalformedAndCloses) {
  HttpRequest req = request(http::verb::post, kClusters, "{}");
  req.set("X-HTTP-Method-Override", "DELETE");
  const LocalResponse& l = local(run(req, flow("a")));
  EXPECT_EQ(l.response.result_int(), 400u);
  EXPECT_EQ(l.errorCode, kBadRequest);
  EXPECT_TRUE(l.close);
  EXPECT_EQ(rec_.decision, "malformed");
}

TEST_F(ExchangeTest, FramingRefusalsComeBeforeTheRules) {
  setRules({}, Action::Block);
  HttpRequest connect = request(http::verb::connect, "cloud.mongodb.com:443");
  const LocalResponse& c = local(run(connect, flow("a")));
  EXPECT_EQ(c.response.result_int(), 405u);
  EXPECT_TRUE(c.close);
  EXPECT_EQ(rec_.decision, "malformed");
  EXPECT_EQ(rec_.rule, "");

  HttpRequest other = request(http::verb::get, kClusters);
  other.set(http::field::host, "evil.example");
  const LocalResponse& m = local(run(other, flow("a")));
  EXPECT_EQ(m.response.result_int(), 421u);
  EXPECT_EQ(m.errorCode, kMisdirected);
  EXPECT_FALSE(m.close);  // well framed: the connection may go on

  HttpRequest absolute = request(http::verb::get, "https://cloud.mongodb.com/api/atlas/v2/groups");
  Step s = run(absolute, flow("a"));
  EXPECT_TRUE(std::holds_alternative<LocalResponse>(s));  // default block
  EXPECT_EQ(rec_.path, "/api/atlas/v2/groups");           // audited in origin-form
}

TEST_F(ExchangeTest, OAuthTokenIsAPhantomBoundToTheAgent) {
  HttpRequest tokenReq = request(http::verb::post, "/api/oauth/token", "grant_type=client%5Fcredentials&x=a+b");
  const LocalResponse& issued = local(run(tokenReq, flow("a")));
  EXPECT_EQ(issued.response.result_int(), 200u);
  EXPECT_EQ(issued.counter, Counter::PhantomIssued);
  EXPECT_EQ(issued.errorCode, "");
  EXPECT_EQ(rec_.decision, "local");
  EXPECT_EQ(issued.response[http::field::cache_control], "no-store");
  json::object o = body(issued);
  std::string token(o["access_token"].as_string());
  EXPECT_EQ(o["token_type"].as_string(), "Bearer");

  HttpRequest mine = request(http::verb::get, kClusters);
  mine.set(http::field::authorization, "bearer  " + token + " ");
  ASSERT_TRUE(std::holds_alternative<Forward>(run(mine, flow("a"))));
  EXPECT_EQ(mine.count(http::field::authorization), 0u);  // never reaches the target

  HttpRequest stolen = request(http::verb::get, kClusters);
  stolen.set(http::field::authorization, "Bearer " + token);
  const LocalResponse& refused = local(run(stolen, flow("b")));
  EXPECT_EQ(refused.response.result_int(), 401u);
  EXPECT_EQ(refused.errorCode, kInvalidToken);
  EXPECT_EQ(refused.counter, Counter::PhantomRefused);
  EXPECT_NE(refused.response.body().find("another agent"), std::string::npos);
  EXPECT_EQ(rec_.decision, "invalid_token");

  HttpRequest revoke = request(http::verb::post, "/api/oauth/revoke", "token=" + token);
  EXPECT_EQ(local(run(revoke, flow("a"))).response.body(), "{}");
  HttpRequest after = request(http::verb::get, kClusters);
  after.set(http::field::authorization, "Bearer " + token);
  EXPECT_NE(local(run(after, flow("a"))).response.body().find("is not known"), std::string::npos);
}

TEST_F(ExchangeTest, OAuthGrantErrorsUseTheOAuthShape) {
  HttpRequest none = request(http::verb::post, "/api/oauth/token", "scope=x");
  json::object a = body(local(run(none, flow("a"))));
  EXPECT_EQ(a["error"].as_string(), "invalid_request");
  HttpRequest pw = request(http::verb::post, "/api/oauth/token?x=1", "grant_type=password");
  const LocalResponse& l = local(run(pw, flow("a")));
  EXPECT_EQ(l.response.result_int(), 400u);
  EXPECT_EQ(body(l)["error"].as_string(), "unsupported_grant_type");
  HttpRequest broken = request(http::verb::post, "/api/oauth/token", "grant_type=client_credentials%zz");
  EXPECT_EQ(body(local(run(broken, flow("a"))))["error"].as_string(), "invalid_request");
  EXPECT_EQ(phantoms_.size(), 0u);
}

TEST_F(ExchangeTest, OAuthPathsAreStillRuled) {
  setRules({rule("no-tokens", "/api/oauth/token", Action::Block)});
  HttpRequest req = request(http::verb::post, "/api/oauth/token", "grant_type=client_credentials");
  EXPECT_EQ(local(run(req, flow("a"))).errorCode, kBlocked);
  EXPECT_EQ(phantoms_.size(), 0u);
}

TEST(ExchangeRefusals, ReadErrors) {
  config::Limits limits;
  EXPECT_FALSE(readRefusal(http::error::end_of_stream, false, limits));
  EXPECT_FALSE(readRefusal(boost::asio::ssl::error::stream_truncated, true, limits));
  auto head = readRefusal(boost::beast::error::timeout, false, limits);
  ASSERT_TRUE(head);
  EXPECT_EQ(head->response.result_int(), 408u);
  EXPECT_NE(head->response.body().find("head did not arrive"), std::string::npos);
  auto body = readRefusal(boost::beast::error::timeout, true, limits);
  EXPECT_NE(body->response.body().find("body did not arrive"), std::string::npos);
  EXPECT_EQ(readRefusal(http::error::header_limit, false, limits)->response.result_int(), 431u);
  EXPECT_EQ(readRefusal(http::error::body_limit, true, limits)->response.result_int(), 413u);
  auto bad = readRefusal(http::error::bad_method, false, limits);
  EXPECT_EQ(bad->response.result_int(), 400u);
  EXPECT_TRUE(bad->close);
  EXPECT_EQ(bad->counter, Counter::BadRequests);
}

TEST(ExchangeRefusals, HeadLimits) {
  config::Limits limits;
  limits.maxHeaders = 3;
  limits.maxBodyBytes = 10;
  HttpRequest r{http::verb::post, "/", 11};
  r.set("a", "1");
  r.set("b", "1");
  EXPECT_FALSE(headRefusal(r, std::nullopt, limits));
  EXPECT_FALSE(headRefusal(r, 10, limits));
  EXPECT_EQ(headRefusal(r, 11, limits)->response.result_int(), 413u);
  r.set("c", "1");
  r.set("d", "1");
  auto many = headRefusal(r, std::nullopt, limits);
  EXPECT_EQ(many->response.result_int(), 431u);
  EXPECT_TRUE(many->close);
}

TEST(ExchangeRefusals, Upstream) {
  config::Limits limits;
  limits.upstreamQueueTimeout = std::chrono::seconds(0);
  LocalResponse busy = upstreamBusy(kHost, limits);
  EXPECT_EQ(busy.response.result_int(), 503u);
  EXPECT_EQ(busy.errorCode, kUpstreamBusy);
  EXPECT_EQ(busy.response[http::field::retry_after], "1");  // never 0
  EXPECT_EQ(upstreamRefusal(boost::beast::error::timeout, "read", kHost).response.result_int(), 504u);
  LocalResponse down = upstreamRefusal(make_error_code(boost::system::errc::connection_refused), "connect", kHost);
  EXPECT_EQ(down.response.result_int(), 502u);
  EXPECT_EQ(down.counter, Counter::UpstreamFailures);
  EXPECT_NE(down.response.body().find("connect failed"), std::string::npos);
}

TEST(ExchangeRefusals, EveryRowRendersItsOwnShape) {
  for (const RefusalInfo& row : kRefusals) {
    LocalResponse l = refuse(row.refusal, "detail", {"p"});
    EXPECT_EQ(l.response.result_int(), row.status);
    json::object o = json::parse(l.response.body()).as_object();
    EXPECT_EQ(o["error"].to_number<unsigned>(), row.status);
    EXPECT_EQ(o["errorCode"].as_string(), row.code);
    EXPECT_EQ(o["detail"].as_string(), "detail");
    EXPECT_EQ(o["parameters"].as_array().size(), 1u);
    EXPECT_FALSE(o["reason"].as_string().empty());
    EXPECT_EQ(l.response["x-should-retry"], row.retry ? "true" : "false");
    EXPECT_EQ(l.response[http::field::content_type], "application/json");
    EXPECT_EQ(l.close, row.closes);
    EXPECT_EQ(l.counter, row.counter);
  }
}

}  // namespace
}  // namespace atlasgate::proxy
