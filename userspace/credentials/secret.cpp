#include "credentials/secret.h"

#include <openssl/crypto.h>
#include <sys/prctl.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace atlasgate::credentials {

void Secret::wipe() {
  if (!value_.empty()) OPENSSL_cleanse(value_.data(), value_.size());
  value_.clear();
  value_.shrink_to_fit();
}

Result<Secret> readSecret(const config::SecretRef& ref, std::string_view what) {
  if (!ref.file.empty()) {
    std::error_code dec;
    if (std::filesystem::is_directory(ref.file, dec)) return makeError("{}: {} is a directory", what, ref.file);
    std::ifstream in(ref.file, std::ios::binary);
    if (!in) return sysError(errno, "{}: cannot read {}", what, ref.file);
    std::string s;
    try {
      s.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    } catch (const std::exception&) {
      return sysError(errno, "{}: cannot read {}", what, ref.file);
    }
    while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
    Secret out(std::move(s));
    if (out.empty()) return makeError("{}: {} is empty", what, ref.file);
    return out;
  }
  if (!ref.env.empty()) {
    const char* v = std::getenv(ref.env.c_str());
    if (!v || !*v) return makeError("{}: environment variable {} is not set", what, ref.env);
    return Secret(std::string(v));
  }
  if (!ref.inlineValue.empty()) return Secret(std::string(ref.inlineValue));
  return makeError("{}: no secret configured", what);
}

void hardenProcess() {
  // Not dumpable: no core files holding tokens, and /proc/<pid>/mem and
  // ptrace are closed to non-root.
  ::prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
}

}  // namespace atlasgate::credentials
