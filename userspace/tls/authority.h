#pragma once
// atlasgate's local certificate authority.
//
// The CA exists only to let agents trust the certificates the terminator
// presents for the configured target hosts. Its certificate carries a critical
// nameConstraints extension whose permitted subtrees are exactly those hosts,
// so even a stolen ca.key cannot mint a certificate that a verifier accepts
// for any other name (RFC 5280 4.2.1.10). The price is that the CA must be
// re-made whenever the set of targets changes; loadOrCreate does that.
//
// A target may also be a wildcard pattern `*.suffix`: it stands for every
// name strictly below `suffix` (any depth), never `suffix` itself. Its
// permitted subtree is the DNS name `.suffix`; the leading dot makes
// OpenSSL's name-constraint check (and RFC 5280 readers) accept only proper
// subdomains.

#include <chrono>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "tls/openssl_ptr.h"

namespace atlasgate::tls {

inline constexpr const char* kSystemBundle = "/etc/ssl/certs/ca-certificates.crt";
inline constexpr const char* kCaCommonName = "atlasgate local CA";

struct CaPaths {
  std::string caCert;       // <stateDir>/ca.pem            0644
  std::string caKey;        // <stateDir>/ca.key            0600
  std::string trustBundle;  // <stateDir>/trust-bundle.pem  0644 (system roots + our CA)
};
CaPaths caPaths(const std::string& stateDir);

// A leaf certificate for one host, with its key.
struct Leaf {
  std::string host;
  X509Ptr cert;
  EvpPkeyPtr key;
  std::chrono::system_clock::time_point notBefore;
  std::chrono::system_clock::time_point notAfter;
};

// Lower-cases a host name and strips one trailing dot; returns an error when
// what is left is not a plain DNS name (LDH labels, no wildcards, <= 253).
Result<std::string> normalizeHost(std::string_view host);

// normalizeHost, or `*.` followed by a normalized name of at least two labels
// (`*.mongodb.net`). Any other `*` (`*.net`, `a*.x.com`, `a.*.x.com`) is refused.
Result<std::string> normalizeHostPattern(std::string_view pattern);

// True for `*.`-prefixed entries (as normalizeHostPattern returns them).
inline bool isHostPattern(std::string_view entry) { return entry.size() > 2 && entry.starts_with("*."); }

class Authority {
 public:
  // Loads the CA from stateDir, or creates it (and stateDir) when it is absent,
  // unreadable, expiring within 30 days, or constrained to a different set of
  // hosts than `hosts` (concrete names and `*.suffix` patterns). Always rewrites the trust bundle from systemBundle
  // (a missing system bundle gives a bundle holding only our CA, and a warning).
  static Result<Authority> loadOrCreate(const std::string& stateDir, const std::vector<std::string>& hosts,
                                        const std::string& systemBundle = kSystemBundle);

  Authority(Authority&&) noexcept = default;
  Authority& operator=(Authority&&) noexcept = default;
  Authority(const Authority&) = delete;
  Authority& operator=(const Authority&) = delete;

  // A fresh ECDSA P-256 leaf for `host` (SAN DNS:host, serverAuth, valid from
  // now-5min to now+24h, SHA-256 by the CA). Refuses names allows() refuses,
  // and patterns themselves. Thread-safe: the CA key is only read.
  Result<Leaf> mintLeaf(const std::string& host) const;

  // True when the concrete `host` (already normalized) is a configured host or
  // a proper subdomain of a configured pattern's suffix. False for patterns.
  bool allows(std::string_view host) const { return match(host) != nullptr; }

  // The configured entry (in hosts()) that allows the concrete, normalized
  // `host`: the host itself when configured, else the most specific pattern
  // covering it; nullptr when none does or `host` is not a concrete name.
  // The pointer lives as long as this Authority.
  const std::string* match(std::string_view host) const;

  // True when `entry` (normalized host or pattern) is exactly one of hosts(),
  // e.g. to check that a reloaded target needs no new CA.
  bool hasEntry(std::string_view entry) const;

  X509* caCert() const { return caCert_.get(); }
  std::string caPem() const { return certToPem(caCert_.get()); }
  // Normalized hosts and patterns, sorted, unique.
  const std::vector<std::string>& hosts() const { return hosts_; }
  const CaPaths& paths() const { return paths_; }

 private:
  Authority() = default;

  CaPaths paths_;
  std::vector<std::string> hosts_;
  X509Ptr caCert_;
  EvpPkeyPtr caKey_;
};

}  // namespace atlasgate::tls
