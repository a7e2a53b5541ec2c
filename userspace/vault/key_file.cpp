#include "vault/key_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <optional>
#include <string_view>

#include "common/fd.h"

namespace atlasgate::vault {

namespace {

std::string directoryOf(const std::string& path) {
  auto slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

bool writeAll(int fd, const unsigned char* p, std::size_t n) {
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= static_cast<std::size_t>(w);
  }
  return true;
}

// The new key file's name must outlive a power cut, not only its bytes.
Result<void> syncDirectory(const std::string& path) {
  std::string dir = directoryOf(path);
  UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd.valid() || ::fsync(fd.get()) != 0) return sysError(errno, "vault key file {}: cannot sync {}", path, dir);
  return {};
}

// Fills a fresh file with the key: 0600 whatever the umask, on disk.
Result<void> fillKeyFile(int fd, const Key& key, const std::string& path) {
  if (::fchmod(fd, 0600) != 0 || !writeAll(fd, key.data(), Key::kBytes) || ::fsync(fd) != 0) {
    return sysError(errno, "vault key file {}: cannot write it", path);
  }
  return {};
}

// The preferred way: an O_TMPFILE file has no name until linkat() gives it
// the final one, so a kill at any point leaves nothing behind. nullopt: the
// file system (or a missing /proc) does not allow it, use a named temp file.
std::optional<Result<void>> createAnonymous(const Key& key, const std::string& path) {
  std::string dir = directoryOf(path);
  UniqueFd fd(::open(dir.c_str(), O_TMPFILE | O_WRONLY | O_CLOEXEC, 0600));
  if (!fd.valid()) {
    if (errno == EOPNOTSUPP || errno == EISDIR || errno == EINVAL) return std::nullopt;
    return Result<void>(sysError(errno, "vault key file {}: cannot create it in {}", path, dir));
  }
  if (auto r = fillKeyFile(fd.get(), key, path); !r) return r;
  std::string self = "/proc/self/fd/" + std::to_string(fd.get());
  if (::linkat(AT_FDCWD, self.c_str(), AT_FDCWD, path.c_str(), AT_SYMLINK_FOLLOW) != 0) {
    if (errno == ENOENT && !pathExists("/proc/self/fd")) return std::nullopt;
    return Result<void>(sysError(errno, "vault key file {}: cannot create it", path));
  }
  return Result<void>();
}

// The fallback: `path.tmp.<pid>` (no other live process has the pid, so a
// file there is a leftover of a killed one), link()ed into place.
Result<void> createNamed(const Key& key, const std::string& path) {
  std::string tmp = path + ".tmp." + std::to_string(::getpid());
  int flags = O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC;
  UniqueFd fd(::open(tmp.c_str(), flags, 0600));
  if (!fd.valid() && errno == EEXIST && ::unlink(tmp.c_str()) == 0) fd.reset(::open(tmp.c_str(), flags, 0600));
  if (!fd.valid()) return sysError(errno, "vault key file {}: cannot create {}", path, tmp);
  auto r = fillKeyFile(fd.get(), key, path);
  if (r && ::link(tmp.c_str(), path.c_str()) != 0) r = sysError(errno, "vault key file {}: cannot create it", path);
  ::unlink(tmp.c_str());
  return r;
}

}  // namespace

bool pathExists(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0;
}

Result<Key> readKeyFile(const std::string& path) {
  // O_NONBLOCK: a FIFO planted here must be refused, not block the open.
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY));
  if (!fd.valid()) {
    int e = errno;
    struct stat lst {};
    if (e == ELOOP && ::lstat(path.c_str(), &lst) == 0 && S_ISLNK(lst.st_mode)) {
      return makeError("vault key file {}: is a symbolic link (it must be a regular file)", path);
    }
    return sysError(e, "vault key file {}: cannot open it", path);
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return sysError(errno, "vault key file {}: cannot stat it", path);
  if (!S_ISREG(st.st_mode)) return makeError("vault key file {}: is not a regular file", path);
  if (st.st_uid != ::geteuid()) {
    return makeError("vault key file {}: is owned by uid {}, not by uid {} that atlasgate runs as", path, st.st_uid,
                     ::geteuid());
  }
  if ((st.st_mode & 077) != 0) {
    return makeError(
        "vault key file {}: mode {:04o} gives group or others access to it (it must be 0600: chmod 600 {})", path,
        st.st_mode & 07777, path);
  }
  if (st.st_size != static_cast<off_t>(Key::kBytes)) {
    return makeError("vault key file {}: is {} bytes; a vault key is exactly {}", path, st.st_size, Key::kBytes);
  }
  Key key;
  std::size_t got = 0;
  while (got < Key::kBytes) {
    ssize_t n = ::pread(fd.get(), key.data() + got, Key::kBytes - got, static_cast<off_t>(got));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return sysError(errno, "vault key file {}: cannot read it", path);
    if (n == 0) return makeError("vault key file {}: shrank while it was read", path);
    got += static_cast<std::size_t>(n);
  }
  return key;
}

Result<Key> createKeyFile(const std::string& path) {
  auto key = randomKey();
  if (!key) return key.error();
  auto made = createAnonymous(*key, path);
  Result<void> r = made ? std::move(*made) : createNamed(*key, path);
  // Another opener created it first: theirs is the key.
  if (!r && r.error().code == EEXIST) return readKeyFile(path);
  if (!r) return r.error();
  if (auto s = syncDirectory(path); !s) return s.error();
  return key;
}

}  // namespace atlasgate::vault
