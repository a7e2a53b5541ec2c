// Container discovery: the engine's JSON (hostile inputs beside real
// captures from Podman 4.3 and Docker), container cgroups from
// /proc/<pid>/cgroup, the set diff, and the container_labels plumbing
// (config, policy, agent naming).

#include "discovery/containers.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "config/config.h"
#include "policy/policy.h"
#include "proxy/agents.h"

namespace atlasgate::discovery {
namespace {

namespace fs = std::filesystem;

const std::string kId = "178261ee32dbb9ea35b2a803d119118b61899b9d1f7c2277b0ba42dc1d3e6643";
const std::string kOther = "759f3911ee344d02feb030bf97e2920800204bbbc0acabd1f35a3e36bcfc47de";

// What Podman 4.3's compat API answers for GET /containers/<id>/json (trimmed).
std::string podmanInspect(
    const std::string& id = kId, const std::string& name = "\"/t5\"",
    const std::string& labels = R"({"atlasgate.io/inject":"true","team":"data"})",
    const std::string& state =
        R"({"Status":"running","Running":true,"Pid":22103,"StartedAt":"2026-11-30T08:50:36.386291895Z"})") {
  return R"({"Id":")" + id + R"(","Created":"2026-11-30T08:50:19Z","Path":"sleep","Args":["300"],"State":)" + state +
         R"(,"Image":"","Name":)" + name + R"(,"RestartCount":0,"Config":{"Hostname":"178261ee32db","Labels":)" +
         labels + R"(,"Cmd":["sleep","300"]},"HostConfig":{"NetworkMode":"host","CgroupParent":""}})";
}

// --- ids and names ---------------------------------------------------------------

TEST(ContainerId, SixtyFourHexDigitsOnly) {
  EXPECT_EQ(normalizeContainerId(kId).value(), kId);
  std::string upper = kId;
  for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  EXPECT_EQ(normalizeContainerId(upper).value(), kId);
  EXPECT_FALSE(normalizeContainerId(kId.substr(0, 63)));
  EXPECT_FALSE(normalizeContainerId(kId + "0"));
  EXPECT_FALSE(normalizeContainerId(""));
  EXPECT_FALSE(normalizeContainerId(std::string(64, 'g')));
  // An id that would walk the request target elsewhere.
  EXPECT_FALSE(normalizeContainerId("../../../../v1.41/containers/" + std::string(35, 'a')));
  EXPECT_FALSE(normalizeContainerId(kId.substr(0, 62) + "%2"));
  EXPECT_FALSE(normalizeContainerId(kId.substr(0, 63) + std::string(1, '\0')));
}

TEST(ContainerName, EngineRule) {
  EXPECT_EQ(containerName("/t5").value(), "t5");
  EXPECT_EQ(containerName("agent_1.a-b").value(), "agent_1.a-b");
  EXPECT_EQ(containerName(std::string(253, 'a')).value(), std::string(253, 'a'));
  for (std::string bad : {"", "/", "//x", "-x", ".x", "_x", "a b", "a/b", "../x", "a\nb", "a\x1b[31mred", "caf\xc3\xa9",
                          "a:b", "a\x7f"}) {
    EXPECT_FALSE(containerName(bad)) << bad;
  }
  EXPECT_FALSE(containerName(std::string(254, 'a')));
  EXPECT_FALSE(containerName(std::string("a\0b", 3)));
  // The message shows a hostile name escaped, never raw.
  auto r = containerName("evil\x1b]0;pwned\x07");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().message.find('\x1b'), std::string::npos) << r.error().message;
  EXPECT_NE(r.error().message.find("\\x1b"), std::string::npos) << r.error().message;
}

// --- inspect ---------------------------------------------------------------------

TEST(ContainerInspect, Podman) {
  auto c = parseContainerInspect(podmanInspect());
  ASSERT_TRUE(c) << c.error().message;
  EXPECT_EQ(c->id, kId);
  EXPECT_EQ(c->name, "t5");
  EXPECT_EQ(c->agentName(), "container/t5");
  EXPECT_TRUE(c->running);
  EXPECT_EQ(c->pid, 22103);
  EXPECT_EQ(c->labels.at("team"), "data");
  EXPECT_EQ(c->startedAt, "2026-11-30T08:50:36.386291895Z");
}

TEST(ContainerInspect, StoppedHasNoPid) {
  for (std::string state : {R"({"Running":false,"Pid":0})", R"({"Running":false,"Pid":77})",
                            R"({"Running":true,"Pid":0})", R"({"Running":"true","Pid":7})", R"({"Pid":7})", "null"}) {
    auto c = parseContainerInspect(podmanInspect(kId, "\"/t5\"", "{}", state));
    ASSERT_TRUE(c) << state << ": " << c.error().message;
    EXPECT_FALSE(c->running) << state;
    EXPECT_EQ(c->pid, 0) << state;
  }
}

TEST(ContainerInspect, NoLabelsIsNoLabels) {
  for (std::string labels : {"null", "{}"}) {
    auto c = parseContainerInspect(podmanInspect(kId, "\"/t5\"", labels));
    ASSERT_TRUE(c) << c.error().message;
    EXPECT_TRUE(c->labels.empty());
  }
}

TEST(ContainerInspect, HostileAnswersAreRefused) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"invalid JSON", "{\"Id\":"},
      {"not an object", "[1,2]"},
      {"no id", R"({"Name":"/x"})"},
      {"short id", podmanInspect("abc")},
      {"id with a slash", podmanInspect(kId.substr(0, 60) + "/../")},
      {"id not a string", R"({"Id":12,"Name":"/x"})"},
      {"no name", R"({"Id":")" + kId + R"("})"},
      {"name with a newline", podmanInspect(kId, "\"/a\\nb\"")},
      {"name with an escape", podmanInspect(kId, "\"/a\\u001b[2Jb\"")},
      {"name with a NUL", podmanInspect(kId, "\"/a\\u0000b\"")},
      {"name not a string", podmanInspect(kId, "[\"x\"]")},
      {"labels not an object", podmanInspect(kId, "\"/t\"", "[\"a=b\"]")},
      {"label value a number", podmanInspect(kId, "\"/t\"", R"({"a":1})")},
      {"label value an object", podmanInspect(kId, "\"/t\"", R"({"a":{"b":"c"}})")},
      {"label key with a newline", podmanInspect(kId, "\"/t\"", R"({"a\nb":"c"})")},
      {"label value with a control character", podmanInspect(kId, "\"/t\"", R"({"a":"b\u0007"})")},
      {"empty label key", podmanInspect(kId, "\"/t\"", R"({"":"c"})")},
      {"huge label value", podmanInspect(kId, "\"/t\"", R"({"a":")" + std::string(5000, 'v') + "\"}")},
      {"huge label key", podmanInspect(kId, "\"/t\"", "{\"" + std::string(600, 'k') + "\":\"v\"}")},
      {"negative pid", podmanInspect(kId, "\"/t\"", "{}", R"({"Running":true,"Pid":-1})")},
      {"huge pid", podmanInspect(kId, "\"/t\"", "{}", R"({"Running":true,"Pid":18446744073709551615})")},
      {"pid beyond pid_max", podmanInspect(kId, "\"/t\"", "{}", R"({"Running":true,"Pid":4194305})")},
      {"pid a string", podmanInspect(kId, "\"/t\"", "{}", R"({"Running":true,"Pid":"5"})")},
      {"pid a float", podmanInspect(kId, "\"/t\"", "{}", R"({"Running":true,"Pid":5.5})")},
      {"StartedAt with a newline",
       podmanInspect(kId, "\"/t\"", "{}", R"({"Running":true,"Pid":5,"StartedAt":"x\ny"})")},
      {"deep nesting", std::string(10000, '[') + std::string(10000, ']')},
  };
  for (const auto& [what, body] : cases) {
    auto c = parseContainerInspect(body);
    EXPECT_FALSE(c) << what;
  }
}

