#pragma once
// TlsSocket: TLS straight over a TCP socket, for every data-path connection
// (agents' HTTP and MongoDB connections, the upstream pool, MongoDB clusters).
//
// Asio's ssl::stream runs OpenSSL over a memory BIO pair and copies every
// byte through four 17 KiB buffers it holds for the stream's whole life,
// idle or not (two vectors of its own, two inside the BIO pair), and Beast's
// tcp_stream arms a timer for every read and write. TlsSocket instead lets
// OpenSSL read and write the socket itself (a BIO that calls recv/send on
// the socket's descriptor, MSG_NOSIGNAL), waits for readiness only when
// OpenSSL asks for it, and keeps no buffer of its own: with
// SSL_MODE_RELEASE_BUFFERS an idle connection holds OpenSSL's state and
// nothing else. It has a deadline for reads and one for writes, as Beast's
// tcp_stream, but each is checked by one timer, armed only while an
// operation is pending and re-armed only when the deadline moves earlier.
//
// The interface is the subset of beast::ssl_stream<beast::tcp_stream> that
// atlasgate uses, with the same error codes: asio::error::eof after the
// peer's close_notify, ssl::error::stream_truncated when it hangs up without
// one, beast::error::timeout when the deadline passes (the socket is then
// closed, as Beast's tcp_stream does), and beast::get_lowest_layer() of a
// TlsSocket is the TlsSocket itself (expires_after, socket(), close()).
// One read and one write may be outstanding at once; an operation that
// would complete at once is posted, never run inside its initiation.

#include <chrono>
#include <cstddef>
#include <iterator>
#include <memory>
#include <type_traits>
#include <utility>

#include "net/asio.h"

namespace atlasgate::net {

class TlsSocket {
 public:
  using executor_type = tcp::socket::executor_type;
  using Clock = std::chrono::steady_clock;

  TlsSocket(tcp::socket socket, ssl::context& ctx);
  ~TlsSocket();
  TlsSocket(const TlsSocket&) = delete;
  TlsSocket& operator=(const TlsSocket&) = delete;

  executor_type get_executor() { return socket_.get_executor(); }
  SSL* native_handle() { return ssl_; }
  tcp::socket& socket() { return socket_; }
  // Closes the socket (pending operations complete with operation_aborted);
  // the TLS state stays for the destructor.
  void close();

  // The deadline of what starts later, and of what is pending now in a
  // direction (reads, writes) with no operation pending: as Beast's
  // tcp_stream, a direction with an operation pending keeps the deadline it
  // started under. An operation pending when its deadline passes completes
  // with beast::error::timeout, and the socket is closed.
  void expires_after(Clock::duration d);
  void expires_never();

  // Opens the (closed) socket and connects it, within the deadline.
  template <class Token>
  auto async_connect(const tcp::endpoint& endpoint, Token&& token) {
    return start<void(boost::system::error_code)>(Connect{this, endpoint}, std::forward<Token>(token));
  }
  template <class Token>
  auto async_handshake(ssl::stream_base::handshake_type type, Token&& token) {
    return start<void(boost::system::error_code)>(Handshake{this, type}, std::forward<Token>(token));
  }
  // Sends close_notify, ends the sending side, then reads and drops what
  // the peer still sends (up to 1 MiB, within the read deadline) until it
  // closes: a close with unread bytes would be a reset, which can destroy
  // the last answer before the peer reads it.
  template <class Token>
  auto async_shutdown(Token&& token) {
    return start<void(boost::system::error_code)>(Shutdown{this}, std::forward<Token>(token));
  }
  template <class MutableBuffers, class Token>
  auto async_read_some(const MutableBuffers& buffers, Token&& token) {
    asio::mutable_buffer b = first<asio::mutable_buffer>(buffers);
    return start<void(boost::system::error_code, std::size_t)>(Read{this, b}, std::forward<Token>(token));
  }
  // Completes when a read would find something (bytes OpenSSL holds or the
  // socket is readable), without taking a buffer: an idle connection waits
  // here and holds none.
  template <class Token>
  auto async_wait_readable(Token&& token) {
    return start<void(boost::system::error_code)>(Readable{this}, std::forward<Token>(token));
  }
  template <class ConstBuffers, class Token>
  auto async_write_some(const ConstBuffers& buffers, Token&& token) {
    return start<void(boost::system::error_code, std::size_t)>(Write<ConstBuffers>{this, buffers},
                                                               std::forward<Token>(token));
  }

 private:
  // What OpenSSL wants before the step can go on.
  enum class Want { Nothing, Read, Write };
  // The deadline a wait runs under: a wait for readability is a read's.
  static constexpr int kRead = 0, kWrite = 1;
  struct Deadline;

  // One attempt each; ec and n are the result when Want::Nothing.
  Want tryHandshake(ssl::stream_base::handshake_type type, boost::system::error_code& ec);
  Want tryShutdown(boost::system::error_code& ec);
  Want tryRead(asio::mutable_buffer b, boost::system::error_code& ec, std::size_t& n);
  Want tryWrite(asio::const_buffer b, boost::system::error_code& ec, std::size_t& n);
  Want tryReadable();
  // After close_notify: shuts the sending side, then drops what arrives.
  Want drain(std::size_t& drained);
  Want tryConnect(const tcp::endpoint& endpoint, boost::system::error_code& ec);
  Want connectResult(boost::system::error_code& ec);
  // The deadlines apply while an operation is pending in their direction
  // (a bit mask: 1 << kRead, 1 << kWrite).
  void beginOp(int dirs);
  void endOp(int dirs);
  Want settle(int ret, boost::system::error_code& ec);
  template <class Fn>
  Want transfer(Fn fn, std::size_t size, boost::system::error_code& ec, std::size_t& n);
  bool timedOut(int dirs) const;  // a deadline of these directions passed while pending
  bool timedOut() const;          // either

