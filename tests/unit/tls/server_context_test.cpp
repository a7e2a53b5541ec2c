#include "tls/server_context.h"

#include <chrono>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "tls_test_support.h"

namespace atlasgate::tls {
namespace {

using testing::alertReason;
using testing::Connection;
using testing::handshake;
using testing::makeConnection;
using testing::readPostHandshake;
using testing::TempDir;

constexpr const char* kAtlas = "cloud.mongodb.com";
constexpr const char* kDev = "cloud-dev.mongodb.com";

class ServerContextTest : public ::testing::Test {
 protected:
  virtual std::vector<std::string> configuredHosts() const { return {kAtlas, kDev}; }

  void SetUp() override {
    auto ca = Authority::loadOrCreate(tmp_.path(), configuredHosts(), tmp_.file("none"));
    ASSERT_TRUE(ca) << ca.error().message;
    authority_ = std::make_shared<const Authority>(std::move(ca).value());
    auto server = ServerContext::create(authority_, [this] { return now(); });
    ASSERT_TRUE(server) << server.error().message;
    server_ = std::make_unique<ServerContext>(std::move(server).value());
  }

  // A client that trusts only our CA, like an agent run through the launcher.
  SslCtxPtr agentContext(int minVersion = TLS1_2_VERSION, int maxVersion = 0) {
    SslCtxPtr ctx(SSL_CTX_new(TLS_client_method()));
    X509_STORE_add_cert(SSL_CTX_get_cert_store(ctx.get()), authority_->caCert());
    SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
    SSL_CTX_set_min_proto_version(ctx.get(), minVersion);
    SSL_CTX_set_max_proto_version(ctx.get(), maxVersion);
    SSL_CTX_set_session_cache_mode(ctx.get(), SSL_SESS_CACHE_CLIENT);
    return ctx;
  }

  Connection connect(SSL_CTX* clientCtx, const char* sni, const char* expectHost = nullptr) {
    Connection conn = makeConnection(clientCtx, server_->native());
    if (sni != nullptr) SSL_set_tlsext_host_name(conn.client.get(), sni);
    if (expectHost != nullptr) SSL_set1_host(conn.client.get(), expectHost);
    return conn;
  }

