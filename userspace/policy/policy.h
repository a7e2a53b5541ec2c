#pragma once
// The rules engine: compiles config::Rules once into a matcher and decides,
// for each request, allow / block / rate_limit / approve (README "Configuration").
// Pure logic: no I/O. The Policy owns copies of everything it needs, so the
// config it was compiled from may be destroyed (e.g. on reload).
//
// Matching. A rule applies when all of its filters hold: method (any of,
// case-insensitive; empty = any), host (exact, case-insensitive, port and a
// trailing dot ignored; empty = any), path pattern (path.h; empty = any),
// agent (fnmatch globs without FNM_PATHNAME, so `*` matches '/' as in
// "ns/pod"; empty = any) and every `when:` condition on the JSON body
// (condition.h). The first rule that applies decides; none -> rules.default.
//
// Cost. Compile builds a segment trie over all path patterns (path_index.h).
// evaluate() normalises the target, walks the trie once to collect the
// candidate rules whose *path* matches -
//   O(path segments x live trie nodes x log branching), independent of the
//   number of rules for path-only rule sets -
// then checks method/host/agent/conditions of the candidates in rule order,
// O(candidates), stopping at the first that applies. The body is parsed at
// most once per evaluation, and only when a candidate that passed the other
// filters has conditions.
//
// Encoded slashes (see path.h). When the target has an alternate view (a
// segment decoded to contain '/', or a ";param"), both views are decided in
// full - each by its first applying rule, or by rules.default when none
// applies - and the stricter outcome wins:
//   malformed > block > approve > rate_limit > log_only > allow.
// The reported rule (Decision::ruleName, the audit's `rule`) is the one that
// decided the winning view; on a tie it is the primary view's (the path read
// with each decoded segment whole). The default counts like a rule: with
// `default: block`, an allow rule for `/groups/{g}/clusters/{c}` does not
// allow `.../clusters/C%2Fbackup%2Fsnapshots`, whose split reading
// (`.../clusters/C/backup/snapshots`) no rule allows. So a legitimate value
// holding an encoded '/' (`.../accessList/10.0.0.0%2F24`) under a deny-by-
// default policy needs a rule that also allows its split reading (e.g.
// `.../accessList/{ip}/{prefixLength}` or `.../accessList/**`).
// When both views are decided by rate_limit rules, different ones, the
// request takes a token from both and is refused (RateLimited) when either is
// empty; the reported rule is still the primary view's, so that explain(),
// which takes no token, names the same rule.
//
// Method overrides. Servers and frameworks commonly honour
// X-HTTP-Method-Override, X-HTTP-Method or X-Method-Override and execute
// *that* method instead of the request line's. The rules decide on the
// request line's method only, so a request carrying one of these headers is
// refused as Malformed (400) before any rule is looked at; the caller reports
// which one it saw in Request::methodOverride (kMethodOverrideHeaders).
//
// Unreadable bodies. When the deciding candidate has conditions and the body
// cannot be checked (not JSON, too large, regex blow-up), the condition's
// truth is Unknown. By default (UncheckableBody::Reject) the request is then
// Malformed: otherwise padding the body past the size cap or a parser
// difference with Atlas (e.g. JSON Atlas accepts and we do not) would step
// around a block rule. UncheckableBody::ConditionsFail makes Unknown simply
// "does not hold" instead. The guardrails preset (config.h) relies on Reject,
// the daemon's setting: an access-list entry whose body cannot be read is
// refused, never let past the approve rule that would have held it.
//
// Thread safety: evaluate() and explain() may be called concurrently; only the
// rate-limit buckets are mutable and each rule's are behind a mutex.

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "config/config.h"

