#include "config/config.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

namespace atlasgate::config {
namespace {

using namespace std::chrono_literals;

constexpr const char* kData = AG_CONFIG_TEST_DATA;
constexpr std::string_view kSecret = "s3cr3t-VALUE";

// Every test file below starts from this: one target, then what is tested.
constexpr std::string_view kTarget =
    "targets:\n"
    "  - host: cloud.mongodb.com\n";

Result<Config> parse(std::string_view yaml, bool isPrivate = false) { return parseConfig(yaml, "bad.yaml", isPrivate); }

// Passes when yaml fails to load with one line that starts "bad.yaml:WHERE: "
// and contains every one of words.
testing::AssertionResult failsAt(std::string_view yaml, std::string_view where, std::vector<std::string_view> words,
                                 bool isPrivate = false) {
  const Result<Config> r = parse(yaml, isPrivate);
  if (r.ok()) return testing::AssertionFailure() << "loaded without error";
  const std::string& m = r.error().message;
  const std::string prefix = "bad.yaml:" + std::string(where) + ": ";
  if (m.rfind(prefix, 0) != 0) return testing::AssertionFailure() << "expected prefix \"" << prefix << "\" in: " << m;
  if (m.find('\n') != std::string::npos) return testing::AssertionFailure() << "message is not one line: " << m;
  for (std::string_view w : words) {
    if (m.find(w) == std::string::npos) return testing::AssertionFailure() << "no \"" << w << "\" in: " << m;
  }
  return testing::AssertionSuccess() << m;
}

std::string rulesWith(std::string_view ruleBody) {
  return std::string(kTarget) +
         "rules:\n"
         "  list:\n"
         "    - name: r\n" +
         std::string(ruleBody);
}

// A file in a fresh temporary directory, removed with it.
class TempFile {
 public:
  TempFile(std::string_view text, mode_t mode) {
    std::string pattern = (std::filesystem::temp_directory_path() / "atlasgate-config-XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    dir_ = pattern;
    path_ = dir_ + "/atlasgate.yaml";
    std::ofstream(path_) << text;
    ::chmod(path_.c_str(), mode);
  }
  ~TempFile() { std::filesystem::remove_all(dir_); }
  const std::string& path() const { return path_; }

 private:
  std::string dir_;
  std::string path_;
};

// ---- good files -----------------------------------------------------------

const std::string kFullFile = std::string(kData) + "/full.yaml";

// full.yaml, loaded once: every key atlasgate understands, with non-default values.
const Config& full() {
  static const Config c = [] {
    Result<Config> r = loadConfig(kFullFile);
    if (!r.ok()) throw std::runtime_error(r.error().message);
    return std::move(r.value());
  }();
  return c;
}

TEST(ConfigLoad, FullFileTopLevel) {
  const Config& c = full();
  EXPECT_EQ(c.path, kFullFile);
  EXPECT_EQ(c.listen.port, 16443);
  EXPECT_EQ(c.listen.admin, "127.0.0.1:16444");
  EXPECT_EQ(c.stateDir, "/srv/atlasgate/state");
  EXPECT_EQ(c.auditLog, "-");
  EXPECT_EQ(c.logLevel, "debug");
  EXPECT_EQ(c.agents.cgroup, "/sys/fs/cgroup/agents");
  EXPECT_EQ(c.agents.attach, (std::vector<std::string>{"/sys/fs/cgroup/ci.slice", "/sys/fs/cgroup/dev.slice"}));
  EXPECT_EQ(c.limits.maxHeaderBytes, 32768u);
  EXPECT_EQ(c.limits.maxHeaders, 50u);
  EXPECT_EQ(c.limits.maxBodyBytes, 1048576u);
  EXPECT_EQ(c.limits.handshakeTimeout, 5s);
  EXPECT_EQ(c.limits.headerTimeout, 10s);
  EXPECT_EQ(c.limits.idleTimeout, 120s);
  EXPECT_EQ(c.limits.requestTimeout, 3600s);
  EXPECT_EQ(c.limits.upstreamTimeout, 2s);  // 1500ms rounds up
  EXPECT_FALSE(c.bpf.keepOnExit);
  EXPECT_FALSE(c.bpf.refuseQuic);
}

TEST(ConfigLoad, FullFileTargets) {
  const Config& c = full();
  ASSERT_EQ(c.targets.size(), 2u);
  const Target& cloud = c.targets[0];
  EXPECT_EQ(cloud.host, "cloud.mongodb.com");  // lower-cased, trailing dot dropped
  EXPECT_EQ(cloud.addresses, (std::vector<std::string>{"203.0.113.7", "2001:db8::1"}));
  EXPECT_EQ(cloud.upstreamCa, "/etc/atlasgate/upstream.pem");
  EXPECT_EQ(cloud.upstreamPort, 8443);
  EXPECT_FALSE(cloud.resolve);
  EXPECT_EQ(cloud.loc.file, kFullFile);
  EXPECT_EQ(cloud.loc.line, 12);
  EXPECT_EQ(cloud.loc.column, 5);
  ASSERT_EQ(cloud.credentials.size(), 1u);
  const Credential& sa = cloud.credentials[0];
  EXPECT_EQ(sa.name, "default");
  ASSERT_TRUE(sa.serviceAccount.has_value());
  EXPECT_FALSE(sa.apiKey.has_value());
  EXPECT_EQ(sa.serviceAccount->clientId, "mdb_sa_id_123");
  EXPECT_EQ(sa.serviceAccount->clientSecret.file, "/etc/atlasgate/atlas-client-secret");
  EXPECT_EQ(sa.serviceAccount->clientSecret.env, "");
  EXPECT_EQ(sa.serviceAccount->clientSecret.inlineValue, "");
  EXPECT_EQ(sa.serviceAccount->clientSecret.loc.line, 20);
  EXPECT_TRUE(sa.agents.empty());

  const Target& realm = c.targets[1];
  EXPECT_EQ(realm.host, "realm.mongodb.com");
  EXPECT_TRUE(realm.addresses.empty());
  EXPECT_FALSE(realm.upstreamCa.has_value());
  EXPECT_EQ(realm.upstreamPort, 443);
  EXPECT_TRUE(realm.resolve);
  ASSERT_EQ(realm.credentials.size(), 2u);
  EXPECT_EQ(realm.credentials[0].name, "ops");
  EXPECT_EQ(realm.credentials[0].agents, (std::vector<std::string>{"ops-*", "deploy"}));
  ASSERT_TRUE(realm.credentials[0].apiKey.has_value());
  EXPECT_EQ(realm.credentials[0].apiKey->publicKey, "abcdefgh");
  EXPECT_EQ(realm.credentials[0].apiKey->privateKey.env, "ATLAS_PRIVATE_KEY");
  EXPECT_EQ(realm.credentials[1].name, "readonly");
  ASSERT_TRUE(realm.credentials[1].serviceAccount.has_value());
  EXPECT_EQ(realm.credentials[1].serviceAccount->clientSecret.env, "ATLAS_RO_SECRET");
}

TEST(ConfigLoad, FullFileRuleFilters) {
  const Config& c = full();
  EXPECT_EQ(c.rules.defaultAction, Action::Block);
  ASSERT_EQ(c.rules.list.size(), 5u);

  const Rule& block = c.rules.list[0];
  EXPECT_EQ(block.name, "no-cluster-deletion");
  EXPECT_EQ(block.methods, std::vector<std::string>{"DELETE"});
  EXPECT_EQ(block.path, "/api/atlas/v2/groups/{groupId}/clusters/{clusterName}");
  EXPECT_EQ(block.hosts, std::vector<std::string>{"cloud.mongodb.com"});
  EXPECT_EQ(block.action, Action::Block);
  EXPECT_EQ(block.loc.line, 37);

  const Rule& approve = c.rules.list[1];
  EXPECT_EQ(approve.name, "big-clusters-need-approval");
  EXPECT_EQ(approve.methods, (std::vector<std::string>{"POST", "PATCH"}));
  EXPECT_EQ(approve.path, "/api/atlas/v2/groups/*/clusters/**");
  EXPECT_EQ(approve.hosts, std::vector<std::string>{"cloud.mongodb.com"});
  EXPECT_EQ(approve.agents, std::vector<std::string>{"claude-*"});
  EXPECT_EQ(approve.action, Action::Approve);
  EXPECT_EQ(approve.timeout, 300s);
  EXPECT_EQ(approve.credential, "default");
  ASSERT_EQ(approve.when.size(), 5u);
  EXPECT_EQ(approve.when[0].pointer, "/providerSettings/instanceSizeName");
  EXPECT_EQ(approve.when[0].op, CondOp::In);
  EXPECT_EQ(approve.when[0].jsonValues,
            (std::vector<std::string>{"\"M40\"", "\"M50\"", "60", "2.5", "true", "null", "\"7\"", "\"false\""}));
  EXPECT_EQ(approve.when[1].op, CondOp::Matches);
  EXPECT_EQ(approve.when[1].regex, "prod-.*");
  EXPECT_EQ(approve.when[2].op, CondOp::Equals);
  EXPECT_EQ(approve.when[2].jsonValues, std::vector<std::string>{"false"});
  EXPECT_EQ(approve.when[3].op, CondOp::NotIn);
  EXPECT_EQ(approve.when[3].jsonValues, std::vector<std::string>{"1"});
  EXPECT_EQ(approve.when[4].pointer, "/tags/a~1b");
  EXPECT_EQ(approve.when[4].op, CondOp::Exists);
  EXPECT_FALSE(approve.when[4].exists);
}

TEST(ConfigLoad, FullFileRuleActions) {
  const Config& c = full();
  ASSERT_EQ(c.rules.list.size(), 5u);
  const Rule& budget = c.rules.list[2];
  EXPECT_EQ(budget.name, "rule-2");  // unnamed: generated from its index
  EXPECT_TRUE(budget.methods.empty());
  EXPECT_EQ(budget.action, Action::RateLimit);
  ASSERT_TRUE(budget.rate.has_value());
  EXPECT_EQ(budget.rate->count, 60u);
  EXPECT_EQ(budget.rate->periodSeconds, 60u);
  EXPECT_EQ(budget.burst, 10u);
  EXPECT_EQ(budget.per, RatePer::Rule);

  const Rule& watch = c.rules.list[3];
  EXPECT_EQ(watch.action, Action::LogOnly);
  EXPECT_EQ(watch.wouldBe, Action::RateLimit);
  ASSERT_TRUE(watch.rate.has_value());
  EXPECT_EQ(watch.rate->count, 5u);
  EXPECT_EQ(watch.rate->periodSeconds, 3600u);
  EXPECT_EQ(watch.burst, 5u);  // defaults to the count

  const Rule& reads = c.rules.list[4];
  EXPECT_EQ(reads.agents, std::vector<std::string>{"deploy"});
  EXPECT_EQ(reads.credential, "readonly");
}

TEST(ConfigLoad, Defaults) {
  Result<Config> r = loadConfig(std::string(kData) + "/minimal.yaml");
  ASSERT_TRUE(r.ok()) << r.error().message;
  const Config& c = *r;
  const Config d;
  EXPECT_EQ(c.listen.port, 15443);
  EXPECT_FALSE(c.listen.admin.has_value());
  EXPECT_EQ(c.stateDir, "/var/lib/atlasgate");
  EXPECT_EQ(c.auditLog, "/var/log/atlasgate/audit.jsonl");
  EXPECT_EQ(c.logLevel, "info");
  EXPECT_EQ(c.agents.cgroup, "atlasgate");
  EXPECT_TRUE(c.agents.attach.empty());
  ASSERT_EQ(c.targets.size(), 1u);
  EXPECT_EQ(c.targets[0].host, "cloud.mongodb.com");
  EXPECT_TRUE(c.targets[0].addresses.empty());
  EXPECT_FALSE(c.targets[0].upstreamCa.has_value());
  EXPECT_EQ(c.targets[0].upstreamPort, 443);
  EXPECT_TRUE(c.targets[0].resolve);
  EXPECT_TRUE(c.targets[0].credentials.empty());
  EXPECT_EQ(c.rules.defaultAction, Action::Allow);
  EXPECT_TRUE(c.rules.list.empty());
  EXPECT_EQ(c.limits.maxHeaderBytes, d.limits.maxHeaderBytes);
  EXPECT_EQ(c.limits.maxHeaders, d.limits.maxHeaders);
  EXPECT_EQ(c.limits.maxBodyBytes, d.limits.maxBodyBytes);
  EXPECT_EQ(c.limits.handshakeTimeout, d.limits.handshakeTimeout);
  EXPECT_EQ(c.limits.idleTimeout, d.limits.idleTimeout);
  EXPECT_TRUE(c.bpf.keepOnExit);
  EXPECT_TRUE(c.bpf.refuseQuic);
}

TEST(ConfigLoad, RuleDefaults) {
  Result<Config> r = parse(std::string(kTarget) +
                           "rules:\n"
                           "  list:\n"
                           "    - action: approve\n"
                           "    - action: log_only\n"
                           "    - action: rate_limit\n"
                           "      rate: 3/d\n");
  ASSERT_TRUE(r.ok()) << r.error().message;
  const auto& list = r->rules.list;
  ASSERT_EQ(list.size(), 3u);
  EXPECT_EQ(list[0].name, "rule-0");
  EXPECT_TRUE(list[0].methods.empty());
  EXPECT_TRUE(list[0].path.empty());
  EXPECT_TRUE(list[0].hosts.empty());
  EXPECT_EQ(list[0].timeout, 120s);
  EXPECT_FALSE(list[0].rate.has_value());
  EXPECT_EQ(list[1].wouldBe, Action::Block);
  EXPECT_EQ(list[2].per, RatePer::Agent);
  EXPECT_EQ(list[2].burst, 3u);
}

TEST(ConfigLoad, ServiceAccountMapFormWithInlineSecretInPrivateFile) {
  Result<Config> r = parse(std::string(kTarget) +
                               "    credentials:\n"
                               "      service_account:\n"
                               "        client_id: mdb_sa_id_x\n"
                               "        client_secret: s3cr3t-VALUE\n",
                           /*isPrivate=*/true);
  ASSERT_TRUE(r.ok()) << r.error().message;
  ASSERT_EQ(r->targets[0].credentials.size(), 1u);
  const Credential& k = r->targets[0].credentials[0];
  EXPECT_EQ(k.name, "default");
  ASSERT_TRUE(k.serviceAccount.has_value());
  EXPECT_EQ(k.serviceAccount->clientSecret.inlineValue, kSecret);
  EXPECT_EQ(k.serviceAccount->clientSecret.loc.line, 6);
  EXPECT_EQ(k.serviceAccount->clientSecret.loc.column, 24);
  EXPECT_EQ(k.describe(), "service_account:mdb_sa_id_x");
}

TEST(ConfigLoad, ApiKeyMapForm) {
  Result<Config> r = parse(std::string(kTarget) +
                           "    credentials:\n"
                           "      api_key:\n"
                           "        public_key: abcdefgh\n"
                           "        private_key_file: /etc/atlasgate/key\n");
  ASSERT_TRUE(r.ok()) << r.error().message;
  const Credential& k = r->targets[0].credentials.at(0);
  EXPECT_EQ(k.name, "default");
  ASSERT_TRUE(k.apiKey.has_value());
  EXPECT_FALSE(k.serviceAccount.has_value());
  EXPECT_EQ(k.apiKey->privateKey.file, "/etc/atlasgate/key");
  EXPECT_EQ(k.describe(), "api_key:abcdefgh");
}

TEST(ConfigLoad, CredentialListForm) {
  Result<Config> r = parse(std::string(kTarget) +
                           "    credentials:\n"
                           "      - name: admin\n"
                           "        agents: ops-*\n"
                           "        api_key: {public_key: pub, private_key_env: ATLAS_KEY}\n"
                           "      - name: reader\n"
                           "        service_account: {client_id: id, client_secret_file: /run/secret}\n");
  ASSERT_TRUE(r.ok()) << r.error().message;
  const auto& ks = r->targets[0].credentials;
  ASSERT_EQ(ks.size(), 2u);
  EXPECT_EQ(ks[0].name, "admin");
  EXPECT_EQ(ks[0].agents, std::vector<std::string>{"ops-*"});
  EXPECT_EQ(ks[0].describe(), "api_key:pub");
  EXPECT_EQ(ks[1].name, "reader");
  EXPECT_TRUE(ks[1].agents.empty());
  EXPECT_EQ(ks[1].describe(), "service_account:id");
}

TEST(ConfigLoad, Durations) {
  const std::pair<std::string_view, std::chrono::seconds> cases[] = {{"1", 1s},      {"45s", 45s}, {"500ms", 1s},
                                                                     {"1001ms", 2s}, {"2m", 120s}, {"1h", 3600s}};
  for (const auto& [text, want] : cases) {
    Result<Config> r = parse(std::string(kTarget) + "limits:\n  idle_timeout: " + std::string(text) + "\n");
    ASSERT_TRUE(r.ok()) << text << ": " << r.error().message;
    EXPECT_EQ(r->limits.idleTimeout, want) << text;
  }
}

TEST(ConfigLoad, RateUnits) {
  const std::pair<std::string_view, std::uint64_t> cases[] = {
      {"s", 1},        {"sec", 1},  {"second", 1},  {"m", 60},    {"min", 60},    {"minute", 60},
      {" Minute", 60}, {"h", 3600}, {"hour", 3600}, {"d", 86400}, {"day", 86400},
  };
  for (const auto& [unit, seconds] : cases) {
    Result<Config> r = parse(rulesWith("      action: rate_limit\n      rate: 7/" + std::string(unit) + "\n"));
    ASSERT_TRUE(r.ok()) << unit << ": " << r.error().message;
    EXPECT_EQ(r->rules.list[0].rate->count, 7u);
    EXPECT_EQ(r->rules.list[0].rate->periodSeconds, seconds) << unit;
  }
}

TEST(ConfigLoad, ConditionValuesKeepYamlTypes) {
  Result<Config> r =
      parse(rulesWith("      action: block\n"
                      "      when:\n"
                      "        - pointer: \"\"\n"
                      "          in: [-3, +4, 0x1F, 1e3, .5, \"12\", !!str 13, yes, ~, \"a\\\"b\\\\c\"]\n"));
  ASSERT_TRUE(r.ok()) << r.error().message;
  const Condition& c = r->rules.list[0].when.at(0);
  EXPECT_EQ(c.pointer, "");
  EXPECT_EQ(c.jsonValues, (std::vector<std::string>{"-3", "4", "31", "1000", "0.5", "\"12\"", "\"13\"", "\"yes\"",
                                                    "null", R"("a\"b\\c")"}));
}

TEST(ConfigLoad, DescribeSummarisesWithoutSecrets) {
  Result<Config> r = parse(std::string(kTarget) +
                               "    addresses: [192.0.2.1]\n"
                               "    credentials:\n"
                               "      - name: a\n"
                               "        service_account: {client_id: mdb_sa_id_x, client_secret: s3cr3t-VALUE}\n"
                               "      - name: b\n"
                               "        api_key: {public_key: pubkey, private_key_env: ATLAS_KEY}\n"
                               "listen:\n"
                               "  admin: 127.0.0.1:15444\n"
                               "agents:\n"
                               "  attach: [/sys/fs/cgroup/a]\n"
                               "rules:\n"
                               "  list:\n"
                               "    - action: block\n"
                               "    - action: allow\n",
                           /*isPrivate=*/true);
  ASSERT_TRUE(r.ok()) << r.error().message;
  const std::string d = describeConfig(*r);
  for (std::string_view want :
       {"port 15443", "admin 127.0.0.1:15444", "/var/lib/atlasgate", "audit.jsonl", "cgroup atlasgate",
        "attach /sys/fs/cgroup/a", "cloud.mongodb.com", "192.0.2.1", "service_account:mdb_sa_id_x", "secret inline",
        "api_key:pubkey", "$ATLAS_KEY", "rules: 2"}) {
    EXPECT_NE(d.find(want), std::string::npos) << "no \"" << want << "\" in:\n" << d;
  }
  EXPECT_EQ(d.find(kSecret), std::string::npos) << d;
}

TEST(ConfigLoad, ActionNames) {
  EXPECT_EQ(actionName(Action::Allow), "allow");
  EXPECT_EQ(actionName(Action::Block), "block");
  EXPECT_EQ(actionName(Action::RateLimit), "rate_limit");
  EXPECT_EQ(actionName(Action::Approve), "approve");
  EXPECT_EQ(actionName(Action::LogOnly), "log_only");
}

// ---- loadConfig and the file mode -----------------------------------------

const std::string kInlineSecretFile = std::string(kTarget) +
                                      "    credentials:\n"
                                      "      service_account:\n"
                                      "        client_id: mdb_sa_id_x\n"
                                      "        client_secret: s3cr3t-VALUE\n";

TEST(ConfigFile, InlineSecretRejectedUnlessMode0600) {
  const TempFile file(kInlineSecretFile, 0644);
  Result<Config> r = loadConfig(file.path());
  ASSERT_FALSE(r.ok());
  const std::string& m = r.error().message;
  EXPECT_EQ(m.rfind(file.path() + ":6:9: ", 0), 0u) << m;
  for (std::string_view w : {"0600", "client_secret_file", "client_secret_env", "chmod 600"}) {
    EXPECT_NE(m.find(w), std::string::npos) << w << " not in: " << m;
  }
  EXPECT_EQ(m.find(kSecret), std::string::npos) << m;
}

TEST(ConfigFile, GroupReadableIsNotPrivate) {
  const TempFile file(kInlineSecretFile, 0640);
  EXPECT_FALSE(loadConfig(file.path()).ok());
}

TEST(ConfigFile, InlineSecretAcceptedInMode0600) {
  for (mode_t mode : {0600, 0400}) {
    const TempFile file(kInlineSecretFile, mode);
    Result<Config> r = loadConfig(file.path());
    ASSERT_TRUE(r.ok()) << r.error().message;
    EXPECT_EQ(r->path, file.path());
    EXPECT_EQ(r->targets[0].credentials[0].serviceAccount->clientSecret.inlineValue, kSecret);
    EXPECT_EQ(r->targets[0].credentials[0].serviceAccount->clientSecret.loc.file, file.path());
  }
}

TEST(ConfigFile, MissingFile) {
  Result<Config> r = loadConfig("/nonexistent/atlasgate.yaml");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ENOENT);
  EXPECT_EQ(r.error().message.rfind("/nonexistent/atlasgate.yaml: ", 0), 0u) << r.error().message;
  EXPECT_NE(r.error().message.find("No such file or directory"), std::string::npos) << r.error().message;
}

// ---- bad files: one per kind of mistake -----------------------------------

TEST(ConfigErrors, YamlSyntax) {
  EXPECT_TRUE(
      failsAt("targets:\n"
              "  - host: cloud.mongodb.com\n"
              "    addresses: [10.0.0.1\n"
              "listen: {}\n",
              "4:7", {"YAML syntax error"}));
  EXPECT_TRUE(
      failsAt("listen:\n"
              "  port: 1\n"
              " admin: x\n",
              "3:2", {"YAML syntax error", "end of map not found"}));
}

TEST(ConfigErrors, InputsThatHangYamlCppLoadAllFailCleanly) {
  // yaml-cpp 0.7's LoadAll() loops forever on these; the loader must not.
  for (const char* text : {"{},", "[],", "\"x\",", "{a: b},"})
    EXPECT_FALSE(parseConfig(text, "bad.yaml", false)) << text;
}

TEST(ConfigErrors, EmptyFileAndSeveralDocuments) {
  EXPECT_TRUE(failsAt("# nothing here\n", "1:1", {"empty", "targets"}));
  EXPECT_TRUE(failsAt(std::string(kTarget) + "---\n" + std::string(kTarget), "3:1", {"one YAML document"}));
}

TEST(ConfigErrors, UnknownTopLevelKey) {
  EXPECT_TRUE(failsAt(std::string(kTarget) + "lisen:\n  port: 1\n", "3:1",
                      {"unknown top-level key \"lisen\"", "did you mean \"listen\"", "allowed: listen, state_dir"}));
}

TEST(ConfigErrors, UnknownNestedKey) {
  EXPECT_TRUE(
      failsAt(std::string(kTarget) + "    upstream-port: 8443\n", "3:5",
              {"unknown key \"upstream-port\" in targets[0]", "did you mean \"upstream_port\"", "allowed: host"}));
  EXPECT_TRUE(failsAt(rulesWith("      action: block\n"
                                "      when:\n"
                                "        - pointer: /a\n"
                                "          equal: 3\n"),
                      "9:11", {"unknown key \"equal\" in rules.list[0].when[0]", "did you mean \"equals\""}));
}

TEST(ConfigErrors, DuplicateKey) {
  EXPECT_TRUE(
      failsAt(std::string(kTarget) + "    host: other.example.com\n", "3:5", {"targets[0]", "duplicate key \"host\""}));
}

TEST(ConfigErrors, WrongType) {
  EXPECT_TRUE(failsAt("listen: 15443\n" + std::string(kTarget), "1:9", {"listen", "expected a map", "scalar"}));
  EXPECT_TRUE(failsAt("targets: cloud.mongodb.com\n", "1:10", {"targets", "expected a list"}));
  EXPECT_TRUE(failsAt(std::string(kTarget) + "    resolve: sometimes\n", "3:14",
                      {"targets[0].resolve", "true or false", "\"sometimes\""}));
  EXPECT_TRUE(failsAt("targets:\n  - host: {name: a.com}\n", "2:11", {"targets[0].host", "expected a string", "map"}));
}

TEST(ConfigErrors, BadPort) {
  EXPECT_TRUE(
      failsAt("listen:\n  port: 70000\n" + std::string(kTarget), "2:9", {"listen.port", "from 1 to 65535", "70000"}));
  EXPECT_TRUE(
      failsAt(std::string(kTarget) + "    upstream_port: 0\n", "3:20", {"targets[0].upstream_port", "1 to 65535"}));
  EXPECT_TRUE(
      failsAt("listen:\n  admin: localhost\n" + std::string(kTarget), "2:10", {"listen.admin", "ADDRESS:PORT"}));
}

TEST(ConfigErrors, NoTargets) {
  EXPECT_TRUE(failsAt("targets: []\n", "1:10", {"at least one target"}));
  EXPECT_TRUE(failsAt("listen:\n  port: 15443\n", "1:1", {"targets", "required"}));
}

TEST(ConfigErrors, BadHost) {
  EXPECT_TRUE(failsAt("targets:\n  - host: cloud_mongodb.com\n", "2:11", {"targets[0].host", "not a valid DNS name"}));
  EXPECT_TRUE(failsAt("targets:\n  - host: -bad.example.com\n", "2:11", {"not a valid DNS name"}));
  EXPECT_TRUE(failsAt("targets:\n  - host: 10.0.0.1\n", "2:11", {"is an IP address", "addresses"}));
  EXPECT_TRUE(failsAt("targets:\n  - addresses: [10.0.0.1]\n", "2:5", {"targets[0]", "host is required"}));
}

TEST(ConfigErrors, BadAddress) {
  EXPECT_TRUE(failsAt(std::string(kTarget) + "    addresses: [10.0.0.1, 10.0.0.300]\n", "3:27",
                      {"targets[0].addresses[1]", "\"10.0.0.300\"", "not a literal IPv4 or IPv6 address"}));
  EXPECT_TRUE(failsAt(std::string(kTarget) + "    addresses: [\"::1\", \"0:0::1\"]\n", "3:24",
                      {"targets[0].addresses[1]", "address ::1 is listed twice"}));
}

TEST(ConfigErrors, DuplicateHost) {
  EXPECT_TRUE(failsAt(std::string(kTarget) + "  - host: Cloud.MongoDB.com.\n", "3:11",
                      {"targets[1].host", "duplicate target host \"cloud.mongodb.com\"", "first at line 2"}));
}

TEST(ConfigErrors, TwoSecretSources) {
  EXPECT_TRUE(failsAt(
      std::string(kTarget) + "    credentials:\n"
                             "      service_account:\n"
                             "        client_id: x\n"
                             "        client_secret_file: /etc/secret\n"
                             "        client_secret_env: SECRET\n",
      "7:9",
      {"targets[0].credentials.service_account", "both client_secret_file and client_secret_env", "exactly one"}));
}

TEST(ConfigErrors, TwoCredentialKinds) {
  EXPECT_TRUE(failsAt(std::string(kTarget) + "    credentials:\n"
                                             "      api_key: {public_key: p, private_key_env: K}\n"
                                             "      service_account: {client_id: i, client_secret_env: S}\n",
                      "5:7", {"targets[0].credentials", "both api_key and service_account", "one or the other"}));
}

TEST(ConfigErrors, NoSecretSource) {
  EXPECT_TRUE(failsAt(
      std::string(kTarget) + "    credentials:\n"
                             "      api_key:\n"
                             "        public_key: abcdefgh\n",
      "4:7", {"targets[0].credentials.api_key", "needs one of private_key_file, private_key_env, private_key"}));
}

TEST(ConfigErrors, InlineSecretInSharedFile) {
  EXPECT_TRUE(failsAt(kInlineSecretFile, "6:9",
                      {"targets[0].credentials.service_account.client_secret", "bad.yaml is mode 0600",
                       "use client_secret_file or client_secret_env", "chmod 600 bad.yaml"}));
}

TEST(ConfigErrors, CredentialListNeedsUniqueNames) {
  EXPECT_TRUE(failsAt(std::string(kTarget) + "    credentials:\n"
                                             "      - api_key: {public_key: p, private_key_env: K}\n",
                      "4:9", {"targets[0].credentials[0]", "name is required"}));
  EXPECT_TRUE(failsAt(std::string(kTarget) + "    credentials:\n"
                                             "      - name: a\n"
                                             "        api_key: {public_key: p, private_key_env: K}\n"
                                             "      - name: a\n"
                                             "        api_key: {public_key: q, private_key_env: K}\n",
                      "6:15", {"duplicate credential name \"a\"", "first at line 4"}));
}

TEST(ConfigErrors, BadRuleAction) {
  EXPECT_TRUE(
      failsAt(rulesWith("      action: deny\n"), "6:15",
              {"rules.list[0].action", "expected one of allow, block, rate_limit, approve, log_only", "\"deny\""}));
  EXPECT_TRUE(failsAt(rulesWith("      path: /a\n"), "5:7", {"rules.list[0]", "action is required"}));
  EXPECT_TRUE(
      failsAt(rulesWith("      action: rate-limit\n      rate: 1/s\n"), "6:15", {"did you mean \"rate_limit\""}));
}

TEST(ConfigErrors, RateOnNonRateLimit) {
  EXPECT_TRUE(failsAt(rulesWith("      action: block\n      rate: 5/m\n"), "7:7",
                      {"rules.list[0].rate", "only allowed with action: rate_limit"}));
  EXPECT_TRUE(failsAt(rulesWith("      action: allow\n      timeout: 5s\n"), "7:7",
                      {"timeout", "only allowed with action: approve"}));
  EXPECT_TRUE(failsAt(rulesWith("      action: block\n      would_be: approve\n"), "7:7",
                      {"would_be", "only allowed with action: log_only"}));
}

TEST(ConfigErrors, BadRate) {
  EXPECT_TRUE(failsAt(rulesWith("      action: rate_limit\n      rate: 5/fortnight\n"), "7:13",
                      {"rules.list[0].rate", "unknown rate unit \"fortnight\"", "second, minute, hour, day"}));
  EXPECT_TRUE(
      failsAt(rulesWith("      action: rate_limit\n      rate: 5/minutes\n"), "7:13", {"did you mean \"minute\""}));
  EXPECT_TRUE(failsAt(rulesWith("      action: rate_limit\n      rate: 0/s\n"), "7:13", {"COUNT/UNIT"}));
  EXPECT_TRUE(failsAt(rulesWith("      action: rate_limit\n      rate: 60\n"), "7:13", {"COUNT/UNIT"}));
  EXPECT_TRUE(failsAt(rulesWith("      action: rate_limit\n      rate: 1/s\n      burst: 0\n"), "8:14", {"burst"}));
}

TEST(ConfigErrors, ConditionShape) {
  EXPECT_TRUE(failsAt(rulesWith("      action: block\n"
                                "      when:\n"
                                "        - pointer: /a\n"),
                      "8:11", {"needs one of equals, in, not_in, matches, exists"}));
  EXPECT_TRUE(failsAt(rulesWith("      action: block\n"
                                "      when:\n"
                                "        - pointer: /a\n"
                                "          equals: [1]\n"),
                      "9:19", {"rules.list[0].when[0].equals", "expected a single value"}));
  EXPECT_TRUE(failsAt(rulesWith("      action: block\n"
                                "      when:\n"
                                "        - pointer: /a\n"
                                "          in: []\n"),
                      "9:15", {"rules.list[0].when[0].in", "list at least one value"}));
}

TEST(ConfigErrors, BadMethod) {
  EXPECT_TRUE(failsAt(rulesWith("      method: [GET, FETCH]\n      action: block\n"), "6:21",
                      {"rules.list[0].method[1]", "\"FETCH\" is not an HTTP method", "GET, HEAD, POST"}));
  EXPECT_TRUE(failsAt(rulesWith("      method: delet\n      action: block\n"), "6:15", {"did you mean \"DELETE\""}));
}

TEST(ConfigErrors, EmptyMatchList) {
  EXPECT_TRUE(failsAt(rulesWith("      method:\n      action: block\n"), "6:7",
                      {"rules.list[0].method", "is empty", "leave method out"}));
  EXPECT_TRUE(
      failsAt(rulesWith("      agents: []\n      action: allow\n"), "6:15", {"rules.list[0].agents", "is empty"}));
  // "" would read as "any", which leaving the key out says.
  EXPECT_TRUE(failsAt(rulesWith("      path: \"\"\n      action: block\n"), "6:13",
                      {"rules.list[0].path", "is empty", "leave path out"}));
  EXPECT_TRUE(failsAt(rulesWith("      action: block\n      pod_labels: \"\"\n"), "7:19",
                      {"rules.list[0].pod_labels", "is empty", "leave pod_labels out"}));
}

// What a rule's strings mean is policy/'s to check (tests/unit/policy): the
// loader takes them as they are and records where each was written.
TEST(ConfigLoad, RuleMeaningIsLeftToPolicy) {
  Result<Config> r =
      parse(rulesWith("      path: /groups/{g}/{g}\n"
                      "      pod_labels: \"env in (\"\n"
                      "      container_labels: \" \"\n"
                      "      when:\n"
                      "        - pointer: name\n"
                      "          matches: \"prod-(\"\n"
                      "      action: rate_limit\n"
                      "    - name: r\n"
                      "      action: allow\n"));
  ASSERT_TRUE(r.ok()) << r.error().message;
  const Rule& rule = r->rules.list.at(0);
  EXPECT_EQ(rule.path, "/groups/{g}/{g}");
  EXPECT_EQ(rule.podLabels, "env in (");
  EXPECT_EQ(rule.when.at(0).regex, "prod-(");
  EXPECT_FALSE(rule.rate.has_value());
  EXPECT_EQ(r->rules.list.at(1).name, "r");
  const std::pair<std::string_view, std::pair<int, int>> where[] = {{"name", {5, 13}},
                                                                    {"path", {6, 13}},
                                                                    {"pod_labels", {7, 19}},
                                                                    {"when[0].pointer", {10, 20}},
                                                                    {"when[0].matches", {11, 20}},
                                                                    {"action", {12, 15}}};
  for (const auto& [key, at] : where) {
    auto it = rule.keyLocs.find(key);
    ASSERT_NE(it, rule.keyLocs.end()) << key;
    EXPECT_EQ(it->second.file, "bad.yaml") << key;
    EXPECT_EQ((std::pair{it->second.line, it->second.column}), at) << key;
  }
}

TEST(ConfigErrors, RuleRefersToUnknownHostOrCredential) {
  EXPECT_TRUE(failsAt(rulesWith("      host: realm.mongodb.com\n      action: block\n"), "6:13",
                      {"rules.list[0].host", "\"realm.mongodb.com\" is not one of the targets (cloud.mongodb.com)"}));
  EXPECT_TRUE(failsAt(rulesWith("      action: allow\n      credential: admin\n"), "7:19",
                      {"rules.list[0].credential", "no target has a credential named \"admin\""}));
}

TEST(ConfigErrors, RelativeAttachPath) {
  EXPECT_TRUE(failsAt("agents:\n  attach: [/sys/fs/cgroup/a, ci.slice]\n" + std::string(kTarget), "2:30",
                      {"agents.attach[1]", "absolute path", "\"ci.slice\""}));
  EXPECT_TRUE(failsAt("state_dir: var/lib\n" + std::string(kTarget), "1:12", {"state_dir", "absolute path"}));
}

TEST(ConfigErrors, BadDuration) {
  EXPECT_TRUE(failsAt("limits:\n  idle_timeout: 5 minutes\n" + std::string(kTarget), "2:17",
                      {"limits.idle_timeout", "expected a duration", "\"5 minutes\""}));
  EXPECT_TRUE(failsAt("limits:\n  idle_timeout: 0ms\n" + std::string(kTarget), "2:17", {"greater than zero"}));
  EXPECT_TRUE(
      failsAt(rulesWith("      action: approve\n      timeout: -5\n"), "7:16", {"rules.list[0].timeout", "duration"}));
}

TEST(ConfigErrors, BadLogLevel) {
  EXPECT_TRUE(
      failsAt("log_level: verbose\n" + std::string(kTarget), "1:12", {"log_level", "debug, info, warn, error"}));
}

// Whatever goes wrong around a secret, the message names keys, never values.
TEST(ConfigErrors, SecretsNeverAppearInMessages) {
  const std::string head = std::string(kTarget) + "    credentials:\n      service_account:\n        client_id: id\n";
  const std::pair<std::string, bool> cases[] = {
      {head + "        client_secret: s3cr3t-VALUE\n", false},
      {head + "        client_secret: s3cr3t-VALUE\n        client_secret_env: X\n", true},
      {head + "        client_secret_file: /etc/x\n        client_secret: s3cr3t-VALUE\n", true},
      {head + "        client_secret: [s3cr3t-VALUE]\n", true},
      {head + "        client_secret_file: s3cr3t-VALUE\n", true},
      {head + "        client_secret_env: s3cr3t-VALUE\n", true},
      {head + "        client_secret: s3cr3t-VALUE\n        bogus: 1\n", true},
      {head + "        client_secret: s3cr3t-VALUE\n      - x\n", true},
      {head + "        client_secret: [s3cr3t-VALUE\n", true},
  };
  for (const auto& [yaml, isPrivate] : cases) {
    Result<Config> r = parse(yaml, isPrivate);
    ASSERT_FALSE(r.ok()) << yaml;
    EXPECT_EQ(r.error().message.find(kSecret), std::string::npos) << r.error().message;
    EXPECT_EQ(r.error().message.find("s3cr3t"), std::string::npos) << r.error().message;
  }
}

// ---- rules.preset: guardrails ------------------------------------------------

// Two targets; the first with a service account and an API key, the second
// with the same service account and another one.
constexpr std::string_view kGuardedTargets =
    "targets:\n"
    "  - host: cloud.mongodb.com\n"
    "    credentials:\n"
    "      - name: owner\n"
    "        service_account: {client_id: mdb_sa_id_own, client_secret_env: S}\n"
    "      - name: keys\n"
    "        api_key: {public_key: abcdefgh, private_key_env: K}\n"
    "  - host: cloud-gov.mongodb.com\n"
    "    credentials:\n"
    "      - name: owner\n"
    "        service_account: {client_id: mdb_sa_id_own, client_secret_env: S}\n"
    "      - name: other\n"
    "        service_account: {client_id: \"sa/x\", client_secret_env: T}\n"
    "      - name: third\n"
    "        service_account: {client_id: \"mdb.sa:2\", client_secret_env: T}\n";

// One line per rule: NAME METHODS PATH [POINTER~REGEX], all approve on every target's host.
std::vector<std::string> guardrailLines(const Rules& rules, const std::vector<std::string>& hosts) {
  std::vector<std::string> out;
  for (std::size_t i = 0; i < rules.presetRules; ++i) {
    const Rule& r = rules.list.at(i);
    std::string line = fmt::format("{} {} {}", r.name, fmt::join(r.methods, ","), r.path);
    for (const Condition& c : r.when) {
      EXPECT_EQ(c.op, CondOp::Matches) << r.name;
      line += fmt::format(" {}~{}", c.pointer, c.regex);
    }
    EXPECT_EQ(r.action, Action::Approve) << r.name;
    EXPECT_EQ(r.timeout, 120s) << r.name;
    EXPECT_EQ(r.hosts, hosts) << r.name;
    EXPECT_TRUE(r.agents.empty() && r.podLabels.empty() && r.containerLabels.empty() && r.credential.empty());
    EXPECT_EQ(r.loc.file, "preset:guardrails") << r.name;
    EXPECT_EQ(r.loc.line, 0) << r.name;
    EXPECT_TRUE(r.keyLocs.empty()) << r.name;
    out.push_back(line);
  }
  return out;
}

const std::vector<std::string> kAlwaysGuardrails = {
    R"(guardrail-open-access-list POST /api/atlas/*/groups/*/accessList /*/cidrBlock~.*(/|%2[fF])\s*0*[0-7]\s*)",
    R"(guardrail-open-access-list-entry POST /api/atlas/*/groups/*/accessList /cidrBlock~.*(/|%2[fF])\s*0*[0-7]\s*)",
    R"(guardrail-open-whitelist POST /api/atlas/*/groups/*/whitelist /*/cidrBlock~.*(/|%2[fF])\s*0*[0-7]\s*)",
    R"(guardrail-open-whitelist-entry POST /api/atlas/*/groups/*/whitelist /cidrBlock~.*(/|%2[fF])\s*0*[0-7]\s*)",
    "guardrail-org-invitations POST,PATCH /api/atlas/*/orgs/*/invites/**",
    "guardrail-project-invitations POST,PATCH /api/atlas/*/groups/*/invites/**",
    "guardrail-org-users POST,PUT,PATCH /api/atlas/*/orgs/*/users/**",
    "guardrail-project-users POST,PUT,PATCH /api/atlas/*/groups/*/users/**",
    "guardrail-team-members POST /api/atlas/*/orgs/*/teams/*/**",
    "guardrail-project-teams POST,PATCH /api/atlas/*/groups/*/teams/**",
    "guardrail-new-cloud-users POST /api/atlas/*/users",
    "guardrail-org-key-roles PATCH /api/atlas/*/orgs/*/apiKeys/*",
    "guardrail-project-key-roles POST,PATCH /api/atlas/*/groups/*/apiKeys/*",
    "guardrail-key-access-list POST /api/atlas/*/orgs/*/apiKeys/*/accessList",
    "guardrail-org-service-account-roles PATCH /api/atlas/*/orgs/*/serviceAccounts/*",
    "guardrail-project-service-account-roles POST,PATCH /api/atlas/*/groups/*/serviceAccounts/*",
    "guardrail-service-account-access-list POST /api/atlas/*/orgs/*/serviceAccounts/*/accessList",
    "guardrail-project-service-account-access-list POST /api/atlas/*/groups/*/serviceAccounts/*/accessList",
};

TEST(ConfigPreset, GuardrailsForServiceAccountsAndAnApiKey) {
  Result<Config> r = parse(std::string(kGuardedTargets) +
                           "rules:\n"
                           "  default: block\n"
                           "  list:\n"
                           "    - name: mine\n"
                           "      action: allow\n"
                           "  preset: guardrails\n");
  ASSERT_TRUE(r.ok()) << r.error().message;
  std::vector<std::string> want = kAlwaysGuardrails;
  // Per distinct client id, in the order of the targets; "sa/x" cannot be a
  // path segment, so no request can name it; "mdb.sa:2" is percent-encoded.
  want.insert(want.end(), {
                              "guardrail-own-credential DELETE /api/atlas/*/orgs/*/serviceAccounts/mdb_sa_id_own",
                              "guardrail-own-credential-2 DELETE /api/atlas/*/orgs/*/serviceAccounts/mdb%2Esa%3A2",
                              "guardrail-own-credential-project DELETE "
                              "/api/atlas/*/groups/*/serviceAccounts/mdb_sa_id_own",
                              "guardrail-own-credential-project-2 DELETE "
                              "/api/atlas/*/groups/*/serviceAccounts/mdb%2Esa%3A2",
                              "guardrail-own-credential-secrets POST,PUT,PATCH,DELETE "
                              "/api/atlas/*/orgs/*/serviceAccounts/mdb_sa_id_own/secrets/**",
                              "guardrail-own-credential-secrets-2 POST,PUT,PATCH,DELETE "
                              "/api/atlas/*/orgs/*/serviceAccounts/mdb%2Esa%3A2/secrets/**",
                              "guardrail-own-credential-project-secrets POST,PUT,PATCH,DELETE "
                              "/api/atlas/*/groups/*/serviceAccounts/mdb_sa_id_own/secrets/**",
                              "guardrail-own-credential-project-secrets-2 POST,PUT,PATCH,DELETE "
                              "/api/atlas/*/groups/*/serviceAccounts/mdb%2Esa%3A2/secrets/**",
                              "guardrail-any-api-key-deletion DELETE /api/atlas/*/orgs/*/apiKeys/*",
                          });
  EXPECT_EQ(guardrailLines(r->rules, {"cloud.mongodb.com", "cloud-gov.mongodb.com"}), want);
  EXPECT_EQ(r->rules.presets, std::vector<std::string>{"guardrails"});
  ASSERT_EQ(r->rules.list.size(), want.size() + 1);
  EXPECT_EQ(r->rules.list.back().name, "mine");  // the operator's rules after the preset's
  EXPECT_EQ(r->rules.defaultAction, Action::Block);
  EXPECT_NE(describeConfig(*r).find("rules: 1 (default block); preset guardrails: 27 rules before them\n"),
            std::string::npos)
      << describeConfig(*r);
  EXPECT_EQ(guardrailRules(r->targets).size(), want.size());
}

TEST(ConfigPreset, GuardrailsWithoutCredentials) {
  Result<Config> r = parse(std::string(kTarget) + "rules:\n  preset: [guardrails]\n");
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(guardrailLines(r->rules, {"cloud.mongodb.com"}), kAlwaysGuardrails);
  EXPECT_EQ(r->rules.list.size(), kAlwaysGuardrails.size());
  EXPECT_EQ(r->rules.defaultAction, Action::Allow);
}

TEST(ConfigPreset, StringOrListAndNoneWithoutTheKey) {
  for (std::string_view preset : {"guardrails", "[guardrails]", "[guardrails, guardrails]", "\"guardrails\""}) {
    Result<Config> r = parse(std::string(kTarget) + "rules:\n  preset: " + std::string(preset) + "\n");
    ASSERT_TRUE(r.ok()) << preset << ": " << r.error().message;
    EXPECT_EQ(r->rules.presets, std::vector<std::string>{"guardrails"}) << preset;
    EXPECT_EQ(r->rules.presetRules, kAlwaysGuardrails.size()) << preset;
  }
  Result<Config> none = parse(rulesWith("      action: block\n"));
  ASSERT_TRUE(none.ok()) << none.error().message;
  EXPECT_TRUE(none->rules.presets.empty());
  EXPECT_EQ(none->rules.presetRules, 0u);
  EXPECT_EQ(none->rules.list.size(), 1u);
  EXPECT_EQ(describeConfig(*none).find("preset"), std::string::npos);
}

TEST(ConfigPreset, UnknownPresetNamesTheValidOnes) {
  EXPECT_TRUE(failsAt(
      std::string(kTarget) + "rules:\n  preset: guardrail\n", "4:11",
      {"rules.preset: unknown preset \"guardrail\"", "did you mean \"guardrails\"", "valid presets: guardrails"}));
  EXPECT_TRUE(failsAt(std::string(kTarget) + "rules:\n  preset: [guardrails, lockdown]\n", "4:24",
                      {"rules.preset[1]: unknown preset \"lockdown\"", "valid presets: guardrails"}));
  EXPECT_TRUE(failsAt(std::string(kTarget) + "rules:\n  preset: []\n", "4:11", {"rules.preset"}));
  EXPECT_TRUE(failsAt(std::string(kTarget) + "rules:\n  preset: {a: b}\n", "4:11", {"rules.preset"}));
  EXPECT_TRUE(failsAt(std::string(kTarget) + "rules:\n  presets: guardrails\n", "4:3", {"presets", "preset"}));
}

TEST(ConfigPreset, AnOperatorRuleMayNotTakeAGuardrailsName) {
  const std::string head = std::string(kGuardedTargets) +
                           "rules:\n"
                           "  preset: guardrails\n"
                           "  list:\n"
                           "    - name: fine\n"
                           "      action: allow\n";
  EXPECT_TRUE(failsAt(head + "    - name: guardrail-invitations-x\n      action: allow\n"
                             "    - name: guardrail-org-invitations\n      action: block\n",
                      "23:13",
                      {"rules.list[2].name",
                       "\"guardrail-org-invitations\" is the name of a rule of rules.preset "
                       "guardrails (line 17)",
                       "another name"}));
  EXPECT_TRUE(failsAt(head + "    - name: guardrail-own-credential-project-2\n      action: allow\n", "21:13",
                      {"rules.list[1].name", "guardrail-own-credential-project-2", "rules.preset"}));
  // Without the preset the name is the operator's.
  Result<Config> r = parse(std::string(kTarget) +
                           "rules:\n  list:\n    - name: guardrail-org-invitations\n"
                           "      action: allow\n");
  EXPECT_TRUE(r.ok()) << r.error().message;
}

// ---- schema tables ----------------------------------------------------------

// describeConfig() of full.yaml, exactly (`atlasgate check` prints it).
TEST(ConfigDescribe, FullFileExactly) {
  const std::string want =
      "config " + kFullFile + "\n" +
      "listen: port 16443, admin 127.0.0.1:16444, console off\n"
      "state dir: /srv/atlasgate/state; audit log: stdout; log level: debug\n"
      "agents: cgroup /sys/fs/cgroup/agents, attach /sys/fs/cgroup/ci.slice, /sys/fs/cgroup/dev.slice\n"
      "targets: 2\n"
      "  cloud.mongodb.com (upstream port 8443, resolve no, addresses 203.0.113.7, 2001:db8::1, upstream CA "
      "/etc/atlasgate/upstream.pem)\n"
      "    credential default: service_account:mdb_sa_id_123 (secret from file "
      "/etc/atlasgate/atlas-client-secret; agents all)\n"
      "  realm.mongodb.com (upstream port 443, resolve yes, addresses none, upstream CA system trust store)\n"
      "    credential ops: api_key:abcdefgh (secret from $ATLAS_PRIVATE_KEY; agents ops-*, deploy)\n"
      "    credential readonly: service_account:mdb_sa_id_ro (secret from $ATLAS_RO_SECRET; agents all)\n"
      "rules: 5 (default block)\n"
      "limits: header 32768 bytes / 50 headers, body 1048576 bytes; timeouts handshake 5s, header 10s, idle "
      "120s, request 3600s, upstream 2s\n"
      "caps: connections 4096 (512 per agent); held requests 64 (8 per agent, 67108864 body bytes); phantom "
      "tokens 64 per agent; upstream connections 64 per target, 16 per agent (connect timeout 10s, queue "
      "timeout 10s)\n"
      "bpf: pins under /sys/fs/bpf/atlasgate, keep on exit no, refuse QUIC no\n"
      "capture: yes\n";
  EXPECT_EQ(describeConfig(full()), want);
}

TEST(ConfigDescribe, DefaultsAndAdminToken) {
  Result<Config> r = parse("listen:\n  admin: \"[::1]:9\"\n  admin_token_file: /etc/t\n" + std::string(kTarget));
  ASSERT_TRUE(r.ok()) << r.error().message;
  const std::string want =
      "config bad.yaml\n"
      "listen: port 15443, admin [::1]:9 (token from /etc/t), console off\n"
      "state dir: /var/lib/atlasgate; audit log: /var/log/atlasgate/audit.jsonl; log level: info\n"
      "agents: cgroup atlasgate, attach none\n"
      "targets: 1\n"
      "  cloud.mongodb.com (upstream port 443, resolve yes, addresses none, upstream CA system trust store)\n"
      "    no credentials: requests pass unchanged\n"
      "rules: 0 (default allow)\n"
      "limits: header 16384 bytes / 100 headers, body 16777216 bytes; timeouts handshake 10s, header 15s, idle "
      "60s, request 300s, upstream 60s\n"
      "caps: connections 4096 (512 per agent); held requests 64 (8 per agent, 67108864 body bytes); phantom "
      "tokens 64 per agent; upstream connections 64 per target, 16 per agent (connect timeout 10s, queue "
      "timeout 10s)\n"
      "bpf: pins under /sys/fs/bpf/atlasgate, keep on exit yes, refuse QUIC yes\n"
      "capture: yes\n";
  EXPECT_EQ(describeConfig(*r), want);
}

// The keys of the YAML block under README "## Configuration", dotted. Keys
// under a list item ("- host:") are left out: no table reads them.
std::set<std::string> readmeKeys() {
  std::ifstream in(std::string(kData) + "/../../../../README.md");
  std::stringstream text;
  text << in.rdbuf();
  const std::string readme = text.str();
  const std::size_t section = readme.find("\n## Configuration");
  const std::size_t open = readme.find("```yaml\n", section);
  const std::size_t close = readme.find("\n```", open + 8);
  if (section == std::string::npos || open == std::string::npos || close == std::string::npos) return {};
  std::set<std::string> keys;
  std::vector<std::pair<std::size_t, std::string>> stack;  // (indent, key)
  std::optional<std::size_t> listIndent;
  static const std::regex kKeyLine(R"(^( *)(- )?([A-Za-z_]+):( .*)?$)");
  std::istringstream lines(readme.substr(open + 8, close - open - 8));
  for (std::string line; std::getline(lines, line);) {
    std::smatch m;
    if (!std::regex_match(line, m, kKeyLine)) continue;
    const std::size_t indent = m[1].length();
    if (listIndent && indent >= *listIndent) continue;
    listIndent.reset();
    if (m[2].matched) {
      listIndent = indent;
      continue;
    }
    while (!stack.empty() && stack.back().first >= indent) stack.pop_back();
    stack.emplace_back(indent, m[3]);
    std::string path;
    for (const auto& [i, k] : stack) path += (path.empty() ? "" : ".") + k;
    keys.insert(path);
  }
  return keys;
}

// Keys the README's table does not show yet. Remove one when it does: the
// test then fails until it is gone from here.

TEST(ConfigSchema, EveryKeyIsInTheReadmeTableAndBack) {
  const std::set<std::string> readme = readmeKeys();
  ASSERT_FALSE(readme.empty()) << "no ```yaml block under ## Configuration in README.md";
  std::set<std::string> schema;
  for (const SchemaKey& k : schemaKeys()) schema.insert(k.path);
  // A README key counts when its parent is a table: the top level or a
  // section whose keys the schema lists (targets and rules are not tables).
  auto isTable = [&](const std::string& parent) {
    return parent.empty() || std::any_of(schema.begin(), schema.end(),
                                         [&](const std::string& k) { return k.rfind(parent + ".", 0) == 0; });
  };
  for (const std::string& key : readme) {
    const std::size_t dot = key.rfind('.');
    const std::string parent = dot == std::string::npos ? "" : key.substr(0, dot);
    if (isTable(parent)) {
      EXPECT_TRUE(schema.count(key)) << key << " is in README.md but no schema table has it";
    }
  }
  for (const std::string& key : schema) {
    EXPECT_TRUE(readme.count(key)) << key << " is missing from README.md's configuration table";
  }
}

TEST(ConfigSchema, KeysCarryKindDefaultAndDoc) {
  std::map<std::string, SchemaKey> keys;
  for (const SchemaKey& k : schemaKeys()) {
    EXPECT_FALSE(k.doc.empty()) << k.path;
    EXPECT_TRUE(keys.emplace(k.path, k).second) << k.path << " twice";
  }
  EXPECT_EQ(keys.at("listen.port").kind, "port");
  EXPECT_EQ(keys.at("listen.port").defaultValue, "15443");
  EXPECT_EQ(keys.at("limits.idle_timeout").defaultValue, "60s");
  EXPECT_EQ(keys.at("limits.max_held_requests").max, 65536u);
  EXPECT_EQ(keys.at("discovery.containers.settle").defaultValue, "3s");
  EXPECT_EQ(keys.at("discovery.containers.settle").max, 60u);
  EXPECT_EQ(keys.at("bpf.keep_on_exit").defaultValue, "true");
  EXPECT_EQ(keys.at("intercept").defaultValue, "targets");
  EXPECT_EQ(keys.at("agents.attach").defaultValue, "[]");
  EXPECT_EQ(keys.at("discovery.kubernetes").kind, "section");
  EXPECT_EQ(keys.count("targets.host"), 0u);  // targets and rules are not tables
}

// YAML that sets the dotted key to value, then the one target.
std::string yamlAt(const std::string& dotted, const std::string& value) {
  std::string out, indent;
  std::size_t start = 0;
  for (std::size_t dot; (dot = dotted.find('.', start)) != std::string::npos; start = dot + 1) {
    out += indent + dotted.substr(start, dot - start) + ":\n";
    indent += "  ";
  }
  return out + indent + dotted.substr(start) + ": " + value + "\n" + std::string(kTarget);
}

// The sections read from tables: the top level and every section the schema
// lists keys under.
std::vector<std::string> tableSections() {
  std::vector<std::string> out{""};
  const std::vector<SchemaKey> keys = schemaKeys();
  for (const SchemaKey& k : keys) {
    const bool hasKeys =
        std::any_of(keys.begin(), keys.end(), [&](const SchemaKey& c) { return c.path.rfind(k.path + ".", 0) == 0; });
    if (hasKeys) out.push_back(k.path);
  }
  return out;
}

TEST(ConfigSchema, UnknownKeyInEachTableIsRejectedNamingKeyAndSection) {
  const std::vector<std::string> sections = tableSections();
  EXPECT_EQ(sections, (std::vector<std::string>{"", "listen", "agents", "limits", "bpf", "dns", "capture", "discovery",
                                                "discovery.kubernetes", "discovery.containers"}));
  for (const std::string& section : sections) {
    const std::string yaml = yamlAt(section.empty() ? "no_such_key" : section + ".no_such_key", "1");
    const std::string where = section.empty() ? "top-level key \"no_such_key\"" : "key \"no_such_key\" in " + section;
    const auto depth = std::count(section.begin(), section.end(), '.') + (section.empty() ? 0 : 1);
    EXPECT_TRUE(failsAt(yaml, fmt::format("{}:{}", depth + 1, 2 * depth + 1), {"unknown " + where, "allowed: "}))
        << section;
  }
}

// One more than a decimal number.
std::string plusOne(std::uint64_t n) { return n == UINT64_MAX ? "18446744073709551616" : std::to_string(n + 1); }

// Kind::Uint and Kind::Port: every integer key takes its bounds and nothing beyond.
TEST(ConfigSchemaKinds, IntegerAndPortBounds) {
  int checked = 0;
  for (const SchemaKey& k : schemaKeys()) {
    if (k.kind != "integer" && k.kind != "port") continue;
    ++checked;
    const std::string range = fmt::format("expected an integer from {} to {}", k.min, k.max);
    EXPECT_TRUE(parse(yamlAt(k.path, std::to_string(k.max))).ok()) << k.path;
    EXPECT_TRUE(parse(yamlAt(k.path, std::to_string(k.min))).ok()) << k.path;
    const auto depth = std::count(k.path.begin(), k.path.end(), '.');
    const std::string at = fmt::format("{}:{}", depth + 1, 2 * depth + k.path.size() - k.path.rfind('.') + 2);
    EXPECT_TRUE(failsAt(yamlAt(k.path, plusOne(k.max)), at, {k.path + ": " + range}));
    EXPECT_TRUE(failsAt(yamlAt(k.path, std::to_string(k.min - 1)), at, {k.path + ": " + range}));
    EXPECT_TRUE(failsAt(yamlAt(k.path, "-1"), at, {range, "\"-1\""}));
  }
  EXPECT_EQ(checked, 13);  // listen.port, the 11 integers of limits, capture.max_response_bytes
  Result<Config> r = parse(yamlAt("limits.max_held_requests", "65536"));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->limits.maxHeldRequests, 65536u);
}

// Kind::Duration: 1s to a year, or the key's own bounds (settle: 1s to 60s,
// listen.console_session: 1s to 7 days).
TEST(ConfigSchemaKinds, DurationBounds) {
  int checked = 0;
  for (const SchemaKey& k : schemaKeys()) {
    if (k.kind != "duration") continue;
    ++checked;
    if (k.path != "dns.min_refresh" && k.path != "dns.max_refresh") {  // (min_refresh <= max_refresh)
      EXPECT_TRUE(parse(yamlAt(k.path, std::to_string(k.max) + "s")).ok()) << k.path;
      EXPECT_TRUE(parse(yamlAt(k.path, "1ms")).ok()) << k.path;  // rounds up to 1s
    }
    const Result<Config> zero = parse(yamlAt(k.path, "0ms"));
    ASSERT_FALSE(zero.ok()) << k.path;
    EXPECT_NE(zero.error().message.find("greater than zero"), std::string::npos) << zero.error().message;
    const Result<Config> over = parse(yamlAt(k.path, plusOne(k.max) + "s"));
    ASSERT_FALSE(over.ok()) << k.path;
    const bool ownBounds = k.max < 365ull * 24 * 3600;
    const std::string own = fmt::format("expected between 1s and {}s", k.max);
    EXPECT_NE(over.error().message.find(ownBounds ? std::string_view(own) : "longer than a year"), std::string::npos)
        << over.error().message;
  }
  EXPECT_EQ(checked, 12);
  Result<Config> r = parse(yamlAt("discovery.containers.settle", "500ms"));
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->containers->settle, 1s);
}

TEST(ConfigSchemaKinds, String) {
  EXPECT_TRUE(failsAt(yamlAt("discovery.kubernetes.api_server", "[a]"), "3:17",
                      {"discovery.kubernetes.api_server: expected a string, got a list"}));
  EXPECT_TRUE(failsAt(yamlAt("discovery.kubernetes.api_server", "http://x"), "3:17", {"expected an https:// URL"}));
  Result<Config> r = parse(yamlAt("discovery.kubernetes.api_server", "\"\""));
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->kubernetes->apiServer, "");
}

TEST(ConfigSchemaKinds, NonEmpty) {
  EXPECT_TRUE(failsAt(yamlAt("agents.cgroup", "\"\""), "2:11", {"agents.cgroup: must not be empty"}));
  EXPECT_TRUE(failsAt(yamlAt("agents.cgroup", "a/../b"), "2:11", {"agents.cgroup: must not contain \"..\""}));
}

TEST(ConfigSchemaKinds, Path) {
  EXPECT_TRUE(failsAt(yamlAt("publish_ca_dir", "ca"), "1:17", {"publish_ca_dir: expected an absolute path", "\"ca\""}));
  EXPECT_TRUE(
      failsAt(yamlAt("bpf.pin_root", "/tmp/x"), "2:13", {"bpf.pin_root: must be a directory under /sys/fs/bpf/"}));
  Result<Config> r = parse(yamlAt("publish_ca_dir", "/srv/ca"));
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->publishCaDir, "/srv/ca");
}

