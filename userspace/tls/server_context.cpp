#include "tls/server_context.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cstring>
#include <list>
#include <mutex>
#include <new>
#include <span>
#include <unordered_map>
#include <utility>

#include <openssl/err.h>
#include <openssl/tls1.h>

#include "common/log.h"
#include "tls/sni.h"

namespace atlasgate::tls {

namespace {

// TLS 1.2: forward-secret AEAD suites for our ECDSA leaves only. TLS 1.3
// suites are all ECDHE here because the groups below are all elliptic.
constexpr const char* kCipherList =
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305";
constexpr const char* kCipherSuites = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256";
constexpr const char* kGroups = "X25519:P-256:P-384";
constexpr unsigned char kSessionIdContext[] = "atlasgate";

using X509StackPtr = std::unique_ptr<STACK_OF(X509), void (*)(STACK_OF(X509)*)>;

void freeX509Stack(STACK_OF(X509) * s) { sk_X509_pop_free(s, X509_free); }

}  // namespace

struct ServerContext::State {
  std::shared_ptr<const Authority> authority;
  Clock clock;
  X509StackPtr chain{nullptr, freeX509Stack};  // the CA certificate, sent after the leaf

  // A concrete name admitted by a pattern. SSLs hold their own references to
  // `name`, so evicting the entry never invalidates a live selectedHost().
  struct WildcardName {
    std::shared_ptr<const std::string> name;
    std::shared_ptr<const Leaf> leaf;  // null until minted
  };
  using Lru = std::list<WildcardName>;

  std::mutex mu;
  // Configured concrete hosts only (at most hosts().size()): never evicted.
  std::unordered_map<std::string, std::shared_ptr<const Leaf>> concreteLeaves;  // guarded by mu
  // Names under patterns and their leaves, most recently used first; at most
  // kMaxWildcardNames, so an agent sending random SNIs only evicts old names
  // instead of locking new ones out. Guarded by mu.
  Lru lru;
  std::unordered_map<std::string_view, Lru::iterator> wildcardIndex;  // keys view *it->name; guarded by mu
  size_t wildcardLeaves = 0;                                          // entries of lru with a leaf; guarded by mu
  std::chrono::steady_clock::time_point lastEvictionWarning;          // guarded by mu
  uint64_t suppressedEvictionWarnings = 0;                            // guarded by mu

  std::atomic<uint64_t> refusedUnknownSni{0};
  std::atomic<uint64_t> refusedMissingSni{0};
  std::atomic<uint64_t> refusedMalformedSni{0};
  std::atomic<uint64_t> leavesMinted{0};
  std::atomic<uint64_t> mintFailures{0};
  std::atomic<uint64_t> evictedNames{0};

  struct Selection {
    std::shared_ptr<const std::string> host;  // concrete name; shares ownership of its storage
    const std::string* entry = nullptr;       // the Authority's host or pattern that admitted it
  };

  // Resolves a lower-case name: for a configured host, the Authority's own
  // copy (aliased, so the reference keeps the Authority alive); for a name
  // under a pattern, the interned copy, marking it most recently used.
  Selection findHost(std::string_view host) {
    const std::string* entry = authority->match(host);
    if (entry == nullptr) return {};
    if (!isHostPattern(*entry)) return {std::shared_ptr<const std::string>(authority, entry), entry};
    std::lock_guard lock(mu);
    return {touchLocked(host, *entry).name, entry};
  }

  // The entry for `host` (admitted by `pattern`), now the most recently used;
  // inserted, evicting the least recently used name, when absent.
  WildcardName& touchLocked(std::string_view host, const std::string& pattern) {
    if (auto it = wildcardIndex.find(host); it != wildcardIndex.end()) {
      lru.splice(lru.begin(), lru, it->second);  // moves the node: iterators stay valid
      return lru.front();
    }
    auto name = std::make_shared<const std::string>(host);
    if (lru.size() >= kMaxWildcardNames) evictLocked(host, pattern);
    lru.push_front(WildcardName{std::move(name), nullptr});
    try {
      wildcardIndex.emplace(*lru.front().name, lru.begin());
    } catch (...) {
      lru.pop_front();  // keep lru and wildcardIndex in step
      throw;
    }
    return lru.front();
  }