TEST(ContainerInspect, Bounds) {
  std::string many = "{";
  for (int i = 0; i < 257; ++i) many += fmt::format("{}\"k{}\":\"v\"", i ? "," : "", i);
  many += "}";
  EXPECT_FALSE(parseContainerInspect(podmanInspect(kId, "\"/t\"", many)));
  EngineLimits lim;
  lim.maxResponseBytes = 100;
  auto r = parseContainerInspect(podmanInspect(), lim);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("too large"), std::string::npos);
}

// --- list ------------------------------------------------------------------------

TEST(ContainerList, EveryContainerOnceWithItsState) {
  const std::string body = "[{\"Id\":\"" + kId +
                           R"(","Names":["/t5"],"Labels":{"atlasgate.io/inject":"true"},"State":"running"},)" +
                           "{\"Id\":\"" + kOther + R"(","Names":["/t6"],"State":"exited"},)" + "{\"Id\":\"" + kId +
                           R"(","State":"running"}])";
  auto listed = parseContainerList(body);
  ASSERT_TRUE(listed) << listed.error().message;
  // The stopped one is listed too: absence from the list is what says removed.
  EXPECT_EQ(*listed, (std::vector<ListedContainer>{{kId, true}, {kOther, false}}));
  // Docker before 1.23 sent no State: taken as running (inspect decides).
  listed = parseContainerList("[{\"Id\":\"" + kOther + "\"}]");
  ASSERT_TRUE(listed);
  EXPECT_EQ(*listed, (std::vector<ListedContainer>{{kOther, true}}));
  EXPECT_TRUE(parseContainerList("[]")->empty());
}

