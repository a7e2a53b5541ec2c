#include "tls/authority.h"

#include <sys/stat.h>

#include <chrono>
#include <fstream>
#include <sstream>

#include <gtest/gtest.h>
#include <openssl/pem.h>

#include "tls_test_support.h"

namespace atlasgate::tls {
namespace {

using testing::TempDir;

const std::vector<std::string> kHosts = {"cloud.mongodb.com"};

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

mode_t modeOf(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return st.st_mode & 07777;
}

X509Ptr readCert(const std::string& path) {
  BioPtr bio(BIO_new_file(path.c_str(), "r"));
  return X509Ptr(bio ? PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr) : nullptr);
}

EvpPkeyPtr readKey(const std::string& path) {
  BioPtr bio(BIO_new_file(path.c_str(), "r"));
  return EvpPkeyPtr(bio ? PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr) : nullptr);
}

std::vector<std::string> permitted(X509* cert) {
  int crit = -1;
  NameConstraintsPtr nc(static_cast<NAME_CONSTRAINTS*>(X509_get_ext_d2i(cert, NID_name_constraints, &crit, nullptr)));
  std::vector<std::string> out;
  EXPECT_TRUE(nc);
  EXPECT_EQ(crit, 1) << "nameConstraints must be critical";
  if (!nc) return out;
  EXPECT_EQ(nc->excludedSubtrees, nullptr);
  for (int i = 0; i < sk_GENERAL_SUBTREE_num(nc->permittedSubtrees); ++i) {
    GENERAL_NAME* gn = sk_GENERAL_SUBTREE_value(nc->permittedSubtrees, i)->base;
    EXPECT_EQ(gn->type, GEN_DNS);
    out.emplace_back(reinterpret_cast<const char*>(ASN1_STRING_get0_data(gn->d.dNSName)),
                     ASN1_STRING_length(gn->d.dNSName));
  }
  return out;
}

// Verifies `leaf` against a store holding only `ca`; returns the X509_V_* code.
int verifyAgainst(X509* ca, X509* leaf, const std::string& host) {
  X509StorePtr store(X509_STORE_new());
  X509_STORE_add_cert(store.get(), ca);
  X509StoreCtxPtr ctx(X509_STORE_CTX_new());
  X509_STORE_CTX_init(ctx.get(), store.get(), leaf, nullptr);
  X509_VERIFY_PARAM* param = X509_STORE_CTX_get0_param(ctx.get());
  X509_VERIFY_PARAM_set_purpose(param, X509_PURPOSE_SSL_SERVER);
  if (!host.empty()) X509_VERIFY_PARAM_set1_host(param, host.c_str(), host.size());
  int rc = X509_verify_cert(ctx.get());
  int err = X509_STORE_CTX_get_error(ctx.get());
  return rc == 1 ? X509_V_OK : (err == X509_V_OK ? -1 : err);
}

// What an attacker holding ca.key could do: sign anything, bypassing mintLeaf.
X509Ptr forge(X509* ca, EVP_PKEY* caKey, const std::string& cn, const std::string& san, bool isCa = false,
              EVP_PKEY* subjectKey = nullptr, X509* issuer = nullptr) {
  EvpPkeyPtr ownKey;
  if (subjectKey == nullptr) {
    ownKey.reset(EVP_EC_gen("P-256"));
    subjectKey = ownKey.get();
  }
  if (issuer == nullptr) issuer = ca;
  X509Ptr cert(X509_new());
  if (issuer == nullptr) issuer = cert.get();  // self-signed
  X509_set_version(cert.get(), X509_VERSION_3);
  ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), 4242);
  X509_NAME_add_entry_by_txt(X509_get_subject_name(cert.get()), "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  X509_set_issuer_name(cert.get(), X509_get_subject_name(issuer));
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), -60);
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), 3600);
  X509_set_pubkey(cert.get(), subjectKey);
  X509V3_CTX v3;
  X509V3_set_ctx_nodb(&v3);
  X509V3_set_ctx(&v3, issuer, cert.get(), nullptr, nullptr, 0);
  auto add = [&](int nid, const std::string& value) {
    X509ExtensionPtr ext(X509V3_EXT_conf_nid(nullptr, &v3, nid, value.c_str()));
    ASSERT_TRUE(ext) << value;
    X509_add_ext(cert.get(), ext.get(), -1);
  };
  if (isCa) {
    add(NID_basic_constraints, "critical,CA:TRUE");
    add(NID_key_usage, "critical,keyCertSign,cRLSign");
  } else {
    add(NID_basic_constraints, "critical,CA:FALSE");
    add(NID_ext_key_usage, "serverAuth");
  }
  if (!san.empty()) add(NID_subject_alt_name, "DNS:" + san);
  EXPECT_GT(X509_sign(cert.get(), caKey, EVP_sha256()), 0);
  return cert;
}

