#pragma once
// The daemon's configuration, as loaded from YAML (README "Configuration").
// Loading checks the shape of the file: every key known, every value of the
// right kind and within its bounds, references between sections (a rule's
// host is a target) resolved. It reports the first problem as
// "FILE:LINE:COL: message". What a rule's strings mean (path patterns, label
// selectors, JSON pointers, regular expressions, unique names) is policy/'s to
// check when it compiles the rules: `atlasgate check`, daemon start and reload
// compile them right after loading. Unknown keys are an error. Secrets are
// *not* read here: SecretRef says where a secret lives, credentials/ reads it.

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace atlasgate::config {

struct SourceLoc {
  std::string file;
  int line = 0;    // 1-based; 0 when unknown
  int column = 0;  // 1-based
};

// Where a secret comes from. Exactly one of the three is set.
struct SecretRef {
  std::string file;         // *_file: path to a file holding the secret
  std::string env;          // *_env: name of an environment variable
  std::string inlineValue;  // the secret itself; only accepted when the config file is mode 0600
  SourceLoc loc;
};

struct ServiceAccount {
  std::string clientId;  // mdb_sa_id_...
  SecretRef clientSecret;
};

struct ApiKey {
  std::string publicKey;
  SecretRef privateKey;
};

// protocol: mongodb targets. A database user atlasgate authenticates as
// (SCRAM-SHA-256) on every upstream connection.
struct DatabaseUser {
  std::string username;
  SecretRef password;
  std::string authSource = "admin";
};

struct DatabaseRole {
  std::string roleName;
  std::string databaseName;
  std::string collectionName;  // "" = the whole database
};

// One short-lived database user per agent, minted through the Admin API with
// atlasgate's own credential of an https target (README "MongoDB clusters").
struct TemporaryUser {
  std::string groupId;  // 24 hex digits
  std::vector<DatabaseRole> roles;
  std::vector<std::string> scopes;  // cluster names the user is limited to; empty = every cluster of the project
  std::chrono::seconds lifetime{6 * 3600};  // Atlas' deleteAfterDate; renewed before it ends
  std::string apiHost;                      // the https target whose credential mints ("" = the only one)
};

struct Credential {
  std::string name;                              // "default" for the single (map) form
  std::optional<ServiceAccount> serviceAccount;  // exactly one of these (the first two: https targets,
  std::optional<ApiKey> apiKey;                  // the last two: mongodb targets)
  std::optional<DatabaseUser> databaseUser;
  std::optional<TemporaryUser> temporaryUser;
  std::vector<std::string> agents;  // globs on the agent name; empty = every agent
  SourceLoc loc;

  // "service_account:<client_id>", "api_key:<public_key>", "database_user:<name>",
  // "temporary_user:<group_id>": safe to log.
  std::string describe() const;
};

enum class Protocol { Https, Mongodb };
std::string_view protocolName(Protocol p);  // "https", "mongodb"

struct Target {
  // Lower-cased DNS name; a mongodb target may be a pattern "*.<name>", which
  // matches every name below <name> (never <name> itself).
  std::string host;
  Protocol protocol = Protocol::Https;
  std::vector<std::string> addresses;     // literal IPv4/IPv6 addresses, validated
  std::optional<std::string> upstreamCa;  // PEM file; default: system trust store
  std::uint16_t upstreamPort = 443;       // port atlasgate dials on the target's own addresses (mongodb: 27017)
  bool resolve = true;                    // also intercept what DNS answers for host
  std::vector<Credential> credentials;    // may be empty (then requests pass with no credential)
  SourceLoc loc;
};

enum class Action { Allow, Block, RateLimit, Approve, LogOnly };
std::string_view actionName(Action a);

enum class CondOp { Equals, In, NotIn, Matches, Exists };

// A condition on the JSON request body. Values are kept as JSON text
// ("\"M40\"", "3", "true") so that policy/ can compare typed values.
struct Condition {
  std::string pointer;  // RFC 6901 JSON Pointer
  CondOp op = CondOp::Exists;
  std::vector<std::string> jsonValues;  // equals: one; in / not_in: many
  std::string regex;                    // matches (ECMAScript syntax, full match)
  bool exists = true;                   // exists: true|false
  SourceLoc loc;
};

struct Rate {
  std::uint64_t count = 0;          // tokens per period
  std::uint64_t periodSeconds = 0;  // 1, 60, 3600 or 86400
};

enum class RatePer { Agent, Rule };

struct Rule {
  std::string name;                  // unique; generated "rule-<n>" when absent
  std::vector<std::string> methods;  // upper-cased; empty = any
  std::string path;                  // pattern; empty = any path
  std::vector<std::string> hosts;    // lower-cased; empty = any target
  std::vector<std::string> agents;   // globs; empty = any agent
  std::string podLabels;             // Kubernetes label selector on the agent's pod; "" = any agent
  std::string containerLabels;       // the same on the labels of the agent's container (discovery.containers)
  std::vector<Condition> when;       // all must hold
  Action action = Action::Allow;
  std::optional<Rate> rate;            // rate_limit only (required there)
  std::optional<std::uint64_t> burst;  // rate_limit only; default = rate.count
  RatePer per = RatePer::Agent;
  std::chrono::seconds timeout{120};  // approve only
  Action wouldBe = Action::Block;     // log_only: what the rule would have done (block by default)
  std::string credential;             // optional: name of the target credential to use
  // protocol: mongodb rules match commands instead of requests (README
  // "MongoDB clusters"): globs on the command name (case-insensitive), the
  // database and the collection; empty = any.
  Protocol protocol = Protocol::Https;
  std::vector<std::string> commands;
  std::vector<std::string> databases;
  std::vector<std::string> collections;
  SourceLoc loc;
  // Where each key of the rule was written, for policy/'s messages: "path",
  // "action", "when[0].matches" ... -> the location of its value. Empty for
  // rules made in code (messages then point at loc).
  std::map<std::string, SourceLoc, std::less<>> keyLocs;
};

// rules.preset: rules atlasgate writes itself, placed before the operator's
// list (README "Guardrails"). Only "guardrails" exists.
inline constexpr std::string_view kGuardrailsPreset = "guardrails";

struct Rules {
  Action defaultAction = Action::Allow;  // allow or block
  // The presets' rules first (the first presetRules of them), then those of
  // rules.list in the order written. A preset's rule is a plain Rule whose
  // loc.file is "preset:<name>" (line 0) and whose keyLocs are empty.
  std::vector<Rule> list;
  std::vector<std::string> presets;  // rules.preset, deduplicated, in the order written
  std::size_t presetRules = 0;
};

// The rules of the guardrails preset for these targets (README
// "Guardrails"): approve rules for the requests by which an agent widens
// access beyond itself, on every target's host. Made from one declarative
// table; the rules about atlasgate's own credential follow the targets'
// credentials (one set per service-account client id; one rule when any
// target has an api_key credential).
std::vector<Rule> guardrailRules(const std::vector<Target>& targets);

struct Listen {
  std::uint16_t port = 15443;
  std::optional<std::string> admin;  // "127.0.0.1:15444"
  // A file holding the bearer token /metrics requires ("" = none: then admin
  // must be reachable only by trusted users). Read by the daemon, not here.
  std::string adminTokenFile;
  // The web console (README "Console"): "127.0.0.1:15445", off when unset.
  // A concrete address: requests are refused unless their Host names it.
  std::optional<std::string> console;
  std::chrono::seconds consoleSession{8 * 3600};  // how long a sign-in lasts
};

struct Agents {
  std::string cgroup = "atlasgate";  // relative to the cgroup2 mount, or absolute
  std::vector<std::string> attach;   // absolute cgroup paths
};

struct Limits {
  std::uint32_t maxHeaderBytes = 16 * 1024;
  std::uint32_t maxHeaders = 100;
  std::uint64_t maxBodyBytes = 16 * 1024 * 1024;
  std::chrono::seconds handshakeTimeout{10};
  std::chrono::seconds headerTimeout{15};    // whole request head must arrive within this
  std::chrono::seconds idleTimeout{60};      // keep-alive idle
  std::chrono::seconds requestTimeout{300};  // one request/response exchange
  std::chrono::seconds upstreamTimeout{60};  // upstream connect + first byte of response
  // Caps (README "Configuration", limits). A connection over a connection cap is closed at once.
  std::uint32_t maxConnections = 4096;                // agent connections, whole daemon
  std::uint32_t maxConnectionsPerAgent = 512;         // agent connections of one agent
  std::uint32_t maxHeldRequests = 64;                 // requests held by approve rules, whole daemon
  std::uint32_t maxHeldPerAgent = 8;                  // ... of one agent
  std::uint64_t maxHeldBodyBytes = 64ull << 20;       // sum of the bodies of held requests
  std::uint32_t maxPhantomTokensPerAgent = 64;        // live phantom tokens of one agent
  std::uint32_t maxUpstreamConnections = 64;          // per target: open (busy, idle, connecting)
  std::uint32_t maxUpstreamConnectionsPerAgent = 16;  // per target: busy for one agent at a time
  std::chrono::seconds upstreamQueueTimeout{10};      // wait for a free upstream connection, then 503
  std::chrono::seconds upstreamConnectTimeout{10};    // TCP connect + TLS handshake of one upstream connection
};

struct BpfOptions {
  // On a clean SIGTERM, leave the programs attached (and pinned) so agents
  // stay redirected, and fail closed, while the daemon is down. Default true.
  bool keepOnExit = true;
  bool refuseQuic = true;                         // fail UDP/443 to targets
  std::string pinRoot = "/sys/fs/bpf/atlasgate";  // where maps, programs and links are pinned
};

struct Dns {
  // Resolvers to ask ("IPv4" or "IPv4:port"); empty = /etc/resolv.conf.
  std::vector<std::string> servers;
  std::chrono::seconds minRefresh{10};  // refresh at half the TTL, within these bounds
  std::chrono::seconds maxRefresh{600};
  std::chrono::seconds grace{600};  // a retired address stays intercepted this long
};

// DaemonSet mode: pods on this node that match the selector are attached.
struct KubernetesDiscovery {
  std::string nodeNameEnv = "NODE_NAME";  // the node's name, from the downward API
  std::string labelSelector = "atlasgate.io/inject=true";
  std::string apiServer;  // "" = https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT
  std::string tokenFile = "/var/run/secrets/kubernetes.io/serviceaccount/token";
  std::string caFile = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";
  std::string cgroupRoot;  // "" = the cgroup2 mount
  SourceLoc loc;
};

// Credential capture: what the Atlas API mints through atlasgate is kept in
// the vault and the agent gets a phantom (README "Credential capture").
struct CaptureShare {
  std::string from;             // glob on the agent that minted (the owner)
  std::vector<std::string> to;  // globs on the agents that may use its credentials too
};

struct Capture {
  bool enabled = true;
  std::string keyFile;  // "" = state_dir/vault.key
  // A minting response is buffered whole to be rewritten: larger ones are
  // withheld (ATLASGATE_CAPTURE_FAILED), never relayed with the secret.
  std::uint64_t maxResponseBytes = 1u << 20;
  std::vector<CaptureShare> share;
  // An agent that holds a captured API key is challenged for it (Digest) on a
  // request without credentials; false: it gets the configured credential,
  // and captured keys serve only agents without one.
  bool challengeHolders = true;
};

// Containers of a local Podman or Docker engine (its Docker-compatible API
// on a Unix socket) that carry the label are attached, named container/<name>.
struct ContainerDiscovery {
  std::string socket = "/run/podman/podman.sock";
  std::string label = "atlasgate.io/inject=true";  // "key" or "key=value"
  // The cgroup the engine makes its containers under (its cgroup parent:
  // libpod_parent, machine.slice, system.slice/docker...): attached once, so
  // that a new or restarted container is redirected from its first
  // connection. Relative to the cgroup2 mount, or absolute. "" = attach each
  // container's own cgroup when discovery sees it.
  std::string guardCgroup;
  std::chrono::milliseconds settle{3000};  // how long a connection from under the guard waits to be named
  SourceLoc loc;
};

enum class Intercept {
  Targets,  // redirect TCP/443 to target addresses only (default)
  AllTls,   // redirect every TCP/443 of attached cgroups; terminate only target SNIs, splice the rest
};

struct Config {
  std::string path;  // the file this came from
  Intercept intercept = Intercept::Targets;
  // Event loops serving agents' HTTPS connections (README "Workers"): each
  // its own thread, io_context, listeners (SO_REUSEPORT) and upstream pool.
  // "auto" in the file is the number of CPUs this process may run on.
  std::uint32_t workers = 1;
  Listen listen;
  std::string stateDir = "/var/lib/atlasgate";
  // Optional: a directory that gets copies of ca.pem and trust-bundle.pem only
  // (never the key), for mounting into containers and pods.
  std::string publishCaDir;
  std::string auditLog = "/var/log/atlasgate/audit.jsonl";  // "-" = stdout
  std::string logLevel = "info";
  Agents agents;
  std::vector<Target> targets;  // at least one
  Rules rules;
  Limits limits;
  BpfOptions bpf;
  Dns dns;
  Capture capture;
  std::optional<KubernetesDiscovery> kubernetes;  // discovery.kubernetes
  std::optional<ContainerDiscovery> containers;   // discovery.containers
};

// Parses YAML text. fileIsPrivate says whether inline secrets are allowed
// (the file is mode 0600 or stricter).
Result<Config> parseConfig(std::string_view yaml, const std::string& fileName, bool fileIsPrivate);

// Reads and parses a file; errors carry "FILE:LINE:COL: ...".
Result<Config> loadConfig(const std::string& path);

// Human-readable summary of a loaded config (used by `atlasgate check`).
std::string describeConfig(const Config& c);

// One key of the sections that config.cpp reads from schema tables (README
// "Configuration"): every key of listen, agents, limits, bpf, dns,
// discovery.kubernetes, discovery.containers and the top level. targets and
// rules are listed themselves, not what is under them.
struct SchemaKey {
  std::string path;          // "limits.idle_timeout", "state_dir", "discovery.kubernetes"
  std::string kind;          // "integer", "duration", "path", "section" ...
  std::string defaultValue;  // as YAML would spell it; "" when there is none
  std::uint64_t min = 0;     // integer, port: the accepted range; duration: in seconds
  std::uint64_t max = 0;
  std::string doc;  // one line
};
std::vector<SchemaKey> schemaKeys();

// The port of the mongodb targets (they share one), 0 when there is none.
std::uint16_t mongodbPort(const Config& c);

}  // namespace atlasgate::config