TEST(ContainerList, HostileAnswersAreErrors) {
  for (std::string body : std::vector<std::string>{"", "{}", "null", "[1]", "[{\"Id\":\"x\"}]",
                                                   "[{\"Names\":[\"/a\"]}]", "[{\"Id\":\"" + kId + "\",\"State\":5}]",
                                                   "[{\"Id\":\"" + kId + "\"},", "\"" + kId + "\""}) {
    EXPECT_FALSE(parseContainerList(body)) << body;
  }
  EngineLimits lim;
  lim.maxListed = 2;
  std::string three = "[";
  for (int i = 0; i < 3; ++i) three += fmt::format("{}{{\"Id\":\"{:064x}\"}}", i ? "," : "", i + 1);
  three += "]";
  EXPECT_FALSE(parseContainerList(three, lim));
  lim.maxListed = 3;
  EXPECT_EQ(parseContainerList(three, lim)->size(), 3u);
}

// --- events ----------------------------------------------------------------------

TEST(EngineEvents, PodmanAndDocker) {
  // Captured from Podman 4.3.1 (`podman restart t5`).
  auto e = parseEngineEvent(
      R"({"status":"die","id":")" + kId + R"(","Type":"container","Action":"die","Actor":{"ID":")" + kId +
      R"(","Attributes":{"atlasgate.io/inject":"true","containerExitCode":"137","image":"","name":"t5","podId":""}},"scope":"local","time":1796028636,"timeNano":1796028636242520060})");
  ASSERT_TRUE(e) << e.error().message;
  EXPECT_EQ(e->type, "container");
  EXPECT_EQ(e->action, "die");
  EXPECT_EQ(e->id, kId);
  EXPECT_TRUE(e->relevant());
  EXPECT_FALSE(e->removal());
  // Docker: exec events carry the command after a colon.
  e = parseEngineEvent(R"({"Type":"container","Action":"exec_start: sh -c 'x'","Actor":{"ID":")" + kId + R"("}})");
  ASSERT_TRUE(e);
  EXPECT_EQ(e->action, "exec_start");
  EXPECT_FALSE(e->relevant());
  for (const char* gone : {"destroy", "remove"}) {
    e = parseEngineEvent(fmt::format(R"({{"Type":"container","Action":"{}","Actor":{{"ID":"{}"}}}})", gone, kId));
    ASSERT_TRUE(e);
    EXPECT_TRUE(e->removal()) << gone;
  }
  for (const char* act : {"start", "restart", "stop", "kill", "oom", "rename", "cleanup"}) {
    e = parseEngineEvent(fmt::format(R"({{"Type":"container","Action":"{}","Actor":{{"ID":"{}"}}}})", act, kId));
    ASSERT_TRUE(e);
    EXPECT_TRUE(e->relevant()) << act;
  }
  // Old engines: status and id only.
  e = parseEngineEvent(R"({"status":"start","id":")" + kId + R"(","from":"busybox","time":1})");
  ASSERT_TRUE(e);
  EXPECT_EQ(e->type, "container");
  EXPECT_TRUE(e->relevant());
  // Events of other kinds need no container id.
  e = parseEngineEvent(R"({"Type":"image","Action":"pull","Actor":{"ID":"docker.io/library/x:latest"}})");
  ASSERT_TRUE(e);
  EXPECT_FALSE(e->relevant());
  EXPECT_FALSE(e->removal());
}

TEST(EngineEvents, HostileLinesAreErrors) {
  for (std::string line : std::vector<std::string>{
           "", "garbage", "[]", "{}", R"({"Type":"container"})", R"({"Type":"container","Action":"start"})",
           R"({"Type":"container","Action":"start","Actor":{"ID":"../../etc"}})",
           R"({"Type":"container","Action":"start","Actor":{"ID":5}})", R"({"Type":7,"Action":"start"})",
           R"({"Type":"container","Action":["start"]})",
           R"({"Type":"container","Action":"start","Actor":{"ID":")" + kId + "\"}"}) {
    EXPECT_FALSE(parseEngineEvent(line)) << line;
  }
}

