#pragma once
// HTTP/1 message heads written straight into a caller's buffer, byte for
// byte what Beast's serializer writes (tests/unit/net/http_head_test.cpp
// compares them): the data path writes a head and its body in one go from a
// buffer that keeps its capacity, instead of walking Beast's serializer and
// its buffer iterators on every request.

#include <string>

#include "net/asio.h"

namespace atlasgate::net {

// "METHOD target HTTP/1.x\r\n", the fields as stored, "\r\n"; out is replaced.
void writeHead(std::string& out, const http::request_header<>& head);
// "HTTP/1.x status reason\r\n" (the reason as received, else the standard
// one), the fields as stored, "\r\n"; out is replaced.
void writeHead(std::string& out, const http::response_header<>& head);

}  // namespace atlasgate::net
