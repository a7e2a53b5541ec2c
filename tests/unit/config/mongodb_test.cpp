// protocol: mongodb targets, their credentials (database_user,
// temporary_user) and protocol: mongodb rules (README "MongoDB clusters").

#include <gtest/gtest.h>

#include <string>
#include <string_view>
#include <vector>

#include "config/config.h"

namespace atlasgate::config {
namespace {

using namespace std::chrono_literals;

Result<Config> parse(std::string_view yaml, bool isPrivate = false) { return parseConfig(yaml, "m.yaml", isPrivate); }

// Passes when yaml fails to load with one line that starts "m.yaml:WHERE: "
// and contains every one of words.
testing::AssertionResult failsAt(std::string_view yaml, std::string_view where, std::vector<std::string_view> words,
                                 bool isPrivate = false) {
  const Result<Config> r = parse(yaml, isPrivate);
  if (r.ok()) return testing::AssertionFailure() << "loaded without error";
  const std::string& m = r.error().message;
  const std::string prefix = "m.yaml:" + std::string(where) + ": ";
  if (m.rfind(prefix, 0) != 0) return testing::AssertionFailure() << "expected prefix \"" << prefix << "\" in: " << m;
  if (m.find('\n') != std::string::npos) return testing::AssertionFailure() << "message is not one line: " << m;
  for (std::string_view w : words) {
    if (m.find(w) == std::string::npos) return testing::AssertionFailure() << "no \"" << w << "\" in: " << m;
  }
  return testing::AssertionSuccess() << m;
}

// An https target, then a mongodb one whose further keys follow (from line 5, indented 4).
constexpr std::string_view kTargets =
    "targets:\n"
    "  - host: cloud.mongodb.com\n"
    "  - host: \"*.mongodb.net\"\n"
    "    protocol: mongodb\n";

std::string mongoTarget(std::string_view rest) { return std::string(kTargets) + std::string(rest); }

// The https target has a credential to mint temporary users with; the mongodb
// target's further keys follow from line 6, indented 4.
constexpr std::string_view kMintingTargets =
    "targets:\n"
    "  - host: cloud.mongodb.com\n"
    "    credentials: {service_account: {client_id: mdb_sa_id_x, client_secret_env: S}}\n"
    "  - host: \"*.mongodb.net\"\n"
    "    protocol: mongodb\n";

std::string minting(std::string_view rest) { return std::string(kMintingTargets) + std::string(rest); }

// A temporary_user under the mongodb target of kMintingTargets; its keys follow
// from line 8, indented 8.
std::string temporaryUser(std::string_view keys) {
  return minting("    credentials:\n      temporary_user:\n" + std::string(keys));
}

constexpr std::string_view kRoles = "        roles: [{roleName: readWrite, databaseName: app}]\n";
constexpr std::string_view kGroup = "        group_id: 0123456789abcdef01234567\n";

// A rule of kTargets; "protocol: mongodb" when mongo, then the rest (from
// line 9 when mongo, 8 otherwise, indented 6).
std::string ruleWith(bool mongo, std::string_view rest) {
  return std::string(kTargets) + "rules:\n  list:\n    - name: r\n" + (mongo ? "      protocol: mongodb\n" : "") +
         std::string(rest);
}

// ---- targets -----------------------------------------------------------------

TEST(ConfigMongodb, TargetDefaults) {
  Result<Config> r = parse(kTargets);
  ASSERT_TRUE(r.ok()) << r.error().message;
  ASSERT_EQ(r->targets.size(), 2u);
  const Target& https = r->targets[0];
  EXPECT_EQ(https.protocol, Protocol::Https);
  EXPECT_EQ(https.upstreamPort, 443);
  EXPECT_TRUE(https.resolve);
  const Target& mongo = r->targets[1];
  EXPECT_EQ(mongo.protocol, Protocol::Mongodb);
  EXPECT_EQ(mongo.host, "*.mongodb.net");
  EXPECT_EQ(mongo.upstreamPort, 27017);
  EXPECT_FALSE(mongo.resolve);
  EXPECT_TRUE(mongo.addresses.empty());
  EXPECT_TRUE(mongo.credentials.empty());
  EXPECT_EQ(mongo.loc.line, 3);
  EXPECT_EQ(mongodbPort(*r), 27017);
  EXPECT_EQ(protocolName(Protocol::Https), "https");
  EXPECT_EQ(protocolName(Protocol::Mongodb), "mongodb");

  Result<Config> none = parse("targets:\n  - host: cloud.mongodb.com\n    protocol: HTTPS\n");
  ASSERT_TRUE(none.ok()) << none.error().message;
  EXPECT_EQ(none->targets[0].protocol, Protocol::Https);
  EXPECT_EQ(mongodbPort(*none), 0);
}

TEST(ConfigMongodb, HostPatternsAndNames) {
  for (auto [written, host] : std::vector<std::pair<std::string_view, std::string_view>>{
           {"\"*.MongoDB.NET.\"", "*.mongodb.net"},
           {"\"*.ab1cd.mongodb.net\"", "*.ab1cd.mongodb.net"},
           {"Cluster0.AB1CD.mongodb.net.", "cluster0.ab1cd.mongodb.net"},
           {"db.internal", "db.internal"}}) {
    Result<Config> r =
        parse("targets:\n  - host: cloud.mongodb.com\n  - host: " + std::string(written) + "\n    protocol: mongodb\n");
    ASSERT_TRUE(r.ok()) << written << ": " << r.error().message;
    EXPECT_EQ(r->targets[1].host, host);
  }
  auto pattern = [](std::string_view host) {
    return "targets:\n  - host: cloud.mongodb.com\n  - host: " + std::string(host) + "\n    protocol: mongodb\n";
  };
  const std::string_view twoLabels = "after \"*.\" a DNS name of two labels or more is expected";
  for (std::string_view bad :
       {"\"*.net\"", "\"*.\"", "\"*.net.\"", "\"*.*.mongodb.net\"", "\"*.-x.mongodb.net\"", "\"*.mongo_db.net\""}) {
    EXPECT_TRUE(failsAt(pattern(bad), "3:11", {"targets[1].host: ", twoLabels})) << bad;
  }
  EXPECT_TRUE(failsAt(pattern("\"**.mongodb.net\""), "3:11", {"targets[1].host", "not a valid DNS name"}));
  EXPECT_TRUE(failsAt(pattern("\"x.*.mongodb.net\""), "3:11", {"not a valid DNS name"}));
  EXPECT_TRUE(failsAt(pattern("10.0.0.1"), "3:11", {"is an IP address"}));
  // A pattern is for mongodb targets only.
  EXPECT_TRUE(failsAt("targets:\n  - host: \"*.mongodb.com\"\n", "2:11",
                      {"targets[0].host", "\"*.mongodb.com\" is not a valid DNS name"}));
  // One host, one target, whatever the protocols.
  EXPECT_TRUE(failsAt(pattern("Cloud.MongoDB.com"), "3:11",
                      {"targets[1].host: duplicate target host \"cloud.mongodb.com\" (first at line 2)"}));
  EXPECT_TRUE(failsAt(mongoTarget("  - host: \"*.MONGODB.net\"\n    protocol: mongodb\n"), "5:11",
                      {"duplicate target host \"*.mongodb.net\" (first at line 3)"}));
}

TEST(ConfigMongodb, Protocol) {
  EXPECT_TRUE(failsAt("targets:\n  - host: a.example\n    protocol: mongo\n", "3:15",
                      {"targets[0].protocol: expected one of https, mongodb, got \"mongo\"", "did you mean"}));
  EXPECT_TRUE(failsAt("targets:\n  - host: a.example\n    protocol: [mongodb]\n", "3:15",
                      {"targets[0].protocol: expected one of https, mongodb"}));
  Result<Config> r = parse("targets:\n  - host: a.example\n  - host: b.example\n    protocol: MongoDB\n");
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->targets[1].protocol, Protocol::Mongodb);
}

TEST(ConfigMongodb, AnHttpsTargetIsRequired) {
  EXPECT_TRUE(failsAt("targets:\n  - host: \"*.mongodb.net\"\n    protocol: mongodb\n", "2:3",
                      {"targets: at least one https target is required (the Atlas Administration API)"}));
  EXPECT_TRUE(failsAt("targets:\n  - {host: a.example, protocol: mongodb}\n  - {host: b.example, protocol: mongodb}\n",
                      "2:3", {"at least one https target is required"}));
}

TEST(ConfigMongodb, Port) {
  Result<Config> r = parse(mongoTarget("    port: 27018\n"));
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->targets[1].upstreamPort, 27018);
  EXPECT_EQ(mongodbPort(*r), 27018);
  EXPECT_EQ(r->targets[0].upstreamPort, 443);