  TempDir tmp_;
  std::shared_ptr<const Authority> authority_;
  std::unique_ptr<ServerContext> server_;
  std::chrono::system_clock::duration skew_{};
  std::chrono::system_clock::time_point now() const { return std::chrono::system_clock::now() + skew_; }
};

TEST_F(ServerContextTest, ConfiguredSniGetsVerifiableLeaf) {
  auto client = agentContext();
  for (const char* host : {kAtlas, kDev}) {
    Connection conn = connect(client.get(), host, host);
    handshake(conn);
    ASSERT_TRUE(conn.ok()) << host << " client reason " << conn.clientSide.reason << " server reason "
                           << conn.serverSide.reason;
    EXPECT_EQ(SSL_get_verify_result(conn.client.get()), X509_V_OK);
    X509Ptr peer(SSL_get1_peer_certificate(conn.client.get()));
    ASSERT_TRUE(peer);
    EXPECT_EQ(X509_check_host(peer.get(), host, 0, 0, nullptr), 1);
    const std::string* selected = ServerContext::selectedHost(conn.server.get());
    ASSERT_NE(selected, nullptr);
    EXPECT_EQ(*selected, host);
    EXPECT_EQ(ServerContext::matchedPattern(conn.server.get()), selected) << "a concrete target matches itself";
    // The CA travels after the leaf.
    STACK_OF(X509)* chain = SSL_get_peer_cert_chain(conn.client.get());
    ASSERT_EQ(sk_X509_num(chain), 2);
    EXPECT_EQ(X509_cmp(sk_X509_value(chain, 1), authority_->caCert()), 0);
  }
  EXPECT_EQ(server_->counters().leavesMinted, 2u);
}

TEST_F(ServerContextTest, SniIsCaseInsensitive) {
  auto client = agentContext();
  Connection conn = connect(client.get(), "Cloud.MongoDB.COM", kAtlas);
  handshake(conn);
  ASSERT_TRUE(conn.ok());
  EXPECT_EQ(*ServerContext::selectedHost(conn.server.get()), kAtlas);
}

TEST_F(ServerContextTest, UnknownSniIsRefusedWithUnrecognizedName) {
  auto client = agentContext();
  Connection conn = connect(client.get(), "evil.example.com");
  handshake(conn);
  EXPECT_FALSE(conn.ok());
  EXPECT_TRUE(conn.serverSide.failed);
  EXPECT_TRUE(conn.clientSide.failed);
  EXPECT_EQ(conn.clientSide.reason, alertReason(SSL_AD_UNRECOGNIZED_NAME));
  EXPECT_EQ(ServerContext::selectedHost(conn.server.get()), nullptr);
  EXPECT_EQ(ServerContext::matchedPattern(conn.server.get()), nullptr);
  auto c = server_->counters();
  EXPECT_EQ(c.refusedUnknownSni, 1u);
  EXPECT_EQ(c.leavesMinted, 0u);

  // A sub-domain of a target is not a target.
  Connection sub = connect(client.get(), "api.cloud.mongodb.com");
  handshake(sub);
  EXPECT_FALSE(sub.ok());
  EXPECT_EQ(server_->counters().refusedUnknownSni, 2u);
}

TEST_F(ServerContextTest, MissingSniUsesDefaultHost) {
  auto client = agentContext();
  const std::string fallback = kDev;
  Connection conn = connect(client.get(), nullptr, kDev);
  ServerContext::setDefaultHost(conn.server.get(), &fallback);
  handshake(conn);
  ASSERT_TRUE(conn.ok()) << conn.clientSide.reason << " " << conn.serverSide.reason;
  const std::string* selected = ServerContext::selectedHost(conn.server.get());
  ASSERT_NE(selected, nullptr);
  EXPECT_EQ(*selected, kDev);
  EXPECT_EQ(SSL_get_verify_result(conn.client.get()), X509_V_OK);
}

TEST_F(ServerContextTest, MissingSniWithoutDefaultIsRefused) {
  auto client = agentContext();
  Connection conn = connect(client.get(), nullptr);
  handshake(conn);
  EXPECT_FALSE(conn.ok());
  EXPECT_TRUE(conn.clientSide.failed);
  EXPECT_EQ(server_->counters().refusedMissingSni, 1u);

  // A default that is not a target counts the same.
  const std::string foreign = "evil.example.com";
  Connection other = connect(client.get(), nullptr);
  ServerContext::setDefaultHost(other.server.get(), &foreign);
  handshake(other);
  EXPECT_FALSE(other.ok());
  EXPECT_EQ(server_->counters().refusedMissingSni, 2u);
}

TEST_F(ServerContextTest, AlpnPrefersHttp11) {
  auto client = agentContext();
  static const unsigned char kBoth[] = "\x02h2\x08http/1.1";
  Connection conn = connect(client.get(), kAtlas);
  ASSERT_EQ(SSL_set_alpn_protos(conn.client.get(), kBoth, sizeof kBoth - 1), 0);
  handshake(conn);
  ASSERT_TRUE(conn.ok());
  const unsigned char* proto = nullptr;
  unsigned int len = 0;
  SSL_get0_alpn_selected(conn.client.get(), &proto, &len);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(proto), len), "http/1.1");
}

