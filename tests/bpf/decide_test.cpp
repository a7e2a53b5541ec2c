// ag_decide() compiled for the host: every branch of the connect-time
// decision, the counter that explains it, and a sweep over the whole input
// space checking the invariants the BPF entry points rely on.

// clang-format off
#include <linux/types.h>
#include "atlasgate_abi.h"
#include "decide.h"
// clang-format on

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace {

constexpr __u32 kNoCounter = 0xdeadbeef;  // what ag_decide must leave alone on REDIRECT
constexpr __u32 kSockStream = AG_SOCK_STREAM;
constexpr __u32 kSockDgram = AG_SOCK_DGRAM;
constexpr __u32 kSockRaw = 3;
constexpr __u32 kSockSeqpacket = 5;

struct Outcome {
  int verdict;
  __u32 counter;
};

Outcome decide(const ag_conn_facts& f) {
  __u32 counter = kNoCounter;
  int verdict = ag_decide(&f, &counter);
  return {verdict, counter};
}

ag_conn_facts facts(__u32 type, __u16 port, bool target, bool refuseQuic) {
  ag_conn_facts f{};
  f.sock_type = type;
  f.dport = port;
  f.is_target = target ? 1 : 0;
  f.refuse_quic = refuseQuic ? 1 : 0;
  return f;
}

TEST(Decide, ConstantsMatchTheKernel) {
  EXPECT_EQ(AG_SOCK_STREAM, 1);  // SOCK_STREAM
  EXPECT_EQ(AG_SOCK_DGRAM, 2);   // SOCK_DGRAM
  EXPECT_EQ(AG_HTTPS_PORT, 443);
  EXPECT_EQ(AG_PASS, 0);
}

TEST(Decide, PortOtherThan443Passes) {
  for (__u16 port :
       {__u16{0}, __u16{80}, __u16{442}, __u16{444}, __u16{8443}, __u16{15443}, __u16{0xbb01}, __u16{65535}})
    for (__u32 type : {kSockStream, kSockDgram, kSockRaw})
      for (bool target : {false, true}) {
        auto o = decide(facts(type, port, target, true));
        EXPECT_EQ(o.verdict, AG_PASS) << "port " << port;
        EXPECT_EQ(o.counter, static_cast<__u32>(AG_CNT_SKIP_PORT)) << "port " << port;
      }
}

TEST(Decide, UdpToTargetIsRefusedOnlyWithRefuseQuic) {
  auto o = decide(facts(AG_SOCK_DGRAM, 443, true, true));
  EXPECT_EQ(o.verdict, AG_REFUSE);
  EXPECT_EQ(o.counter, static_cast<__u32>(AG_CNT_UDP_REFUSED));

  o = decide(facts(AG_SOCK_DGRAM, 443, true, false));
  EXPECT_EQ(o.verdict, AG_PASS);
  EXPECT_EQ(o.counter, static_cast<__u32>(AG_CNT_SKIP_NOT_TCP));
}

TEST(Decide, UdpToNonTargetPasses) {
  for (bool quic : {false, true}) {
    auto o = decide(facts(AG_SOCK_DGRAM, 443, false, quic));
    EXPECT_EQ(o.verdict, AG_PASS);
    EXPECT_EQ(o.counter, static_cast<__u32>(AG_CNT_SKIP_NOT_TCP));
  }
}

TEST(Decide, OtherSocketTypesPass) {
  for (__u32 type : {0u, kSockRaw, 4u /* SOCK_RDM */, kSockSeqpacket, 10u /* SOCK_PACKET */})
    for (bool target : {false, true})
      for (bool quic : {false, true}) {
        auto o = decide(facts(type, 443, target, quic));
        EXPECT_EQ(o.verdict, AG_PASS) << "type " << type;
        EXPECT_EQ(o.counter, static_cast<__u32>(AG_CNT_SKIP_NOT_TCP)) << "type " << type;
      }
}

TEST(Decide, TcpToTargetIsRedirected) {
  for (bool quic : {false, true}) {
    auto o = decide(facts(AG_SOCK_STREAM, 443, true, quic));
    EXPECT_EQ(o.verdict, AG_REDIRECT);
    // The caller pre-loads the redirected4/6 counter; ag_decide leaves it.
    EXPECT_EQ(o.counter, kNoCounter);
  }
  __u32 counter = AG_CNT_REDIRECTED6;
  auto f = facts(AG_SOCK_STREAM, 443, true, true);
  EXPECT_EQ(ag_decide(&f, &counter), AG_REDIRECT);
  EXPECT_EQ(counter, static_cast<__u32>(AG_CNT_REDIRECTED6));
}

TEST(Decide, TcpToNonTargetPasses) {
  for (bool quic : {false, true}) {
    auto o = decide(facts(AG_SOCK_STREAM, 443, false, quic));
    EXPECT_EQ(o.verdict, AG_PASS);
    EXPECT_EQ(o.counter, static_cast<__u32>(AG_CNT_SKIP_NOT_TARGET));
  }
}

TEST(Decide, FactsAreNotModified) {
  const auto f = facts(AG_SOCK_STREAM, 443, true, true);
  auto copy = f;
  __u32 counter = 0;
  (void)ag_decide(&copy, &counter);
  EXPECT_EQ(0, std::memcmp(&f, &copy, sizeof f));
}

// The whole input space that matters, checked against the invariants and an
// independent statement of the expected outcome.
TEST(Decide, SweepInvariants) {
  const __u16 ports[] = {0, 1, 80, 442, 443, 444, 8443, 15443, 0xbb01, 65535};
  const __u32 types[] = {0, kSockStream, kSockDgram, kSockRaw, 4, kSockSeqpacket, 6, 10};
  int redirects = 0, refusals = 0, cases = 0;

  for (__u16 port : ports)
    for (__u32 type : types)
      for (bool target : {false, true})
        for (bool quic : {false, true}) {
          ++cases;
          const auto f = facts(type, port, target, quic);
          const auto o = decide(f);
          const bool tcp = type == AG_SOCK_STREAM, udp = type == AG_SOCK_DGRAM;
          const std::string where = "type=" + std::to_string(type) + " port=" + std::to_string(port) +
                                    " target=" + std::to_string(target) + " quic=" + std::to_string(quic);

          ASSERT_TRUE(o.verdict == AG_PASS || o.verdict == AG_REDIRECT || o.verdict == AG_REFUSE) << where;
          if (o.verdict == AG_REDIRECT) {
            ++redirects;
            EXPECT_TRUE(tcp && port == 443 && target) << where;
            EXPECT_EQ(o.counter, kNoCounter) << where;
          }
          if (o.verdict == AG_REFUSE) {
            ++refusals;
            EXPECT_TRUE(udp && port == 443 && target && quic) << where;
            EXPECT_EQ(o.counter, static_cast<__u32>(AG_CNT_UDP_REFUSED)) << where;
          }
          if (o.verdict == AG_PASS) {
            // Every pass is explained by a counter naming a skip.
            EXPECT_TRUE(o.counter == AG_CNT_SKIP_PORT || o.counter == AG_CNT_SKIP_NOT_TCP ||
                        o.counter == AG_CNT_SKIP_NOT_TARGET)
                << where << " counter=" << o.counter;
          }

          // The exact expectation, branch order included.
          int wantVerdict;
          __u32 wantCounter;
          if (port != 443) {
            wantVerdict = AG_PASS, wantCounter = AG_CNT_SKIP_PORT;
          } else if (!tcp) {
            if (udp && target && quic)
              wantVerdict = AG_REFUSE, wantCounter = AG_CNT_UDP_REFUSED;
            else
              wantVerdict = AG_PASS, wantCounter = AG_CNT_SKIP_NOT_TCP;
          } else if (!target) {
            wantVerdict = AG_PASS, wantCounter = AG_CNT_SKIP_NOT_TARGET;
          } else {
            wantVerdict = AG_REDIRECT, wantCounter = kNoCounter;
          }
          EXPECT_EQ(o.verdict, wantVerdict) << where;
          EXPECT_EQ(o.counter, wantCounter) << where;
        }

  // Redirect: tcp, 443, target, any quic; refuse: udp, 443, target, quic.
  // (No case is exempt by pid: the facts carry none.)
  EXPECT_EQ(cases, 10 * 8 * 2 * 2);
  EXPECT_EQ(redirects, 2);
  EXPECT_EQ(refusals, 1);
}

}  // namespace