// --- filters and targets --------------------------------------------------------------

TEST(ContainerLabelFilter, KeyOrKeyEqualsValue) {
  EXPECT_EQ(parseContainerLabelFilter("atlasgate.io/inject=true")->str(), "atlasgate.io/inject=true");
  EXPECT_EQ(parseContainerLabelFilter("agent")->str(), "agent");
  for (const char* bad : {"", "a!=b", "!a", "a in (b)", "a=b,c=d", "a=b c", "a=\"b\""}) {
    EXPECT_FALSE(parseContainerLabelFilter(bad)) << bad;
  }
}

TEST(EngineTargets, FiltersAreEncoded) {
  EXPECT_EQ(containersListTarget("atlasgate.io/inject=true"),
            "/v1.41/containers/json?all=true&filters=%7B%22label%22%3A%5B%22atlasgate.io%2Finject%3Dtrue%22%5D%7D");
  EXPECT_EQ(engineEventsTarget("a=b"),
            "/v1.41/events?filters=%7B%22type%22%3A%5B%22container%22%5D%2C%22label%22%3A%5B%22a%3Db%22%5D%7D");
  EXPECT_EQ(containerInspectTarget(kId), "/v1.41/containers/" + kId + "/json");
}

// --- cgroups ---------------------------------------------------------------------

TEST(ContainerCgroup, FromProc) {
  // Podman with runc and the cgroupfs manager on a hybrid host.
  const std::string hybrid = "9:name=systemd:/libpod_parent/libpod-" + kId + "\n4:memory:/libpod_parent/libpod-" + kId +
                             "\n0::/libpod_parent/libpod-" + kId + "\n";
  EXPECT_EQ(containerCgroupFromProc(hybrid, kId).value(), "libpod_parent/libpod-" + kId);
  // Docker (systemd driver), crio, Docker (cgroupfs driver).
  EXPECT_EQ(containerCgroupFromProc("0::/system.slice/docker-" + kId + ".scope\n", kId).value(),
            "system.slice/docker-" + kId + ".scope");
  EXPECT_EQ(containerCgroupFromProc("0::/docker/" + kId, kId).value(), "docker/" + kId);
  // A process in a child cgroup of the container: the container's cgroup.
  EXPECT_EQ(containerCgroupFromProc("0::/machine.slice/libpod-" + kId + ".scope/container/init.scope\n", kId).value(),
            "machine.slice/libpod-" + kId + ".scope");
  // The container's process moved itself into cgroups it made below its own,
  // named after its id: still the engine's cgroup, never the deeper one (an
  // attachment there would leave the rest of the container unredirected).
  EXPECT_EQ(
      containerCgroupFromProc("0::/libpod_parent/libpod-" + kId + "/a/b/" + kId + "/c/x" + kId + "\n", kId).value(),
      "libpod_parent/libpod-" + kId);
}

TEST(ContainerCgroup, RefusesWhatIsNotTheContainers) {
  const std::vector<std::string> bad = {
      "",
      "4:memory:/libpod-" + kId + "\n",                  // no cgroup2 line
      "0::/\n",                                          // the root: a pid of the host
      "0::/user.slice/user-1000.slice/session-3.scope",  // a reused pid: someone else's process
      "0::/libpod_parent/libpod-" + kOther,              // another container's
      "0::/libpod-" + kId + "/../../",                   // dot-dot
      "0::/a/./libpod-" + kId,
      "0::/a//libpod-" + kId,
      "0::libpod-" + kId,               // relative
      "0::/libpod-" + kId + "\x1b[2J",  // control characters
      "0::/" + std::string(5000, 'a') + "/libpod-" + kId,
  };
  for (const auto& text : bad) EXPECT_FALSE(containerCgroupFromProc(text, kId)) << text;
  EXPECT_FALSE(containerCgroupFromProc("0::/libpod-" + kId, "short"));
}