TEST(CaPaths, NamesFilesInStateDir) {
  auto p = caPaths("/var/lib/atlasgate/");
  EXPECT_EQ(p.caCert, "/var/lib/atlasgate/ca.pem");
  EXPECT_EQ(p.caKey, "/var/lib/atlasgate/ca.key");
  EXPECT_EQ(p.trustBundle, "/var/lib/atlasgate/trust-bundle.pem");
}

TEST(NormalizeHost, LowerCasesAndValidates) {
  EXPECT_EQ(normalizeHost("Cloud.MongoDB.com.").value(), "cloud.mongodb.com");
  EXPECT_FALSE(normalizeHost(""));
  EXPECT_FALSE(normalizeHost("*.mongodb.com"));
  EXPECT_FALSE(normalizeHost("a..b"));
  EXPECT_FALSE(normalizeHost("-a.b"));
  EXPECT_FALSE(normalizeHost("a,DNS:evil.com"));
  EXPECT_FALSE(normalizeHost("127.0.0.1"));
  EXPECT_FALSE(normalizeHost(std::string(64, 'a') + ".com"));
  EXPECT_FALSE(normalizeHost(std::string("a\0b", 3)));
}

TEST(NormalizeHostPattern, AcceptsOneLeadingWildcardLabel) {
  EXPECT_EQ(normalizeHostPattern("*.MongoDB.net.").value(), "*.mongodb.net");
  EXPECT_EQ(normalizeHostPattern("*.a.b.example.org").value(), "*.a.b.example.org");
  EXPECT_EQ(normalizeHostPattern("Cloud.MongoDB.com").value(), "cloud.mongodb.com");  // concrete names too
  for (const char* bad :
       {"*.net", "*.net.", "*", "*.", "*..", "**.x.com", "*x.com", "a*.x.com", "a.*.x.com", "*.*.x.com", "*.x*.com",
        "x.com.*", ".mongodb.net", "*.127.0.0.1", "*.a..b", "*.-a.b", "*.a,DNS:evil.com", ""}) {
    EXPECT_FALSE(normalizeHostPattern(bad)) << bad;
  }
  EXPECT_FALSE(normalizeHost("*.mongodb.net")) << "normalizeHost stays for concrete names";
  EXPECT_TRUE(isHostPattern("*.mongodb.net"));
  EXPECT_FALSE(isHostPattern("mongodb.net"));
}

TEST(Authority, CreatesFilesWithModes) {
  TempDir tmp;
  std::string state = tmp.file("state/nested");
  auto ca = Authority::loadOrCreate(state, kHosts, tmp.file("no-system-bundle"));
  ASSERT_TRUE(ca) << ca.error().message;
  auto paths = caPaths(state);
  EXPECT_EQ(modeOf(state), 0755u);
  EXPECT_EQ(modeOf(paths.caKey), 0600u);
  EXPECT_EQ(modeOf(paths.caCert), 0644u);
  EXPECT_EQ(modeOf(paths.trustBundle), 0644u);
  // No temporaries left behind.
  int entries = 0;
  for ([[maybe_unused]] auto& e : std::filesystem::directory_iterator(state)) ++entries;
  EXPECT_EQ(entries, 3);
}

