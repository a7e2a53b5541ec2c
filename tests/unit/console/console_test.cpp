// The console's request rules (console/console.h), without sockets: Host,
// Origin, sign-in, sessions, CSRF, and what each API answers.
#include "console/console.h"

#include <gtest/gtest.h>

#include <boost/json.hpp>

#include "console/assets.h"

using namespace atlasgate;
using namespace atlasgate::console;
using namespace std::chrono_literals;
namespace json = boost::json;

namespace {

constexpr const char* kAddress = "127.0.0.1:15445";

struct Fixture : ::testing::Test {
  Feed feed;
  std::vector<std::pair<std::uint64_t, bool>> decided;
  std::vector<std::string> revoked;
  std::optional<ExplainQuery> explained;
  Console console{kAddress, 3600s, handlers(), feed};
  SteadyTime now = SteadyTime(std::chrono::hours(5000));
  std::chrono::system_clock::time_point wall = std::chrono::system_clock::time_point(std::chrono::hours(480000));

  Handlers handlers() {
    Handlers h;
    h.approvals = [] { return json::value(json::object{{"approvals", json::array{json::object{{"id", 7}}}}}); };
    h.decide = [this](std::uint64_t id, bool allow) {
      decided.emplace_back(id, allow);
      return id == 7;
    };
    h.agents = [] { return json::object{{"connections", json::array{}}}; };
    h.rules = [] { return std::string("#  NAME\n1  no-drops\n"); };
    h.explain = [this](const ExplainQuery& q) -> Result<std::string> {
      explained = q;
      return std::string("decided by rule no-drops\n");
    };
    h.credentials = [] { return json::value(json::object{{"capture", false}}); };
    h.revoke = [this](std::string_view name) -> Result<void> {
      if (name != "captured:api_key:x") return makeError("no captured credential named {}", name);
      revoked.emplace_back(name);
      return {};
    };
    return h;
  }

  Request get(std::string target, std::string cookie = "") {
    Request r;
    r.method = "GET";
    r.target = std::move(target);
    r.host = kAddress;
    r.cookie = std::move(cookie);
    return r;
  }
  Request post(std::string target, std::string cookie, std::string csrf, std::string body = "{}") {
    Request r = get(std::move(target), std::move(cookie));
    r.method = "POST";
    r.hasOrigin = true;
    r.origin = std::string("http://") + kAddress;
    r.csrf = std::move(csrf);
    r.contentType = "application/json";
    r.body = std::move(body);
    return r;
  }
  Response send(const Request& r) { return console.handle(r, now, wall); }

