#include "tls/authority.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <ctime>
#include <optional>
#include <variant>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>

#include "common/log.h"

namespace atlasgate::tls {

namespace {

constexpr mode_t kDirMode = 0755;
constexpr mode_t kKeyMode = 0600;
constexpr mode_t kPublicMode = 0644;

constexpr long kBackdateSeconds = 5 * 60;  // tolerate agents whose clock runs a little behind
constexpr int kCaValidityDays = 3652;      // ten years, leap days included
constexpr int kCaRenewMarginDays = 30;     // re-make a CA this close to expiry
constexpr long kLeafValiditySeconds = 24 * 3600;

// ---------------------------------------------------------------- files ----

Result<std::string> readFile(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return sysError(errno, "cannot open {}", path);
  std::string out;
  char buf[16384];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      ::close(fd);
      return sysError(e, "cannot read {}", path);
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return out;
}

std::string parentDir(const std::string& path) {
  auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

// Writes `data` to a temporary file next to `path` and renames it over
// `path`, so a reader (or a crash) never sees a half-written file. mkstemp
// creates the file 0600, so a key is never readable by others, not even for
// the moment between create and chmod.
Result<void> writeFileAtomic(const std::string& path, std::string_view data, mode_t mode) {
  std::string tmp = path + ".tmp.XXXXXX";
  int fd = ::mkostemp(tmp.data(), O_CLOEXEC);
  if (fd < 0) return sysError(errno, "cannot create a temporary file for {}", path);
  auto fail = [&](const char* what) -> Error {
    int e = errno;
    ::close(fd);
    ::unlink(tmp.c_str());
    return sysError(e, "cannot {} {}", what, tmp);
  };
  if (::fchmod(fd, mode) != 0) return fail("chmod");
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail("write");
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) return fail("fsync");
  if (::close(fd) != 0) {
    int e = errno;
    ::unlink(tmp.c_str());
    return sysError(e, "cannot close {}", tmp);
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    int e = errno;
    ::unlink(tmp.c_str());
    return sysError(e, "cannot rename {} to {}", tmp, path);
  }
  // Make the rename itself durable; failure here is not worth failing for.
  int dfd = ::open(parentDir(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
  return {};
}

// mkdir -p with 0755 for every component it creates.
Result<void> ensureDir(const std::string& dir) {
  if (dir.empty()) return makeError("state directory is empty");
  struct stat st {};
  if (::stat(dir.c_str(), &st) == 0) {
    if (!S_ISDIR(st.st_mode)) return makeError("{} exists and is not a directory", dir);
    return {};
  }
  if (errno != ENOENT) return sysError(errno, "cannot stat {}", dir);
  std::string parent = parentDir(dir);
  if (parent != dir) {
    auto r = ensureDir(parent);
    if (!r) return r;
  }
  if (::mkdir(dir.c_str(), kDirMode) != 0 && errno != EEXIST) {
    return sysError(errno, "cannot create directory {}", dir);
  }
  // mkdir is subject to the umask; the state dir must be traversable by agents
  // that read ca.pem and the trust bundle.
  if (::chmod(dir.c_str(), kDirMode) != 0) return sysError(errno, "cannot chmod {}", dir);
  return {};
}

// ---------------------------------------------------------- certificates ----

Result<EvpPkeyPtr> generateP256Key() {
  EvpPkeyPtr key(EVP_EC_gen("P-256"));
  if (!key) return makeError("cannot generate a P-256 key: {}", opensslErrors());
  return key;
}

bool setRandomSerial(X509* cert) {
  BignumPtr bn(BN_new());
  if (!bn) return false;
  do {
    if (BN_rand(bn.get(), 128, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) != 1) return false;
  } while (BN_is_zero(bn.get()));
  return BN_to_ASN1_INTEGER(bn.get(), X509_get_serialNumber(cert)) != nullptr;
}

bool setValidity(X509* cert, std::time_t now, long backSeconds, int forwardDays, long forwardSeconds) {
  return X509_time_adj_ex(X509_getm_notBefore(cert), 0, -backSeconds, &now) != nullptr &&
         X509_time_adj_ex(X509_getm_notAfter(cert), forwardDays, forwardSeconds, &now) != nullptr;
}

// Adds an extension given in openssl.cnf syntax. Only ever called with
// constant strings; anything derived from configuration is built as ASN.1
// structures below, so no host name is ever parsed as config syntax.
bool addExtension(X509* cert, X509* issuer, int nid, const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509ExtensionPtr ext(X509V3_EXT_conf_nid(nullptr, &ctx, nid, value));
  return ext && X509_add_ext(cert, ext.get(), -1) == 1;
}

GENERAL_NAME* dnsName(const std::string& host) {
  GENERAL_NAME* gn = GENERAL_NAME_new();
  ASN1_IA5STRING* ia5 = ASN1_IA5STRING_new();
  if (gn == nullptr || ia5 == nullptr || ASN1_STRING_set(ia5, host.data(), static_cast<int>(host.size())) != 1) {
    GENERAL_NAME_free(gn);
    ASN1_IA5STRING_free(ia5);
    return nullptr;
  }
  GENERAL_NAME_set0_value(gn, GEN_DNS, ia5);
  return gn;
}

// Critical when the subject is empty, as RFC 5280 4.2.1.6 requires.
bool addSubjectAltName(X509* cert, const std::string& host, bool critical) {
  GeneralNamesPtr names(GENERAL_NAMES_new());
  if (!names) return false;
  GENERAL_NAME* gn = dnsName(host);
  if (gn == nullptr) return false;
  if (sk_GENERAL_NAME_push(names.get(), gn) <= 0) {
    GENERAL_NAME_free(gn);
    return false;
  }
  return X509_add1_ext_i2d(cert, NID_subject_alt_name, names.get(), critical ? 1 : 0, X509V3_ADD_DEFAULT) == 1;
}

bool addNameConstraints(X509* cert, const std::vector<std::string>& hosts) {
  NameConstraintsPtr nc(NAME_CONSTRAINTS_new());
  if (!nc) return false;
  nc->permittedSubtrees = sk_GENERAL_SUBTREE_new_null();
  if (nc->permittedSubtrees == nullptr) return false;
  for (const auto& host : hosts) {
    GENERAL_SUBTREE* subtree = GENERAL_SUBTREE_new();
    // `*.suffix` -> `.suffix`: with the leading dot only proper subdomains match.
    GENERAL_NAME* gn = dnsName(isHostPattern(host) ? host.substr(1) : host);
    if (subtree == nullptr || gn == nullptr) {
      GENERAL_SUBTREE_free(subtree);
      GENERAL_NAME_free(gn);
      return false;
    }
    GENERAL_NAME_free(subtree->base);
    subtree->base = gn;
    if (sk_GENERAL_SUBTREE_push(nc->permittedSubtrees, subtree) <= 0) {
      GENERAL_SUBTREE_free(subtree);
      return false;
    }
  }
  return X509_add1_ext_i2d(cert, NID_name_constraints, nc.get(), 1, X509V3_ADD_DEFAULT) == 1;
}

// The DNS names a CA certificate's nameConstraints permit, sorted, with
// `.suffix` read back as the pattern `*.suffix` it was made from; nullopt
// when the extension is missing, not critical, or holds anything but
// permitted DNS subtrees (then it is not one of ours).
std::optional<std::vector<std::string>> permittedHosts(X509* cert) {
  int critical = -1;
  NameConstraintsPtr nc(
      static_cast<NAME_CONSTRAINTS*>(X509_get_ext_d2i(cert, NID_name_constraints, &critical, nullptr)));
  if (!nc || critical != 1 || nc->excludedSubtrees != nullptr || nc->permittedSubtrees == nullptr) {
    return std::nullopt;
  }
  std::vector<std::string> hosts;
  for (int i = 0; i < sk_GENERAL_SUBTREE_num(nc->permittedSubtrees); ++i) {
    const GENERAL_SUBTREE* st = sk_GENERAL_SUBTREE_value(nc->permittedSubtrees, i);
    if (st->base == nullptr || st->base->type != GEN_DNS) return std::nullopt;
    const ASN1_IA5STRING* s = st->base->d.dNSName;
    std::string name(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)),
                     static_cast<size_t>(ASN1_STRING_length(s)));
    if (name.starts_with('.')) name.insert(0, 1, '*');
    hosts.push_back(std::move(name));
  }
  std::sort(hosts.begin(), hosts.end());
  return hosts;
}

Result<X509Ptr> makeCaCert(EVP_PKEY* key, const std::vector<std::string>& hosts) {
  X509Ptr cert(X509_new());
  if (!cert) return makeError("X509_new: {}", opensslErrors());
  X509_NAME* name = X509_get_subject_name(cert.get());
  bool ok = X509_set_version(cert.get(), X509_VERSION_3) == 1 && setRandomSerial(cert.get()) &&
            X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC, reinterpret_cast<const unsigned char*>("atlasgate"), -1,
                                       -1, 0) == 1 &&
            X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>(kCaCommonName),
                                       -1, -1, 0) == 1 &&
            X509_set_issuer_name(cert.get(), name) == 1 &&
            setValidity(cert.get(), std::time(nullptr), kBackdateSeconds, kCaValidityDays, 0) &&
            X509_set_pubkey(cert.get(), key) == 1 &&
            addExtension(cert.get(), cert.get(), NID_basic_constraints, "critical,CA:TRUE,pathlen:0") &&
            addExtension(cert.get(), cert.get(), NID_key_usage, "critical,keyCertSign,cRLSign") &&
            addExtension(cert.get(), cert.get(), NID_subject_key_identifier, "hash") &&
            addNameConstraints(cert.get(), hosts) && X509_sign(cert.get(), key, EVP_sha256()) > 0;
  if (!ok) return makeError("cannot build the CA certificate: {}", opensslErrors());
  return cert;
}

