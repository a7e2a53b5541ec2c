// SCRAM-SHA-256 both sides (mongo/scram.h): RFC 7677's test vector from the
// client and from the server, round trips between the two, MongoDB's
// conventions (server-first attributes r, s, i in that order; a 28-byte salt
// and 15000 rounds by default), hostile and malformed messages on each side,
// an unknown user indistinguishable from a wrong password, and the salted
// password cache (one PBKDF2 per (password, salt, iterations), LRU bounded).

#include <gtest/gtest.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <regex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "mongo/scram.h"

using namespace atlasgate::mongo;

namespace {

// RFC 7677, section 3.
constexpr std::string_view kUser = "user";
constexpr std::string_view kPassword = "pencil";
constexpr std::string_view kClientNonce = "rOprNGfwEbeRWgbNEkqO";
constexpr std::string_view kServerNonce = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
constexpr std::string_view kClientFirst = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
constexpr std::string_view kSaltB64 = "W22ZaJ0SNY7soEsUEjb6gQ==";
constexpr std::string_view kServerFirst =
    "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
constexpr std::string_view kClientFinal =
    "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
constexpr std::string_view kServerFinal = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

// Independent of the implementation: OpenSSL directly.
std::string b64(std::string_view in) {
  std::string out(4 * ((in.size() + 2) / 3) + 1, '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(in.data()), static_cast<int>(in.size()));
  out.resize(n);
  return out;
}

std::string unb64(std::string_view in) {
  std::string out(in.size() / 4 * 3, '\0');
  int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(in.data()), static_cast<int>(in.size()));
  out.resize(n - std::count(in.begin(), in.end(), '='));
  return out;
}

std::string hmac(std::string_view key, std::string_view msg) {
  unsigned char md[32];
  unsigned int len = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), reinterpret_cast<const unsigned char*>(msg.data()),
       msg.size(), md, &len);
  return std::string(reinterpret_cast<char*>(md), len);
}

std::string pbkdf2(std::string_view password, std::string_view salt, int iterations) {
  unsigned char out[32];
  PKCS5_PBKDF2_HMAC(password.data(), static_cast<int>(password.size()),
                    reinterpret_cast<const unsigned char*>(salt.data()), static_cast<int>(salt.size()), iterations,
                    EVP_sha256(), sizeof out, out);
  return std::string(reinterpret_cast<char*>(out), sizeof out);
}

// A client-final message for any channel binding, computed by hand.
std::string handmadeFinal(std::string_view clientFirstBare, std::string_view serverFirst, std::string_view cbind,
                          std::string_view password) {
  std::string_view nonce = serverFirst.substr(2, serverFirst.find(',') - 2);
  std::size_t s = serverFirst.find(",s=") + 3;
  std::string salt = unb64(serverFirst.substr(s, serverFirst.find(",i=") - s));
  int iterations = std::stoi(std::string(serverFirst.substr(serverFirst.find(",i=") + 3)));
  std::string salted = pbkdf2(password, salt, iterations);
  std::string clientKey = hmac(salted, "Client Key");
  unsigned char stored[32];
  SHA256(reinterpret_cast<const unsigned char*>(clientKey.data()), clientKey.size(), stored);
  std::string withoutProof = "c=" + b64(cbind) + ",r=" + std::string(nonce);
  std::string authMessage = std::string(clientFirstBare) + "," + std::string(serverFirst) + "," + withoutProof;
  std::string sig = hmac(std::string_view(reinterpret_cast<char*>(stored), 32), authMessage);
  for (std::size_t i = 0; i < 32; ++i) sig[i] ^= clientKey[i];
  return withoutProof + ",p=" + b64(sig);
}

// A server that knows some users, their credentials derived as MongoDB stores them.
struct Users {
  SaltedPasswordCache cache;
  std::map<std::string, ScramCredential, std::less<>> creds;
  void add(std::string_view user, std::string_view password, std::string_view salt = "0123456789abcdefghijklmnopqr",
           std::uint32_t iterations = 4096) {
    creds[std::string(user)] = ScramCredential::derive(password, salt, iterations, cache);
  }
  ScramServer::Lookup lookup() {
    return [this](std::string_view u) -> std::optional<ScramCredential> {
      auto it = creds.find(u);
      if (it == creds.end()) return std::nullopt;
      return it->second;
    };
  }
};

