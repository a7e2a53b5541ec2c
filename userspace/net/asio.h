#pragma once
// The Asio/Beast vocabulary of the data plane, in one place (namespace
// atlasgate::net). Asio, Asio.SSL and Beast are compiled once, in asio_impl.cpp
// (BOOST_*_SEPARATE_COMPILATION, PUBLIC definitions of ag_net).

#include <optional>
#include <string_view>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>

namespace atlasgate::net {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;

// Data-plane awaits report errors as values, never as exceptions.
inline constexpr auto kUseTuple = asio::as_tuple(asio::use_awaitable);

using TlsStream = beast::ssl_stream<beast::tcp_stream>;

// Keeps p in set for as long as it lives: the open connections a server
// closes on stop(), for example.
template <class T, class Set>
class Tracked {
 public:
  Tracked(Set& set, T* p) : set_(set), p_(p) { set_.insert(p_); }
  ~Tracked() { set_.erase(p_); }
  Tracked(const Tracked&) = delete;
  Tracked& operator=(const Tracked&) = delete;

 private:
  Set& set_;
  T* p_;
};

// An operator's listen address: "127.0.0.1:15444", "[::1]:15444" or
// "localhost:15444" (= 127.0.0.1); nullopt when it is none of those forms or
// the port is not 1..65535. No name is resolved.
std::optional<tcp::endpoint> parseListenAddress(std::string_view address);

}  // namespace atlasgate::net
