#pragma once
// Container discovery, the pure parts: what a container of a local Podman or
// Docker engine is to atlasgate (an agent named "container/<name>"), the
// engine's JSON (list, inspect, events), and where a container's cgroup is.
// The engine's bytes are untrusted: every field is checked and bounded here.
// The network side is container_watcher.h.

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "discovery/pods.h"
#include "labels/labels.h"

namespace atlasgate::discovery {

// Bounds on what the engine may send.
struct EngineLimits {
  std::size_t maxResponseBytes = 8u << 20;  // a list or inspect body
  std::size_t maxEventLineBytes = 256u << 10;
  std::size_t maxContainers = 4096;  // labelled containers known at once
  std::size_t maxListed = 16384;     // entries in one list answer, stopped ones included
  std::size_t maxLabels = 256;       // per container
  std::size_t maxLabelKeyBytes = 512;
  std::size_t maxLabelValueBytes = 4096;
  std::size_t maxNameBytes = 253;
};

struct ContainerInfo {
  std::string id;         // 64 lower-case hex digits
  std::string name;       // without the engine's leading '/'
  Labels labels;          // Config.Labels
  bool running = false;   // State.Running (and a pid)
  std::int64_t pid = 0;   // State.Pid: the container's first process, in the engine's pid namespace
  std::string startedAt;  // State.StartedAt: changes when the container is restarted
  // Set only on what onDelete receives: the engine removed the container or
  // it stopped being ours (label), rather than only stopping (a stopped
  // container may start again at the same cgroup path).
  bool removed = false;

  // The agent name used by rules and audit.
  std::string agentName() const { return "container/" + name; }
  bool operator==(const ContainerInfo&) const = default;
};

// A container id: exactly 64 hex digits (lower case; upper case is folded).
std::optional<std::string> normalizeContainerId(std::string_view id);
// The engine's container name rule: [A-Za-z0-9][A-Za-z0-9_.-]*, at most
// maxNameBytes. One leading '/' (as the engine sends it) is dropped first.
Result<std::string> containerName(std::string_view raw, const EngineLimits& limits = {});

// GET /containers/<id>/json (docker inspect). Needs Id and Name; labels are
// checked against the limits. Errors name the field.
Result<ContainerInfo> parseContainerInspect(std::string_view body, const EngineLimits& limits = {});

// One entry of GET /containers/json?all=true.
struct ListedContainer {
  std::string id;        // normalised
  bool running = false;  // State "running", or no State at all (inspect decides)
  bool operator==(const ListedContainer&) const = default;
};

// GET /containers/json?all=true: every container the engine still has, each
// once, running or not (a container absent from the list was removed). More
// than maxListed entries, or any entry without a valid Id, is an error: an
// engine never sends them.
Result<std::vector<ListedContainer>> parseContainerList(std::string_view body, const EngineLimits& limits = {});

struct EngineEvent {
  std::string type;    // "container", "image", ...
  std::string action;  // "start", "die", "destroy", ... (Docker's "exec_start: sh" is cut at ':')
  std::string id;      // Actor.ID (or id), normalised; "" when the event names none
  // The container is gone for good: forget it without asking the engine.
  bool removal() const { return type == "container" && (action == "destroy" || action == "remove"); }
  // The container's running state, name or pid may have changed: inspect it.
  bool relevant() const;
};

// One line of the events stream: {"Type":"container","Action":"start","Actor":{"ID":...}}.
Result<EngineEvent> parseEngineEvent(std::string_view line);

// Request targets. `label` is the filter's canonical text ("key" or "key=value").
std::string containersListTarget(std::string_view label);
std::string containerInspectTarget(std::string_view id);  // id: normalised
std::string engineEventsTarget(std::string_view label);

// --- cgroups ---------------------------------------------------------------------

// The container's cgroup from the text of /proc/<pid>/cgroup: the cgroup2
// line ("0::/path"), cut after the shallowest component that holds the
// container's id (libpod-<id>, docker-<id>.scope, /docker/<id>, crio-<id>.scope):
// processes of the container may sit in child cgroups of it, which they may
// make and name themselves (a deeper component naming the id is theirs). A path without
// the id is refused (a pid that is no longer the container's, or an engine
// pointing at someone else's process), as are "..", "." and control
// characters. Returns the path relative to the cgroup2 mount, no leading '/'.
Result<std::string> containerCgroupFromProc(std::string_view procCgroup, std::string_view id);

// The absolute path of the cgroup of a running container: reads
// <procRoot>/<pid>/cgroup (bounded) and checks that the result is a directory
// under `cgroupMount`.
Result<std::string> findContainerCgroup(const std::string& cgroupMount, const ContainerInfo& c,
                                        const std::string& procRoot = "/proc");

// --- keeping a set of containers ---------------------------------------------------

// Between what was known (by id) and a fresh list with each container
// inspected: containers that are gone or no longer running (deletes, as last
// known) and those that are new or changed (upserts). Deletes come first.
struct ContainerSetDiff {
  std::vector<ContainerInfo> deletes;
  std::vector<ContainerInfo> upserts;
};
ContainerSetDiff diffContainers(const std::map<std::string, ContainerInfo>& knownById,
                                const std::vector<ContainerInfo>& listed);

}  // namespace atlasgate::discovery
