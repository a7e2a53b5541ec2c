#include "tls/client_context.h"

#include <memory>

#include <gtest/gtest.h>

#include "tls/server_context.h"
#include "tls_test_support.h"

namespace atlasgate::tls {
namespace {

using testing::Connection;
using testing::handshake;
using testing::makeConnection;
using testing::readPostHandshake;
using testing::TempDir;

constexpr const char* kAtlas = "cloud.mongodb.com";
constexpr const char* kDev = "cloud-dev.mongodb.com";

// Our own ServerContext plays the upstream: its leaves chain to ca.pem.
class ClientContextTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto ca = Authority::loadOrCreate(tmp_.path(), {kAtlas, kDev}, tmp_.file("none"));
    ASSERT_TRUE(ca) << ca.error().message;
    authority_ = std::make_shared<const Authority>(std::move(ca).value());
    auto server = ServerContext::create(authority_);
    ASSERT_TRUE(server) << server.error().message;
    server_ = std::make_unique<ServerContext>(std::move(server).value());
  }

  TempDir tmp_;
  std::shared_ptr<const Authority> authority_;
  std::unique_ptr<ServerContext> server_;
};

TEST_F(ClientContextTest, VerifiesOurLeafWithCaFile) {
  auto ctx = makeClientContext(authority_->paths().caCert);
  ASSERT_TRUE(ctx) << ctx.error().message;
  Connection conn = makeConnection(ctx->get(), server_->native());
  ASSERT_TRUE(prepareClientSsl(conn.client.get(), kAtlas));
  handshake(conn);
  ASSERT_TRUE(conn.ok()) << conn.clientSide.reason << " " << conn.serverSide.reason;
  EXPECT_EQ(SSL_get_verify_result(conn.client.get()), X509_V_OK);
  EXPECT_EQ(*ServerContext::selectedHost(conn.server.get()), kAtlas) << "SNI was sent";
  const unsigned char* proto = nullptr;
  unsigned int len = 0;
  SSL_get0_alpn_selected(conn.client.get(), &proto, &len);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(proto), len), "http/1.1");
  EXPECT_GE(SSL_version(conn.client.get()), TLS1_2_VERSION);
}

TEST_F(ClientContextTest, RejectsOurLeafAgainstSystemStore) {
  auto ctx = makeClientContext(std::nullopt);
  ASSERT_TRUE(ctx) << ctx.error().message;
  Connection conn = makeConnection(ctx->get(), server_->native());
  ASSERT_TRUE(prepareClientSsl(conn.client.get(), kAtlas));
  handshake(conn);
  EXPECT_FALSE(conn.ok());
  EXPECT_TRUE(conn.clientSide.failed);
  // The server sends our CA after the leaf, so OpenSSL reports the root as
  // untrusted (19); without it, the issuer as unknown (20). Either way: no.
  long result = SSL_get_verify_result(conn.client.get());
  EXPECT_TRUE(result == X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN || result == X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY)
      << result;
}

TEST_F(ClientContextTest, RejectsCertificateForAnotherHost) {
  auto ctx = makeClientContext(authority_->paths().caCert);
  ASSERT_TRUE(ctx);
  Connection conn = makeConnection(ctx->get(), server_->native());
  ASSERT_TRUE(prepareClientSsl(conn.client.get(), kAtlas));
  // The server is steered to present kDev's (valid, same-CA) leaf instead.
  SSL_set_tlsext_host_name(conn.client.get(), kDev);
  handshake(conn);
  EXPECT_FALSE(conn.ok());
  EXPECT_EQ(SSL_get_verify_result(conn.client.get()), X509_V_ERR_HOSTNAME_MISMATCH);
}