std::string errorOf(const atlasgate::Result<std::string>& r) { return r ? std::string() : r.error().message; }

// The whole conversation; the server's refusal message, or "" when both sides succeed.
std::string converse(Users& users, std::string_view user, std::string_view password) {
  SaltedPasswordCache cache;
  ScramClient client{std::string(user), std::string(password), cache};
  ScramServer server{users.lookup()};
  auto sf = server.first(client.first());
  if (!sf) return "first: " + sf.error().message;
  auto cf = client.final(*sf);
  if (!cf) return "client: " + cf.error().message;
  auto fin = server.final(*cf);
  if (!fin) return fin.error().message;
  auto ok = client.verify(*fin);
  if (!ok) return "verify: " + ok.error().message;
  EXPECT_TRUE(server.done());
  EXPECT_EQ(server.username(), user);
  return "";
}

std::string clientFinalFor(std::string_view serverFirst) {
  SaltedPasswordCache cache;
  ScramClient client{std::string(kUser), std::string(kPassword), cache, std::string(kClientNonce)};
  return errorOf(client.final(serverFirst));
}

}  // namespace

// ---- RFC 7677 ----

TEST(ScramRfc7677, Client) {
  SaltedPasswordCache cache;
  ScramClient client{std::string(kUser), std::string(kPassword), cache, std::string(kClientNonce)};
  EXPECT_EQ(client.first(), kClientFirst);
  auto fin = client.final(kServerFirst);
  ASSERT_TRUE(fin) << fin.error().message;
  EXPECT_EQ(*fin, kClientFinal);
  EXPECT_TRUE(client.verify(kServerFinal));
}

TEST(ScramRfc7677, Server) {
  Users users;
  users.add(kUser, kPassword, unb64(kSaltB64), 4096);
  ScramServer server{users.lookup(), std::string(kServerNonce)};
  auto sf = server.first(kClientFirst);
  ASSERT_TRUE(sf) << sf.error().message;
  EXPECT_EQ(*sf, kServerFirst);
  EXPECT_FALSE(server.done());
  auto fin = server.final(kClientFinal);
  ASSERT_TRUE(fin) << fin.error().message;
  EXPECT_EQ(*fin, kServerFinal);
  EXPECT_TRUE(server.done());
  EXPECT_EQ(server.username(), "user");
}

TEST(ScramRfc7677, CredentialMatchesDefinitions) {
  SaltedPasswordCache cache;
  std::string salt = unb64(kSaltB64);
  auto c = ScramCredential::derive(kPassword, salt, 4096, cache);
  std::string salted = pbkdf2(kPassword, salt, 4096);
  std::string clientKey = hmac(salted, "Client Key");
  unsigned char stored[32];
  SHA256(reinterpret_cast<const unsigned char*>(clientKey.data()), clientKey.size(), stored);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(c.storedKey.data()), 32),
            std::string(reinterpret_cast<char*>(stored), 32));
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(c.serverKey.data()), 32), hmac(salted, "Server Key"));
  EXPECT_EQ(c.salt, salt);
  EXPECT_EQ(c.iterations, 4096u);
}

// ---- MongoDB's conventions ----

TEST(ScramMongo, ServerFirstIsRSIInOrder) {
  Users users;
  users.add("alice", "secret-1");
  for (std::string_view user : {"alice", "nobody"}) {
    ScramServer server{users.lookup()};
    auto sf = server.first("n,,n=" + std::string(user) + ",r=abcdefgh");
    ASSERT_TRUE(sf) << sf.error().message;
    EXPECT_TRUE(std::regex_match(*sf, std::regex(R"(r=abcdefgh[!-+\--~]{20,},s=[A-Za-z0-9+/]+=*,i=[0-9]+)"))) << *sf;
  }
}

