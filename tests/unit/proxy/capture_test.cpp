// Credential capture, the pure part (proxy/capture.h): the table of requests
// that mint or drop a credential (every spelling of their paths), the
// phantoms (same shape, other value), the rewrite of each minting answer
// (every byte but the secret kept; hostile or malformed answers refused),
// X.509 bundles with real keys made here, and the database-user password
// swap.

#include <gtest/gtest.h>

#include <openssl/bn.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <algorithm>
#include <memory>
#include <regex>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include <boost/json/parse.hpp>
#include <boost/json/value.hpp>

#include "common/text.h"
#include "proxy/capture.h"

namespace atlasgate::proxy::capture {
namespace {

namespace json = boost::json;
using vault::Kind;

constexpr std::string_view kApiKeyPrivate = "2f1e8c4a-7b3d-4e5f-9a0b-1c2d3e4f5a6b";
constexpr std::string_view kSaSecret = "mdb_sa_sk_Q7wErT9yUiOp2AsDfGh4JkLzXcVb8NmQwErTy";
constexpr std::string_view kClientId = "mdb_sa_id_66a1b2c3d4e5f6a7b8c9d0e1";

const std::regex kUuidV4("^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$");

Origin origin() { return Origin{"cloud.mongodb.com", "agent-a", 1700000000}; }

Plan plan(Action a, std::string scope, std::string object = {}) {
  return Plan{a, std::move(scope), std::move(object), {}};
}

// body with every `from` replaced by `to`: the answer the agent must see.
std::string replaced(std::string body, std::string_view from, std::string_view to) {
  for (std::size_t at = body.find(from); at != std::string::npos; at = body.find(from, at + to.size()))
    body.replace(at, from.size(), to);
  return body;
}

bool isAlnum(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return std::isalnum(static_cast<unsigned char>(c)) != 0; });
}

enum class Cls { Digit, Lower, Upper, Other };
Cls classOf(char c) {
  if (c >= '0' && c <= '9') return Cls::Digit;
  if (c >= 'a' && c <= 'z') return Cls::Lower;
  if (c >= 'A' && c <= 'Z') return Cls::Upper;
  return Cls::Other;
}

// ---- planFor: the table -----------------------------------------------------------

struct Row {
  const char* method;
  const char* path;  // after /api/atlas/<version>
  Action action;
  const char* scope;
  const char* object;
};

const Row kMintRows[] = {
    {"POST", "/orgs/o1/apiKeys", Action::MintApiKey, "orgs/o1", ""},
    {"POST", "/groups/g1/apiKeys", Action::MintApiKey, "groups/g1", ""},
    {"POST", "/orgs/o1/serviceAccounts", Action::MintServiceAccount, "orgs/o1", ""},
    {"POST", "/groups/g1/serviceAccounts", Action::MintServiceAccount, "groups/g1", ""},
    {"POST", "/orgs/o1/serviceAccounts/mdb_sa_id_1/secrets", Action::MintServiceAccountSecret, "orgs/o1",
     "mdb_sa_id_1"},
    {"POST", "/groups/g1/serviceAccounts/mdb_sa_id_1/secrets", Action::MintServiceAccountSecret, "groups/g1",
     "mdb_sa_id_1"},
    {"POST", "/groups/g1/databaseUsers/alice/certs", Action::MintCertificate, "groups/g1", "alice"},
    {"POST", "/groups/g1/databaseUsers", Action::SetDatabasePassword, "groups/g1", ""},
    {"PATCH", "/groups/g1/databaseUsers/admin/alice", Action::SetDatabasePassword, "groups/g1", "admin/alice"},
    {"PATCH", "/groups/g1/databaseUsers/$external/CN=alice", Action::SetDatabasePassword, "groups/g1",
     "$external/CN=alice"},
};

void expectPlan(std::string_view method, std::string_view target, Action action, std::string_view scope,
                std::string_view object) {
  SCOPED_TRACE(std::string(method) + " " + std::string(target));
  auto p = planFor(method, target);
  ASSERT_TRUE(p.has_value());
  EXPECT_EQ(p->action, action);
  EXPECT_EQ(p->scope, scope);
  EXPECT_EQ(p->object, object);
  EXPECT_TRUE(p->forgets.empty());
}

void expectNoPlan(std::string_view method, std::string_view target) {
  auto p = planFor(method, target);
  EXPECT_FALSE(p.has_value()) << method << " " << target << " planned action " << static_cast<int>(p->action);
}

TEST(CapturePlan, EveryMintRowForV2AndV1) {
  for (const char* version : {"v2", "v1.0"})
    for (const Row& r : kMintRows)
      expectPlan(r.method, std::string("/api/atlas/") + version + r.path, r.action, r.scope, r.object);
  // The Cloud Manager spelling the same host may serve.
  for (const Row& r : kMintRows)
    expectPlan(r.method, std::string("/api/public/v1.0") + r.path, r.action, r.scope, r.object);
}

TEST(CapturePlan, OtherMethodsOnMintingPathsDoNotPlan) {
  for (const Row& r : kMintRows) {
    std::string target = std::string("/api/atlas/v2") + r.path;
    for (const char* m : {"GET", "PUT", "HEAD", "OPTIONS", "CONNECT", "POSTX"})
      if (std::string_view(m) != r.method) expectNoPlan(m, target);
    // A PATCH of a minting collection mints nothing (…/databaseUsers/alice/certs
    // is, to a PATCH, the user "certs" of database "alice").
    if (std::string_view(r.method) == "POST" && r.action != Action::MintCertificate) expectNoPlan("PATCH", target);
  }
  expectNoPlan("DELETE", "/api/atlas/v2/orgs/o1/apiKeys");
  expectNoPlan("DELETE", "/api/atlas/v2/groups/g1/databaseUsers");
  expectNoPlan("POST", "/api/atlas/v2/groups/g1/databaseUsers/admin/alice");
}

TEST(CapturePlan, MethodsInAnyCasePlan) {
  // Methods are case-sensitive in HTTP, but an upstream that folds them
  // must not mint what capture let through.
  expectPlan("post", "/api/atlas/v2/orgs/o1/apiKeys", Action::MintApiKey, "orgs/o1", "");
  expectPlan("Post", "/api/atlas/v2/groups/g1/databaseUsers", Action::SetDatabasePassword, "groups/g1", "");
  expectPlan("patch", "/api/atlas/v2/groups/g1/databaseUsers/admin/alice", Action::SetDatabasePassword, "groups/g1",
             "admin/alice");
  auto del = planFor("delete", "/api/atlas/v2/orgs/o1/apiKeys/k1");
  ASSERT_TRUE(del.has_value());
  EXPECT_EQ(del->action, Action::Forget);
}

TEST(CapturePlan, CaseVariantsPlanWithTheScopeWordNormalised) {
  expectPlan("POST", "/API/ATLAS/V2/ORGS/x/APIKEYS", Action::MintApiKey, "orgs/x", "");
  expectPlan("POST", "/Api/Atlas/V1.0/Groups/G1/ServiceAccounts", Action::MintServiceAccount, "groups/G1", "");
  expectPlan("POST", "/api/atlas/v2/GROUPS/g1/DATABASEUSERS/Alice/CERTS", Action::MintCertificate, "groups/g1",
             "Alice");
  expectPlan("PATCH", "/api/atlas/v2/groups/g1/DatabaseUsers/admin/Bob", Action::SetDatabasePassword, "groups/g1",
             "admin/Bob");
}

TEST(CapturePlan, PercentEncodedSpellingsPlan) {
  expectPlan("POST", "/api/atlas/v2/orgs/o/apiKey%73", Action::MintApiKey, "orgs/o", "");
  expectPlan("POST", "/api/atlas/v2/%6Frgs/o/%61%70%69%4b%65%79%73", Action::MintApiKey, "orgs/o", "");
  expectPlan("POST", "/%61pi/atlas/v%32/groups/g1/serviceAccounts/mdb%5Fsa%5Fid%5F1/secret%73",
             Action::MintServiceAccountSecret, "groups/g1", "mdb_sa_id_1");
  expectPlan("POST", "/api/atlas/v2/groups/g1/databaseUsers/al%69ce/certs", Action::MintCertificate, "groups/g1",
             "alice");
}

