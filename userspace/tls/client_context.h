#pragma once
// The daemon's upstream TLS leg: the context used to connect to the real
// target (Atlas), and per-connection preparation.
//
//   auto ctx = tls::makeClientContext(target.upstreamCa).value();   // once per target CA
//   boost::asio::ssl::context asioCtx(ctx.release());               // asio owns it now
//   ...
//   boost::asio::ssl::stream<tcp::socket> s(io, asioCtx);
//   if (auto r = tls::prepareClientSsl(s.native_handle(), host); !r) ...
//   co_await s.async_handshake(ssl::stream_base::client, ...);
//
// Session resumption is built in: the context keeps the newest resumable
// SSL_SESSION per host (captured by a new-session callback, so TLS 1.3 tickets
// that arrive after the handshake are caught too) and prepareClientSsl offers
// it on the next connection to the same host. The caller stores nothing.
// Sessions are keyed by the SNI host; connections by IP literal (no SNI) are
// not resumed.
//
// Fail-closed: a connection on this context whose SSL was not passed through
// prepareClientSsl fails certificate verification, so a forgotten host check
// can never turn into an unauthenticated upstream.

#include <optional>
#include <string>

#include "common/result.h"
#include "tls/openssl_ptr.h"

namespace atlasgate::tls {

// TLS 1.2+, SSL_VERIFY_PEER against the system default verify paths, or only
// against `caFile` when given; ALPN http/1.1; client session cache.
Result<SslCtxPtr> makeClientContext(const std::optional<std::string>& caFile);

// Sets SNI and the host name the peer certificate must match (SSL_set1_host,
// no partial wildcards; an IP literal is matched as iPAddress and sends no
// SNI), and offers the cached session for `host` if there is one. Call before
// the handshake.
Result<void> prepareClientSsl(SSL* ssl, const std::string& host);

// How many sessions the context behind `ctx` currently keeps (for tests and
// status output).
size_t cachedClientSessions(SSL_CTX* ctx);

}  // namespace atlasgate::tls
