// The terminator's pure request/response transforms (proxy/rewrite.h):
// what is refused before forwarding (methods, upgrades, ambiguous framing,
// other hosts), absolute-form targets, and the headers that never reach
// Atlas (the agent's Authorization, however often and however spelled) or
// the agent (hop-by-hop).

#include <gtest/gtest.h>

#include <string>

#include "common/text.h"

#include "proxy/rewrite.h"

namespace http = boost::beast::http;
using namespace atlasgate::proxy;

namespace {

constexpr std::string_view kHost = "cloud.mongodb.com";

using Request = http::request<http::string_body>;

Request get(std::string target, std::string_view host = kHost, unsigned version = 11) {
  Request r{http::verb::get, target, version};
  if (!host.empty()) r.set(http::field::host, host);
  return r;
}

RequestCheck check(Request& r) { return checkRequest(r, kHost); }

void expectRefused(Request r, unsigned status, bool close, std::string_view detail = {}) {
  RequestCheck c = check(r);
  EXPECT_FALSE(c.ok);
  EXPECT_EQ(c.status(), status);
  EXPECT_EQ(c.closeConnection(), close);
  EXPECT_FALSE(c.detail.empty());
  if (!detail.empty()) {
    EXPECT_EQ(c.detail, detail);
  }
}

// All values of a header, in order, whatever the spelling of its name.
std::vector<std::string> values(const Request& r, std::string_view name) {
  std::vector<std::string> out;
  for (const auto& f : r)
    if (atlasgate::text::iequals(f.name_string(), name)) out.emplace_back(f.value());
  return out;
}

}  // namespace

// ---------------------------------------------------------------- checkRequest

TEST(CheckRequest, PlainRequestPasses) {
  Request r = get("/api/atlas/v2/groups?envelope=true");
  RequestCheck c = check(r);
  EXPECT_TRUE(c.ok);
  EXPECT_EQ(c.status(), 0u);
  EXPECT_EQ(c.detail, "");
  EXPECT_FALSE(c.closeConnection());
  EXPECT_EQ(r.target(), "/api/atlas/v2/groups?envelope=true");
}

TEST(CheckRequest, ConnectAndTraceAreRefused) {
  Request c{http::verb::connect, "cloud.mongodb.com:443", 11};
  c.set(http::field::host, kHost);
  expectRefused(std::move(c), 405, true, "CONNECT is not supported: atlasgate terminates TLS for the Atlas API only.");
  Request t = get("/");
  t.method(http::verb::trace);
  expectRefused(std::move(t), 405, true, "TRACE is not supported.");
}

TEST(CheckRequest, UpgradesAreRefused) {
  Request r = get("/");
  r.set(http::field::upgrade, "websocket");
  expectRefused(r, 400, true, "Protocol upgrades are not supported.");
  Request h2c = get("/");
  h2c.insert("UPGRADE", "h2c");  // any spelling of the name
  expectRefused(h2c, 400, true);
  Request empty = get("/");
  empty.set(http::field::upgrade, "");
  expectRefused(empty, 400, true);
}

TEST(CheckRequest, AmbiguousFramingIsRefused) {
  Request twoCl = get("/");
  twoCl.insert(http::field::content_length, "5");
  twoCl.insert("content-length", "5");  // same value, other case: still repeated
  expectRefused(twoCl, 400, true, "Repeated Content-Length headers.");

  Request clTe = get("/");
  clTe.insert(http::field::content_length, "5");
  clTe.insert(http::field::transfer_encoding, "chunked");
  expectRefused(clTe, 400, true, "Both Content-Length and Transfer-Encoding are present.");

  Request twoHost = get("/");
  twoHost.insert("HOST", kHost);
  expectRefused(twoHost, 400, true, "Repeated Host headers.");
}

TEST(CheckRequest, OnlyPlainChunkedTransferEncoding) {
  for (std::string_view te : {"chunked", "Chunked", "CHUNKED", " chunked\t", "\tchunked "}) {
    Request r = get("/");
    r.set(http::field::transfer_encoding, te);
    RequestCheck c = check(r);
    EXPECT_TRUE(c.ok) << '[' << te << "] " << c.detail;
  }
  for (std::string_view te : {"gzip, chunked", "chunked, chunked", "identity", "", "chunked;q=1", "chunke", "xchunked",
                              "chunked\r\n", "chunk\xC3\xA9"}) {
    Request r = get("/");
    r.set(http::field::transfer_encoding, te);
    expectRefused(r, 501, true, "Only Transfer-Encoding: chunked is supported.");
  }
  Request two = get("/");
  two.insert(http::field::transfer_encoding, "chunked");
  two.insert("transfer-encoding", "chunked");
  expectRefused(two, 501, true);
}

