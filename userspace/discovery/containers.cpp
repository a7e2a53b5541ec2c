#include "discovery/containers.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <set>

#include <boost/json.hpp>

#include "discovery/json_fields.h"

namespace atlasgate::discovery {

namespace json = boost::json;

// --- parsing ---------------------------------------------------------------------

namespace {

using jsonf::objectAt;
using jsonf::stringAt;

// The text of untrusted bytes for a log line or an error: at most 80 bytes,
// control characters and non-ASCII shown as escapes.
std::string shown(std::string_view s) {
  std::string out;
  for (std::size_t i = 0; i < s.size() && i < 80; ++i) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c >= 0x7f || c == '"' || c == '\\')
      out += fmt::format("\\x{:02x}", c);
    else
      out += static_cast<char>(c);
  }
  if (s.size() > 80) out += "...";
  return "\"" + out + "\"";
}

bool nameChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-';
}

bool hasControl(std::string_view s) {
  return std::any_of(s.begin(), s.end(), [](char c) {
    auto u = static_cast<unsigned char>(c);
    return u < 0x20 || u == 0x7f;
  });
}

Result<Labels> parseLabels(const json::value* v, const EngineLimits& limits) {
  Labels out;
  if (v == nullptr || v->is_null()) return out;
  const json::object* o = v->if_object();
  if (o == nullptr) return makeError("labels are not a JSON object");
  if (o->size() > limits.maxLabels) return makeError("{} labels, more than {}", o->size(), limits.maxLabels);
  for (const auto& kv : *o) {
    std::string_view key = kv.key();
    const json::string* value = kv.value().if_string();
    if (value == nullptr) return makeError("label {} is not a string", shown(key));
    if (key.empty() || key.size() > limits.maxLabelKeyBytes || hasControl(key))
      return makeError("label key {} is empty, too long or holds control characters", shown(key));
    if (value->size() > limits.maxLabelValueBytes || hasControl(*value))
      return makeError("label {}: value too long or holds control characters", shown(key));
    out.emplace(std::string(key), std::string(value->data(), value->size()));
  }
  return out;
}

// State.Pid is a pid: Linux caps pid_max at 2^22.
constexpr std::int64_t kMaxPid = 1 << 22;

}  // namespace

std::optional<std::string> normalizeContainerId(std::string_view id) {
  if (id.size() != 64) return std::nullopt;
  std::string out(id);
  for (char& c : out) {
    if (c >= 'A' && c <= 'F') c = static_cast<char>(c - 'A' + 'a');
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return std::nullopt;
  }
  return out;
}

Result<std::string> containerName(std::string_view raw, const EngineLimits& limits) {
  std::string_view n = raw;
  if (!n.empty() && n.front() == '/') n.remove_prefix(1);
  if (n.empty()) return makeError("empty container name");
  if (n.size() > limits.maxNameBytes) return makeError("container name longer than {} bytes", limits.maxNameBytes);
  const bool alnumFirst = nameChar(n.front()) && n.front() != '_' && n.front() != '.' && n.front() != '-';
  if (!alnumFirst || !std::all_of(n.begin(), n.end(), nameChar))
    return makeError("container name {} is not [A-Za-z0-9][A-Za-z0-9_.-]*", shown(raw));
  return std::string(n);
}

