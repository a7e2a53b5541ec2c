#pragma once
// The little of SQLite the vault needs, owned: a connection, a prepared
// statement whose parameters are only ever bound (never formatted into SQL:
// names and lookups come from hostile agents and Atlas responses), and a
// transaction that rolls back unless committed. Text fields are bound as
// blobs, compared byte for byte (a NUL or a quote is just a byte).

#include <sqlite3.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>

#include "common/result.h"

namespace atlasgate::vault {

struct DbClose {
  void operator()(sqlite3* db) const { sqlite3_close_v2(db); }
};
using Db = std::unique_ptr<sqlite3, DbClose>;

// "vault <path>: <what>: <SQLite's message>". SQLite's messages name tables
// and columns, never values.
Error dbError(sqlite3* db, const std::string& path, std::string_view what);

// Runs SQL without parameters (schema, pragmas).
Result<void> exec(sqlite3* db, const std::string& path, const char* sql);

class Stmt {
 public:
  static Result<Stmt> prepare(sqlite3* db, const std::string& path, const char* sql);
  ~Stmt() { sqlite3_finalize(s_); }
  Stmt(Stmt&& o) noexcept : s_(std::exchange(o.s_, nullptr)), db_(o.db_), path_(o.path_), bindRc_(o.bindRc_) {}
  Stmt& operator=(Stmt&&) = delete;
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;

  // Parameters are numbered from 1. The bytes must outlive the statement
  // (bound without a copy).
  void blob(int i, std::string_view v);
  void text(int i, std::string_view v);
  void integer(int i, std::int64_t v);

  // SQLITE_ROW, SQLITE_DONE, or an error code (a failed bind included).
  int step();
  // A row's column; "" for NULL.
  std::string_view column(int c) const;
  std::int64_t columnInt(int c) const { return sqlite3_column_int64(s_, c); }

  // Steps to the end expecting no row (a write): an error names `what`.
  Result<void> run(std::string_view what);
  Error error(std::string_view what) const { return dbError(db_, *path_, what); }

 private:
  Stmt(sqlite3_stmt* s, sqlite3* db, const std::string& path) : s_(s), db_(db), path_(&path) {}
  void note(int rc) {
    if (bindRc_ == SQLITE_OK) bindRc_ = rc;
  }
  sqlite3_stmt* s_ = nullptr;
  sqlite3* db_ = nullptr;
  const std::string* path_ = nullptr;
  int bindRc_ = SQLITE_OK;
};

// BEGIN IMMEDIATE (the write lock up front: no deadlock when a read turns
// into a write); rolled back when destroyed uncommitted.
class Transaction {
 public:
  static Result<Transaction> begin(sqlite3* db, const std::string& path);
  ~Transaction();
  Transaction(Transaction&& o) noexcept : db_(std::exchange(o.db_, nullptr)), path_(o.path_) {}
  Transaction& operator=(Transaction&&) = delete;
  Result<void> commit();

 private:
  Transaction(sqlite3* db, const std::string& path) : db_(db), path_(&path) {}
  sqlite3* db_ = nullptr;
  const std::string* path_ = nullptr;
};

}  // namespace atlasgate::vault
