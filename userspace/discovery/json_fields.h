#pragma once
// Reading fields of untrusted JSON objects (the Kubernetes API server's, a
// container engine's) without exceptions: a missing or null field is empty,
// a field of another type is reported.

#include <string>
#include <string_view>

#include <boost/json.hpp>

namespace atlasgate::discovery::jsonf {

// The object at `key`; nullptr when absent or not an object.
inline const boost::json::object* objectAt(const boost::json::object& o, std::string_view key) {
  auto it = o.find(key);
  if (it == o.end()) return nullptr;
  return it->value().if_object();
}

// The string at `key`, or "" when it is absent or null; false when it is
// there but not a string.
inline bool stringAt(const boost::json::object& o, std::string_view key, std::string& out) {
  out.clear();
  auto it = o.find(key);
  if (it == o.end() || it->value().is_null()) return true;
  const boost::json::string* s = it->value().if_string();
  if (s == nullptr) return false;
  out.assign(s->data(), s->size());
  return true;
}

}  // namespace atlasgate::discovery::jsonf