TEST(ScramMongo, UnknownUserLooksLikeMongoDefaults) {
  Users users;
  ScramServer server{users.lookup()};
  auto sf = server.first("n,,n=nobody,r=abcdefgh");
  ASSERT_TRUE(sf);
  std::size_t s = sf->find(",s=") + 3;
  EXPECT_EQ(unb64(std::string_view(*sf).substr(s, sf->find(",i=") - s)).size(), 28u);
  EXPECT_TRUE(sf->ends_with(",i=15000"));
}

TEST(ScramMongo, DefaultNoncesAreRandomBase64) {
  SaltedPasswordCache cache;
  ScramClient a{"u", "p", cache}, b{"u", "p", cache};
  EXPECT_NE(a.first(), b.first());
  EXPECT_TRUE(std::regex_match(a.first(), std::regex(R"(n,,n=u,r=[A-Za-z0-9+/]{32})"))) << a.first();
}

// ---- round trips ----

TEST(ScramRoundTrip, Succeeds) {
  Users users;
  users.add("alice", "correct horse battery staple");
  EXPECT_EQ(converse(users, "alice", "correct horse battery staple"), "");
}

TEST(ScramRoundTrip, Atlas15000Rounds) {
  Users users;
  users.add("alice", "pw", "some-salt-bytes-28-long-ab", 15000);
  EXPECT_EQ(converse(users, "alice", "pw"), "");
}

TEST(ScramRoundTrip, UsernameWithCommaAndEquals) {
  Users users;
  users.add("a,b=c", "pw");
  SaltedPasswordCache cache;
  ScramClient client{"a,b=c", "pw", cache, "nonce"};
  EXPECT_EQ(client.first(), "n,,n=a=2Cb=3Dc,r=nonce");
  EXPECT_EQ(converse(users, "a,b=c", "pw"), "");
}

TEST(ScramRoundTrip, YesFlagWithItsBinding) {
  // "y,,": the client could bind but thinks we cannot; c= must then be base64("y,,").
  Users users;
  users.add("alice", "pw");
  ScramServer server{users.lookup()};
  auto sf = server.first("y,,n=alice,r=cnonce");
  ASSERT_TRUE(sf) << sf.error().message;
  auto fin = server.final(handmadeFinal("n=alice,r=cnonce", *sf, "y,,", "pw"));
  EXPECT_TRUE(fin) << fin.error().message;
  EXPECT_TRUE(server.done());
}

TEST(ScramRoundTrip, WrongPasswordFails) {
  Users users;
  users.add("alice", "right");
  std::string err = converse(users, "alice", "wrong-password");
  EXPECT_NE(err, "");
  EXPECT_EQ(err.find("wrong-password"), std::string::npos);
}

TEST(ScramRoundTrip, UnknownUserFailsTheSameWay) {
  Users users;
  users.add("alice", "right");
  std::string wrong = converse(users, "alice", "wrong");
  std::string unknown = converse(users, "mallory", "wrong");
  EXPECT_NE(unknown, "");
  EXPECT_EQ(unknown, wrong);
}

TEST(ScramRoundTrip, UnknownUserSaltIsStable) {
  Users users;
  auto saltOf = [&](std::string_view user) {
    ScramServer server{users.lookup()};
    auto sf = server.first("n,,n=" + std::string(user) + ",r=abc");
    EXPECT_TRUE(sf);
    return sf ? sf->substr(sf->find(",s=")) : std::string();
  };
  EXPECT_EQ(saltOf("ghost"), saltOf("ghost"));
  EXPECT_NE(saltOf("ghost"), saltOf("phantom"));
}

TEST(ScramRoundTrip, ErrorsNeverCarryTheProof) {
  Users users;
  users.add("alice", "right");
  SaltedPasswordCache cache;
  ScramClient client{"alice", "wrong", cache};
  ScramServer server{users.lookup()};
  auto sf = server.first(client.first());
  ASSERT_TRUE(sf);
  auto cf = client.final(*sf);
  ASSERT_TRUE(cf);
  std::string proof = cf->substr(cf->find(",p=") + 3);
  auto fin = server.final(*cf);
  ASSERT_FALSE(fin);
  EXPECT_EQ(fin.error().message.find(proof), std::string::npos);
}