TEST_F(ClientContextTest, UnpreparedConnectionFailsClosed) {
  auto ctx = makeClientContext(authority_->paths().caCert);
  ASSERT_TRUE(ctx);
  Connection conn = makeConnection(ctx->get(), server_->native());
  SSL_set_tlsext_host_name(conn.client.get(), kAtlas);  // SNI, but no host check
  handshake(conn);
  EXPECT_FALSE(conn.ok());
  EXPECT_EQ(SSL_get_verify_result(conn.client.get()), X509_V_ERR_APPLICATION_VERIFICATION);
}

TEST_F(ClientContextTest, ResumesSessionPerHost) {
  for (int version : {TLS1_3_VERSION, TLS1_2_VERSION}) {
    SCOPED_TRACE(version == TLS1_3_VERSION ? "TLS 1.3" : "TLS 1.2");
    auto ctx = makeClientContext(authority_->paths().caCert);
    ASSERT_TRUE(ctx);
    SSL_CTX_set_max_proto_version(ctx->get(), version);
    {
      // Freed without a close_notify, as pooled connections usually are.
      Connection first = makeConnection(ctx->get(), server_->native());
      ASSERT_TRUE(prepareClientSsl(first.client.get(), kAtlas));
      handshake(first);
      ASSERT_TRUE(first.ok());
      readPostHandshake(first);  // TLS 1.3 tickets arrive after the handshake
      EXPECT_EQ(SSL_session_reused(first.client.get()), 0);
    }
    EXPECT_EQ(cachedClientSessions(ctx->get()), 1u);

    for (int i = 0; i < 2; ++i) {
      Connection again = makeConnection(ctx->get(), server_->native());
      ASSERT_TRUE(prepareClientSsl(again.client.get(), kAtlas));
      handshake(again);
      ASSERT_TRUE(again.ok());
      EXPECT_EQ(SSL_session_reused(again.client.get()), 1) << "connection " << i;
      EXPECT_EQ(SSL_get_verify_result(again.client.get()), X509_V_OK);
      readPostHandshake(again);
    }

    // Another host does not get kAtlas's session.
    Connection other = makeConnection(ctx->get(), server_->native());
    ASSERT_TRUE(prepareClientSsl(other.client.get(), kDev));
    handshake(other);
    ASSERT_TRUE(other.ok());
    EXPECT_EQ(SSL_session_reused(other.client.get()), 0);
    EXPECT_EQ(SSL_get_verify_result(other.client.get()), X509_V_OK);
    readPostHandshake(other);
    EXPECT_EQ(cachedClientSessions(ctx->get()), 2u);
  }
}

TEST_F(ClientContextTest, MissingCaFileIsAnError) {
  auto ctx = makeClientContext(tmp_.file("does-not-exist.pem"));
  EXPECT_FALSE(ctx);
}

TEST_F(ClientContextTest, PrepareRejectsBadInput) {
  auto ctx = makeClientContext(authority_->paths().caCert);
  ASSERT_TRUE(ctx);
  SslPtr ssl(SSL_new(ctx->get()));
  EXPECT_FALSE(prepareClientSsl(ssl.get(), ""));
  EXPECT_FALSE(prepareClientSsl(ssl.get(), std::string("a\0b", 3)));
  EXPECT_FALSE(prepareClientSsl(nullptr, kAtlas));
  EXPECT_TRUE(prepareClientSsl(ssl.get(), "127.0.0.1"));
  EXPECT_EQ(SSL_get_servername(ssl.get(), TLSEXT_NAMETYPE_host_name), nullptr);
}

TEST_F(ClientContextTest, ContextCanBeReleasedToAnOwner) {
  auto ctx = makeClientContext(authority_->paths().caCert);
  ASSERT_TRUE(ctx);
  SSL_CTX* raw = ctx->release();  // what boost::asio::ssl::context(SSL_CTX*) takes over
  Connection conn = makeConnection(raw, server_->native());
  ASSERT_TRUE(prepareClientSsl(conn.client.get(), kAtlas));
  handshake(conn);
  EXPECT_TRUE(conn.ok());
  conn = Connection{};
  SSL_CTX_free(raw);
}

}  // namespace
}  // namespace atlasgate::tls
