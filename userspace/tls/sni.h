#pragma once
// Parsing of the TLS server_name extension (RFC 6066 section 3) as it arrives
// in a ClientHello: untrusted bytes from the agent. Kept apart from OpenSSL so
// it can be unit-tested and fuzzed on its own.

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace atlasgate::tls {

enum class SniStatus {
  Ok,         // exactly one host_name entry; `host` holds it, ASCII-lower-cased
  Malformed,  // lengths inconsistent, empty or over-long name, other name types,
              // more than one entry, NUL bytes: refuse with decode_error
};

struct SniResult {
  SniStatus status = SniStatus::Malformed;
  std::string host;
};

inline constexpr size_t kMaxSniLength = 255;

// `ext` is the extension body (without the type and length of the extension
// itself). A single trailing dot is removed, as clients differ on sending it.
SniResult parseServerName(std::span<const uint8_t> ext);

enum class HelloStatus {
  NeedMore,  // not enough bytes yet for the first record
  NotTls,    // not a TLS handshake record carrying a ClientHello
  NoSni,     // a ClientHello without a (usable) server_name
  Sni,       // a ClientHello naming `host`
};

struct HelloPeek {
  HelloStatus status = HelloStatus::NeedMore;
  std::string host;
};

// Looks at the first bytes a client sent (peeked, not consumed) for the SNI
// of its ClientHello. The ClientHello must fit the first record (it always
// does in practice: 16 KiB); anything else is NoSni.
HelloPeek peekClientHello(std::span<const uint8_t> data);

// A printable, bounded rendering of an untrusted name, for log lines.
std::string printableName(std::string_view name);

}  // namespace atlasgate::tls