  EXPECT_TRUE(failsAt(mongoTarget("    port: 443\n"), "5:11", {"targets[1].port: 443 is the https targets' port"}));
  EXPECT_TRUE(failsAt(mongoTarget("    port: 0\n"), "5:11", {"targets[1].port: expected an integer from 1 to 65535"}));
  EXPECT_TRUE(failsAt(mongoTarget("    port: 65536\n"), "5:11", {"targets[1].port", "from 1 to 65535"}));
  EXPECT_TRUE(failsAt(mongoTarget("    port: x\n"), "5:11", {"targets[1].port", "from 1 to 65535"}));
  EXPECT_TRUE(failsAt("targets:\n  - host: a.example\n    port: 8443\n", "3:5",
                      {"targets[0].port: only mongodb targets have a port (https targets: upstream_port)"}));
  for (std::string_view key : {"addresses: [192.0.2.1]", "resolve: true", "resolve: false", "upstream_port: 27017"}) {
    const std::string name(key.substr(0, key.find(':')));
    EXPECT_TRUE(failsAt(mongoTarget("    " + std::string(key) + "\n"), "5:5",
                        {"targets[1]." + name + ": not for a mongodb target", "its port is `port`"}))
        << key;
  }
}

TEST(ConfigMongodb, EveryMongodbTargetSharesOnePort) {
  const std::string two = mongoTarget("  - host: db.internal\n    protocol: mongodb\n");
  Result<Config> r = parse(two);
  ASSERT_TRUE(r.ok()) << r.error().message;
  r = parse(two + "    port: 27017\n");
  ASSERT_TRUE(r.ok()) << r.error().message;
  r = parse(mongoTarget("    port: 27020\n  - host: db.internal\n    protocol: mongodb\n    port: 27020\n"));
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(mongodbPort(*r), 27020);

  EXPECT_TRUE(failsAt(two + "    port: 27018\n", "5:5",
                      {"targets[2]: every mongodb target must use one port (*.mongodb.net has 27017)"}));
  EXPECT_TRUE(failsAt(mongoTarget("    port: 27018\n  - host: b.example\n  - host: db.internal\n"
                                  "    protocol: mongodb\n"),
                      "7:5", {"targets[3]: every mongodb target must use one port (*.mongodb.net has 27018)"}));
}