TEST(Authority, CaCertificateShape) {
  TempDir tmp;
  auto ca = Authority::loadOrCreate(tmp.path(), {"cloud.mongodb.com", "Other.Example.ORG"}, tmp.file("none"));
  ASSERT_TRUE(ca) << ca.error().message;
  X509* cert = ca->caCert();
  char cn[128] = {};
  X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn, sizeof cn);
  EXPECT_STREQ(cn, "atlasgate local CA");
  EXPECT_EQ(X509_check_ca(cert), 1);
  EXPECT_EQ(X509_get_pathlen(cert), 0);
  int crit = -1;
  BASIC_CONSTRAINTS_free(
      static_cast<BASIC_CONSTRAINTS*>(X509_get_ext_d2i(cert, NID_basic_constraints, &crit, nullptr)));
  EXPECT_EQ(crit, 1);
  ASN1_BIT_STRING_free(static_cast<ASN1_BIT_STRING*>(X509_get_ext_d2i(cert, NID_key_usage, &crit, nullptr)));
  EXPECT_EQ(crit, 1);
  EXPECT_EQ(X509_get_key_usage(cert), uint32_t{KU_KEY_CERT_SIGN | KU_CRL_SIGN});
  EXPECT_NE(X509_get0_subject_key_id(cert), nullptr);
  EXPECT_EQ(permitted(cert), (std::vector<std::string>{"cloud.mongodb.com", "other.example.org"}));
  EXPECT_EQ(ca->hosts(), (std::vector<std::string>{"cloud.mongodb.com", "other.example.org"}));

  // Ten years, give or take the backdating and leap days.
  int days = 0, secs = 0;
  ASSERT_EQ(ASN1_TIME_diff(&days, &secs, X509_get0_notBefore(cert), X509_get0_notAfter(cert)), 1);
  EXPECT_GE(days, 3650);
  EXPECT_LE(days, 3653);

  EvpPkeyPtr key = readKey(ca->paths().caKey);
  ASSERT_TRUE(key);
  char group[64] = {};
  size_t len = 0;
  ASSERT_EQ(EVP_PKEY_get_group_name(key.get(), group, sizeof group, &len), 1);
  EXPECT_STREQ(group, "prime256v1");
  EXPECT_EQ(X509_get_signature_nid(cert), NID_ecdsa_with_SHA256);
}

TEST(Authority, ReloadsSameCaOnSecondStart) {
  TempDir tmp;
  auto first = Authority::loadOrCreate(tmp.path(), kHosts, tmp.file("none"));
  ASSERT_TRUE(first) << first.error().message;
  std::string keyBefore = slurp(first->paths().caKey);

  // Same set, different spelling and order: still the same CA.
  auto second = Authority::loadOrCreate(tmp.path(), {"CLOUD.mongodb.com."}, tmp.file("none"));
  ASSERT_TRUE(second) << second.error().message;
  EXPECT_EQ(X509_cmp(first->caCert(), second->caCert()), 0);
  EXPECT_EQ(slurp(second->paths().caKey), keyBefore);
  X509Ptr onDisk = readCert(second->paths().caCert);
  ASSERT_TRUE(onDisk);
  EXPECT_EQ(X509_cmp(onDisk.get(), first->caCert()), 0);
}

TEST(Authority, RecreatesCaWhenHostsChange) {
  TempDir tmp;
  auto first = Authority::loadOrCreate(tmp.path(), kHosts, tmp.file("none"));
  ASSERT_TRUE(first) << first.error().message;
  auto second = Authority::loadOrCreate(tmp.path(), {"cloud.mongodb.com", "cloud-dev.mongodb.com"}, tmp.file("none"));
  ASSERT_TRUE(second) << second.error().message;
  EXPECT_NE(X509_cmp(first->caCert(), second->caCert()), 0);
  EXPECT_EQ(permitted(second->caCert()), (std::vector<std::string>{"cloud-dev.mongodb.com", "cloud.mongodb.com"}));
  EXPECT_EQ(modeOf(second->paths().caKey), 0600u);
  X509Ptr onDisk = readCert(second->paths().caCert);
  EXPECT_EQ(X509_cmp(onDisk.get(), second->caCert()), 0);
  EvpPkeyPtr key = readKey(second->paths().caKey);
  EXPECT_EQ(X509_check_private_key(second->caCert(), key.get()), 1);
}

