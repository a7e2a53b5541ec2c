#include "proxy/captured.h"

#include <fnmatch.h>

#include <algorithm>

#include <openssl/crypto.h>

#include "common/log.h"
#include "common/text.h"
#include "credentials/token_provider.h"

namespace atlasgate::proxy {

namespace {

bool glob(const std::string& pattern, std::string_view name) {
  return ::fnmatch(pattern.c_str(), std::string(name).c_str(), 0) == 0;
}

bool sameSecret(std::string_view a, std::string_view b) {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

}  // namespace

Captured::Captured(net::asio::any_io_executor ex, upstream::UpstreamPool& pool, std::unique_ptr<vault::Vault> vault,
                   std::chrono::seconds tokenTimeout)
    : ex_(std::move(ex)), pool_(pool), vault_(std::move(vault)), tokenTimeout_(tokenTimeout) {
  reindex();
}

void Captured::configure(const config::Capture& c) {
  std::lock_guard lock(mu_);
  share_ = c.share;
  challengeHolders_ = c.challengeHolders;
}

bool Captured::challengeHolders() const {
  std::lock_guard lock(mu_);
  return challengeHolders_;
}

bool Captured::mayUse(std::string_view owner, std::string_view agent) const {
  std::lock_guard lock(mu_);
  return mayUseLocked(owner, agent);
}

bool Captured::mayUseLocked(std::string_view owner, std::string_view agent) const {
  if (owner == agent) return true;
  for (const auto& s : share_) {
    if (!glob(s.from, owner)) continue;
    for (const auto& to : s.to)
      if (glob(to, agent)) return true;
  }
  return false;
}

void Captured::reindex() {
  std::lock_guard order(reindexMu_);
  auto all = vault_->list();
  std::map<std::string, std::multiset<std::string>, std::less<>> owners;
  if (all) {
    for (const auto& e : *all)
      if (e.kind == vault::Kind::ApiKey && !e.pending) owners[e.target].insert(e.owner);
  } else {
    log::error("vault {}: {}", vault_->path(), all.error().message);
  }
  std::lock_guard lock(mu_);
  apiKeyOwners_ = std::move(owners);
}

bool Captured::holdsApiKey(std::string_view host, std::string_view agent) const {
  // On every request without credentials: no copy, one lock.
  std::lock_guard lock(mu_);
  auto it = apiKeyOwners_.find(host);
  if (it == apiKeyOwners_.end()) return false;
  return std::any_of(it->second.begin(), it->second.end(),
                     [&](const std::string& owner) { return mayUseLocked(owner, agent); });
}

bool Captured::anyApiKey(std::string_view host) const {
  std::lock_guard lock(mu_);
  auto it = apiKeyOwners_.find(host);
  return it != apiKeyOwners_.end() && !it->second.empty();
}

Captured::Found Captured::apiKey(std::string_view host, std::string_view publicKey, std::string_view agent) {
  Found out;
  auto found = vault_->findByLookup(vault::Kind::ApiKey, host, publicKey);
  if (!found) {
    log::error("vault {}: {}", vault_->path(), found.error().message);
    return out;
  }
  out.captured = !found->empty();
  for (auto& u : *found)
    if (mayUse(u.entry.owner, agent)) {
      out.usable = std::move(u);
      break;
    }
  return out;
}

Captured::Found Captured::serviceAccount(std::string_view host, std::string_view clientId, std::string_view phantom,
                                         std::string_view agent) {
  Found out;
  auto found = vault_->findByLookup(vault::Kind::ServiceAccountSecret, host, clientId);
  if (!found) {
    log::error("vault {}: {}", vault_->path(), found.error().message);
    return out;
  }
  out.captured = !found->empty();
  for (auto& u : *found)
    if (sameSecret(u.phantom, phantom) && mayUse(u.entry.owner, agent)) {
      out.usable = std::move(u);
      break;
    }
  return out;
}

Captured::Found Captured::databaseUser(const std::vector<std::string>& hosts, std::string_view username,
                                       std::string_view agent) {
  Found out;
  for (const std::string& host : hosts) {
    auto found = vault_->findByLookup(vault::Kind::DatabaseUser, host, username);
    if (!found) {
      log::error("vault {}: {}", vault_->path(), found.error().message);
      return out;
    }
    out.captured = out.captured || !found->empty();
    for (auto& u : *found)
      if (mayUse(u.entry.owner, agent)) {
        out.usable = std::move(u);
        return out;
      }
  }
  return out;
}

std::shared_ptr<const CredentialRuntime> Captured::runtimeFor(const vault::Unsealed& u) {
  {
    std::lock_guard lock(mu_);
    if (auto it = runtimes_.find(u.entry.name); it != runtimes_.end()) return it->second;
  }
  auto rt = std::make_shared<CredentialRuntime>();
  rt->name = u.entry.name;
  rt->description = u.entry.name;
  rt->host = u.entry.target;
  rt->owner = u.entry.owner;
  if (u.entry.kind == vault::Kind::ApiKey) {
    rt->digest = std::make_shared<credentials::DigestAuth>(u.entry.lookup, credentials::Secret(u.secret));
  } else if (u.entry.kind == vault::Kind::ServiceAccountSecret) {
    rt->tokens = std::make_shared<credentials::TokenProvider>(ex_, pool_, u.entry.target, u.entry.lookup,
                                                              credentials::Secret(u.secret), tokenTimeout_);
  } else {
    return nullptr;  // database users and certificates are for the MongoDB path
  }
  std::lock_guard lock(mu_);
  return runtimes_.emplace(u.entry.name, std::move(rt)).first->second;
}

std::shared_ptr<const CredentialRuntime> Captured::runtimeNamed(std::string_view name) {
  {
    std::lock_guard lock(mu_);
    if (auto it = runtimes_.find(name); it != runtimes_.end()) return it->second;
  }
  auto u = vault_->get(name);
  if (!u || !*u || (*u)->entry.pending) return nullptr;
  return runtimeFor(**u);
}

Result<void> Captured::store(capture::Minted& m) {
  if (auto r = vault_->put(m.entry, m.secret, m.phantom); !r) return r;
  capturedCount_.fetch_add(1, std::memory_order_relaxed);
  if (m.entry.kind == vault::Kind::ApiKey) reindex();
  return {};
}

Result<void> Captured::store(std::vector<capture::Minted>& minted) {
  for (std::size_t i = 0; i < minted.size(); ++i) {
    if (auto r = store(minted[i]); !r) {
      for (std::size_t j = 0; j < i; ++j) (void)vault_->remove(minted[j].entry.name);
      reindex();
      return r;
    }
  }
  return {};
}

Result<void> Captured::activate(const std::string& pendingName, const std::string& name) {
  auto u = vault_->get(pendingName);
  if (!u) return u.error();
  if (!*u) return makeError("the pending entry {} is gone", text::forTerminal(pendingName));
  vault::Unsealed& p = **u;
  p.entry.name = name;
  p.entry.pending = false;
  if (auto r = vault_->put(p.entry, p.secret, p.phantom); !r) return r;
  (void)vault_->remove(pendingName);
  drop(name);
  return {};
}

void Captured::discard(const std::string& pendingName) { (void)vault_->remove(pendingName); }

std::vector<std::string> Captured::forget(std::string_view host, const std::vector<capture::Forget>& forgets) {
  std::vector<std::string> gone;
  for (const auto& f : forgets) {
    auto found = vault_->findByObject(f.kind, host, f.object);
    if (!found) continue;
    for (const auto& e : *found)
      if (auto r = vault_->remove(e.name); r && *r) {
        drop(e.name);
        gone.push_back(e.name);
      }
  }
  if (!gone.empty()) reindex();
  return gone;
}

Result<bool> Captured::revoke(std::string_view name) {
  auto r = vault_->remove(name);
  if (!r) return r;
  drop(name);
  reindex();
  return r;
}

void Captured::drop(std::string_view name) {
  std::lock_guard lock(mu_);
  if (auto it = runtimes_.find(name); it != runtimes_.end()) runtimes_.erase(it);
}

Result<std::vector<vault::Entry>> Captured::list() { return vault_->list(); }

}  // namespace atlasgate::proxy
