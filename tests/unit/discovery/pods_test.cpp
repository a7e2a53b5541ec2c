// Pure parts of Kubernetes pod discovery: pod JSON, cgroup
// paths, list/watch payloads, set diffs, request targets, URL and token
// handling. No network, no root.

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include <boost/json.hpp>
#include <gtest/gtest.h>

#include "discovery/pods.h"
#include "discovery/watcher.h"

namespace json = boost::json;
using namespace atlasgate::discovery;

namespace {

constexpr const char* kUid = "5d8c1a2e-7f3b-4c11-9e0a-0123456789ab";
constexpr const char* kUidSystemd = "5d8c1a2e_7f3b_4c11_9e0a_0123456789ab";

const char* kPodJson = R"({
  "kind": "Pod", "apiVersion": "v1",
  "metadata": {
    "name": "agent-7d9f", "namespace": "team-a", "uid": "5d8c1a2e-7f3b-4c11-9e0a-0123456789ab",
    "resourceVersion": "4711",
    "labels": {"atlasgate.io/inject": "true", "app": "ops-bot"}
  },
  "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "x"}]},
  "status": {"phase": "Running", "qosClass": "Burstable"}
})";

PodInfo pod(const std::string& uid, const std::string& rv, const std::string& name = "p") {
  PodInfo p;
  p.ns = "ns";
  p.name = name;
  p.uid = uid;
  p.resourceVersion = rv;
  p.phase = "Running";
  return p;
}

// A scratch directory, removed at the end of the test.
class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/ag-discovery-test.XXXXXX";
    path_ = ::mkdtemp(tmpl);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string mkdirs(const std::string& rel) const {
    std::filesystem::create_directories(path_ + "/" + rel);
    return path_ + "/" + rel;
  }
  std::string write(const std::string& rel, const std::string& content) const {
    std::ofstream(path_ + "/" + rel) << content;
    return path_ + "/" + rel;
  }

 private:
  std::string path_;
};

}  // namespace

// --- pods --------------------------------------------------------------------

TEST(ParsePod, AllFields) {
  auto p = parsePod(json::parse(kPodJson));
  ASSERT_TRUE(p) << p.error().message;
  EXPECT_EQ(p->ns, "team-a");
  EXPECT_EQ(p->name, "agent-7d9f");
  EXPECT_EQ(p->uid, kUid);
  EXPECT_EQ(p->resourceVersion, "4711");
  EXPECT_EQ(p->nodeName, "node-1");
  EXPECT_EQ(p->phase, "Running");
  EXPECT_EQ(p->qosClass, "Burstable");
  EXPECT_FALSE(p->deleted);
  EXPECT_FALSE(p->terminated());
  EXPECT_EQ(p->labels.size(), 2u);
  EXPECT_EQ(p->labels.at("atlasgate.io/inject"), "true");
  EXPECT_EQ(p->agentName(), "team-a/agent-7d9f");
}

TEST(ParsePod, MinimalAndNulls) {
  auto p = parsePod(json::parse(
      R"({"metadata":{"name":"a","namespace":"b","uid":"u-1","labels":null,"deletionTimestamp":null},"status":null})"));
  ASSERT_TRUE(p) << p.error().message;
  EXPECT_TRUE(p->labels.empty());
  EXPECT_FALSE(p->deleted);
  EXPECT_EQ(p->phase, "");
  EXPECT_EQ(p->qosClass, "");
  EXPECT_EQ(p->nodeName, "");
}

TEST(ParsePod, DeletionTimestampAndTerminalPhases) {
  auto p = parsePod(json::parse(
      R"({"metadata":{"name":"a","namespace":"b","uid":"u-1","deletionTimestamp":"2024-05-01T10:00:00Z"},
          "status":{"phase":"Running"}})"));
  ASSERT_TRUE(p);
  EXPECT_TRUE(p->deleted);
  EXPECT_FALSE(p->terminated());
  for (const char* phase : {"Succeeded", "Failed"}) {
    auto q = parsePod(json::parse(
        fmt::format(R"({{"metadata":{{"name":"a","namespace":"b","uid":"u-1"}},"status":{{"phase":"{}"}}}})", phase)));
    ASSERT_TRUE(q);
    EXPECT_TRUE(q->terminated()) << phase;
  }
}

