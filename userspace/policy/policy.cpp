#include "policy/policy.h"

#include <fnmatch.h>

#include <algorithm>
#include <array>
#include <map>
#include <unordered_map>

#include <fmt/format.h>

#include "labels/labels.h"
#include "policy/condition.h"
#include "policy/path.h"
#include "policy/path_index.h"
#include "policy/token_bucket.h"

namespace atlasgate::policy {

namespace {

// Refusal strength, for choosing between the two views of a %2F path
// (policy.h): block > approve > rate_limit > log_only > allow.
int restrictiveness(config::Action a) {
  switch (a) {
    case config::Action::Allow: return 0;
    case config::Action::LogOnly: return 1;
    case config::Action::RateLimit: return 2;
    case config::Action::Approve: return 3;
    case config::Action::Block: return 4;
  }
  return 4;
}

// "cloud.mongodb.com", "Cloud.MongoDB.com.:443", "[::1]:443" -> comparable form.
std::string normalizeHost(std::string_view h) {
  if (!h.empty() && h.front() == '[') {
    if (auto close = h.find(']'); close != std::string_view::npos) h = h.substr(0, close + 1);
  } else if (auto colon = h.find(':');
             colon != std::string_view::npos && h.find(':', colon + 1) == std::string_view::npos) {
    h = h.substr(0, colon);
  }
  if (!h.empty() && h.back() == '.') h.remove_suffix(1);
  return asciiLower(h);
}

std::string joinOr(const std::vector<std::string>& items, std::string_view empty) {
  if (items.empty()) return std::string(empty);
  return fmt::format("{}", fmt::join(items, ","));
}

std::string periodName(std::uint64_t seconds) {
  switch (seconds) {
    case 1: return "second";
    case 60: return "minute";
    case 3600: return "hour";
    case 86400: return "day";
    default: return fmt::format("{}s", seconds);
  }
}

std::string locPrefix(const config::SourceLoc& loc) {
  if (loc.line <= 0) return loc.file.empty() ? std::string() : loc.file + ": ";
  return fmt::format("{}:{}:{}: ", loc.file.empty() ? "<config>" : loc.file, loc.line, loc.column);
}

// Why a request with a method-override header is Malformed (policy.h).
std::string methodOverrideReason(const Request& req) {
  return fmt::format("method override header {} refused: the rules decide on the request line's method ({})",
                     req.methodOverride, req.method);
}

}  // namespace

std::string_view verdictName(Verdict v) {
  switch (v) {
    case Verdict::Allow: return "allow";
    case Verdict::Block: return "block";
    case Verdict::RateLimited: return "rate_limited";
    case Verdict::Approve: return "approve";
    case Verdict::Malformed: return "malformed";
  }
  return "?";
}

// ---- compiled state ---------------------------------------------------------

struct Policy::Compiled {
  std::vector<std::string> methods;  // upper-cased
  std::vector<std::string> hosts;    // normalizeHost()
  std::vector<PatternSegment> pattern;
  std::vector<std::string> agents;  // globs
  std::optional<labels::LabelSelector> podLabels;
  std::optional<labels::LabelSelector> containerLabels;
  std::vector<CompiledCondition> conditions;
  std::uint64_t burst = 0;                                    // rate_limit
  std::unique_ptr<RuleBuckets> buckets;                       // rate_limit
  std::string signature;                                      // the definition, for adoptStateFrom()
  bool mongodb = false;                                       // protocol: mongodb: commands, never requests
  std::vector<std::string> commands, databases, collections;  // globs
};

struct Policy::Context {
  Context(const Request& r, const Options& o)
      : req(r), host(normalizeHost(r.host)), agent(r.agent), body(r.body, o.maxBodyBytes) {}

