#pragma once
// What to do with one HTTP request, decided without any socket.
//
// The session (server.cpp) reads a request and asks decide(); the answer is
// one of three steps:
//   LocalResponse  atlasgate answers itself (a refusal from the kRefusals
//                  table, or a local OAuth answer with a phantom token);
//   Hold           an approve rule: the session holds the request for an
//                  operator, then asks admitted() (approved) or
//                  approvalRefused() (denied, timed out, over a cap);
//   Forward        the request, rewritten for the target, goes upstream
//                  with this credential (the session runs the credential
//                  rounds: token, Digest challenge).
// Every field of the audit record that the decision knows is filled here.
// tests/unit/proxy/exchange_test.cpp walks every branch.

#include <chrono>
#include <memory>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>

#include <boost/beast/http/message.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/system/error_code.hpp>

#include "audit/audit.h"
#include "credentials/phantom.h"
#include "policy/policy.h"
#include "proxy/approvals.h"
#include "proxy/capture.h"
#include "proxy/captured.h"
#include "proxy/counters.h"
#include "proxy/errors.h"
#include "proxy/runtime.h"

namespace atlasgate::proxy {

using HttpRequest = boost::beast::http::request<boost::beast::http::string_body>;

struct LocalResponse {
  ErrorResponse response;
  std::optional<Counter> counter;  // bumped when sent
  std::string_view errorCode;      // the audit record's error; "" for a local success
  bool close = false;              // the connection ends after it
};

struct Hold {
  ApprovalInfo info;
  policy::Decision decision;
};

struct Forward {
  const CredentialRuntime* credential = nullptr;   // nullptr: the target has none configured
  std::shared_ptr<const CredentialRuntime> owned;  // a captured credential: kept alive by the request
  std::optional<capture::Plan> capture;            // the request mints or drops a credential
  std::string pending;                             // a database-user password sealed before sending:
  std::string pendingFinal;                        //   its pending entry, and its name once Atlas said yes
  std::string watchFor;                            //   and the password itself, which the answer must not show
};

using Step = std::variant<LocalResponse, Hold, Forward>;

struct ExchangeContext {
  const Runtime& runtime;
  const TargetRuntime& target;
  const Flow& flow;
  credentials::PhantomTokens& phantoms;
  std::chrono::steady_clock::time_point now;
  Captured* captured = nullptr;  // nullptr: capture is off
};

// The target's credential named `wanted`, or ("" wanted) the first whose
// agent globs match (none: every agent); nullptr when there is none.
const CredentialRuntime* chooseCredential(const TargetRuntime& t, const std::string& agent, std::string_view wanted);

// A refusal from the table; retryAfter > 0 adds Retry-After.
LocalResponse refuse(Refusal r, std::string_view detail, const std::vector<std::string>& parameters = {},
                     long long retryAfter = 0);

// Framing and addressing checks, then the rules; then admitted() unless held.
Step decide(HttpRequest& req, const ExchangeContext& ctx, audit::Record& rec);

// The rules let the request through (or an operator approved it): local
// OAuth answers, phantom tokens, the credential, the upstream rewrite.
Step admitted(HttpRequest& req, const ExchangeContext& ctx, const policy::Decision& d, audit::Record& rec);

// A held request that will not go on: over a max_held_* cap (admission is
// approvals' answer), or denied or not approved in time (outcome).
LocalResponse approvalQueueFull(const Hold& hold, const Admission& admission, audit::Record& rec);
LocalResponse approvalRefused(const Hold& hold, ApprovalOutcome outcome, audit::Record& rec);

// A request head that arrived but breaks a limit (field count, announced
// body size); nullopt when it is within them.
std::optional<LocalResponse> headRefusal(const HttpRequest& head, std::optional<std::uint64_t> contentLength,
                                         const config::Limits& limits);

// A request that could not be read: the head (body = false) or the body.
// nullopt when the agent simply went away (nothing to answer).
std::optional<LocalResponse> readRefusal(boost::system::error_code ec, bool body, const config::Limits& limits);

// Every upstream connection of the target stayed busy past
// limits.upstream_queue_timeout.
LocalResponse upstreamBusy(std::string_view host, const config::Limits& limits);
// The target could not be used: step is "connect", "write" or "read".
LocalResponse upstreamRefusal(boost::system::error_code ec, std::string_view step, std::string_view host);

}  // namespace atlasgate::proxy