TEST(CheckRequest, TargetMustBeAPath) {
  expectRefused(get(""), 400, true, "Empty request target.");
  for (std::string target : {"*", "cloud.mongodb.com/x", "ftp://cloud.mongodb.com/x", "https:/cloud.mongodb.com/x",
                             "//cloud.mongodb.com/x" /* starts with '/': a path */, "https:", "\\api"}) {
    Request r = get(target);
    RequestCheck c = check(r);
    if (target.front() == '/') {
      EXPECT_TRUE(c.ok) << target;
      EXPECT_EQ(r.target(), target);  // left as it is
    } else {
      EXPECT_FALSE(c.ok) << target;
      EXPECT_EQ(c.status(), 400u) << target;
      EXPECT_EQ(c.detail, "The request target must be an absolute path.") << target;
    }
  }
}

TEST(CheckRequest, AbsoluteFormForThisHostBecomesOriginForm) {
  struct Case {
    std::string target;
    std::string origin;
  };
  for (const Case& t : {Case{"https://cloud.mongodb.com/api/atlas/v2?x=1", "/api/atlas/v2?x=1"},
                        Case{"HTTPS://CLOUD.MongoDB.com/a", "/a"}, Case{"https://cloud.mongodb.com:443/a", "/a"},
                        Case{"https://cloud.mongodb.com:/a", "/a"}, Case{"https://cloud.mongodb.com", "/"},
                        Case{"http://cloud.mongodb.com/a", "/a"}, Case{"https://cloud.mongodb.com/", "/"}}) {
    Request r = get(t.target);
    RequestCheck c = check(r);
    EXPECT_TRUE(c.ok) << t.target << ": " << c.detail;
    EXPECT_EQ(r.target(), t.origin) << t.target;
  }
}

TEST(CheckRequest, AbsoluteFormForAnotherHostIs421) {
  for (const std::string& target : std::initializer_list<std::string>{
           "https://evil.example/api", "https://cloud.mongodb.com.evil.example/a", "https://cloud.mongodb.com:8443/a",
           "https://cloud.mongodb.com:443:443/a", "https://user@cloud.mongodb.com/a",
           "https://cloud.mongodb.com@evil/a", "https://cloud.mongodb.com./a", "https:///a", "https://[::1]/a",
           std::string("https://cloud.mongodb.com\0x/a", 29), "https://cloud.mongodb.co/a"}) {
    Request r = get(target);
    RequestCheck c = check(r);
    EXPECT_FALSE(c.ok) << target;
    EXPECT_EQ(c.status(), 421u) << target;
    EXPECT_EQ(c.detail, "The request names another host than the one this connection is for.");
    EXPECT_FALSE(c.closeConnection()) << target;  // the request was well framed
    EXPECT_EQ(r.target(), target) << "not rewritten";
  }
}

TEST(CheckRequest, HostHeaderMustMatchTheServerName) {
  for (std::string_view h : {"cloud.mongodb.com", "CLOUD.MONGODB.COM", "cloud.mongodb.com:443", "cloud.mongodb.com:"}) {
    Request r = get("/", h);
    EXPECT_TRUE(check(r).ok) << h;
  }
  for (std::string_view h :
       {"evil.example", "cloud.mongodb.com:8443", "cloud.mongodb.com.", "cloud.mongodb.com:443:443", "",
        "user@cloud.mongodb.com", "[cloud.mongodb.com]", "cloud.mongodb.com\xC3\xA9"}) {
    SCOPED_TRACE(std::string("Host: ") + std::string(h));
    Request r = get("/");
    r.set(http::field::host, h);
    expectRefused(r, 421, false, "The Host header does not match the TLS server name.");
    EXPECT_EQ(r[http::field::host], h);
  }
  std::string nul("cloud.mongodb.com\0evil", 22);
  Request r = get("/");
  r.set(http::field::host, nul);
  expectRefused(r, 421, false);
}