TEST(Authority, RecreatesCaWhenFilesAreDamaged) {
  TempDir tmp;
  auto first = Authority::loadOrCreate(tmp.path(), kHosts, tmp.file("none"));
  ASSERT_TRUE(first) << first.error().message;
  { std::ofstream(first->paths().caCert, std::ios::trunc) << "garbage"; }
  auto second = Authority::loadOrCreate(tmp.path(), kHosts, tmp.file("none"));
  ASSERT_TRUE(second) << second.error().message;
  EXPECT_NE(X509_cmp(first->caCert(), second->caCert()), 0);

  // A key that does not belong to the certificate: start over too.
  EvpPkeyPtr other(EVP_EC_gen("P-256"));
  {
    BioPtr bio(BIO_new_file(second->paths().caKey.c_str(), "w"));
    PEM_write_bio_PrivateKey(bio.get(), other.get(), nullptr, nullptr, 0, nullptr, nullptr);
  }
  auto third = Authority::loadOrCreate(tmp.path(), kHosts, tmp.file("none"));
  ASSERT_TRUE(third) << third.error().message;
  EXPECT_NE(X509_cmp(second->caCert(), third->caCert()), 0);
}

TEST(Authority, TightensLooseKeyMode) {
  TempDir tmp;
  auto first = Authority::loadOrCreate(tmp.path(), kHosts, tmp.file("none"));
  ASSERT_TRUE(first);
  ASSERT_EQ(::chmod(first->paths().caKey.c_str(), 0644), 0);
  auto second = Authority::loadOrCreate(tmp.path(), kHosts, tmp.file("none"));
  ASSERT_TRUE(second);
  EXPECT_EQ(X509_cmp(first->caCert(), second->caCert()), 0);
  EXPECT_EQ(modeOf(second->paths().caKey), 0600u);
}

TEST(Authority, RefusesEmptyOrInvalidHosts) {
  TempDir tmp;
  EXPECT_FALSE(Authority::loadOrCreate(tmp.path(), {}, tmp.file("none")));
  EXPECT_FALSE(Authority::loadOrCreate(tmp.path(), {"bad host"}, tmp.file("none")));
}

TEST(Authority, TrustBundleHoldsSystemRootsAndCa) {
  TempDir tmp;
  // A stand-in system bundle with one root of its own.
  EvpPkeyPtr rootKey(EVP_EC_gen("P-256"));
  X509Ptr root = forge(nullptr, rootKey.get(), "Some Public Root", "", true, rootKey.get(), nullptr);
  std::string systemPath = tmp.file("system.pem");
  std::string systemPem = certToPem(root.get());
  { std::ofstream(systemPath) << systemPem; }

  auto ca = Authority::loadOrCreate(tmp.file("state"), kHosts, systemPath);
  ASSERT_TRUE(ca) << ca.error().message;
  std::string bundle = slurp(ca->paths().trustBundle);
  EXPECT_EQ(bundle.rfind(systemPem, 0), 0u) << "bundle starts with the system roots";
  EXPECT_NE(bundle.find(ca->caPem()), std::string::npos);

  X509StorePtr store(X509_STORE_new());
  ASSERT_EQ(X509_STORE_load_file(store.get(), ca->paths().trustBundle.c_str()), 1);
  STACK_OF(X509)* certs = X509_STORE_get1_all_certs(store.get());
  EXPECT_EQ(sk_X509_num(certs), 2);
  sk_X509_pop_free(certs, X509_free);
}

TEST(Authority, TrustBundleWithRealSystemStore) {
  if (!std::filesystem::exists(kSystemBundle)) GTEST_SKIP() << kSystemBundle << " not present";
  TempDir tmp;
  auto ca = Authority::loadOrCreate(tmp.path(), kHosts);
  ASSERT_TRUE(ca) << ca.error().message;
  std::string system = slurp(kSystemBundle);
  std::string bundle = slurp(ca->paths().trustBundle);
  EXPECT_EQ(bundle.rfind(system, 0), 0u);
  EXPECT_NE(bundle.find(ca->caPem()), std::string::npos);
}