TEST_F(ServerContextTest, AlpnWithoutHttp11ProceedsWithoutAlpn) {
  auto client = agentContext();
  static const unsigned char kH2Only[] = "\x02h2";
  Connection conn = connect(client.get(), kAtlas);
  ASSERT_EQ(SSL_set_alpn_protos(conn.client.get(), kH2Only, sizeof kH2Only - 1), 0);
  handshake(conn);
  ASSERT_TRUE(conn.ok()) << conn.clientSide.reason << " " << conn.serverSide.reason;
  const unsigned char* proto = nullptr;
  unsigned int len = 0;
  SSL_get0_alpn_selected(conn.client.get(), &proto, &len);
  EXPECT_EQ(len, 0u);
}

TEST_F(ServerContextTest, Tls11IsRefusedByTheServer) {
  auto client = agentContext(TLS1_1_VERSION, TLS1_1_VERSION);
  // OpenSSL 3 only lets a client *offer* TLS 1.1 at security level 0; make
  // sure the refusal we see comes from the server, not from the client.
  SSL_CTX_set_cipher_list(client.get(), "DEFAULT:@SECLEVEL=0");
  Connection conn = connect(client.get(), kAtlas);
  handshake(conn);
  EXPECT_FALSE(conn.ok());
  EXPECT_TRUE(conn.serverSide.failed);
  EXPECT_EQ(conn.serverSide.reason, SSL_R_UNSUPPORTED_PROTOCOL);
  EXPECT_EQ(conn.clientSide.reason, alertReason(SSL_AD_PROTOCOL_VERSION));
}

TEST_F(ServerContextTest, Tls12UsesEcdheOnly) {
  auto client = agentContext(TLS1_2_VERSION, TLS1_2_VERSION);
  Connection conn = connect(client.get(), kAtlas);
  handshake(conn);
  ASSERT_TRUE(conn.ok());
  std::string cipher = SSL_get_cipher_name(conn.client.get());
  EXPECT_EQ(cipher.rfind("ECDHE-ECDSA-", 0), 0u) << cipher;

  // A client offering only static-RSA key exchange finds nothing in common.
  auto rsaOnly = agentContext(TLS1_2_VERSION, TLS1_2_VERSION);
  SSL_CTX_set_cipher_list(rsaOnly.get(), "AES128-GCM-SHA256");
  Connection refused = connect(rsaOnly.get(), kAtlas);
  handshake(refused);
  EXPECT_FALSE(refused.ok());
}

TEST_F(ServerContextTest, LeafIsCachedAcrossHandshakes) {
  auto client = agentContext();
  X509Ptr first, second;
  for (X509Ptr* out : {&first, &second}) {
    Connection conn = connect(client.get(), kAtlas, kAtlas);
    handshake(conn);
    ASSERT_TRUE(conn.ok());
    out->reset(SSL_get1_peer_certificate(conn.client.get()));
  }
  EXPECT_EQ(X509_cmp(first.get(), second.get()), 0);
  EXPECT_EQ(server_->counters().leavesMinted, 1u);
}

TEST_F(ServerContextTest, LeafIsRenewedWhenAThirdOfItsLifeIsLeft) {
  auto a = server_->leafFor(kAtlas);
  ASSERT_TRUE(a) << a.error().message;
  skew_ = std::chrono::hours(15);  // 9h of 24h05m left: more than a third
  auto b = server_->leafFor(kAtlas);
  ASSERT_TRUE(b);
  EXPECT_EQ(a->get(), b->get());
  skew_ = std::chrono::hours(17);  // 7h left: less than a third
  auto c = server_->leafFor(kAtlas);
  ASSERT_TRUE(c);
  EXPECT_NE(a->get(), c->get());
  EXPECT_EQ(server_->counters().leavesMinted, 2u);
  EXPECT_FALSE(server_->leafFor("evil.example.com"));
  EXPECT_EQ(server_->counters().mintFailures, 1u);
}

struct ResumeCase {
  const char* name;
  int version;
  bool tickets;
};

class ServerResumeTest : public ServerContextTest, public ::testing::WithParamInterface<ResumeCase> {};