std::string keyToPem(EVP_PKEY* key) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr) != 1) {
    return {};
  }
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  return len > 0 ? std::string(data, static_cast<size_t>(len)) : std::string();
}

// Never prompt on a terminal for a passphrase: our key has none.
int noPassphrase(char*, int, int, void*) { return 0; }

struct LoadedCa {
  X509Ptr cert;
  EvpPkeyPtr key;
};

// Why an existing CA was not usable: `fatal` errors stop startup (we must not
// overwrite what we cannot read), the others make loadOrCreate start afresh.
struct LoadFailure {
  bool fatal = false;
  bool absent = false;
  std::string reason;
};

std::variant<LoadedCa, LoadFailure> loadExisting(const CaPaths& paths, const std::vector<std::string>& hosts) {
  auto certPem = readFile(paths.caCert);
  auto keyPem = readFile(paths.caKey);
  bool certMissing = !certPem && certPem.error().code == ENOENT;
  bool keyMissing = !keyPem && keyPem.error().code == ENOENT;
  if (certMissing && keyMissing) return LoadFailure{false, true, "no CA yet"};
  if (!certPem && !certMissing) return LoadFailure{true, false, certPem.error().message};
  if (!keyPem && !keyMissing) return LoadFailure{true, false, keyPem.error().message};
  if (certMissing) return LoadFailure{false, false, paths.caCert + " is missing"};
  if (keyMissing) return LoadFailure{false, false, paths.caKey + " is missing"};

  struct stat st {};
  if (::stat(paths.caKey.c_str(), &st) == 0 && (st.st_mode & 077) != 0) {
    log::warn("{} was mode {:04o}; tightening to 0600", paths.caKey, st.st_mode & 07777);
    if (::chmod(paths.caKey.c_str(), kKeyMode) != 0) {
      return LoadFailure{true, false, sysError(errno, "cannot chmod {}", paths.caKey).message};
    }
  }

  LoadedCa ca;
  {
    BioPtr bio(BIO_new_mem_buf(certPem->data(), static_cast<int>(certPem->size())));
    ca.cert.reset(bio ? PEM_read_bio_X509(bio.get(), nullptr, noPassphrase, nullptr) : nullptr);
  }
  {
    BioPtr bio(BIO_new_mem_buf(keyPem->data(), static_cast<int>(keyPem->size())));
    ca.key.reset(bio ? PEM_read_bio_PrivateKey(bio.get(), nullptr, noPassphrase, nullptr) : nullptr);
    OPENSSL_cleanse(keyPem->data(), keyPem->size());
  }
  if (!ca.cert) return LoadFailure{false, false, paths.caCert + " is not a PEM certificate"};
  if (!ca.key) return LoadFailure{false, false, paths.caKey + " is not a PEM private key"};
  ERR_clear_error();
  if (X509_check_private_key(ca.cert.get(), ca.key.get()) != 1) {
    ERR_clear_error();
    return LoadFailure{false, false, "ca.key does not match ca.pem"};
  }
  if (X509_check_ca(ca.cert.get()) < 1) {
    return LoadFailure{false, false, "ca.pem is not a CA certificate"};
  }
  std::time_t now = std::time(nullptr);
  std::time_t renewAt = now + kCaRenewMarginDays * 24L * 3600L;
  if (X509_cmp_time(X509_get0_notAfter(ca.cert.get()), &renewAt) <= 0) {
    return LoadFailure{false, false, "the CA expires within 30 days"};
  }
  if (X509_cmp_time(X509_get0_notBefore(ca.cert.get()), &now) >= 0) {
    return LoadFailure{false, false, "the CA is not valid yet (clock moved back?)"};
  }
  auto permitted = permittedHosts(ca.cert.get());
  if (!permitted) {
    return LoadFailure{false, false, "the CA has no critical DNS-only nameConstraints"};
  }
  if (*permitted != hosts) {
    return LoadFailure{false, false,
                       fmt::format("the CA is constrained to [{}] but the targets are now [{}]",
                                   fmt::join(*permitted, ", "), fmt::join(hosts, ", "))};
  }
  return ca;
}