// ---- the server refuses ----

TEST(ScramServerRefuses, TamperedNonce) {
  Users users;
  users.add("alice", "pw");
  SaltedPasswordCache cache;
  ScramClient client{"alice", "pw", cache};
  ScramServer server{users.lookup()};
  auto sf = server.first(client.first());
  ASSERT_TRUE(sf);
  auto cf = client.final(*sf);
  ASSERT_TRUE(cf);
  std::string tampered = *cf;
  std::size_t p = tampered.find(",p=");
  tampered[p - 1] = tampered[p - 1] == 'x' ? 'y' : 'x';
  EXPECT_FALSE(server.final(tampered));
}

TEST(ScramServerRefuses, TruncatedNonce) {
  Users users;
  users.add("alice", "pw");
  ScramServer server{users.lookup()};
  auto sf = server.first("n,,n=alice,r=cnonce");
  ASSERT_TRUE(sf);
  // The client's own nonce only: a replay of another conversation's proof
  // would need the server's part too.
  std::string fin = handmadeFinal("n=alice,r=cnonce", "r=cnonce" + sf->substr(sf->find(',')), "n,,", "pw");
  EXPECT_FALSE(server.final(fin));
}

TEST(ScramServerRefuses, ChannelBindingMismatch) {
  Users users;
  users.add("alice", "pw");
  for (auto [header, cbind] : {std::pair{"n,,", "y,,"}, std::pair{"y,,", "n,,"}, std::pair{"n,,", "n,,x"}}) {
    ScramServer server{users.lookup()};
    auto sf = server.first(std::string(header) + "n=alice,r=cnonce");
    ASSERT_TRUE(sf);
    auto fin = server.final(handmadeFinal("n=alice,r=cnonce", *sf, cbind, "pw"));
    ASSERT_FALSE(fin) << header << " " << cbind;
    EXPECT_NE(fin.error().message.find("channel binding"), std::string::npos);
  }
}

TEST(ScramServerRefuses, TamperedProofAndNoSecondTry) {
  Users users;
  users.add(kUser, kPassword, unb64(kSaltB64), 4096);
  ScramServer server{users.lookup(), std::string(kServerNonce)};
  ASSERT_TRUE(server.first(kClientFirst));
  std::string bad(kClientFinal);
  bad[bad.size() - 5] = bad[bad.size() - 5] == 'A' ? 'B' : 'A';
  EXPECT_FALSE(server.final(bad));
  EXPECT_FALSE(server.done());
  EXPECT_FALSE(server.final(kClientFinal));  // one attempt per conversation
  EXPECT_FALSE(server.done());
}

TEST(ScramServerRefuses, MalformedProof) {
  Users users;
  users.add(kUser, kPassword, unb64(kSaltB64), 4096);
  std::string base = "c=biws,r=" + std::string(kClientNonce) + std::string(kServerNonce);
  for (std::string p : {",p=", ",p=AAAA", ",p=not base64!", ",q=x", ""}) {
    ScramServer server{users.lookup(), std::string(kServerNonce)};
    ASSERT_TRUE(server.first(kClientFirst));
    EXPECT_FALSE(server.final(base + p)) << p;
  }
}

TEST(ScramServerRefuses, ClientFirstMalformed) {
  Users users;
  for (std::string_view msg :
       {"p=tls-unique,,n=u,r=abc",  // channel binding
        "n,a=admin,n=u,r=abc",      // authzid
        "x,,n=u,r=abc", "n,n=u,r=abc", "n,,", "n,,n=u", "n,,r=abc,n=u", "n,,n=,r=abc", "n,,n=u,r=", "n,,n=u,r=a b",
        "n,,n=u,r=a\x01", "n,,m=ext,n=u,r=abc", "n,,n=a=2Db,r=abc", "n,,n=a=,r=abc", "n,,n=a=2,r=abc",
        "n,,n=a\nb,r=abc", "n,,n=u,,r=abc", "", "n,,n=u,r=abc,"}) {
    ScramServer server{users.lookup()};
    EXPECT_FALSE(server.first(msg)) << msg;
  }
}

