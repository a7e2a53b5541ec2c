#pragma once
// The credentials atlasgate captured (capture.h), as the data plane uses
// them: the vault, who may use an entry (its owner, and the agents
// capture.share names), the upstream credential an entry stands for (a
// Digest client for an API key, a token provider for a service-account
// secret: made on first use, cached by entry name, dropped on revoke), and
// the nonces atlasgate challenges agents with for captured API keys.
//
// Entries are looked up by what an agent presents (a public key, a client
// id), in the vault's index; the owners of API keys per target are also kept
// in memory, since every unauthenticated request asks "does this agent hold
// a captured API key?". Thread-safe.

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "config/config.h"
#include "credentials/digest.h"
#include "net/asio.h"
#include "proxy/capture.h"
#include "proxy/runtime.h"
#include "vault/vault.h"

namespace atlasgate::upstream {
class UpstreamPool;
}

namespace atlasgate::proxy {

class Captured {
 public:
  Captured(net::asio::any_io_executor ex, upstream::UpstreamPool& pool, std::unique_ptr<vault::Vault> vault,
           std::chrono::seconds tokenTimeout);

  // capture.share and capture.challenge_holders (a reload may change them).
  void configure(const config::Capture& c);
  bool challengeHolders() const;

  // May `agent` use an entry minted by `owner`?
  bool mayUse(std::string_view owner, std::string_view agent) const;

  // The agent holds (or is shared) a captured API key for this target.
  bool holdsApiKey(std::string_view host, std::string_view agent) const;
  bool anyApiKey(std::string_view host) const;

  // What an agent presents, looked up once: whether atlasgate captured it
  // at all (`captured`), and the entry if this agent may use it.
  struct Found {
    bool captured = false;
    std::optional<vault::Unsealed> usable;
  };
  // The captured API key `publicKey`.
  Found apiKey(std::string_view host, std::string_view publicKey, std::string_view agent);
  // A captured service-account secret of `clientId` whose phantom is `phantom`.
  Found serviceAccount(std::string_view host, std::string_view clientId, std::string_view phantom,
                       std::string_view agent);

  // A database user's password captured on any of `hosts` (the https
  // targets: where the agent created the user), by username: the agent's
  // phantom is its own password, the secret the one Atlas has.
  Found databaseUser(const std::vector<std::string>& hosts, std::string_view username, std::string_view agent);

  // The upstream credential of an entry, made once and cached by name.
  std::shared_ptr<const CredentialRuntime> runtimeFor(const vault::Unsealed& u);
  // By name (a phantom token bound to a captured secret): nullptr once revoked.
  std::shared_ptr<const CredentialRuntime> runtimeNamed(std::string_view name);

  // Seals what a capture made; all or nothing (what was written is removed
  // again when a later one fails).
  Result<void> store(std::vector<capture::Minted>& minted);
  Result<void> store(capture::Minted& minted);
  // A pending database-user password: Atlas said yes (activate) or no (discard).
  Result<void> activate(const std::string& pendingName, const std::string& name);
  void discard(const std::string& pendingName);
  // Atlas deleted the object: its entries go.
  std::vector<std::string> forget(std::string_view host, const std::vector<capture::Forget>& forgets);
  // The operator's revoke; false: no such entry.
  Result<bool> revoke(std::string_view name);

  Result<std::vector<vault::Entry>> list();
  const credentials::DigestNonces& nonces() const { return nonces_; }
  std::uint64_t captured() const { return capturedCount_.load(std::memory_order_relaxed); }

 private:
  void reindex();
  void drop(std::string_view name);
  bool mayUseLocked(std::string_view owner, std::string_view agent) const;  // mu_ held

  net::asio::any_io_executor ex_;
  upstream::UpstreamPool& pool_;
  std::unique_ptr<vault::Vault> vault_;
  std::chrono::seconds tokenTimeout_;
  credentials::DigestNonces nonces_;

  mutable std::mutex mu_;
  std::vector<config::CaptureShare> share_;
  bool challengeHolders_ = true;
  std::map<std::string, std::multiset<std::string>, std::less<>> apiKeyOwners_;  // host -> owners
  std::map<std::string, std::shared_ptr<const CredentialRuntime>, std::less<>> runtimes_;
  std::atomic<std::uint64_t> capturedCount_{0};
  // Held across a whole reindex (the vault read and the install): two
  // workers capturing at once install their indexes in the order they read.
  std::mutex reindexMu_;
};

}  // namespace atlasgate::proxy