TEST(Authority, TrustBundleWithoutSystemStoreHoldsOnlyCa) {
  TempDir tmp;
  auto ca = Authority::loadOrCreate(tmp.path(), kHosts, tmp.file("missing.pem"));
  ASSERT_TRUE(ca) << ca.error().message;
  X509StorePtr store(X509_STORE_new());
  ASSERT_EQ(X509_STORE_load_file(store.get(), ca->paths().trustBundle.c_str()), 1);
  STACK_OF(X509)* certs = X509_STORE_get1_all_certs(store.get());
  ASSERT_EQ(sk_X509_num(certs), 1);
  EXPECT_EQ(X509_cmp(sk_X509_value(certs, 0), ca->caCert()), 0);
  sk_X509_pop_free(certs, X509_free);
}

TEST(Authority, MintedLeafVerifiesForAllowedHost) {
  TempDir tmp;
  auto ca = Authority::loadOrCreate(tmp.path(), kHosts, tmp.file("none"));
  ASSERT_TRUE(ca) << ca.error().message;
  auto leaf = ca->mintLeaf("Cloud.MongoDB.com");
  ASSERT_TRUE(leaf) << leaf.error().message;
  X509* cert = leaf->cert.get();
  EXPECT_EQ(leaf->host, "cloud.mongodb.com");
  EXPECT_EQ(verifyAgainst(ca->caCert(), cert, "cloud.mongodb.com"), X509_V_OK);
  EXPECT_EQ(X509_check_host(cert, "cloud.mongodb.com", 0, 0, nullptr), 1);
  EXPECT_NE(X509_check_host(cert, "www.mongodb.com", 0, 0, nullptr), 1);
  EXPECT_EQ(X509_check_private_key(cert, leaf->key.get()), 1);
  EXPECT_EQ(X509_check_ca(cert), 0);
  EXPECT_TRUE(X509_get_extended_key_usage(cert) & XKU_SSL_SERVER);
  EXPECT_EQ(X509_get_key_usage(cert), uint32_t{KU_DIGITAL_SIGNATURE});
  EXPECT_EQ(X509_get_signature_nid(cert), NID_ecdsa_with_SHA256);
  EXPECT_NE(X509_get0_authority_key_id(cert), nullptr);

  // Lifetime: now-5min .. now+24h.
  using namespace std::chrono;
  auto now = system_clock::now();
  EXPECT_NEAR(duration_cast<seconds>(now - leaf->notBefore).count(), 300, 5);
  EXPECT_NEAR(duration_cast<seconds>(leaf->notAfter - now).count(), 24 * 3600, 5);
  int days = 0, secs = 0;
  ASSERT_EQ(ASN1_TIME_diff(&days, &secs, X509_get0_notBefore(cert), X509_get0_notAfter(cert)), 1);
  EXPECT_EQ(days * 86400 + secs, 24 * 3600 + 300);

  // Random serials, at most 128 bits.
  auto other = ca->mintLeaf("cloud.mongodb.com");
  ASSERT_TRUE(other);
  EXPECT_NE(ASN1_INTEGER_cmp(X509_get0_serialNumber(cert), X509_get0_serialNumber(other->cert.get())), 0);
  BignumPtr serial(ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), nullptr));
  EXPECT_LE(BN_num_bits(serial.get()), 128);
  EXPECT_GT(BN_num_bits(serial.get()), 64);
}

TEST(Authority, MintLeafRefusesForeignHosts) {
  TempDir tmp;
  auto ca = Authority::loadOrCreate(tmp.path(), kHosts, tmp.file("none"));
  ASSERT_TRUE(ca) << ca.error().message;
  EXPECT_FALSE(ca->mintLeaf("evil.example.com"));
  EXPECT_FALSE(ca->mintLeaf("api.cloud.mongodb.com"));
  EXPECT_FALSE(ca->mintLeaf("*.mongodb.com"));
  EXPECT_FALSE(ca->mintLeaf(""));
}