TEST(ConfigSchemaKinds, LogPath) {
  EXPECT_TRUE(failsAt(yamlAt("audit_log", "audit.jsonl"), "1:12", {"audit_log: expected an absolute path"}));
  for (const char* ok : {"-", "/var/log/a.jsonl"}) {
    Result<Config> r = parse(yamlAt("audit_log", fmt::format("\"{}\"", ok)));
    ASSERT_TRUE(r.ok()) << r.error().message;
    EXPECT_EQ(r->auditLog, ok);
  }
}

TEST(ConfigSchemaKinds, Address) {
  EXPECT_TRUE(failsAt(yamlAt("listen.admin", "localhost"), "2:10", {"listen.admin: expected ADDRESS:PORT"}));
  EXPECT_TRUE(failsAt(yamlAt("listen.admin", "\"::1:9\""), "2:10", {"ADDRESS:PORT"}));
  EXPECT_TRUE(failsAt(yamlAt("listen.admin", "127.0.0.1:0"), "2:10", {"ADDRESS:PORT"}));
  Result<Config> r = parse(yamlAt("listen.admin", "\"[::1]:15444\""));
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->listen.admin, "[::1]:15444");
  r = parse(yamlAt("listen.admin", "~"));  // nullable: the default, off
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_FALSE(r->listen.admin.has_value());
}