TEST(ParsePod, Errors) {
  struct Case {
    const char* json;
    const char* needle;
  } cases[] = {
      {R"([])", "not a JSON object"},
      {R"({"spec":{}})", "no metadata"},
      {R"({"metadata":{"namespace":"n","uid":"u"}})", "metadata.name"},
      {R"({"metadata":{"name":"a","namespace":"n"}})", "metadata.uid"},
      {R"({"metadata":{"name":"a","namespace":"n","uid":"../../x"}})", "not a UID"},
      {R"({"metadata":{"name":"a","namespace":"n","uid":"u","labels":[]}})", "labels is not an object"},
      {R"({"metadata":{"name":"a","namespace":"n","uid":"u","labels":{"k":1}}})", "label k is not a string"},
      {R"({"metadata":{"name":"a","namespace":"n","uid":"u"},"spec":{"nodeName":3}})", "spec.nodeName"},
      {R"({"metadata":{"name":"a","namespace":"n","uid":"u"},"status":{"phase":true}})", "status.phase"},
  };
  for (const auto& c : cases) {
    auto p = parsePod(json::parse(c.json));
    ASSERT_FALSE(p) << c.json;
    EXPECT_NE(p.error().message.find(c.needle), std::string::npos) << c.json << " -> " << p.error().message;
  }
}

// --- cgroups ------------------------------------------------------------------

TEST(PodCgroup, CandidatesForEachQosClass) {
  auto b = podCgroupCandidates(kUid, "Burstable");
  ASSERT_EQ(b.size(), 6u);
  EXPECT_EQ(b[0],
            std::string("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod") + kUidSystemd + ".slice");
  EXPECT_EQ(b[1], std::string("kubepods/burstable/pod") + kUid);

  auto be = podCgroupCandidates(kUid, "BestEffort");
  EXPECT_EQ(be[0],
            std::string("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod") + kUidSystemd + ".slice");
  EXPECT_EQ(be[1], std::string("kubepods/besteffort/pod") + kUid);

  auto g = podCgroupCandidates(kUid, "Guaranteed");
  EXPECT_EQ(g[0], std::string("kubepods.slice/kubepods-pod") + kUidSystemd + ".slice");
  EXPECT_EQ(g[1], std::string("kubepods/pod") + kUid);

  // Unknown class: every layout, no duplicates.
  auto any = podCgroupCandidates(kUid, "");
  EXPECT_EQ(any.size(), 6u);
  std::set<std::string> uniq(any.begin(), any.end());
  EXPECT_EQ(uniq.size(), 6u);
  for (const auto& c : g) EXPECT_TRUE(uniq.contains(c)) << c;
}

TEST(PodCgroup, IsPodCgroupName) {
  EXPECT_TRUE(isPodCgroupName(std::string("pod") + kUid, kUid));
  EXPECT_TRUE(isPodCgroupName(std::string("kubepods-besteffort-pod") + kUidSystemd + ".slice", kUid));
  EXPECT_TRUE(isPodCgroupName(std::string("kubepods-pod") + kUidSystemd + ".slice", kUid));
  EXPECT_TRUE(isPodCgroupName(std::string("kubelet-kubepods-burstable-pod") + kUidSystemd + ".slice", kUid));
  EXPECT_FALSE(isPodCgroupName(std::string("pod") + kUid + "x", kUid));
  EXPECT_FALSE(isPodCgroupName(std::string("other-pod") + kUidSystemd + ".slice", kUid));
  EXPECT_FALSE(isPodCgroupName("pod", ""));
}

TEST(PodCgroup, FindsSystemdLayout) {
  TempDir t;
  PodInfo p = pod(kUid, "1");
  p.qosClass = "Burstable";
  const std::string want =
      t.mkdirs(std::string("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod") + kUidSystemd + ".slice");
  t.mkdirs("kubepods.slice/kubepods-besteffort.slice");
  auto r = findPodCgroup(t.path() + "/", p);
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(*r, want);
}

TEST(PodCgroup, FindsCgroupfsLayoutGuaranteed) {
  TempDir t;
  PodInfo p = pod(kUid, "1");
  p.qosClass = "Guaranteed";
  const std::string want = t.mkdirs(std::string("kubepods/pod") + kUid);
  auto r = findPodCgroup(t.path(), p);
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(*r, want);
}

TEST(PodCgroup, QosClassUnknownStillFound) {
  TempDir t;
  PodInfo p = pod(kUid, "1");  // qosClass ""
  const std::string want = t.mkdirs(std::string("kubepods/besteffort/pod") + kUid);
  auto r = findPodCgroup(t.path(), p);
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(*r, want);
}

TEST(PodCgroup, NestedKubeletCgroupRoot) {
  // kind / k3s style: kubelet --cgroup-root=/kubelet with the systemd driver.
  TempDir t;
  PodInfo p = pod(kUid, "1");
  p.qosClass = "BestEffort";
  const std::string want = t.mkdirs(
      std::string(
          "kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod") +
      kUidSystemd + ".slice");
  t.mkdirs("system.slice/containerd.service");
  auto r = findPodCgroup(t.path(), p);
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(*r, want);
}