Result<void> writeTrustBundle(const CaPaths& paths, const std::string& systemBundle, const std::string& caPem) {
  std::string bundle;
  auto system = readFile(systemBundle);
  if (system) {
    bundle = std::move(system.value());
    if (!bundle.empty() && bundle.back() != '\n') bundle += '\n';
    bundle += "\n";
  } else {
    log::warn("system trust bundle unavailable ({}); {} holds only the atlasgate CA", system.error().message,
              paths.trustBundle);
  }
  bundle += "# ";
  bundle += kCaCommonName;
  bundle += "\n";
  bundle += caPem;
  return writeFileAtomic(paths.trustBundle, bundle, kPublicMode);
}

}  // namespace

CaPaths caPaths(const std::string& stateDir) {
  std::string dir = stateDir;
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  return CaPaths{dir + "/ca.pem", dir + "/ca.key", dir + "/trust-bundle.pem"};
}

Result<std::string> normalizeHost(std::string_view host) {
  std::string h(host);
  for (char& c : h) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  if (!h.empty() && h.back() == '.') h.pop_back();
  if (h.empty() || h.size() > 253) return makeError("invalid host name \"{}\"", host);
  unsigned char probe[16];
  if (inet_pton(AF_INET, h.c_str(), probe) == 1 || inet_pton(AF_INET6, h.c_str(), probe) == 1) {
    return makeError("\"{}\" is an IP address; targets must be DNS names", host);
  }
  size_t start = 0;
  while (start <= h.size()) {
    size_t end = h.find('.', start);
    if (end == std::string::npos) end = h.size();
    std::string_view label(h.data() + start, end - start);
    if (label.empty() || label.size() > 63 || label.front() == '-' || label.back() == '-') {
      return makeError("invalid host name \"{}\"", host);
    }
    for (char c : label) {
      bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-';
      if (!ok) return makeError("invalid host name \"{}\" (only letters, digits, '-', '.')", host);
    }
    start = end + 1;
  }
  return h;
}

