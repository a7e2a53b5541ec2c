#pragma once
// The agent-facing TLS context: TLS 1.2-1.3, ECDHE only, one leaf certificate
// per configured target host chosen from the SNI in the ClientHello. A target
// pattern `*.suffix` answers any SNI strictly below `suffix`, with a leaf for
// that concrete name. Such names and their leaves are kept in an LRU of at
// most kMaxWildcardNames per context: random SNIs cannot grow memory without
// bound, and cannot lock new legitimate names out either (they only evict
// old names, which are re-minted when seen again). Configured concrete
// hosts' leaves are never evicted.
//
// Ownership: ServerContext holds one reference to the SSL_CTX. Everything the
// callbacks need (the Authority, the leaf cache, the counters) is owned by the
// SSL_CTX itself (ex_data freed with it), so the SSL_CTX stays fully usable
// after the ServerContext is gone as long as someone holds a reference:
//
//   auto server = tls::ServerContext::create(authority).value();
//   boost::asio::ssl::context asioCtx(server.share());  // asio now owns one ref
//
// share() returns a new reference (SSL_CTX_up_ref) the receiver must free;
// boost::asio::ssl::context(native_handle_type) takes ownership of exactly
// one reference, which is what it needs. native() only borrows.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "common/result.h"
#include "tls/authority.h"
#include "tls/openssl_ptr.h"

namespace atlasgate::tls {

inline constexpr const char* kAlpnHttp11 = "http/1.1";
// Concrete names under wildcard patterns a context remembers (with their
// leaves); a new name beyond it evicts the least recently used one.
inline constexpr size_t kMaxWildcardNames = 4096;

struct ServerCounters {
  uint64_t refusedUnknownSni = 0;    // SNI named a host that is not a target
  uint64_t refusedMissingSni = 0;    // no SNI and no (valid) default host on the SSL
  uint64_t refusedMalformedSni = 0;  // server_name extension did not parse
  uint64_t leavesMinted = 0;         // leaf certificates minted (first use + renewals)
  uint64_t mintFailures = 0;         // mintLeaf failed; the handshake was refused
  uint64_t evictedNames = 0;         // names under patterns (and their leaves) evicted to make room
  uint64_t wildcardNames = 0;        // gauge: names under patterns remembered (<= kMaxWildcardNames)
  uint64_t cachedLeaves = 0;         // gauge: leaves in the cache
};

class ServerContext {
 public:
  using Clock = std::function<std::chrono::system_clock::time_point()>;

  // `clock` decides when a cached leaf is renewed (tests move it forward);
  // the default is the system clock.
  static Result<ServerContext> create(std::shared_ptr<const Authority> authority, Clock clock = {});

  ServerContext(ServerContext&& other) noexcept;
  ServerContext& operator=(ServerContext&& other) noexcept;
  ServerContext(const ServerContext&) = delete;
  ServerContext& operator=(const ServerContext&) = delete;
  ~ServerContext() = default;

  // Borrowed; valid while this ServerContext (or another reference) lives.
  SSL_CTX* native() const { return ctx_.get(); }
  // A new reference (SSL_CTX_up_ref); the caller owns it and must free it
  // (SSL_CTX_free, or hand it to boost::asio::ssl::context).
  SSL_CTX* share() const;

  // The host used when the ClientHello carries no SNI: the target that owns
  // the connection's original destination. Stored on the SSL (ex_data, not
  // owned): `host` must stay alive until the handshake is over. nullptr clears.
  static void setDefaultHost(SSL* ssl, const std::string* host);
  // The concrete host this handshake was answered for (lower-case, no
  // trailing dot), or nullptr before the ClientHello was processed / when it
  // was refused. The SSL holds a reference to it: valid as long as the SSL
  // lives, even after the name is evicted from the context's LRU.
  static const std::string* selectedHost(const SSL* ssl);
  // The configured entry (Authority::hosts()) that admitted selectedHost():
  // the host itself for a concrete target, else the pattern (`*.mongodb.net`).
  // nullptr exactly when selectedHost() is. Same lifetime.
  static const std::string* matchedPattern(const SSL* ssl);

  // The cached leaf for `host`, minting it on first use and re-minting it when
  // less than a third of its lifetime is left. A name under a pattern counts
  // as used (LRU) and may evict another; configured hosts' leaves stay.
  // Refuses names that are no target. Thread-safe.
  Result<std::shared_ptr<const Leaf>> leafFor(const std::string& host) const;

  ServerCounters counters() const;

  struct State;  // lives in the SSL_CTX's ex_data

 private:
  ServerContext(SslCtxPtr ctx, State* state) : ctx_(std::move(ctx)), state_(state) {}

  SslCtxPtr ctx_;
  State* state_ = nullptr;  // owned by ctx_ (its ex_data); null after a move
};

}  // namespace atlasgate::tls