// ---- credentials of mongodb targets --------------------------------------------

TEST(ConfigMongodb, DatabaseUser) {
  Result<Config> r =
      parse(mongoTarget("    credentials:\n"
                        "      database_user:\n"
                        "        username: agent-app\n"
                        "        password_env: DB_PASSWORD\n"));
  ASSERT_TRUE(r.ok()) << r.error().message;
  ASSERT_EQ(r->targets[1].credentials.size(), 1u);
  const Credential& c = r->targets[1].credentials[0];
  EXPECT_EQ(c.name, "default");
  ASSERT_TRUE(c.databaseUser.has_value());
  EXPECT_FALSE(c.temporaryUser || c.serviceAccount || c.apiKey);
  EXPECT_EQ(c.databaseUser->username, "agent-app");
  EXPECT_EQ(c.databaseUser->password.env, "DB_PASSWORD");
  EXPECT_EQ(c.databaseUser->password.loc.line, 8);
  EXPECT_EQ(c.databaseUser->authSource, "admin");
  EXPECT_EQ(c.describe(), "database_user:agent-app");

  r = parse(mongoTarget("    credentials:\n"
                        "      - name: ro\n"
                        "        agents: [\"ro-*\"]\n"
                        "        database_user: {username: ro, password_file: /etc/pw, auth_source: $external}\n"
                        "      - name: rw\n"
                        "        database_user: {username: rw, password: s3cret}\n"),
            /*isPrivate=*/true);
  ASSERT_TRUE(r.ok()) << r.error().message;
  const auto& list = r->targets[1].credentials;
  ASSERT_EQ(list.size(), 2u);
  EXPECT_EQ(list[0].agents, std::vector<std::string>{"ro-*"});
  EXPECT_EQ(list[0].databaseUser->password.file, "/etc/pw");
  EXPECT_EQ(list[0].databaseUser->authSource, "$external");
  EXPECT_EQ(list[1].databaseUser->password.inlineValue, "s3cret");
}