TEST(PodCgroup, MissingIsAnErrorThatSaysWhere) {
  TempDir t;
  t.mkdirs("kubepods.slice/kubepods-burstable.slice");
  t.mkdirs("system.slice");
  PodInfo p = pod(kUid, "1");
  p.qosClass = "Burstable";
  auto r = findPodCgroup(t.path(), p);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("ns/p"), std::string::npos) << r.error().message;
  EXPECT_NE(r.error().message.find(kUid), std::string::npos) << r.error().message;
  EXPECT_NE(r.error().message.find(t.path()), std::string::npos) << r.error().message;
  // A file where the directory should be does not count.
  t.write(std::string("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod") + kUidSystemd + ".slice", "x");
  EXPECT_FALSE(findPodCgroup(t.path(), p));
}

TEST(PodCgroup, RefusesBadUid) {
  TempDir t;
  EXPECT_FALSE(findPodCgroup(t.path(), pod("../../etc", "1")));
  EXPECT_FALSE(findPodCgroup(t.path(), pod("", "1")));
}

// --- list and watch payloads -------------------------------------------------------

TEST(PodList, Parses) {
  std::string body = std::string(R"({"kind":"PodList","apiVersion":"v1",
    "metadata":{"resourceVersion":"900","continue":"tok"},"items":[)") +
                     kPodJson + "]}";
  auto l = parsePodList(body);
  ASSERT_TRUE(l) << l.error().message;
  EXPECT_EQ(l->resourceVersion, "900");
  EXPECT_EQ(l->continueToken, "tok");
  ASSERT_EQ(l->pods.size(), 1u);
  EXPECT_EQ(l->pods[0].agentName(), "team-a/agent-7d9f");
}

TEST(PodList, EmptyAndNullItems) {
  auto a = parsePodList(R"({"kind":"PodList","metadata":{"resourceVersion":"1"},"items":[]})");
  ASSERT_TRUE(a);
  EXPECT_TRUE(a->pods.empty());
  auto b = parsePodList(R"({"kind":"PodList","metadata":{"resourceVersion":"1"},"items":null})");
  ASSERT_TRUE(b);
  EXPECT_TRUE(b->pods.empty());
  EXPECT_EQ(b->continueToken, "");
}

TEST(PodList, Errors) {
  EXPECT_FALSE(parsePodList("not json"));
  EXPECT_FALSE(parsePodList(R"({"kind":"Status","code":401})"));
  EXPECT_FALSE(parsePodList(R"({"kind":"PodList","items":{}})"));
  auto bad = parsePodList(R"({"kind":"PodList","items":[{"metadata":{"name":"a"}}]})");
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message.find("item 0"), std::string::npos) << bad.error().message;
}

TEST(WatchEvent, PodEvents) {
  for (auto [type, want] : {std::pair{"ADDED", WatchEventType::Added}, std::pair{"MODIFIED", WatchEventType::Modified},
                            std::pair{"DELETED", WatchEventType::Deleted}}) {
    std::string line = fmt::format(R"({{"type":"{}","object":{}}})", type, kPodJson);
    // The API server writes one JSON object per line; no newlines inside.
    std::erase(line, '\n');
    auto e = parseWatchEvent(line);
    ASSERT_TRUE(e) << type << ": " << e.error().message;
    EXPECT_EQ(e->type, want);
    EXPECT_EQ(watchEventTypeName(e->type), type);
    ASSERT_TRUE(e->pod);
    EXPECT_EQ(e->pod->uid, kUid);
    EXPECT_EQ(e->resourceVersion, "4711");
    EXPECT_FALSE(e->gone());
  }
}

TEST(WatchEvent, Bookmark) {
  auto e = parseWatchEvent(
      R"({"type":"BOOKMARK","object":{"kind":"Pod","apiVersion":"v1","metadata":{"resourceVersion":"12746","annotations":{"k8s.io/initial-events-end":"true"}}}})");
  ASSERT_TRUE(e) << e.error().message;
  EXPECT_EQ(e->type, WatchEventType::Bookmark);
  EXPECT_EQ(e->resourceVersion, "12746");
  EXPECT_FALSE(e->pod);
  EXPECT_FALSE(parseWatchEvent(R"({"type":"BOOKMARK","object":{"metadata":{}}})"));
}

