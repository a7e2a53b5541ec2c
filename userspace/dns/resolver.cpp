#include "dns/resolver.h"

#include <arpa/inet.h>
#include <arpa/nameser.h>
#include <netinet/in.h>
#include <netdb.h>
#include <resolv.h>

#include <algorithm>
#include <cstring>

namespace atlasgate::dns {

std::chrono::seconds refreshInterval(std::chrono::seconds ttl, std::chrono::seconds floor,
                                     std::chrono::seconds ceiling) {
  return std::clamp(ttl / 2, floor, ceiling);
}

Result<Answer> resolve(const std::string& host, const std::vector<std::string>& servers) {
  struct __res_state state {};
  if (res_ninit(&state) != 0) return makeError("resolver initialisation failed");
  state.retrans = 2;
  state.retry = 2;
  if (!servers.empty()) {
    int n = 0;
    for (const auto& s : servers) {
      if (n >= MAXNS) break;
      auto colon = s.find(':');
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_port = htons(colon == std::string::npos ? 53 : static_cast<uint16_t>(std::stoul(s.substr(colon + 1))));
      if (::inet_pton(AF_INET, s.substr(0, colon).c_str(), &a.sin_addr) != 1) continue;
      state.nsaddr_list[n++] = a;
    }
    state.nscount = n;
  }
  Answer out;
  std::uint32_t minTtl = UINT32_MAX;
  std::string lastError;
  for (int type : {ns_t_a, ns_t_aaaa}) {
    unsigned char buf[4096];
    int len = res_nquery(&state, host.c_str(), ns_c_in, type, buf, sizeof buf);
    if (len < 0) {
      lastError = hstrerror(state.res_h_errno);
      continue;
    }
    ns_msg msg;
    if (ns_initparse(buf, len, &msg) != 0) continue;
    int count = ns_msg_count(msg, ns_s_an);
    for (int i = 0; i < count; ++i) {
      ns_rr rr;
      if (ns_parserr(&msg, ns_s_an, i, &rr) != 0) continue;
      int t = ns_rr_type(rr);
      char text[INET6_ADDRSTRLEN] = {};
      if (t == ns_t_a && ns_rr_rdlen(rr) == 4)
        ::inet_ntop(AF_INET, ns_rr_rdata(rr), text, sizeof text);
      else if (t == ns_t_aaaa && ns_rr_rdlen(rr) == 16)
        ::inet_ntop(AF_INET6, ns_rr_rdata(rr), text, sizeof text);
      else
        continue;  // CNAMEs on the way
      out.addresses.emplace_back(text);
      minTtl = std::min<std::uint32_t>(minTtl, ns_rr_ttl(rr));
    }
  }
  res_nclose(&state);
  if (out.addresses.empty())
    return makeError("no A/AAAA records for {}{}{}", host, lastError.empty() ? "" : ": ", lastError);
  out.ttl = std::chrono::seconds(minTtl == UINT32_MAX ? 60 : minTtl);
  return out;
}

}  // namespace atlasgate::dns
