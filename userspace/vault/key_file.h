#pragma once
// The vault key file (state_dir/vault.key): exactly 32 random bytes, mode
// 0600, owned by the user atlasgate runs as. Whoever can read it can open
// every sealed secret, so an existing file is trusted only when nobody else
// could have read or replaced it.

#include <string>

#include "common/result.h"
#include "vault/seal.h"

namespace atlasgate::vault {

// Reads an existing key file. Refused, with an error that names the path and
// the problem: a symbolic link (opened O_NOFOLLOW), anything but a regular
// file, a size other than 32 bytes, an owner other than the effective uid,
// any permission for group or others.
Result<Key> readKeyFile(const std::string& path);

// Creates the key file, which must not exist: 32 bytes of RAND_priv_bytes
// written to `path.tmp` (O_CREAT|O_EXCL|O_NOFOLLOW, then fchmod 0600 whatever
// the umask), fsynced, then link()ed into place (never overwrites) and the
// directory fsynced. A kill at any point leaves either no key file or a
// complete one. Losing a race to another creator reads the winner's key.
Result<Key> createKeyFile(const std::string& path);

// Whether anything (even a dangling symlink) is at path.
bool pathExists(const std::string& path);

}  // namespace atlasgate::vault