  void evictLocked(std::string_view incoming, const std::string& pattern) {
    WildcardName& victim = lru.back();
    if (victim.leaf) --wildcardLeaves;
    wildcardIndex.erase(*victim.name);  // before the node: the key views its name
    lru.pop_back();
    evictedNames.fetch_add(1, std::memory_order_relaxed);
    warnEvictionLocked(incoming, pattern);
  }

  // At most one line a minute: the agent chooses how often this happens.
  void warnEvictionLocked(std::string_view host, const std::string& pattern) {
    auto now = std::chrono::steady_clock::now();
    if (lastEvictionWarning != std::chrono::steady_clock::time_point{} &&
        now - lastEvictionWarning < std::chrono::minutes(1)) {
      ++suppressedEvictionWarnings;
      return;
    }
    lastEvictionWarning = now;
    log::warn("SNI \"{}\" under {}: over {} distinct names, forgot the least recently used ({} more not logged)",
              printableName(host), pattern, kMaxWildcardNames, std::exchange(suppressedEvictionWarnings, 0));
  }

  // `host` is normalized. Configured hosts and names under patterns are cached
  // apart so that eviction never touches a configured host's leaf.
  Result<std::shared_ptr<const Leaf>> leafFor(const std::string& host) {
    const std::string* entry = authority->match(host);
    if (entry == nullptr) return mint(host);  // not a target: mintLeaf refuses it, counted there
    std::lock_guard lock(mu);
    if (!isHostPattern(*entry)) return cachedLeafLocked(concreteLeaves[host], host);
    WildcardName& name = touchLocked(host, *entry);
    bool had = name.leaf != nullptr;
    auto leaf = cachedLeafLocked(name.leaf, host);
    if (!had && name.leaf) ++wildcardLeaves;
    return leaf;
  }

  // Serves `slot` unless it is empty or due for renewal; else mints into it.
  Result<std::shared_ptr<const Leaf>> cachedLeafLocked(std::shared_ptr<const Leaf>& slot, const std::string& host) {
    if (slot) {
      // Renew once less than a third of the lifetime is left, so an agent
      // never receives a certificate that expires in the middle of its work.
      auto now = clock();
      if (slot->notAfter - now > (slot->notAfter - slot->notBefore) / 3) return slot;
    }
    auto leaf = mint(host);
    if (leaf) slot = *leaf;
    return leaf;
  }