TEST(ConfigMongodb, DatabaseUserErrors) {
  auto user = [](std::string_view keys) {
    return mongoTarget("    credentials:\n      database_user:\n" + std::string(keys));
  };
  EXPECT_TRUE(failsAt(user("        password_env: P\n"), "6:7",
                      {"targets[1].credentials.database_user: username is required"}));
  EXPECT_TRUE(failsAt(user("        username: \"\"\n        password_env: P\n"), "7:19",
                      {"targets[1].credentials.database_user.username: must not be empty"}));
  EXPECT_TRUE(failsAt(user("        username: " + std::string(513, 'u') + "\n        password_env: P\n"), "7:19",
                      {"database_user.username: longer than 512 bytes"}));
  EXPECT_TRUE(parse(user("        username: " + std::string(512, 'u') + "\n        password_env: P\n")).ok());
  EXPECT_TRUE(failsAt(user("        username: u\n"), "6:7",
                      {"database_user: needs one of password_file, password_env, password"}));
  EXPECT_TRUE(failsAt(user("        username: u\n        password_env: P\n        password_file: /p\n"), "9:9",
                      {"both password_env and password_file", "exactly one source"}));
  EXPECT_TRUE(failsAt(user("        username: u\n        password_file: p\n"), "8:24",
                      {"database_user.password_file: expected the absolute path"}));
  EXPECT_TRUE(failsAt(user("        username: u\n        password: hunter2\n"), "8:9",
                      {"database_user.password: an inline secret is only accepted when m.yaml is mode 0600",
                       "use password_file or password_env"}));
  EXPECT_TRUE(failsAt(user("        username: u\n        password_env: P\n        auth_source: \"\"\n"), "9:22",
                      {"database_user.auth_source: must not be empty"}));
  EXPECT_TRUE(failsAt(user("        username: u\n        password_env: P\n        authSource: x\n"), "9:9",
                      {"unknown key \"authSource\" in targets[1].credentials.database_user", "auth_source"}));
  EXPECT_TRUE(failsAt(user("        [u]\n"), "7:9", {"database_user: expected a map, got a list"}));
}

TEST(ConfigMongodb, TemporaryUser) {
  Result<Config> r = parse(temporaryUser(std::string(kGroup) +
                                         "        roles:\n"
                                         "          - {roleName: readWrite, databaseName: app}\n"
                                         "          - {roleName: read, databaseName: logs, collectionName: events}\n"
                                         "        scopes: [Cluster0, \"prod-*\"]\n"
                                         "        lifetime: 90m\n"
                                         "        api_host: Cloud.MongoDB.com.\n"));
  ASSERT_TRUE(r.ok()) << r.error().message;
  const Credential& c = r->targets[1].credentials.at(0);
  ASSERT_TRUE(c.temporaryUser.has_value());
  EXPECT_FALSE(c.databaseUser || c.serviceAccount || c.apiKey);
  const TemporaryUser& u = *c.temporaryUser;
  EXPECT_EQ(u.groupId, "0123456789abcdef01234567");
  ASSERT_EQ(u.roles.size(), 2u);
  EXPECT_EQ(u.roles[0].roleName, "readWrite");
  EXPECT_EQ(u.roles[0].databaseName, "app");
  EXPECT_EQ(u.roles[0].collectionName, "");
  EXPECT_EQ(u.roles[1].roleName, "read");
  EXPECT_EQ(u.roles[1].databaseName, "logs");
  EXPECT_EQ(u.roles[1].collectionName, "events");
  EXPECT_EQ(u.scopes, (std::vector<std::string>{"Cluster0", "prod-*"}));
  EXPECT_EQ(u.lifetime, 90min);
  EXPECT_EQ(u.apiHost, "cloud.mongodb.com");
  EXPECT_EQ(c.describe(), "temporary_user:0123456789abcdef01234567");

  r = parse(temporaryUser(std::string(kGroup) + std::string(kRoles)));
  ASSERT_TRUE(r.ok()) << r.error().message;
  const TemporaryUser& d = *r->targets[1].credentials.at(0).temporaryUser;
  EXPECT_EQ(d.lifetime, 6h);
  EXPECT_TRUE(d.scopes.empty());
  EXPECT_EQ(d.apiHost, "");

  for (auto [written, want] : std::vector<std::pair<std::string_view, std::chrono::seconds>>{
           {"10m", 600s}, {"600", 600s}, {"168h", 168h}, {"599500ms", 600s}}) {
    r = parse(
        temporaryUser(std::string(kGroup) + std::string(kRoles) + "        lifetime: " + std::string(written) + "\n"));
    ASSERT_TRUE(r.ok()) << written << ": " << r.error().message;
    EXPECT_EQ(r->targets[1].credentials.at(0).temporaryUser->lifetime, want) << written;
  }
}