TEST(CapturePlan, DotSegmentsSlashesAndQueriesPlan) {
  expectPlan("POST", "/api/atlas/v2/groups/x/../../orgs/o/apiKeys", Action::MintApiKey, "orgs/o", "");
  expectPlan("POST", "/api/atlas/v2/orgs/o/./apiKeys", Action::MintApiKey, "orgs/o", "");
  expectPlan("POST", "/api/atlas/v2/orgs/o/%2E%2E/p/apiKeys", Action::MintApiKey, "orgs/p", "");
  expectPlan("POST", "/api/atlas/v2/orgs/o/apiKeys/", Action::MintApiKey, "orgs/o", "");
  expectPlan("POST", "//api//atlas/v2//orgs/o//apiKeys//", Action::MintApiKey, "orgs/o", "");
  expectPlan("POST", "/api/atlas/v2/orgs/o/apiKeys?pretty=true&envelope=true", Action::MintApiKey, "orgs/o", "");
  expectPlan("POST", "/api/atlas/v2/orgs/o/apiKeys#frag", Action::MintApiKey, "orgs/o", "");
  expectPlan("POST", "/api/atlas/v2/groups/g1/serviceAccounts?x=/secrets", Action::MintServiceAccount, "groups/g1", "");
}

TEST(CapturePlan, NonMintingPathsDoNotPlan) {
  expectNoPlan("POST", "/api/atlas/v2/orgs/o/apiKeys/id/accessList");
  expectNoPlan("POST", "/api/atlas/v2/orgs/o/apiKeys/id");
  expectNoPlan("POST", "/api/atlas/v2/groups/g1/apiKeys/id");
  expectNoPlan("POST", "/api/atlas/v2/orgs/o/serviceAccounts/c1/accessList");
  expectNoPlan("POST", "/api/atlas/v2/orgs/o/serviceAccounts/c1/secrets/s1");
  expectNoPlan("POST", "/api/atlas/v2/orgs/o1/databaseUsers/alice/certs");  // certs exist per project only
  expectNoPlan("POST", "/api/atlas/v2/orgs/o1/databaseUsers");
  expectNoPlan("POST", "/api/atlas/v2/groups/g1/clusters");
  expectNoPlan("POST", "/api/atlas/v2/users/u1/apiKeys");
  expectNoPlan("POST", "/api/atlas/vX/orgs/o/apiKeys");
  expectNoPlan("POST", "/api/atlas/version2/orgs/o/apiKeys");
  expectNoPlan("POST", "/api/atlas/2/orgs/o/apiKeys");
  expectNoPlan("POST", "/api/atlas/v/orgs/o/apiKeys");
  expectNoPlan("POST", "/api/atlas/orgs/o/apiKeys");
  expectNoPlan("POST", "/api/atlas/v2");
  expectNoPlan("POST", "/api/private/v1.0/orgs/o/apiKeys");
  expectNoPlan("POST", "/api/atlas/v2/x/orgs/o/apiKeys");
  expectNoPlan("POST", "/x/api/atlas/v2/orgs/o/apiKeys");
  expectNoPlan("POST", "/orgs/o/apiKeys");
  expectNoPlan("POST", "/api/atlas/v2/orgs/o/apiKeysX");
  // Malformed targets: refused before this by the rules.
  expectNoPlan("POST", "/api/atlas/v2/orgs/o/apiKeys%zz");
  expectNoPlan("POST", "/api/atlas/v2/../../../../orgs/o/apiKeys");
  expectNoPlan("POST", "api/atlas/v2/orgs/o/apiKeys");
  expectNoPlan("POST", "");
}

TEST(CapturePlan, FutureVersionsPlan) {
  // A version Atlas adds later mints the same way: captured, not passed on.
  expectPlan("POST", "/api/atlas/v3/orgs/o/apiKeys", Action::MintApiKey, "orgs/o", "");
  expectPlan("POST", "/api/atlas/v1.5/groups/g/serviceAccounts", Action::MintServiceAccount, "groups/g", "");
  expectPlan("POST", "/api/atlas/V2.1/orgs/o/apiKeys", Action::MintApiKey, "orgs/o", "");
}

TEST(CapturePlan, EitherReadingOfThePathPlans) {
  // ";params" dropped (servlet containers, JAX-RS matrix parameters) or an
  // encoded '/' split: a server reading the path either way must not mint
  // what capture did not plan for.
  expectPlan("POST", "/api/atlas/v2/orgs/o/apiKeys;x", Action::MintApiKey, "orgs/o", "");
  expectPlan("POST", "/api/atlas/v2;a=b/groups/g1/databaseUsers", Action::SetDatabasePassword, "groups/g1", "");
  expectPlan("POST", "/api/atlas/v2/groups/g1/serviceAccounts;jsessionid=1/mdb_sa_id_1/secrets",
             Action::MintServiceAccountSecret, "groups/g1", "mdb_sa_id_1");
  expectPlan("POST", "/api/atlas/v2/orgs%2Fo/apiKeys", Action::MintApiKey, "orgs/o", "");
  expectPlan("POST", "/api/atlas%2Fv2/orgs/o/apiKeys", Action::MintApiKey, "orgs/o", "");
  // "%2F" kept as data (what Atlas does): one segment "o/p", still an API key.
  auto p = planFor("POST", "/api/atlas/v2/orgs/o%2Fp/apiKeys");
  ASSERT_TRUE(p.has_value());
  EXPECT_EQ(p->action, Action::MintApiKey);
  auto d = planFor("DELETE", "/api/atlas/v2/orgs/o1/apiKeys/k1;x");
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(d->forgets.size(), 1u);
  // A dot-segment hidden behind a ';' is malformed: refused by the rules.
  expectNoPlan("POST", "/api/atlas/v2/groups/x/..;/..;/orgs/o/apiKeys");
}

TEST(CapturePlan, ANewOrganization) {
  expectPlan("POST", "/api/atlas/v2/orgs", Action::MintOrganization, "orgs", "");
  expectPlan("POST", "/API/ATLAS/V1.0/ORGS/?envelope=true", Action::MintOrganization, "orgs", "");
  expectNoPlan("POST", "/api/atlas/v2/groups");
  expectNoPlan("GET", "/api/atlas/v2/orgs");
  expectNoPlan("DELETE", "/api/atlas/v2/orgs/o1");
}

void expectForgets(std::string_view target, std::string_view scope, std::vector<Forget> want) {
  SCOPED_TRACE(std::string(target));
  auto p = planFor("DELETE", target);
  ASSERT_TRUE(p.has_value());
  EXPECT_EQ(p->action, Action::Forget);
  EXPECT_EQ(p->scope, scope);
  ASSERT_EQ(p->forgets.size(), want.size());
  for (std::size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(p->forgets[i].kind, want[i].kind) << i;
    EXPECT_EQ(p->forgets[i].object, want[i].object) << i;
  }
}

TEST(CapturePlan, DeletesForgetWhatTheVaultHolds) {
  for (const char* v : {"v2", "v1.0"}) {
    std::string base = std::string("/api/atlas/") + v;
    expectForgets(base + "/orgs/o1/apiKeys/5f1a", "orgs/o1", {{Kind::ApiKey, "5f1a"}});
    expectForgets(base + "/orgs/o1/serviceAccounts/mdb_sa_id_1", "orgs/o1",
                  {{Kind::ServiceAccountSecret, "mdb_sa_id_1"}});
    expectForgets(base + "/orgs/o1/serviceAccounts/mdb_sa_id_1/secrets/s9", "orgs/o1",
                  {{Kind::ServiceAccountSecret, "mdb_sa_id_1/s9"}});
    expectForgets(base + "/groups/g1/serviceAccounts/mdb_sa_id_1/secrets/s9", "groups/g1",
                  {{Kind::ServiceAccountSecret, "mdb_sa_id_1/s9"}});
    expectForgets(base + "/groups/g1/databaseUsers/admin/alice", "groups/g1",
                  {{Kind::DatabaseUser, "g1/admin/alice"}, {Kind::X509Certificate, "g1/alice"}});
  }
  expectForgets("/API/ATLAS/V2/ORGS/o1/APIKEYS/5f1a?envelope=true", "orgs/o1", {{Kind::ApiKey, "5f1a"}});
  expectForgets("/api/atlas/v2/groups/g1/databaseUsers/%24external/CN%3Dalice/", "groups/g1",
                {{Kind::DatabaseUser, "g1/$external/CN=alice"}, {Kind::X509Certificate, "g1/CN=alice"}});
}

