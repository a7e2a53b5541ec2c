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
#include "config/config.h"
#include "proxy/agents.h"

namespace atlasgate::credentials {
class TokenProvider;
class DigestAuth;
}  // namespace atlasgate::credentials
namespace atlasgate::policy {
class Policy;
}

namespace atlasgate::proxy {

struct CredentialRuntime {
  std::string name;
  std::string description;                             // "service_account:<id>", safe to log
  std::vector<std::string> agents;                     // globs; empty = every agent
  std::shared_ptr<credentials::TokenProvider> tokens;  // service accounts
  std::shared_ptr<credentials::DigestAuth> digest;     // API keys
  std::string host;                                    // a captured credential's target (where it is valid)
  std::string owner;                                   // and the agent that minted it
};

struct TargetRuntime {
  std::string host;
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