  struct Connect {
    static constexpr int kDirs = 3;
    static constexpr bool kBytes = false;
    TlsSocket* s;
    tcp::endpoint endpoint;
    bool started = false;
    Want operator()(boost::system::error_code& ec, std::size_t&) {
      if (std::exchange(started, true)) return s->connectResult(ec);
      return s->tryConnect(endpoint, ec);
    }
  };
  struct Handshake {
    static constexpr int kDirs = 3;
    static constexpr bool kBytes = false;
    TlsSocket* s;
    ssl::stream_base::handshake_type type;
    Want operator()(boost::system::error_code& ec, std::size_t&) const { return s->tryHandshake(type, ec); }
  };
  struct Shutdown {
    static constexpr int kDirs = 3;
    static constexpr bool kBytes = false;
    TlsSocket* s;
    bool sent = false;  // close_notify is out
    std::size_t drained = 0;
    Want operator()(boost::system::error_code& ec, std::size_t&) {
      if (!sent) {
        Want w = s->tryShutdown(ec);
        if (w != Want::Nothing) return w;
        sent = true;
        if (ec) return Want::Nothing;
      }
      return s->drain(drained);
    }
  };
  struct Read {
    static constexpr int kDirs = 1 << kRead;
    static constexpr bool kBytes = true;
    TlsSocket* s;
    asio::mutable_buffer b;
    Want operator()(boost::system::error_code& ec, std::size_t& n) const { return s->tryRead(b, ec, n); }
  };
  struct Readable {
    static constexpr int kDirs = 1 << kRead;
    static constexpr bool kBytes = false;
    TlsSocket* s;
    bool waited = false;
    Want operator()(boost::system::error_code&, std::size_t&) {
      if (waited) return Want::Nothing;
      waited = true;
      return s->tryReadable();
    }
  };
  // Small pieces (an HTTP head is many) are gathered into one record, as
  // Asio's ssl::stream does: up to 8 KiB on the stack per attempt.
  template <class ConstBuffers>
  struct Write {
    static constexpr int kDirs = 1 << kWrite;
    static constexpr bool kBytes = true;  // completes with (error_code, bytes)
    TlsSocket* s;
    ConstBuffers buffers;
    Want operator()(boost::system::error_code& ec, std::size_t& n) const {
      unsigned char storage[8192];
      asio::const_buffer b = first<asio::const_buffer>(buffers);
      auto it = asio::buffer_sequence_begin(buffers);
      auto end = asio::buffer_sequence_end(buffers);
      if (b.size() < sizeof storage && it != end && std::next(it) != end)
        b = asio::buffer(storage, asio::buffer_copy(asio::buffer(storage), buffers));
      return s->tryWrite(b, ec, n);
    }
  };

  // The first non-empty buffer (empty if there is none), as Asio's streams use.
  template <class Buffer, class Buffers>
  static Buffer first(const Buffers& buffers) {
    for (auto it = asio::buffer_sequence_begin(buffers); it != asio::buffer_sequence_end(buffers); ++it)
      if (Buffer b(*it); b.size() != 0) return b;
    return Buffer();
  }

  // The composed operation: try; wait for what OpenSSL wants; try again.
  template <class Step>
  struct Op {
    TlsSocket* s;
    Step step;
    enum { kStart, kWaiting, kPosted } state = kStart;
    boost::system::error_code ec{};
    std::size_t n = 0;

    template <class Self>
    void operator()(Self& self, boost::system::error_code waitEc = {}) {
      if (state == kPosted) return finish(self);
      if (state == kStart) s->beginOp(Step::kDirs);
      if (state == kWaiting) {
        if (waitEc || self.cancelled() != asio::cancellation_type::none) {
          ec = s->timedOut(Step::kDirs) ? boost::system::error_code(beast::error::timeout)
               : waitEc                 ? waitEc
                                        : boost::system::error_code(asio::error::operation_aborted);
          return finish(self);
        }
      }
      Want w = Want::Nothing;
      if (s->timedOut())
        ec = beast::error::timeout;
      else
        w = step(ec, n);
      if (w != Want::Nothing) {
        state = kWaiting;
        s->socket_.async_wait(w == Want::Read ? tcp::socket::wait_read : tcp::socket::wait_write, std::move(self));
        return;
      }
      if (state == kStart) {  // never complete inside the initiating call
        state = kPosted;
        asio::post(s->socket_.get_executor(), std::move(self));
        return;
      }
      finish(self);
    }
    template <class Self>
    void finish(Self& self) {
      s->endOp(Step::kDirs);
      if constexpr (Step::kBytes)
        self.complete(ec, n);
      else
        self.complete(ec);
    }
  };

  template <class Signature, class Step, class Token>
  auto start(Step step, Token&& token) {
    return asio::async_compose<Token, Signature>(Op<Step>{this, step}, token, socket_);
  }

  tcp::socket socket_;
  SSL* ssl_ = nullptr;
  int lastErrno_ = 0;                      // what the BIO's last recv/send failed with
  bool fatal_ = false;                     // OpenSSL failed: no close_notify may follow
  std::shared_ptr<Deadline> deadline_[2];  // reads' (kRead) and writes' (kWrite)

  friend struct TlsSocketBio;
};

}  // namespace atlasgate::net