TEST(CapturePlan, DeletesThatDropNothingDoNotPlan) {
  // DELETE /groups/{g}/apiKeys/{id} only unassigns the key from the project.
  expectNoPlan("DELETE", "/api/atlas/v2/groups/g1/apiKeys/5f1a");
  expectNoPlan("DELETE", "/api/atlas/v2/orgs/o1/apiKeys/5f1a/accessList/10.0.0.1");
  expectNoPlan("DELETE", "/api/atlas/v2/orgs/o1/apiKeys");
  expectNoPlan("DELETE", "/api/atlas/v2/groups/g1/databaseUsers/admin");
  expectNoPlan("DELETE", "/api/atlas/v2/orgs/o1/databaseUsers/admin/alice");
  expectNoPlan("DELETE", "/api/atlas/v2/groups/g1/clusters/c0");
  expectNoPlan("DELETE", "/api/atlas/vX/orgs/o1/apiKeys/5f1a");
}

TEST(CapturePlan, UnassigningAServiceAccountFromAProjectForgetsNothing) {
  // DELETE /groups/{g}/serviceAccounts/{clientId} only removes the account
  // from the project; its secrets stay valid (Atlas Admin API v2,
  // deleteGroupServiceAccount): the vault keeps them.
  expectNoPlan("DELETE", "/api/atlas/v2/groups/g1/serviceAccounts/mdb_sa_id_1");
  expectNoPlan("DELETE", "/api/atlas/v1.0/groups/g1/serviceAccounts/mdb_sa_id_1");
}

// ---- phantomLike / strongPassword ---------------------------------------------------

TEST(CapturePhantom, AUuidBecomesAFreshV4Uuid) {
  std::set<std::string> seen;
  for (std::string_view real : {kApiKeyPrivate, std::string_view("00000000-0000-1000-8000-000000000000"),
                                std::string_view("2F1E8C4A-7B3D-4E5F-9A0B-1C2D3E4F5A6B")}) {
    for (int i = 0; i < 1000; ++i) {
      std::string p = phantomLike(real);
      ASSERT_TRUE(std::regex_match(p, kUuidV4)) << p;
      EXPECT_EQ(p[14], '4');
      EXPECT_NE(std::string_view("89ab").find(p[19]), std::string_view::npos) << p;
      ASSERT_NE(p, real);
      seen.insert(p);
    }
  }
  EXPECT_EQ(seen.size(), 3000u);
}

TEST(CapturePhantom, AServiceAccountSecretKeepsItsPrefixLengthAndClasses) {
  for (int i = 0; i < 1000; ++i) {
    std::string p = phantomLike(kSaSecret);
    ASSERT_EQ(p.size(), kSaSecret.size());
    ASSERT_EQ(p.substr(0, 10), "mdb_sa_sk_");
    ASSERT_NE(p, kSaSecret);
    for (std::size_t j = 10; j < p.size(); ++j) ASSERT_EQ(classOf(p[j]), classOf(kSaSecret[j])) << p << " at " << j;
  }
}

TEST(CapturePhantom, HexStaysHexAndSeparatorsStay) {
  const std::string lower = "0a1b2c3d-4e5f_6789.abcdef";
  const std::string upper = "0A1B2C3D-4E5F_6789.ABCDEF";
  for (int i = 0; i < 1000; ++i) {
    std::string l = phantomLike(lower), u = phantomLike(upper);
    ASSERT_EQ(l.size(), lower.size());
    ASSERT_EQ(u.size(), upper.size());
    ASSERT_NE(l, lower);
    ASSERT_NE(u, upper);
    for (std::size_t j = 0; j < lower.size(); ++j) {
      if (std::string_view("-_.").find(lower[j]) != std::string_view::npos) {
        ASSERT_EQ(l[j], lower[j]);
        ASSERT_EQ(u[j], upper[j]);
      } else {
        ASSERT_NE(std::string_view("0123456789abcdef").find(l[j]), std::string_view::npos) << l;
        ASSERT_NE(std::string_view("0123456789ABCDEF").find(u[j]), std::string_view::npos) << u;
      }
    }
  }
}

TEST(CapturePhantom, OtherSecretsKeepEachCharactersClass) {
  const std::string real = "Ab9-Zq/x+Y=0 k~";
  for (int i = 0; i < 1000; ++i) {
    std::string p = phantomLike(real);
    ASSERT_EQ(p.size(), real.size());
    ASSERT_NE(p, real);
    for (std::size_t j = 0; j < real.size(); ++j) {
      ASSERT_EQ(classOf(p[j]), classOf(real[j])) << p;
      if (classOf(real[j]) == Cls::Other) {
        ASSERT_EQ(p[j], real[j]) << p;
      }
    }
  }
}

TEST(CapturePhantom, EmptyStaysEmptyAndShortSecretsNeverComeBack) {
  EXPECT_EQ(phantomLike(""), "");
  // Few possible values: the retry loop is what keeps the phantom different.
  for (std::string_view real : {"Z", "7", "a1", "-q-"})
    for (int i = 0; i < 1000; ++i) ASSERT_NE(phantomLike(real), real);
}

TEST(CapturePhantom, SecretsWithNothingToVaryDoNotHang) {
  // BUG (capture.cpp phantomLike): a non-empty secret with no character that
  // sameClasses() varies -- "-", "....", "mdb_sa_sk_" alone, "é", "!!" -- makes
  // `p != secret` false forever: phantomLike loops without end, and
  // rewriteResponse with it (an API key whose privateKey is "--", a secret
  // "mdb_sa_sk_") hangs the event loop. Expected: an error or some phantom.
  // Actual: an infinite loop.
  EXPECT_NE(phantomLike("-"), "-");
}

TEST(CapturePassword, StrongPasswordsAre32DistinctAlnumCharacters) {
  std::set<std::string> seen;
  std::set<char> chars;
  for (int i = 0; i < 1000; ++i) {
    std::string p = strongPassword();
    ASSERT_EQ(p.size(), 32u);
    ASSERT_TRUE(isAlnum(p)) << p;
    chars.insert(p.begin(), p.end());
    seen.insert(p);
  }
  EXPECT_EQ(seen.size(), 1000u);
  EXPECT_EQ(chars.size(), 62u);  // 32,000 draws reach every character of the alphabet
}

// ---- rewriteResponse: API keys ------------------------------------------------------

std::string apiKeyBody(std::string_view id = "5f1a2b3c4d5e6f7a8b9c0d1e", std::string_view pub = "abcdefgh",
                       std::string_view priv = kApiKeyPrivate, std::string_view desc = "agent key") {
  // Pretty-printed as Atlas does with ?pretty=true: the whitespace must stay.
  return "{\n  \"desc\" : \"" + std::string(desc) + "\",\n  \"id\" : \"" + std::string(id) +
         "\",\n  \"links\" : [ {\n    \"href\" : \"https://cloud.mongodb.com/api/atlas/v2/orgs/o1/apiKeys/" +
         std::string(id) + "\",\n    \"rel\" : \"self\"\n  } ],\n  \"privateKey\" : \"" + std::string(priv) +
         "\",\n  \"publicKey\" : \"" + std::string(pub) +
         "\",\n  \"roles\" : [ {\n    \"orgId\" : \"o1\",\n    \"roleName\" : \"ORG_MEMBER\"\n  } ]\n}";
}

TEST(CaptureRewrite, ApiKeyAnswerKeepsEveryByteButTheSecret) {
  const std::string body = apiKeyBody();
  auto r = rewriteResponse(plan(Action::MintApiKey, "orgs/o1"), body, origin());
  ASSERT_TRUE(r.ok()) << r.error().message;
  ASSERT_EQ(r->minted.size(), 1u);
  const Minted& m = r->minted[0];
  EXPECT_EQ(m.secret, kApiKeyPrivate);
  EXPECT_TRUE(std::regex_match(m.phantom, kUuidV4)) << m.phantom;
  EXPECT_EQ(r->body, replaced(body, kApiKeyPrivate, m.phantom));
  EXPECT_EQ(r->body.find(kApiKeyPrivate), std::string::npos);
  EXPECT_EQ(r->body.size(), body.size());
  const vault::Entry& e = m.entry;
  EXPECT_EQ(e.name, "captured:api_key:5f1a2b3c4d5e6f7a8b9c0d1e");
  EXPECT_EQ(e.kind, Kind::ApiKey);
  EXPECT_EQ(e.object, "5f1a2b3c4d5e6f7a8b9c0d1e");
  EXPECT_EQ(e.lookup, "abcdefgh");
  EXPECT_EQ(e.scope, "orgs/o1");
  EXPECT_EQ(e.owner, "agent-a");
  EXPECT_EQ(e.target, "cloud.mongodb.com");
  EXPECT_EQ(e.label, "agent key");
  EXPECT_EQ(e.createdAt, 1700000000);
  EXPECT_FALSE(e.pending);
  EXPECT_EQ(r->unclaimed, "api_key 5f1a2b3c4d5e6f7a8b9c0d1e in orgs/o1 (public key abcdefgh)");
}