Result<std::string> normalizeHostPattern(std::string_view pattern) {
  if (!pattern.starts_with("*.")) return normalizeHost(pattern);
  auto suffix = normalizeHost(pattern.substr(2));
  if (!suffix) return makeError("invalid host pattern \"{}\"", pattern);
  // `*.com` would let the CA sign for a whole top-level domain.
  if (suffix->find('.') == std::string::npos) {
    return makeError("host pattern \"{}\" is too broad: `*.` needs a name of at least two labels", pattern);
  }
  return "*." + suffix.value();
}

Result<Authority> Authority::loadOrCreate(const std::string& stateDir, const std::vector<std::string>& hosts,
                                          const std::string& systemBundle) {
  Authority ca;
  for (const auto& h : hosts) {
    auto n = normalizeHostPattern(h);
    if (!n) return n.error();
    ca.hosts_.push_back(std::move(n.value()));
  }
  std::sort(ca.hosts_.begin(), ca.hosts_.end());
  ca.hosts_.erase(std::unique(ca.hosts_.begin(), ca.hosts_.end()), ca.hosts_.end());
  if (ca.hosts_.empty()) return makeError("no target hosts: the CA would have nothing to sign for");
  ca.paths_ = caPaths(stateDir);

  auto dir = ensureDir(parentDir(ca.paths_.caCert));
  if (!dir) return dir.error();

  auto loaded = loadExisting(ca.paths_, ca.hosts_);
  if (auto* existing = std::get_if<LoadedCa>(&loaded)) {
    ca.caCert_ = std::move(existing->cert);
    ca.caKey_ = std::move(existing->key);
    log::info("loaded CA {} for [{}]", ca.paths_.caCert, fmt::join(ca.hosts_, ", "));
  } else {
    const auto& why = std::get<LoadFailure>(loaded);
    if (why.fatal) return makeError("cannot load the CA: {}", why.reason);
    if (!why.absent) log::warn("creating a new CA: {}", why.reason);

    auto key = generateP256Key();
    if (!key) return key.error();
    auto cert = makeCaCert(key->get(), ca.hosts_);
    if (!cert) return cert.error();
    std::string keyPem = keyToPem(key->get());
    if (keyPem.empty()) return makeError("cannot encode the CA key: {}", opensslErrors());
    auto wroteKey = writeFileAtomic(ca.paths_.caKey, keyPem, kKeyMode);
    OPENSSL_cleanse(keyPem.data(), keyPem.size());
    if (!wroteKey) return wroteKey.error();
    auto wroteCert = writeFileAtomic(ca.paths_.caCert, certToPem(cert->get()), kPublicMode);
    if (!wroteCert) return wroteCert.error();
    ca.caCert_ = std::move(cert.value());
    ca.caKey_ = std::move(key.value());
    log::info("created CA {} constrained to [{}]", ca.paths_.caCert, fmt::join(ca.hosts_, ", "));
  }

  auto bundle = writeTrustBundle(ca.paths_, systemBundle, ca.caPem());
  if (!bundle) return bundle.error();
  return ca;
}

