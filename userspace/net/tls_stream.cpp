#include "net/tls_stream.h"

#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

namespace atlasgate::net {

using boost::system::error_code;

// OpenSSL's view of the socket: recv/send on its descriptor as it is now (a
// closed socket reads as EBADF, never as whatever the number names next),
// MSG_NOSIGNAL so a peer's reset is an error, not SIGPIPE.
struct TlsSocketBio {
  static TlsSocket& owner(BIO* b) { return *static_cast<TlsSocket*>(BIO_get_data(b)); }

  // One recv or send (retried on EINTR): 1 with *done set, or 0 with the
  // retry flag (would block), EOF (a recv of 0) or lastErrno_ set.
  template <bool Reading, class Io>
  static int transfer(BIO* b, std::size_t* done, Io io) {
    BIO_clear_retry_flags(b);
    *done = 0;
    TlsSocket& s = owner(b);
    if (!s.socket_.is_open()) {
      s.lastErrno_ = EBADF;
      return 0;
    }
    ssize_t r;
    do r = io(s.socket_.native_handle());
    while (r < 0 && errno == EINTR);
    if (r > 0 || (!Reading && r == 0)) {
      *done = static_cast<std::size_t>(r);
      return 1;
    }
    if (r == 0)
      BIO_set_flags(b, BIO_FLAGS_IN_EOF);
    else if (errno == EAGAIN || errno == EWOULDBLOCK)
      Reading ? BIO_set_retry_read(b) : BIO_set_retry_write(b);
    else
      s.lastErrno_ = errno;
    return 0;
  }

  static int read(BIO* b, char* data, std::size_t len, std::size_t* got) {
    return transfer<true>(b, got, [&](int fd) { return ::recv(fd, data, len, MSG_DONTWAIT); });
  }

  static int write(BIO* b, const char* data, std::size_t len, std::size_t* put) {
    return transfer<false>(b, put, [&](int fd) { return ::send(fd, data, len, MSG_NOSIGNAL | MSG_DONTWAIT); });
  }

  static long ctrl(BIO* b, int cmd, long, void*) {
    switch (cmd) {
      case BIO_CTRL_FLUSH: return 1;
      case BIO_CTRL_EOF: return BIO_test_flags(b, BIO_FLAGS_IN_EOF) != 0;
      default: return 0;
    }
  }

  static BIO_METHOD* method() {
    static BIO_METHOD* m = [] {
      BIO_METHOD* bm = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "atlasgate socket");
      if (!bm || !BIO_meth_set_read_ex(bm, read) || !BIO_meth_set_write_ex(bm, write) || !BIO_meth_set_ctrl(bm, ctrl))
        throw boost::system::system_error(
            error_code(static_cast<int>(ERR_get_error()), asio::error::get_ssl_category()), "BIO_meth_new");
      return bm;
    }();
    return m;
  }
};

struct TlsSocket::Deadline {
  explicit Deadline(const executor_type& ex) : timer(ex) {}
  asio::steady_timer timer;
  Clock::time_point at = Clock::time_point::max();
  bool armed = false;
  bool fired = false;
  int pending = 0;                // operations pending in this direction
  std::uint64_t generation = 0;   // of the timer's current wait; older ones are stale
  tcp::socket* socket = nullptr;  // nullptr once the TlsSocket is gone

  // (Re)starts the timer for `at`. When it passes with `at` unmoved while an
  // operation of its direction is pending, the socket is closed (as Beast's
  // tcp_stream does): the operation completes, and sees `fired`. A deadline
  // that passes while nothing is pending ends nothing; the next operation
  // arms the timer again, and times out at once if it is still past.
  static void arm(const std::shared_ptr<Deadline>& d) {
    d->armed = true;
    d->timer.expires_at(d->at);
    d->timer.async_wait([d, gen = ++d->generation](error_code ec) {
      if (gen != d->generation || !d->socket) return;
      d->armed = false;
      if (ec || d->at == Clock::time_point::max() || d->pending == 0) return;
      if (Clock::now() < d->at) return arm(d);  // moved later meanwhile
      d->fired = true;
      error_code ignored;
      d->socket->close(ignored);
    });
  }
};

