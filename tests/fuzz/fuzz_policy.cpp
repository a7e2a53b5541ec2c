// fuzz_policy: the rules engine on what an agent controls - method, request
// target, agent name (chosen by whoever starts the agent) and JSON body -
// against a fixed rule set with {x}, *, ** (also mid-pattern), methods,
// hosts, agent globs and `when:` conditions (in, equals, not_in, exists,
// matches incl. a backtracking-prone regex).
//
// Input: METHOD '\n' TARGET '\n' AGENT '\n' BODY. With fewer than three
// newlines there is no body (nullopt); missing parts are empty.
//
// Oracles, beyond ASan/UBSan:
//  * evaluate() (the PathIndex trie) and explain() (the direct matcher)
//    pick the same rule, and agree on malformed;
//  * normalizePath() is normalizeTarget()'s primary view;
//  * displayPath() normalises back to the same segments (path.h promise),
//    for targets Beast lets through (no CTL, space or DEL).

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "config/config.h"
#include "fuzz_common.h"
#include "policy/path.h"
#include "policy/policy.h"

namespace cfg = atlasgate::config;
namespace pol = atlasgate::policy;

namespace {

constexpr const char* kRulesYaml = R"(
targets:
  - host: cloud.mongodb.com
  - host: realm.mongodb.com
rules:
  default: block
  list:
    - name: no-cluster-deletion
      method: DELETE
      path: /api/atlas/v2/groups/{groupId}/clusters/{clusterName}
      action: block
    - name: big-clusters-need-approval
      method: [POST, patch]
      path: /api/atlas/v2/groups/*/clusters/**
      agents: ["claude-*", "ns/*"]
      when:
        - pointer: /providerSettings/instanceSizeName
          in: [M40, M50, 60, true, null]
        - pointer: /name
          matches: "prod-[a-z0-9-]+"
      action: approve
      timeout: 30
    - name: no-pausing
      method: PATCH
      path: /api/atlas/v2/groups/{groupId}/clusters/{name}
      when:
        - pointer: /paused
          equals: true
        - pointer: /tags/a~1b
          exists: false
      action: block
    - name: sharding
      when:
        - pointer: /replicationSpecs/0/numShards
          not_in: [1, 2.0]
      action: block
    - name: user-names
      path: /api/atlas/v2/groups/{g}/databaseUsers
      when:
        - pointer: /username
          matches: "(a|aa)+$"
      action: block
    - name: access-list
      path: /api/atlas/v2/groups/{groupId}/accessList/{entryValue}
      action: allow
    - name: realm-admin
      host: realm.mongodb.com
      path: /api/admin/v3.0/**
      action: log_only
      would_be: block
    - name: events
      path: /api/**/events
      action: rate_limit
      rate: 5/minute
      per: rule
    - name: budget
      path: /api/atlas/v2/**
      action: rate_limit
      rate: 1000/second
      per: agent
    - name: org-reads
      method: GET
      path: /api/atlas/v2/orgs/{orgId}/**
      action: allow
    - name: oauth
      method: POST
      path: /api/oauth/*
      action: allow
)";

std::shared_ptr<pol::Policy> gPolicy;
pol::Policy::Clock::time_point gNow;

std::string segs(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += "<" + x + ">";
  return s;
}

void checkNormalization(std::string_view target) {
  auto nt = pol::normalizeTarget(target);
  auto np = pol::normalizePath(target);
  AG_FUZZ_CHECK(nt.ok() == np.ok(), std::string(target));
  if (!nt) {
    AG_FUZZ_CHECK(!nt.error().message.empty(), std::string(target));
    return;
  }
  AG_FUZZ_CHECK(nt->segments == np.value(), std::string(target));
  // The round trip is promised for what reaches the policy: Beast refuses
  // request-targets with CTLs, spaces or DEL. (A raw NUL is accepted here
  // while "%00" is refused, so displayPath's "%00" would not normalise back.)
  for (char c : target)
    if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f) return;
  const std::string shown = pol::displayPath(nt->segments);
  auto again = pol::normalizePath(shown);
  AG_FUZZ_CHECK(again.ok(), "displayPath does not normalise: " + shown + " from " + std::string(target));
  AG_FUZZ_CHECK(again.value() == nt->segments,
                "displayPath round trip: " + segs(nt->segments) + " -> " + shown + " -> " + segs(again.value()));
  if (nt->alternate) (void)pol::displayPath(*nt->alternate);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  atlasgate::fuzz::quietLogs();
  auto c = cfg::parseConfig(kRulesYaml, "fuzz_policy.yaml", true);
  if (!c) atlasgate::fuzz::fail("fixed rules do not load", c.error().message);
  auto p = pol::Policy::compile(c->rules);
  if (!p) atlasgate::fuzz::fail("fixed rules do not compile", p.error().message);
  gPolicy = std::move(p.value());
  (void)gPolicy->table();
  gNow = pol::Policy::Clock::now();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  std::string_view parts[3];
  std::optional<std::string_view> body;
  for (int i = 0; i < 3; ++i) {
    auto nl = in.find('\n');
    if (nl == std::string_view::npos) {
      parts[i] = in;
      in = {};
      break;
    }
    parts[i] = in.substr(0, nl);
    in.remove_prefix(nl + 1);
    if (i == 2) body = in;
  }

  checkNormalization(parts[1]);

  for (std::string_view host : {std::string_view("cloud.mongodb.com"), std::string_view("Realm.MongoDB.com.:443")}) {
    pol::Request req;
    req.method = parts[0];
    req.target = parts[1];
    req.host = host;
    req.agent = parts[2];
    req.body = body;
    pol::Explanation ex = gPolicy->explain(req, gNow);
    (void)ex.render();
    gNow += std::chrono::milliseconds(7);
    pol::Decision d = gPolicy->evaluate(req, gNow);
    (void)pol::verdictName(d.verdict);
    const bool malformed = d.verdict == pol::Verdict::Malformed;
    AG_FUZZ_CHECK(malformed == ex.malformed,
                  "evaluate and explain disagree on malformed: " + d.malformedReason + " / " + ex.malformedReason);
    if (malformed) {
      AG_FUZZ_CHECK(!d.malformedReason.empty(), "malformed without a reason");
      continue;
    }
    AG_FUZZ_CHECK(d.ruleIndex == ex.ruleIndex,
                  "evaluate (index) chose " + d.ruleName + ", explain (matcher) " + ex.ruleName + "\n" + ex.render());
    if (d.ruleIndex) AG_FUZZ_CHECK(*d.ruleIndex < gPolicy->rules().size(), d.ruleName);
    AG_FUZZ_CHECK(d.viaAlternatePath == ex.viaAlternatePath, ex.render());
  }
  return 0;
}