TEST(ConfigSchemaKinds, Choice) {
  EXPECT_TRUE(failsAt(yamlAt("log_level", "wrn"), "1:12",
                      {"log_level: expected one of debug, info, warn, error, got \"wrn\"", "did you mean \"warn\""}));
  Result<Config> r = parse(yamlAt("log_level", "WARN"));  // case does not matter
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->logLevel, "warn");
  // intercept is exact.
  EXPECT_TRUE(failsAt(yamlAt("intercept", "All-TLS"), "1:12", {"intercept: expected one of targets, all-tls"}));
  r = parse(yamlAt("intercept", "all-tls"));
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->intercept, Intercept::AllTls);
}

TEST(ConfigSchemaKinds, Bool) {
  EXPECT_TRUE(
      failsAt(yamlAt("bpf.refuse_quic", "yes"), "2:16", {"bpf.refuse_quic: expected true or false, got \"yes\""}));
  Result<Config> r = parse(yamlAt("bpf.refuse_quic", "False"));
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_FALSE(r->bpf.refuseQuic);
}

TEST(ConfigSchemaKinds, List) {
  EXPECT_TRUE(failsAt(yamlAt("dns.servers", "1.1.1.1"), "2:12", {"dns.servers: expected a list, got a scalar"}));
  EXPECT_TRUE(failsAt(yamlAt("dns.servers", "[1.1.1.1, ns.example]"), "2:22",
                      {"dns.servers[1]: expected an IPv4 resolver address"}));
  EXPECT_TRUE(
      failsAt(yamlAt("dns.servers", "[\"1.1.1.1:0\"]"), "2:13", {"dns.servers[0]: expected IPv4 or IPv4:port"}));
  Result<Config> r = parse(yamlAt("dns.servers", "[1.1.1.1, \"9.9.9.9:5353\"]"));
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->dns.servers, (std::vector<std::string>{"1.1.1.1", "9.9.9.9:5353"}));
}