TEST(Authority, LeakedKeyCannotMintForOtherNames) {
  TempDir tmp;
  auto ca = Authority::loadOrCreate(tmp.path(), kHosts, tmp.file("none"));
  ASSERT_TRUE(ca) << ca.error().message;
  EvpPkeyPtr stolen = readKey(ca->paths().caKey);  // the attacker has the file
  ASSERT_TRUE(stolen);

  X509Ptr evil = forge(ca->caCert(), stolen.get(), "evil.example.com", "evil.example.com");
  EXPECT_EQ(X509_verify(evil.get(), stolen.get()), 1) << "the forgery is correctly signed";
  EXPECT_EQ(verifyAgainst(ca->caCert(), evil.get(), "evil.example.com"), X509_V_ERR_PERMITTED_VIOLATION);
  EXPECT_EQ(verifyAgainst(ca->caCert(), evil.get(), ""), X509_V_ERR_PERMITTED_VIOLATION);

  // No SAN at all, only a host-like CN: the CN is held to the constraints too.
  X509Ptr cnOnly = forge(ca->caCert(), stolen.get(), "evil.example.com", "");
  EXPECT_EQ(verifyAgainst(ca->caCert(), cnOnly.get(), ""), X509_V_ERR_PERMITTED_VIOLATION);

  // An unconstrained intermediate under the stolen key does not help either.
  EvpPkeyPtr midKey(EVP_EC_gen("P-256"));
  X509Ptr mid = forge(ca->caCert(), stolen.get(), "Evil Intermediate", "", true, midKey.get());
  X509Ptr viaMid = forge(ca->caCert(), midKey.get(), "evil.example.com", "evil.example.com", false, nullptr, mid.get());
  X509StorePtr store(X509_STORE_new());
  X509_STORE_add_cert(store.get(), ca->caCert());
  STACK_OF(X509)* untrusted = sk_X509_new_null();
  sk_X509_push(untrusted, mid.get());
  X509StoreCtxPtr sctx(X509_STORE_CTX_new());
  X509_STORE_CTX_init(sctx.get(), store.get(), viaMid.get(), untrusted);
  EXPECT_NE(X509_verify_cert(sctx.get()), 1);
  sk_X509_free(untrusted);
}

// ------------------------------------------------------------ wildcards ----

const std::vector<std::string> kWildHosts = {"cloud.mongodb.com", "*.mongodb.net"};

TEST(AuthorityWildcard, PatternBecomesDotSuffixConstraint) {
  TempDir tmp;
  auto ca = Authority::loadOrCreate(tmp.path(), {"*.MongoDB.net.", "cloud.mongodb.com"}, tmp.file("none"));
  ASSERT_TRUE(ca) << ca.error().message;
  EXPECT_EQ(ca->hosts(), (std::vector<std::string>{"*.mongodb.net", "cloud.mongodb.com"}));
  EXPECT_EQ(permitted(ca->caCert()), (std::vector<std::string>{".mongodb.net", "cloud.mongodb.com"}));
}

TEST(AuthorityWildcard, RefusesBadPatterns) {
  TempDir tmp;
  for (const char* bad : {"*.net", "a*.x.com", "a.*.x.com", "*"}) {
    EXPECT_FALSE(Authority::loadOrCreate(tmp.path(), {"cloud.mongodb.com", bad}, tmp.file("none"))) << bad;
  }
}

TEST(AuthorityWildcard, UnchangedPatternsReuseTheCa) {
  TempDir tmp;
  auto first = Authority::loadOrCreate(tmp.path(), kWildHosts, tmp.file("none"));
  ASSERT_TRUE(first) << first.error().message;
  std::string keyBefore = slurp(first->paths().caKey);
  auto second = Authority::loadOrCreate(tmp.path(), {"*.MONGODB.NET", "cloud.mongodb.com."}, tmp.file("none"));
  ASSERT_TRUE(second) << second.error().message;
  EXPECT_EQ(X509_cmp(first->caCert(), second->caCert()), 0);
  EXPECT_EQ(slurp(second->paths().caKey), keyBefore);
}