namespace atlasgate::policy {

class PathIndex;

// Request headers that make a server execute another method than the request
// line's (see "Method overrides" above). Header names compare
// case-insensitively.
inline constexpr std::array<std::string_view, 3> kMethodOverrideHeaders = {"X-HTTP-Method-Override", "X-HTTP-Method",
                                                                           "X-Method-Override"};

struct Request {
  std::string_view method;
  std::string_view target;               // origin-form request-target; the query is ignored
  std::string_view host;                 // the target host (":port" and a trailing '.' are ignored)
  std::string_view agent;                // the agent's name ("" when unknown)
  std::optional<std::string_view> body;  // nullopt: no body
  // The labels of the agent's Kubernetes pod; nullptr when it is no pod
  // (then a rule with pod_labels does not apply).
  const std::map<std::string, std::string>* podLabels = nullptr;
  // The labels of the agent's container (discovery.containers); nullptr when
  // it is no discovered container (then a rule with container_labels does not apply).
  const std::map<std::string, std::string>* containerLabels = nullptr;
  // The name of a method-override header the request carries (one of
  // kMethodOverrideHeaders), "" when none: such a request is Malformed.
  std::string_view methodOverride = {};
};

// One command of the MongoDB wire protocol (protocol: mongodb rules): each
// access is one thing the command does (mongo/command.h: its own name,
// database and collection, then the writes and reads it hides).
struct CommandAccess {
  std::string_view command;
  std::string_view database;
  std::string_view collection;  // "" for a database-level command
};
struct CommandRequest {
  std::string_view host;  // the mongodb target as configured ("*.mongodb.net")
  std::string_view agent;
  std::vector<CommandAccess> accesses;
  const std::map<std::string, std::string>* podLabels = nullptr;
  const std::map<std::string, std::string>* containerLabels = nullptr;
};

enum class Verdict { Allow, Block, RateLimited, Approve, Malformed };
std::string_view verdictName(Verdict v);  // "allow", "block", "rate_limited", "approve", "malformed"

struct Decision {
  Verdict verdict = Verdict::Allow;
  // The deciding rule (a copy owned by the Policy: valid while the Policy
  // lives); nullptr for the default and for Malformed.
  const config::Rule* rule = nullptr;
  std::optional<std::size_t> ruleIndex;           // 0-based position in rules.list
  std::string ruleName = "default";               // "default" when no rule decided; "" for Malformed
  config::Action action = config::Action::Allow;  // the deciding rule's action or the default
  std::optional<config::Action> logOnlyWouldBe;   // log_only: what it would have done (verdict is Allow)
  std::chrono::seconds retryAfter{0};             // RateLimited
  std::chrono::seconds approveTimeout{0};         // Approve
  std::string credential;                         // the rule's credential name, "" = the target's default
  std::string malformedReason;                    // Malformed: one line for the 400 answer and the audit log
  std::string path;                               // the normalised path decided on (display form, see displayPath)
  bool viaAlternatePath = false;                  // decided by the %2F / ";param" alternate view
  // Both views were decided by rate_limit rules, different ones: the other
  // view's rule, whose bucket was charged too (RateLimited when either is empty).
  std::optional<std::size_t> alsoChargedRuleIndex;
};

// How a rule's filters fared against a request, for explain().
struct RuleCheck {
  std::size_t index = 0;  // 0-based
  std::string name;
  bool applies = false;
  std::string reason;  // why not ("method GET is not one of DELETE", "condition 2 ... does not hold"), or "applies"
};

struct Explanation {
  std::string method;
  std::string target;
  std::string host;
  std::string agent;
  bool malformed = false;
  std::string malformedReason;
  std::string path;                          // primary view (display form)
  std::optional<std::string> alternatePath;  // the %2F / ";param" view, when there is one
  std::vector<RuleCheck> checks;             // primary view: every rule in order up to the decider
  std::vector<RuleCheck> alternateChecks;    // alternate view, likewise
  bool viaAlternatePath = false;
  std::optional<std::size_t> ruleIndex;  // the decider; nullopt = default (or malformed)
  std::string ruleName;                  // "default" when no rule applies
  config::Action action = config::Action::Allow;
  std::optional<config::Action> logOnlyWouldBe;
  std::optional<double> tokensAvailable;  // rate_limit: what the bucket holds now (nothing is taken)
  std::optional<std::uint64_t> burst;
  // Both views rate_limit, by different rules: the other one (Decision::alsoChargedRuleIndex).
  std::optional<std::size_t> alsoCharged;
  std::string alsoChargedName;
  double alsoChargedTokens = 0;