TEST(CheckRequest, AbsoluteTargetDoesNotExcuseAnotherHostHeader) {
  Request r = get("https://cloud.mongodb.com/a", "evil.example");
  RequestCheck c = check(r);
  EXPECT_FALSE(c.ok);
  EXPECT_EQ(c.status(), 421u);
  EXPECT_EQ(c.detail, "The Host header does not match the TLS server name.");
}

TEST(CheckRequest, HostIsRequiredFromHttp11On) {
  expectRefused(get("/", "", 11), 400, true, "HTTP/1.1 request without a Host header.");
  Request old = get("/", "", 10);
  EXPECT_TRUE(check(old).ok);
  Request oldWrong = get("/", "evil.example", 10);
  expectRefused(oldWrong, 421, false);
}

TEST(CheckRequest, FirstRefusalWins) {
  // CONNECT with an Upgrade and two Hosts: the method is named.
  Request r{http::verb::connect, "x", 11};
  r.insert(http::field::host, "a");
  r.insert(http::field::host, "b");
  r.set(http::field::upgrade, "websocket");
  expectRefused(r, 405, true, "CONNECT is not supported: atlasgate terminates TLS for the Atlas API only.");
}

// ---------------------------------------------------------------- upstream

TEST(PrepareUpstream, EveryAuthorizationGoes) {
  Request r{http::verb::post, "/api/atlas/v2/groups", 11};
  r.insert(http::field::authorization, "Bearer agp_phantom");
  r.insert("authorization", "Basic YTpi");
  r.insert("AUTHORIZATION", "Digest username=\"x\"");
  r.insert("Proxy-Authorization", "Basic Zm9vOmJhcg==");
  r.insert("proxy-authorization", "");
  r.insert("X-Authorization", "kept: not the standard header");
  r.set(http::field::content_type, "application/json");
  r.body() = R"({"name":"p"})";
  prepareUpstreamRequest(r, kHost);
  EXPECT_EQ(r.count(http::field::authorization), 0u);
  EXPECT_EQ(r.count(http::field::proxy_authorization), 0u);
  EXPECT_TRUE(values(r, "authorization").empty());
  EXPECT_TRUE(values(r, "proxy-authorization").empty());
  EXPECT_EQ(values(r, "x-authorization"), std::vector<std::string>{"kept: not the standard header"});
  EXPECT_EQ(r[http::field::content_type], "application/json");
  EXPECT_EQ(r.body(), R"({"name":"p"})");
  EXPECT_EQ(r.target(), "/api/atlas/v2/groups");
  EXPECT_EQ(r.method(), http::verb::post);
}

TEST(PrepareUpstream, HostIsSetOnce) {
  Request r = get("/", "whatever.example");
  r.insert("host", "second.example");
  prepareUpstreamRequest(r, kHost);
  EXPECT_EQ(values(r, "host"), std::vector<std::string>{"cloud.mongodb.com"});
  Request none = get("/", "", 10);
  prepareUpstreamRequest(none, kHost);
  EXPECT_EQ(values(none, "host"), std::vector<std::string>{"cloud.mongodb.com"});
}

TEST(PrepareUpstream, HopByHopAndExpectGo) {
  Request r = get("/");
  r.set(http::field::connection, "keep-alive, X-Hop, x-other");
  r.set(http::field::keep_alive, "timeout=5");
  r.set(http::field::proxy_connection, "keep-alive");
  r.set(http::field::te, "trailers");
  r.set(http::field::trailer, "X-Checksum");
  r.set(http::field::upgrade, "websocket");
  r.set(http::field::expect, "100-continue");
  r.insert("X-Hop", "1");
  r.insert("X-OTHER", "2");  // named in another case
  r.insert("X-End-To-End", "3");
  prepareUpstreamRequest(r, kHost);
  for (std::string_view gone :
       {"connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade", "expect", "x-hop", "x-other"})
    EXPECT_TRUE(values(r, gone).empty()) << gone;
  EXPECT_EQ(values(r, "x-end-to-end"), std::vector<std::string>{"3"});
}

