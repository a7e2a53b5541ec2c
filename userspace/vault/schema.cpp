#include "vault/schema.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <optional>
#include <string_view>

#include "common/fd.h"
#include "common/text.h"
#include "vault/key_file.h"

namespace atlasgate::vault {

namespace {

// Waits this long for another connection's lock (an operator's sqlite3, a
// checkpoint) before a write fails.
constexpr int kBusyTimeoutMs = 5000;

// The key check: a known value sealed under the vault key when the vault is
// created. Opening it proves the key file is the vault's before any entry
// is touched, so a wrong key is named as such.
constexpr std::string_view kKeyCheckAad = "atlasgate vault key check v1";
constexpr std::string_view kKeyCheckValue = "atlasgate vault";

// Every text column is a BLOB: compared byte for byte, stored verbatim.
// kind is TEXT (one of kindName's), so that `sqlite3 vault.db` reads well.
const char* const kSchemaV1 = R"sql(
CREATE TABLE schema_version (version INTEGER NOT NULL);
CREATE TABLE key_check (id INTEGER PRIMARY KEY CHECK (id = 1), sealed BLOB NOT NULL);
CREATE TABLE entries (
  name BLOB PRIMARY KEY NOT NULL,
  kind TEXT NOT NULL,
  target BLOB NOT NULL,
  owner BLOB NOT NULL,
  scope BLOB NOT NULL,
  object BLOB NOT NULL,
  lookup BLOB NOT NULL,
  label BLOB NOT NULL,
  created_at INTEGER NOT NULL,
  pending INTEGER NOT NULL,
  secret BLOB NOT NULL,
  phantom BLOB NOT NULL
);
CREATE INDEX entries_by_lookup ON entries (kind, target, lookup);
CREATE INDEX entries_by_object ON entries (kind, target, object);
CREATE INDEX entries_by_created ON entries (created_at, name);
)sql";

// umask-independent 0600: created here, before SQLite sees the path (SQLite
// would use 0644 & ~umask). SQLite gives the -wal and -shm files the mode
// and owner of the database file.
Result<void> createDatabaseFile(const std::string& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0) {
    if (S_ISLNK(st.st_mode)) return makeError("vault {}: is a symbolic link (it must be a regular file)", path);
    if (!S_ISREG(st.st_mode)) return makeError("vault {}: is not a regular file", path);
    return {};
  }
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
  if (!fd.valid()) return errno == EEXIST ? Result<void>() : sysError(errno, "vault {}: cannot create it", path);
  if (::fchmod(fd.get(), 0600) != 0) return sysError(errno, "vault {}: cannot chmod it", path);
  return {};
}

// The first row of a one-column query, as text.
Result<std::optional<std::string>> firstRow(sqlite3* db, const std::string& path, const char* sql) {
  auto st = Stmt::prepare(db, path, sql);
  if (!st) return st.error();
  int rc = st->step();
  if (rc == SQLITE_DONE) return std::optional<std::string>();
  if (rc != SQLITE_ROW) return st->error(sql);
  return std::optional<std::string>(std::string(st->column(0)));
}

Result<void> configure(sqlite3* db, const std::string& path) {
  sqlite3_busy_timeout(db, kBusyTimeoutMs);
  // Defensive: the schema cannot be edited through this connection, and
  // nothing in the file (views, triggers) runs functions with side effects.
  sqlite3_db_config(db, SQLITE_DBCONFIG_DEFENSIVE, 1, nullptr);
  sqlite3_db_config(db, SQLITE_DBCONFIG_TRUSTED_SCHEMA, 0, nullptr);
  // The first statement to read the file: a file that is no database fails here.
  auto mode = firstRow(db, path, "PRAGMA journal_mode = WAL");
  if (!mode) return makeError("{} (not an SQLite database, or damaged)", mode.error().message);
  if (*mode != "wal")
    return makeError("vault {}: cannot switch to the WAL journal (it stays in {})", path, mode->value_or("?"));
  // synchronous=FULL: the WAL is fsynced at every commit (durable when put
  // returns). secure_delete: a removed or replaced entry's blobs are zeroed,
  // not left in free pages. temp_store: no temporary files.
  for (const char* pragma : {"PRAGMA synchronous = FULL", "PRAGMA secure_delete = ON", "PRAGMA temp_store = MEMORY",
                             "PRAGMA cell_size_check = ON"}) {
    if (auto r = exec(db, path, pragma); !r) return r;
  }
  auto check = firstRow(db, path, "PRAGMA integrity_check(4)");
  if (!check) return check.error();
  if (*check != "ok") {
    return makeError("vault {}: is damaged (integrity check: {})", path,
                     text::forTerminal(text::utf8Prefix(check->value_or("no answer"), 300)));
  }
  return {};
}

