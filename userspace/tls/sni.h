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

// A printable, bounded rendering of an untrusted name, for log lines.
std::string printableName(std::string_view name);

}  // namespace atlasgate::tls