void TlsSocket::beginOp(int dirs) {
  for (int dir : {kRead, kWrite}) {
    if (!(dirs & (1 << dir))) continue;
    const std::shared_ptr<Deadline>& d = deadline_[dir];
    ++d->pending;
    if (!d->armed && d->at != Clock::time_point::max()) Deadline::arm(d);
  }
}

void TlsSocket::endOp(int dirs) {
  for (int dir : {kRead, kWrite})
    if (dirs & (1 << dir)) --deadline_[dir]->pending;
}

TlsSocket::TlsSocket(tcp::socket socket, ssl::context& ctx)
    : socket_(std::move(socket)),
      deadline_{std::make_shared<Deadline>(socket_.get_executor()),
                std::make_shared<Deadline>(socket_.get_executor())} {
  for (auto& d : deadline_) d->socket = &socket_;
  ssl_ = SSL_new(ctx.native_handle());
  BIO* bio = ssl_ ? BIO_new(TlsSocketBio::method()) : nullptr;
  if (!bio) {
    error_code ec(static_cast<int>(ERR_get_error()), asio::error::get_ssl_category());
    SSL_free(ssl_);
    throw boost::system::system_error(ec, "TlsSocket");
  }
  BIO_set_data(bio, this);
  BIO_set_init(bio, 1);
  SSL_set_bio(ssl_, bio, bio);  // one reference, owned by the SSL
  SSL_set_mode(ssl_, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_RELEASE_BUFFERS);
  // One recv for whatever has arrived, not two per record (header, body);
  // what it read beyond a record stays in OpenSSL (SSL_has_pending), and
  // its buffer is released once empty.
  SSL_set_read_ahead(ssl_, 1);
  error_code ignored;
  socket_.non_blocking(true, ignored);
}

TlsSocket::~TlsSocket() {
  for (auto& d : deadline_) {
    d->socket = nullptr;
    d->timer.cancel();
  }
  SSL_free(ssl_);
}

void TlsSocket::close() {
  error_code ignored;
  socket_.close(ignored);
}

// As Beast's tcp_stream: a direction with an operation pending keeps the
// deadline it waits under (the other direction's expires_* leave it alone).
void TlsSocket::expires_after(Clock::duration d) {
  const Clock::time_point at = Clock::now() + d;
  for (const auto& dl : deadline_) {
    if (dl->pending > 0) continue;
    dl->at = at;
    dl->fired = false;
    if (dl->armed && at < dl->timer.expiry()) Deadline::arm(dl);
  }
}

void TlsSocket::expires_never() {
  for (const auto& dl : deadline_) {
    if (dl->pending > 0) continue;
    dl->at = Clock::time_point::max();
    dl->fired = false;
  }
}

bool TlsSocket::timedOut(int dirs) const {
  return ((dirs & (1 << kRead)) && deadline_[kRead]->fired) || ((dirs & (1 << kWrite)) && deadline_[kWrite]->fired);
}

bool TlsSocket::timedOut() const { return deadline_[0]->fired || deadline_[1]->fired; }

TlsSocket::Want TlsSocket::settle(int ret, error_code& ec) {
  int err = SSL_get_error(ssl_, ret);
  switch (err) {
    case SSL_ERROR_WANT_READ: return Want::Read;
    case SSL_ERROR_WANT_WRITE: return Want::Write;
    case SSL_ERROR_ZERO_RETURN:
      ec = asio::error::eof;  // the peer's close_notify
      break;
    case SSL_ERROR_SYSCALL:
      fatal_ = true;
      ec = lastErrno_ ? error_code(lastErrno_, boost::system::system_category())
                      : error_code(ssl::error::stream_truncated);
      break;
    default: {
      fatal_ = true;
      unsigned long e = ERR_peek_error();
      if (e == 0)  // a callback asked to retry (none of atlasgate's does): not a success
        ec = boost::system::errc::make_error_code(boost::system::errc::protocol_error);
      else if (ERR_GET_LIB(e) == ERR_LIB_SSL && ERR_GET_REASON(e) == SSL_R_UNEXPECTED_EOF_WHILE_READING)
        ec = ssl::error::stream_truncated;
      else
        ec = error_code(static_cast<int>(e), asio::error::get_ssl_category());
      break;
    }
  }
  ERR_clear_error();
  return Want::Nothing;
}