TEST(CaptureRewrite, ProjectApiKeyAndCompactBody) {
  const std::string body = R"({"id":"k2","publicKey":"zyxwvuts","privateKey":")" + std::string(kApiKeyPrivate) +
                           R"(","roles":[{"groupId":"g1","roleName":"GROUP_READ_ONLY"}]})";
  auto r = rewriteResponse(plan(Action::MintApiKey, "groups/g1"), body, origin());
  ASSERT_TRUE(r.ok()) << r.error().message;
  ASSERT_EQ(r->minted.size(), 1u);
  EXPECT_EQ(r->body, replaced(body, kApiKeyPrivate, r->minted[0].phantom));
  EXPECT_EQ(r->minted[0].entry.scope, "groups/g1");
  EXPECT_EQ(r->minted[0].entry.label, "");  // no desc
}

TEST(CaptureRewrite, ASecretThatAppearsTwiceIsReplacedTwice) {
  std::string body =
      apiKeyBody("k3", "abcdefgh", kApiKeyPrivate, std::string("copy of ") + std::string(kApiKeyPrivate));
  auto r = rewriteResponse(plan(Action::MintApiKey, "orgs/o1"), body, origin());
  ASSERT_TRUE(r.ok()) << r.error().message;
  const std::string& ph = r->minted[0].phantom;
  EXPECT_EQ(r->body, replaced(body, kApiKeyPrivate, ph));
  EXPECT_EQ(r->body.find(kApiKeyPrivate), std::string::npos);
  std::size_t count = 0;
  for (std::size_t at = r->body.find(ph); at != std::string::npos; at = r->body.find(ph, at + 1)) ++count;
  EXPECT_EQ(count, 2u);
}

TEST(CaptureRewrite, AnEscapedSecretIsReserialisedWithoutIt) {
  // "\u002d" is '-': the secret never occurs raw, so the bytes cannot be
  // kept; the meaning is, with the phantom in place.
  std::string escaped = replaced(std::string(kApiKeyPrivate), "-", "\\u002d");
  const std::string body = apiKeyBody("k4", "abcdefgh", escaped, "d\\u00e9j\\u00e0 vu");
  auto r = rewriteResponse(plan(Action::MintApiKey, "orgs/o1"), body, origin());
  ASSERT_TRUE(r.ok()) << r.error().message;
  const Minted& m = r->minted[0];
  EXPECT_EQ(m.secret, kApiKeyPrivate);
  EXPECT_EQ(r->body.find(kApiKeyPrivate), std::string::npos);
  EXPECT_EQ(r->body.find(escaped), std::string::npos);
  json::value in = json::parse(body), out = json::parse(r->body);
  in.as_object()["privateKey"] = m.phantom;
  EXPECT_EQ(out, in);  // the same document, but for the secret
  EXPECT_EQ(m.entry.label, "d\xC3\xA9j\xC3\xA0 vu");
}

TEST(CaptureRewrite, ASecretRawInOneFieldAndEscapedInAnotherIsSwappedInBoth) {
  // BUG (capture.cpp swapped): re-serialising happens only when the secret
  // occurs raw nowhere. Input: privateKey "2f1e8c4a\u002d7b3d-…" (escaped)
  // and desc "2f1e8c4a-7b3d-…" (raw). replaceAll swaps the desc, returns
  // true, and privateKey keeps the escaped real secret; the final check
  // looks for the raw bytes only, so the answer passes with the real
  // private key in it. Expected: privateKey is the phantom (or an error).
  // Actual: privateKey decodes to the real secret. (Atlas escapes
  // consistently, so this needs two spellings of one value in one answer.)
  std::string escaped = replaced(std::string(kApiKeyPrivate), "-", "\\u002d");
  const std::string body = apiKeyBody("k5", "abcdefgh", escaped, kApiKeyPrivate);
  auto r = rewriteResponse(plan(Action::MintApiKey, "orgs/o1"), body, origin());
  if (!r.ok()) return;  // withholding the answer is fine too
  json::value out = json::parse(r->body);
  EXPECT_EQ(out.at("privateKey").as_string(), r->minted[0].phantom);
}

TEST(CaptureRewrite, ApiKeyAnswersWithoutTheDocumentedShapeAreRefused) {
  const Plan p = plan(Action::MintApiKey, "orgs/o1");
  const std::string noPriv = R"({"id":"k","publicKey":"abcdefgh"})";
  const std::string privNumber = R"({"id":"k","publicKey":"abcdefgh","privateKey":12345})";
  const std::string privNull = R"({"id":"k","publicKey":"abcdefgh","privateKey":null})";
  const std::string privEmpty = R"({"id":"k","publicKey":"abcdefgh","privateKey":""})";
  const std::string noPub = R"({"id":"k","privateKey":"x-y"})";
  const std::string noId = R"({"publicKey":"abcdefgh","privateKey":"x-y"})";
  const std::string idNumber = R"({"id":7,"publicKey":"abcdefgh","privateKey":"x-y"})";
  for (const std::string& b : {noPriv, privNumber, privNull, privEmpty, noPub, noId, idNumber})
    EXPECT_FALSE(rewriteResponse(p, b, origin()).ok()) << b;
  for (std::string_view b : {"not json", "", "{\"id\":", "<html>502</html>", "{\"id\":\"k\"} trailing"})
    EXPECT_FALSE(rewriteResponse(p, b, origin()).ok()) << b;
  for (std::string_view b : {"[]", "\"x-y\"", "42", "null", R"([{"id":"k","publicKey":"p","privateKey":"x-y"}])"})
    EXPECT_FALSE(rewriteResponse(p, b, origin()).ok()) << b;
}

TEST(CaptureRewrite, HostileIdsAreRefused) {
  const Plan p = plan(Action::MintApiKey, "orgs/o1");
  const std::string longId(300, 'a');
  for (std::string_view id :
       {std::string_view("a/b"), std::string_view("a\\u0001b"), std::string_view("a\\nb"), std::string_view("a b"),
        std::string_view("a\\u007fb"), std::string_view(longId), std::string_view("")}) {
    EXPECT_FALSE(rewriteResponse(p, apiKeyBody(id), origin()).ok()) << id;
    EXPECT_FALSE(rewriteResponse(p, apiKeyBody("k", id), origin()).ok()) << "publicKey " << id;
  }
  // 256 bytes is the most a vault name takes.
  EXPECT_TRUE(rewriteResponse(p, apiKeyBody(std::string(256, 'a')), origin()).ok());
}

TEST(CaptureRewrite, TheLabelIsTheDescCutOnACharacterBoundary) {
  std::string desc = "a";
  for (int i = 0; i < 150; ++i) desc += "\xC3\xA9";  // é: 1 + 300 bytes
  auto r = rewriteResponse(plan(Action::MintApiKey, "orgs/o1"), apiKeyBody("k6", "abcdefgh", kApiKeyPrivate, desc),
                           origin());
  ASSERT_TRUE(r.ok()) << r.error().message;
  const std::string& label = r->minted[0].entry.label;
  EXPECT_EQ(label.size(), 255u);  // 256 would cut an é in two
  EXPECT_TRUE(text::isUtf8(label));
  EXPECT_EQ(desc.substr(0, label.size()), label);
}

// ---- rewriteResponse: service accounts ---------------------------------------------

std::string serviceAccountBody(std::string_view secretsJson) {
  return R"({"clientId":")" + std::string(kClientId) +
         R"(","createdAt":"2025-01-01T00:00:00Z","description":"for the agent","name":"agent-sa",)"
         R"("roles":["ORG_MEMBER"],"secrets":)" +
         std::string(secretsJson) + "}";
}

std::string secretJson(std::string_view id, std::string_view secret) {
  return R"({"createdAt":"2025-01-01T00:00:00Z","expiresAt":"2025-04-01T00:00:00Z","id":")" + std::string(id) +
         R"(","maskedSecretValue":"mdb_sa_sk_...Ty","secret":")" + std::string(secret) + "\"}";
}