TEST(ConfigMongodb, TemporaryUserGroupAndLifetimeErrors) {
  EXPECT_TRUE(failsAt(temporaryUser(std::string(kRoles)), "7:7",
                      {"targets[1].credentials.temporary_user: group_id is required (the Atlas project"}));
  for (std::string_view bad : {"0123456789ABCDEF01234567", "0123456789abcdef0123456", "0123456789abcdef012345678",
                               "0123456789abcdef0123456g", "\" 123456789abcdef01234567\""}) {
    EXPECT_TRUE(failsAt(temporaryUser("        group_id: " + std::string(bad) + "\n" + std::string(kRoles)), "8:19",
                        {"temporary_user.group_id: expected a project id (24 lower-case hex digits)"}))
        << bad;
  }
  EXPECT_TRUE(failsAt(temporaryUser("        group_id: \"\"\n" + std::string(kRoles)), "8:19",
                      {"temporary_user.group_id: must not be empty"}));
  for (std::string_view bad : {"9m", "599s", "169h", "604801"}) {
    EXPECT_TRUE(failsAt(
        temporaryUser(std::string(kGroup) + std::string(kRoles) + "        lifetime: " + std::string(bad) + "\n"),
        "10:19", {"temporary_user.lifetime: between 10m and 168h (Atlas deletes the user at the end)"}))
        << bad;
  }
  EXPECT_TRUE(failsAt(temporaryUser(std::string(kGroup) + std::string(kRoles) + "        lifetime: 0\n"), "10:19",
                      {"temporary_user.lifetime: duration must be greater than zero"}));
  EXPECT_TRUE(failsAt(temporaryUser(std::string(kGroup) + std::string(kRoles) + "        lifetime: 1w\n"), "10:19",
                      {"temporary_user.lifetime: expected a duration"}));
  EXPECT_TRUE(failsAt(temporaryUser(std::string(kGroup) + std::string(kRoles) + "        scopes: []\n"), "10:17",
                      {"temporary_user.scopes: is empty; leave scopes out to match any"}));
  EXPECT_TRUE(failsAt(temporaryUser(std::string(kGroup) + std::string(kRoles) + "        api_host: 10.0.0.1\n"),
                      "10:19", {"temporary_user.api_host", "is an IP address"}));
  EXPECT_TRUE(failsAt(temporaryUser(std::string(kGroup) + std::string(kRoles) + "        ttl: 1h\n"), "10:9",
                      {"unknown key \"ttl\" in targets[1].credentials.temporary_user"}));
}

TEST(ConfigMongodb, TemporaryUserRoleErrors) {
  auto roles = [](std::string_view list) {
    return temporaryUser(std::string(kGroup) + "        roles: " + std::string(list) + "\n");
  };
  EXPECT_TRUE(failsAt(temporaryUser(std::string(kGroup)), "7:7",
                      {"temporary_user: roles is required (e.g. [{roleName: readWrite, databaseName: app}])"}));
  EXPECT_TRUE(failsAt(roles("[]"), "9:16", {"temporary_user.roles: at least one role is required"}));
  EXPECT_TRUE(failsAt(roles("readWrite"), "9:16", {"temporary_user.roles: expected a list, got a scalar"}));
  EXPECT_TRUE(failsAt(roles("[{databaseName: app}]"), "9:17", {"temporary_user.roles[0]: roleName is required"}));
  EXPECT_TRUE(failsAt(roles("[{roleName: read}]"), "9:17", {"temporary_user.roles[0]: databaseName is required"}));
  EXPECT_TRUE(failsAt(roles("[{roleName: read, databaseName: a}, {roleName: \"read write\", databaseName: a}]"), "9:63",
                      {"temporary_user.roles[1].roleName: not a role name"}));
  EXPECT_TRUE(failsAt(roles("[{roleName: \"\", databaseName: a}]"), "9:28",
                      {"temporary_user.roles[0].roleName: must not be empty"}));
  EXPECT_TRUE(failsAt(roles("[{roleName: read, databaseName: \"\"}]"), "9:48",
                      {"temporary_user.roles[0].databaseName: must not be empty"}));
  EXPECT_TRUE(failsAt(roles("[{roleName: read, databaseName: a, collectionName: \"\"}]"), "9:67",
                      {"temporary_user.roles[0].collectionName: must not be empty"}));
  EXPECT_TRUE(failsAt(roles("[{roleName: read, databaseName: a, db: b}]"), "9:51",
                      {"unknown key \"db\" in targets[1].credentials.temporary_user.roles[0]", "collectionName"}));
  EXPECT_TRUE(failsAt(roles("[read]"), "9:17", {"temporary_user.roles[0]: expected a map, got a scalar"}));
}