struct SchemaState {
  bool present = false;
  std::optional<std::string> keyCheck;
};

Result<SchemaState> readSchema(sqlite3* db, const std::string& path) {
  auto tables = firstRow(db, path, "SELECT count(*) FROM sqlite_master");
  auto ours = firstRow(db, path, "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'");
  if (!tables || !ours) return tables ? ours.error() : tables.error();
  if (**ours == "0") {
    if (**tables != "0") return makeError("vault {}: is an SQLite database, but not an atlasgate vault", path);
    return SchemaState{};
  }
  auto st = Stmt::prepare(db, path, "SELECT version FROM schema_version");
  if (!st) return st.error();
  if (st->step() != SQLITE_ROW) return makeError("vault {}: has no schema version (damaged)", path);
  std::int64_t version = st->columnInt(0);
  if (st->step() != SQLITE_DONE) return makeError("vault {}: has more than one schema version (damaged)", path);
  if (version > kSchemaVersion) {
    return makeError("vault {}: has schema version {}, written by a newer atlasgate (this one knows version {})", path,
                     version, kSchemaVersion);
  }
  if (version < 1) return makeError("vault {}: has an invalid schema version {}", path, version);
  auto check = Stmt::prepare(db, path, "SELECT sealed FROM key_check WHERE id = 1");
  if (!check) return check.error();
  SchemaState state{true, std::nullopt};
  int rc = check->step();
  if (rc == SQLITE_ROW) state.keyCheck = std::string(check->column(0));
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) return check->error("cannot read the key check");
  return state;
}

// The key file: read, or created for a vault that was never sealed. A vault
// that was is never given a fresh key: that would only hide the lost one.
Result<Key> obtainKey(const SchemaState& state, const std::string& dbPath, const std::string& keyPath) {
  if (pathExists(keyPath)) return readKeyFile(keyPath);
  if (state.present) {
    return makeError(
        "vault key file {}: is missing, and vault {} was sealed under it (restore it: without it no entry "
        "can be opened)",
        keyPath, dbPath);
  }
  return createKeyFile(keyPath);
}

Result<void> createSchema(sqlite3* db, const std::string& path, const Key& key) {
  if (auto r = exec(db, path, kSchemaV1); !r) return r;
  auto version = Stmt::prepare(db, path, "INSERT INTO schema_version (version) VALUES (?1)");
  if (!version) return version.error();
  version->integer(1, kSchemaVersion);
  if (auto r = version->run("cannot write the schema version"); !r) return r;
  auto sealed = seal(key, kKeyCheckValue, kKeyCheckAad);
  if (!sealed) return sealed.error();
  auto check = Stmt::prepare(db, path, "INSERT INTO key_check (id, sealed) VALUES (1, ?1)");
  if (!check) return check.error();
  check->blob(1, *sealed);
  return check->run("cannot write the key check");
}

}  // namespace

Result<Db> openDatabase(const std::string& dbPath) {
  if (auto r = createDatabaseFile(dbPath); !r) return r.error();
  sqlite3* raw = nullptr;
  int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOFOLLOW | SQLITE_OPEN_NOMUTEX;
  int rc = sqlite3_open_v2(dbPath.c_str(), &raw, flags, nullptr);
  Db db(raw);
  if (rc != SQLITE_OK) return dbError(db.get(), dbPath, "cannot open it");
  sqlite3_extended_result_codes(db.get(), 1);
  if (auto r = configure(db.get(), dbPath); !r) return r.error();
  return db;
}

Result<Key> prepareVault(sqlite3* db, const std::string& dbPath, const std::string& keyPath) {
  auto before = readSchema(db, dbPath);
  if (!before) return before.error();
  auto key = obtainKey(*before, dbPath, keyPath);
  if (!key) return key.error();
  // Read again under the write lock: another opener may have created the
  // schema meanwhile (with this same key: the key file is created once).
  auto tx = Transaction::begin(db, dbPath);
  if (!tx) return tx.error();
  auto state = readSchema(db, dbPath);
  if (!state) return state.error();
  if (!state->present) {
    if (auto r = createSchema(db, dbPath, *key); !r) return r.error();
    if (auto r = tx->commit(); !r) return r.error();
    return key;
  }
  if (!state->keyCheck) return makeError("vault {}: has no key check (damaged or altered)", dbPath);
  std::string value;
  if (!unseal(*key, *state->keyCheck, kKeyCheckAad, value) || value != kKeyCheckValue) {
    return makeError("vault key file {}: does not match vault {} (it was sealed under another key)", keyPath, dbPath);
  }
  return key;
}

}  // namespace atlasgate::vault
