#pragma once
// Control-plane error regime: functions that load, parse, attach or otherwise
// set things up return Result<T>, carrying errno (when there is one) and a
// message with enough context to act on. The data plane uses error codes.

#include <cerrno>
#include <cstring>
#include <string>
#include <utility>
#include <variant>

#include <fmt/format.h>

namespace atlasgate {

struct Error {
  int code = 0;         // errno, or 0 when not a system error
  std::string message;  // one line, says what failed and where
};

template <class... Args>
Error makeError(fmt::format_string<Args...> f, Args&&... args) {
  return Error{0, fmt::format(f, std::forward<Args>(args)...)};
}

template <class... Args>
Error sysError(int code, fmt::format_string<Args...> f, Args&&... args) {
  std::string m = fmt::format(f, std::forward<Args>(args)...);
  if (code != 0) {
    m += ": ";
    m += std::strerror(code);
  }
  return Error{code, std::move(m)};
}

template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}      // NOLINT(implicit)
  Result(Error error) : v_(std::move(error)) {}  // NOLINT(implicit)

  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }
  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const Error& error() const { return std::get<1>(v_); }

 private:
  std::variant<T, Error> v_;
};

template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Error error) : err_(std::move(error)), ok_(false) {}  // NOLINT(implicit)

  bool ok() const { return ok_; }
  explicit operator bool() const { return ok_; }
  const Error& error() const { return err_; }

 private:
  Error err_;
  bool ok_ = true;
};

}  // namespace atlasgate
