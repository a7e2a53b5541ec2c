// net::TlsSocket against Asio's own ssl::stream as the peer, over real
// loopback sockets: handshake, bytes both ways, Beast HTTP on top, the error
// codes the server relies on, the deadline, cancellation, and what a closed
// socket must never do.

#include "net/tls_stream.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <tuple>

#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

namespace atlasgate::net {
namespace {

using namespace std::chrono_literals;
using namespace asio::experimental::awaitable_operators;
using Clock = std::chrono::steady_clock;
using Peer = ssl::stream<tcp::socket>;
using boost::system::error_code;

// A self-signed P-256 certificate for "localhost", made once.
void useSelfSigned(ssl::context& ctx) {
  EVP_PKEY* key = EVP_EC_gen("P-256");
  X509* x = X509_new();
  ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
  X509_gmtime_adj(X509_getm_notBefore(x), -60);
  X509_gmtime_adj(X509_getm_notAfter(x), 3600);
  X509_set_pubkey(x, key);
  X509_NAME* name = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>("localhost"), -1, -1, 0);
  X509_set_issuer_name(x, name);
  ASSERT_GT(X509_sign(x, key, EVP_sha256()), 0);
  ASSERT_EQ(SSL_CTX_use_certificate(ctx.native_handle(), x), 1);
  ASSERT_EQ(SSL_CTX_use_PrivateKey(ctx.native_handle(), key), 1);
  SSL_CTX_set_mode(ctx.native_handle(), SSL_MODE_RELEASE_BUFFERS);
  X509_free(x);
  EVP_PKEY_free(key);
}

class TlsSocketTest : public ::testing::Test {
 protected:
  void SetUp() override {
    useSelfSigned(serverCtx);
    clientCtx.set_verify_mode(ssl::verify_none);
    acceptor.open(tcp::v4());
    acceptor.bind({asio::ip::make_address("127.0.0.1"), 0});
    acceptor.listen();
  }

  // Runs the server side and the peer side to completion (10 s at most).
  void run(std::function<asio::awaitable<void>(TlsSocket&)> server, std::function<asio::awaitable<void>(Peer&)> peer) {
    bool serverDone = false, peerDone = false;
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
          tcp::socket sock = co_await acceptor.async_accept(asio::use_awaitable);
          TlsSocket s(std::move(sock), serverCtx);
          s.expires_after(5s);
          auto [ec] = co_await s.async_handshake(ssl::stream_base::server, kUseTuple);
          EXPECT_FALSE(ec) << ec.message();
          s.expires_never();
          if (!ec) co_await server(s);
          serverDone = true;
        },
        asio::detached);
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
          Peer p(io, clientCtx);
          co_await p.next_layer().async_connect(acceptor.local_endpoint(), asio::use_awaitable);
          co_await p.async_handshake(ssl::stream_base::client, asio::use_awaitable);
          co_await peer(p);
          peerDone = true;
        },
        asio::detached);
    io.run_for(10s);
    EXPECT_TRUE(serverDone);
    EXPECT_TRUE(peerDone);
  }

  asio::awaitable<void> sleep(Clock::duration d) {
    asio::steady_timer t(io, d);
    co_await t.async_wait(asio::use_awaitable);
  }

  asio::io_context io;
  ssl::context serverCtx{ssl::context::tls_server};
  ssl::context clientCtx{ssl::context::tls_client};
  tcp::acceptor acceptor{io};
};

std::string pattern(std::size_t n) {
  std::string s(n, '\0');
  for (std::size_t i = 0; i < n; ++i) s[i] = static_cast<char>('a' + (i * 7 + i / 251) % 26);
  return s;
}