const std::string* Authority::match(std::string_view host) const {
  // Only a name normalizeHost leaves unchanged: no '*' (an SNI of
  // `*.mongodb.net` must not equal the pattern), no case or trailing-dot games.
  auto normalized = normalizeHost(host);
  if (!normalized || *normalized != host) return nullptr;
  auto find = [this](std::string_view entry) -> const std::string* {
    auto it = std::lower_bound(hosts_.begin(), hosts_.end(), entry);
    return it != hosts_.end() && *it == entry ? &*it : nullptr;
  };
  if (const std::string* exact = find(host)) return exact;
  // Longest suffix first, so the most specific pattern wins. Starting the
  // search after the first label means the apex never matches its own pattern.
  std::string probe;
  for (size_t dot = host.find('.'); dot != std::string_view::npos; dot = host.find('.', dot + 1)) {
    probe.clear();
    probe.push_back('*');
    probe.append(host.substr(dot));
    if (const std::string* pattern = find(probe)) return pattern;
  }
  return nullptr;
}

bool Authority::hasEntry(std::string_view entry) const {
  return std::binary_search(hosts_.begin(), hosts_.end(), entry);
}

Result<Leaf> Authority::mintLeaf(const std::string& host) const {
  auto normalized = normalizeHost(host);
  if (!normalized) return normalized.error();
  const std::string& h = normalized.value();
  if (!allows(h)) {
    return makeError("refusing to mint a certificate for \"{}\": not a configured target", h);
  }
  auto key = generateP256Key();
  if (!key) return key.error();

  X509Ptr cert(X509_new());
  if (!cert) return makeError("X509_new: {}", opensslErrors());
  std::time_t now = std::time(nullptr);
  X509_NAME* name = X509_get_subject_name(cert.get());
  // A CN holds at most 64 characters (RFC 5280 ub-common-name) and names
  // under a wildcard may be longer; verifiers use the SAN, so leave it out then.
  bool cnFits = h.size() <= 64;
  bool ok =
      X509_set_version(cert.get(), X509_VERSION_3) == 1 && setRandomSerial(cert.get()) &&
      (!cnFits || X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                                             reinterpret_cast<const unsigned char*>(h.c_str()), -1, -1, 0) == 1) &&
      X509_set_issuer_name(cert.get(), X509_get_subject_name(caCert_.get())) == 1 &&
      setValidity(cert.get(), now, kBackdateSeconds, 0, kLeafValiditySeconds) &&
      X509_set_pubkey(cert.get(), key->get()) == 1 &&
      addExtension(cert.get(), caCert_.get(), NID_basic_constraints, "critical,CA:FALSE") &&
      addExtension(cert.get(), caCert_.get(), NID_key_usage, "critical,digitalSignature") &&
      addExtension(cert.get(), caCert_.get(), NID_ext_key_usage, "serverAuth") &&
      addExtension(cert.get(), caCert_.get(), NID_subject_key_identifier, "hash") &&
      addExtension(cert.get(), caCert_.get(), NID_authority_key_identifier, "keyid:always") &&
      addSubjectAltName(cert.get(), h, !cnFits) && X509_sign(cert.get(), caKey_.get(), EVP_sha256()) > 0;
  if (!ok) return makeError("cannot mint a certificate for {}: {}", h, opensslErrors());

  Leaf leaf;
  leaf.host = h;
  leaf.cert = std::move(cert);
  leaf.key = std::move(key.value());
  leaf.notBefore = std::chrono::system_clock::from_time_t(now - kBackdateSeconds);
  leaf.notAfter = std::chrono::system_clock::from_time_t(now + kLeafValiditySeconds);
  return leaf;
}

}  // namespace atlasgate::tls