TEST(ScramServerRefuses, SpecificReasons) {
  Users users;
  auto err = [&](std::string_view msg) {
    ScramServer server{users.lookup()};
    return errorOf(server.first(msg));
  };
  EXPECT_NE(err("p=tls-unique,,n=u,r=abc").find("channel binding"), std::string::npos);
  EXPECT_NE(err("n,a=admin,n=u,r=abc").find("authorization identity"), std::string::npos);
  EXPECT_NE(err("n,,m=ext,n=u,r=abc").find("mandatory extension"), std::string::npos);
}

TEST(ScramServerRefuses, OversizeMessages) {
  Users users;
  users.add("alice", "pw");
  std::string longNonce(4096, 'x');
  ScramServer big{users.lookup()};
  auto r = big.first("n,,n=alice,r=" + longNonce);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("4096"), std::string::npos);

  ScramServer server{users.lookup()};
  ASSERT_TRUE(server.first("n,,n=alice,r=abc"));
  EXPECT_FALSE(server.final("c=biws,r=abc,p=" + std::string(5000, 'A')));
}

TEST(ScramServerRefuses, UsernameBounds) {
  Users users;
  ScramServer ok{users.lookup()};
  EXPECT_TRUE(ok.first("n,,n=" + std::string(512, 'u') + ",r=abc"));
  ScramServer tooLong{users.lookup()};
  EXPECT_FALSE(tooLong.first("n,,n=" + std::string(513, 'u') + ",r=abc"));
  // The bound is on the name, not its escaped form.
  ScramServer escaped{users.lookup()};
  std::string name;
  for (int i = 0; i < 512; ++i) name += "=2C";
  auto r = escaped.first("n,,n=" + name + ",r=abc");
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(escaped.username(), std::string(512, ','));
}

TEST(ScramServerRefuses, OutOfOrder) {
  Users users;
  users.add(kUser, kPassword, unb64(kSaltB64), 4096);
  ScramServer notStarted{users.lookup()};
  EXPECT_FALSE(notStarted.final(kClientFinal));
  ScramServer twice{users.lookup(), std::string(kServerNonce)};
  ASSERT_TRUE(twice.first(kClientFirst));
  EXPECT_FALSE(twice.first(kClientFirst));
  ScramServer afterRefusal{users.lookup()};
  EXPECT_FALSE(afterRefusal.first("n,,n=u"));
  EXPECT_FALSE(afterRefusal.first(kClientFirst));
  ScramServer done{users.lookup(), std::string(kServerNonce)};
  ASSERT_TRUE(done.first(kClientFirst));
  ASSERT_TRUE(done.final(kClientFinal));
  EXPECT_FALSE(done.final(kClientFinal));
}

// ---- the client refuses ----

TEST(ScramClientRefuses, ServerNonceMustExtendOurs) {
  EXPECT_NE(clientFinalFor("r=XOprNGfwEbeRWgbNEkqO%hvYD,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096").find("nonce"),
            std::string::npos);
  EXPECT_NE(clientFinalFor("r=rOprNGfwEbeRWgbNEkqO,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"), "");  // not longer
  EXPECT_NE(clientFinalFor("r=rOprNGfwEbe,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"), "");
  EXPECT_NE(clientFinalFor("r=rOprNGfwEbeRWgbNEkqO\x7f,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"), "");
}

TEST(ScramClientRefuses, IterationCount) {
  auto with = [](std::string_view i) {
    return "r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=" + std::string(i);
  };
  for (std::string_view i : {"4095", "1000001", "0", "-4096", "+4096", "4096x", "", "99999999999", "4096.0", " 4096"}) {
    std::string err = clientFinalFor(with(i));
    EXPECT_NE(err.find("iteration"), std::string::npos) << i << ": " << err;
  }
  EXPECT_EQ(clientFinalFor(with("4096")), "");
}