  Result<std::shared_ptr<const Leaf>> mint(const std::string& host) {
    auto minted = authority->mintLeaf(host);
    if (!minted) {
      mintFailures.fetch_add(1, std::memory_order_relaxed);
      return minted.error();
    }
    leavesMinted.fetch_add(1, std::memory_order_relaxed);
    auto leaf = std::make_shared<const Leaf>(std::move(minted).value());
    log::info("minted a leaf certificate for {}", printableName(leaf->host));
    return leaf;
  }
};

namespace {

using State = ServerContext::State;

void freeState(void* /*parent*/, void* ptr, CRYPTO_EX_DATA* /*ad*/, int /*idx*/, long /*argl*/, void* /*argp*/) {
  delete static_cast<State*>(ptr);
}

int stateIndex() {
  static const int idx = SSL_CTX_get_ex_new_index(0, nullptr, nullptr, nullptr, freeState);
  return idx;
}
int defaultHostIndex() {
  static const int idx = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return idx;
}
// The selected host is stored on the SSL as a heap-allocated shared_ptr the
// SSL owns, so it outlives the name's eviction from the intern table.
using SharedName = std::shared_ptr<const std::string>;

void freeSelectedHost(void* /*parent*/, void* ptr, CRYPTO_EX_DATA* /*ad*/, int /*idx*/, long /*argl*/, void* /*argp*/) {
  delete static_cast<SharedName*>(ptr);
}

// SSL_dup copies ex_data pointers: give the copy its own reference, or both
// SSLs would free the same one.
int dupSelectedHost(CRYPTO_EX_DATA* /*to*/, const CRYPTO_EX_DATA* /*from*/, void** fromData, int /*idx*/, long /*argl*/,
                    void* /*argp*/) {
  auto** data = reinterpret_cast<SharedName**>(fromData);
  if (*data == nullptr) return 1;
  *data = new (std::nothrow) SharedName(**data);
  return *data != nullptr ? 1 : 0;  // 0 fails the SSL_dup
}

int selectedHostIndex() {
  static const int idx = SSL_get_ex_new_index(0, nullptr, nullptr, dupSelectedHost, freeSelectedHost);
  return idx;
}
int matchedPatternIndex() {
  static const int idx = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return idx;
}

std::string lowerAscii(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return out;
}

int refuse(int* alert, int code) {
  *alert = code;
  return SSL_CLIENT_HELLO_ERROR;
}

// Picks the target for this ClientHello from its SNI, or from the SSL's
// default host when it names none. An empty Selection means refuse: `*alert`
// and the counters say why.
State::Selection selectTarget(SSL* ssl, State& state, int* alert) {
  const unsigned char* ext = nullptr;
  size_t extLen = 0;
  SniResult sni;
  bool haveSni = SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_server_name, &ext, &extLen) == 1;
  if (haveSni) {
    sni = parseServerName(std::span<const uint8_t>(ext, extLen));
    if (sni.status != SniStatus::Ok) {
      state.refusedMalformedSni.fetch_add(1, std::memory_order_relaxed);
      log::warn("refused TLS handshake: malformed server_name extension ({} bytes)", extLen);
      *alert = SSL_AD_DECODE_ERROR;
      return {};
    }
    // RFC 6066 forbids IP literals as server names, but some clients (wrk,
    // a URL with an IP) send them: that names no host, like no SNI at all.
    in6_addr ip{};
    if (::inet_pton(AF_INET, sni.host.c_str(), &ip) == 1 || ::inet_pton(AF_INET6, sni.host.c_str(), &ip) == 1)
      haveSni = false;
  }
  *alert = SSL_AD_UNRECOGNIZED_NAME;
  if (haveSni) {
    auto selected = state.findHost(sni.host);
    if (selected.host == nullptr) {
      state.refusedUnknownSni.fetch_add(1, std::memory_order_relaxed);
      log::warn("refused TLS handshake: SNI \"{}\" is not a configured target", printableName(sni.host));
    }
    return selected;
  }
  const auto* fallback = static_cast<const std::string*>(SSL_get_ex_data(ssl, defaultHostIndex()));
  State::Selection selected;
  if (fallback != nullptr) selected = state.findHost(lowerAscii(*fallback));
  if (selected.host == nullptr) {
    state.refusedMissingSni.fetch_add(1, std::memory_order_relaxed);
    log::warn("refused TLS handshake: no SNI and no target owns the original destination");
    return {};
  }
  return selected;
}

// Runs before OpenSSL looks at the ClientHello's extensions: picks the target
// host and installs its leaf. Exceptions must not cross back into OpenSSL.
// Forgets what an earlier ClientHello on this SSL (after a HelloRetryRequest)
// selected, releasing its reference.
void clearSelection(SSL* ssl) {
  auto* old = static_cast<SharedName*>(SSL_get_ex_data(ssl, selectedHostIndex()));
  SSL_set_ex_data(ssl, selectedHostIndex(), nullptr);
  SSL_set_ex_data(ssl, matchedPatternIndex(), nullptr);
  delete old;
}

bool storeSelection(SSL* ssl, State::Selection selected) {
  auto owned = std::make_unique<SharedName>(std::move(selected.host));
  if (SSL_set_ex_data(ssl, selectedHostIndex(), owned.get()) != 1) return false;
  owned.release();  // now freed by freeSelectedHost with the SSL
  // The pattern lives in the Authority, which the SSL_CTX (referenced by the SSL) keeps.
  SSL_set_ex_data(ssl, matchedPatternIndex(), const_cast<std::string*>(selected.entry));
  return true;
}

int onClientHello(SSL* ssl, int* alert, void* arg) noexcept {
  auto* state = static_cast<State*>(arg);
  try {
    clearSelection(ssl);
    State::Selection selected = selectTarget(ssl, *state, alert);
    if (selected.host == nullptr) return SSL_CLIENT_HELLO_ERROR;
    const std::string& host = *selected.host;

    auto leaf = state->leafFor(host);
    if (!leaf) {
      log::error("refused TLS handshake for {}: {}", printableName(host), leaf.error().message);
      return refuse(alert, SSL_AD_INTERNAL_ERROR);
    }
    // The SSL takes its own references to the leaf, key and chain, so a later
    // renewal in the cache cannot pull them from under a live connection.
    if (SSL_use_cert_and_key(ssl, (*leaf)->cert.get(), (*leaf)->key.get(), state->chain.get(), 1) != 1) {
      log::error("refused TLS handshake for {}: cannot install the leaf: {}", printableName(host), opensslErrors());
      return refuse(alert, SSL_AD_INTERNAL_ERROR);
    }
    if (!storeSelection(ssl, std::move(selected))) return refuse(alert, SSL_AD_INTERNAL_ERROR);
    return SSL_CLIENT_HELLO_SUCCESS;
  } catch (...) {
    return refuse(alert, SSL_AD_INTERNAL_ERROR);
  }
}

// Select http/1.1 when offered. A client offering only other protocols (only
// h2, say) gets no ALPN at all rather than a failed handshake: it then falls
// back to HTTP/1.1, which is all the terminator speaks.
int onAlpnSelect(SSL* /*ssl*/, const unsigned char** out, unsigned char* outLen, const unsigned char* in,
                 unsigned int inLen, void* /*arg*/) noexcept {
  constexpr std::string_view kWanted = kAlpnHttp11;
  size_t i = 0;
  while (i < inLen) {
    size_t n = in[i];
    if (n == 0 || n > inLen - i - 1) break;  // malformed list: stop looking
    if (n == kWanted.size() && std::memcmp(in + i + 1, kWanted.data(), n) == 0) {
      *out = in + i + 1;
      *outLen = static_cast<unsigned char>(n);
      return SSL_TLSEXT_ERR_OK;
    }
    i += 1 + n;
  }
  return SSL_TLSEXT_ERR_NOACK;
}

}  // namespace