TEST(ContainerCgroup, FindReadsProcAndChecksTheDirectory) {
  fs::path tmp = fs::temp_directory_path() / fmt::format("ag-containers-{}", ::getpid());
  fs::remove_all(tmp);
  fs::create_directories(tmp / "proc" / "4242");
  fs::create_directories(tmp / "cg" / "libpod_parent" / ("libpod-" + kId));
  std::ofstream(tmp / "proc" / "4242" / "cgroup") << "1:cpu:/x\n0::/libpod_parent/libpod-" << kId << "\n";
  ContainerInfo c;
  c.id = kId;
  c.name = "t5";
  c.running = true;
  c.pid = 4242;
  auto cg = findContainerCgroup((tmp / "cg").string(), c, (tmp / "proc").string());
  ASSERT_TRUE(cg) << cg.error().message;
  EXPECT_EQ(*cg, (tmp / "cg" / "libpod_parent" / ("libpod-" + kId)).string());
  // The process is gone; the cgroup is gone; the container is not running.
  c.pid = 4243;
  EXPECT_FALSE(findContainerCgroup((tmp / "cg").string(), c, (tmp / "proc").string()));
  c.pid = 4242;
  fs::remove(tmp / "cg" / "libpod_parent" / ("libpod-" + kId));
  EXPECT_FALSE(findContainerCgroup((tmp / "cg").string(), c, (tmp / "proc").string()));
  c.running = false;
  EXPECT_FALSE(findContainerCgroup((tmp / "cg").string(), c, (tmp / "proc").string()));
  fs::remove_all(tmp);
}

// --- the set diff ------------------------------------------------------------------

ContainerInfo info(const std::string& id, const std::string& name, std::int64_t pid, bool running = true) {
  ContainerInfo c;
  c.id = id;
  c.name = name;
  c.pid = pid;
  c.running = running;
  c.labels = {{"atlasgate.io/inject", "true"}};
  return c;
}

TEST(ContainerDiff, GoneNewChanged) {
  std::map<std::string, ContainerInfo> known{{kId, info(kId, "a", 10)}, {kOther, info(kOther, "b", 20)}};
  // a restarted (new pid), b gone, c new and d listed but stopped.
  const std::string c3(64, 'c'), d4(64, 'd');
  auto d = diffContainers(known, {info(kId, "a", 11), info(c3, "c", 30), info(d4, "d", 0, false)});
  ASSERT_EQ(d.deletes.size(), 1u);
  EXPECT_EQ(d.deletes[0].name, "b");
  ASSERT_EQ(d.upserts.size(), 2u);
  std::set<std::string> up{d.upserts[0].name, d.upserts[1].name};
  EXPECT_EQ(up, (std::set<std::string>{"a", "c"}));
  // Nothing changed: nothing to do.
  d = diffContainers(known, {info(kId, "a", 10), info(kOther, "b", 20)});
  EXPECT_TRUE(d.deletes.empty());
  EXPECT_TRUE(d.upserts.empty());
  // A label change is a change.
  auto relabelled = info(kId, "a", 10);
  relabelled.labels["env"] = "prod";
  d = diffContainers(known, {relabelled, info(kOther, "b", 20)});
  ASSERT_EQ(d.upserts.size(), 1u);
  EXPECT_EQ(d.upserts[0].labels.at("env"), "prod");
}

// --- container_labels: config, policy, agent naming -----------------------------------

constexpr const char* kTarget = "targets:\n  - host: cloud.mongodb.com\n";

TEST(ContainersConfig, DiscoveryContainers) {
  auto c = config::parseConfig(std::string(kTarget) + "discovery:\n  containers: {}\n", "t.yaml", false);
  ASSERT_TRUE(c) << c.error().message;
  ASSERT_TRUE(c->containers);
  EXPECT_EQ(c->containers->socket, "/run/podman/podman.sock");
  EXPECT_EQ(c->containers->label, "atlasgate.io/inject=true");
  EXPECT_FALSE(c->kubernetes);
  c = config::parseConfig(std::string(kTarget) +
                              "discovery:\n  containers: {socket: /run/docker.sock, label: agent}\n"
                              "  kubernetes: {node_name_env: N}\n",
                          "t.yaml", false);
  ASSERT_TRUE(c) << c.error().message;
  EXPECT_EQ(c->containers->socket, "/run/docker.sock");
  EXPECT_EQ(c->containers->label, "agent");
  EXPECT_TRUE(c->kubernetes);
  c = config::parseConfig(kTarget, "t.yaml", false);
  ASSERT_TRUE(c);
  EXPECT_FALSE(c->containers);
}

