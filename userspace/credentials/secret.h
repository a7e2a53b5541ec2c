#pragma once
// A secret in memory: never copied implicitly, zeroed when destroyed or
// replaced. Read from a file or the environment (or an inline value that the
// config loader only accepts from a 0600 file).

#include <string>
#include <string_view>

#include "common/result.h"
#include "config/config.h"

namespace atlasgate::credentials {

class Secret {
 public:
  Secret() = default;
  explicit Secret(std::string value) : value_(std::move(value)) {}
  ~Secret() { wipe(); }
  Secret(const Secret&) = delete;
  Secret& operator=(const Secret&) = delete;
  Secret(Secret&& o) noexcept : value_(std::move(o.value_)) { o.wipe(); }
  Secret& operator=(Secret&& o) noexcept {
    if (this != &o) {
      wipe();
      value_ = std::move(o.value_);
      o.wipe();
    }
    return *this;
  }
  std::string_view view() const { return value_; }
  bool empty() const { return value_.empty(); }
  void wipe();

 private:
  std::string value_;
};

// Reads the secret a SecretRef points at; trailing newlines of a file are
// dropped. `what` names it in errors ("client secret of service_account:…").
Result<Secret> readSecret(const config::SecretRef& ref, std::string_view what);

// Process-wide hardening: no core dumps of secrets, no ptrace by non-root.
void hardenProcess();

}  // namespace atlasgate::credentials
