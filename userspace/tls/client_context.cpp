#include "tls/client_context.h"

#include <arpa/inet.h>

#include <ctime>
#include <mutex>
#include <unordered_map>

#include <openssl/err.h>
#include <openssl/x509_vfy.h>

namespace atlasgate::tls {

namespace {

constexpr unsigned char kAlpnProtos[] = "\x08http/1.1";
// More than enough for the handful of configured targets; a bound all the same.
constexpr size_t kMaxSessions = 256;

// Newest resumable session per host. Lives in the SSL_CTX's ex_data.
struct SessionStore {
  std::mutex mu;
  std::unordered_map<std::string, SslSessionPtr> byHost;  // guarded by mu
};

void freeStore(void* /*parent*/, void* ptr, CRYPTO_EX_DATA* /*ad*/, int /*idx*/, long /*argl*/, void* /*argp*/) {
  delete static_cast<SessionStore*>(ptr);
}

int storeIndex() {
  static const int idx = SSL_CTX_get_ex_new_index(0, nullptr, nullptr, nullptr, freeStore);
  return idx;
}

// Marks an SSL that went through prepareClientSsl; the value is never read.
int preparedIndex() {
  static const int idx = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return idx;
}
char kPreparedMarker;

SessionStore* storeOf(SSL_CTX* ctx) {
  return ctx ? static_cast<SessionStore*>(SSL_CTX_get_ex_data(ctx, storeIndex())) : nullptr;
}

bool isIpLiteral(const std::string& host) {
  unsigned char buf[16];
  return inet_pton(AF_INET, host.c_str(), buf) == 1 || inet_pton(AF_INET6, host.c_str(), buf) == 1;
}

// Called for every new session the client learns: at the end of a TLS 1.2
// handshake, and for each TLS 1.3 NewSessionTicket (after the handshake).
//
// We keep a copy, not the session itself: OpenSSL marks a connection's
// session non-resumable when the SSL is freed without a close_notify having
// been sent, which is how pooled upstream connections usually end (peer
// closed an idle keep-alive, deadline, cancellation). Since TLS 1.1 a missing
// close_notify no longer forbids resumption (RFC 4346 7.2.1), so the copy
// stays usable; a stale one only costs a full handshake.
int onNewSession(SSL* ssl, SSL_SESSION* session) noexcept {
  try {
    SessionStore* store = storeOf(SSL_get_SSL_CTX(ssl));
    const char* host = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    if (store == nullptr || host == nullptr || SSL_get_ex_data(ssl, preparedIndex()) == nullptr ||
        SSL_SESSION_is_resumable(session) != 1) {
      return 0;
    }
    SslSessionPtr copy(SSL_SESSION_dup(session));
    if (!copy) return 0;
    std::lock_guard lock(store->mu);
    auto it = store->byHost.find(host);
    if (it == store->byHost.end()) {
      if (store->byHost.size() >= kMaxSessions) store->byHost.erase(store->byHost.begin());
      store->byHost.emplace(host, std::move(copy));
    } else {
      it->second = std::move(copy);
    }
    return 0;  // the reference OpenSSL passed us stays OpenSSL's
  } catch (...) {
    return 0;
  }
}

// Fail closed when the caller forgot prepareClientSsl: without it there is no
// host name to check, and a valid chain for *any* name would be accepted.
int onVerify(int preverifyOk, X509_STORE_CTX* storeCtx) noexcept {
  if (preverifyOk != 1) return 0;
  if (X509_STORE_CTX_get_error_depth(storeCtx) != 0) return 1;
  auto* ssl = static_cast<SSL*>(X509_STORE_CTX_get_ex_data(storeCtx, SSL_get_ex_data_X509_STORE_CTX_idx()));
  if (ssl != nullptr && SSL_get_ex_data(ssl, preparedIndex()) != nullptr) return 1;
  X509_STORE_CTX_set_error(storeCtx, X509_V_ERR_APPLICATION_VERIFICATION);
  return 0;
}

}  // namespace

Result<SslCtxPtr> makeClientContext(const std::optional<std::string>& caFile) {
  SslCtxPtr ctx(SSL_CTX_new(TLS_client_method()));
  if (!ctx) return makeError("SSL_CTX_new: {}", opensslErrors());
  SSL_CTX* c = ctx.get();
  if (SSL_CTX_set_min_proto_version(c, TLS1_2_VERSION) != 1) {
    return makeError("cannot set the minimum TLS version: {}", opensslErrors());
  }
  SSL_CTX_set_options(c, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
  // An idle pooled connection gives its record buffers back (as agent-side
  // connections do): the pool keeps connections open for minutes.
  SSL_CTX_set_mode(c, SSL_MODE_RELEASE_BUFFERS);
  if (caFile) {
    // Only this file: the system store is not consulted at all.
    if (SSL_CTX_load_verify_locations(c, caFile->c_str(), nullptr) != 1) {
      return makeError("cannot load upstream CA file {}: {}", *caFile, opensslErrors());
    }
  } else if (SSL_CTX_set_default_verify_paths(c) != 1) {
    return makeError("cannot load the system trust store: {}", opensslErrors());
  }
  SSL_CTX_set_verify(c, SSL_VERIFY_PEER, onVerify);
  if (SSL_CTX_set_alpn_protos(c, kAlpnProtos, sizeof kAlpnProtos - 1) != 0) {  // 0 is success
    return makeError("cannot set ALPN: {}", opensslErrors());
  }

  // OpenSSL's internal client cache cannot be looked up by host, so keep only
  // our own per-host store (fed by the new-session callback).
  SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
  auto store = std::make_unique<SessionStore>();
  if (storeIndex() < 0 || SSL_CTX_set_ex_data(c, storeIndex(), store.get()) != 1) {
    return makeError("cannot attach the session store: {}", opensslErrors());
  }
  store.release();  // freed by freeStore with the SSL_CTX
  SSL_CTX_sess_set_new_cb(c, onNewSession);
  return ctx;
}

Result<void> prepareClientSsl(SSL* ssl, const std::string& host) {
  if (ssl == nullptr) return makeError("prepareClientSsl: no SSL");
  if (host.empty() || host.size() > 253 || host.find('\0') != std::string::npos) {
    return makeError("invalid upstream host \"{}\"", host);
  }
  if (isIpLiteral(host)) {
    if (X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host.c_str()) != 1) {
      return makeError("cannot set the expected IP {}: {}", host, opensslErrors());
    }
  } else {
    SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    if (SSL_set_tlsext_host_name(ssl, host.c_str()) != 1 || SSL_set1_host(ssl, host.c_str()) != 1) {
      return makeError("cannot set the upstream host {}: {}", host, opensslErrors());
    }
  }
  if (SSL_set_ex_data(ssl, preparedIndex(), &kPreparedMarker) != 1) {
    return makeError("cannot mark the SSL as prepared: {}", opensslErrors());
  }

  if (SessionStore* store = storeOf(SSL_get_SSL_CTX(ssl))) {
    std::lock_guard lock(store->mu);
    auto it = store->byHost.find(host);
    if (it != store->byHost.end()) {
      SSL_SESSION* s = it->second.get();
      long expires = static_cast<long>(SSL_SESSION_get_time(s)) + SSL_SESSION_get_timeout(s);
      if (SSL_SESSION_is_resumable(s) == 1 && std::time(nullptr) < expires) {
        // Each connection gets its own copy, for the reason given at
        // onNewSession: freeing a TLS 1.2 connection that resumed it would
        // otherwise mark the stored session non-resumable. If the server no
        // longer accepts it the handshake falls back to a full one.
        SslSessionPtr copy(SSL_SESSION_dup(s));
        if (copy) (void)SSL_set_session(ssl, copy.get());
      } else {
        store->byHost.erase(it);
      }
    }
  }
  return {};
}

size_t cachedClientSessions(SSL_CTX* ctx) {
  SessionStore* store = storeOf(ctx);
  if (store == nullptr) return 0;
  std::lock_guard lock(store->mu);
  return store->byHost.size();
}

}  // namespace atlasgate::tls
