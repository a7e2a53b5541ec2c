#include "vault/db.h"

namespace atlasgate::vault {

Error dbError(sqlite3* db, const std::string& path, std::string_view what) {
  return makeError("vault {}: {}: {}", path, what, db ? sqlite3_errmsg(db) : "out of memory");
}

Result<void> exec(sqlite3* db, const std::string& path, const char* sql) {
  if (sqlite3_exec(db, sql, nullptr, nullptr, nullptr) != SQLITE_OK) return dbError(db, path, sql);
  return {};
}

Result<Stmt> Stmt::prepare(sqlite3* db, const std::string& path, const char* sql) {
  sqlite3_stmt* s = nullptr;
  if (sqlite3_prepare_v2(db, sql, -1, &s, nullptr) != SQLITE_OK) {
    sqlite3_finalize(s);
    return dbError(db, path, "cannot prepare a statement");
  }
  return Stmt(s, db, path);
}

void Stmt::blob(int i, std::string_view v) {
  // A null pointer would bind NULL, not an empty blob.
  if (v.empty()) {
    note(sqlite3_bind_zeroblob(s_, i, 0));
  } else {
    note(sqlite3_bind_blob64(s_, i, v.data(), v.size(), SQLITE_STATIC));
  }
}

void Stmt::text(int i, std::string_view v) {
  note(sqlite3_bind_text64(s_, i, v.data(), v.size(), SQLITE_STATIC, SQLITE_UTF8));
}

void Stmt::integer(int i, std::int64_t v) { note(sqlite3_bind_int64(s_, i, v)); }

int Stmt::step() {
  if (bindRc_ != SQLITE_OK) return bindRc_;
  return sqlite3_step(s_);
}

std::string_view Stmt::column(int c) const {
  const void* p = sqlite3_column_blob(s_, c);
  int n = sqlite3_column_bytes(s_, c);
  if (!p || n <= 0) return {};
  return {static_cast<const char*>(p), static_cast<std::size_t>(n)};
}

Result<void> Stmt::run(std::string_view what) {
  if (step() != SQLITE_DONE) return error(what);
  return {};
}

Result<Transaction> Transaction::begin(sqlite3* db, const std::string& path) {
  if (auto r = exec(db, path, "BEGIN IMMEDIATE"); !r) return r.error();
  return Transaction(db, path);
}

Transaction::~Transaction() {
  if (db_) sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
}

Result<void> Transaction::commit() {
  auto r = exec(db_, *path_, "COMMIT");
  // A failed COMMIT leaves the transaction open: the destructor rolls back.
  if (r) db_ = nullptr;
  return r;
}

}  // namespace atlasgate::vault