TEST_P(ServerResumeTest, SavedSessionIsResumed) {
  auto client = agentContext(GetParam().version, GetParam().version);
  if (!GetParam().tickets) SSL_CTX_set_options(client.get(), SSL_OP_NO_TICKET);

  Connection first = connect(client.get(), kAtlas, kAtlas);
  handshake(first);
  ASSERT_TRUE(first.ok());
  readPostHandshake(first);
  SslSessionPtr saved(SSL_get1_session(first.client.get()));
  ASSERT_TRUE(saved);
  ASSERT_EQ(SSL_SESSION_is_resumable(saved.get()), 1);
  EXPECT_EQ(SSL_session_reused(first.client.get()), 0);

  Connection second = connect(client.get(), kAtlas, kAtlas);
  ASSERT_EQ(SSL_set_session(second.client.get(), saved.get()), 1);
  handshake(second);
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(SSL_session_reused(second.client.get()), 1);
  EXPECT_EQ(SSL_session_reused(second.server.get()), 1);
  EXPECT_EQ(*ServerContext::selectedHost(second.server.get()), kAtlas);
}

INSTANTIATE_TEST_SUITE_P(Resumption, ServerResumeTest,
                         ::testing::Values(ResumeCase{"Tls13Ticket", TLS1_3_VERSION, true},
                                           ResumeCase{"Tls12Ticket", TLS1_2_VERSION, true},
                                           ResumeCase{"Tls12SessionId", TLS1_2_VERSION, false}),
                         [](const auto& info) { return std::string(info.param.name); });

TEST_F(ServerContextTest, SharedContextOutlivesServerContext) {
  SSL_CTX* shared = server_->share();
  ASSERT_NE(shared, nullptr);
  server_.reset();  // e.g. the lead handed `shared` to boost::asio::ssl::context
  auto client = agentContext();
  Connection conn = makeConnection(client.get(), shared);
  SSL_set_tlsext_host_name(conn.client.get(), kAtlas);
  handshake(conn);
  EXPECT_TRUE(conn.ok());
  conn = Connection{};
  SSL_CTX_free(shared);
}

TEST_F(ServerContextTest, MovedFromIsHarmless) {
  ServerContext moved = std::move(*server_);
  EXPECT_EQ(server_->native(), nullptr);
  EXPECT_EQ(server_->share(), nullptr);
  EXPECT_EQ(server_->counters().leavesMinted, 0u);
  EXPECT_FALSE(server_->leafFor(kAtlas));
  EXPECT_NE(moved.native(), nullptr);
}

// ------------------------------------------------------------ wildcards ----

constexpr const char* kPattern = "*.mongodb.net";

class WildcardServerTest : public ServerContextTest {
 protected:
  std::vector<std::string> configuredHosts() const override { return {kAtlas, kPattern}; }

  // The SNI, the handshake result and what the server selected.
  struct Outcome {
    bool ok = false;
    int clientReason = 0;
    std::string selected;  // "" when none
    std::string pattern;   // "" when none
  };
  Outcome attempt(SSL_CTX* client, const std::string& sni, const char* expectHost = nullptr) {
    Connection conn = connect(client, sni.c_str(), expectHost);
    handshake(conn);
    Outcome out{conn.ok(), conn.clientSide.reason, "", ""};
    if (const std::string* s = ServerContext::selectedHost(conn.server.get())) out.selected = *s;
    if (const std::string* p = ServerContext::matchedPattern(conn.server.get())) out.pattern = *p;
    return out;
  }
};