TEST(ConfigSchemaKinds, PathList) {
  EXPECT_TRUE(failsAt(yamlAt("agents.attach", "[/a, b]"), "2:16", {"agents.attach[1]: expected an absolute path"}));
  EXPECT_TRUE(failsAt(yamlAt("agents.attach", "{a: b}"), "2:11", {"agents.attach: expected a list, got a map"}));
}

TEST(ConfigSchemaKinds, Section) {
  EXPECT_TRUE(failsAt(yamlAt("dns", "5"), "1:6", {"dns: expected a map, got a scalar"}));
  EXPECT_TRUE(
      failsAt(yamlAt("discovery.containers", "[]"), "2:15", {"discovery.containers: expected a map, got a list"}));
  Result<Config> r = parse(yamlAt("discovery.kubernetes", "{}"));
  ASSERT_TRUE(r.ok()) << r.error().message;
  ASSERT_TRUE(r->kubernetes.has_value());
  EXPECT_EQ(r->kubernetes->loc.line, 2);  // where the section was written
  EXPECT_FALSE(r->containers.has_value());
}

TEST(ConfigSchema, ChecksAcrossKeys) {
  EXPECT_TRUE(failsAt("dns:\n  min_refresh: 20\n  max_refresh: 10\n" + std::string(kTarget), "2:3",
                      {"dns: min_refresh (20s) is above max_refresh (10s)"}));
  EXPECT_TRUE(failsAt(yamlAt("discovery.kubernetes.node_name_env", "\"\""), "3:5",
                      {"discovery.kubernetes: node_name_env must not be empty"}));
  EXPECT_TRUE(failsAt(yamlAt("listen.admin_token_file", "/etc/t"), "2:21", {"needs listen.admin"}));
}

}  // namespace
}  // namespace atlasgate::config