// A temporary_user mints with the credential of exactly one https target.
TEST(ConfigMongodb, TemporaryUserNeedsOneMintingTarget) {
  const std::string user = "    credentials:\n      temporary_user:\n" + std::string(kGroup) + std::string(kRoles);
  EXPECT_TRUE(failsAt(mongoTarget(user), "3:5",
                      {"targets[1]: temporary_user needs an https target with a credential to mint users"}));
  const std::string second =
      "  - host: realm.mongodb.com\n    credentials: {api_key: {public_key: p, private_key_env: K}}\n";
  const std::string both = std::string(kMintingTargets) + user + second;
  EXPECT_TRUE(failsAt(both, "4:5",
                      {"targets[1]: temporary_user: several https targets have credentials; name one with api_host"}));
  for (std::string_view host : {"cloud.mongodb.com", "realm.mongodb.com"}) {
    Result<Config> r =
        parse(std::string(kMintingTargets) + user + "        api_host: " + std::string(host) + "\n" + second);
    ASSERT_TRUE(r.ok()) << r.error().message;
    EXPECT_EQ(r->targets[1].credentials[0].temporaryUser->apiHost, host);
  }
  // One https target without a credential does not count.
  Result<Config> r = parse(std::string(kMintingTargets) + user + "  - host: realm.mongodb.com\n");
  ASSERT_TRUE(r.ok()) << r.error().message;
  // api_host naming a target without a credential, no target, or a mongodb target.
  const std::string named = std::string(kMintingTargets) + user + "  - host: realm.mongodb.com\n" +
                            "  - host: db.internal\n    protocol: mongodb\n" + "    credentials:\n" +
                            "      database_user: {username: u, password_env: P}\n" +
                            "  - host: y.example\n    protocol: mongodb\n" + user + "        api_host: ";
  for (std::string_view host : {"realm.mongodb.com", "nowhere.example", "db.internal"}) {
    EXPECT_TRUE(failsAt(named + std::string(host) + "\n", "15:5",
                        {"targets[4]: temporary_user needs an https target with a credential to mint users (api_host " +
                         std::string(host) + " has none or is no https target)"}))
        << host;
  }
}

TEST(ConfigMongodb, CredentialKindsBelongToOneProtocol) {
  EXPECT_TRUE(failsAt("targets:\n  - host: a.example\n    credentials:\n      database_user: {username: u}\n", "4:7",
                      {"targets[0].credentials.database_user: a credential of mongodb targets, not of https ones"}));
  EXPECT_TRUE(
      failsAt("targets:\n  - host: a.example\n    credentials:\n      - name: t\n"
              "        temporary_user: {group_id: x}\n",
              "5:9", {"targets[0].credentials[0].temporary_user: a credential of mongodb targets"}));
  EXPECT_TRUE(failsAt(mongoTarget("    credentials:\n      service_account: {client_id: i, client_secret_env: S}\n"),
                      "6:7",
                      {"targets[1].credentials.service_account: a credential of https targets, not of mongodb ones"}));
  EXPECT_TRUE(failsAt(mongoTarget("    credentials:\n      - name: k\n        api_key: {public_key: p}\n"), "7:9",
                      {"targets[1].credentials[0].api_key: a credential of https targets, not of mongodb ones"}));
  EXPECT_TRUE(failsAt(mongoTarget("    credentials:\n"
                                  "      database_user: {username: u, password_env: P}\n"
                                  "      temporary_user: {group_id: x}\n"),
                      "7:7", {"both database_user and temporary_user are set; a credential is one or the other"}));
  EXPECT_TRUE(failsAt(mongoTarget("    credentials: {}\n"), "5:5",
                      {"targets[1].credentials: needs one of database_user, temporary_user"}));
  EXPECT_TRUE(failsAt(mongoTarget("    credentials:\n      - name: a\n        agents: [x]\n"), "6:9",
                      {"targets[1].credentials[0]: needs one of database_user, temporary_user"}));
  EXPECT_TRUE(failsAt("targets:\n  - host: a.example\n    credentials: {}\n", "3:5",
                      {"targets[0].credentials: needs one of service_account, api_key"}));
}

// ---- rules -------------------------------------------------------------------