TEST_F(WildcardServerTest, NamesBelowThePatternGetTheirOwnLeaf) {
  auto client = agentContext();
  for (const char* host : {"a.mongodb.net", "a.b.mongodb.net", "cluster0-shard-00-01.x1y2z.mongodb.net"}) {
    Connection conn = connect(client.get(), host, host);
    handshake(conn);
    ASSERT_TRUE(conn.ok()) << host << " client reason " << conn.clientSide.reason;
    EXPECT_EQ(SSL_get_verify_result(conn.client.get()), X509_V_OK);
    X509Ptr peer(SSL_get1_peer_certificate(conn.client.get()));
    EXPECT_EQ(X509_check_host(peer.get(), host, 0, 0, nullptr), 1);
    const std::string* selected = ServerContext::selectedHost(conn.server.get());
    const std::string* pattern = ServerContext::matchedPattern(conn.server.get());
    ASSERT_NE(selected, nullptr);
    ASSERT_NE(pattern, nullptr);
    EXPECT_EQ(*selected, host);
    EXPECT_EQ(*pattern, kPattern);
    EXPECT_EQ(pattern, &authority_->hosts()[0]) << "the Authority's own entry";
  }
  auto c = server_->counters();
  EXPECT_EQ(c.wildcardNames, 3u);
  EXPECT_EQ(c.leavesMinted, 3u);
  EXPECT_EQ(c.cachedLeaves, 3u);

  // A concrete target next to the pattern is still itself.
  auto atlas = attempt(client.get(), kAtlas, kAtlas);
  EXPECT_TRUE(atlas.ok);
  EXPECT_EQ(atlas.selected, kAtlas);
  EXPECT_EQ(atlas.pattern, kAtlas);
  EXPECT_EQ(server_->counters().wildcardNames, 3u) << "concrete targets are not interned";
}

TEST_F(WildcardServerTest, InternedNameOutlivesTheConnection) {
  auto client = agentContext();
  const std::string* first = nullptr;
  {
    Connection conn = connect(client.get(), "a.mongodb.net", "a.mongodb.net");
    handshake(conn);
    ASSERT_TRUE(conn.ok());
    first = ServerContext::selectedHost(conn.server.get());
  }
  Connection again = connect(client.get(), "A.MongoDB.NET", "a.mongodb.net");
  handshake(again);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(ServerContext::selectedHost(again.server.get()), first) << "one interned copy per name";
  EXPECT_EQ(*first, "a.mongodb.net");
  EXPECT_EQ(server_->counters().leavesMinted, 1u) << "the leaf is cached per concrete name";
}

TEST_F(WildcardServerTest, NamesOutsideThePatternAreRefused) {
  auto client = agentContext();
  const std::vector<std::string> attacks = {
      "mongodb.net",   // the apex is not below itself
      "xmongodb.net",  // suffix without a label boundary
      "a.mongodb.net.evil.com",
      "*.mongodb.net",  // the pattern itself as an SNI
      "a.*.mongodb.net",
      "mongodb.net.",
      "a.mongodb.net..",  // two trailing dots: one is tolerated, not two
      ".mongodb.net",
      "a..mongodb.net",
      "-a.mongodb.net",
      "a_b.mongodb.net",
      std::string(64, 'a') + ".mongodb.net",  // label too long
      "api.cloud.mongodb.com",
  };
  for (const auto& sni : attacks) {
    auto out = attempt(client.get(), sni);
    EXPECT_FALSE(out.ok) << sni;
    EXPECT_EQ(out.selected, "") << sni;
    EXPECT_EQ(out.pattern, "") << sni;
  }
  auto c = server_->counters();
  EXPECT_EQ(c.leavesMinted, 0u);
  EXPECT_EQ(c.wildcardNames, 0u);
  EXPECT_EQ(c.refusedUnknownSni + c.refusedMalformedSni, attacks.size());

  // Upper case and one trailing dot are spellings of an allowed name.
  for (const char* sni : {"A.MONGODB.NET", "a.mongodb.net."}) {
    auto out = attempt(client.get(), sni, "a.mongodb.net");
    EXPECT_TRUE(out.ok) << sni;
    EXPECT_EQ(out.selected, "a.mongodb.net") << sni;
  }
}