TEST(AuthorityWildcard, AddingAPatternRemakesTheCa) {
  TempDir tmp;
  auto first = Authority::loadOrCreate(tmp.path(), kHosts, tmp.file("none"));
  ASSERT_TRUE(first) << first.error().message;
  auto second = Authority::loadOrCreate(tmp.path(), kWildHosts, tmp.file("none"));
  ASSERT_TRUE(second) << second.error().message;
  EXPECT_NE(X509_cmp(first->caCert(), second->caCert()), 0);
  EXPECT_EQ(permitted(second->caCert()), (std::vector<std::string>{".mongodb.net", "cloud.mongodb.com"}));
  X509Ptr onDisk = readCert(second->paths().caCert);
  EXPECT_EQ(X509_cmp(onDisk.get(), second->caCert()), 0);

  // The apex is a different constraint from the pattern: `mongodb.net` would
  // permit the apex and everything below, `.mongodb.net` only what is below.
  auto apex = Authority::loadOrCreate(tmp.path(), {"cloud.mongodb.com", "mongodb.net"}, tmp.file("none"));
  ASSERT_TRUE(apex) << apex.error().message;
  EXPECT_NE(X509_cmp(second->caCert(), apex->caCert()), 0);
  EXPECT_EQ(permitted(apex->caCert()), (std::vector<std::string>{"cloud.mongodb.com", "mongodb.net"}));
  auto back = Authority::loadOrCreate(tmp.path(), kWildHosts, tmp.file("none"));
  ASSERT_TRUE(back) << back.error().message;
  EXPECT_NE(X509_cmp(apex->caCert(), back->caCert()), 0);
}

TEST(AuthorityWildcard, AllowsOnlyProperSubdomains) {
  TempDir tmp;
  auto ca = Authority::loadOrCreate(tmp.path(), kWildHosts, tmp.file("none"));
  ASSERT_TRUE(ca) << ca.error().message;
  for (const char* ok : {"a.mongodb.net", "a.b.mongodb.net", "x-1.y.z.mongodb.net", "cloud.mongodb.com"}) {
    EXPECT_TRUE(ca->allows(ok)) << ok;
  }
  for (const char* bad : {"mongodb.net", "xmongodb.net", "a.mongodb.net.evil.com", "*.mongodb.net", ".mongodb.net",
                          "a..mongodb.net", "A.mongodb.net", "a.mongodb.net.", "a.mongodb.net..", "*.a.mongodb.net",
                          "a*.mongodb.net", "net", "", "a.cloud.mongodb.com", "mongodb.com"}) {
    EXPECT_FALSE(ca->allows(bad)) << bad;
  }
  EXPECT_TRUE(ca->hasEntry("*.mongodb.net"));
  EXPECT_TRUE(ca->hasEntry("cloud.mongodb.com"));
  EXPECT_FALSE(ca->hasEntry("a.mongodb.net"));
  EXPECT_FALSE(ca->hasEntry("mongodb.net"));
}

TEST(AuthorityWildcard, MatchNamesTheMostSpecificEntry) {
  TempDir tmp;
  auto ca =
      Authority::loadOrCreate(tmp.path(), {"*.mongodb.net", "*.b.mongodb.net", "a.b.mongodb.net"}, tmp.file("none"));
  ASSERT_TRUE(ca) << ca.error().message;
  auto matched = [&](const char* host) -> std::string {
    const std::string* entry = ca->match(host);
    return entry ? *entry : "<none>";
  };
  EXPECT_EQ(matched("a.b.mongodb.net"), "a.b.mongodb.net");
  EXPECT_EQ(matched("x.b.mongodb.net"), "*.b.mongodb.net");
  EXPECT_EQ(matched("y.x.b.mongodb.net"), "*.b.mongodb.net");
  EXPECT_EQ(matched("b.mongodb.net"), "*.mongodb.net");
  EXPECT_EQ(matched("mongodb.net"), "<none>");
  // The pointer is the Authority's own entry.
  const std::string* entry = ca->match("q.mongodb.net");
  ASSERT_NE(entry, nullptr);
  EXPECT_TRUE(entry >= ca->hosts().data() && entry < ca->hosts().data() + ca->hosts().size());
}