Result<ContainerInfo> parseContainerInspect(std::string_view body, const EngineLimits& limits) {
  if (body.size() > limits.maxResponseBytes) return makeError("container inspect: {} bytes, too large", body.size());
  std::error_code ec;
  json::value v = json::parse(body, ec);
  if (ec) return makeError("container inspect: invalid JSON: {}", ec.message());
  const json::object* o = v.if_object();
  if (o == nullptr) return makeError("container inspect: not a JSON object");
  ContainerInfo c;
  std::string text;
  if (!stringAt(*o, "Id", text)) return makeError("container inspect: Id is not a string");
  auto id = normalizeContainerId(text);
  if (!id) return makeError("container inspect: Id {} is not 64 hex digits", shown(text));
  c.id = *id;
  if (!stringAt(*o, "Name", text)) return makeError("container {}: Name is not a string", c.id.substr(0, 12));
  auto name = containerName(text, limits);
  if (!name) return makeError("container {}: {}", c.id.substr(0, 12), name.error().message);
  c.name = *name;
  if (const json::object* cfg = objectAt(*o, "Config")) {
    auto labels = parseLabels(cfg->if_contains("Labels"), limits);
    if (!labels) return makeError("container {}: {}", c.name, labels.error().message);
    c.labels = std::move(*labels);
  }
  if (const json::object* st = objectAt(*o, "State")) {
    const json::value* running = st->if_contains("Running");
    const json::value* pid = st->if_contains("Pid");
    std::int64_t p = 0;
    if (pid != nullptr) {
      if (const auto* i = pid->if_int64())
        p = *i;
      else if (const auto* u = pid->if_uint64())
        p = *u > static_cast<std::uint64_t>(kMaxPid) ? -1 : static_cast<std::int64_t>(*u);
      else if (!pid->is_null())
        return makeError("container {}: State.Pid is not an integer", c.name);
    }
    if (p < 0 || p > kMaxPid) return makeError("container {}: State.Pid {} is out of range", c.name, p);
    c.running = running != nullptr && running->is_bool() && running->get_bool() && p > 0;
    c.pid = c.running ? p : 0;
    if (!stringAt(*st, "StartedAt", c.startedAt) || c.startedAt.size() > 64 || hasControl(c.startedAt))
      return makeError("container {}: State.StartedAt is not a short string", c.name);
  }
  return c;
}

Result<std::vector<ListedContainer>> parseContainerList(std::string_view body, const EngineLimits& limits) {
  if (body.size() > limits.maxResponseBytes) return makeError("container list: {} bytes, too large", body.size());
  std::error_code ec;
  json::value v = json::parse(body, ec);
  if (ec) return makeError("container list: invalid JSON: {}", ec.message());
  const json::array* a = v.if_array();
  if (a == nullptr) return makeError("container list: not a JSON array");
  if (a->size() > limits.maxListed)
    return makeError("container list: {} containers, more than {}", a->size(), limits.maxListed);
  std::vector<ListedContainer> listed;
  std::set<std::string> seen;
  for (std::size_t i = 0; i < a->size(); ++i) {
    const json::object* o = (*a)[i].if_object();
    if (o == nullptr) return makeError("container list: item {} is not an object", i);
    std::string text, state;
    if (!stringAt(*o, "Id", text)) return makeError("container list: item {}: Id is not a string", i);
    auto id = normalizeContainerId(text);
    if (!id) return makeError("container list: item {}: Id {} is not 64 hex digits", i, shown(text));
    if (!stringAt(*o, "State", state)) return makeError("container list: item {}: State is not a string", i);
    if (seen.insert(*id).second) listed.push_back({*id, state.empty() || state == "running"});
  }
  return listed;
}

bool EngineEvent::relevant() const {
  static const std::set<std::string, std::less<>> kActions = {"start",  "restart", "die",    "died",    "stop",
                                                              "kill",   "oom",     "rename", "cleanup", "init",
                                                              "update", "pause",   "unpause"};
  return type == "container" && kActions.contains(action);
}

Result<EngineEvent> parseEngineEvent(std::string_view line) {
  std::error_code ec;
  json::value v = json::parse(line, ec);
  if (ec) return makeError("engine event: invalid JSON: {}", ec.message());
  const json::object* o = v.if_object();
  if (o == nullptr) return makeError("engine event: not a JSON object");
  EngineEvent e;
  std::string id;
  if (!stringAt(*o, "Type", e.type) || !stringAt(*o, "Action", e.action))
    return makeError("engine event: Type or Action is not a string");
  // Before API 1.22 an event had only status and id (containers only).
  if (e.action.empty() && !stringAt(*o, "status", e.action)) return makeError("engine event: status is not a string");
  if (e.type.empty()) e.type = "container";
  if (e.action.empty()) return makeError("engine event: no Action");
  if (auto colon = e.action.find(':'); colon != std::string::npos) e.action.resize(colon);
  if (const json::object* actor = objectAt(*o, "Actor"))
    if (!stringAt(*actor, "ID", id)) return makeError("engine event: Actor.ID is not a string");
  if (id.empty() && !stringAt(*o, "id", id)) return makeError("engine event: id is not a string");
  if (e.type == "container") {
    auto norm = normalizeContainerId(id);
    if (!norm) return makeError("engine event {}: container id {} is not 64 hex digits", shown(e.action), shown(id));
    e.id = *norm;
  }
  return e;
}

namespace {

std::string filtersQuery(const json::object& filters) { return "filters=" + urlEncode(json::serialize(filters)); }

}  // namespace