  const Request& req;
  std::string host;
  std::string agent;  // NUL-terminated for fnmatch
  LazyBody body;
};

struct Policy::Pick {
  std::optional<std::size_t> index;  // nullopt = default
  bool malformed = false;
  std::string reason;
  bool viaAlternate = false;
};

namespace {

bool methodMatches(const std::vector<std::string>& methods, std::string_view method) {
  if (methods.empty()) return true;
  return std::any_of(methods.begin(), methods.end(), [&](const auto& m) { return asciiIEquals(m, method); });
}

bool hostMatches(const std::vector<std::string>& hosts, const std::string& host) {
  return hosts.empty() || std::find(hosts.begin(), hosts.end(), host) != hosts.end();
}

// pod_labels and container_labels: an agent without such labels never matches.
bool labelsMatch(const std::optional<labels::LabelSelector>& sel, const std::map<std::string, std::string>* labels) {
  if (!sel) return true;
  return labels != nullptr && sel->matches(*labels);
}

// fnmatch over a string_view (NUL-terminated copy; a NUL inside never matches).
bool globsMatch(const std::vector<std::string>& globs, std::string_view value, int flags) {
  if (globs.empty()) return true;
  if (value.find('\0') != std::string_view::npos) return false;
  const std::string v(value);
  return std::any_of(globs.begin(), globs.end(),
                     [&](const auto& g) { return ::fnmatch(g.c_str(), v.c_str(), flags) == 0; });
}

bool agentMatches(const std::vector<std::string>& globs, const std::string& agent) {
  if (globs.empty()) return true;
  if (agent.find('\0') != std::string::npos) return false;  // fnmatch would see a prefix only
  return std::any_of(globs.begin(), globs.end(),
                     [&](const auto& g) { return ::fnmatch(g.c_str(), agent.c_str(), 0) == 0; });
}

// All conditions must hold: False wins over Unknown, which wins over True.
// Stops at the first False; `unknownAt` gets the 0-based index of the first
// Unknown one.
Truth conditionsTruth(const std::vector<CompiledCondition>& conditions, LazyBody& body, std::size_t* falseAt,
                      std::size_t* unknownAt) {
  Truth result = Truth::True;
  for (std::size_t i = 0; i < conditions.size(); ++i) {
    Truth t = conditions[i].evaluate(body);
    if (t == Truth::False) {
      if (falseAt) *falseAt = i;
      return Truth::False;
    }
    if (t == Truth::Unknown && result == Truth::True) {
      result = Truth::Unknown;
      if (unknownAt) *unknownAt = i;
    }
  }
  return result;
}

std::string unknownWhy(LazyBody& body) {
  if (body.state() == LazyBody::State::Unreadable) return body.unreadableReason();
  return "a regular expression is too complex to evaluate against the body";
}

}  // namespace

Policy::Policy() : index_(std::make_unique<PathIndex>()) {}
Policy::~Policy() = default;

namespace {

// Where a message about key ("path", "when[0].matches"; "" = the rule as a
// whole) points: that key's value as recorded by config/, else fallback,
// else the rule.
const config::SourceLoc& locOf(const config::Rule& rule, std::string_view key,
                               const config::SourceLoc* fallback = nullptr) {
  if (auto it = rule.keyLocs.find(key); !key.empty() && it != rule.keyLocs.end()) return it->second;
  return fallback != nullptr && fallback->line > 0 ? *fallback : rule.loc;
}

// Where rule i of Rules::list was written: "rules.list[3]" (its index in
// the operator's list), or "rules.preset" for a rule a preset made.
std::string whereRule(const config::Rules& rules, std::size_t i) {
  return i < rules.presetRules ? std::string("rules.preset") : fmt::format("rules.list[{}]", i - rules.presetRules);
}

// "atlasgate.yaml:12:13: rules.list[3].path (rule "x"): ...": a rule's
// problem, reported once, where it was written.
Error ruleError(const config::Rule& rule, std::string_view where, std::string_view key, std::string_view message,
                const config::SourceLoc* fallback = nullptr) {
  const std::string path = key.empty() ? std::string(where) : fmt::format("{}.{}", where, key);
  return makeError("{}{} (rule \"{}\"): {}", locPrefix(locOf(rule, key, fallback)), path, rule.name, message);
}

Error duplicateName(const config::Rules& rules, const std::vector<config::Rule>& list, std::size_t first,
                    std::size_t index, bool generated) {
  const config::Rule& rule = list[index];
  const config::SourceLoc& was = locOf(list[first], "name");
  std::string message =
      was.line > 0 ? fmt::format("duplicate rule name \"{}\" (first at line {})", rule.name, was.line)
                   : fmt::format("duplicate rule name \"{}\" (first at {})", rule.name, whereRule(rules, first));
  if (generated) message += "; it was generated for this unnamed rule, so give it a name";
  return ruleError(rule, whereRule(rules, index), generated ? "" : "name", message);
}

// pod_labels or container_labels: "" = no selector.
Result<void> compileSelector(const config::Rule& rule, std::string_view where, std::string_view key,
                             std::string_view what, const std::string& text,
                             std::optional<labels::LabelSelector>& out) {
  if (text.empty()) return {};
  auto sel = labels::LabelSelector::parse(text);
  if (!sel) return ruleError(rule, where, key, sel.error().message);
  if (sel->empty()) return ruleError(rule, where, key, fmt::format("an empty selector would match every {}", what));
  out = std::move(sel.value());
  return {};
}

}  // namespace

// Methods, hosts, agents, label selectors and the path pattern.
Result<void> Policy::compileFilters(config::Rule& rule, std::string_view where, Compiled& c) {
  for (const auto& m : rule.methods) {
    if (m.empty() || m.find_first_of(" \t/") != std::string::npos) {
      return ruleError(rule, where, "method", fmt::format("bad method \"{}\"", m));
    }
    c.methods.push_back(asciiUpper(m));
  }
  rule.methods = c.methods;
  for (const auto& h : rule.hosts) {
    if (h.empty()) return ruleError(rule, where, "host", "empty host");
    c.hosts.push_back(normalizeHost(h));
  }
  c.agents = rule.agents;
  if (auto r = compileSelector(rule, where, "pod_labels", "pod", rule.podLabels, c.podLabels); !r) return r;
  if (auto r = compileSelector(rule, where, "container_labels", "container", rule.containerLabels, c.containerLabels);
      !r) {
    return r;
  }
  c.mongodb = rule.protocol == config::Protocol::Mongodb;
  c.commands = rule.commands;
  c.databases = rule.databases;
  c.collections = rule.collections;
  for (const auto* globs : {&c.commands, &c.databases, &c.collections}) {
    for (const auto& g : *globs)
      if (g.empty() || g.size() > 256)
        return ruleError(rule, where, "", "empty or overlong command/database/collection");
  }
  auto pattern = parsePattern(rule.path);
  if (!pattern) return ruleError(rule, where, "path", pattern.error().message);
  c.pattern = std::move(pattern.value());
  return {};
}

Result<void> Policy::compileConditions(const config::Rule& rule, std::string_view where, Compiled& c) {
  for (std::size_t k = 0; k < rule.when.size(); ++k) {
    const config::Condition& when = rule.when[k];
    auto cond = CompiledCondition::compile(when);
    if (!cond) {
      const std::string_view key = JsonPointer::parse(when.pointer) ? opName(when.op) : "pointer";
      return ruleError(rule, where, fmt::format("when[{}].{}", k, key), cond.error().message, &when.loc);
    }
    c.conditions.push_back(std::move(cond.value()));
  }
  return {};
}

// What the action needs. A log_only rule carries the settings of the action
// it stands in for (would_be).
Result<void> Policy::compileAction(const config::Rule& rule, std::string_view where, const Options& options,
                                   Compiled& c) {
  const bool logOnly = rule.action == config::Action::LogOnly;
  const config::Action acting = logOnly ? rule.wouldBe : rule.action;
  if (logOnly && rule.wouldBe == config::Action::LogOnly) {
    return ruleError(rule, where, "would_be", "log_only cannot be what log_only would be");
  }
  if (acting == config::Action::RateLimit) {
    if (!rule.rate || rule.rate->count == 0 || rule.rate->periodSeconds == 0) {
      return ruleError(rule, where, logOnly ? "would_be" : "action", "rate_limit needs a rate such as 60/minute");
    }
    if (rule.burst && *rule.burst == 0) return ruleError(rule, where, "burst", "burst must be at least 1");
  }
  if (acting == config::Action::Approve && rule.timeout.count() <= 0) {
    return ruleError(rule, where, "timeout", "approve needs a positive timeout");
  }
  if (rule.action == config::Action::RateLimit) {
    c.burst = rule.burst.value_or(rule.rate->count);
    c.buckets = std::make_unique<RuleBuckets>(*rule.rate, c.burst, rule.per, options.maxAgentsPerRule);
  }
  return {};
}

// The definition, for adoptStateFrom().
std::string Policy::signature(const config::Rule& rule, const Compiled& c) {
  std::vector<std::string> conds;
  for (const auto& cond : c.conditions) conds.push_back(cond.describe());
  return fmt::format("{}\x1f{}\x1f{}\x1f{}\x1f{}\x1f{}\x1f{}\x1f{}\x1f{}\x1f{}\x1f{}", fmt::join(c.methods, ","),
                     fmt::join(c.hosts, ","), rule.path + "\x1e" + rule.podLabels + "\x1e" + rule.containerLabels,
                     fmt::join(c.agents, "\x1e"), fmt::join(conds, "\x1e"), config::actionName(rule.action),
                     rule.rate ? rule.rate->count : 0, rule.rate ? rule.rate->periodSeconds : 0, c.burst,
                     rule.per == config::RatePer::Agent ? "agent" : "rule",
                     c.mongodb ? fmt::format("mongodb\x1e{}\x1e{}\x1e{}", fmt::join(c.commands, ","),
                                             fmt::join(c.databases, ","), fmt::join(c.collections, ","))
                               : std::string());
}

// Every check of what a rule means is made here, once; config/ loads only its
// shape (config.h).
Result<std::shared_ptr<Policy>> Policy::compile(const config::Rules& rules, const Options& options) {
  std::shared_ptr<Policy> p(new Policy());
  p->options_ = options;
  if (rules.defaultAction != config::Action::Allow && rules.defaultAction != config::Action::Block) {
    return makeError("rules.default must be allow or block, not {}", config::actionName(rules.defaultAction));
  }
  p->default_ = rules.defaultAction;
  p->rules_ = rules.list;

  std::map<std::string, std::size_t, std::less<>> names;  // -> the first rule of that name
  for (std::size_t i = 0; i < p->rules_.size(); ++i) {
    config::Rule& rule = p->rules_[i];
    // config/ names an unnamed rule "rule-<index>" and records no location for the name.
    const bool generated = rule.name.empty() || (rule.loc.line > 0 && !rule.keyLocs.contains("name"));
    if (rule.name.empty()) rule.name = fmt::format("rule-{}", i + 1);
    if (auto [it, fresh] = names.emplace(rule.name, i); !fresh)
      return duplicateName(rules, p->rules_, it->second, i, generated);

    auto c = std::make_unique<Compiled>();
    const std::string where = whereRule(rules, i);
    if (auto r = compileFilters(rule, where, *c); !r) return r.error();
    if (auto r = compileConditions(rule, where, *c); !r) return r.error();
    if (auto r = compileAction(rule, where, options, *c); !r) return r.error();
    c->signature = signature(rule, *c);
    // A mongodb rule never decides a request: the path index never offers it.
    if (!c->mongodb) p->index_->add(c->pattern, static_cast<std::uint32_t>(i));
    p->compiled_.push_back(std::move(c));
  }
  return p;
}

// ---- deciding ---------------------------------------------------------------

Policy::Pick Policy::decide(const std::vector<std::string>& segments, Context& ctx) const {
  for (std::uint32_t i : index_->candidates(segments)) {
    const Compiled& c = *compiled_[i];
    if (!methodMatches(c.methods, ctx.req.method) || !hostMatches(c.hosts, ctx.host) ||
        !agentMatches(c.agents, ctx.agent) || !labelsMatch(c.podLabels, ctx.req.podLabels) ||
        !labelsMatch(c.containerLabels, ctx.req.containerLabels)) {
      continue;
    }
    switch (conditionsTruth(c.conditions, ctx.body, nullptr, nullptr)) {
      case Truth::True: return Pick{i, false, {}, false};
      case Truth::False: continue;
      case Truth::Unknown:
        if (options_.uncheckableBody == UncheckableBody::ConditionsFail) continue;
        return Pick{
            std::nullopt, true,
            fmt::format("rule \"{}\" has conditions on the request body, but {}", rules_[i].name, unknownWhy(ctx.body)),
            false};
    }
  }
  return Pick{};
}

Policy::Pick Policy::choose(const Pick& primary, const std::optional<Pick>& alternate) const {
  if (primary.malformed || !alternate) return primary;
  Pick alt = *alternate;
  alt.viaAlternate = true;
  if (alt.malformed) return alt;
  // Both views count in full, the default included; a tie keeps the primary.
  auto actionOf = [&](const Pick& p) { return p.index ? rules_[*p.index].action : default_; };
  return restrictiveness(actionOf(alt)) > restrictiveness(actionOf(primary)) ? alt : primary;
}

std::optional<std::size_t> Policy::alsoCharged(const Pick& pick, const Pick& primary,
                                               const std::optional<Pick>& alternate) const {
  // The other view decided by another rate_limit rule: its budget counts too
  // (policy.h), or a %2F would let a request step around it.
  if (!pick.index || rules_[*pick.index].action != config::Action::RateLimit || !alternate) return std::nullopt;
  const Pick& other = pick.viaAlternate ? primary : *alternate;
  if (!other.index || *other.index == *pick.index || rules_[*other.index].action != config::Action::RateLimit) {
    return std::nullopt;
  }
  return other.index;
}

Decision Policy::evaluate(const Request& req, Clock::time_point now) {
  Decision d;
  if (!req.methodOverride.empty()) {
    d.verdict = Verdict::Malformed;
    d.ruleName.clear();
    d.malformedReason = methodOverrideReason(req);
    return d;
  }
  auto norm = normalizeTarget(req.target);
  if (!norm) {
    d.verdict = Verdict::Malformed;
    d.ruleName.clear();
    d.malformedReason = norm.error().message;
    return d;
  }
  Context ctx(req, options_);
  Pick primary = decide(norm->segments, ctx);
  std::optional<Pick> alternate;
  if (norm->alternate && !primary.malformed) alternate = decide(*norm->alternate, ctx);
  Pick pick = choose(primary, alternate);

  d.viaAlternatePath = pick.viaAlternate;
  d.path = displayPath(pick.viaAlternate ? *norm->alternate : norm->segments);
  if (pick.malformed) {
    d.verdict = Verdict::Malformed;
    d.ruleName.clear();
    d.malformedReason = std::move(pick.reason);
    return d;
  }
  if (!pick.index) {
    d.action = default_;
    d.verdict = default_ == config::Action::Block ? Verdict::Block : Verdict::Allow;
    return d;
  }

  const std::size_t i = *pick.index;
  const config::Rule& rule = rules_[i];
  decidedBy(d, i);
  d.credential = rule.credential;
  switch (rule.action) {
    case config::Action::RateLimit: {
      auto outcome = compiled_[i]->buckets->take(req.agent, now);
      d.alsoChargedRuleIndex = alsoCharged(pick, primary, alternate);
      if (d.alsoChargedRuleIndex) {
        auto second = compiled_[*d.alsoChargedRuleIndex]->buckets->take(req.agent, now);
        if (!second.allowed) {
          outcome.retryAfter = outcome.allowed ? second.retryAfter : std::max(outcome.retryAfter, second.retryAfter);
          outcome.allowed = false;
        }
      }
      d.verdict = outcome.allowed ? Verdict::Allow : Verdict::RateLimited;
      d.retryAfter = outcome.retryAfter;
      break;
    }
    default: break;
  }
  return d;
}

// The verdict of every action but rate_limit, whose token the caller takes.
void Policy::decidedBy(Decision& d, std::size_t i) const {
  const config::Rule& rule = rules_[i];
  d.rule = &rule;
  d.ruleIndex = i;
  d.ruleName = rule.name;
  d.action = rule.action;
  switch (rule.action) {
    case config::Action::Allow: d.verdict = Verdict::Allow; break;
    case config::Action::Block: d.verdict = Verdict::Block; break;
    case config::Action::Approve:
      d.verdict = Verdict::Approve;
      d.approveTimeout = rule.timeout;
      break;
    case config::Action::LogOnly:
      d.verdict = Verdict::Allow;
      d.logOnlyWouldBe = rule.wouldBe;
      break;
    case config::Action::RateLimit: break;
  }
}

// ---- MongoDB commands -------------------------------------------------------

std::optional<std::size_t> Policy::commandRule(const CommandRequest& req, const CommandAccess& a,
                                               const std::string& host, const std::string& agent) const {
  for (std::size_t i = 0; i < compiled_.size(); ++i) {
    const Compiled& c = *compiled_[i];
    if (!c.mongodb || !hostMatches(c.hosts, host) || !agentMatches(c.agents, agent) ||
        !labelsMatch(c.podLabels, req.podLabels) || !labelsMatch(c.containerLabels, req.containerLabels)) {
      continue;
    }
    if (!globsMatch(c.commands, a.command, FNM_CASEFOLD) || !globsMatch(c.databases, a.database, FNM_CASEFOLD))
      continue;
    // A database-level access ($changeStream, $currentOp on a database)
    // may reach any collection: a restrictive rule that names collections
    // applies to it (fail closed); an allow rule does not allow it.
    if (!c.collections.empty() && a.collection.empty() &&
        std::find(c.collections.begin(), c.collections.end(), "*") == c.collections.end() &&
        rules_[i].action == config::Action::Allow)
      continue;
    if (!a.collection.empty() && !globsMatch(c.collections, a.collection, 0)) continue;
    return i;
  }
  return std::nullopt;
}

Decision Policy::evaluateCommand(const CommandRequest& req, Clock::time_point now) {
  const std::string host = normalizeHost(req.host);
  const std::string agent(req.agent);
  auto actionOf = [&](const std::optional<std::size_t>& i) { return i ? rules_[*i].action : default_; };
  std::optional<std::size_t> pick;
  const CommandAccess* decided = nullptr;
  for (const CommandAccess& a : req.accesses) {
    std::optional<std::size_t> i = commandRule(req, a, host, agent);
    if (decided == nullptr || restrictiveness(actionOf(i)) > restrictiveness(actionOf(pick))) {
      pick = i;
      decided = &a;
    }
  }
  Decision d;
  if (decided != nullptr)
    d.path = decided->collection.empty() ? std::string(decided->database)
                                         : fmt::format("{}.{}", decided->database, decided->collection);
  if (!pick) {
    d.action = default_;
    d.verdict = default_ == config::Action::Block ? Verdict::Block : Verdict::Allow;
    return d;
  }
  decidedBy(d, *pick);
  if (rules_[*pick].action == config::Action::RateLimit) {
    auto outcome = compiled_[*pick]->buckets->take(req.agent, now);
    d.verdict = outcome.allowed ? Verdict::Allow : Verdict::RateLimited;
    d.retryAfter = outcome.retryAfter;
  }
  return d;
}

// ---- explaining -------------------------------------------------------------

// Linear, reason-producing twin of Policy::decide(); explain() only.
struct Policy::Scan {
  std::optional<std::size_t> index;
  bool malformed = false;
  std::string reason;
  std::vector<RuleCheck> checks;
};

Policy::Scan Policy::scan(const std::vector<std::string>& segments, const std::string& shown, Context& ctx) const {
  const Request& req = ctx.req;
  Scan s;
  for (std::size_t i = 0; i < rules_.size(); ++i) {
    const config::Rule& rule = rules_[i];
    const Compiled& c = *compiled_[i];
    RuleCheck check{i, rule.name, false, {}};
    std::size_t falseAt = 0, unknownAt = 0;
    if (c.mongodb) {
      check.reason = "a protocol: mongodb rule (it decides commands, not requests)";
    } else if (!methodMatches(c.methods, req.method)) {
      check.reason = fmt::format("method {} is not one of {}", req.method, fmt::join(c.methods, ", "));
    } else if (!hostMatches(c.hosts, ctx.host)) {
      check.reason = fmt::format("host {} is not one of {}", ctx.host, fmt::join(c.hosts, ", "));
    } else if (!matchPattern(c.pattern, segments)) {
      check.reason = fmt::format("path {} does not match {}", shown, rule.path);
    } else if (!agentMatches(c.agents, ctx.agent)) {
      check.reason = fmt::format("agent \"{}\" matches none of {}", ctx.agent, fmt::join(c.agents, ", "));
    } else if (!labelsMatch(c.podLabels, req.podLabels)) {
      check.reason = req.podLabels ? fmt::format("pod labels do not match {}", c.podLabels->str())
                                   : fmt::format("the agent is no pod (pod_labels: {})", c.podLabels->str());
    } else if (!labelsMatch(c.containerLabels, req.containerLabels)) {
      check.reason = req.containerLabels
                         ? fmt::format("container labels do not match {}", c.containerLabels->str())
                         : fmt::format("the agent is no container (container_labels: {})", c.containerLabels->str());
    } else {
      switch (conditionsTruth(c.conditions, ctx.body, &falseAt, &unknownAt)) {
        case Truth::True:
          check.applies = true;
          check.reason = "applies";
          s.index = i;
          break;
        case Truth::False:
          check.reason = fmt::format("condition {} ({}) does not hold", falseAt + 1, c.conditions[falseAt].describe());
          break;
        case Truth::Unknown:
          check.reason = fmt::format("condition {} ({}) cannot be checked: {}", unknownAt + 1,
                                     c.conditions[unknownAt].describe(), unknownWhy(ctx.body));
          if (options_.uncheckableBody == UncheckableBody::Reject) {
            s.malformed = true;
            s.reason =
                fmt::format("rule \"{}\" has conditions on the request body, but {}", rule.name, unknownWhy(ctx.body));
          }
          break;
      }
    }
    s.checks.push_back(std::move(check));
    if (s.index || s.malformed) break;
  }
  return s;
}

Explanation Policy::explain(const Request& req, Clock::time_point now) const {
  Explanation e;
  e.method = std::string(req.method);
  e.target = std::string(req.target);
  e.host = std::string(req.host);
  e.agent = std::string(req.agent);

  if (!req.methodOverride.empty()) {
    e.malformed = true;
    e.malformedReason = methodOverrideReason(req);
    return e;
  }
  auto norm = normalizeTarget(req.target);
  if (!norm) {
    e.malformed = true;
    e.malformedReason = norm.error().message;
    return e;
  }
  e.path = displayPath(norm->segments);
  if (norm->alternate) e.alternatePath = displayPath(*norm->alternate);

  Context ctx(req, options_);
  Scan primary = scan(norm->segments, e.path, ctx);
  e.checks = primary.checks;
  std::optional<Pick> alternatePick;
  if (norm->alternate && !primary.malformed) {
    Scan alt = scan(*norm->alternate, *e.alternatePath, ctx);
    e.alternateChecks = alt.checks;
    alternatePick = Pick{alt.index, alt.malformed, alt.reason, false};
  }
  const Pick primaryPick{primary.index, primary.malformed, primary.reason, false};
  Pick pick = choose(primaryPick, alternatePick);
  e.viaAlternatePath = pick.viaAlternate;
  if (pick.malformed) {
    e.malformed = true;
    e.malformedReason = pick.reason;
    return e;
  }
  e.ruleIndex = pick.index;
  if (!pick.index) {
    e.ruleName = "default";
    e.action = default_;
    return e;
  }
  const config::Rule& rule = rules_[*pick.index];
  e.ruleName = rule.name;
  e.action = rule.action;
  if (rule.action == config::Action::LogOnly) e.logOnlyWouldBe = rule.wouldBe;
  if (const auto& b = compiled_[*pick.index]->buckets) {
    e.tokensAvailable = b->available(req.agent, now);
    e.burst = compiled_[*pick.index]->burst;
  }
  if (auto also = alsoCharged(pick, primaryPick, alternatePick)) {
    e.alsoCharged = also;
    e.alsoChargedName = rules_[*also].name;
    e.alsoChargedTokens = compiled_[*also]->buckets->available(req.agent, now);
  }
  return e;
}

std::string Explanation::render() const {
  std::string out = fmt::format("request: {} {} host={} agent=\"{}\"\n", method, target, host, agent);
  if (malformed && path.empty()) return out + fmt::format("decision: malformed (400): {}\n", malformedReason);
  out += fmt::format("path: {}\n", path);
  for (const auto& c : checks) out += fmt::format("  #{} {}: {}\n", c.index + 1, c.name, c.reason);
  if (alternatePath) {
    out += fmt::format("alternate view (encoded '/' or ';param'): {}\n", *alternatePath);
    for (const auto& c : alternateChecks) out += fmt::format("  #{} {}: {}\n", c.index + 1, c.name, c.reason);
  }
  if (malformed) return out + fmt::format("decision: malformed (400): {}\n", malformedReason);
  std::string by = ruleIndex ? fmt::format("rule #{} \"{}\"", *ruleIndex + 1, ruleName) : std::string("default");
  out += fmt::format("decision: {} by {}", config::actionName(action), by);
  if (viaAlternatePath) out += " (through the alternate view)";
  if (logOnlyWouldBe) out += fmt::format("; allowed and logged, would be {}", config::actionName(*logOnlyWouldBe));
  if (tokensAvailable) {
    out += fmt::format("; {:.2f} of {} tokens available now", *tokensAvailable, burst.value_or(0));
  }
  if (alsoCharged) {
    out += fmt::format("; also takes a token of rule #{} \"{}\" ({:.2f} available now)", *alsoCharged + 1,
                       alsoChargedName, alsoChargedTokens);
  }
  out += '\n';
  return out;
}

// ---- table and reload -------------------------------------------------------

std::string Policy::table() const {
  std::vector<std::array<std::string, 9>> rows;
  rows.push_back({"#", "NAME", "METHOD", "HOST", "PATH", "AGENT", "WHEN", "ACTION", "SOURCE"});
  for (std::size_t i = 0; i < rules_.size(); ++i) {
    const config::Rule& r = rules_[i];
    const Compiled& c = *compiled_[i];
    std::vector<std::string> conds;
    for (const auto& cond : c.conditions) conds.push_back(cond.describe());
    std::string action(config::actionName(r.action));
    if (c.mongodb) {
      // The WHEN column: the command, database and collection globs.
      conds.insert(conds.begin(),
                   fmt::format("mongodb command [{}] database [{}] collection [{}]", fmt::join(c.commands, ","),
                               fmt::join(c.databases, ","), fmt::join(c.collections, ",")));
    }
    switch (r.action) {
      case config::Action::RateLimit:
        action += fmt::format(" {}/{} burst {} per {}", r.rate->count, periodName(r.rate->periodSeconds), c.burst,
                              r.per == config::RatePer::Agent ? "agent" : "rule");
        break;
      case config::Action::Approve: action += fmt::format(" timeout {}s", r.timeout.count()); break;
      case config::Action::LogOnly: action += fmt::format(" would_be {}", config::actionName(r.wouldBe)); break;
      default: break;
    }
    if (!r.credential.empty()) action += fmt::format(" credential {}", r.credential);
    // FILE:LINE, or a file alone ("preset:guardrails" for a preset's rules).
    std::string source = r.loc.line > 0 ? fmt::format("{}:{}", r.loc.file.empty() ? "<config>" : r.loc.file, r.loc.line)
                         : r.loc.file.empty() ? std::string("-")
                                              : r.loc.file;
    rows.push_back({std::to_string(i + 1), r.name, joinOr(c.methods, "*"), joinOr(c.hosts, "*"),
                    r.path.empty() ? std::string("/**") : r.path, joinOr(c.agents, "*"),
                    conds.empty() ? std::string("-") : fmt::format("{}", fmt::join(conds, " && ")), action, source});
  }
  rows.push_back({"-", "default", "*", "*", "/**", "*", "-", std::string(config::actionName(default_)), "-"});

  std::array<std::size_t, 9> width{};
  for (const auto& row : rows) {
    for (std::size_t k = 0; k < row.size(); ++k) width[k] = std::max(width[k], row[k].size());
  }
  std::string out;
  for (const auto& row : rows) {
    std::string line;
    for (std::size_t k = 0; k < row.size(); ++k) {
      line += row[k];
      if (k + 1 < row.size()) line.append(width[k] - row[k].size() + 2, ' ');
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out += line;
    out += '\n';
  }
  return out;
}

void Policy::adoptStateFrom(const Policy& old) {
  if (&old == this) return;
  std::unordered_map<std::string_view, std::size_t> oldByName;
  for (std::size_t j = 0; j < old.rules_.size(); ++j) oldByName.emplace(old.rules_[j].name, j);
  for (std::size_t i = 0; i < rules_.size(); ++i) {
    if (!compiled_[i]->buckets) continue;
    auto it = oldByName.find(rules_[i].name);
    if (it == oldByName.end()) continue;
    const Compiled& before = *old.compiled_[it->second];
    if (before.buckets && before.signature == compiled_[i]->signature) {
      compiled_[i]->buckets->copyStateFrom(*before.buckets);
    }
  }
}

std::size_t Policy::bucketAgents(std::size_t index) const {
  if (index >= compiled_.size() || !compiled_[index]->buckets) return 0;
  return compiled_[index]->buckets->agentCount();
}

}  // namespace atlasgate::policy
