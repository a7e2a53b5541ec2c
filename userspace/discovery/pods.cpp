#include "discovery/pods.h"

#include <sys/stat.h>

#include <algorithm>
#include <deque>
#include <filesystem>
#include <set>
#include <system_error>

#include <boost/json.hpp>

#include "discovery/json_fields.h"

namespace atlasgate::discovery {

namespace json = boost::json;

namespace {

using jsonf::objectAt;
using jsonf::stringAt;

bool isAlnum(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'); }

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return out;
}

bool isDir(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool validUid(std::string_view uid) {
  if (uid.empty() || uid.size() > 128) return false;
  return std::all_of(uid.begin(), uid.end(), [](char c) { return isAlnum(c) || c == '-'; });
}

std::int64_t intAt(const json::object& o, std::string_view key) {
  auto it = o.find(key);
  if (it == o.end()) return 0;
  if (const auto* i = it->value().if_int64()) return *i;
  if (const auto* u = it->value().if_uint64()) return static_cast<std::int64_t>(*u);
  if (const auto* d = it->value().if_double()) return static_cast<std::int64_t>(*d);
  return 0;
}

}  // namespace

Result<PodInfo> parsePod(const json::value& v) {
  const json::object* pod = v.if_object();
  if (pod == nullptr) return makeError("pod: not a JSON object");
  const json::object* meta = objectAt(*pod, "metadata");
  if (meta == nullptr) return makeError("pod: no metadata");
  PodInfo p;
  if (!stringAt(*meta, "name", p.name) || p.name.empty()) return makeError("pod: no metadata.name");
  if (!stringAt(*meta, "namespace", p.ns)) return makeError("pod {}: metadata.namespace is not a string", p.name);
  if (!stringAt(*meta, "uid", p.uid) || p.uid.empty()) return makeError("pod {}/{}: no metadata.uid", p.ns, p.name);
  if (!validUid(p.uid)) return makeError("pod {}/{}: metadata.uid {:?} is not a UID", p.ns, p.name, p.uid);
  if (!stringAt(*meta, "resourceVersion", p.resourceVersion))
    return makeError("pod {}/{}: metadata.resourceVersion is not a string", p.ns, p.name);
  auto del = meta->find("deletionTimestamp");
  p.deleted = del != meta->end() && !del->value().is_null();
  if (auto it = meta->find("labels"); it != meta->end() && !it->value().is_null()) {
    const json::object* labels = it->value().if_object();
    if (labels == nullptr) return makeError("pod {}/{}: metadata.labels is not an object", p.ns, p.name);
    for (const auto& kv : *labels) {
      const json::string* s = kv.value().if_string();
      if (s == nullptr) return makeError("pod {}/{}: label {} is not a string", p.ns, p.name, std::string(kv.key()));
      p.labels.emplace(std::string(kv.key()), std::string(s->data(), s->size()));
    }
  }
  if (const json::object* spec = objectAt(*pod, "spec"))
    if (!stringAt(*spec, "nodeName", p.nodeName))
      return makeError("pod {}/{}: spec.nodeName is not a string", p.ns, p.name);
  if (const json::object* status = objectAt(*pod, "status")) {
    if (!stringAt(*status, "phase", p.phase)) return makeError("pod {}/{}: status.phase is not a string", p.ns, p.name);
    if (!stringAt(*status, "qosClass", p.qosClass))
      return makeError("pod {}/{}: status.qosClass is not a string", p.ns, p.name);
  }
  return p;
}

// --- cgroups -------------------------------------------------------------------

std::vector<std::string> podCgroupCandidates(std::string_view uid, std::string_view qosClass) {
  std::string u(uid);
  std::string us = u;
  std::replace(us.begin(), us.end(), '-', '_');
  auto forClass = [&](const std::string& qos, std::vector<std::string>& out) {
    if (qos == "guaranteed") {
      out.push_back("kubepods.slice/kubepods-pod" + us + ".slice");
      out.push_back("kubepods/pod" + u);
    } else {
      out.push_back("kubepods.slice/kubepods-" + qos + ".slice/kubepods-" + qos + "-pod" + us + ".slice");
      out.push_back("kubepods/" + qos + "/pod" + u);
    }
  };
  const std::string want = lower(qosClass);
  std::vector<std::string> out;
  const char* all[] = {"burstable", "besteffort", "guaranteed"};
  if (std::find(std::begin(all), std::end(all), want) != std::end(all)) forClass(want, out);
  for (const char* q : all)
    if (want != q) forClass(q, out);
  return out;
}

bool isPodCgroupName(std::string_view dirName, std::string_view uid) {
  if (uid.empty()) return false;
  std::string u(uid);
  if (dirName == "pod" + u) return true;  // cgroupfs
  std::string us = u;
  std::replace(us.begin(), us.end(), '-', '_');
  const std::string tail = "-pod" + us + ".slice";  // systemd: <parent slice name>-pod<uid_>.slice
  return dirName.size() > tail.size() && dirName.substr(dirName.size() - tail.size()) == tail &&
         dirName.find("kubepods") != std::string_view::npos;
}

Result<std::string> findPodCgroup(const std::string& cgroupRoot, const PodInfo& pod) {
  if (!validUid(pod.uid)) return makeError("pod {}: no valid uid", pod.agentName());
  std::string root = cgroupRoot;
  while (root.size() > 1 && root.back() == '/') root.pop_back();
  for (const std::string& rel : podCgroupCandidates(pod.uid, pod.qosClass)) {
    std::string p = root + "/" + rel;
    if (isDir(p)) return p;
  }
  // Kubelets with a --cgroup-root of their own (kind, k3s, nested nodes) put
  // kubepods deeper: search the directories named after the kubelet only.
  namespace fs = std::filesystem;
  constexpr int kMaxDepth = 6;
  constexpr size_t kMaxVisited = 20000;
  std::deque<std::pair<fs::path, int>> queue{{fs::path(root), 0}};
  size_t visited = 0;
  while (!queue.empty() && visited < kMaxVisited) {
    auto [dir, depth] = queue.front();
    queue.pop_front();
    std::error_code ec;
    for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
      if (++visited > kMaxVisited) break;
      std::error_code tec;
      if (!it->is_directory(tec) || it->is_symlink(tec)) continue;
      const std::string name = it->path().filename().string();
      if (isPodCgroupName(name, pod.uid)) return it->path().string();
      if (depth + 1 < kMaxDepth &&
          (name.find("kubepods") != std::string::npos || name.find("kubelet") != std::string::npos ||
           name == "burstable" || name == "besteffort"))
        queue.emplace_back(it->path(), depth + 1);
    }
  }
  return makeError(
      "pod {} (uid {}): no cgroup under {} (looked for {} and below kubepods*/kubelet*): not started yet, "
      "or the host's cgroup2 tree is not mounted there",
      pod.agentName(), pod.uid, root, podCgroupCandidates(pod.uid, pod.qosClass).front());
}

// --- payloads -------------------------------------------------------------------

Result<PodList> parsePodList(std::string_view body) {
  std::error_code ec;
  json::value v = json::parse(body, ec);
  if (ec) return makeError("pod list: invalid JSON: {}", ec.message());
  const json::object* o = v.if_object();
  if (o == nullptr) return makeError("pod list: not a JSON object");
  std::string kind;
  if (!stringAt(*o, "kind", kind) || (!kind.empty() && kind != "PodList"))
    return makeError("pod list: kind is {:?}, not PodList", kind);
  PodList list;
  if (const json::object* meta = objectAt(*o, "metadata")) {
    if (!stringAt(*meta, "resourceVersion", list.resourceVersion))
      return makeError("pod list: metadata.resourceVersion is not a string");
    if (!stringAt(*meta, "continue", list.continueToken))
      return makeError("pod list: metadata.continue is not a string");
  }
  if (auto it = o->find("items"); it != o->end() && !it->value().is_null()) {
    const json::array* items = it->value().if_array();
    if (items == nullptr) return makeError("pod list: items is not an array");
    list.pods.reserve(items->size());
    for (size_t i = 0; i < items->size(); ++i) {
      auto p = parsePod((*items)[i]);
      if (!p) return makeError("pod list: item {}: {}", i, p.error().message);
      list.pods.push_back(std::move(*p));
    }
  }
  return list;
}

std::string_view watchEventTypeName(WatchEventType t) {
  switch (t) {
    case WatchEventType::Added: return "ADDED";
    case WatchEventType::Modified: return "MODIFIED";
    case WatchEventType::Deleted: return "DELETED";
    case WatchEventType::Bookmark: return "BOOKMARK";
    case WatchEventType::Error: return "ERROR";
  }
  return "?";
}

Result<WatchEvent> parseWatchEvent(std::string_view line) {
  std::error_code ec;
  json::value v = json::parse(line, ec);
  if (ec) return makeError("watch event: invalid JSON: {}", ec.message());
  const json::object* o = v.if_object();
  if (o == nullptr) return makeError("watch event: not a JSON object");
  std::string type;
  if (!stringAt(*o, "type", type) || type.empty()) return makeError("watch event: no type");
  const json::object* obj = objectAt(*o, "object");
  if (obj == nullptr) return makeError("watch event {}: no object", type);
  WatchEvent e;
  if (type == "ADDED")
    e.type = WatchEventType::Added;
  else if (type == "MODIFIED")
    e.type = WatchEventType::Modified;
  else if (type == "DELETED")
    e.type = WatchEventType::Deleted;
  else if (type == "BOOKMARK")
    e.type = WatchEventType::Bookmark;
  else if (type == "ERROR")
    e.type = WatchEventType::Error;
  else
    return makeError("watch event: unknown type {:?}", type);

  if (e.type == WatchEventType::Error) {
    e.code = static_cast<int>(intAt(*obj, "code"));
    (void)stringAt(*obj, "reason", e.reason);
    (void)stringAt(*obj, "message", e.message);
    return e;
  }
  if (e.type == WatchEventType::Bookmark) {
    const json::object* meta = objectAt(*obj, "metadata");
    if (meta == nullptr || !stringAt(*meta, "resourceVersion", e.resourceVersion) || e.resourceVersion.empty())
      return makeError("watch event BOOKMARK: no metadata.resourceVersion");
    return e;
  }
  auto pod = parsePod(*o->if_contains("object"));
  if (!pod) return makeError("watch event {}: {}", type, pod.error().message);
  e.resourceVersion = pod->resourceVersion;
  e.pod = std::move(*pod);
  return e;
}

std::string describeStatusBody(std::string_view body) {
  std::error_code ec;
  json::value v = json::parse(body, ec);
  if (!ec) {
    if (const json::object* o = v.if_object()) {
      std::string reason, message;
      (void)stringAt(*o, "reason", reason);
      (void)stringAt(*o, "message", message);
      const std::int64_t code = intAt(*o, "code");
      if (!reason.empty() || !message.empty()) {
        std::string out = reason.empty() || reason == message ? message
                          : message.empty()                   ? reason
                                                              : reason + ": " + message;
        if (code != 0) out += fmt::format(" ({})", code);
        return out;
      }
    }
  }
  std::string out(body.substr(0, 200));
  for (char& c : out)
    if (c == '\n' || c == '\r' || static_cast<unsigned char>(c) < 0x20) c = ' ';
  if (body.size() > 200) out += "...";
  return out.empty() ? "(empty body)" : out;
}

PodSetDiff diffPods(const std::map<std::string, PodInfo>& knownByUid, const std::vector<PodInfo>& listed) {
  PodSetDiff d;
  std::map<std::string, const PodInfo*> live;
  for (const PodInfo& p : listed)
    if (!p.terminated()) live.emplace(p.uid, &p);
  for (const auto& [uid, p] : knownByUid)
    if (!live.contains(uid)) d.deletes.push_back(p);
  for (const auto& [uid, p] : live) {
    auto it = knownByUid.find(uid);
    if (it == knownByUid.end() || it->second.resourceVersion != p->resourceVersion) d.upserts.push_back(*p);
  }
  return d;
}

std::string urlEncode(std::string_view s) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(s.size() * 3);
  for (unsigned char c : s) {
    if (isAlnum(static_cast<char>(c)) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

namespace {
std::string podsQuery(std::string_view labelSelector, std::string_view nodeName) {
  std::string t = "/api/v1/pods";
  char sep = '?';
  if (!labelSelector.empty()) {
    t += sep;
    t += "labelSelector=" + urlEncode(labelSelector);
    sep = '&';
  }
  if (!nodeName.empty()) {
    t += sep;
    t += "fieldSelector=" + urlEncode("spec.nodeName=" + std::string(nodeName));
    sep = '&';
  }
  t += sep;
  return t;
}
}  // namespace

std::string podsListTarget(std::string_view labelSelector, std::string_view nodeName, std::uint32_t limit,
                           std::string_view continueToken, ListFreshness freshness, std::string_view resourceVersion) {
  std::string t = podsQuery(labelSelector, nodeName) + fmt::format("limit={}", limit);
  if (!continueToken.empty()) {
    t += "&continue=" + urlEncode(continueToken);
  } else if (freshness == ListFreshness::Any) {
    t += "&resourceVersion=0";
  } else if (freshness == ListFreshness::NotOlderThan && !resourceVersion.empty()) {
    t += "&resourceVersion=" + urlEncode(resourceVersion) + "&resourceVersionMatch=NotOlderThan";
  }
  return t;
}

std::string podsWatchTarget(std::string_view labelSelector, std::string_view nodeName, std::string_view resourceVersion,
                            std::uint32_t timeoutSeconds) {
  std::string t = podsQuery(labelSelector, nodeName) + "watch=1";
  if (!resourceVersion.empty()) t += "&resourceVersion=" + urlEncode(resourceVersion);
  t += fmt::format("&allowWatchBookmarks=true&timeoutSeconds={}", timeoutSeconds);
  return t;
}

}  // namespace atlasgate::discovery
