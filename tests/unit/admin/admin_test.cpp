#include "admin/admin.h"

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>

#include <gtest/gtest.h>

namespace atlasgate::admin {
namespace {

TEST(BearerMatches, OnlyTheExactTokenUnderTheBearerScheme) {
  const std::string token = "agt-admin-0123456789abcdef";
  EXPECT_TRUE(bearerMatches("Bearer " + token, token));
  EXPECT_TRUE(bearerMatches("bearer " + token, token));            // the scheme is case-insensitive
  EXPECT_TRUE(bearerMatches("  BEARER   " + token + " ", token));  // optional whitespace
  EXPECT_FALSE(bearerMatches("", token));
  EXPECT_FALSE(bearerMatches(token, token));  // no scheme
  EXPECT_FALSE(bearerMatches("Basic " + token, token));
  EXPECT_FALSE(bearerMatches("Bearer", token));
  EXPECT_FALSE(bearerMatches("Bearer ", token));
  EXPECT_FALSE(bearerMatches("Bearer " + token.substr(0, token.size() - 1), token));  // a prefix
  EXPECT_FALSE(bearerMatches("Bearer " + token + "x", token));                        // longer
  EXPECT_FALSE(bearerMatches("Bearer AGT-ADMIN-0123456789ABCDEF", token));            // the token is not
  EXPECT_FALSE(bearerMatches("Bearer " + token, ""));                                 // an empty token matches nothing
  EXPECT_FALSE(bearerMatches("Bearer ", ""));
}

TEST(ReadToken, FromTheFileTrailingNewlineDropped) {
  config::Listen none;
  auto absent = readToken(none);
  ASSERT_TRUE(absent.ok());
  EXPECT_FALSE(absent.value().has_value());

  char dir[] = "/tmp/atlasgate-admin-test-XXXXXX";
  ASSERT_NE(::mkdtemp(dir), nullptr);
  const std::string path = std::string(dir) + "/token";
  config::Listen l;
  l.admin = "127.0.0.1:15444";
  l.adminTokenFile = path;
  EXPECT_FALSE(readToken(l).ok());  // missing file: an error, not an open endpoint
  std::ofstream(path) << "s3cret-token\n";
  auto t = readToken(l);
  ASSERT_TRUE(t.ok()) << t.error().message;
  ASSERT_TRUE(t.value().has_value());
  EXPECT_EQ(t.value()->view(), "s3cret-token");
  std::ofstream(path, std::ios::trunc) << "\n";
  EXPECT_FALSE(readToken(l).ok());  // empty
  std::remove(path.c_str());
  ::rmdir(dir);
}

TEST(ListenConfig, AdminTokenFile) {
  const std::string target = "targets:\n  - host: cloud.mongodb.com\n";
  auto ok = config::parseConfig(
      "listen:\n  admin: 127.0.0.1:15444\n  admin_token_file: /etc/atlasgate/admin-token\n" + target, "a.yaml", false);
  ASSERT_TRUE(ok.ok()) << ok.error().message;
  EXPECT_EQ(ok.value().listen.adminTokenFile, "/etc/atlasgate/admin-token");

  auto relative = config::parseConfig("listen:\n  admin: 127.0.0.1:15444\n  admin_token_file: admin-token\n" + target,
                                      "a.yaml", false);
  ASSERT_FALSE(relative.ok());
  EXPECT_NE(relative.error().message.find("a.yaml:3:21: listen.admin_token_file: expected an absolute path"),
            std::string::npos)
      << relative.error().message;

  auto orphan =
      config::parseConfig("listen:\n  admin_token_file: /etc/atlasgate/admin-token\n" + target, "a.yaml", false);
  ASSERT_FALSE(orphan.ok());
  EXPECT_NE(orphan.error().message.find("listen.admin_token_file: needs listen.admin"), std::string::npos)
      << orphan.error().message;
}

}  // namespace
}  // namespace atlasgate::admin