Result<ServerContext> ServerContext::create(std::shared_ptr<const Authority> authority, Clock clock) {
  if (!authority || authority->caCert() == nullptr) return makeError("no CA for the TLS server");
  SslCtxPtr ctx(SSL_CTX_new(TLS_server_method()));
  if (!ctx) return makeError("SSL_CTX_new: {}", opensslErrors());
  SSL_CTX* c = ctx.get();
  bool ok = SSL_CTX_set_min_proto_version(c, TLS1_2_VERSION) == 1 &&
            SSL_CTX_set_max_proto_version(c, TLS1_3_VERSION) == 1 && SSL_CTX_set_cipher_list(c, kCipherList) == 1 &&
            SSL_CTX_set_ciphersuites(c, kCipherSuites) == 1 && SSL_CTX_set1_groups_list(c, kGroups) == 1 &&
            SSL_CTX_set_session_id_context(c, kSessionIdContext, sizeof kSessionIdContext - 1) == 1;
  if (!ok) return makeError("cannot configure the TLS server context: {}", opensslErrors());
  // Idle keep-alive connections give their read/write buffers back.
  SSL_CTX_set_mode(c, SSL_MODE_RELEASE_BUFFERS);
  SSL_CTX_set_options(c, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
  // Resumption both ways: the server-side session cache (TLS 1.2 session
  // ids) and tickets (on by default; keys are random per SSL_CTX).
  SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_SERVER);

  auto state = std::make_unique<State>();
  state->authority = std::move(authority);
  state->clock = clock ? std::move(clock) : Clock(&std::chrono::system_clock::now);
  state->chain.reset(sk_X509_new_null());
  if (!state->chain || sk_X509_push(state->chain.get(), state->authority->caCert()) <= 0) {
    return makeError("cannot build the certificate chain: {}", opensslErrors());
  }
  X509_up_ref(state->authority->caCert());  // now owned by the stack

  if (stateIndex() < 0 || SSL_CTX_set_ex_data(c, stateIndex(), state.get()) != 1) {
    return makeError("cannot attach state to the TLS server context: {}", opensslErrors());
  }
  State* raw = state.release();  // freed by freeState with the SSL_CTX
  SSL_CTX_set_client_hello_cb(c, onClientHello, raw);
  SSL_CTX_set_alpn_select_cb(c, onAlpnSelect, nullptr);
  return ServerContext(std::move(ctx), raw);
}