TEST_F(WildcardServerTest, PatternIsNoDefaultHost) {
  // Without an SNI there is no concrete name to mint for.
  auto client = agentContext();
  const std::string fallback = kPattern;
  Connection conn = connect(client.get(), nullptr);
  ServerContext::setDefaultHost(conn.server.get(), &fallback);
  handshake(conn);
  EXPECT_FALSE(conn.ok());
  EXPECT_EQ(conn.clientSide.reason, alertReason(SSL_AD_UNRECOGNIZED_NAME));
  EXPECT_EQ(server_->counters().refusedMissingSni, 1u);
  EXPECT_EQ(server_->counters().leavesMinted, 0u);
}

// The security property: a flood of random names under a pattern (say, from
// one hostile agent) evicts old names instead of locking new ones out.
TEST_F(WildcardServerTest, RandomNamesEvictInsteadOfLockingOut) {
  auto client = agentContext();
  // Before the flood: a concrete target and a live connection to a name
  // under the pattern that the flood will evict from under it.
  ASSERT_TRUE(attempt(client.get(), kAtlas, kAtlas).ok);
  const std::string early = "early.mongodb.net";
  Connection live = connect(client.get(), early.c_str(), early.c_str());
  handshake(live);
  ASSERT_TRUE(live.ok());
  const std::string* liveHost = ServerContext::selectedHost(live.server.get());
  ASSERT_NE(liveHost, nullptr);

  auto fast = agentContext();
  SSL_CTX_set_verify(fast.get(), SSL_VERIFY_NONE, nullptr);  // speed: leaves are verified elsewhere
  std::mt19937_64 rng(42);
  auto randomName = [&] {
    static constexpr char kAlphabet[] = "abcdefghijklmnopqrstuvwxyz0123456789";
    std::string label;
    for (int i = 0; i < 12; ++i) label += kAlphabet[rng() % (sizeof kAlphabet - 1)];
    return label + ".mongodb.net";
  };
  std::vector<std::string> names;
  for (int i = 0; i < 5000; ++i) names.push_back(randomName());
  for (size_t i = 0; i < names.size(); ++i) {
    auto out = attempt(fast.get(), names[i]);
    ASSERT_TRUE(out.ok) << i << " " << names[i] << " client reason " << out.clientReason;
    ASSERT_EQ(out.selected, names[i]) << i;
    ASSERT_EQ(out.pattern, kPattern) << i;
  }
  auto c = server_->counters();
  const size_t distinct = names.size() + 1;  // + early
  EXPECT_EQ(c.wildcardNames, kMaxWildcardNames);
  EXPECT_EQ(c.evictedNames, distinct - kMaxWildcardNames);
  EXPECT_EQ(c.cachedLeaves, kMaxWildcardNames + 1) << "the wildcard leaves plus kAtlas's";
  EXPECT_EQ(c.leavesMinted, distinct + 1);
  EXPECT_EQ(c.refusedUnknownSni, 0u);

  // The live connection's name was evicted; it still reads its own copy
  // (ASan would flag a dangling one).
  EXPECT_EQ(ServerContext::selectedHost(live.server.get()), liveHost);
  EXPECT_EQ(*liveHost, early);
  ASSERT_NE(ServerContext::matchedPattern(live.server.get()), nullptr);
  EXPECT_EQ(*ServerContext::matchedPattern(live.server.get()), kPattern);

  // An evicted name seen again gets a new, verifiable leaf; it evicts another.
  auto again = attempt(client.get(), names[0], names[0].c_str());
  EXPECT_TRUE(again.ok) << again.clientReason;
  EXPECT_EQ(again.selected, names[0]);
  c = server_->counters();
  EXPECT_EQ(c.leavesMinted, distinct + 2);
  EXPECT_EQ(c.evictedNames, distinct + 1 - kMaxWildcardNames);
  EXPECT_EQ(c.wildcardNames, kMaxWildcardNames);

  // A recent name is still cached, and the concrete target's leaf was never evicted.
  EXPECT_TRUE(attempt(fast.get(), names.back()).ok);
  auto atlas = attempt(client.get(), kAtlas, kAtlas);
  EXPECT_TRUE(atlas.ok);
  EXPECT_EQ(atlas.selected, kAtlas);
  EXPECT_EQ(server_->counters().leavesMinted, distinct + 2) << "neither re-minted";

  // Asked directly, the leaf cache stays bounded the same way.
  EXPECT_TRUE(server_->leafFor("direct1.mongodb.net"));
  EXPECT_TRUE(server_->leafFor("direct2.mongodb.net"));
  c = server_->counters();
  EXPECT_EQ(c.wildcardNames, kMaxWildcardNames);
  EXPECT_EQ(c.cachedLeaves, kMaxWildcardNames + 1);
}

