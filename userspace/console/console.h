#pragma once
// The web console (listen.console): what a person deciding for agents looks
// at. This is its request handling, without sockets: a Request in, a
// Response out, so that every rule below is unit-tested (console_test.cpp);
// server.h serves it over HTTP and streams events.
//
// Rules, in the order they are applied:
//  1. Host must be the console's configured address or localhost:PORT (a
//     page of another site that rebinds its name to this address is
//     refused: 421).
//  2. GET and POST only. A POST must carry an Origin of the console itself
//     and a JSON body (Content-Type: application/json, which no HTML form
//     can send). An API request that the browser says comes from another
//     page (Sec-Fetch-Site), and anything but a sign-in link from another
//     site, are refused (403).
//  3. /assets/* are public (no secret in them). /signin?token=… consumes a
//     one-time link, sets the session cookie (HttpOnly, SameSite=Strict,
//     Max-Age = listen.console_session) and redirects to /#csrf=<token>.
//  4. The page (/) needs a live session (401). The API needs a live session
//     (401) and the session's CSRF token in X-CSRF-Token (the event stream:
//     ?csrf=), for reads too (403, and nothing changes): see sessions.h for
//     why the cookie alone is not enough.
// Every response gets a strict Content-Security-Policy (scripts and styles
// from the console itself only, no inline code), no-store, nosniff, no
// framing, no referrer. JSON answers are built with Boost.JSON (agent
// strings are escaped there and rendered as text by the page).

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <boost/json/value.hpp>

#include "common/result.h"
#include "console/feed.h"
#include "console/sessions.h"

namespace atlasgate::console {

struct Request {
  std::string method;  // "GET", "POST", …
  std::string target;  // origin-form, with the query
  std::string host;
  bool hasOrigin = false;
  std::string origin;
  std::string secFetchSite;  // "" when absent
  std::string cookie;        // the Cookie header
  std::string csrf;          // X-CSRF-Token
  std::string lastEventId;   // Last-Event-ID (an EventSource that reconnects)
  std::string contentType;
  std::string body;
};

struct Response {
  unsigned status = 200;
  std::string contentType = "application/json";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;  // besides the security headers
  // GET /api/v1/events: the server streams events from here on, for as
  // long as this session lives; lastEventId: where the client left off.
  bool eventStream = false;
  // The request carried a live session (the server keeps such connections
  // open before others; the rest are closed after their answer).
  bool signedIn = false;
  std::string session;
  std::uint64_t lastEventId = 0;
};

struct ExplainQuery {
  std::string method, path, agent, host;
  std::optional<std::string> body;
};

// What the console asks the daemon; each is called on the daemon's loop.
struct Handlers {
  std::function<boost::json::value()> approvals;  // {"approvals":[…]} as the control socket has it
  std::function<bool(std::uint64_t id, bool allow)> decide;
  std::function<boost::json::object()> agents;  // connections, attached, pods, containers
  std::function<std::string()> rules;           // the compiled rule table
  std::function<Result<std::string>(const ExplainQuery&)> explain;
  std::function<boost::json::value()> credentials;  // {"capture":…,"captured":[…],"configured":[…]}
  std::function<Result<void>(std::string_view name)> revoke;
};

// The security headers every response carries.
extern const std::vector<std::pair<std::string_view, std::string_view>> kSecurityHeaders;

class Console {
 public:
  // address: the configured "HOST:PORT" (a concrete address, see config).
  Console(std::string address, std::chrono::seconds sessionLifetime, Handlers handlers, Feed& feed);

  Response handle(const Request& req, SteadyTime now, std::chrono::system_clock::time_point wallNow);

  // `atlasgate console-url`: a one-time link, valid for 10 minutes.
  std::string signInUrl(SteadyTime now);
  // Whether an event stream's session is still open, and until when.
  std::optional<SteadyTime> sessionExpiry(std::string_view key, SteadyTime now);

  bool hostAllowed(std::string_view host) const;
  const std::string& cookieName() const { return cookieName_; }
  Feed& feed() { return feed_; }

 private:
  Response api(const Request& req, std::string_view path, std::string_view query, const std::string& key,
               const Sessions::Session& session, std::chrono::system_clock::time_point wallNow, SteadyTime now);
  Response apiPost(const Request& req, std::string_view path, const std::string& key);
  Response signIn(std::string_view query, SteadyTime now);
  std::optional<Response> crossSite(const Request& req, bool post, std::string_view path) const;
  Response decisions(std::string_view query) const;
  Response agents() const;
  Response explain(const Request& req) const;

  std::string address_;
  std::vector<std::string> hosts_;    // accepted Host values
  std::vector<std::string> origins_;  // accepted Origin values
  std::string cookieName_;            // atlasgate_console_<port>: cookies are not per port
  Sessions sessions_;
  Handlers handlers_;
  Feed& feed_;
};

// One query parameter's raw value ("" when absent).
std::string_view queryParam(std::string_view query, std::string_view name);
// One cookie's value from a Cookie header ("" when absent).
std::string_view cookieValue(std::string_view header, std::string_view name);

}  // namespace atlasgate::console
