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
    out.host.push_back(c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : static_cast<char>(c));
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

HelloPeek peekClientHello(std::span<const uint8_t> d) {
  HelloPeek out;
  if (d.size() < 5) {
    out.status = d.empty() || d[0] == 0x16 ? HelloStatus::NeedMore : HelloStatus::NotTls;
    return out;
  }
  if (d[0] != 0x16 || d[1] != 0x03) {
    out.status = HelloStatus::NotTls;
    return out;
  }
  std::size_t recLen = (std::size_t{d[3]} << 8) | d[4];
  if (recLen < 4 || recLen > 16384 + 2048) {
    out.status = HelloStatus::NotTls;
    return out;
  }
  if (d.size() < 5 + recLen) return out;  // NeedMore
  std::span<const uint8_t> r = d.subspan(5, recLen);
  out.status = HelloStatus::NoSni;
  if (r[0] != 0x01) {
    out.status = HelloStatus::NotTls;
    return out;
  }
  std::size_t hsLen = (std::size_t{r[1]} << 16) | (std::size_t{r[2]} << 8) | r[3];
  if (hsLen + 4 > r.size()) return out;  // spans records: cannot tell
  std::span<const uint8_t> h = r.subspan(4, hsLen);
  std::size_t i = 2 + 32;  // legacy_version, random
  auto skip8 = [&](std::size_t& at) {
    if (at >= h.size()) return false;
    at += 1 + h[at];
    return at <= h.size();
  };
  auto skip16 = [&](std::size_t& at) {
    if (at + 2 > h.size()) return false;
    at += 2 + ((std::size_t{h[at]} << 8) | h[at + 1]);
    return at <= h.size();
  };
  if (i > h.size() || !skip8(i) || !skip16(i) || !skip8(i)) return out;  // session id, suites, compression
  if (i + 2 > h.size()) return out;
  std::size_t extEnd = i + 2 + ((std::size_t{h[i]} << 8) | h[i + 1]);
  i += 2;
  if (extEnd > h.size()) return out;
  while (i + 4 <= extEnd) {
    unsigned type = (unsigned{h[i]} << 8) | h[i + 1];
    std::size_t len = (std::size_t{h[i + 2]} << 8) | h[i + 3];
    i += 4;
    if (i + len > extEnd) return out;
    if (type == 0) {
      SniResult sni = parseServerName(h.subspan(i, len));
      if (sni.status == SniStatus::Ok) {
        out.status = HelloStatus::Sni;
        out.host = std::move(sni.host);
      }
      return out;
    }
    i += len;
  }
  return out;
}

}  // namespace atlasgate::tls