  // A signed-in page: its Cookie header value and its token.
  struct Page {
    std::string cookie;
    std::string csrf;
  };
  // A GET of a fresh sign-in link, as the operator's browser sends it.
  Request linkRequest() {
    std::string url = console.signInUrl(now);
    return get(url.substr(url.find("/signin")));
  }
  Page signIn() {
    Response r = send(linkRequest());
    EXPECT_EQ(r.status, 303u);
    Page p;
    for (const auto& [k, v] : r.headers) {
      if (k == "Set-Cookie") p.cookie = v.substr(0, v.find(';'));
      if (k == "Location" && v.starts_with("/#csrf=")) p.csrf = v.substr(7);
    }
    EXPECT_FALSE(p.cookie.empty());
    EXPECT_EQ(p.csrf.size(), 43u);
    return p;
  }
  // A GET of the API from the page: cookie and token.
  Request apiGet(std::string target, const Page& p) {
    Request r = get(std::move(target), p.cookie);
    r.csrf = p.csrf;
    return r;
  }
  static std::string header(const Response& r, std::string_view name) {
    for (const auto& [k, v] : r.headers)
      if (k == name) return v;
    return "";
  }
};

TEST_F(Fixture, TheLinkIsForThisConsoleAndSetsAStrictCookie) {
  std::string url = console.signInUrl(now);
  ASSERT_TRUE(url.starts_with("http://127.0.0.1:15445/signin?token=")) << url;
  Response r = send(get(url.substr(url.find("/signin"))));
  EXPECT_EQ(r.status, 303u);
  const std::string location = header(r, "Location");
  EXPECT_TRUE(location.starts_with("/#csrf=")) << "the token rides in the fragment, which no server sees";
  EXPECT_EQ(location.size(), 7u + 43u);
  std::string cookie = header(r, "Set-Cookie");
  EXPECT_EQ(cookie.find(location.substr(7)), std::string::npos) << "the token is not the cookie";
  EXPECT_TRUE(cookie.starts_with("atlasgate_console_15445=")) << cookie;
  EXPECT_NE(cookie.find("; HttpOnly"), std::string::npos);
  EXPECT_NE(cookie.find("; SameSite=Strict"), std::string::npos);
  EXPECT_NE(cookie.find("; Path=/"), std::string::npos);
  EXPECT_NE(cookie.find("; Max-Age=3600"), std::string::npos);
  // Used once: the same link again is refused, and sets nothing.
  Response again = send(get(url.substr(url.find("/signin"))));
  EXPECT_EQ(again.status, 403u);
  EXPECT_EQ(header(again, "Set-Cookie"), "");
  EXPECT_EQ(send(get("/signin")).status, 403u);
  EXPECT_EQ(send(get("/signin?token=")).status, 403u);
}

TEST_F(Fixture, AnotherHostIsRefusedBeforeAnythingElse) {
  Page page = signIn();
  for (std::string host : {"evil.example:15445", "evil.example", "127.0.0.1:15446", "127.0.0.1", "", "127.0.0.2:15445",
                           "localhost.evil.example:15445", "[::1]:15445", "127.0.0.1:15445.evil"}) {
    Request r = apiGet("/api/v1/approvals", page);
    r.host = host;
    Response res = send(r);
    EXPECT_EQ(res.status, 421u) << host;
    EXPECT_EQ(res.contentType, "text/plain; charset=utf-8");
  }
  Request local = apiGet("/api/v1/approvals", page);
  local.host = "LOCALHOST:15445";
  EXPECT_EQ(send(local).status, 200u);
  // Even the sign-in: a rebinding page cannot spend a link.
  Request rebound = linkRequest();
  rebound.host = "rebind.example:15445";
  EXPECT_EQ(send(rebound).status, 421u);
  rebound.host = kAddress;
  EXPECT_EQ(send(rebound).status, 303u) << "the refused attempt did not spend the link";
}

TEST_F(Fixture, TheRefusalEchoesAHostileHostOnlyEscaped) {
  Request r = get("/");
  r.host = "\x1b]0;pwned\x07<script>" + std::string(500, 'a');
  Response res = send(r);
  EXPECT_EQ(res.status, 421u);
  EXPECT_EQ(res.body.find('\x1b'), std::string::npos);
  EXPECT_EQ(res.body.find('\x07'), std::string::npos);
  EXPECT_LT(res.body.size(), 400u);
}

TEST_F(Fixture, WithoutASessionOnlyTheAssetsAndTheSignInPageAnswer) {
  EXPECT_EQ(send(get("/")).status, 401u);
  EXPECT_EQ(send(get("/")).contentType, "text/html; charset=utf-8");
  EXPECT_EQ(send(get("/api/v1/approvals")).status, 401u);
  EXPECT_EQ(send(get("/api/v1/events")).status, 401u);
  EXPECT_FALSE(send(get("/api/v1/events")).eventStream);
  EXPECT_EQ(send(get("/api/v1/approvals", "atlasgate_console_15445=" + std::string(43, 'A'))).status, 401u);
  Response js = send(get("/assets/app.js"));
  EXPECT_EQ(js.status, 200u);
  EXPECT_EQ(js.contentType, "text/javascript; charset=utf-8");
  EXPECT_EQ(send(get("/assets/../console.cpp")).status, 404u);
  EXPECT_EQ(send(get("/assets/")).status, 404u);
  EXPECT_EQ(send(get("/etc/passwd")).status, 404u);
}

TEST_F(Fixture, WithASessionThePageAndTheApisAnswer) {
  Page page = signIn();
  const std::string& cookie = page.cookie;
  Response index = send(get("/", cookie));
  EXPECT_EQ(index.status, 200u);
  EXPECT_NE(index.body.find("/assets/app.js"), std::string::npos);
  EXPECT_EQ(index.body.find("<script>"), std::string::npos) << "no inline script: the CSP forbids it";
  EXPECT_EQ(json::parse(send(apiGet("/api/v1/approvals", page)).body).at("approvals").as_array().size(), 1u);
  EXPECT_EQ(json::parse(send(apiGet("/api/v1/rules", page)).body).at("table").as_string(), "#  NAME\n1  no-drops\n");
  EXPECT_TRUE(json::parse(send(apiGet("/api/v1/agents", page)).body).as_object().contains("agents"));
  EXPECT_EQ(json::parse(send(apiGet("/api/v1/stats", page)).body).at("minutes").as_array().size(), Feed::kMinutes);
  EXPECT_EQ(send(apiGet("/api/v1/nothing", page)).status, 404u);
  auto session = json::parse(send(apiGet("/api/v1/session", page)).body).as_object();
  EXPECT_EQ(session.at("expires_in_s").as_int64(), 3600);
  EXPECT_FALSE(session.contains("csrf_token")) << "no API hands the token out";
  // Another console's cookie (another port on the same host) is not ours.
  std::string other = "atlasgate_console_15446=" + cookie.substr(cookie.find('=') + 1);
  EXPECT_EQ(send(apiGet("/api/v1/approvals", Page{other, page.csrf})).status, 401u);
  // Among other cookies.
  EXPECT_EQ(send(apiGet("/api/v1/approvals", Page{"a=b; " + cookie + "; c=d", page.csrf})).status, 200u);
}

TEST_F(Fixture, AStateChangeNeedsTheCsrfTokenAndTheConsolesOrigin) {
  Page page = signIn();
  const std::string& cookie = page.cookie;
  const std::string& csrf = page.csrf;
  EXPECT_EQ(send(post("/api/v1/approvals/7/allow", cookie, "")).status, 403u);
  EXPECT_EQ(send(post("/api/v1/approvals/7/allow", cookie, "wrong")).status, 403u);
  EXPECT_EQ(send(post("/api/v1/approvals/7/allow", cookie, cookie.substr(cookie.find('=') + 1))).status, 403u);
  Request foreign = post("/api/v1/approvals/7/allow", cookie, csrf);
  foreign.origin = "http://evil.example";
  EXPECT_EQ(send(foreign).status, 403u);
  Request noOrigin = post("/api/v1/approvals/7/allow", cookie, csrf);
  noOrigin.hasOrigin = false;
  noOrigin.origin.clear();
  EXPECT_EQ(send(noOrigin).status, 403u);
  Request nullOrigin = post("/api/v1/approvals/7/allow", cookie, csrf);
  nullOrigin.origin = "null";
  EXPECT_EQ(send(nullOrigin).status, 403u);
  for (std::string type : {"", "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                           "application/jsonx"}) {
    Request form = post("/api/v1/approvals/7/allow", cookie, csrf);
    form.contentType = type;
    EXPECT_EQ(send(form).status, 415u) << type;
  }
  Request charset = post("/api/v1/approvals/7/deny", cookie, csrf);
  charset.contentType = "Application/JSON; charset=utf-8";
  EXPECT_EQ(send(charset).status, 200u);
  decided.clear();
  EXPECT_EQ(send(post("/api/v1/approvals/7/allow", cookie, "")).status, 403u);
  EXPECT_TRUE(decided.empty()) << "nothing was decided by a refused request";
  EXPECT_EQ(send(post("/api/v1/approvals/7/allow", cookie, csrf)).status, 200u);
  EXPECT_EQ(send(post("/api/v1/approvals/8/deny", cookie, csrf)).status, 404u);
  ASSERT_EQ(decided.size(), 2u);
  EXPECT_EQ(decided[0], std::make_pair(std::uint64_t{7}, true));
  EXPECT_EQ(decided[1], std::make_pair(std::uint64_t{8}, false));
  for (std::string bad :
       {"/api/v1/approvals/0/allow", "/api/v1/approvals/x/allow", "/api/v1/approvals/7/maybe", "/api/v1/approvals/7",
        "/api/v1/approvals/-1/allow", "/api/v1/approvals/99999999999999999999/allow"})
    EXPECT_EQ(send(post(bad, cookie, csrf)).status, 404u) << bad;
  EXPECT_EQ(decided.size(), 2u);
}

// Browsers send 127.0.0.1's cookies to every port of it: a page a local
// process serves elsewhere on 127.0.0.1 gets the console's cookie. Without
// the page's token (only ever in the sign-in redirect's fragment), that
// cookie reads nothing and decides nothing.
TEST_F(Fixture, AStolenCookieAloneOpensNothing) {
  Page page = signIn();
  for (std::string target : {"/api/v1/session", "/api/v1/approvals", "/api/v1/decisions", "/api/v1/agents",
                             "/api/v1/rules", "/api/v1/credentials", "/api/v1/stats", "/api/v1/events"}) {
    Response r = send(get(target, page.cookie));
    EXPECT_EQ(r.status, 403u) << target;
    EXPECT_FALSE(r.eventStream) << target;
    EXPECT_EQ(r.body.find("csrf_token"), std::string::npos);
  }
  Page other = signIn();
  EXPECT_EQ(send(apiGet("/api/v1/approvals", Page{page.cookie, other.csrf})).status, 403u) << "another session's token";
  EXPECT_EQ(send(post("/api/v1/approvals/7/allow", page.cookie, other.csrf)).status, 403u);
  EXPECT_TRUE(decided.empty());
  // The page itself (static, no data) loads with the cookie alone.
  EXPECT_EQ(send(get("/", page.cookie)).status, 200u);
  // The event stream takes the token in its query (EventSource sends no headers).
  Response stream = send(get("/api/v1/events?csrf=" + page.csrf, page.cookie));
  EXPECT_TRUE(stream.eventStream);
  EXPECT_FALSE(send(get("/api/v1/events?csrf=" + other.csrf, page.cookie)).eventStream);
  EXPECT_EQ(send(get("/api/v1/approvals?csrf=" + page.csrf, page.cookie)).status, 403u)
      << "only the stream takes the query";
}

TEST_F(Fixture, ACrossSiteGetIsRefused) {
  Page page = signIn();
  const std::string& cookie = page.cookie;
  Request r = apiGet("/api/v1/approvals", page);
  for (std::string site : {"cross-site", "same-site"}) {
    r.secFetchSite = site;
    EXPECT_EQ(send(r).status, 403u) << site;
  }
  for (std::string site : {"same-origin", "none", ""}) {
    r.secFetchSite = site;
    EXPECT_EQ(send(r).status, 200u) << site;
  }
  Request index = get("/", cookie);
  index.secFetchSite = "cross-site";
  EXPECT_EQ(send(index).status, 403u);
  // A sign-in link may be clicked anywhere (a chat, a ticket).
  Request link = linkRequest();
  link.secFetchSite = "cross-site";
  EXPECT_EQ(send(link).status, 303u);
  r.method = "PUT";
  EXPECT_EQ(send(r).status, 405u);
}

TEST_F(Fixture, AnExpiredOrSignedOutSessionIsRefused) {
  Page page = signIn();
  const std::string& cookie = page.cookie;
  now += 3599s;
  EXPECT_EQ(send(apiGet("/api/v1/approvals", page)).status, 200u);
  now += 1s;
  EXPECT_EQ(send(apiGet("/api/v1/approvals", page)).status, 401u);
  EXPECT_EQ(send(get("/", cookie)).status, 401u);
  Page secondPage = signIn();
  const std::string& second = secondPage.cookie;
  const std::string& csrf = secondPage.csrf;
  Response out = send(post("/api/v1/signout", second, csrf));
  EXPECT_EQ(out.status, 200u);
  EXPECT_NE(header(out, "Set-Cookie").find("Max-Age=0"), std::string::npos);
  EXPECT_EQ(send(apiGet("/api/v1/approvals", secondPage)).status, 401u);
  EXPECT_FALSE(console.sessionExpiry(second.substr(second.find('=') + 1), now));
}

TEST_F(Fixture, TheEventStreamIsGrantedToASessionWithWhereItLeftOff) {
  Page page = signIn();
  Request r = apiGet("/api/v1/events", page);
  r.lastEventId = "41";
  Response res = send(r);
  EXPECT_TRUE(res.eventStream);
  EXPECT_EQ(res.lastEventId, 41u);
  EXPECT_TRUE(console.sessionExpiry(res.session, now));
  EXPECT_EQ(send(apiGet("/api/v1/events?since=12", page)).lastEventId, 12u);
  EXPECT_EQ(send(apiGet("/api/v1/events?since=junk", page)).lastEventId, 0u);
}

TEST_F(Fixture, DecisionsAreHandedOutAfterTheirNumber) {
  Page page = signIn();
  for (int i = 0; i < 5; ++i) feed.push(R"({"agent":"a","decision":"allow"})", "a", "allow", "", wall);
  auto all = json::parse(send(apiGet("/api/v1/decisions", page)).body).as_object();
  EXPECT_EQ(all.at("decisions").as_array().size(), 5u);
  EXPECT_EQ(all.at("last").as_int64(), 5);
  auto some = json::parse(send(apiGet("/api/v1/decisions?since=3&limit=100", page)).body).as_object();
  ASSERT_EQ(some.at("decisions").as_array().size(), 2u);
  EXPECT_EQ(some.at("decisions").as_array()[0].at("seq").as_int64(), 4);
  auto one = json::parse(send(apiGet("/api/v1/decisions?limit=1", page)).body).as_object();
  EXPECT_EQ(one.at("decisions").as_array().size(), 1u);
}

TEST_F(Fixture, ExplainAsksTheRulesAndChecksItsQuestion) {
  Page page = signIn();
  const std::string& cookie = page.cookie;
  const std::string& csrf = page.csrf;
  Response ok = send(post("/api/v1/explain", cookie, csrf,
                          R"({"method":"DELETE","path":"/api/atlas/v2/groups/1/clusters/c","agent":"shell"})"));
  EXPECT_EQ(ok.status, 200u);
  EXPECT_EQ(json::parse(ok.body).at("explanation").as_string(), "decided by rule no-drops\n");
  ASSERT_TRUE(explained);
  EXPECT_EQ(explained->method, "DELETE");
  EXPECT_EQ(explained->agent, "shell");
  EXPECT_FALSE(explained->body);
  explained.reset();
  for (std::string bad : {"", "[]", R"({"method":"GET"})", R"({"method":"GET","path":"relative"})", R"({"path":"/x"})",
                          R"({"method":"GET","path":"/x","agent":)"})
    EXPECT_EQ(send(post("/api/v1/explain", cookie, csrf, bad)).status, 400u) << bad;
  EXPECT_FALSE(explained) << "a bad question never reaches the rules";
}

TEST_F(Fixture, RevokeNamesACapturedCredential) {
  Page page = signIn();
  const std::string& cookie = page.cookie;
  const std::string& csrf = page.csrf;
  EXPECT_EQ(send(post("/api/v1/credentials/revoke", cookie, csrf, R"({"name":"captured:api_key:x"})")).status, 200u);
  EXPECT_EQ(send(post("/api/v1/credentials/revoke", cookie, csrf, R"({"name":"captured:api_key:y"})")).status, 404u);
  EXPECT_EQ(send(post("/api/v1/credentials/revoke", cookie, csrf, R"({"name":7})")).status, 400u);
  EXPECT_EQ(send(post("/api/v1/credentials/revoke", cookie, "", R"({"name":"captured:api_key:x"})")).status, 403u);
  EXPECT_EQ(revoked, std::vector<std::string>{"captured:api_key:x"});
}

TEST(ConsoleHeaders, TheContentSecurityPolicyAllowsNoInlineCode) {
  std::string csp;
  for (const auto& [k, v] : kSecurityHeaders)
    if (k == "Content-Security-Policy") csp = v;
  EXPECT_NE(csp.find("default-src 'none'"), std::string::npos);
  EXPECT_NE(csp.find("script-src 'self'"), std::string::npos);
  EXPECT_NE(csp.find("frame-ancestors 'none'"), std::string::npos);
  EXPECT_EQ(csp.find("unsafe"), std::string::npos);
}

TEST(ConsoleAssets, EveryPageTheIndexLoadsIsEmbedded) {
  const Asset* index = findAsset("/assets/index.html");
  ASSERT_NE(index, nullptr);
  for (std::string_view p : {"/assets/app.js", "/assets/app.css", "/assets/favicon.svg"}) {
    EXPECT_NE(index->body.find(p), std::string_view::npos) << p;
    const Asset* a = findAsset(p);
    ASSERT_NE(a, nullptr) << p;
    EXPECT_GT(a->body.size(), 100u);
  }
  EXPECT_EQ(findAsset("/assets/missing.js"), nullptr);
}

TEST(ConsoleParsing, QueryAndCookieValues) {
  EXPECT_EQ(queryParam("a=1&token=xyz&b=2", "token"), "xyz");
  EXPECT_EQ(queryParam("tokenx=1&token=2", "token"), "2");
  EXPECT_EQ(queryParam("token", "token"), "");
  EXPECT_EQ(queryParam("", "token"), "");
  EXPECT_EQ(cookieValue("a=1; atlasgate_console_1=k; b=2", "atlasgate_console_1"), "k");
  EXPECT_EQ(cookieValue("xatlasgate_console_1=k", "atlasgate_console_1"), "");
  EXPECT_EQ(cookieValue("", "atlasgate_console_1"), "");
}

}  // namespace