TEST(WatchEvent, Gone) {
  auto e = parseWatchEvent(
      R"j({"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"too old resource version: 1 (2)","reason":"Expired","code":410}})j");
  ASSERT_TRUE(e) << e.error().message;
  EXPECT_EQ(e->type, WatchEventType::Error);
  EXPECT_EQ(e->code, 410);
  EXPECT_EQ(e->reason, "Expired");
  EXPECT_NE(e->message.find("too old"), std::string::npos);
  EXPECT_TRUE(e->gone());
  // Code alone or reason alone is enough.
  EXPECT_TRUE(parseWatchEvent(R"({"type":"ERROR","object":{"code":410}})")->gone());
  EXPECT_TRUE(parseWatchEvent(R"({"type":"ERROR","object":{"reason":"Gone"}})")->gone());
  auto other = parseWatchEvent(R"({"type":"ERROR","object":{"code":500,"reason":"InternalError","message":"boom"}})");
  ASSERT_TRUE(other);
  EXPECT_FALSE(other->gone());
}

TEST(WatchEvent, Errors) {
  EXPECT_FALSE(parseWatchEvent(""));
  EXPECT_FALSE(parseWatchEvent("{"));
  EXPECT_FALSE(parseWatchEvent(R"({"object":{}})"));
  EXPECT_FALSE(parseWatchEvent(R"({"type":"ADDED"})"));
  EXPECT_FALSE(parseWatchEvent(R"({"type":"RENAMED","object":{}})"));
  auto bad = parseWatchEvent(R"({"type":"ADDED","object":{"metadata":{"name":"x"}}})");
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message.find("ADDED"), std::string::npos);
}

TEST(StatusBody, Describe) {
  EXPECT_EQ(describeStatusBody(
                R"({"kind":"Status","status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401})"),
            "Unauthorized (401)");
  EXPECT_EQ(describeStatusBody(R"({"kind":"Status","message":"too old","reason":"Expired","code":410})"),
            "Expired: too old (410)");
  EXPECT_EQ(describeStatusBody(R"({"message":"pods is forbidden"})"), "pods is forbidden");
  EXPECT_EQ(describeStatusBody("plain\ntext"), "plain text");
  EXPECT_EQ(describeStatusBody(""), "(empty body)");
  EXPECT_EQ(describeStatusBody(std::string(300, 'x')).size(), 203u);
}

// --- diff ------------------------------------------------------------------------

TEST(DiffPods, NewChangedVanishedTerminated) {
  std::map<std::string, PodInfo> known{
      {"a", pod("a", "1")}, {"b", pod("b", "1")}, {"c", pod("c", "1")}, {"d", pod("d", "1")}};
  PodInfo done = pod("d", "5");
  done.phase = "Succeeded";
  std::vector<PodInfo> listed{pod("a", "1"), pod("b", "2"), pod("e", "1"), done};
  PodSetDiff d = diffPods(known, listed);
  std::set<std::string> del, up;
  for (auto& p : d.deletes) del.insert(p.uid);
  for (auto& p : d.upserts) up.insert(p.uid);
  EXPECT_EQ(del, (std::set<std::string>{"c", "d"}));
  EXPECT_EQ(up, (std::set<std::string>{"b", "e"}));
  // A vanished pod is reported as last known.
  for (auto& p : d.deletes) {
    if (p.uid == "c") {
      EXPECT_EQ(p.resourceVersion, "1");
    }
  }
}

TEST(DiffPods, RecreatedUnderSameName) {
  std::map<std::string, PodInfo> known{{"old", pod("old", "1", "web-0")}};
  PodSetDiff d = diffPods(known, {pod("new", "7", "web-0")});
  ASSERT_EQ(d.deletes.size(), 1u);
  ASSERT_EQ(d.upserts.size(), 1u);
  EXPECT_EQ(d.deletes[0].uid, "old");
  EXPECT_EQ(d.upserts[0].uid, "new");
}

// --- request targets, URL, token ----------------------------------------------------------