TEST(AuthorityWildcard, MintsConcreteNamesUnderThePattern) {
  TempDir tmp;
  auto ca = Authority::loadOrCreate(tmp.path(), kWildHosts, tmp.file("none"));
  ASSERT_TRUE(ca) << ca.error().message;
  for (const char* host : {"A.MongoDB.net", "a.b.mongodb.net"}) {
    auto leaf = ca->mintLeaf(host);
    ASSERT_TRUE(leaf) << host << ": " << leaf.error().message;
    std::string want = normalizeHost(host).value();
    EXPECT_EQ(leaf->host, want);
    EXPECT_EQ(verifyAgainst(ca->caCert(), leaf->cert.get(), want), X509_V_OK) << want;
    EXPECT_EQ(X509_check_host(leaf->cert.get(), want.c_str(), 0, 0, nullptr), 1);
    EXPECT_NE(X509_check_host(leaf->cert.get(), "other.mongodb.net", 0, 0, nullptr), 1) << "no wildcard SAN";
  }
  for (const char* bad :
       {"*.mongodb.net", "mongodb.net", "evilmongodb.net", "a.mongodb.net.evil.com", ".mongodb.net"}) {
    EXPECT_FALSE(ca->mintLeaf(bad)) << bad;
  }
}

TEST(AuthorityWildcard, MintsNamesLongerThanACommonName) {
  TempDir tmp;
  auto ca = Authority::loadOrCreate(tmp.path(), kWildHosts, tmp.file("none"));
  ASSERT_TRUE(ca) << ca.error().message;
  std::string host = std::string(63, 'a') + "." + std::string(63, 'b') + ".mongodb.net";
  auto leaf = ca->mintLeaf(host);
  ASSERT_TRUE(leaf) << leaf.error().message;
  EXPECT_EQ(X509_NAME_entry_count(X509_get_subject_name(leaf->cert.get())), 0);
  int crit = -1;
  GENERAL_NAMES_free(
      static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(leaf->cert.get(), NID_subject_alt_name, &crit, nullptr)));
  EXPECT_EQ(crit, 1) << "an empty subject needs a critical SAN";
  EXPECT_EQ(verifyAgainst(ca->caCert(), leaf->cert.get(), host), X509_V_OK);
}

TEST(AuthorityWildcard, LeakedKeyCannotMintForTheApexOrLookalikes) {
  TempDir tmp;
  auto ca = Authority::loadOrCreate(tmp.path(), kWildHosts, tmp.file("none"));
  ASSERT_TRUE(ca) << ca.error().message;
  EvpPkeyPtr stolen = readKey(ca->paths().caKey);
  ASSERT_TRUE(stolen);
  // Control: the constraint does admit names below the suffix, at any depth.
  for (const char* inside : {"a.mongodb.net", "a.b.mongodb.net"}) {
    X509Ptr ok = forge(ca->caCert(), stolen.get(), inside, inside);
    EXPECT_EQ(verifyAgainst(ca->caCert(), ok.get(), inside), X509_V_OK) << inside;
  }
  for (const char* outside : {"mongodb.net", "evilmongodb.net", "a.mongodb.net.evil.com", "mongodb.com"}) {
    X509Ptr evil = forge(ca->caCert(), stolen.get(), outside, outside);
    EXPECT_EQ(verifyAgainst(ca->caCert(), evil.get(), ""), X509_V_ERR_PERMITTED_VIOLATION) << outside;
    X509Ptr cnOnly = forge(ca->caCert(), stolen.get(), outside, "");
    EXPECT_EQ(verifyAgainst(ca->caCert(), cnOnly.get(), ""), X509_V_ERR_PERMITTED_VIOLATION) << outside << " (CN)";
  }
}

}  // namespace
}  // namespace atlasgate::tls