ServerContext::ServerContext(ServerContext&& other) noexcept
    : ctx_(std::move(other.ctx_)), state_(std::exchange(other.state_, nullptr)) {}

ServerContext& ServerContext::operator=(ServerContext&& other) noexcept {
  if (this != &other) {
    ctx_ = std::move(other.ctx_);
    state_ = std::exchange(other.state_, nullptr);
  }
  return *this;
}

SSL_CTX* ServerContext::share() const {
  if (!ctx_) return nullptr;
  SSL_CTX_up_ref(ctx_.get());
  return ctx_.get();
}

void ServerContext::setDefaultHost(SSL* ssl, const std::string* host) {
  SSL_set_ex_data(ssl, defaultHostIndex(), const_cast<std::string*>(host));
}

const std::string* ServerContext::selectedHost(const SSL* ssl) {
  const auto* owned = static_cast<const SharedName*>(SSL_get_ex_data(ssl, selectedHostIndex()));
  return owned != nullptr ? owned->get() : nullptr;
}

const std::string* ServerContext::matchedPattern(const SSL* ssl) {
  return static_cast<const std::string*>(SSL_get_ex_data(ssl, matchedPatternIndex()));
}

Result<std::shared_ptr<const Leaf>> ServerContext::leafFor(const std::string& host) const {
  if (state_ == nullptr) return makeError("moved-from ServerContext");
  // Normalized as the handshake path sees it; a name that does not normalize
  // matches no target and is refused (and counted) by mintLeaf.
  auto normalized = normalizeHost(host);
  return state_->leafFor(normalized ? *normalized : host);
}

ServerCounters ServerContext::counters() const {
  ServerCounters out;
  if (state_ == nullptr) return out;
  out.refusedUnknownSni = state_->refusedUnknownSni.load(std::memory_order_relaxed);
  out.refusedMissingSni = state_->refusedMissingSni.load(std::memory_order_relaxed);
  out.refusedMalformedSni = state_->refusedMalformedSni.load(std::memory_order_relaxed);
  out.leavesMinted = state_->leavesMinted.load(std::memory_order_relaxed);
  out.mintFailures = state_->mintFailures.load(std::memory_order_relaxed);
  out.evictedNames = state_->evictedNames.load(std::memory_order_relaxed);
  std::lock_guard lock(state_->mu);
  out.wildcardNames = state_->lru.size();
  out.cachedLeaves = state_->wildcardLeaves;
  for (const auto& [host, leaf] : state_->concreteLeaves) out.cachedLeaves += leaf != nullptr ? 1 : 0;
  return out;
}

}  // namespace atlasgate::tls
