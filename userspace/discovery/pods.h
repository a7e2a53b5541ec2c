#pragma once
// Kubernetes pod discovery, the pure parts (no I/O except findPodCgroup,
// which only stats directories): what a pod is to atlasgate, label
// selectors, where a pod's cgroup lives, and the API server's list and watch
// payloads. The network side is watcher.h; label selectors are labels/.
//
//   auto sel = discovery::LabelSelector::parse("atlasgate.io/inject=true").value();
//   auto pod = discovery::parsePod(json).value();
//   if (sel.matches(pod.labels)) {
//     auto cg = discovery::findPodCgroup("/sys/fs/cgroup", pod);   // absolute path
//     ... attach *cg, agent name pod.agentName() ("namespace/name")
//   }

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <boost/json/fwd.hpp>

#include "common/result.h"
#include "labels/labels.h"

namespace atlasgate::discovery {

// Label maps and selectors live in labels/ (atlasgate::labels); discovery
// code and its callers keep naming them discovery::...
using labels::LabelRequirement;
using labels::Labels;
using labels::LabelSelector;
using labels::parseContainerLabelFilter;

struct PodInfo {
  std::string ns;               // metadata.namespace
  std::string name;             // metadata.name
  std::string uid;              // metadata.uid (a UUID, with dashes)
  std::string resourceVersion;  // metadata.resourceVersion
  std::string nodeName;         // spec.nodeName ("" while unscheduled)
  Labels labels;                // metadata.labels
  std::string phase;            // status.phase: Pending|Running|Succeeded|Failed|Unknown ("" when absent)
  std::string qosClass;         // status.qosClass: Guaranteed|Burstable|BestEffort ("" when absent)
  bool deleted = false;         // metadata.deletionTimestamp is set (terminating; still running)

  // The agent name used by rules and audit: "namespace/name".
  std::string agentName() const { return ns + "/" + name; }
  // Succeeded or Failed: every container has exited, the cgroup is gone.
  bool terminated() const { return phase == "Succeeded" || phase == "Failed"; }
};

// A Pod object (the JSON the API server sends). Needs metadata.name and
// metadata.uid; everything else is optional. Errors name the missing field.
Result<PodInfo> parsePod(const boost::json::value& pod);

// --- cgroups -------------------------------------------------------------------

// Where the kubelet puts a pod's cgroup, below the cgroup2 mount, for both
// cgroup drivers (relative paths, most likely first). `qosClass` is the pod's
// status.qosClass; when it is empty or unknown every class is listed.
//   systemd:  kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid, - → _>.slice
//             kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid_>.slice
//             kubepods.slice/kubepods-pod<uid_>.slice                      (Guaranteed)
//   cgroupfs: kubepods/burstable/pod<uid>, kubepods/besteffort/pod<uid>,
//             kubepods/pod<uid>                                            (Guaranteed)
std::vector<std::string> podCgroupCandidates(std::string_view uid, std::string_view qosClass);

// True when a cgroup directory name is the pod cgroup of `uid` under either
// driver ("pod<uid>" or "kubepods[-<qos>]-pod<uid_>.slice").
bool isPodCgroupName(std::string_view dirName, std::string_view uid);

// The absolute path of the pod's cgroup under `cgroupRoot` (the cgroup2
// mount): the first candidate that is a directory; failing that, a bounded
// search of the kubepods/kubelet sub-trees (kubelets run with a custom
// --cgroup-root, kind, k3s). Error when the pod has no cgroup (yet): a pod
// still Pending gets one when its sandbox starts, so retry on the next update.
Result<std::string> findPodCgroup(const std::string& cgroupRoot, const PodInfo& pod);

// --- list and watch payloads ---------------------------------------------------

struct PodList {
  std::string resourceVersion;  // metadata.resourceVersion: start the watch here
  std::string continueToken;    // metadata.continue: more pages to fetch ("" = last page)
  std::vector<PodInfo> pods;
};

// The body of GET /api/v1/pods (a PodList). Items that fail parsePod make
// the whole list an error: the API server never sends them.
Result<PodList> parsePodList(std::string_view body);

enum class WatchEventType { Added, Modified, Deleted, Bookmark, Error };
std::string_view watchEventTypeName(WatchEventType t);

struct WatchEvent {
  WatchEventType type = WatchEventType::Error;
  std::optional<PodInfo> pod;   // Added, Modified, Deleted
  std::string resourceVersion;  // the object's; Bookmark: the only field that matters
  int code = 0;                 // Error: the Status' code (410 = our resourceVersion is too old)
  std::string reason;           // Error: Status.reason ("Expired", "Gone", ...)
  std::string message;          // Error: Status.message

  // Our resourceVersion is gone from the server's history: relist.
  bool gone() const {
    return type == WatchEventType::Error && (code == 410 || reason == "Expired" || reason == "Gone");
  }
};

// One line of a watch stream: {"type":"ADDED","object":{...}}.
Result<WatchEvent> parseWatchEvent(std::string_view line);

// A metav1.Status body (what non-2xx answers carry): "reason: message (code)",
// or the first 200 bytes of the body when it is not a Status.
std::string describeStatusBody(std::string_view body);

// --- keeping a set of pods -------------------------------------------------

// What changed between what we knew (by uid) and a fresh list: pods that
// vanished (in `deletes`, as last known) and pods that are new or whose
// resourceVersion moved (in `upserts`). A listed pod that has terminated
// (Succeeded/Failed) counts as absent. Deletes come first so that a pod
// recreated under the same name is detached before its successor attaches.
struct PodSetDiff {
  std::vector<PodInfo> deletes;
  std::vector<PodInfo> upserts;
};
PodSetDiff diffPods(const std::map<std::string, PodInfo>& knownByUid, const std::vector<PodInfo>& listed);

// Percent-encodes a query parameter value (RFC 3986 unreserved left as is).
std::string urlEncode(std::string_view s);

// How fresh a list must be (the resourceVersion / resourceVersionMatch
// parameters). Any ("resourceVersion=0") and NotOlderThan are served from the
// API server's watch cache, so a DaemonSet's pods starting at once do not
// all hit etcd; Consistent ("" ) is a quorum read.
enum class ListFreshness { Any, NotOlderThan, Consistent };

// The request targets of the pod list and watch, filtered server-side by the
// label selector (canonical text; "" = none) and by spec.nodeName ("" = every
// node):
//   /api/v1/pods?labelSelector=...&fieldSelector=spec.nodeName%3D<node>&limit=N
//       [&resourceVersion=0 | &resourceVersion=RV&resourceVersionMatch=NotOlderThan | &continue=T]
//   /api/v1/pods?labelSelector=...&fieldSelector=...&watch=1&resourceVersion=RV
//       &allowWatchBookmarks=true&timeoutSeconds=S
// A continuation (continueToken) carries its own resourceVersion, so the
// freshness parameters are left out then; NotOlderThan without a
// resourceVersion falls back to Consistent.
std::string podsListTarget(std::string_view labelSelector, std::string_view nodeName, std::uint32_t limit,
                           std::string_view continueToken, ListFreshness freshness = ListFreshness::Consistent,
                           std::string_view resourceVersion = {});
std::string podsWatchTarget(std::string_view labelSelector, std::string_view nodeName, std::string_view resourceVersion,
                            std::uint32_t timeoutSeconds);

}  // namespace atlasgate::discovery