TEST(PrepareUpstream, ConnectionCannotRemoveFraming) {
  Request r{http::verb::post, "/", 11};
  r.set(http::field::host, kHost);
  r.set(http::field::connection, "Content-Length, TRANSFER-ENCODING, host, Authorization");
  r.set(http::field::content_length, "2");
  r.body() = "{}";
  prepareUpstreamRequest(r, kHost);
  EXPECT_EQ(r[http::field::content_length], "2");
  EXPECT_EQ(values(r, "host"), std::vector<std::string>{"cloud.mongodb.com"});
  EXPECT_EQ(r.count(http::field::authorization), 0u);
  EXPECT_EQ(r.count(http::field::connection), 0u);

  Request chunked{http::verb::post, "/", 11};
  chunked.set(http::field::host, kHost);
  chunked.set(http::field::connection, "transfer-encoding");
  chunked.set(http::field::transfer_encoding, "chunked");
  prepareUpstreamRequest(chunked, kHost);
  EXPECT_EQ(chunked[http::field::transfer_encoding], "chunked");
}

TEST(PrepareUpstream, MalformedConnectionTokenList) {
  Request r = get("/");
  r.set(http::field::connection, " , ,X-B ,,\tx-a\t, ");
  r.insert("X-A", "a");
  r.insert("X-B", "b");
  r.insert("X-C", "c");
  prepareUpstreamRequest(r, kHost);
  EXPECT_TRUE(values(r, "connection").empty());
  EXPECT_TRUE(values(r, "x-a").empty());
  EXPECT_TRUE(values(r, "x-b").empty());
  EXPECT_EQ(values(r, "x-c"), std::vector<std::string>{"c"});
}

TEST(PrepareUpstream, RepeatedConnectionHeadersAreOneList) {
  // RFC 9110 5.3: repeated Connection fields are one comma-separated list;
  // every option named in any of them is hop-by-hop (7.6.1).
  // Fixed bug (userspace/proxy/rewrite.cpp, stripHopByHop and
  // prepareAgentResponse): only f[http::field::connection], the FIRST
  // Connection field, was read. Input: "Connection: X-A" + "Connection: X-B"
  // + "X-A: a" + "X-B: b". Expected: X-A and X-B removed. Was: X-A
  // removed, X-B forwarded upstream (and, for responses, to the agent).
  Request r = get("/");
  r.insert(http::field::connection, "X-A");
  r.insert("connection", "X-B");
  r.insert("X-A", "a");
  r.insert("X-B", "b");
  prepareUpstreamRequest(r, kHost);
  EXPECT_TRUE(values(r, "connection").empty());
  EXPECT_TRUE(values(r, "x-a").empty());
  EXPECT_TRUE(values(r, "x-b").empty());

  http::response<http::buffer_body> res{http::status::ok, 11};
  res.insert(http::field::connection, "X-A");
  res.insert(http::field::connection, "X-B");
  res.insert("X-A", "a");
  res.insert("X-B", "b");
  prepareAgentResponse(res);
  EXPECT_EQ(res.count("X-A"), 0u);
  EXPECT_EQ(res.count("X-B"), 0u);
}

// ---------------------------------------------------------------- agent response

TEST(PrepareAgentResponse, HopByHopGoesFramingStays) {
  http::response<http::buffer_body> res{http::status::ok, 11};
  res.set(http::field::connection, "close, X-Internal, Transfer-Encoding, content-length");
  res.set(http::field::keep_alive, "timeout=5");
  res.set(http::field::proxy_connection, "close");
  res.set(http::field::upgrade, "h2c");
  res.set(http::field::transfer_encoding, "chunked");
  res.set(http::field::content_type, "application/json");
  res.insert("x-internal", "secret-ish");
  res.insert("Set-Cookie", "a=b");
  res.insert("Set-Cookie", "c=d");
  prepareAgentResponse(res);
  EXPECT_EQ(res.count(http::field::connection), 0u);
  EXPECT_EQ(res.count(http::field::keep_alive), 0u);
  EXPECT_EQ(res.count(http::field::proxy_connection), 0u);
  EXPECT_EQ(res.count(http::field::upgrade), 0u);
  EXPECT_EQ(res.count("X-Internal"), 0u);
  EXPECT_EQ(res[http::field::transfer_encoding], "chunked");
  EXPECT_EQ(res[http::field::content_type], "application/json");
  EXPECT_EQ(res.count(http::field::set_cookie), 2u);
  EXPECT_EQ(res.result(), http::status::ok);
}

TEST(PrepareAgentResponse, ContentLengthNamedInConnectionStays) {
  http::response<http::buffer_body> res{http::status::ok, 11};
  res.set(http::field::connection, "Content-Length");
  res.set(http::field::content_length, "10");
  prepareAgentResponse(res);
  EXPECT_EQ(res[http::field::content_length], "10");
  EXPECT_EQ(res.count(http::field::connection), 0u);
}
