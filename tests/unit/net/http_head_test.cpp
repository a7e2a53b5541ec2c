// writeHead writes what Beast's serializer writes, byte for byte: the data
// path's heads (upstream requests, answers relayed to agents) must not
// change by being written without it.
#include "net/http_head.h"

#include <gtest/gtest.h>

#include <sstream>

namespace atlasgate::net {
namespace {

template <bool isRequest>
std::string beastHead(const http::message<isRequest, http::empty_body>& m) {
  std::ostringstream os;
  os << m.base();
  return os.str();
}

TEST(HttpHead, RequestAsBeastWritesIt) {
  http::request<http::empty_body> req{http::verb::post, "/api/atlas/v2/groups?pretty=true", 11};
  req.set(http::field::host, "cloud.mongodb.com");
  req.set(http::field::authorization, "Bearer x");
  req.insert("X-Custom", "a");
  req.insert("x-custom", "b");  // repeated, in order
  req.set(http::field::content_length, "12");
  std::string out = "left over";
  writeHead(out, req);
  EXPECT_EQ(out, beastHead(req));
  EXPECT_TRUE(out.starts_with("POST /api/atlas/v2/groups?pretty=true HTTP/1.1\r\nHost: cloud.mongodb.com\r\n"));
  EXPECT_TRUE(out.ends_with("\r\n\r\n"));
}

TEST(HttpHead, RequestHttp10AndUnknownMethod) {
  http::request<http::empty_body> req;
  req.method_string("PROPFIND");
  req.target("/");
  req.version(10);
  std::string out;
  writeHead(out, req);
  EXPECT_EQ(out, beastHead(req));
  EXPECT_EQ(out, "PROPFIND / HTTP/1.0\r\n\r\n");
}

TEST(HttpHead, ResponseWithStandardAndReceivedReasons) {
  http::response<http::empty_body> res{http::status::not_found, 11};
  res.set(http::field::content_type, "application/json");
  res.set(http::field::transfer_encoding, "chunked");
  std::string out;
  writeHead(out, res);
  EXPECT_EQ(out, beastHead(res));
  EXPECT_TRUE(out.starts_with("HTTP/1.1 404 Not Found\r\n"));

  res.reason("Nope");  // a reason as the upstream sent it is kept
  writeHead(out, res);
  EXPECT_EQ(out, beastHead(res));
  EXPECT_TRUE(out.starts_with("HTTP/1.1 404 Nope\r\n"));

  http::response<http::empty_body> odd;
  odd.result(299);  // no standard reason
  odd.version(10);
  writeHead(out, odd);
  EXPECT_EQ(out, beastHead(odd));
}

TEST(HttpHead, ParsedResponseRoundTrips) {
  const std::string wire =
      "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.atlas.2023-01-01+json\r\nContent-Length: 2\r\n"
      "Strict-Transport-Security: max-age=31536000\r\nX-Empty: \r\n\r\n";
  http::response_parser<http::empty_body> p;
  p.skip(true);
  beast::error_code ec;
  p.put(asio::buffer(wire), ec);
  ASSERT_FALSE(ec) << ec.message();
  std::string out;
  writeHead(out, p.get());
  EXPECT_EQ(out, wire);
  EXPECT_EQ(out, beastHead(p.get()));
}

}  // namespace
}  // namespace atlasgate::net