TEST(ConfigMongodb, Rules) {
  Result<Config> r = parse(ruleWith(true,
                                    "      host: \"*.MongoDB.net\"\n"
                                    "      command: [find, \"drop*\"]\n"
                                    "      database: app\n"
                                    "      collection: [users, \"audit.*\"]\n"
                                    "      agents: \"ops-*\"\n"
                                    "      action: rate_limit\n"
                                    "      rate: 5/minute\n"
                                    "    - name: plain\n"
                                    "      action: block\n"));
  ASSERT_TRUE(r.ok()) << r.error().message;
  ASSERT_EQ(r->rules.list.size(), 2u);
  const Rule& m = r->rules.list[0];
  EXPECT_EQ(m.protocol, Protocol::Mongodb);
  EXPECT_EQ(m.hosts, std::vector<std::string>{"*.mongodb.net"});
  EXPECT_EQ(m.commands, (std::vector<std::string>{"find", "drop*"}));
  EXPECT_EQ(m.databases, std::vector<std::string>{"app"});
  EXPECT_EQ(m.collections, (std::vector<std::string>{"users", "audit.*"}));
  EXPECT_EQ(m.agents, std::vector<std::string>{"ops-*"});
  EXPECT_EQ(m.action, Action::RateLimit);
  EXPECT_TRUE(m.methods.empty() && m.path.empty() && m.when.empty() && m.credential.empty());
  EXPECT_EQ(m.keyLocs.at("command").line, 10);
  EXPECT_EQ(m.keyLocs.at("collection").line, 12);
  const Rule& plain = r->rules.list[1];
  EXPECT_EQ(plain.protocol, Protocol::Https);
  EXPECT_TRUE(plain.commands.empty() && plain.databases.empty() && plain.collections.empty());

  r = parse(ruleWith(true, "      action: block\n"));  // no filter: every command of every mongodb target
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_TRUE(r->rules.list[0].hosts.empty() && r->rules.list[0].commands.empty());
  r = parse(ruleWith(false, "      protocol: https\n      host: cloud.mongodb.com\n      action: block\n"));
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->rules.list[0].protocol, Protocol::Https);
}

TEST(ConfigMongodb, RuleFiltersBelongToOneProtocol) {
  for (std::string_view key : {"command", "database", "collection"}) {
    EXPECT_TRUE(failsAt(ruleWith(false, "      " + std::string(key) + ": x\n      action: block\n"), "8:7",
                        {"rules.list[0]." + std::string(key) + ": " + std::string(key) +
                         " is a filter of protocol: mongodb rules (add protocol: mongodb)"}))
        << key;
  }
  for (std::string_view key : {"method: GET", "path: /x", "when: [{pointer: /a, exists: true}]", "credential: c"}) {
    const std::string name(key.substr(0, key.find(':')));
    EXPECT_TRUE(failsAt(ruleWith(true, "      " + std::string(key) + "\n      action: block\n"), "9:7",
                        {"rules.list[0]." + name + ": " + name +
                         " is not a filter of protocol: mongodb rules (command, database, collection are)"}))
        << key;
  }
  EXPECT_TRUE(failsAt(ruleWith(false, "      protocol: smtp\n      action: block\n"), "8:17",
                      {"rules.list[0].protocol: expected one of https, mongodb"}));
}

TEST(ConfigMongodb, RuleFilterShapes) {
  EXPECT_TRUE(failsAt(ruleWith(true, "      command: []\n      action: block\n"), "9:16",
                      {"rules.list[0].command: is empty; leave command out to match any"}));
  EXPECT_TRUE(failsAt(ruleWith(true, "      database: {a: b}\n      action: block\n"), "9:17",
                      {"rules.list[0].database: expected a string or a list of strings, got a map"}));
  EXPECT_TRUE(failsAt(ruleWith(true, "      collection: \"\"\n      action: block\n"), "9:19",
                      {"rules.list[0].collection: must not be empty"}));
  EXPECT_TRUE(failsAt(ruleWith(true, "      collection: [a, \"\"]\n      action: block\n"), "9:23",
                      {"rules.list[0].collection[1]: must not be empty"}));
  EXPECT_TRUE(failsAt(ruleWith(true, "      command: [find, [x]]\n      action: block\n"), "9:23",
                      {"rules.list[0].command[1]: expected a string, got a list"}));
  EXPECT_TRUE(failsAt(ruleWith(true, "      action: block\n      command: find\n      path: /x\n"), "11:7",
                      {"rules.list[0].path: path is not a filter of protocol: mongodb rules"}));
}