TEST(ScramClientRefuses, Salt) {
  auto with = [](std::string_view s) { return "r=rOprNGfwEbeRWgbNEkqOxyz,s=" + std::string(s) + ",i=4096"; };
  for (std::string_view s : {"", "W22ZaJ0SNY7soEsUEjb6gQ=", "W22ZaJ0SNY7soEsUEjb6gQ",
                             "W22ZaJ0SNY7so!sUEjb6gQ==", "W22ZaJ0SNY7soEsUEjb6gR==", "W22ZaJ0SNY7soEsUEjb6g===",
                             "W22Z aJ0SNY7soEsUEjb6gQ==", "=W22ZaJ0SNY7soEsUEjb6gQ=", "W2=ZaJ0SNY7soEsUEjb6gQ=="}) {
    std::string err = clientFinalFor(with(s));
    EXPECT_NE(err.find("salt"), std::string::npos) << s << ": " << err;
  }
}

TEST(ScramClientRefuses, AttributeOrderAndShape) {
  for (std::string_view sf : {"s=W22ZaJ0SNY7soEsUEjb6gQ==,r=rOprNGfwEbeRWgbNEkqOxyz,i=4096",
                              "r=rOprNGfwEbeRWgbNEkqOxyz,i=4096,s=W22ZaJ0SNY7soEsUEjb6gQ==",
                              "r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==", "r=rOprNGfwEbeRWgbNEkqOxyz",
                              "r=rOprNGfwEbeRWgbNEkqOxyz,,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", "garbage", ",",
                              "r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,"}) {
    EXPECT_NE(clientFinalFor(sf), "") << sf;
  }
  // Optional extensions after i= are allowed (RFC 5802), and ignored.
  EXPECT_EQ(clientFinalFor("r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,x=ext"), "");
}

TEST(ScramClientRefuses, MandatoryExtension) {
  std::string err = clientFinalFor("m=ext,r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096");
  EXPECT_NE(err.find("mandatory extension"), std::string::npos) << err;
}

TEST(ScramClientRefuses, ServerErrorIsReportedSanitized) {
  EXPECT_NE(clientFinalFor("e=unknown-user").find("unknown-user"), std::string::npos);
  std::string err = clientFinalFor("e=bad\x1b[31mthing\n" + std::string(1000, 'z'));
  EXPECT_EQ(err.find('\x1b'), std::string::npos);
  EXPECT_EQ(err.find('\n'), std::string::npos);
  EXPECT_NE(err.find("bad?[31mthing?"), std::string::npos) << err;
  EXPECT_LT(err.size(), 400u);
}

TEST(ScramClientRefuses, Oversize) {
  std::string sf = "r=rOprNGfwEbeRWgbNEkqO" + std::string(4100, 'x') + ",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
  EXPECT_NE(clientFinalFor(sf).find("4096"), std::string::npos);
  SaltedPasswordCache cache;
  ScramClient longName{std::string(513, 'u'), "pw", cache, std::string(kClientNonce)};
  EXPECT_NE(errorOf(longName.final(kServerFirst)).find("username"), std::string::npos);
}

TEST(ScramClientRefuses, BadPassword) {
  SaltedPasswordCache cache;
  ScramClient client{"user", "p\xc3\xa9ncil", cache, std::string(kClientNonce)};
  std::string err = errorOf(client.final(kServerFirst));
  EXPECT_NE(err.find("printable ASCII"), std::string::npos);
  EXPECT_EQ(err.find("p\xc3\xa9ncil"), std::string::npos);
}

TEST(ScramClientRefuses, WrongServerSignature) {
  SaltedPasswordCache cache;
  ScramClient client{std::string(kUser), std::string(kPassword), cache, std::string(kClientNonce)};
  EXPECT_FALSE(client.verify(kServerFinal));  // before final()
  ASSERT_TRUE(client.final(kServerFirst));
  for (std::string_view v : {"v=7rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=", "v=", "v=6rriTRBi23WpRR", "v=not base64",
                             "x=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=", ""}) {
    EXPECT_FALSE(client.verify(v)) << v;
  }
  auto e = client.verify("e=invalid-proof");
  ASSERT_FALSE(e);
  EXPECT_NE(e.error().message.find("invalid-proof"), std::string::npos);
  EXPECT_TRUE(client.verify(kServerFinal));
}

