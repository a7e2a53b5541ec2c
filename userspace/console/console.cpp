#include "console/console.h"

#include <fmt/format.h>

#include <boost/json.hpp>
#include <charconv>

#include "common/text.h"
#include "console/assets.h"
#include "control/control.h"

namespace atlasgate::console {

namespace json = boost::json;

const std::vector<std::pair<std::string_view, std::string_view>> kSecurityHeaders = {
    {"Content-Security-Policy",
     "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
     "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"},
    {"X-Content-Type-Options", "nosniff"},
    {"Referrer-Policy", "no-referrer"},
    {"Cache-Control", "no-store"},
    {"X-Frame-Options", "DENY"},
    {"Cross-Origin-Opener-Policy", "same-origin"},
    {"Cross-Origin-Resource-Policy", "same-origin"},
};

namespace {

constexpr std::size_t kMaxDecisionsPerAnswer = 1000;

// The pages atlasgate shows before there is a session. Static text: nothing
// from the request is put into them.
constexpr std::string_view kPageHead =
    "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>atlasgate console</title>"
    "<link rel=\"stylesheet\" href=\"/assets/app.css\"></head><body class=\"notice\"><main><h1>atlasgate console</h1>";
constexpr std::string_view kSignInNeeded =
    "<p>Sign in with a one-time link: run <code>sudo atlasgate console-url</code> on the node and open the link it "
    "prints.</p></main></body></html>";
constexpr std::string_view kLinkRefused =
    "<p>This sign-in link is not valid: it was used already, it expired (links last 10 minutes), or it was "
    "mistyped. Run <code>sudo atlasgate console-url</code> for a new one.</p></main></body></html>";
constexpr std::string_view kSlowDown =
    "<p>Too many sign-in attempts with links that were not valid. Wait a minute, then use a new link from "
    "<code>sudo atlasgate console-url</code>.</p></main></body></html>";

Response html(unsigned status, std::string_view page) {
  Response r;
  r.status = status;
  r.contentType = "text/html; charset=utf-8";
  r.body = std::string(kPageHead) + std::string(page);
  return r;
}

// Answers carry what agents wrote (names, paths, process names, body
// previews), which may be any bytes; a JSON text must be UTF-8, and a strict
// client (a bot approving requests) would choke on one that is not. Every
// JSON answer passes here, so no field needs mending of its own.
Response jsonAnswer(unsigned status, json::value v) {
  control::makeUtf8(v);
  Response r;
  r.status = status;
  r.body = json::serialize(v);
  return r;
}

Response jsonError(unsigned status, std::string_view message) {
  return jsonAnswer(status, json::object{{"ok", false}, {"error", message}});
}

Response plain(unsigned status, std::string body) {
  Response r;
  r.status = status;
  r.contentType = "text/plain; charset=utf-8";
  r.body = std::move(body);
  return r;
}

std::uint64_t parseUint(std::string_view s, std::uint64_t otherwise) {
  std::uint64_t v = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  return ec == std::errc() && end == s.data() + s.size() ? v : otherwise;
}

// "/api/v1/approvals/12/allow" -> 12 and true; nullopt when it is not that.
std::optional<std::pair<std::uint64_t, bool>> approvalAction(std::string_view path) {
  constexpr std::string_view kPrefix = "/api/v1/approvals/";
  if (!path.starts_with(kPrefix)) return std::nullopt;
  path.remove_prefix(kPrefix.size());
  auto slash = path.find('/');
  if (slash == std::string_view::npos) return std::nullopt;
  std::string_view action = path.substr(slash + 1);
  if (action != "allow" && action != "deny") return std::nullopt;
  std::uint64_t id = parseUint(path.substr(0, slash), 0);
  if (id == 0) return std::nullopt;
  return std::pair{id, action == "allow"};
}

const json::string* stringField(const json::object& o, std::string_view key) {
  auto v = o.if_contains(key);
  return v && v->is_string() ? &v->as_string() : nullptr;
}

}  // namespace

std::string_view queryParam(std::string_view query, std::string_view name) {
  while (!query.empty()) {
    auto amp = query.find('&');
    std::string_view pair = query.substr(0, amp);
    auto eq = pair.find('=');
    if (pair.substr(0, eq) == name) return eq == std::string_view::npos ? "" : pair.substr(eq + 1);
    if (amp == std::string_view::npos) break;
    query.remove_prefix(amp + 1);
  }
  return {};
}

std::string_view cookieValue(std::string_view header, std::string_view name) {
  while (!header.empty()) {
    auto semi = header.find(';');
    std::string_view pair = header.substr(0, semi);
    while (!pair.empty() && pair.front() == ' ') pair.remove_prefix(1);
    auto eq = pair.find('=');
    if (eq != std::string_view::npos && pair.substr(0, eq) == name) return pair.substr(eq + 1);
    if (semi == std::string_view::npos) break;
    header.remove_prefix(semi + 1);
  }
  return {};
}

Console::Console(std::string address, std::chrono::seconds sessionLifetime, Handlers handlers, Feed& feed)
    : address_(std::move(address)), sessions_(sessionLifetime), handlers_(std::move(handlers)), feed_(feed) {
  std::string port = address_.substr(address_.rfind(':') + 1);
  std::string host = address_.substr(0, address_.rfind(':'));
  hosts_ = {address_, "localhost:" + port};
  if (host == "localhost") hosts_.push_back("127.0.0.1:" + port);
  for (const auto& h : hosts_) origins_.push_back("http://" + h);
  cookieName_ = "atlasgate_console_" + port;
}

bool Console::hostAllowed(std::string_view host) const {
  for (const auto& h : hosts_)
    if (text::iequals(host, h)) return true;
  return false;
}

std::string Console::signInUrl(SteadyTime now) {
  return fmt::format("http://{}/signin?token={}", address_, sessions_.mintSignIn(now));
}

std::optional<SteadyTime> Console::sessionExpiry(std::string_view key, SteadyTime now) {
  const auto* s = sessions_.find(key, now);
  if (!s) return std::nullopt;
  return s->expires;
}

Response Console::handle(const Request& req, SteadyTime now, std::chrono::system_clock::time_point wallNow) {
  if (!hostAllowed(req.host)) {
    // The Host is the requester's: escaped, cut, and sent as plain text.
    std::string shown = text::forTerminal(text::utf8Prefix(req.host, 200));
    return plain(421, fmt::format("atlasgate console: refused: Host \"{}\" is not this console's address ({})\n", shown,
                                  address_));
  }
  const bool post = req.method == "POST";
  if (!post && req.method != "GET") return plain(405, "atlasgate console: GET and POST only\n");
  std::string_view target = req.target;
  std::string_view path = target.substr(0, target.find('?'));
  std::string_view query = path.size() < target.size() ? target.substr(path.size() + 1) : std::string_view();
  if (auto refusal = crossSite(req, post, path)) return *refusal;

  if (!post && path.starts_with("/assets/")) {
    const Asset* a = findAsset(path);
    if (!a) return plain(404, "atlasgate console: no such file\n");
    Response r;
    r.contentType = std::string(a->contentType);
    r.body = std::string(a->body);
    return r;
  }
  if (!post && path == "/signin") return signIn(query, now);

  std::string key(cookieValue(req.cookie, cookieName_));
  const Sessions::Session* session = sessions_.find(key, now);
  if (!post && (path == "/" || path == "/index.html")) {
    if (!session) return html(401, kSignInNeeded);
    const Asset* a = findAsset("/assets/index.html");
    Response r;
    r.contentType = "text/html; charset=utf-8";
    r.body = a ? std::string(a->body) : std::string();
    r.signedIn = true;
    return r;
  }
  if (!path.starts_with("/api/v1/")) return plain(404, "atlasgate console: no such page\n");
  if (!session) return jsonError(401, "not signed in, or the session expired: run `atlasgate console-url`");
  // The cookie alone is not enough (see sessions.h): the page's token too.
  // An EventSource cannot send headers: the stream takes it in the query.
  std::string_view token = req.csrf;
  if (!post && path == "/api/v1/events" && token.empty()) token = queryParam(query, "csrf");
  if (!Sessions::csrfMatches(*session, token)) return jsonError(403, "missing or wrong CSRF token");
  Response r = api(req, path, query, key, *session, wallNow, now);
  r.signedIn = true;
  return r;
}

// Origin, Content-Type and Sec-Fetch-Site: what the browser says about who
// asks. A POST must come from the console's page with JSON (no HTML form
// can send that); an API call must come from the console's own page (or
// from no page: a tool); nothing but a sign-in link may come from another site.
std::optional<Response> Console::crossSite(const Request& req, bool post, std::string_view path) const {
  if (post) {
    bool sameOrigin = false;
    for (const auto& o : origins_) sameOrigin = sameOrigin || (req.hasOrigin && text::iequals(req.origin, o));
    if (!sameOrigin) return jsonError(403, "refused: a state-changing request must come from the console's own page");
    std::string_view type = req.contentType;
    type = type.substr(0, type.find(';'));
    while (!type.empty() && type.back() == ' ') type.remove_suffix(1);
    if (!text::iequals(type, "application/json")) return jsonError(415, "a state-changing request sends JSON");
  }
  const std::string_view site = req.secFetchSite;
  if (path.starts_with("/api/v1/") && !site.empty() && site != "same-origin" && site != "none")
    return jsonError(403, "refused: an API request from another page");
  if (site == "cross-site" && path != "/signin" && !path.starts_with("/assets/"))
    return plain(403, "atlasgate console: refused: a request from another site\n");
  return std::nullopt;
}

Response Console::signIn(std::string_view query, SteadyTime now) {
  Sessions::Opened opened;
  switch (sessions_.signIn(queryParam(query, "token"), now, opened)) {
    case Sessions::SignInResult::RateLimited: {
      Response r = html(429, kSlowDown);
      r.headers.emplace_back("Retry-After", std::to_string(Sessions::kSignInRefill.count()));
      return r;
    }
    case Sessions::SignInResult::Refused: return html(403, kLinkRefused);
    case Sessions::SignInResult::Opened: break;
  }
  Response r;
  r.status = 303;
  r.contentType = "text/plain; charset=utf-8";
  r.body = "signed in\n";
  // The token goes in the fragment: the browser keeps it, no server (and no
  // log, no Referer) ever sees it.
  r.headers.emplace_back("Location", "/#csrf=" + opened.csrf);
  r.headers.emplace_back("Set-Cookie", fmt::format("{}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}", cookieName_,
                                                   opened.key, opened.lifetime.count()));
  return r;
}

Response Console::api(const Request& req, std::string_view path, std::string_view query, const std::string& key,
                      const Sessions::Session& session, std::chrono::system_clock::time_point wallNow, SteadyTime now) {
  if (req.method == "POST") return apiPost(req, path, key);
  if (path == "/api/v1/session") {
    auto left = std::chrono::duration_cast<std::chrono::seconds>(session.expires - now);
    return jsonAnswer(200, json::object{{"expires_in_s", left.count()}, {"expires_at", isoSeconds(wallNow + left)}});
  }
  if (path == "/api/v1/events") {
    Response r;
    r.eventStream = true;
    r.session = key;
    r.lastEventId = parseUint(req.lastEventId.empty() ? queryParam(query, "since") : req.lastEventId, 0);
    return r;
  }
  if (path == "/api/v1/decisions") return decisions(query);
  if (path == "/api/v1/stats") {
    Response r;
    r.body = feed_.statsJson(wallNow);
    return r;
  }
  if (path == "/api/v1/approvals") return jsonAnswer(200, handlers_.approvals());
  if (path == "/api/v1/agents") return agents();
  if (path == "/api/v1/rules") return jsonAnswer(200, json::object{{"table", handlers_.rules()}});
  if (path == "/api/v1/credentials") return jsonAnswer(200, handlers_.credentials());
  return jsonError(404, "no such API");
}

Response Console::apiPost(const Request& req, std::string_view path, const std::string& key) {
  if (auto action = approvalAction(path)) {
    if (!handlers_.decide(action->first, action->second))
      return jsonError(404, fmt::format("no held request with id {}", action->first));
    return jsonAnswer(200, json::object{{"ok", true}});
  }
  if (path == "/api/v1/explain") return explain(req);
  if (path == "/api/v1/credentials/revoke") {
    boost::system::error_code ec;
    json::value v = json::parse(req.body, ec);
    const json::string* name = !ec && v.is_object() ? stringField(v.as_object(), "name") : nullptr;
    if (!name) return jsonError(400, "revoke needs {\"name\": \"captured:…\"}");
    auto r = handlers_.revoke(std::string_view(*name));
    if (!r) return jsonError(404, r.error().message);
    return jsonAnswer(200, json::object{{"ok", true}});
  }
  if (path == "/api/v1/signout") {
    sessions_.signOut(key);
    Response r = jsonAnswer(200, json::object{{"ok", true}});
    r.headers.emplace_back("Set-Cookie", fmt::format("{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0", cookieName_));
    return r;
  }
  return jsonError(404, "no such API");
}

Response Console::decisions(std::string_view query) const {
  const std::uint64_t since = parseUint(queryParam(query, "since"), 0);
  const std::uint64_t limit =
      std::min<std::uint64_t>(parseUint(queryParam(query, "limit"), 500), kMaxDecisionsPerAnswer);
  Response r;
  r.body = "{\"decisions\":[";
  bool first = true;
  for (const Decision* d : feed_.since(since, limit)) {
    if (!first) r.body += ',';
    first = false;
    r.body += d->json;  // valid JSON in valid UTF-8 (audit::toJson)
  }
  r.body += fmt::format("],\"last\":{}}}", feed_.last());
  return r;
}

Response Console::agents() const {
  json::object o = handlers_.agents();
  json::array list;
  for (const auto& [name, c] : feed_.agents())
    list.push_back(json::object{
        {"agent", name}, {"requests", c.requests}, {"blocked", c.blocked}, {"last_seen", isoSeconds(c.lastSeen)}});
  o["agents"] = std::move(list);
  return jsonAnswer(200, o);
}

Response Console::explain(const Request& req) const {
  boost::system::error_code ec;
  json::value v = json::parse(req.body, ec);
  if (ec || !v.is_object()) return jsonError(400, "explain needs a JSON object");
  const auto& o = v.as_object();
  ExplainQuery q;
  for (auto [key, slot] : {std::pair{"method", &q.method}, {"path", &q.path}, {"agent", &q.agent}, {"host", &q.host}})
    if (const auto* s = stringField(o, key)) *slot = std::string(*s);
  if (const auto* b = stringField(o, "body"); b && !b->empty()) q.body = std::string(*b);
  if (q.method.empty() || q.method.size() > 16) return jsonError(400, "explain needs a method (GET, POST, …)");
  if (!q.path.starts_with('/') || q.path.size() > 8192) return jsonError(400, "explain needs a path starting with /");
  if (q.agent.size() > 256 || q.host.size() > 253) return jsonError(400, "agent or host too long");
  auto r = handlers_.explain(q);
  if (!r) return jsonError(400, r.error().message);
  return jsonAnswer(200, json::object{{"ok", true}, {"explanation", *r}});
}

}  // namespace atlasgate::console
