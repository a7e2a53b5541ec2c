// fuzz_sni: the agent's first TLS bytes. tls::parseServerName() on raw
// server_name extension bodies, and the terminator's whole ClientHello path:
// a server SSL from tls::ServerContext (leaf minted by a real Authority made
// once in a temp state dir) fed the input through memory BIOs, with the
// ClientHello callback (SNI -> target -> leaf) and ALPN selection, driving
// SSL_do_handshake once.
//
// Each input is used three ways: as an extension body; as raw records (seeds
// are real ClientHellos); and, when it does not start like a handshake
// record (0x16), as the body of a ClientHello wrapped in record and
// handshake headers.
//
// Oracles, beyond ASan/UBSan:
//  * an accepted server name is non-empty, at most 255 bytes, lower-case,
//    without NUL; printableName() is printable ASCII and bounded;
//  * when the handshake gets past the ClientHello, the selected host is a
//    configured target, and it is the SNI the client sent (or, without SNI,
//    the default host of the original destination).

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "fuzz_common.h"
#include "tls/authority.h"
#include "tls/server_context.h"
#include "tls/sni.h"

namespace tls = atlasgate::tls;

namespace {

std::string gStateDir;
std::unique_ptr<tls::ServerContext> gServer;
const std::string kDefaultHost = "cloud.mongodb.com";

void removeStateDir() {
  if (gStateDir.empty()) return;
  std::error_code ec;
  std::filesystem::remove_all(gStateDir, ec);
}

void checkName(std::span<const uint8_t> ext) {
  tls::SniResult r = tls::parseServerName(ext);
  if (r.status != tls::SniStatus::Ok) return;
  AG_FUZZ_CHECK(!r.host.empty() && r.host.size() <= tls::kMaxSniLength, r.host);
  for (char c : r.host) {
    AG_FUZZ_CHECK(c != '\0', "NUL in an accepted server name");
    AG_FUZZ_CHECK(!(c >= 'A' && c <= 'Z'), "server name not lower-cased: " + r.host);
  }
  std::string shown = tls::printableName(r.host);
  AG_FUZZ_CHECK(shown.size() <= 80 * 4 + 3, "printableName unbounded");
  for (char c : shown) AG_FUZZ_CHECK(c >= 0x20 && c < 0x7f, "printableName not printable: " + shown);
}

// The first record written is a handshake record starting with ServerHello.
bool serverHelloSent(BIO* out) {
  const char* p = nullptr;
  long n = BIO_get_mem_data(out, &p);
  return n >= 6 && p[0] == 0x16 && p[5] == 0x02;
}

void handshake(const uint8_t* data, std::size_t size, bool withDefaultHost) {
  SSL* ssl = SSL_new(gServer->native());
  if (!ssl) return;
  BIO* in = BIO_new(BIO_s_mem());
  BIO* out = BIO_new(BIO_s_mem());
  BIO_set_mem_eof_return(in, -1);  // the rest of the stream has not arrived yet
  if (size) BIO_write(in, data, static_cast<int>(size));
  SSL_set_bio(ssl, in, out);
  SSL_set_accept_state(ssl);
  tls::ServerContext::setDefaultHost(ssl, withDefaultHost ? &kDefaultHost : nullptr);

  (void)SSL_do_handshake(ssl);

  if (const std::string* selected = tls::ServerContext::selectedHost(ssl)) {
    AG_FUZZ_CHECK(*selected == "cloud.mongodb.com" || *selected == "realm.mongodb.com", *selected);
    if (const char* sni = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name)) {
      std::string want(sni);
      for (char& c : want)
        if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
      if (!want.empty() && want.back() == '.') want.pop_back();
      AG_FUZZ_CHECK(want == *selected, "leaf for " + *selected + " but the SNI is " + want);
    } else if (serverHelloSent(out)) {
      // Extensions are processed by the time a ServerHello goes out, so no
      // server name here means the ClientHello carried none.
      AG_FUZZ_CHECK(withDefaultHost && *selected == kDefaultHost,
                    "no SNI, no default host, yet a leaf for " + *selected);
    }
  }
  SSL_free(ssl);
  ERR_clear_error();
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  atlasgate::fuzz::quietLogs();
  char dir[] = "/tmp/atlasgate-fuzz-sni-XXXXXX";
  if (!mkdtemp(dir)) atlasgate::fuzz::fail("mkdtemp");
  gStateDir = dir;
  std::atexit(removeStateDir);
  // No system bundle: the trust bundle is then our CA alone (and a warning).
  auto authority = tls::Authority::loadOrCreate(gStateDir + "/state", {"cloud.mongodb.com", "realm.mongodb.com"},
                                                gStateDir + "/no-system-bundle.pem");
  if (!authority) atlasgate::fuzz::fail("Authority::loadOrCreate", authority.error().message);
  auto shared = std::make_shared<const tls::Authority>(std::move(authority).value());
  auto server = tls::ServerContext::create(shared);
  if (!server) atlasgate::fuzz::fail("ServerContext::create", server.error().message);
  gServer = std::make_unique<tls::ServerContext>(std::move(server).value());
  // Registered after OpenSSL's own atexit cleanup, so it runs before it: the
  // SSL_CTX's ex_data (the leaf cache) must be freed while OpenSSL still knows
  // its free callback, or LeakSanitizer reports the whole context at exit.
  std::atexit([] { gServer.reset(); });
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  checkName(std::span<const uint8_t>(data, size));
  const bool withDefault = size % 2 == 1;
  handshake(data, size, withDefault);
  if (size > 0 && data[0] != 0x16 && size <= 16384 - 4) {
    std::vector<uint8_t> rec;
    rec.reserve(size + 9);
    const std::size_t hs = size + 4;
    rec.insert(rec.end(),
               {0x16, 0x03, 0x01, static_cast<uint8_t>(hs >> 8), static_cast<uint8_t>(hs), 0x01,
                static_cast<uint8_t>(size >> 16), static_cast<uint8_t>(size >> 8), static_cast<uint8_t>(size)});
    rec.insert(rec.end(), data, data + size);
    handshake(rec.data(), rec.size(), !withDefault);
  }
  return 0;
}