TEST(ScramClientRefuses, FinalTwice) {
  SaltedPasswordCache cache;
  ScramClient client{std::string(kUser), std::string(kPassword), cache, std::string(kClientNonce)};
  ASSERT_TRUE(client.final(kServerFirst));
  EXPECT_FALSE(client.final(kServerFirst));
}

// ---- checkPassword ----

TEST(ScramPassword, PrintableAsciiOnly) {
  EXPECT_TRUE(checkPassword("pencil"));
  EXPECT_TRUE(checkPassword(" ~!"));
  EXPECT_TRUE(checkPassword(std::string(1024, 'a')));
  EXPECT_FALSE(checkPassword(""));
  EXPECT_FALSE(checkPassword(std::string(1025, 'a')));
  EXPECT_FALSE(checkPassword("tab\there"));
  EXPECT_FALSE(checkPassword("del\x7f"));
  EXPECT_FALSE(checkPassword("caf\xc3\xa9"));
  EXPECT_FALSE(checkPassword(std::string("nul\0x", 5)));
}

// ---- SaltedPasswordCache ----

TEST(ScramCache, DerivesOncePerPasswordSaltIterations) {
  SaltedPasswordCache cache;
  Key32 a = cache.get("pw", "salt", 4096);
  EXPECT_EQ(cache.derivations(), 1u);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(a.data()), 32), pbkdf2("pw", "salt", 4096));
  EXPECT_EQ(cache.get("pw", "salt", 4096), a);
  EXPECT_EQ(cache.derivations(), 1u);
  cache.get("pw2", "salt", 4096);
  cache.get("pw", "salt2", 4096);
  cache.get("pw", "salt", 4097);
  EXPECT_EQ(cache.derivations(), 4u);
  // Length prefixes: ("ab", "c") and ("a", "bc") are different entries.
  cache.get("ab", "c", 4096);
  cache.get("a", "bc", 4096);
  EXPECT_EQ(cache.derivations(), 6u);
}

TEST(ScramCache, ConnectionsShareTheDerivation) {
  SaltedPasswordCache cache;
  for (int i = 0; i < 3; ++i) {
    ScramClient client{std::string(kUser), std::string(kPassword), cache, std::string(kClientNonce)};
    auto fin = client.final(kServerFirst);
    ASSERT_TRUE(fin);
    EXPECT_EQ(*fin, kClientFinal);
  }
  EXPECT_EQ(cache.derivations(), 1u);
}

TEST(ScramCache, LeastRecentlyUsedIsEvicted) {
  SaltedPasswordCache cache(2);
  cache.get("a", "s", 4096);
  cache.get("b", "s", 4096);
  cache.get("a", "s", 4096);  // a is now the newest
  EXPECT_EQ(cache.derivations(), 2u);
  cache.get("c", "s", 4096);  // evicts b
  EXPECT_EQ(cache.derivations(), 3u);
  cache.get("a", "s", 4096);
  cache.get("c", "s", 4096);
  EXPECT_EQ(cache.derivations(), 3u);
  cache.get("b", "s", 4096);
  EXPECT_EQ(cache.derivations(), 4u);
}

TEST(ScramCache, ZeroCapacityCachesNothing) {
  SaltedPasswordCache cache(0);
  Key32 a = cache.get("a", "s", 4096);
  EXPECT_EQ(cache.get("a", "s", 4096), a);
  EXPECT_EQ(cache.derivations(), 2u);
}

TEST(ScramCache, ThreadSafe) {
  SaltedPasswordCache cache(4);
  const Key32 expected = SaltedPasswordCache(1).get("pw", "salt", 4096);
  std::vector<std::thread> threads;
  std::atomic<int> mismatches{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 20; ++i) {
        if (cache.get("pw", "salt", 4096) != expected) ++mismatches;
        cache.get("other" + std::to_string((t + i) % 6), "salt", 4096);
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(mismatches.load(), 0);
}
