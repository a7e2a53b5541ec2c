#include "tls/sni.h"

#include <fmt/format.h>

namespace atlasgate::tls {

namespace {
constexpr uint8_t kHostNameType = 0;  // NameType host_name
}  // namespace

SniResult parseServerName(std::span<const uint8_t> ext) {
  SniResult bad;
  // ServerNameList: uint16 length, then that many bytes of entries.
  if (ext.size() < 2) return bad;
  size_t listLen = (size_t{ext[0]} << 8) | ext[1];
  if (listLen != ext.size() - 2) return bad;
  auto list = ext.subspan(2);
  // Exactly one entry: NameType (1) + HostName<1..2^16-1> (2 + n). OpenSSL
  // itself rejects lists with more than one entry; we are no more lenient.
  if (list.size() < 3 || list[0] != kHostNameType) return bad;
  size_t nameLen = (size_t{list[1]} << 8) | list[2];
  if (nameLen == 0 || nameLen != list.size() - 3 || nameLen > kMaxSniLength) return bad;

  SniResult out;
  out.host.reserve(nameLen);
  for (uint8_t c : list.subspan(3)) {
    if (c == 0) return bad;
    out.host.push_back(c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a')
                                            : static_cast<char>(c));
  }
  if (out.host.back() == '.') out.host.pop_back();
  if (out.host.empty()) return bad;
  out.status = SniStatus::Ok;
  return out;
}

std::string printableName(std::string_view name) {
  constexpr size_t kMaxShown = 80;
  std::string out;
  for (size_t i = 0; i < name.size() && i < kMaxShown; ++i) {
    auto c = static_cast<unsigned char>(name[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\' && c != '"') {
      out.push_back(static_cast<char>(c));
    } else {
      out += fmt::format("\\x{:02x}", c);
    }
  }
  if (name.size() > kMaxShown) out += "...";
  return out;
}

}  // namespace atlasgate::tls
