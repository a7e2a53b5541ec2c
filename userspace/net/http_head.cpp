#include "net/http_head.h"

#include <charconv>

namespace atlasgate::net {

namespace {

void appendVersion(std::string& out, unsigned version) {
  out += "HTTP/";
  out.push_back(static_cast<char>('0' + version / 10 % 10));
  out.push_back('.');
  out.push_back(static_cast<char>('0' + version % 10));
}

void appendFields(std::string& out, const http::fields& fields) {
  for (const auto& f : fields) {
    out += f.name_string();
    out += ": ";
    out += f.value();
    out += "\r\n";
  }
  out += "\r\n";
}

}  // namespace

void writeHead(std::string& out, const http::request_header<>& head) {
  out.clear();
  out += head.method_string();
  out.push_back(' ');
  out += head.target();
  out.push_back(' ');
  appendVersion(out, head.version());
  out += "\r\n";
  appendFields(out, head);
}

void writeHead(std::string& out, const http::response_header<>& head) {
  out.clear();
  appendVersion(out, head.version());
  out.push_back(' ');
  char status[4] = {};
  std::to_chars(status, status + sizeof status, head.result_int() % 1000);
  out += std::string_view(status);
  out.push_back(' ');
  beast::string_view reason = head.reason();
  if (reason.empty()) reason = http::obsolete_reason(head.result());
  out.append(reason.data(), reason.size());
  out += "\r\n";
  appendFields(out, head);
}

}  // namespace atlasgate::net