TEST(Targets, ListAndWatch) {
  EXPECT_EQ(podsListTarget("atlasgate.io/inject=true", "node-1", 500, ""),
            "/api/v1/pods?labelSelector=atlasgate.io%2Finject%3Dtrue&fieldSelector=spec.nodeName%3Dnode-1&limit=500");
  EXPECT_EQ(podsListTarget("", "", 10, "a b"), "/api/v1/pods?limit=10&continue=a%20b");
  EXPECT_EQ(podsListTarget("", "n", 10, "", ListFreshness::Any),
            "/api/v1/pods?fieldSelector=spec.nodeName%3Dn&limit=10&resourceVersion=0");
  EXPECT_EQ(podsListTarget("", "", 10, "", ListFreshness::NotOlderThan, "77"),
            "/api/v1/pods?limit=10&resourceVersion=77&resourceVersionMatch=NotOlderThan");
  // No version to be fresher than: a quorum read. A continuation carries its own.
  EXPECT_EQ(podsListTarget("", "", 10, "", ListFreshness::NotOlderThan, ""), "/api/v1/pods?limit=10");
  EXPECT_EQ(podsListTarget("", "", 10, "c", ListFreshness::Any), "/api/v1/pods?limit=10&continue=c");
  EXPECT_EQ(podsWatchTarget("env in (a,b)", "n", "42", 300),
            "/api/v1/pods?labelSelector=env%20in%20%28a%2Cb%29&fieldSelector=spec.nodeName%3Dn&watch=1"
            "&resourceVersion=42&allowWatchBookmarks=true&timeoutSeconds=300");
  EXPECT_EQ(podsWatchTarget("", "", "", 5), "/api/v1/pods?watch=1&allowWatchBookmarks=true&timeoutSeconds=5");
}

TEST(ApiServerUrl, Parses) {
  auto a = parseApiServerUrl("https://10.96.0.1:443");
  ASSERT_TRUE(a) << a.error().message;
  EXPECT_EQ(a->host, "10.96.0.1");
  EXPECT_EQ(a->port, 443);
  EXPECT_EQ(a->hostHeader(), "10.96.0.1");
  EXPECT_EQ(a->url(), "https://10.96.0.1:443");

  auto b = parseApiServerUrl("https://Kubernetes.Default.svc/");
  ASSERT_TRUE(b);
  EXPECT_EQ(b->host, "kubernetes.default.svc");
  EXPECT_EQ(b->port, 443);

  auto c = parseApiServerUrl("https://[fd00::1]:6443");
  ASSERT_TRUE(c) << c.error().message;
  EXPECT_EQ(c->host, "fd00::1");
  EXPECT_EQ(c->port, 6443);
  EXPECT_EQ(c->hostHeader(), "[fd00::1]:6443");
  EXPECT_EQ(c->url(), "https://[fd00::1]:6443");

  for (const char* bad :
       {"http://10.0.0.1", "https://", "https://h:0", "https://h:70000", "https://h:x", "https://h/api",
        "https://fd00::1", "https://[nope]:1", "https://u@h", "h:443", "https://h:"}) {
    EXPECT_FALSE(parseApiServerUrl(bad)) << bad;
  }
}

TEST(ApiServerUrl, InCluster) {
  const char* oldHost = std::getenv("KUBERNETES_SERVICE_HOST");
  const char* oldPort = std::getenv("KUBERNETES_SERVICE_PORT");
  std::string savedHost = oldHost ? oldHost : "", savedPort = oldPort ? oldPort : "";
  ::unsetenv("KUBERNETES_SERVICE_HOST");
  EXPECT_FALSE(inClusterApiServer());
  ::setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1", 1);
  ::setenv("KUBERNETES_SERVICE_PORT", "443", 1);
  EXPECT_EQ(inClusterApiServer().value(), "https://10.96.0.1:443");
  ::setenv("KUBERNETES_SERVICE_HOST", "fd00:10:96::1", 1);
  ::unsetenv("KUBERNETES_SERVICE_PORT");
  EXPECT_EQ(inClusterApiServer().value(), "https://[fd00:10:96::1]:443");
  if (oldHost) {
    ::setenv("KUBERNETES_SERVICE_HOST", savedHost.c_str(), 1);
  } else {
    ::unsetenv("KUBERNETES_SERVICE_HOST");
  }
  if (oldPort) {
    ::setenv("KUBERNETES_SERVICE_PORT", savedPort.c_str(), 1);
  } else {
    ::unsetenv("KUBERNETES_SERVICE_PORT");
  }
}

TEST(TokenFile, Reads) {
  TempDir t;
  EXPECT_EQ(readTokenFile(t.write("tok", "eyJhbGciOi.abc.def\n")).value(), "eyJhbGciOi.abc.def");
  EXPECT_FALSE(readTokenFile(t.write("empty", " \n")));
  EXPECT_FALSE(readTokenFile(t.write("inject", "abc\r\nX-Evil: 1")));
  auto missing = readTokenFile(t.path() + "/nope");
  ASSERT_FALSE(missing);
  EXPECT_NE(missing.error().message.find("nope"), std::string::npos);
}

TEST(UrlEncode, Reserved) {
  EXPECT_EQ(urlEncode("a-b_c.d~e"), "a-b_c.d~e");
  EXPECT_EQ(urlEncode("k=v,!x /"), "k%3Dv%2C%21x%20%2F");
}