// intercept: all-tls redirects every TCP/443 connection, target or not, and
// nothing else: other ports and UDP stay as they were.
TEST(Decide, InterceptAllRedirectsEveryTcp443) {
  auto all = [](ag_conn_facts f) {
    f.intercept_all = 1;
    return f;
  };
  auto o = decide(all(facts(AG_SOCK_STREAM, 443, false, true)));
  EXPECT_EQ(o.verdict, AG_REDIRECT);
  EXPECT_EQ(o.counter, static_cast<__u32>(AG_CNT_REDIRECTED_ANY));
  o = decide(all(facts(AG_SOCK_STREAM, 443, true, true)));
  EXPECT_EQ(o.verdict, AG_REDIRECT);
  o = decide(all(facts(AG_SOCK_STREAM, 80, false, true)));
  EXPECT_EQ(o.verdict, AG_PASS);
  o = decide(all(facts(AG_SOCK_DGRAM, 443, false, true)));
  EXPECT_EQ(o.verdict, AG_PASS);
}

// ---- mongo_port: every TCP connection to the mongodb targets' port ------------

namespace {

ag_conn_facts mongo(ag_conn_facts f, __u16 mongoPort, bool interceptAll = false) {
  f.mongo_port = mongoPort;
  f.intercept_all = interceptAll ? 1 : 0;
  return f;
}

// A mongodb target is a name pattern: no address says which connections are
// its, so the verdict ignores is_target, refuse_quic and intercept_all.
TEST(DecideMongo, TcpToMongoPortIsRedirectedWhateverTheAddress) {
  for (__u16 port : {__u16{27017}, __u16{27018}, __u16{1}, __u16{65535}})
    for (bool target : {false, true})
      for (bool quic : {false, true})
        for (bool all : {false, true}) {
          auto o = decide(mongo(facts(AG_SOCK_STREAM, port, target, quic), port, all));
          EXPECT_EQ(o.verdict, AG_REDIRECT) << "port " << port << " target " << target;
          EXPECT_EQ(o.counter, static_cast<__u32>(AG_CNT_REDIRECTED_MONGO)) << "port " << port;
        }
}

TEST(DecideMongo, OtherSocketTypesToMongoPortPass) {
  for (bool target : {false, true})
    for (bool quic : {false, true}) {
      auto o = decide(mongo(facts(AG_SOCK_DGRAM, 27017, target, quic), 27017));
      EXPECT_EQ(o.verdict, AG_PASS) << "udp target " << target;
      EXPECT_EQ(o.counter, static_cast<__u32>(AG_CNT_SKIP_PORT));
      for (__u32 type : {0u, kSockRaw, kSockSeqpacket}) {
        o = decide(mongo(facts(type, 27017, target, quic), 27017, true));
        EXPECT_EQ(o.verdict, AG_PASS) << "type " << type;
        EXPECT_EQ(o.counter, static_cast<__u32>(AG_CNT_SKIP_PORT)) << "type " << type;
      }
    }
}

TEST(DecideMongo, NeighbouringPortsAndZeroMongoPortPass) {
  for (__u16 port : {__u16{27016}, __u16{27018}, __u16{0x8969} /* 27017 (0x6989) byte-swapped */, __u16{80}}) {
    auto o = decide(mongo(facts(AG_SOCK_STREAM, port, true, true), 27017, true));
    EXPECT_EQ(o.verdict, AG_PASS) << "port " << port;
    EXPECT_EQ(o.counter, static_cast<__u32>(AG_CNT_SKIP_PORT)) << "port " << port;
  }
  // mongo_port 0 is "no mongodb target", not "port 0".
  for (bool target : {false, true}) {
    auto o = decide(mongo(facts(AG_SOCK_STREAM, 0, target, true), 0, true));
    EXPECT_EQ(o.verdict, AG_PASS);
    EXPECT_EQ(o.counter, static_cast<__u32>(AG_CNT_SKIP_PORT));
    o = decide(mongo(facts(AG_SOCK_STREAM, 27017, target, true), 0));
    EXPECT_EQ(o.verdict, AG_PASS);
    EXPECT_EQ(o.counter, static_cast<__u32>(AG_CNT_SKIP_PORT));
  }
}

// Whatever mongo_port is, a connection to another port is decided exactly as
// with mongo_port 0: 443 keeps its own behaviour.
TEST(DecideMongo, EverythingElseIsAsWithoutMongoPort) {
  const __u16 ports[] = {0, 1, 80, 442, 443, 444, 8443, 15443, 27017, 65535};
  const __u32 types[] = {0, kSockStream, kSockDgram, kSockRaw, kSockSeqpacket};
  int compared = 0;
  for (__u16 mongoPort : {__u16{0}, __u16{27017}, __u16{27018}})
    for (__u16 port : ports)
      for (__u32 type : types)
        for (bool target : {false, true})
          for (bool quic : {false, true})
            for (bool all : {false, true}) {
              if (mongoPort != 0 && port == mongoPort && type == AG_SOCK_STREAM) continue;
              ++compared;
              const auto without = decide(mongo(facts(type, port, target, quic), 0, all));
              const auto with = decide(mongo(facts(type, port, target, quic), mongoPort, all));
              EXPECT_EQ(with.verdict, without.verdict) << "mongo " << mongoPort << " port " << port << " type " << type;
              EXPECT_EQ(with.counter, without.counter) << "mongo " << mongoPort << " port " << port;
              EXPECT_NE(with.counter, static_cast<__u32>(AG_CNT_REDIRECTED_MONGO));
            }
  EXPECT_EQ(compared, 3 * 10 * 5 * 8 - 8);  // less TCP to 27017 with mongo_port 27017
  // Spot checks of 443 with a mongodb port set.
  auto o = decide(mongo(facts(AG_SOCK_STREAM, 443, true, true), 27017));
  EXPECT_EQ(o.verdict, AG_REDIRECT);
  EXPECT_EQ(o.counter, kNoCounter);
  o = decide(mongo(facts(AG_SOCK_STREAM, 443, false, true), 27017));
  EXPECT_EQ(o.counter, static_cast<__u32>(AG_CNT_SKIP_NOT_TARGET));
  o = decide(mongo(facts(AG_SOCK_DGRAM, 443, true, true), 27017));
  EXPECT_EQ(o.verdict, AG_REFUSE);
  o = decide(mongo(facts(AG_SOCK_STREAM, 443, false, true), 27017, true));
  EXPECT_EQ(o.counter, static_cast<__u32>(AG_CNT_REDIRECTED_ANY));
}

TEST(DecideMongo, MongoFactsAreNotModified) {
  const auto f = mongo(facts(AG_SOCK_STREAM, 27017, false, false), 27017);
  auto copy = f;
  __u32 counter = 0;
  EXPECT_EQ(ag_decide(&copy, &counter), AG_REDIRECT);
  EXPECT_EQ(0, std::memcmp(&f, &copy, sizeof f));
}

}  // namespace
