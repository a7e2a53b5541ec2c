// dns/resolver.h, the pure part: how often a target is re-resolved for a
// given TTL. (resolve() itself queries resolvers over the network: it is
// exercised by the integration tests, not here.)

#include <gtest/gtest.h>

#include <chrono>
#include <limits>

#include "dns/resolver.h"

using atlasgate::dns::refreshInterval;
using std::chrono::seconds;

TEST(RefreshInterval, HalfTheTtlWithinTheDefaults) {
  EXPECT_EQ(refreshInterval(seconds(60)), seconds(30));
  EXPECT_EQ(refreshInterval(seconds(300)), seconds(150));
  EXPECT_EQ(refreshInterval(seconds(1200)), seconds(600));
  EXPECT_EQ(refreshInterval(seconds(21)), seconds(10));  // integer halving
  EXPECT_EQ(refreshInterval(seconds(23)), seconds(11));
}

TEST(RefreshInterval, DefaultFloorIs10sCeilingIs600s) {
  EXPECT_EQ(refreshInterval(seconds(0)), seconds(10));
  EXPECT_EQ(refreshInterval(seconds(1)), seconds(10));
  EXPECT_EQ(refreshInterval(seconds(19)), seconds(10));
  EXPECT_EQ(refreshInterval(seconds(20)), seconds(10));
  EXPECT_EQ(refreshInterval(seconds(1201)), seconds(600));
  EXPECT_EQ(refreshInterval(seconds(86400)), seconds(600));
}

TEST(RefreshInterval, ExtremeTtls) {
  // A TTL is 32-bit unsigned on the wire; the largest and hostile values
  // (negative from a bad conversion, the type's own limits) stay in bounds.
  EXPECT_EQ(refreshInterval(seconds(0xFFFFFFFFll)), seconds(600));
  EXPECT_EQ(refreshInterval(seconds(-1)), seconds(10));
  EXPECT_EQ(refreshInterval(seconds(std::numeric_limits<seconds::rep>::max())), seconds(600));
  EXPECT_EQ(refreshInterval(seconds(std::numeric_limits<seconds::rep>::min())), seconds(10));
}

TEST(RefreshInterval, CustomBounds) {
  EXPECT_EQ(refreshInterval(seconds(60), seconds(1), seconds(3600)), seconds(30));
  EXPECT_EQ(refreshInterval(seconds(60), seconds(45), seconds(3600)), seconds(45));
  EXPECT_EQ(refreshInterval(seconds(60), seconds(1), seconds(20)), seconds(20));
  EXPECT_EQ(refreshInterval(seconds(60), seconds(30), seconds(30)), seconds(30));
  EXPECT_EQ(refreshInterval(seconds(0), seconds(0), seconds(0)), seconds(0));
}
