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
    if (t.host == host) return &t;
  return nullptr;
}

const TargetRuntime* Runtime::findTargetById(std::uint32_t id) const {
  for (const auto& t : targets)
    if (t.id == id) return &t;
  return nullptr;
}

namespace {

constexpr std::string_view kTokenPath = "/api/oauth/token";
constexpr std::string_view kRevokePath = "/api/oauth/revoke";

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
    out.counter = Counter::PhantomIssued;
    // At the agent's cap its oldest phantom goes (see credentials/phantom.h).
    const auto cap = ctx.runtime.config->limits.maxPhantomTokensPerAgent;
    res.body() = json::serialize(json::object{{"access_token", ctx.phantoms.issue(ctx.flow.agent.key, cap, ctx.now)},
                                              {"expires_in", credentials::PhantomTokens::kLifetime.count()},
                                              {"token_type", "Bearer"}});
  }
  res.prepare_payload();
  return out;
}

// A phantom token must be this agent's own, and alive; any other bearer the
// agent sends is simply dropped by the upstream rewrite.
std::optional<LocalResponse> phantomRefusal(const HttpRequest& req, const ExchangeContext& ctx) {
  std::string_view authz = req[http::field::authorization];
  if (authz.size() <= 7 || !iequals(authz.substr(0, 7), "bearer ")) return std::nullopt;
  std::string_view token = authz.substr(7);
  while (!token.empty() && (token.front() == ' ' || token.front() == '\t')) token.remove_prefix(1);
  while (!token.empty() && (token.back() == ' ' || token.back() == '\t')) token.remove_suffix(1);
  using credentials::PhantomCheck;
  PhantomCheck pc = ctx.phantoms.check(token, ctx.flow.agent.key, ctx.now);
  if (pc == PhantomCheck::NotPhantom || pc == PhantomCheck::Valid) return std::nullopt;
  const char* why = pc == PhantomCheck::WrongAgent ? "was issued to another agent"
                    : pc == PhantomCheck::Expired  ? "has expired"
                                                   : "is not known";
  return refuse(Refusal::InvalidToken,
                fmt::format("The access token {}; request a new one from /api/oauth/token.", why));
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

Step decide(HttpRequest& req, const ExchangeContext& ctx, audit::Record& rec) {
  RequestCheck check = checkRequest(req, ctx.target.host);
  rec.path = std::string(req.target());  // absolute-form is now origin-form
  if (!check.ok) {
    rec.decision = "malformed";
    return refuse(check.refusal, check.detail);
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
  if (auto refused = phantomRefusal(req, ctx)) {
    rec.decision = "invalid_token";
    return std::move(*refused);
  }
  // Credentials: the agent's own are dropped; the target's are injected.
  const CredentialRuntime* cred = nullptr;
  if (!ctx.target.credentials.empty()) {
    cred = chooseCredential(ctx.target, ctx.flow.agent.name, d.credential);
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
  prepareUpstreamRequest(req, ctx.target.host);
  req.keep_alive(true);
  try {
    req.prepare_payload();
  } catch (const std::exception& e) {  // e.g. a body on a method that cannot have one
    rec.decision = "malformed";
    return refuse(Refusal::BadRequest, fmt::format("Cannot forward this request: {}.", e.what()));
  }
  return Forward{cred};
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