TEST(CaptureRewrite, ServiceAccountSecretsAreSwappedMaskedOnesSkipped) {
  const std::string masked =
      R"({"createdAt":"2025-01-01T00:00:00Z","expiresAt":"2025-04-01T00:00:00Z","id":"s0","maskedSecretValue":"mdb_sa_sk_...Ty"})";
  const std::string body = serviceAccountBody("[" + masked + "," + secretJson("s1", kSaSecret) + "]");
  auto r = rewriteResponse(plan(Action::MintServiceAccount, "orgs/o1"), body, origin());
  ASSERT_TRUE(r.ok()) << r.error().message;
  ASSERT_EQ(r->minted.size(), 1u);
  const Minted& m = r->minted[0];
  EXPECT_EQ(m.secret, kSaSecret);
  EXPECT_EQ(m.phantom.substr(0, 10), "mdb_sa_sk_");
  EXPECT_EQ(r->body, replaced(body, kSaSecret, m.phantom));
  EXPECT_EQ(m.entry.name, "captured:service_account:" + std::string(kClientId) + "/s1");
  EXPECT_EQ(m.entry.kind, Kind::ServiceAccountSecret);
  EXPECT_EQ(m.entry.object, std::string(kClientId) + "/s1");
  EXPECT_EQ(m.entry.lookup, kClientId);
  EXPECT_EQ(m.entry.label, "agent-sa");
  EXPECT_EQ(m.entry.scope, "orgs/o1");
  EXPECT_EQ(r->unclaimed, "service_account " + std::string(kClientId) + "/s1 in orgs/o1");
}

TEST(CaptureRewrite, TwoSecretsOfOneAccountBothSwapped) {
  const std::string other = "mdb_sa_sk_ZzYyXx0987WwVvUu6543TtSsRr2109QqPpOoNn";
  const std::string body = serviceAccountBody("[" + secretJson("s1", kSaSecret) + "," + secretJson("s2", other) + "]");
  auto r = rewriteResponse(plan(Action::MintServiceAccount, "groups/g1"), body, origin());
  ASSERT_TRUE(r.ok()) << r.error().message;
  ASSERT_EQ(r->minted.size(), 2u);
  EXPECT_EQ(r->body, replaced(replaced(body, kSaSecret, r->minted[0].phantom), other, r->minted[1].phantom));
  EXPECT_EQ(r->body.find(kSaSecret), std::string::npos);
  EXPECT_EQ(r->body.find(other), std::string::npos);
}

TEST(CaptureRewrite, AServiceAccountWithOnlyMaskedSecretsMintsNothing) {
  const Plan p = plan(Action::MintServiceAccount, "orgs/o1");
  const std::string masked = R"({"id":"s0","maskedSecretValue":"mdb_sa_sk_...Ty"})";
  for (const std::string& body : {serviceAccountBody("[" + masked + "]"), serviceAccountBody("[]")}) {
    auto r = rewriteResponse(p, body, origin());
    ASSERT_TRUE(r.ok()) << r.error().message;
    EXPECT_TRUE(r->minted.empty());
    EXPECT_EQ(r->body, body);
  }
}

TEST(CaptureRewrite, ServiceAccountAnswersWithoutTheDocumentedShapeAreRefused) {
  const Plan p = plan(Action::MintServiceAccount, "orgs/o1");
  const std::string good = secretJson("s1", kSaSecret);
  for (const std::string& body : {
           serviceAccountBody("{}"),                                                       // not a list
           serviceAccountBody("[\"x\"]"),                                                  // not an object
           serviceAccountBody(R"([{"id":"s1","secret":7}])"),                              // not a string
           serviceAccountBody(R"([{"id":"s1","secret":null}])"),                           //
           serviceAccountBody(R"([{"id":"s1","secret":""}])"),                             // empty
           serviceAccountBody(R"([{"secret":"mdb_sa_sk_x1"}])"),                           // no id
           serviceAccountBody(R"([{"id":"s/1","secret":"mdb_sa_sk_x1"}])"),                // hostile id
           serviceAccountBody(R"([{"id":"s1","value":"mdb_sa_sk_x1"}])"),                  // neither secret nor mask
           std::string(R"({"clientId":")") + std::string(kClientId) + R"(","name":"n"})",  // no secrets at all
           std::string(R"({"name":"n","secrets":[)") + good + "]}",                        // no clientId
           std::string(R"({"clientId":"a/b","secrets":[)") + good + "]}",                  // hostile clientId
           std::string(R"({"clientId":"a\u0000b","secrets":[)") + good + "]}",             //
           std::string(R"({"clientId":")") + std::string(300, 'c') + R"(","secrets":[)" + good + "]}",
           std::string("[") + good + "]",
       })
    EXPECT_FALSE(rewriteResponse(p, body, origin()).ok()) << body;
}

TEST(CaptureRewrite, ANewSecretOfAnAccount) {
  auto p = planFor("POST", "/api/atlas/v2/orgs/o1/serviceAccounts/" + std::string(kClientId) + "/secrets");
  ASSERT_TRUE(p.has_value());
  const std::string body = secretJson("s7", kSaSecret);
  auto r = rewriteResponse(*p, body, origin());
  ASSERT_TRUE(r.ok()) << r.error().message;
  ASSERT_EQ(r->minted.size(), 1u);
  const Minted& m = r->minted[0];
  EXPECT_EQ(r->body, replaced(body, kSaSecret, m.phantom));
  EXPECT_EQ(m.entry.name, "captured:service_account:" + std::string(kClientId) + "/s7");
  EXPECT_EQ(m.entry.lookup, kClientId);
  EXPECT_EQ(m.entry.label, "");
  EXPECT_EQ(m.entry.scope, "orgs/o1");
  // A client id that cannot name an entry (decoded from %2F) and malformed answers.
  auto hostile = planFor("POST", "/api/atlas/v2/orgs/o1/serviceAccounts/a%2Fb/secrets");
  ASSERT_TRUE(hostile.has_value());
  EXPECT_FALSE(rewriteResponse(*hostile, body, origin()).ok());
  EXPECT_FALSE(rewriteResponse(*p, R"({"id":"s7"})", origin()).ok());
  EXPECT_FALSE(rewriteResponse(*p, R"({"id":"s7","secret":["x"]})", origin()).ok());
  EXPECT_FALSE(rewriteResponse(*p, "mdb_sa_sk_x", origin()).ok());
}

// ---- rewriteResponse: a new organization ----------------------------------------

std::string organizationBody(std::string_view apiKey, std::string_view serviceAccount) {
  return R"({"apiKey":)" + std::string(apiKey) +
         R"(,"federationSettingsId":null,"orgOwnerId":"u1",)"
         R"("organization":{"id":"o9","isDeleted":false,"name":"agents"},"serviceAccount":)" +
         std::string(serviceAccount) + "}";
}

TEST(CaptureRewrite, ANewOrganizationsFirstApiKeyAndServiceAccount) {
  const std::string key = R"({"desc":"first","id":"k9","privateKey":")" + std::string(kApiKeyPrivate) +
                          R"(","publicKey":"pubkey99","roles":[]})";
  const std::string sa = serviceAccountBody("[" + secretJson("s9", kSaSecret) + "]");
  const std::string body = organizationBody(key, sa);
  auto r = rewriteResponse(plan(Action::MintOrganization, "orgs"), body, origin());
  ASSERT_TRUE(r.ok()) << r.error().message;
  ASSERT_EQ(r->minted.size(), 2u);
  const Minted& k = r->minted[0];
  const Minted& s = r->minted[1];
  EXPECT_EQ(r->body, replaced(replaced(body, kApiKeyPrivate, k.phantom), kSaSecret, s.phantom));
  EXPECT_EQ(k.entry.name, "captured:api_key:k9");
  EXPECT_EQ(k.entry.lookup, "pubkey99");
  EXPECT_EQ(k.entry.scope, "orgs/o9");  // the new organization's, not the plan's
  EXPECT_EQ(s.entry.name, "captured:service_account:" + std::string(kClientId) + "/s9");
  EXPECT_EQ(s.entry.scope, "orgs/o9");
  EXPECT_TRUE(std::regex_match(k.phantom, kUuidV4));
  EXPECT_EQ(s.phantom.substr(0, 10), "mdb_sa_sk_");
}