TEST_F(TlsSocketTest, BytesGoBothWaysWhateverTheirSize) {
  const std::string up = pattern(300 * 1024), down = pattern(2 * 1024 * 1024 + 17);
  std::string gotUp, gotDown;
  run(
      [&](TlsSocket& s) -> asio::awaitable<void> {
        gotUp.resize(up.size());
        auto [rec, rn] = co_await asio::async_read(s, asio::buffer(gotUp), kUseTuple);
        EXPECT_FALSE(rec) << rec.message();
        auto [wec, wn] = co_await asio::async_write(s, asio::buffer(down), kUseTuple);
        EXPECT_FALSE(wec) << wec.message();
        EXPECT_EQ(wn, down.size());
      },
      [&](Peer& p) -> asio::awaitable<void> {
        co_await asio::async_write(p, asio::buffer(up), asio::use_awaitable);
        gotDown.resize(down.size());
        co_await asio::async_read(p, asio::buffer(gotDown), asio::use_awaitable);
      });
  EXPECT_TRUE(gotUp == up);
  EXPECT_TRUE(gotDown == down);
}

TEST_F(TlsSocketTest, ManySmallBuffersArriveInOrder) {
  std::string got;
  run(
      [&](TlsSocket& s) -> asio::awaitable<void> {
        std::string parts[] = {"HTTP/1.1 ", "200", " OK\r\n", "", "X: y\r\n", std::string(9000, 'z'), "\r\n"};
        std::vector<asio::const_buffer> seq;
        for (auto& p : parts) seq.push_back(asio::buffer(p));
        auto [ec, n] = co_await asio::async_write(s, seq, kUseTuple);
        EXPECT_FALSE(ec);
        EXPECT_EQ(n, 9 + 3 + 5 + 6 + 9000 + 2u);
      },
      [&](Peer& p) -> asio::awaitable<void> {
        got.resize(9 + 3 + 5 + 6 + 9000 + 2);
        co_await asio::async_read(p, asio::buffer(got), asio::use_awaitable);
      });
  EXPECT_EQ(got, "HTTP/1.1 200 OK\r\nX: y\r\n" + std::string(9000, 'z') + "\r\n");
}

TEST_F(TlsSocketTest, BeastReadsARequestAndWritesAnAnswer) {
  std::string target, answer;
  run(
      [&](TlsSocket& s) -> asio::awaitable<void> {
        beast::flat_buffer buf;
        http::request<http::string_body> req;
        auto [ec, n] = co_await http::async_read(s, buf, req, kUseTuple);
        EXPECT_FALSE(ec) << ec.message();
        target = std::string(req.target());
        http::response<http::string_body> res{http::status::ok, 11};
        res.body() = req.body() + "!";
        res.prepare_payload();
        auto [wec, wn] = co_await http::async_write(s, res, kUseTuple);
        EXPECT_FALSE(wec) << wec.message();
      },
      [&](Peer& p) -> asio::awaitable<void> {
        http::request<http::string_body> req{http::verb::post, "/api/atlas/v2/groups", 11};
        req.set(http::field::host, "localhost");
        req.body() = std::string(70000, 'q');
        req.prepare_payload();
        co_await http::async_write(p, req, asio::use_awaitable);
        beast::flat_buffer buf;
        http::response<http::string_body> res;
        co_await http::async_read(p, buf, res, asio::use_awaitable);
        answer = res.body();
      });
  EXPECT_EQ(target, "/api/atlas/v2/groups");
  EXPECT_EQ(answer, std::string(70000, 'q') + "!");
}

TEST_F(TlsSocketTest, ThePeersCloseNotifyReadsAsEof) {
  error_code got;
  run(
      [&](TlsSocket& s) -> asio::awaitable<void> {
        char b[16];
        auto [ec, n] = co_await s.async_read_some(asio::buffer(b), kUseTuple);
        got = ec;
      },
      [&](Peer& p) -> asio::awaitable<void> { co_await p.async_shutdown(kUseTuple); });
  EXPECT_EQ(got, asio::error::eof) << got.message();
}

TEST_F(TlsSocketTest, AHangUpWithoutCloseNotifyIsATruncation) {
  error_code got;
  run(
      [&](TlsSocket& s) -> asio::awaitable<void> {
        char b[16];
        auto [ec, n] = co_await s.async_read_some(asio::buffer(b), kUseTuple);
        got = ec;
      },
      [&](Peer& p) -> asio::awaitable<void> {
        p.next_layer().close();
        co_return;
      });
  EXPECT_EQ(got, ssl::error::stream_truncated) << got.message();
}

