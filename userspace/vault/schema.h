#pragma once
// Opening the vault's database: the file, the connection's settings, the
// integrity check, the schema (created or checked) and the key check that
// ties the database to its key file.

#include <string>

#include "common/result.h"
#include "vault/db.h"
#include "vault/seal.h"

namespace atlasgate::vault {

inline constexpr int kSchemaVersion = 1;

// A connection to dbPath: the file created 0600 when absent, WAL journal,
// synchronous=FULL, a busy timeout, defensive settings, integrity checked.
Result<Db> openDatabase(const std::string& dbPath);

// Creates the schema of a new vault (and the key file, if absent), or checks
// an existing one: its version, and that keyPath holds the key it was sealed
// under. Returns the key.
Result<Key> prepareVault(sqlite3* db, const std::string& dbPath, const std::string& keyPath);

}  // namespace atlasgate::vault
