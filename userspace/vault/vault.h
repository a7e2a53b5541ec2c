#pragma once
// The sealed credential store: every credential atlasgate captures from an
// Atlas response (API key private keys, service-account secrets, database
// user passwords, X.509 private keys) is kept here next to the phantom the
// agent was handed instead.
//
// On disk: SQLite at state_dir/vault.db (WAL journal, synchronous=FULL, so a
// put is durable when it returns and survives kill -9 mid-write), each
// secret and phantom sealed with AES-256-GCM under the 32-byte key file
// state_dir/vault.key (vault/seal.h). Nothing secret is ever in clear on
// disk: only sealed blobs reach SQLite, so neither the database nor its
// -wal/-shm files can hold a plaintext. The metadata (names, targets,
// lookups) is not secret and is stored in clear, as blobs compared byte for
// byte: names and lookups come from hostile agents and Atlas responses, may
// hold quotes or NULs, and are only ever bound as parameters.
//
// A sealed blob is bound to its row (name, kind, target, owner, scope,
// object, lookup) and its role (secret or phantom): a blob copied into
// another row, a row edited to point at another target, or secret and
// phantom swapped fail to open, with an error, never with garbage.
//
// Errors name the file and the entry (escaped for a terminal), never a
// secret or a phantom. Thread-safe: one mutex around the connection.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace atlasgate::vault {

enum class Kind { ApiKey, ServiceAccountSecret, DatabaseUser, X509Certificate };
// "api_key", "service_account", "database_user", "x509" ("unknown" for a
// value outside the enum).
std::string_view kindName(Kind k);
std::optional<Kind> kindFromName(std::string_view name);

// Bounds put() enforces, so that a hostile agent or a broken response cannot
// grow the vault without limit.
inline constexpr std::size_t kMaxFieldBytes = 1024;        // each metadata field
inline constexpr std::size_t kMaxSecretBytes = 64 * 1024;  // secret, phantom

struct Entry {
  std::string name;  // unique id, e.g. "captured:api_key:5f1a…" (primary key; no secret in it)
  Kind kind = Kind::ApiKey;
  std::string target;          // the Atlas host, e.g. "cloud.mongodb.com"
  std::string owner;           // the agent name that minted it
  std::string scope;           // "orgs/<id>" or "groups/<id>"
  std::string object;          // the Atlas object: API key id, service account clientId, "<db>/<user>", ...
  std::string lookup;          // what an agent presents to use it: API public key, clientId, username ("" if none)
  std::string label;           // a safe description (the key's desc, the account's name)
  std::int64_t createdAt = 0;  // unix seconds
  bool pending = false;        // written before Atlas confirmed (database-user passwords)
  bool operator==(const Entry&) const = default;
};

// An entry with its secret and phantom in clear. Move-only; both are zeroed
// (OPENSSL_cleanse, the whole buffer) when it is destroyed or moved from.
struct Unsealed {
  Entry entry;
  std::string secret;
  std::string phantom;

  Unsealed() = default;
  ~Unsealed();
  Unsealed(Unsealed&& o) noexcept;
  Unsealed& operator=(Unsealed&& o) noexcept;
  Unsealed(const Unsealed&) = delete;
  Unsealed& operator=(const Unsealed&) = delete;
};

class Vault {
 public:
  // Opens or creates the database and the key file. The key file is created
  // (0600, 32 bytes from RAND_priv_bytes, written and fsynced before it is
  // linked into place, never over an existing file: vault/key_file.h) when
  // absent and the vault has never been sealed; an existing key file must be a regular
  // file (no symlink: O_NOFOLLOW), exactly 32 bytes, owned by the current
  // euid, and give group and others no access — anything else is an error
  // that names the path and what is wrong. A key that is not the one the
  // vault was sealed under is refused here (a key check row), as is a
  // missing key file for a vault that has one.
  // The database file is created 0600 (umask-independent; SQLite gives its
  // -wal and -shm files the same mode), WAL journal, synchronous=FULL, a
  // schema version table; a damaged file or a schema from the future is an
  // error naming the file.
  static Result<std::unique_ptr<Vault>> open(const std::string& dbPath, const std::string& keyPath);
  ~Vault();
  Vault(const Vault&) = delete;
  Vault& operator=(const Vault&) = delete;

  // Inserts or replaces (by name) in one transaction, durable when it
  // returns. The name and the secret must not be empty; every field is
  // bounded (kMaxFieldBytes, kMaxSecretBytes).
  Result<void> put(const Entry& e, std::string_view secret, std::string_view phantom);
  // pending -> active (already active: no change); an error if absent.
  Result<void> activate(std::string_view name);
  Result<std::optional<Unsealed>> get(std::string_view name);
  // Metadata only, ordered by createdAt then name.
  Result<std::vector<Entry>> list();
  // Active entries of a kind whose lookup equals `lookup` on `target`
  // (indexed). An empty lookup finds nothing: an entry without a lookup is
  // not reachable by one.
  Result<std::vector<Unsealed>> findByLookup(Kind k, std::string_view target, std::string_view lookup);
  // Active entries of a kind on a target whose object equals `object` or
  // starts with `object + "/"` ("a/b" finds "a/b" and "a/b/c", not "a/bc").
  Result<std::vector<Entry>> findByObject(Kind k, std::string_view target, std::string_view object);
  // false: there was none.
  Result<bool> remove(std::string_view name);
  // Entries (0 on error).
  std::size_t size();
  const std::string& path() const;

 private:
  struct Impl;
  explicit Vault(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace atlasgate::vault