TEST(ContainersConfig, BadDiscoveryContainers) {
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"containers: {socket: run/docker.sock}", "socket"},
      {"containers: {label: \"a!=b\"}", "key or key=value"},
      {"containers: {label: \"a=b,c=d\"}", "key or key=value"},
      {"containers: {sokcet: /x}", "sokcet"},
      {"containers: {socket: /" + std::string(120, 's') + "}", "too long"},
  };
  for (const auto& [yaml, word] : bad) {
    auto c = config::parseConfig(std::string(kTarget) + "discovery:\n  " + yaml + "\n", "t.yaml", false);
    ASSERT_FALSE(c) << yaml;
    EXPECT_NE(c.error().message.find(word), std::string::npos) << c.error().message;
    EXPECT_EQ(c.error().message.rfind("t.yaml:", 0), 0u) << c.error().message;
  }
}

TEST(ContainersConfig, ContainerLabelsRule) {
  auto c = config::parseConfig(
      std::string(kTarget) + "rules:\n  list:\n    - {name: r, action: block, container_labels: \"env in (prod)\"}\n",
      "t.yaml", false);
  ASSERT_TRUE(c) << c.error().message;
  EXPECT_EQ(c->rules.list.at(0).containerLabels, "env in (prod)");
  // The shape is config's to check (an empty selector), the selector
  // itself policy's (which reports it with the rule's index and position).
  for (const char* sel : {"\"\"", "\"env in (\"", "\"a b\""}) {
    auto loaded = config::parseConfig(
        std::string(kTarget) + "rules:\n  list:\n    - {name: r, action: block, container_labels: " + sel + "}\n",
        "t.yaml", false);
    if (!loaded) continue;
    auto compiled = policy::Policy::compile(loaded->rules);
    ASSERT_FALSE(compiled) << sel;
    EXPECT_NE(compiled.error().message.find("rules.list[0]"), std::string::npos) << compiled.error().message;
  }
}

TEST(ContainersPolicy, ContainerLabelsMatchOnlyContainers) {
  config::Rules rules;
  config::Rule r;
  r.name = "no-prod-containers";
  r.path = "/api/atlas/v2/**";
  r.action = config::Action::Block;
  r.containerLabels = "env=prod";
  rules.list = {r};
  auto p = policy::Policy::compile(rules);
  ASSERT_TRUE(p) << p.error().message;
  const std::map<std::string, std::string> prod{{"env", "prod"}}, dev{{"env", "dev"}};
  auto eval = [&](const std::map<std::string, std::string>* pod, const std::map<std::string, std::string>* ctr) {
    policy::Request q;
    q.method = "GET";
    q.target = "/api/atlas/v2/groups";
    q.host = "cloud.mongodb.com";
    q.agent = "container/x";
    q.podLabels = pod;
    q.containerLabels = ctr;
    return (*p)->evaluate(q, std::chrono::steady_clock::now()).verdict;
  };
  EXPECT_EQ(eval(nullptr, &prod), policy::Verdict::Block);
  EXPECT_EQ(eval(nullptr, &dev), policy::Verdict::Allow);
  EXPECT_EQ(eval(nullptr, nullptr), policy::Verdict::Allow);
  // A pod with the same labels is no container.
  EXPECT_EQ(eval(&prod, nullptr), policy::Verdict::Allow);
  policy::Request q;
  q.method = "GET";
  q.target = "/api/atlas/v2/groups";
  q.host = "cloud.mongodb.com";
  auto e = (*p)->explain(q);
  ASSERT_FALSE(e.checks.empty());
  EXPECT_NE(e.checks[0].reason.find("no container"), std::string::npos) << e.checks[0].reason;
}

TEST(ContainersAgents, GivenContainerNameCarriesContainerLabels) {
  auto labels =
      std::make_shared<const std::map<std::string, std::string>>(std::map<std::string, std::string>{{"env", "prod"}});
  std::map<std::string, proxy::GivenName> given{
      {"libpod_parent/libpod-" + kId, {"container/t5", labels, proxy::LabelKind::Container}}};
  auto id =
      proxy::identifyAgent("libpod_parent/libpod-" + kId + "/sub", "atlasgate", {"libpod_parent/libpod-" + kId}, given);
  EXPECT_EQ(id.name, "container/t5");
  EXPECT_EQ(id.key, "libpod_parent/libpod-" + kId);
  ASSERT_TRUE(id.containerLabels);
  EXPECT_EQ(id.containerLabels->at("env"), "prod");
  EXPECT_FALSE(id.podLabels);
}

}  // namespace
}  // namespace atlasgate::discovery