TEST(ConfigMongodb, RuleHostIsATargetOfItsProtocol) {
  EXPECT_TRUE(failsAt(ruleWith(true, "      host: cloud.mongodb.com\n      action: block\n"), "9:13",
                      {"rules.list[0].host: cloud.mongodb.com is a https target and this is a mongodb rule"}));
  EXPECT_TRUE(failsAt(ruleWith(false, "      host: \"*.mongodb.net\"\n      action: block\n"), "8:13",
                      {"rules.list[0].host: *.mongodb.net is a mongodb target and this is a https rule"}));
  EXPECT_TRUE(failsAt(ruleWith(true, "      host: [\"*.mongodb.net\", cloud.mongodb.com]\n      action: block\n"),
                      "9:13", {"cloud.mongodb.com is a https target and this is a mongodb rule"}));
  EXPECT_TRUE(failsAt(ruleWith(true, "      host: \"*.example.net\"\n      action: block\n"), "9:13",
                      {"rules.list[0].host: \"*.example.net\" is not one of the targets (cloud.mongodb.com, "
                       "*.mongodb.net)"}));
  EXPECT_TRUE(failsAt(ruleWith(true, "      host: \"*.net\"\n      action: block\n"), "9:13",
                      {"rules.list[0].host", "two labels or more"}));
}

// ---- the guardrails preset and describeConfig ------------------------------------

TEST(ConfigMongodb, GuardrailsCoverHttpsTargetsOnly) {
  Result<Config> r = parse(minting("    credentials:\n      database_user: {username: u, password_env: P}\n") +
                           "  - host: realm.mongodb.com\n"
                           "rules:\n"
                           "  preset: guardrails\n"
                           "  list:\n"
                           "    - name: mine\n"
                           "      protocol: mongodb\n"
                           "      action: block\n");
  ASSERT_TRUE(r.ok()) << r.error().message;
  ASSERT_GT(r->rules.presetRules, 0u);
  for (std::size_t i = 0; i < r->rules.presetRules; ++i) {
    const Rule& g = r->rules.list[i];
    EXPECT_EQ(g.protocol, Protocol::Https) << g.name;
    EXPECT_EQ(g.hosts, (std::vector<std::string>{"cloud.mongodb.com", "realm.mongodb.com"})) << g.name;
  }
  EXPECT_EQ(r->rules.list.back().name, "mine");
  EXPECT_EQ(r->rules.list.back().protocol, Protocol::Mongodb);
  // The same rules as without the mongodb target.
  Result<Config> https = parse(std::string(kMintingTargets.substr(0, kMintingTargets.find("  - host: \"*"))) +
                               "  - host: realm.mongodb.com\nrules:\n  preset: guardrails\n");
  ASSERT_TRUE(https.ok()) << https.error().message;
  EXPECT_EQ(guardrailRules(r->targets).size(), https->rules.presetRules);
  EXPECT_EQ(guardrailRules(r->targets).size(), r->rules.presetRules);
}

TEST(ConfigMongodb, DescribeShowsMongodbTargetsAndCredentials) {
  Result<Config> r = parse(std::string(kMintingTargets) +
                               "    port: 27018\n"
                               "    upstream_ca: /etc/atlas-ca.pem\n"
                               "    credentials:\n"
                               "      - name: fixed\n"
                               "        agents: [ci]\n"
                               "        database_user: {username: ci-user, password: pw-VALUE}\n"
                               "      - name: minted\n"
                               "        temporary_user:\n"
                               "          group_id: 0123456789abcdef01234567\n"
                               "          roles: [{roleName: readWrite, databaseName: app}]\n"
                               "          lifetime: 1h\n"
                               "  - host: db.internal\n"
                               "    protocol: mongodb\n"
                               "    port: 27018\n"
                               "    credentials:\n"
                               "      database_user: {username: local, password_file: /etc/pw}\n",
                           /*isPrivate=*/true);
  ASSERT_TRUE(r.ok()) << r.error().message;
  const std::string d = describeConfig(*r);
  for (std::string_view want : {
           "targets: 3\n",
           "  cloud.mongodb.com (upstream port 443, resolve yes",
           "    credential default: service_account:mdb_sa_id_x (secret from $S; agents all)\n",
           "  *.mongodb.net (mongodb, port 27018, upstream CA /etc/atlas-ca.pem)\n",
           "    credential fixed: database_user:ci-user (secret inline; agents ci)\n",
           "    credential minted: temporary_user:0123456789abcdef01234567 (a user per agent, lifetime 3600s; agents "
           "all)\n",
           "  db.internal (mongodb, port 27018, upstream CA system trust store)\n",
           "    credential default: database_user:local (secret from file /etc/pw; agents all)\n",
       }) {
    EXPECT_NE(d.find(want), std::string::npos) << "no \"" << want << "\" in:\n" << d;
  }
  EXPECT_EQ(d.find("pw-VALUE"), std::string::npos) << d;
  EXPECT_EQ(d.find("resolve no"), std::string::npos) << d;  // no https-only fields for mongodb targets
}

}  // namespace
}  // namespace atlasgate::config