TEST(CaptureRewrite, ANewOrganizationWithoutCredentialsOrWithBrokenOnes) {
  const Plan p = plan(Action::MintOrganization, "orgs");
  for (const std::string& body : {organizationBody("null", "null"), std::string(R"({"organization":{"id":"o9"}})")}) {
    auto r = rewriteResponse(p, body, origin());
    ASSERT_TRUE(r.ok()) << r.error().message;
    EXPECT_TRUE(r->minted.empty());
    EXPECT_EQ(r->body, body);
  }
  for (const std::string& body : {
           organizationBody(R"("x")", "null"),                              // apiKey not an object
           organizationBody("null", "[]"),                                  // serviceAccount not an object
           organizationBody(R"({"id":"k","publicKey":"p"})", "null"),       // a key without its private key
           organizationBody("null", R"({"clientId":"c","secrets":[{}]})"),  // a secret atlasgate cannot see
           organizationBody("null", R"({"clientId":"c"})"),                 // no secrets
           std::string("[]"),
       })
    EXPECT_FALSE(rewriteResponse(p, body, origin()).ok()) << body;
  // Without a readable organization id the entry's scope says so.
  const std::string noOrg = R"({"apiKey":{"id":"k","publicKey":"p","privateKey":")" + std::string(kApiKeyPrivate) +
                            R"("},"organization":{"id":"o/9"}})";
  auto r = rewriteResponse(p, noOrg, origin());
  ASSERT_TRUE(r.ok()) << r.error().message;
  ASSERT_EQ(r->minted.size(), 1u);
  EXPECT_EQ(r->minted[0].entry.scope, "orgs/?");
  EXPECT_EQ(r->body.find(kApiKeyPrivate), std::string::npos);
}

// ---- rewriteResponse: X.509 ----------------------------------------------------------

struct PkeyFree {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
};
struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
using Pkey = std::unique_ptr<EVP_PKEY, PkeyFree>;
using Bio = std::unique_ptr<BIO, BioFree>;

std::string bioText(BIO* b) {
  char* p = nullptr;
  long n = BIO_get_mem_data(b, &p);
  return std::string(p, static_cast<std::size_t>(n));
}

enum class KeyForm { Pkcs8, Traditional };

struct Bundle {
  std::string cert;  // PEM, ends with '\n'
  std::string key;   // PEM, ends with '\n'
};

// A self-signed certificate for `key` with serial 0x1A2B3C4D5E6F.
Bundle makeBundle(EVP_PKEY* key, KeyForm form) {
  std::unique_ptr<X509, X509Free> x(X509_new());
  X509_set_version(x.get(), 2);
  BIGNUM* bn = nullptr;
  BN_hex2bn(&bn, "1A2B3C4D5E6F");
  BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x.get()));
  BN_free(bn);
  X509_gmtime_adj(X509_getm_notBefore(x.get()), 0);
  X509_gmtime_adj(X509_getm_notAfter(x.get()), 86400);
  X509_set_pubkey(x.get(), key);
  X509_NAME* name = X509_get_subject_name(x.get());
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>("alice"), -1, -1, 0);
  X509_set_issuer_name(x.get(), name);
  EXPECT_GT(X509_sign(x.get(), key, EVP_PKEY_is_a(key, "ED25519") ? nullptr : EVP_sha256()), 0);
  Bundle b;
  Bio cb(BIO_new(BIO_s_mem()));
  EXPECT_EQ(PEM_write_bio_X509(cb.get(), x.get()), 1);
  b.cert = bioText(cb.get());
  Bio kb(BIO_new(BIO_s_mem()));
  int ok = form == KeyForm::Traditional
               ? PEM_write_bio_PrivateKey_traditional(kb.get(), key, nullptr, nullptr, 0, nullptr, nullptr)
               : PEM_write_bio_PrivateKey(kb.get(), key, nullptr, nullptr, 0, nullptr, nullptr);
  EXPECT_EQ(ok, 1);
  b.key = bioText(kb.get());
  return b;
}