TEST_F(TlsSocketTest, APendingReadTimesOutAtTheDeadlineAndTheSocketCloses) {
  error_code got;
  Clock::duration took{};
  bool open = true;
  run(
      [&](TlsSocket& s) -> asio::awaitable<void> {
        auto t0 = Clock::now();
        s.expires_after(100ms);
        char b[16];
        auto [ec, n] = co_await s.async_read_some(asio::buffer(b), kUseTuple);
        got = ec;
        took = Clock::now() - t0;
        open = s.socket().is_open();
      },
      [&](Peer& p) -> asio::awaitable<void> {
        char b[16];
        co_await p.async_read_some(asio::buffer(b), kUseTuple);  // ends when the server closes
      });
  EXPECT_EQ(got, beast::error::timeout) << got.message();
  EXPECT_GE(took, 100ms);
  EXPECT_LT(took, 3s);
  EXPECT_FALSE(open);
}

TEST_F(TlsSocketTest, ADeadlineMovedLaterDoesNotFireAtTheEarlierTime) {
  error_code got;
  std::size_t n = 0;
  run(
      [&](TlsSocket& s) -> asio::awaitable<void> {
        s.expires_after(50ms);
        s.expires_after(2s);  // later: the armed timer must not end the read at 50 ms
        char b[16];
        auto [ec, got_n] = co_await s.async_read_some(asio::buffer(b), kUseTuple);
        got = ec;
        n = got_n;
        // And never: the (still armed) timer passes without a timeout.
        s.expires_never();
        co_await sleep(2200ms);
        auto [ec2, n2] = co_await asio::async_write(s, asio::buffer("ok", 2), kUseTuple);
        EXPECT_FALSE(ec2) << ec2.message();
      },
      [&](Peer& p) -> asio::awaitable<void> {
        co_await sleep(300ms);
        co_await asio::async_write(p, asio::buffer("hello", 5), asio::use_awaitable);
        char b[2];
        co_await asio::async_read(p, asio::buffer(b), asio::use_awaitable);
      });
  EXPECT_FALSE(got) << got.message();
  EXPECT_EQ(n, 5u);
}

TEST_F(TlsSocketTest, ADeadlineMovedEarlierFiresAtTheEarlierTime) {
  error_code got;
  Clock::duration took{};
  run(
      [&](TlsSocket& s) -> asio::awaitable<void> {
        auto t0 = Clock::now();
        s.expires_after(5s);
        s.expires_after(100ms);
        char b[16];
        auto [ec, n] = co_await s.async_read_some(asio::buffer(b), kUseTuple);
        got = ec;
        took = Clock::now() - t0;
      },
      [&](Peer& p) -> asio::awaitable<void> {
        char b[16];
        co_await p.async_read_some(asio::buffer(b), kUseTuple);
      });
  EXPECT_EQ(got, beast::error::timeout);
  EXPECT_LT(took, 3s);
}

TEST_F(TlsSocketTest, ACancelledReadLeavesTheStreamUsable) {
  std::string got;
  run(
      [&](TlsSocket& s) -> asio::awaitable<void> {
        char b[16];
        asio::steady_timer t(io, 50ms);
        auto r = co_await (s.async_read_some(asio::buffer(b), kUseTuple) || t.async_wait(kUseTuple));
        EXPECT_EQ(r.index(), 1u);  // the timer won; the read was cancelled
        auto [ec, n] = co_await s.async_read_some(asio::buffer(b), kUseTuple);
        EXPECT_FALSE(ec) << ec.message();
        got.assign(b, n);
      },
      [&](Peer& p) -> asio::awaitable<void> {
        co_await sleep(200ms);
        co_await asio::async_write(p, asio::buffer("after", 5), asio::use_awaitable);
        co_await sleep(100ms);
      });
  EXPECT_EQ(got, "after");
}

