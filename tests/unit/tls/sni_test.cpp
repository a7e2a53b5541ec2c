#include "tls/sni.h"

#include <vector>

#include <gtest/gtest.h>

namespace atlasgate::tls {
namespace {

// Builds a server_name extension body holding the given (type, name) entries.
std::vector<uint8_t> ext(std::initializer_list<std::pair<uint8_t, std::string>> entries) {
  std::vector<uint8_t> list;
  for (const auto& [type, name] : entries) {
    list.push_back(type);
    list.push_back(static_cast<uint8_t>(name.size() >> 8));
    list.push_back(static_cast<uint8_t>(name.size()));
    list.insert(list.end(), name.begin(), name.end());
  }
  std::vector<uint8_t> out;
  out.reserve(list.size() + 2);
  out.push_back(static_cast<uint8_t>(list.size() >> 8));
  out.push_back(static_cast<uint8_t>(list.size()));
  for (uint8_t b : list) out.push_back(b);  // (insert() trips a GCC 12 -Warray-bounds false positive)
  return out;
}

TEST(ParseServerName, AcceptsOneHostName) {
  auto r = parseServerName(ext({{0, "cloud.mongodb.com"}}));
  ASSERT_EQ(r.status, SniStatus::Ok);
  EXPECT_EQ(r.host, "cloud.mongodb.com");
}

TEST(ParseServerName, LowerCasesAndDropsTrailingDot) {
  auto r = parseServerName(ext({{0, "Cloud.MongoDB.COM."}}));
  ASSERT_EQ(r.status, SniStatus::Ok);
  EXPECT_EQ(r.host, "cloud.mongodb.com");
}

TEST(ParseServerName, RejectsMalformed) {
  EXPECT_EQ(parseServerName({}).status, SniStatus::Malformed);
  EXPECT_EQ(parseServerName(std::vector<uint8_t>{0}).status, SniStatus::Malformed);
  EXPECT_EQ(parseServerName(std::vector<uint8_t>{0, 0}).status, SniStatus::Malformed);
  EXPECT_EQ(parseServerName(ext({{0, ""}})).status, SniStatus::Malformed);
  EXPECT_EQ(parseServerName(ext({{0, "."}})).status, SniStatus::Malformed);
  EXPECT_EQ(parseServerName(ext({{1, "cloud.mongodb.com"}})).status, SniStatus::Malformed);
  EXPECT_EQ(parseServerName(ext({{0, "a.com"}, {0, "b.com"}})).status, SniStatus::Malformed);
  EXPECT_EQ(parseServerName(ext({{0, std::string("a\0b.com", 7)}})).status, SniStatus::Malformed);
  EXPECT_EQ(parseServerName(ext({{0, std::string(256, 'a')}})).status, SniStatus::Malformed);
  EXPECT_EQ(parseServerName(ext({{0, std::string(255, 'a')}})).status, SniStatus::Ok);
}

TEST(ParseServerName, RejectsEveryTruncationAndExtension) {
  auto good = ext({{0, "cloud.mongodb.com"}});
  for (size_t n = 0; n < good.size(); ++n) {
    EXPECT_EQ(parseServerName(std::span(good.data(), n)).status, SniStatus::Malformed) << n;
  }
  auto longer = good;
  longer.push_back('x');
  EXPECT_EQ(parseServerName(longer).status, SniStatus::Malformed);
  // Inner length claims more than there is.
  auto lying = good;
  lying[4] = static_cast<uint8_t>(lying[4] + 1);
  EXPECT_EQ(parseServerName(lying).status, SniStatus::Malformed);
  // Outer length claims less.
  auto shortList = good;
  shortList[1] = static_cast<uint8_t>(shortList[1] - 1);
  EXPECT_EQ(parseServerName(shortList).status, SniStatus::Malformed);
}

TEST(PrintableName, EscapesAndBounds) {
  EXPECT_EQ(printableName("ok.example"), "ok.example");
  EXPECT_EQ(printableName(std::string("a\nb\"\x01", 5)), "a\\x0ab\\x22\\x01");
  EXPECT_EQ(printableName(std::string(200, 'a')).size(), 83u);
}

}  // namespace
}  // namespace atlasgate::tls
