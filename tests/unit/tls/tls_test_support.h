#pragma once
// Shared helpers for the tls unit tests: a temporary state directory, and an
// in-memory handshake between two SSL objects joined by a BIO pair (no
// sockets, no threads).

#include <cstdlib>
#include <filesystem>
#include <string>

#include <gtest/gtest.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "tls/openssl_ptr.h"

namespace atlasgate::tls::testing {

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "ag-tls-XXXXXX").string();
    if (::mkdtemp(tmpl.data()) == nullptr) std::abort();
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

struct Side {
  bool done = false;
  bool failed = false;
  int reason = 0;  // ERR_GET_REASON of the last error when failed
};

struct Connection {
  SslPtr client;
  SslPtr server;
  Side clientSide;
  Side serverSide;
  bool ok() const { return clientSide.done && serverSide.done; }
};

inline Connection makeConnection(SSL_CTX* clientCtx, SSL_CTX* serverCtx) {
  Connection conn;
  conn.client.reset(SSL_new(clientCtx));
  conn.server.reset(SSL_new(serverCtx));
  BIO* clientBio = nullptr;
  BIO* serverBio = nullptr;
  if (!conn.client || !conn.server || BIO_new_bio_pair(&clientBio, 0, &serverBio, 0) != 1) {
    std::abort();
  }
  SSL_set_bio(conn.client.get(), clientBio, clientBio);
  SSL_set_bio(conn.server.get(), serverBio, serverBio);
  SSL_set_connect_state(conn.client.get());
  SSL_set_accept_state(conn.server.get());
  return conn;
}

inline void step(SSL* ssl, Side& side) {
  if (side.done || side.failed) return;
  ERR_clear_error();
  int r = SSL_do_handshake(ssl);
  if (r == 1) {
    side.done = true;
    return;
  }
  int e = SSL_get_error(ssl, r);
  if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return;
  side.failed = true;
  side.reason = ERR_GET_REASON(ERR_peek_last_error());
  ERR_clear_error();
}

// Alternates the two sides until both finished or both stopped making
// progress; after one side fails the other keeps going so it reads the alert.
inline void handshake(Connection& conn) {
  for (int i = 0; i < 64; ++i) {
    step(conn.client.get(), conn.clientSide);
    step(conn.server.get(), conn.serverSide);
    bool clientStopped = conn.clientSide.done || conn.clientSide.failed;
    bool serverStopped = conn.serverSide.done || conn.serverSide.failed;
    if (clientStopped && serverStopped) return;
    if (conn.serverSide.failed && i > 8) return;  // client may wait forever for data
  }
}

// Lets the client read what the server sent after the handshake (TLS 1.3
// NewSessionTicket messages), so its session becomes resumable.
inline void readPostHandshake(Connection& conn) {
  char buf[64];
  ERR_clear_error();
  SSL_read(conn.client.get(), buf, sizeof buf);
  ERR_clear_error();
}

// Received-alert reasons are SSL_AD_REASON_OFFSET + the alert code.
inline int alertReason(int alert) { return SSL_AD_REASON_OFFSET + alert; }

}  // namespace atlasgate::tls::testing