TEST_F(TlsSocketTest, WaitingUntilReadableSeesBytesOpenSslAlreadyHolds) {
  std::string got;
  run(
      [&](TlsSocket& s) -> asio::awaitable<void> {
        auto [wec] = co_await s.async_wait_readable(kUseTuple);
        EXPECT_FALSE(wec);
        char one;
        auto [ec, n] = co_await s.async_read_some(asio::buffer(&one, 1), kUseTuple);  // 1 of 10 bytes
        EXPECT_EQ(n, 1u);
        got += one;
        // The other nine are decrypted, inside OpenSSL; the socket is empty.
        s.expires_after(2s);
        auto [wec2] = co_await s.async_wait_readable(kUseTuple);
        EXPECT_FALSE(wec2) << wec2.message();  // a timeout here would mean the wait ignored them
        char rest[16];
        auto [ec2, n2] = co_await s.async_read_some(asio::buffer(rest), kUseTuple);
        got.append(rest, n2);
      },
      [&](Peer& p) -> asio::awaitable<void> {
        co_await sleep(100ms);
        co_await asio::async_write(p, asio::buffer("0123456789", 10), asio::use_awaitable);
        co_await sleep(300ms);
      });
  EXPECT_EQ(got, "0123456789");
}

// Two records in one segment: reading the first leaves the second read
// ahead inside OpenSSL, or still in the socket. Either way the reactor
// (edge-triggered) saw that segment's edge already, so the wait must look at
// both, not only wait for the next edge (the peer sends nothing more until
// answered).
TEST_F(TlsSocketTest, WaitingUntilReadableSeesASecondRecordAlreadyInTheSocket) {
  std::string got;
  run(
      [&](TlsSocket& s) -> asio::awaitable<void> {
        auto [wec] = co_await s.async_wait_readable(kUseTuple);
        EXPECT_FALSE(wec);
        char b[5];
        auto [ec, n] = co_await asio::async_read(s, asio::buffer(b), kUseTuple);  // the first record
        got.append(b, n);
        co_await sleep(100ms);  // the reactor runs, with nothing waiting
        s.expires_after(2s);
        auto t0 = Clock::now();
        auto [wec2] = co_await s.async_wait_readable(kUseTuple);
        EXPECT_FALSE(wec2) << wec2.message();
        EXPECT_LT(Clock::now() - t0, 1s);
        auto [ec2, n2] = co_await s.async_read_some(asio::buffer(b), kUseTuple);
        got.append(b, n2);
        co_await asio::async_write(s, asio::buffer("x", 1), kUseTuple);  // the peer may go
      },
      [&](Peer& p) -> asio::awaitable<void> {
        int fd = p.next_layer().native_handle();
        int on = 1, off = 0;
        ::setsockopt(fd, IPPROTO_TCP, TCP_CORK, &on, sizeof on);
        co_await asio::async_write(p, asio::buffer("first", 5), asio::use_awaitable);
        co_await asio::async_write(p, asio::buffer("again", 5), asio::use_awaitable);
        ::setsockopt(fd, IPPROTO_TCP, TCP_CORK, &off, sizeof off);
        char x;
        co_await asio::async_read(p, asio::buffer(&x, 1), kUseTuple);  // sends nothing more till then
      });
  EXPECT_EQ(got, "firstagain");
}

// As with Beast's tcp_stream: a deadline that passes while nothing waits
// ends nothing; an operation that then completes at once succeeds, and one
// that must wait times out at once.
TEST_F(TlsSocketTest, ADeadlinePassingBetweenOperationsOnlyEndsTheNextWait) {
  error_code wrote, read;
  Clock::duration took{};
  run(
      [&](TlsSocket& s) -> asio::awaitable<void> {
        s.expires_after(50ms);
        co_await sleep(200ms);
        EXPECT_TRUE(s.socket().is_open());
        auto [wec, wn] = co_await asio::async_write(s, asio::buffer("late", 4), kUseTuple);
        wrote = wec;
        auto t0 = Clock::now();
        char b[8];
        auto [rec, rn] = co_await s.async_read_some(asio::buffer(b), kUseTuple);
        read = rec;
        took = Clock::now() - t0;
      },
      [&](Peer& p) -> asio::awaitable<void> {
        char b[4];
        co_await asio::async_read(p, asio::buffer(b), kUseTuple);
        co_await p.async_read_some(asio::buffer(b), kUseTuple);
      });
  EXPECT_FALSE(wrote) << wrote.message();
  EXPECT_EQ(read, beast::error::timeout);
  EXPECT_LT(took, 1s);
}

