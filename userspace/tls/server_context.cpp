#include "tls/server_context.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <span>
#include <unordered_map>
#include <unordered_set>
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

  std::mutex mu;
  std::unordered_map<std::string, std::shared_ptr<const Leaf>> leaves;  // guarded by mu
  // Concrete names admitted by a pattern. Node-based, so the pointers handed
  // to SSLs stay valid as the set grows; never shrinks. Guarded by mu.
  std::unordered_set<std::string> wildcardNames;
  std::chrono::steady_clock::time_point lastLimitWarning;  // guarded by mu
  uint64_t suppressedLimitWarnings = 0;                    // guarded by mu

  std::atomic<uint64_t> refusedUnknownSni{0};
  std::atomic<uint64_t> refusedMissingSni{0};
  std::atomic<uint64_t> refusedMalformedSni{0};
  std::atomic<uint64_t> leavesMinted{0};
  std::atomic<uint64_t> mintFailures{0};
  std::atomic<uint64_t> refusedNameLimit{0};

  struct Selection {
    const std::string* host = nullptr;   // concrete name; lives as long as this State
    const std::string* entry = nullptr;  // the Authority's host or pattern that admitted it
    bool overLimit = false;              // admitted by a pattern, but no room to remember it
  };

  // Resolves a lower-case name to stable pointers: for a configured host, the
  // Authority's own copy; for a name under a pattern, an interned copy.
  Selection findHost(std::string_view host) {
    const std::string* entry = authority->match(host);
    if (entry == nullptr) return {};
    if (!isHostPattern(*entry)) return {entry, entry};
    std::lock_guard lock(mu);
    std::string name(host);
    if (auto it = wildcardNames.find(name); it != wildcardNames.end()) return {&*it, entry};
    if (wildcardNames.size() >= kMaxWildcardNames) {
      refusedNameLimit.fetch_add(1, std::memory_order_relaxed);
      warnLimitLocked(host, *entry);
      return {nullptr, entry, true};
    }
    return {&*wildcardNames.insert(std::move(name)).first, entry};
  }

  // At most one line a minute: the agent chooses how often this happens.
  void warnLimitLocked(std::string_view host, const std::string& pattern) {
    auto now = std::chrono::steady_clock::now();
    if (lastLimitWarning != std::chrono::steady_clock::time_point{} &&
        now - lastLimitWarning < std::chrono::minutes(1)) {
      ++suppressedLimitWarnings;
      return;
    }
    lastLimitWarning = now;
    log::warn("refused TLS handshake: SNI \"{}\" under {} would exceed {} distinct names ({} more refusals not logged)",
              printableName(host), pattern, kMaxWildcardNames, std::exchange(suppressedLimitWarnings, 0));
  }

  Result<std::shared_ptr<const Leaf>> leafFor(const std::string& host) {
    std::lock_guard lock(mu);
    auto now = clock();
    auto it = leaves.find(host);
    if (it != leaves.end()) {
      const Leaf& leaf = *it->second;
      // Renew once less than a third of the lifetime is left, so an agent
      // never receives a certificate that expires in the middle of its work.
      if (leaf.notAfter - now > (leaf.notAfter - leaf.notBefore) / 3) return it->second;
    } else if (leaves.size() >= kMaxWildcardNames + authority->hosts().size()) {
      return makeError("refusing a leaf for {}: the cache already holds {} leaves", printableName(host), leaves.size());
    }
    auto minted = authority->mintLeaf(host);
    if (!minted) {
      mintFailures.fetch_add(1, std::memory_order_relaxed);
      return minted.error();
    }
    leavesMinted.fetch_add(1, std::memory_order_relaxed);
    auto leaf = std::make_shared<const Leaf>(std::move(minted).value());
    leaves[leaf->host] = leaf;
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
int selectedHostIndex() {
  static const int idx = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
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
    if (selected.host == nullptr && !selected.overLimit) {  // over the limit: findHost counted and logged it
      state.refusedUnknownSni.fetch_add(1, std::memory_order_relaxed);
      log::warn("refused TLS handshake: SNI \"{}\" is not a configured target", printableName(sni.host));
    }
    return selected.host != nullptr ? selected : State::Selection{};
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
int onClientHello(SSL* ssl, int* alert, void* arg) noexcept {
  auto* state = static_cast<State*>(arg);
  try {
    SSL_set_ex_data(ssl, selectedHostIndex(), nullptr);
    SSL_set_ex_data(ssl, matchedPatternIndex(), nullptr);
    State::Selection selected = selectTarget(ssl, *state, alert);
    if (selected.host == nullptr) return SSL_CLIENT_HELLO_ERROR;
    const std::string* host = selected.host;

    auto leaf = state->leafFor(*host);
    if (!leaf) {
      log::error("refused TLS handshake for {}: {}", printableName(*host), leaf.error().message);
      return refuse(alert, SSL_AD_INTERNAL_ERROR);
    }
    // The SSL takes its own references to the leaf, key and chain, so a later
    // renewal in the cache cannot pull them from under a live connection.
    if (SSL_use_cert_and_key(ssl, (*leaf)->cert.get(), (*leaf)->key.get(), state->chain.get(), 1) != 1) {
      log::error("refused TLS handshake for {}: cannot install the leaf: {}", printableName(*host), opensslErrors());
      return refuse(alert, SSL_AD_INTERNAL_ERROR);
    }
    SSL_set_ex_data(ssl, selectedHostIndex(), const_cast<std::string*>(host));
    SSL_set_ex_data(ssl, matchedPatternIndex(), const_cast<std::string*>(selected.entry));
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
  return static_cast<const std::string*>(SSL_get_ex_data(ssl, selectedHostIndex()));
}

const std::string* ServerContext::matchedPattern(const SSL* ssl) {
  return static_cast<const std::string*>(SSL_get_ex_data(ssl, matchedPatternIndex()));
}

Result<std::shared_ptr<const Leaf>> ServerContext::leafFor(const std::string& host) const {
  if (state_ == nullptr) return makeError("moved-from ServerContext");
  return state_->leafFor(lowerAscii(host));
}

ServerCounters ServerContext::counters() const {
  ServerCounters out;
  if (state_ == nullptr) return out;
  out.refusedUnknownSni = state_->refusedUnknownSni.load(std::memory_order_relaxed);
  out.refusedMissingSni = state_->refusedMissingSni.load(std::memory_order_relaxed);
  out.refusedMalformedSni = state_->refusedMalformedSni.load(std::memory_order_relaxed);
  out.leavesMinted = state_->leavesMinted.load(std::memory_order_relaxed);
  out.mintFailures = state_->mintFailures.load(std::memory_order_relaxed);
  out.refusedNameLimit = state_->refusedNameLimit.load(std::memory_order_relaxed);
  std::lock_guard lock(state_->mu);
  out.wildcardNames = state_->wildcardNames.size();
  out.cachedLeaves = state_->leaves.size();
  return out;
}

}  // namespace atlasgate::tls
