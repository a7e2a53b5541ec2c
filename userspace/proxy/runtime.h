#pragma once
// What every protocol front end of the data plane shares: the runtime a
// reload replaces (config, rules, targets and their credentials) and the
// flow of one connection (what the kernel and discovery say about it).
// The HTTP session (server.cpp, exchange.cpp) is one front end; another
// protocol reuses these, the rules, the credentials and the audit.

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <boost/asio/ip/tcp.hpp>

#include "bpf/abi.h"
#include "common/result.h"
#include "config/config.h"
#include "net/asio.h"
#include "proxy/agents.h"

namespace atlasgate::credentials {
class TokenProvider;
class DigestAuth;
}  // namespace atlasgate::credentials
namespace atlasgate::policy {
class Policy;
}

namespace atlasgate::proxy {

// The database user atlasgate authenticates as for one agent (SCRAM-SHA-256).
struct DatabaseLogin {
  std::string username;
  std::string password;
  std::string authSource = "admin";
  bool temporary = false;  // minted for this agent: Atlas may still be deploying it
};

// Where an agent's database login comes from: a configured database_user, or
// a temporary_user minted per agent (proxy/mongo_logins.h).
class DatabaseLogins {
 public:
  virtual ~DatabaseLogins() = default;
  virtual net::asio::awaitable<Result<DatabaseLogin>> login(const AgentIdentity& agent) = 0;
  virtual std::string describe() const = 0;  // "database_user:<name>", safe to log
};

struct CredentialRuntime {
  std::string name;
  std::string description;                             // "service_account:<id>", safe to log
  std::vector<std::string> agents;                     // globs; empty = every agent
  std::shared_ptr<credentials::TokenProvider> tokens;  // service accounts
  std::shared_ptr<credentials::DigestAuth> digest;     // API keys
  std::shared_ptr<DatabaseLogins> database;            // mongodb targets
  std::string host;                                    // a captured credential's target (where it is valid)
  std::string owner;                                   // and the agent that minted it
};

struct TargetRuntime {
  std::string host;  // a mongodb target's may be a pattern, "*.mongodb.net"
  config::Protocol protocol = config::Protocol::Https;
  std::uint32_t id = 0;  // the daemon's id for this host: what the kernel's targets maps and flows carry
  std::vector<CredentialRuntime> credentials;
};

// Everything a reload replaces. Sessions hold the snapshot they started with.
struct Runtime {
  std::shared_ptr<const config::Config> config;
  std::shared_ptr<policy::Policy> policy;
  std::vector<TargetRuntime> targets;
  const TargetRuntime* findTarget(std::string_view host) const;
  const TargetRuntime* findTargetById(std::uint32_t id) const;
  // The mongodb target whose host (or pattern) matches this concrete name.
  const TargetRuntime* findMongodbTarget(std::string_view host) const;
};

// What the kernel told us about a connection, and who discovery says it is.
struct Flow {
  ag_origin origin{};
  AgentIdentity agent;
  boost::asio::ip::tcp::endpoint originalDst;
  std::string comm;
  std::uint64_t id = 0;        // connection number, for logs
  std::shared_ptr<void> slot;  // this connection's place under the connection caps
};

}  // namespace atlasgate::proxy