Pkey readKey(std::string_view pem) {
  Bio in(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  return Pkey(PEM_read_bio_PrivateKey(in.get(), nullptr, nullptr, nullptr));
}

std::string groupOf(EVP_PKEY* k) {
  char g[64] = {};
  size_t len = 0;
  if (EVP_PKEY_get_group_name(k, g, sizeof g, &len) != 1) return {};
  return g;
}

const Plan kCertPlan{Action::MintCertificate, "groups/g1", "alice", {}};

// The answer of POST …/certs (cert then key, as Atlas sends it) rewritten:
// the certificate kept byte for byte, the key a fresh one of the same kind.
void expectKeySwapped(EVP_PKEY* real, KeyForm form, std::string_view beginLine) {
  Bundle b = makeBundle(real, form);
  ASSERT_EQ(b.key.rfind(beginLine, 0), 0u) << b.key.substr(0, 40);
  for (const std::string& body : {b.cert + b.key, b.key + b.cert, b.cert + b.key.substr(0, b.key.size() - 1)}) {
    auto r = rewriteResponse(kCertPlan, body, origin());
    ASSERT_TRUE(r.ok()) << r.error().message;
    ASSERT_EQ(r->minted.size(), 1u);
    const Minted& m = r->minted[0];
    std::string realBlock = b.key.substr(0, b.key.size() - 1);  // the block ends at its END line
    EXPECT_EQ(m.secret, realBlock);
    EXPECT_EQ(r->body, replaced(body, realBlock, m.phantom));
    EXPECT_NE(r->body.find(b.cert), std::string::npos);  // the certificate, byte for byte
    EXPECT_EQ(r->body.find(realBlock), std::string::npos);
    EXPECT_EQ(r->body.find(realBlock.substr(beginLine.size() + 1, 64)), std::string::npos);  // not even a line of it
    EXPECT_EQ(m.phantom.rfind(beginLine, 0), 0u) << m.phantom.substr(0, 40);
    EXPECT_NE(m.phantom.back(), '\n');
    Pkey fake = readKey(m.phantom);
    ASSERT_TRUE(fake) << m.phantom;
    EXPECT_EQ(EVP_PKEY_get_base_id(fake.get()), EVP_PKEY_get_base_id(real));
    EXPECT_EQ(EVP_PKEY_get_bits(fake.get()), EVP_PKEY_get_bits(real));
    EXPECT_EQ(groupOf(fake.get()), groupOf(real));
    EXPECT_NE(EVP_PKEY_eq(fake.get(), real), 1);
    const vault::Entry& e = m.entry;
    EXPECT_EQ(e.name, "captured:x509:g1/alice/1A2B3C4D5E6F");
    EXPECT_EQ(e.kind, Kind::X509Certificate);
    EXPECT_EQ(e.object, "g1/alice/1A2B3C4D5E6F");
    EXPECT_EQ(e.lookup, "alice");
    EXPECT_EQ(e.scope, "groups/g1");
    EXPECT_EQ(e.owner, "agent-a");
    EXPECT_EQ(r->unclaimed, "an X.509 certificate (serial 1A2B3C4D5E6F) for database user alice in groups/g1");
  }
}

TEST(CaptureCertificate, Rsa2048Pkcs8) {
  Pkey k(EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", static_cast<size_t>(2048)));
  ASSERT_TRUE(k);
  expectKeySwapped(k.get(), KeyForm::Pkcs8, "-----BEGIN PRIVATE KEY-----");
}

TEST(CaptureCertificate, Rsa2048Traditional) {
  Pkey k(EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", static_cast<size_t>(2048)));
  ASSERT_TRUE(k);
  expectKeySwapped(k.get(), KeyForm::Traditional, "-----BEGIN RSA PRIVATE KEY-----");
}

TEST(CaptureCertificate, EcP256BothForms) {
  Pkey k(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
  ASSERT_TRUE(k);
  expectKeySwapped(k.get(), KeyForm::Pkcs8, "-----BEGIN PRIVATE KEY-----");
  expectKeySwapped(k.get(), KeyForm::Traditional, "-----BEGIN EC PRIVATE KEY-----");
}

TEST(CaptureCertificate, Ed25519) {
  Pkey k(EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519"));
  ASSERT_TRUE(k);
  expectKeySwapped(k.get(), KeyForm::Pkcs8, "-----BEGIN PRIVATE KEY-----");
}

TEST(CaptureCertificate, AnswersThatAreNotOneCertAndOneKeyAreRefused) {
  Pkey k(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
  ASSERT_TRUE(k);
  Bundle b = makeBundle(k.get(), KeyForm::Pkcs8);
  Pkey k2(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
  Bundle b2 = makeBundle(k2.get(), KeyForm::Pkcs8);
  const std::string noEnd = b.key.substr(0, b.key.find("-----END"));
  const std::string cutBegin = "-----BEGIN PRIVATE KEY";  // the BEGIN line never closes
  const std::string badBase64 = "-----BEGIN PRIVATE KEY-----\nnot base64!\n-----END PRIVATE KEY-----\n";
  const std::string mismatched = replaced(b.key, "-----END PRIVATE KEY-----", "-----END RSA PRIVATE KEY-----");
  for (const std::string& body : {
           b.cert + noEnd,            // "PRIVATE KEY" but no complete block
           b.cert + cutBegin,         //
           b.cert + mismatched,       // END of another label
           b.cert + "PRIVATE KEY\n",  //
           b.cert + b.key + b2.key,   // two keys
           b.cert + b.key + b.key,    //
           b.key,                     // no certificate
           b.key + b.key.substr(0, 20) + "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
           b.cert,              // no key
           b.cert + badBase64,  // a key block that does not parse
           std::string(),       //
           std::string("{\"certificate\":\"x\"}"),
       }) {
    auto r = rewriteResponse(kCertPlan, body, origin());
    EXPECT_FALSE(r.ok()) << body;
  }
}

TEST(CaptureCertificate, AnIncompleteSecondKeyBlockIsRefused) {
  // BUG (capture.cpp rewriteCertificate): "a private key that is not a
  // complete PEM block" is refused only when there is no complete block at
  // all. Input: certificate + a complete key + "-----BEGIN PRIVATE KEY-----"
  // and the base64 lines of a second key without its END line. Expected: an
  // error (the body cannot be shown). Actual: the first key is swapped and
  // the second key's base64 reaches the agent untouched.
  Pkey k(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
  Pkey k2(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
  Bundle b = makeBundle(k.get(), KeyForm::Pkcs8), b2 = makeBundle(k2.get(), KeyForm::Pkcs8);
  std::string partial = b2.key.substr(0, b2.key.find("-----END"));
  EXPECT_FALSE(rewriteResponse(kCertPlan, b.cert + b.key + partial, origin()).ok());
}

TEST(CaptureCertificate, AUserNameThatCannotNameAnEntryIsRefused) {
  Pkey k(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
  Bundle b = makeBundle(k.get(), KeyForm::Pkcs8);
  auto p = planFor("POST", "/api/atlas/v2/groups/g1/databaseUsers/CN%3Dalice%2FO%3Dx/certs");
  ASSERT_TRUE(p.has_value());
  EXPECT_EQ(p->object, "CN=alice/O=x");
  EXPECT_FALSE(rewriteResponse(*p, b.cert + b.key, origin()).ok());
}

TEST(CaptureCertificate, AnEncryptedKeyIsRefusedWithoutAPassphrasePrompt) {
  // OpenSSL's default callback would print "Enter PEM pass phrase:" and
  // read the daemon's terminal or stdin: the rewrite must refuse at once.
  Pkey k(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
  ASSERT_TRUE(k);
  Bundle b = makeBundle(k.get(), KeyForm::Pkcs8);
  char pass[] = "pw";
  for (bool traditional : {false, true}) {
    Bio kb(BIO_new(BIO_s_mem()));
    int ok = traditional
                 ? PEM_write_bio_PrivateKey_traditional(kb.get(), k.get(), EVP_aes_128_cbc(),
                                                        reinterpret_cast<unsigned char*>(pass), 2, nullptr, nullptr)
                 : PEM_write_bio_PrivateKey(kb.get(), k.get(), EVP_aes_128_cbc(),
                                            reinterpret_cast<unsigned char*>(pass), 2, nullptr, nullptr);
    ASSERT_EQ(ok, 1);
    std::string encrypted = bioText(kb.get());
    ASSERT_NE(encrypted.find(traditional ? "Proc-Type: 4,ENCRYPTED" : "BEGIN ENCRYPTED PRIVATE KEY"),
              std::string::npos);
    EXPECT_FALSE(rewriteResponse(kCertPlan, b.cert + encrypted, origin()).ok()) << encrypted;
  }
}

// ---- swapDatabasePassword -------------------------------------------------------------

TEST(CapturePasswordSwap, PostGivesAtlasAStrongPasswordAndKeepsTheAgentsAsThePhantom) {
  auto p = planFor("POST", "/api/atlas/v2/groups/g1/databaseUsers");
  ASSERT_TRUE(p.has_value());
  const std::string body =
      R"({"databaseName":"admin","username":"bob","password":"agent-pw-1","roles":[{"databaseName":"admin","roleName":"readWrite"}],"scopes":[]})";
  auto r = swapDatabasePassword(*p, body, origin());
  ASSERT_TRUE(r.ok()) << r.error().message;
  ASSERT_TRUE(r->has_value());
  const PasswordSwap& s = **r;
  EXPECT_EQ(s.minted.phantom, "agent-pw-1");
  EXPECT_EQ(s.minted.secret.size(), 32u);
  EXPECT_TRUE(isAlnum(s.minted.secret));
  json::value sent = json::parse(s.body), agent = json::parse(body);
  EXPECT_EQ(sent.at("password").as_string(), s.minted.secret);
  agent.as_object()["password"] = s.minted.secret;
  EXPECT_EQ(sent, agent);  // nothing else changed
  EXPECT_EQ(s.body.find("agent-pw-1"), std::string::npos);
  const vault::Entry& e = s.minted.entry;
  EXPECT_EQ(e.name, "captured:database_user:g1/admin/bob");
  EXPECT_EQ(e.kind, Kind::DatabaseUser);
  EXPECT_EQ(e.object, "g1/admin/bob");
  EXPECT_EQ(e.lookup, "bob");
  EXPECT_EQ(e.scope, "groups/g1");
  EXPECT_EQ(e.owner, "agent-a");
  EXPECT_EQ(e.target, "cloud.mongodb.com");
  EXPECT_TRUE(e.pending);
}

TEST(CapturePasswordSwap, PostWithoutADatabaseNameIsAdmin) {
  auto r = swapDatabasePassword(plan(Action::SetDatabasePassword, "groups/g1"),
                                R"({"username":"carol","password":"pw"})", origin());
  ASSERT_TRUE(r.ok() && r->has_value());
  EXPECT_EQ((*r)->minted.entry.name, "captured:database_user:g1/admin/carol");
}

TEST(CapturePasswordSwap, PatchUsesThePathsDatabaseAndUser) {
  auto p = planFor("PATCH", "/api/atlas/v2/groups/g1/databaseUsers/admin/alice");
  ASSERT_TRUE(p.has_value());
  // The body's username (if any) does not name the entry: the path does.
  auto r = swapDatabasePassword(*p, R"({"password":"new-agent-pw","username":"mallory"})", origin());
  ASSERT_TRUE(r.ok()) << r.error().message;
  ASSERT_TRUE(r->has_value());
  const PasswordSwap& s = **r;
  EXPECT_EQ(s.minted.entry.name, "captured:database_user:g1/admin/alice");
  EXPECT_EQ(s.minted.entry.lookup, "alice");
  EXPECT_EQ(s.minted.phantom, "new-agent-pw");
  EXPECT_EQ(json::parse(s.body).at("password").as_string(), s.minted.secret);
  EXPECT_TRUE(s.minted.entry.pending);
}

TEST(CapturePasswordSwap, NoPasswordIsNothingToCapture) {
  const Plan post = plan(Action::SetDatabasePassword, "groups/g1");
  const Plan patch = plan(Action::SetDatabasePassword, "groups/g1", "admin/alice");
  for (std::string_view body : {R"({"username":"CN=x","databaseName":"$external","x509Type":"MANAGED"})",
                                R"({"roles":[]})", "{}", "", " \r\n\t", R"({"Password":"pw","username":"u"})"}) {
    for (const Plan* p : {&post, &patch}) {
      auto r = swapDatabasePassword(*p, body, origin());
      ASSERT_TRUE(r.ok()) << body << ": " << r.error().message;
      EXPECT_FALSE(r->has_value()) << body;
    }
  }
}

TEST(CapturePasswordSwap, ABodyAtlasgateCannotReadIsRefusedNotPassedOn) {
  // A lenient parser upstream might read what atlasgate cannot and set the
  // agent's own password.
  const Plan post = plan(Action::SetDatabasePassword, "groups/g1");
  const std::string user = R"({"username":"bob","password":"agent-pw"})";
  for (const std::string& body : {"\xEF\xBB\xBF" + user, user + " trailing", user + user, std::string("not json"),
                                  std::string("{\"password\":"), std::string("[]"), std::string("\"password\""),
                                  std::string("{'username':'bob','password':'pw'}"), "/*x*/" + user})
    EXPECT_FALSE(swapDatabasePassword(post, body, origin()).ok()) << body;
}

TEST(CapturePasswordSwap, MalformedPasswordsAndUsersAreRefused) {
  const Plan post = plan(Action::SetDatabasePassword, "groups/g1");
  for (std::string_view body : {R"({"username":"bob","password":7})", R"({"username":"bob","password":null})",
                                R"({"username":"bob","password":["x"]})", R"({"username":"a/b","password":"pw"})",
                                R"({"username":"a\u0001b","password":"pw"})", R"({"username":"","password":"pw"})",
                                R"({"username":7,"password":"pw"})", R"({"password":"pw"})"})
    EXPECT_FALSE(swapDatabasePassword(post, body, origin()).ok()) << body;
  const std::string longUser = R"({"username":")" + std::string(300, 'u') + R"(","password":"pw"})";
  EXPECT_FALSE(swapDatabasePassword(post, longUser, origin()).ok());
  // PATCH: the path's user or database cannot name an entry.
  for (std::string_view object : {"admin/a/b", "admin/", "/alice", "ad min/alice"})
    EXPECT_FALSE(swapDatabasePassword(plan(Action::SetDatabasePassword, "groups/g1", std::string(object)),
                                      R"({"password":"pw"})", origin())
                     .ok())
        << object;
  auto viaPath = planFor("PATCH", "/api/atlas/v2/groups/g1/databaseUsers/admin/a%2Fb");
  ASSERT_TRUE(viaPath.has_value());
  EXPECT_FALSE(swapDatabasePassword(*viaPath, R"({"password":"pw"})", origin()).ok());
}

// ---- Tripwire ------------------------------------------------------------------------

// Whether the wire trips over `body` fed in pieces of `size` bytes.
bool trips(std::string_view body, std::size_t size, std::string extra = {}) {
  Tripwire w(std::move(extra));
  for (std::size_t at = 0; at < body.size(); at += size)
    if (w.hit(body.substr(at, size))) return true;
  return false;
}

TEST(CaptureTripwire, MintedSecretsTripItMaskedOnesDoNot) {
  const std::string key = apiKeyBody();
  const std::string sa = serviceAccountBody("[" + secretJson("s1", kSaSecret) + "]");
  Pkey k(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
  Bundle b = makeBundle(k.get(), KeyForm::Pkcs8);
  const std::string maskedKey = replaced(key, kApiKeyPrivate, "********-****-****-1c2d3e4f5a6b");
  const std::string maskedSa = R"({"clientId":"c","secrets":[{"id":"s","maskedSecretValue":"mdb_sa_sk_...Ty"}]})";
  const std::string maskedSa2 = R"({"maskedSecretValue":"mdb_sa_sk_****Ty","other":"mdb_sa_sk_"})";
  for (std::size_t size : {std::size_t(1), std::size_t(2), std::size_t(7), std::size_t(63), std::size_t(64),
                           std::size_t(65), std::size_t(1000), std::size_t(1) << 20}) {
    SCOPED_TRACE(size);
    EXPECT_TRUE(trips(key, size));
    EXPECT_TRUE(trips(sa, size));
    EXPECT_TRUE(trips(b.cert + b.key, size));
    EXPECT_TRUE(trips(R"({"user":"bob","note":"pw is Xy7Qw2Lk9"})", size, "Xy7Qw2Lk9"));
    EXPECT_FALSE(trips(maskedKey, size));
    EXPECT_FALSE(trips(maskedSa, size));
    EXPECT_FALSE(trips(maskedSa2, size));
    EXPECT_FALSE(trips(b.cert, size));
    EXPECT_FALSE(trips(R"({"results":[{"name":"Cluster0"}],"totalCount":1})", size));
    EXPECT_FALSE(trips(R"({"user":"bob","note":"pw is Xy7Qw2L"})", size, "Xy7Qw2Lk9"));
  }
}

TEST(CaptureTripwire, ASecretSplitAcrossManyPiecesIsFound) {
  // The match straddles three or more pieces, each shorter than the pattern.
  const std::string body = std::string(1000, ' ') + "\"privateKey\" : \"" + std::string(kApiKeyPrivate) + "\"";
  for (std::size_t size = 1; size <= 40; ++size) EXPECT_TRUE(trips(body, size)) << size;
  const std::string longExtra(200, 'p');
  const std::string withExtra = "{\"x\":\"" + longExtra + "\"}";
  for (std::size_t size : {std::size_t(1), std::size_t(3), std::size_t(64), std::size_t(199)})
    EXPECT_TRUE(trips(withExtra, size, longExtra)) << size;
}

TEST(CaptureTripwire, APieceEndingInsideTheExtraSecretTripsItself) {
  // The piece that would carry the password's start trips: the next piece,
  // with the rest, is not needed to see it (and nothing of it goes out).
  const std::string password = strongPassword();
  for (std::size_t cut = 8; cut < password.size(); ++cut) {
    Tripwire w(password);
    EXPECT_TRUE(w.hit("{\"password\":\"" + password.substr(0, cut))) << cut;
  }
  // Fewer than 8 of its characters at a piece's end do not trip it (yet).
  Tripwire w(password);
  EXPECT_FALSE(w.hit("{\"password\":\"" + password.substr(0, 7)));
  EXPECT_TRUE(w.hit(password.substr(7)));
}

TEST(CaptureTripwire, ALongRunOfBlanksBeforeTheValueDoesNotHideIt) {
  // BUG (capture.cpp Tripwire::hit): a match across pieces is looked for in
  // a seam of the previous 64 bytes and the next 64. Input: "privateKey",
  // then ':' and 100 spaces (JSON allows any amount), then the unmasked
  // value, fed in pieces of 100 bytes. Expected: a hit, as when the same
  // body is fed whole. Actual: no hit; the private key is relayed.
  const std::string body = "{\"privateKey\":" + std::string(100, ' ') + "\"" + std::string(kApiKeyPrivate) + "\"}";
  ASSERT_TRUE(trips(body, body.size()));
  EXPECT_TRUE(trips(body, 100));
}

}  // namespace
}  // namespace atlasgate::proxy::capture

namespace atlasgate::proxy::capture {

// The users a request would create, change or delete: what keeps agents off
// the database users atlasgate manages (exchange.cpp).
TEST(DatabaseUsersTouched, EveryWriteOnAUserBothViewsAndPostBodies) {
  using V = std::vector<std::string>;
  const std::string base = "/api/atlas/v2/groups/5f0000000000000000000001/databaseUsers";
  EXPECT_EQ(databaseUsersTouched("PATCH", base + "/admin/atlasgate-a-1", ""), (V{"admin", "atlasgate-a-1"}));
  EXPECT_EQ(databaseUsersTouched("delete", base + "/admin/u", ""), (V{"admin", "u"}));
  EXPECT_EQ(databaseUsersTouched("POST", base + "/u/certs", ""), (V{"u", "certs"}));
  EXPECT_EQ(databaseUsersTouched("PUT", "/api/public/v1.0/groups/g/databaseUsers/admin/u", ""), (V{"admin", "u"}));
  EXPECT_EQ(databaseUsersTouched("GET", base + "/admin/u", ""), V{});
  EXPECT_EQ(databaseUsersTouched("POST", base, R"({"username": "atlasgate-x", "password": "p"})"), V{"atlasgate-x"});
  EXPECT_EQ(databaseUsersTouched("POST", base, "not json"), V{""});
  // An encoded slash: the split reading names the user too.
  EXPECT_EQ(databaseUsersTouched("PATCH", base + "/admin%2Fatlasgate-b", ""),
            (V{"admin/atlasgate-b", "admin", "atlasgate-b"}));
  EXPECT_EQ(databaseUsersTouched("PATCH", "/api/atlas/v2/groups/g/clusters/c", ""), V{});
}

}  // namespace atlasgate::proxy::capture