// As Beast's tcp_stream: the read side's expires_* do not touch a write
// that waits (a MongoDB connection reads and writes at once).
TEST_F(TlsSocketTest, AWaitingWriteKeepsItsDeadlineWhateverTheReadSideSets) {
  error_code wrote;
  Clock::duration took{};
  run(
      [&](TlsSocket& s) -> asio::awaitable<void> {
        s.expires_after(300ms);
        asio::co_spawn(
            io,
            [&]() -> asio::awaitable<void> {
              co_await sleep(50ms);  // the write waits by now (the peer reads nothing)
              s.expires_after(10s);  // a read starting...
              s.expires_never();     // ...and ending
            },
            asio::detached);
        auto t0 = Clock::now();
        std::string big(64 << 20, 'x');
        auto [ec, n] = co_await asio::async_write(s, asio::buffer(big), kUseTuple);
        wrote = ec;
        took = Clock::now() - t0;
      },
      [&](Peer& p) -> asio::awaitable<void> {
        char b[1];
        co_await p.async_read_some(asio::buffer(b), kUseTuple);  // ends with the server's close
        co_await sleep(600ms);
      });
  EXPECT_EQ(wrote, beast::error::timeout) << wrote.message();
  EXPECT_LT(took, 3s);
}

// The agent still sends (an upload refused early) when the answer goes out
// and the connection closes. Closing with its bytes unread would be a reset,
// which throws away what of the answer is still in the send queue: the
// answer must arrive whole.
TEST_F(TlsSocketTest, ShutdownDrainsWhatThePeerStillSendsSoTheAnswerArrives) {
  const std::string answer = pattern(4 << 20);
  std::string got;
  error_code readEc;
  run(
      [&](TlsSocket& s) -> asio::awaitable<void> {
        char b[16];
        co_await s.async_read_some(asio::buffer(b), kUseTuple);  // a little of the upload
        co_await asio::async_write(s, asio::buffer(answer), kUseTuple);
        s.expires_after(5s);
        co_await s.async_shutdown(kUseTuple);
        s.socket().close();
      },
      [&](Peer& p) -> asio::awaitable<void> {
        std::string upload(256 * 1024, 'u');
        co_await asio::async_write(p, asio::buffer(upload), kUseTuple);
        got.resize(answer.size());
        auto [ec, n] = co_await asio::async_read(p, asio::buffer(got), kUseTuple);
        readEc = ec;
        got.resize(n);
      });
  EXPECT_FALSE(readEc) << readEc.message();
  EXPECT_EQ(got.size(), answer.size());
  EXPECT_TRUE(got == answer);
}

TEST_F(TlsSocketTest, AClosedSocketNeverWritesToTheDescriptorNumberReusedAfterIt) {
  run(
      [&](TlsSocket& s) -> asio::awaitable<void> {
        int fd = s.socket().native_handle();
        s.close();
        // Another connection takes the number (the lowest free one).
        tcp::socket a(io), b(io);
        tcp::acceptor l(io, {asio::ip::make_address("127.0.0.1"), 0});
        a.connect(l.local_endpoint());
        l.accept(b);
        bool reused = a.native_handle() == fd || b.native_handle() == fd;
        auto [ec, n] = co_await s.async_write_some(asio::buffer("secret", 6), kUseTuple);
        EXPECT_TRUE(ec);
        EXPECT_EQ(n, 0u);
        char buf[8];
        a.non_blocking(true);
        b.non_blocking(true);
        error_code ea, eb;
        EXPECT_EQ(a.read_some(asio::buffer(buf), ea), 0u);
        EXPECT_EQ(b.read_some(asio::buffer(buf), eb), 0u);
        EXPECT_EQ(ea, asio::error::would_block);
        EXPECT_EQ(eb, asio::error::would_block);
        RecordProperty("descriptor_reused", reused ? "yes" : "no");
      },
      [&](Peer&) -> asio::awaitable<void> { co_return; });
}