TlsSocket::Want TlsSocket::tryHandshake(ssl::stream_base::handshake_type type, error_code& ec) {
  if (!SSL_in_init(ssl_) && SSL_is_init_finished(ssl_)) return Want::Nothing;
  if (SSL_in_before(ssl_)) {
    if (type == ssl::stream_base::server)
      SSL_set_accept_state(ssl_);
    else
      SSL_set_connect_state(ssl_);
  }
  ERR_clear_error();
  lastErrno_ = 0;
  int r = SSL_do_handshake(ssl_);
  return r == 1 ? Want::Nothing : settle(r, ec);
}

TlsSocket::Want TlsSocket::tryShutdown(error_code& ec) {
  if (fatal_ || !SSL_is_init_finished(ssl_) || !socket_.is_open()) {
    ec = asio::error::not_connected;
    return Want::Nothing;
  }
  ERR_clear_error();
  lastErrno_ = 0;
  int r = SSL_shutdown(ssl_);
  if (r >= 0) return Want::Nothing;  // close_notify sent (0: the peer's not read, and not waited for)
  Want w = settle(r, ec);
  return w == Want::Read ? Want::Nothing : w;
}

TlsSocket::Want TlsSocket::tryReadable() {
  if (SSL_has_pending(ssl_)) return Want::Nothing;
  // The reactor is edge-triggered, and an edge it saw while nothing waited
  // is gone: ask the socket itself before waiting.
  char c;
  ssize_t r;
  do r = ::recv(socket_.native_handle(), &c, 1, MSG_PEEK | MSG_DONTWAIT);
  while (r < 0 && errno == EINTR);
  return r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) ? Want::Read : Want::Nothing;
}

TlsSocket::Want TlsSocket::drain(std::size_t& drained) {
  if (!socket_.is_open()) return Want::Nothing;
  if (drained == 0) ::shutdown(socket_.native_handle(), SHUT_WR);
  char scrap[4096];
  while (drained < (1u << 20)) {
    ssize_t r = ::recv(socket_.native_handle(), scrap, sizeof scrap, MSG_DONTWAIT);
    if (r > 0) {
      drained += static_cast<std::size_t>(r);
      continue;
    }
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      drained = std::max<std::size_t>(drained, 1);  // the sending side is shut
      return Want::Read;
    }
    break;  // the peer closed (or reset): done
  }
  return Want::Nothing;
}

TlsSocket::Want TlsSocket::tryConnect(const tcp::endpoint& endpoint, error_code& ec) {
  if (socket_.is_open()) {
    ec = asio::error::already_open;
    return Want::Nothing;
  }
  socket_.open(endpoint.protocol(), ec);
  if (!ec) socket_.non_blocking(true, ec);
  if (ec) return Want::Nothing;
  int r;
  do r = ::connect(socket_.native_handle(), endpoint.data(), static_cast<socklen_t>(endpoint.size()));
  while (r < 0 && errno == EINTR);
  if (r == 0) return Want::Nothing;
  if (errno == EINPROGRESS) return Want::Write;
  ec = error_code(errno, boost::system::system_category());
  return Want::Nothing;
}

TlsSocket::Want TlsSocket::connectResult(error_code& ec) {
  int err = 0;
  socklen_t len = sizeof err;
  if (::getsockopt(socket_.native_handle(), SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
  if (err) ec = error_code(err, boost::system::system_category());
  return Want::Nothing;
}

// One SSL_read_ex or SSL_write_ex: n bytes, or what it waits for, or ec.
template <class Fn>
TlsSocket::Want TlsSocket::transfer(Fn fn, std::size_t size, error_code& ec, std::size_t& n) {
  n = 0;
  if (size == 0) return Want::Nothing;
  ERR_clear_error();
  lastErrno_ = 0;
  std::size_t done = 0;
  int r = fn(&done);
  if (r != 1) return settle(r, ec);
  n = done;
  return Want::Nothing;
}

TlsSocket::Want TlsSocket::tryRead(asio::mutable_buffer b, error_code& ec, std::size_t& n) {
  return transfer([&](std::size_t* got) { return SSL_read_ex(ssl_, b.data(), b.size(), got); }, b.size(), ec, n);
}

TlsSocket::Want TlsSocket::tryWrite(asio::const_buffer b, error_code& ec, std::size_t& n) {
  return transfer([&](std::size_t* put) { return SSL_write_ex(ssl_, b.data(), b.size(), put); }, b.size(), ec, n);
}

}  // namespace atlasgate::net