std::string containersListTarget(std::string_view label) {
  return "/v1.41/containers/json?all=true&" + filtersQuery({{"label", json::array{json::string(label)}}});
}

std::string containerInspectTarget(std::string_view id) { return fmt::format("/v1.41/containers/{}/json", id); }

std::string engineEventsTarget(std::string_view label) {
  return "/v1.41/events?" +
         filtersQuery({{"type", json::array{"container"}}, {"label", json::array{json::string(label)}}});
}

// --- cgroups ---------------------------------------------------------------------

Result<std::string> containerCgroupFromProc(std::string_view text, std::string_view id) {
  if (id.size() != 64) return makeError("bad container id");
  std::string_view path;
  bool found = false;
  while (!text.empty()) {
    std::size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text = nl == std::string_view::npos ? std::string_view() : text.substr(nl + 1);
    if (line.substr(0, 3) == "0::") {
      path = line.substr(3);
      found = true;
      break;
    }
  }
  if (!found) return makeError("no cgroup v2 entry (\"0::\") for the container's process");
  if (path.size() > 4096 || path.empty() || path.front() != '/' || hasControl(path))
    return makeError("cgroup path {} is not an absolute cgroup v2 path", shown(path));
  std::vector<std::string_view> parts;
  for (std::size_t start = 1; start <= path.size();) {
    std::size_t slash = path.find('/', start);
    std::string_view part =
        path.substr(start, slash == std::string_view::npos ? std::string_view::npos : slash - start);
    if (part.empty() || part == "." || part == "..") {
      if (part.empty() && slash == std::string_view::npos) break;  // a trailing '/'
      return makeError("cgroup path {} has an empty, '.' or '..' component", shown(path));
    }
    parts.push_back(part);
    if (slash == std::string_view::npos) break;
    start = slash + 1;
  }
  // The shallowest component that names the container: the one the engine
  // made. The container's own processes may make (and move into) cgroups
  // below it, named as they like; they cannot make one above it.
  std::size_t cut = 0;
  for (std::size_t i = 0; i < parts.size() && cut == 0; ++i)
    if (parts[i].find(id) != std::string_view::npos) cut = i + 1;
  if (cut == 0)
    return makeError("cgroup {} does not name the container {} (not its process any more?)", shown(path),
                     id.substr(0, 12));
  std::string out;
  for (std::size_t i = 0; i < cut; ++i) out += (i ? "/" : "") + std::string(parts[i]);
  return out;
}

Result<std::string> findContainerCgroup(const std::string& cgroupMount, const ContainerInfo& c,
                                        const std::string& procRoot) {
  if (!c.running || c.pid <= 0) return makeError("container {} is not running", c.name);
  const std::string file = fmt::format("{}/{}/cgroup", procRoot, c.pid);
  int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return sysError(errno, "container {}: read {}", c.name, file);
  std::string text(65536, '\0');
  std::size_t got = 0;
  for (;;) {
    ssize_t n = ::read(fd, text.data() + got, text.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += static_cast<std::size_t>(n);
    if (got == text.size()) break;
  }
  ::close(fd);
  text.resize(got);
  auto rel = containerCgroupFromProc(text, c.id);
  if (!rel) return makeError("container {}: {}", c.name, rel.error().message);
  std::string abs = cgroupMount + "/" + *rel;
  struct stat st {};
  if (::stat(abs.c_str(), &st) != 0) return sysError(errno, "container {}: cgroup {}", c.name, abs);
  if (!S_ISDIR(st.st_mode)) return makeError("container {}: cgroup {} is not a directory", c.name, abs);
  return abs;
}

// --- set diff ------------------------------------------------------------------

ContainerSetDiff diffContainers(const std::map<std::string, ContainerInfo>& knownById,
                                const std::vector<ContainerInfo>& listed) {
  ContainerSetDiff d;
  std::map<std::string, const ContainerInfo*> live;
  for (const ContainerInfo& c : listed)
    if (c.running) live.emplace(c.id, &c);
  for (const auto& [id, c] : knownById)
    if (!live.contains(id)) d.deletes.push_back(c);
  for (const auto& [id, c] : live) {
    auto it = knownById.find(id);
    if (it == knownById.end() || it->second != *c) d.upserts.push_back(*c);
  }
  return d;
}

}  // namespace atlasgate::discovery