TEST_F(WildcardServerTest, EvictedNameOutlivesItsEntryOnTheSsl) {
  auto client = agentContext();
  Connection live = connect(client.get(), "a.mongodb.net", "a.mongodb.net");
  handshake(live);
  ASSERT_TRUE(live.ok());
  const std::string* before = ServerContext::selectedHost(live.server.get());
  // Evict it by asking for kMaxWildcardNames other names directly (cheaper
  // than handshakes: leafFor interns the same way).
  for (size_t i = 0; i < kMaxWildcardNames; ++i) {
    ASSERT_TRUE(server_->leafFor("n" + std::to_string(i) + ".mongodb.net")) << i;
  }
  EXPECT_EQ(server_->counters().evictedNames, 1u);
  EXPECT_EQ(ServerContext::selectedHost(live.server.get()), before);
  EXPECT_EQ(*before, "a.mongodb.net");
  EXPECT_EQ(*ServerContext::matchedPattern(live.server.get()), kPattern);

  // Seen again it is interned anew; the old SSL keeps its own copy.
  auto again = connect(client.get(), "a.mongodb.net", "a.mongodb.net");
  handshake(again);
  ASSERT_TRUE(again.ok());
  EXPECT_NE(ServerContext::selectedHost(again.server.get()), before);
  EXPECT_EQ(*ServerContext::selectedHost(again.server.get()), "a.mongodb.net");
  EXPECT_EQ(*before, "a.mongodb.net");
  live = Connection{};  // frees the last reference to the old copy
  EXPECT_EQ(*ServerContext::selectedHost(again.server.get()), "a.mongodb.net");
}

// A HelloRetryRequest runs the ClientHello callback again on the same SSL:
// the first selection's reference is released, not leaked (LeakSanitizer).
TEST_F(WildcardServerTest, HelloRetryRequestReselects) {
  auto client = agentContext(TLS1_3_VERSION, TLS1_3_VERSION);
  // A key share for P-521 only, which the server does not accept: it asks
  // for another group.
  ASSERT_EQ(SSL_CTX_set1_groups_list(client.get(), "P-521:P-256"), 1);
  Connection conn = connect(client.get(), "a.mongodb.net", "a.mongodb.net");
  testing::step(conn.client.get(), conn.clientSide);  // ClientHello
  testing::step(conn.server.get(), conn.serverSide);  // selects, then HelloRetryRequest
  ASSERT_NE(ServerContext::selectedHost(conn.server.get()), nullptr) << "the first selection is stored";
  handshake(conn);
  ASSERT_TRUE(conn.ok()) << conn.clientSide.reason << " " << conn.serverSide.reason;
  EXPECT_EQ(SSL_get_negotiated_group(conn.server.get()), NID_X9_62_prime256v1) << "so there was a retry";
  EXPECT_EQ(*ServerContext::selectedHost(conn.server.get()), "a.mongodb.net");
  EXPECT_EQ(*ServerContext::matchedPattern(conn.server.get()), kPattern);
}

}  // namespace
}  // namespace atlasgate::tls