  std::string render() const;
};

enum class UncheckableBody { Reject, ConditionsFail };

struct Options {
  std::size_t maxBodyBytes = 1024 * 1024;  // larger bodies are not parsed
  UncheckableBody uncheckableBody = UncheckableBody::Reject;
  std::size_t maxAgentsPerRule = 10'000;  // per-agent buckets kept per rule (LRU)
};

class Policy {
 public:
  using Clock = std::chrono::steady_clock;

  // Checks everything a rule means (config/ loads only its shape): path
  // pattern, label selectors, conditions, unique names, what the action
  // needs. The first problem is the error, named by where it was written:
  // "atlasgate.yaml:12:13: rules.list[3].path (rule "x"): ...".
  static Result<std::shared_ptr<Policy>> compile(const config::Rules& rules, const Options& options = {});

  ~Policy();
  Policy(const Policy&) = delete;
  Policy& operator=(const Policy&) = delete;

  // Decides and, for rate_limit rules, takes a token. Only https rules
  // (protocol: https, the default) take part.
  Decision evaluate(const Request& req, Clock::time_point now);

  // A MongoDB command, by protocol: mongodb rules only: each access is
  // decided by the first rule that applies to it (command glob
  // case-insensitive, database glob case-insensitive as MongoDB's own
  // uniqueness is, collection glob exact; an empty filter matches any; a
  // database-level access has collection "", which may reach any
  // collection: an allow rule matches it only with no collection filter or
  // "*", every other action whatever its collection filter), or by
  // rules.default, and the
  // strictest outcome wins, as for the two views of a path. A rate_limit
  // rule takes one token per command. Decision::path is "db.collection"
  // (or "db") of the access that decided.
  Decision evaluateCommand(const CommandRequest& req, Clock::time_point now);

  // Which rule would decide, and why each earlier one does not apply. Takes
  // no token.
  Explanation explain(const Request& req, Clock::time_point now = Clock::now()) const;

  // The compiled rule table for `atlasgate check`.
  std::string table() const;

  // On reload: keeps the buckets of rate_limit rules that exist in `old` with
  // the same name and the same definition (filters, conditions, action, rate,
  // burst, per). Changed and new rules start with full buckets. Call before
  // the new Policy is published.
  void adoptStateFrom(const Policy& old);

  const std::vector<config::Rule>& rules() const { return rules_; }
  config::Action defaultAction() const { return default_; }
  const Options& options() const { return options_; }

  // Test hook: agents with a bucket for rule `index` (0 when not rate_limit).
  std::size_t bucketAgents(std::size_t index) const;

 private:
  struct Compiled;  // per-rule matcher state, defined in policy.cpp
  struct Context;   // per-request facts
  struct Pick;      // a decision before tokens are taken
  struct Scan;      // explain()'s walk over the rules for one view of the path

  Policy();
  // `where` names the rule in messages: "rules.list[3]" or "rules.preset".
  static Result<void> compileFilters(config::Rule& rule, std::string_view where, Compiled& c);
  static Result<void> compileConditions(const config::Rule& rule, std::string_view where, Compiled& c);
  static Result<void> compileAction(const config::Rule& rule, std::string_view where, const Options& options,
                                    Compiled& c);
  static std::string signature(const config::Rule& rule, const Compiled& c);
  Scan scan(const std::vector<std::string>& segments, const std::string& shown, Context& ctx) const;
  Pick decide(const std::vector<std::string>& segments, Context& ctx) const;
  void decidedBy(Decision& d, std::size_t ruleIndex) const;
  // The first mongodb rule that applies to one access of a command.
  std::optional<std::size_t> commandRule(const CommandRequest& req, const CommandAccess& a, const std::string& host,
                                         const std::string& agent) const;
  Pick choose(const Pick& primary, const std::optional<Pick>& alternate) const;
  std::optional<std::size_t> alsoCharged(const Pick& pick, const Pick& primary,
                                         const std::optional<Pick>& alternate) const;

  std::vector<config::Rule> rules_;
  std::vector<std::unique_ptr<Compiled>> compiled_;
  std::unique_ptr<PathIndex> index_;
  config::Action default_ = config::Action::Allow;
  Options options_;
};

}  // namespace atlasgate::policy
