#include "proxy/exchange.h"

#include <fnmatch.h>

#include <algorithm>
#include <exception>

#include <boost/asio/ssl/error.hpp>
#include <boost/beast/core/error.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/json/array.hpp>
#include <boost/json/object.hpp>
#include <boost/json/serialize.hpp>
#include <boost/url/params_view.hpp>
#include <boost/url/parse_query.hpp>
#include <fmt/format.h>

#include "common/log.h"
#include "common/text.h"
#include "credentials/digest.h"
#include "credentials/oauth.h"
#include "policy/path.h"
#include "proxy/rewrite.h"

namespace atlasgate::proxy {

namespace http = boost::beast::http;
namespace json = boost::json;
namespace urls = boost::urls;
using text::iequals;

ErrorResponse makeErrorResponse(unsigned status, std::string_view errorCode, std::string_view detail,
                                const std::vector<std::string>& parameters, bool shouldRetry, unsigned httpVersion) {
  ErrorResponse res{static_cast<http::status>(status), httpVersion};
  json::array params;
  for (const auto& p : parameters) params.emplace_back(p);
  json::object o{{"error", status},
                 {"errorCode", errorCode},
                 {"reason", http::obsolete_reason(static_cast<http::status>(status))},
                 {"detail", detail},
                 {"parameters", std::move(params)}};
  res.set(http::field::content_type, "application/json");
  res.set(http::field::server, "atlasgate");
  res.set("x-should-retry", shouldRetry ? "true" : "false");
  res.body() = json::serialize(o);
  res.prepare_payload();
  return res;
}

ErrorResponse refusalResponse(Refusal r, std::string_view detail, const std::vector<std::string>& parameters,
                              long long retryAfter) {
  const RefusalInfo& info = refusalInfo(r);
  ErrorResponse res = makeErrorResponse(info.status, info.code, detail, parameters, info.retry);
  if (retryAfter > 0) res.set(http::field::retry_after, std::to_string(retryAfter));
  return res;
}

LocalResponse refuse(Refusal r, std::string_view detail, const std::vector<std::string>& parameters,
                     long long retryAfter) {
  const RefusalInfo& info = refusalInfo(r);
  return LocalResponse{refusalResponse(r, detail, parameters, retryAfter), info.counter, info.code, info.closes};
}

const TargetRuntime* Runtime::findTarget(std::string_view host) const {
  for (const auto& t : targets)
    if (t.host == host && t.protocol == config::Protocol::Https) return &t;
  return nullptr;
}

const TargetRuntime* Runtime::findMongodbTarget(std::string_view host) const {
  for (const auto& t : targets) {
    if (t.protocol != config::Protocol::Mongodb) continue;
    if (t.host == host) return &t;
    // "*.suffix": any name strictly below suffix.
    if (t.host.starts_with("*.")) {
      const std::string_view suffix = std::string_view(t.host).substr(1);  // ".suffix"
      if (host.size() > suffix.size() && host.ends_with(suffix)) return &t;
    }
  }
  return nullptr;
}

const TargetRuntime* Runtime::findTargetById(std::uint32_t id) const {
  for (const auto& t : targets)
    if (t.id == id) return &t;
  return nullptr;
}

const CredentialRuntime* chooseCredential(const TargetRuntime& t, const std::string& agent, std::string_view wanted) {
  for (const auto& c : t.credentials) {
    if (!wanted.empty()) {
      if (c.name == wanted) return &c;
      continue;
    }
    if (c.agents.empty()) return &c;
    for (const auto& g : c.agents)
      if (::fnmatch(g.c_str(), agent.c_str(), 0) == 0) return &c;
  }
  return nullptr;
}

namespace {

constexpr std::string_view kTokenPath = "/api/oauth/token";
constexpr std::string_view kRevokePath = "/api/oauth/revoke";

// Value of `key` in an application/x-www-form-urlencoded body ("" if absent
// or if the body is no valid form).
std::string formValue(std::string_view body, std::string_view key) {
  if (!urls::parse_query(body)) return {};
  urls::encoding_opts opt;
  opt.space_as_plus = true;
  for (auto param : urls::params_view(body, opt))
    if (param.key == key && param.has_value) return param.value;
  return {};
}

policy::Request policyRequest(const HttpRequest& req, const ExchangeContext& ctx) {
  policy::Request p;
  p.method = req.method_string();
  p.target = req.target();
  p.host = ctx.target.host;
  p.agent = ctx.flow.agent.name;
  p.podLabels = ctx.flow.agent.podLabels.get();
  p.containerLabels = ctx.flow.agent.containerLabels.get();
  if (!req.body().empty()) p.body = std::string_view(req.body());
  // A method-override header makes the request Malformed (policy.h).
  for (std::string_view name : policy::kMethodOverrideHeaders) {
    if (req.find(name) != req.end()) {
      p.methodOverride = name;
      break;
    }
  }
  return p;
}

// The client credentials of a token request name a captured service
// account: the phantom secret must be one of its secrets' phantoms, and the
// agent one that may use it; `bound` is then the vault entry. Any other
// client id keeps today's meaning (the target's configured credential).
bool capturedClient(const HttpRequest& req, const ExchangeContext& ctx, std::string& bound) {
  if (!ctx.captured) return true;
  std::optional<credentials::ClientCredentials> cc =
      credentials::parseBasicCredentials(req[http::field::authorization]);
  if (!cc) {
    std::string id = formValue(req.body(), "client_id");
    if (id.empty()) return true;
    cc = credentials::ClientCredentials{std::move(id), formValue(req.body(), "client_secret")};
  }
  Captured::Found sa = ctx.captured->serviceAccount(ctx.target.host, cc->id, cc->secret, ctx.flow.agent.name);
  if (!sa.captured) return true;
  if (!sa.usable) {
    log::warn("conn {} agent {}: OAuth with captured client id {} refused (not its phantom, or not this agent's)",
              ctx.flow.id, ctx.flow.agent.name, text::forTerminal(cc->id));
    return false;
  }
  bound = sa.usable->entry.name;
  return true;
}

// POST /api/oauth/token and /api/oauth/revoke: clients that run the OAuth
// flow themselves get a phantom token, never a real one.
LocalResponse oauthAnswer(const HttpRequest& req, bool token, const ExchangeContext& ctx) {
  LocalResponse out{ErrorResponse{http::status::ok, req.version()}, std::nullopt, {}, false};
  auto& res = out.response;
  res.set(http::field::content_type, "application/json");
  res.set(http::field::cache_control, "no-store");
  res.set(http::field::pragma, "no-cache");
  res.set(http::field::server, "atlasgate");
  if (!token) {
    ctx.phantoms.revoke(formValue(req.body(), "token"), ctx.flow.agent.key);
    res.body() = "{}";
  } else if (std::string grant = formValue(req.body(), "grant_type"); grant != "client_credentials") {
    res.result(http::status::bad_request);
    res.body() = json::serialize(json::object{
        {"error", grant.empty() ? "invalid_request" : "unsupported_grant_type"},
        {"error_description", grant.empty() ? "grant_type is missing" : "only client_credentials is supported"}});
  } else {
    std::string bound;  // "" = the target's configured credential
    if (!capturedClient(req, ctx, bound)) {
      // A captured client id with a phantom that is not its own (or another
      // agent's): the agent learns nothing more than Atlas would say.
      out.counter = Counter::CapturedRefused;
      res.result(http::status::unauthorized);
      res.body() = json::serialize(
          json::object{{"error", "invalid_client"}, {"error_description", "Invalid client credentials."}});
      res.prepare_payload();
      return out;
    }
    out.counter = Counter::PhantomIssued;
    // At the agent's cap its oldest phantom goes (see credentials/phantom.h).
    const auto cap = ctx.runtime.config->limits.maxPhantomTokensPerAgent;
    res.body() = json::serialize(
        json::object{{"access_token", ctx.phantoms.issue(ctx.flow.agent.key, cap, ctx.now, std::move(bound))},
                     {"expires_in", credentials::PhantomTokens::kLifetime.count()},
                     {"token_type", "Bearer"}});
  }
  res.prepare_payload();
  return out;
}

// A phantom token must be this agent's own, and alive; any other bearer the
// agent sends is simply dropped by the upstream rewrite.
std::optional<LocalResponse> phantomRefusal(const HttpRequest& req, const ExchangeContext& ctx, std::string& bound) {
  std::string_view authz = req[http::field::authorization];
  if (authz.size() <= 7 || !iequals(authz.substr(0, 7), "bearer ")) return std::nullopt;
  std::string_view token = text::trimOws(authz.substr(7));
  using credentials::PhantomCheck;
  PhantomCheck pc = ctx.phantoms.check(token, ctx.flow.agent.key, ctx.now, &bound);
  if (pc == PhantomCheck::NotPhantom || pc == PhantomCheck::Valid) return std::nullopt;
  const char* why = pc == PhantomCheck::WrongAgent ? "was issued to another agent"
                    : pc == PhantomCheck::Expired  ? "has expired"
                                                   : "is not known";
  return refuse(Refusal::InvalidToken,
                fmt::format("The access token {}; request a new one from /api/oauth/token.", why));
}

// 401 with atlasgate's own Digest challenge (captured API keys).
LocalResponse digestChallenge(const ExchangeContext& ctx, bool stale, audit::Record& rec) {
  rec.decision = "challenged";
  LocalResponse out = refuse(Refusal::DigestRequired, "You are not authorized for this resource.");
  out.response.set(http::field::www_authenticate, ctx.captured->nonces().challenge(ctx.flow.agent.key, stale));
  return out;
}

// An Authorization: Digest answer for a captured API key: verified against
// its phantom, then the request goes upstream with the real key.
std::optional<LocalResponse> digestAnswer(const HttpRequest& req, const ExchangeContext& ctx, Forward& fwd,
                                          audit::Record& rec) {
  auto a = credentials::parseDigestAuthorization(req[http::field::authorization]);
  if (!a) return digestChallenge(ctx, false, rec);
  Captured::Found found = ctx.captured->apiKey(ctx.target.host, a->username, ctx.flow.agent.name);
  // A public key atlasgate never captured: the agent's own credentials are
  // dropped as always, and the target's configured one goes upstream.
  if (!found.captured) return std::nullopt;
  using Check = credentials::DigestNonces::Check;
  Check nonce = ctx.captured->nonces().check(a->nonce, ctx.flow.agent.key);
  if (nonce != Check::Valid) return digestChallenge(ctx, nonce == Check::Stale, rec);
  std::optional<vault::Unsealed>& key = found.usable;
  // The uri answered for must be this request's: an answer for another path
  // is not an answer for this one.
  if (!key || a->uri != req.target() || !credentials::verifyDigest(*a, req.method_string(), key->phantom)) {
    log::warn("conn {} agent {}: Digest for public key {} refused ({})", ctx.flow.id, ctx.flow.agent.name,
              text::forTerminal(a->username),
              !key                     ? "not a captured key this agent may use"
              : a->uri != req.target() ? "uri mismatch"
                                       : "wrong answer");
    LocalResponse out = digestChallenge(ctx, false, rec);
    out.counter = Counter::CapturedRefused;
    rec.decision = "captured_refused";
    return out;
  }
  fwd.owned = ctx.captured->runtimeFor(*key);
  fwd.credential = fwd.owned.get();
  rec.credential = key->entry.name;
  return std::nullopt;
}

// Which captured credential, if any, the request uses: a Digest answer, a
// phantom token bound to a captured secret, or (no Authorization at all)
// an agent that holds captured API keys is challenged for one of them.
std::optional<LocalResponse> capturedCredential(const HttpRequest& req, const ExchangeContext& ctx,
                                                const std::string& bound, Forward& fwd, audit::Record& rec) {
  std::string_view authz = req[http::field::authorization];
  if (authz.size() > 7 && iequals(authz.substr(0, 7), "digest ")) return digestAnswer(req, ctx, fwd, rec);
  if (!bound.empty()) {
    fwd.owned = ctx.captured->runtimeNamed(bound);
    // A phantom token is for the target whose secret it stands for: never
    // fetch one target's real token for another.
    // And still this agent's to use (a reload may have narrowed capture.share).
    if (!fwd.owned || fwd.owned->host != ctx.target.host ||
        !ctx.captured->mayUse(fwd.owned->owner, ctx.flow.agent.name)) {
      fwd.owned.reset();
      rec.decision = "invalid_token";
      return refuse(Refusal::InvalidToken, "The access token's credential was revoked; request a new one.");
    }
    fwd.credential = fwd.owned.get();
    rec.credential = bound;
    return std::nullopt;
  }
  if (authz.empty() && ctx.captured->challengeHolders() &&
      ctx.captured->holdsApiKey(ctx.target.host, ctx.flow.agent.name))
    return digestChallenge(ctx, false, rec);
  return std::nullopt;
}

// A database user created or changed with a password: Atlas gets a strong
// random one, sealed (pending) before the request leaves.
std::optional<LocalResponse> captureOutgoing(HttpRequest& req, const ExchangeContext& ctx, Forward& fwd,
                                             audit::Record& rec) {
  if (!fwd.capture || fwd.capture->action == capture::Action::Forget) return std::nullopt;
  // ?envelope=true wraps Atlas' answer in another shape; a minting call must
  // come back as Atlas documents it, or its secret could not be found.
  std::string_view query = req.target().substr(std::min(req.target().size(), req.target().find('?')));
  if (query.find("envelope") != std::string_view::npos) {
    rec.decision = "malformed";
    return refuse(Refusal::BadRequest, "The envelope parameter is not supported on calls that create credentials.");
  }
  if (fwd.capture->action != capture::Action::SetDatabasePassword) return std::nullopt;
  if (req.find(http::field::content_encoding) != req.end()) {
    rec.decision = "malformed";
    return refuse(Refusal::BadRequest, "A database user's body must not be content-encoded.");
  }
  auto swap = capture::swapDatabasePassword(*fwd.capture, req.body(),
                                            capture::Origin::current(ctx.target.host, ctx.flow.agent.name));
  if (!swap) {
    rec.decision = "malformed";
    return refuse(Refusal::BadRequest, fmt::format("Cannot create this database user: {}.", swap.error().message));
  }
  if (!*swap) return std::nullopt;
  capture::Minted& m = (*swap)->minted;
  fwd.pendingFinal = m.entry.name;
  // Unique per request: two changes of one user in flight keep apart.
  m.entry.name += "@pending:" + capture::strongPassword().substr(0, 12);
  fwd.watchFor = m.secret;
  fwd.pending = m.entry.name;
  if (auto r = ctx.captured->store(m); !r) {
    log::error("conn {} agent {}: database user {} not sent to Atlas: the vault cannot be written: {}", ctx.flow.id,
               ctx.flow.agent.name, text::forTerminal(m.entry.object), r.error().message);
    rec.error = std::string(kCaptureFailed);
    return refuse(Refusal::CaptureFailed,
                  "atlasgate could not keep this database user's password; the request was not sent. Retry later.");
  }
  req.body() = std::move((*swap)->body);
  return std::nullopt;
}

Hold holdFor(const HttpRequest& req, const ExchangeContext& ctx, policy::Decision d, const audit::Record& rec) {
  Hold h;
  h.info.agent = ctx.flow.agent.name;
  h.info.agentKey = ctx.flow.agent.key;
  h.info.method = rec.method;
  h.info.host = ctx.target.host;
  h.info.path = rec.path;
  h.info.rule = d.ruleName;
  previewBody(h.info, req.body());
  h.info.timeout = d.approveTimeout;  // positive: the policy refuses an approve rule without one
  h.decision = std::move(d);
  return h;
}

}  // namespace

// A request that would touch a database user atlasgate manages: its
// temporary users (named "atlasgate-...") and the configured database_user
// names. Otherwise an agent could give its temporary user more roles, or
// take over another agent's. A POST whose username cannot be read is left
// to capture, which refuses an unreadable database-user body.
static std::optional<std::string> managedUserTouched(const HttpRequest& req, const ExchangeContext& ctx) {
  for (const std::string& user : capture::databaseUsersTouched(req.method_string(), req.target(), req.body())) {
    if (user.size() >= 10 && policy::asciiLower(user.substr(0, 10)) == "atlasgate-") return user;
    for (const auto& t : ctx.runtime.config->targets)
      for (const auto& c : t.credentials)
        if (c.databaseUser && c.databaseUser->username == user) return user;
  }
  return std::nullopt;
}

Step decide(HttpRequest& req, const ExchangeContext& ctx, audit::Record& rec) {
  RequestCheck check = checkRequest(req, ctx.target.host);
  rec.path = std::string(req.target());  // absolute-form is now origin-form
  if (!check.ok) {
    rec.decision = "malformed";
    return refuse(check.refusal, check.detail);
  }
  if (auto managed = managedUserTouched(req, ctx)) {
    rec.rule = "atlasgate:managed-database-user";
    rec.decision = "block";
    return refuse(Refusal::Blocked,
                  fmt::format("The database user \"{}\" is atlasgate's own (a temporary_user or database_user of a "
                              "mongodb target): agents cannot create, change or delete it.",
                              text::forTerminal(*managed)),
                  {rec.rule});
  }
  // Rules decide before any credential is touched.
  policy::Decision d = ctx.runtime.policy->evaluate(policyRequest(req, ctx), ctx.now);
  rec.rule = d.ruleName;
  rec.decision = d.logOnlyWouldBe ? "log_only" : policy::verdictName(d.verdict);
  switch (d.verdict) {
    case policy::Verdict::Allow: return admitted(req, ctx, d, rec);
    case policy::Verdict::Malformed:
      return refuse(Refusal::Malformed, fmt::format("Malformed request: {}.", d.malformedReason));
    case policy::Verdict::Block:
      return refuse(Refusal::Blocked,
                    fmt::format("Blocked by rule \"{}\": {} {} is not allowed for agent \"{}\".", d.ruleName,
                                rec.method, rec.path, ctx.flow.agent.name),
                    {d.ruleName});
    case policy::Verdict::RateLimited: {
      auto secs = std::max<long long>(1, d.retryAfter.count());
      return refuse(Refusal::RateLimited,
                    fmt::format("Rate limit of rule \"{}\" exceeded for agent \"{}\". Please retry after {} seconds.",
                                d.ruleName, ctx.flow.agent.name, secs),
                    {d.ruleName}, secs);
    }
    case policy::Verdict::Approve: return holdFor(req, ctx, std::move(d), rec);
  }
  return refuse(Refusal::Malformed, "Malformed request: no verdict.");
}

Step admitted(HttpRequest& req, const ExchangeContext& ctx, const policy::Decision& d, audit::Record& rec) {
  std::string_view pathOnly = req.target().substr(0, req.target().find('?'));
  if (req.method() == http::verb::post && (pathOnly == kTokenPath || pathOnly == kRevokePath)) {
    rec.decision = "local";
    return oauthAnswer(req, pathOnly == kTokenPath, ctx);
  }
  std::string bound;  // a phantom token's captured credential
  if (auto refused = phantomRefusal(req, ctx, bound)) {
    rec.decision = "invalid_token";
    return std::move(*refused);
  }
  Forward fwd;
  // A rule that names the credential decides it: a captured one never
  // overrides the operator's choice (e.g. a read-only key for DELETEs).
  if (ctx.captured && d.credential.empty()) {
    if (auto local = capturedCredential(req, ctx, bound, fwd, rec)) return std::move(*local);
  }
  // Credentials: the agent's own are dropped; the target's are injected.
  const CredentialRuntime* cred = fwd.credential;
  if (!cred && !ctx.target.credentials.empty()) {
    cred = chooseCredential(ctx.target, ctx.flow.agent.name, d.credential);
    if (!cred && ctx.captured && ctx.captured->anyApiKey(ctx.target.host) &&
        req.find(http::field::authorization) == req.end())
      return digestChallenge(ctx, false, rec);  // perhaps it holds a captured key: let it say so
    if (!cred) {
      // The agent learns nothing about the credentials; the log names them.
      log::warn("conn {} agent {}: no credential of {} for this agent{}", ctx.flow.id, ctx.flow.agent.name,
                ctx.target.host,
                d.credential.empty() ? std::string()
                                     : fmt::format(" (rule \"{}\" names credential \"{}\")", d.ruleName, d.credential));
      return refuse(Refusal::NoCredential, "No credential is available for this request.");
    }
    rec.credential = cred->description;
  }
  fwd.credential = cred;
  if (ctx.captured) {
    fwd.capture = capture::planFor(req.method_string(), req.target());
    if (auto local = captureOutgoing(req, ctx, fwd, rec)) return std::move(*local);
  }
  prepareUpstreamRequest(req, ctx.target.host);
  // A minting answer is read whole and rewritten: it must arrive unencoded
  // and whole (a Range would make Atlas send a part the rewrite cannot see).
  if (fwd.capture && fwd.capture->action != capture::Action::Forget) {
    req.set(http::field::accept_encoding, "identity");
    req.erase(http::field::range);
    req.erase(http::field::if_range);
  }
  req.keep_alive(true);
  try {
    req.prepare_payload();
  } catch (const std::exception& e) {  // e.g. a body on a method that cannot have one
    rec.decision = "malformed";
    return refuse(Refusal::BadRequest, fmt::format("Cannot forward this request: {}.", e.what()));
  }
  return fwd;
}

LocalResponse approvalQueueFull(const Hold& hold, const Admission& admission, audit::Record& rec) {
  const char* cap = admission.full == HoldCap::PerAgent    ? "this agent's held requests (max_held_per_agent)"
                    : admission.full == HoldCap::BodyBytes ? "the bodies of held requests (max_held_body_bytes)"
                                                           : "held requests (max_held_requests)";
  log::info("agent {}: {} {} not held for approval by rule \"{}\": the cap on {} is reached", hold.info.agent,
            rec.method, rec.path, hold.decision.ruleName, cap);
  rec.decision = "approval_queue_full";
  return refuse(Refusal::ApprovalQueueFull,
                fmt::format("Request {} {} needs an operator's approval (rule \"{}\"), but the cap on {} is reached. "
                            "Please retry after {} seconds.",
                            rec.method, rec.path, hold.decision.ruleName, cap, admission.retryAfter.count()),
                {hold.decision.ruleName}, admission.retryAfter.count());
}

LocalResponse approvalRefused(const Hold& hold, ApprovalOutcome outcome, audit::Record& rec) {
  const bool denied = outcome == ApprovalOutcome::Denied;
  rec.decision = denied ? "denied" : "approval_timeout";
  return refuse(
      Refusal::ApprovalDenied,
      fmt::format("Request {} {} for agent \"{}\" was {} (rule \"{}\").", rec.method, rec.path, hold.info.agent,
                  denied ? "denied by an operator" : "not approved in time", hold.decision.ruleName),
      {hold.decision.ruleName});
}

std::optional<LocalResponse> headRefusal(const HttpRequest& head, std::optional<std::uint64_t> contentLength,
                                         const config::Limits& limits) {
  if (static_cast<std::size_t>(std::distance(head.begin(), head.end())) > limits.maxHeaders)
    return refuse(Refusal::HeadersTooLarge,
                  fmt::format("The request has more than {} header fields.", limits.maxHeaders));
  if (contentLength && *contentLength > limits.maxBodyBytes)
    return refuse(Refusal::BodyTooLarge, fmt::format("The request body exceeds {} bytes.", limits.maxBodyBytes));
  return std::nullopt;
}

std::optional<LocalResponse> readRefusal(boost::system::error_code ec, bool body, const config::Limits& limits) {
  if (ec == http::error::end_of_stream || ec == boost::asio::ssl::error::stream_truncated) return std::nullopt;
  const char* part = body ? "body" : "head";
  if (ec == boost::beast::error::timeout)
    return refuse(Refusal::RequestTimeout, fmt::format("The request {} did not arrive in time.", part));
  if (ec == http::error::body_limit)
    return refuse(Refusal::BodyTooLarge, fmt::format("The request body exceeds {} bytes.", limits.maxBodyBytes));
  if (!body && (ec == http::error::header_limit || ec == http::error::buffer_overflow))
    return refuse(Refusal::HeadersTooLarge, fmt::format("The request head exceeds {} bytes.", limits.maxHeaderBytes));
  return refuse(Refusal::BadRequest, fmt::format("Malformed HTTP request{}: {}.", body ? " body" : "", ec.message()));
}

LocalResponse upstreamBusy(std::string_view host, const config::Limits& limits) {
  // Not a failure of the target: a queue that did not move in time.
  auto secs = std::max<long long>(1, limits.upstreamQueueTimeout.count());
  return refuse(Refusal::UpstreamBusy,
                fmt::format("All {} connections to {} stayed busy for {} seconds. Please retry after {} seconds.",
                            limits.maxUpstreamConnections, host, limits.upstreamQueueTimeout.count(), secs),
                {}, secs);
}

LocalResponse upstreamRefusal(boost::system::error_code ec, std::string_view step, std::string_view host) {
  return refuse(ec == boost::beast::error::timeout ? Refusal::UpstreamTimeout : Refusal::UpstreamUnavailable,
                fmt::format("{} could not be reached ({} failed: {}).", host, step, ec.message()));
}

}  // namespace atlasgate::proxy