TEST_F(TlsSocketTest, WritingToAResetPeerIsAnErrorNotSigpipe) {
  error_code got;
  run(
      [&](TlsSocket& s) -> asio::awaitable<void> {
        co_await sleep(100ms);
        std::string chunk(64 * 1024, 'x');
        for (int i = 0; i < 100 && !got; ++i) {
          auto [ec, n] = co_await asio::async_write(s, asio::buffer(chunk), kUseTuple);
          got = ec;
        }
      },
      [&](Peer& p) -> asio::awaitable<void> {
        p.next_layer().set_option(asio::socket_base::linger(true, 0));
        p.next_layer().close();  // RST
        co_return;
      });
  EXPECT_TRUE(got == asio::error::connection_reset || got == asio::error::broken_pipe) << got.message();
}

TEST_F(TlsSocketTest, ConnectsAndSpeaksAsTheClient) {
  std::string got;
  error_code connected, shook;
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        tcp::socket sock = co_await acceptor.async_accept(asio::use_awaitable);
        ssl::stream<tcp::socket> srv(std::move(sock), serverCtx);
        co_await srv.async_handshake(ssl::stream_base::server, asio::use_awaitable);
        char b[5];
        co_await asio::async_read(srv, asio::buffer(b), asio::use_awaitable);
        co_await asio::async_write(srv, asio::buffer(b), asio::use_awaitable);
      },
      asio::detached);
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        TlsSocket c(tcp::socket(io), clientCtx);
        c.expires_after(5s);
        std::tie(connected) = co_await c.async_connect(acceptor.local_endpoint(), kUseTuple);
        if (connected) co_return;
        std::tie(shook) = co_await c.async_handshake(ssl::stream_base::client, kUseTuple);
        if (shook) co_return;
        co_await asio::async_write(c, asio::buffer("hello", 5), kUseTuple);
        char b[5];
        auto [ec, n] = co_await asio::async_read(c, asio::buffer(b), kUseTuple);
        got.assign(b, n);
      },
      asio::detached);
  io.run_for(10s);
  EXPECT_FALSE(connected) << connected.message();
  EXPECT_FALSE(shook) << shook.message();
  EXPECT_EQ(got, "hello");
}

TEST_F(TlsSocketTest, AConnectionRefusedIsAnErrorAtOnce) {
  tcp::endpoint closed = acceptor.local_endpoint();
  acceptor.close();  // nothing listens on that port now
  error_code got;
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        TlsSocket c(tcp::socket(io), clientCtx);
        c.expires_after(5s);
        std::tie(got) = co_await c.async_connect(closed, kUseTuple);
      },
      asio::detached);
  io.run_for(10s);
  EXPECT_EQ(got, asio::error::connection_refused) << got.message();
}

TEST_F(TlsSocketTest, APlainTextClientFailsTheHandshakeAtOnce) {
  error_code got;
  bool done = false;
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        tcp::socket sock = co_await acceptor.async_accept(asio::use_awaitable);
        TlsSocket s(std::move(sock), serverCtx);
        s.expires_after(5s);
        auto [ec] = co_await s.async_handshake(ssl::stream_base::server, kUseTuple);
        got = ec;
        done = true;
      },
      asio::detached);
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        tcp::socket c(io);
        co_await c.async_connect(acceptor.local_endpoint(), asio::use_awaitable);
        co_await asio::async_write(c, asio::buffer(std::string("GET / HTTP/1.1\r\nHost: x\r\n\r\n")),
                                   asio::use_awaitable);
        char b[64];
        co_await c.async_read_some(asio::buffer(b), kUseTuple);
      },
      asio::detached);
  io.run_for(10s);
  ASSERT_TRUE(done);
  EXPECT_TRUE(got);
  EXPECT_NE(got, beast::error::timeout);
}

}  // namespace
}  // namespace atlasgate::net
