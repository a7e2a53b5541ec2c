#include "vault/vault.h"

#include <functional>
#include <mutex>
#include <utility>

#include "common/text.h"
#include "vault/db.h"
#include "vault/schema.h"
#include "vault/seal.h"

namespace atlasgate::vault {

namespace {

constexpr std::string_view kEntryAad = "atlasgate vault entry v1";
constexpr std::string_view kSecretRole = "secret";
constexpr std::string_view kPhantomRole = "phantom";

// The metadata columns, in readEntry's order; the unsealing queries add the
// two blobs after them (columns 10 and 11).
#define AG_VAULT_ENTRY_COLUMNS "name, kind, target, owner, scope, object, lookup, label, created_at, pending"

// An entry's name in a message: names come from agents and Atlas responses,
// so they are escaped for a terminal and cut short.
std::string shown(std::string_view name) {
  constexpr std::size_t kShown = 128;
  std::string out = "\"" + text::forTerminal(text::utf8Prefix(name, kShown));
  if (name.size() > kShown) out += "...";
  return out + "\"";
}

// What a blob is bound to: its role and every field that decides where and
// to whom the secret goes. Each field is length-prefixed (8 bytes, big
// endian), so no two different rows give the same bytes. label, createdAt
// and pending are left out: they may change (activate) or do not matter.
std::string aadFor(const Entry& e, std::string_view role) {
  std::string aad(kEntryAad);
  const std::string_view fields[] = {role, e.name, kindName(e.kind), e.target, e.owner, e.scope, e.object, e.lookup};
  for (std::string_view f : fields) {
    std::uint64_t n = f.size();
    for (int shift = 56; shift >= 0; shift -= 8) aad.push_back(static_cast<char>((n >> shift) & 0xff));
    aad.append(f);
  }
  return aad;
}

Result<void> validate(const Entry& e, std::string_view secret, std::string_view phantom) {
  if (e.name.empty()) return makeError("vault entry: the name is empty");
  if (!kindFromName(kindName(e.kind))) {
    return makeError("vault entry {}: unknown kind {}", shown(e.name), static_cast<int>(e.kind));
  }
  const std::pair<std::string_view, std::string_view> fields[] = {
      {"name", e.name},     {"target", e.target}, {"owner", e.owner}, {"scope", e.scope},
      {"object", e.object}, {"lookup", e.lookup}, {"label", e.label}};
  for (const auto& [field, value] : fields) {
    if (value.size() > kMaxFieldBytes) {
      return makeError("vault entry {}: {} is {} bytes, more than the {} allowed", shown(e.name), field, value.size(),
                       kMaxFieldBytes);
    }
  }
  if (secret.empty()) return makeError("vault entry {}: the secret is empty", shown(e.name));
  for (const auto& [field, value] : {std::pair{"secret", secret}, std::pair{"phantom", phantom}}) {
    if (value.size() > kMaxSecretBytes) {
      return makeError("vault entry {}: the {} is {} bytes, more than the {} allowed", shown(e.name), field,
                       value.size(), kMaxSecretBytes);
    }
  }
  return {};
}

Result<Entry> readEntry(const Stmt& st, const std::string& path) {
  Entry e;
  e.name = st.column(0);
  auto kind = kindFromName(st.column(1));
  if (!kind) return makeError("vault {}: entry {} has an unknown kind {}", path, shown(e.name), shown(st.column(1)));
  e.kind = *kind;
  e.target = st.column(2);
  e.owner = st.column(3);
  e.scope = st.column(4);
  e.object = st.column(5);
  e.lookup = st.column(6);
  e.label = st.column(7);
  e.createdAt = st.columnInt(8);
  e.pending = st.columnInt(9) != 0;
  return e;
}

Result<Unsealed> readUnsealed(const Stmt& st, const Key& key, const std::string& path) {
  auto e = readEntry(st, path);
  if (!e) return e.error();
  Unsealed u;
  u.entry = std::move(*e);
  const std::pair<std::string_view, std::string*> blobs[] = {{kSecretRole, &u.secret}, {kPhantomRole, &u.phantom}};
  int column = 10;
  for (const auto& [role, out] : blobs) {
    if (auto r = unseal(key, st.column(column++), aadFor(u.entry, role), *out); !r) {
      return makeError("vault {}: the {} of entry {} does not open ({}): it was altered, or moved from another entry",
                       path, role, shown(u.entry.name), r.error().message);
    }
  }
  return u;
}

// Runs a query and hands each row to onRow.
Result<void> eachRow(Stmt& st, std::string_view what, const std::function<Result<void>()>& onRow) {
  for (;;) {
    int rc = st.step();
    if (rc == SQLITE_DONE) return {};
    if (rc != SQLITE_ROW) return st.error(what);
    if (auto r = onRow(); !r) return r;
  }
}

// Every row as an entry (metadata only).
Result<std::vector<Entry>> entries(Stmt& st, std::string_view what, const std::string& path) {
  std::vector<Entry> out;
  auto r = eachRow(st, what, [&]() -> Result<void> {
    auto e = readEntry(st, path);
    if (!e) return e.error();
    out.push_back(std::move(*e));
    return {};
  });
  if (!r) return r.error();
  return out;
}

}  // namespace

std::string_view kindName(Kind k) {
  switch (k) {
    case Kind::ApiKey: return "api_key";
    case Kind::ServiceAccountSecret: return "service_account";
    case Kind::DatabaseUser: return "database_user";
    case Kind::X509Certificate: return "x509";
  }
  return "unknown";
}

std::optional<Kind> kindFromName(std::string_view name) {
  for (Kind k : {Kind::ApiKey, Kind::ServiceAccountSecret, Kind::DatabaseUser, Kind::X509Certificate}) {
    if (kindName(k) == name) return k;
  }
  return std::nullopt;
}

Unsealed::~Unsealed() {
  wipe(secret);
  wipe(phantom);
}

Unsealed::Unsealed(Unsealed&& o) noexcept
    : entry(std::move(o.entry)), secret(std::move(o.secret)), phantom(std::move(o.phantom)) {
  // A short string is copied, not stolen: its bytes stay in o.
  wipe(o.secret);
  wipe(o.phantom);
}

Unsealed& Unsealed::operator=(Unsealed&& o) noexcept {
  if (this != &o) {
    wipe(secret);
    wipe(phantom);
    entry = std::move(o.entry);
    secret = std::move(o.secret);
    phantom = std::move(o.phantom);
    wipe(o.secret);
    wipe(o.phantom);
  }
  return *this;
}

struct Vault::Impl {
  std::mutex mu;  // the connection is used by one thread at a time
  Db db;
  Key key;
  std::string path;
};

Vault::Vault(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Vault::~Vault() = default;

const std::string& Vault::path() const { return impl_->path; }

Result<std::unique_ptr<Vault>> Vault::open(const std::string& dbPath, const std::string& keyPath) {
  auto db = openDatabase(dbPath);
  if (!db) return db.error();
  auto key = prepareVault(db->get(), dbPath, keyPath);
  if (!key) return key.error();
  auto impl = std::make_unique<Impl>();
  impl->db = std::move(*db);
  impl->key = std::move(*key);
  impl->path = dbPath;
  return std::unique_ptr<Vault>(new Vault(std::move(impl)));
}

Result<void> Vault::put(const Entry& e, std::string_view secret, std::string_view phantom) {
  if (auto r = validate(e, secret, phantom); !r) return r;
  // Sealed before the lock: the key never changes once open.
  auto sealedSecret = seal(impl_->key, secret, aadFor(e, kSecretRole));
  auto sealedPhantom = seal(impl_->key, phantom, aadFor(e, kPhantomRole));
  if (!sealedSecret || !sealedPhantom) return sealedSecret ? sealedPhantom.error() : sealedSecret.error();
  std::lock_guard lock(impl_->mu);
  // One statement, one transaction: with synchronous=FULL the WAL is
  // fsynced before it returns. REPLACE deletes the old row (secure_delete
  // zeroes it) and inserts the new one.
  auto st = Stmt::prepare(impl_->db.get(), impl_->path,
                          "INSERT OR REPLACE INTO entries (" AG_VAULT_ENTRY_COLUMNS
                          ", secret, phantom) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)");
  if (!st) return st.error();
  int i = 1;
  st->blob(i++, e.name);
  st->text(i++, kindName(e.kind));
  for (std::string_view f : {std::string_view(e.target), std::string_view(e.owner), std::string_view(e.scope),
                             std::string_view(e.object), std::string_view(e.lookup), std::string_view(e.label)}) {
    st->blob(i++, f);
  }
  st->integer(i++, e.createdAt);
  st->integer(i++, e.pending ? 1 : 0);
  st->blob(i++, *sealedSecret);
  st->blob(i++, *sealedPhantom);
  return st->run(fmt::format("cannot store entry {}", shown(e.name)));
}

Result<void> Vault::activate(std::string_view name) {
  std::lock_guard lock(impl_->mu);
  sqlite3* db = impl_->db.get();
  auto st = Stmt::prepare(db, impl_->path, "UPDATE entries SET pending = 0 WHERE name = ?1");
  if (!st) return st.error();
  st->blob(1, name);
  if (auto r = st->run(fmt::format("cannot activate entry {}", shown(name))); !r) return r;
  // Counts the rows matched, also those that were active already.
  if (sqlite3_changes(db) == 0) return makeError("vault {}: no entry {} to activate", impl_->path, shown(name));
  return {};
}

Result<std::optional<Unsealed>> Vault::get(std::string_view name) {
  std::lock_guard lock(impl_->mu);
  auto st = Stmt::prepare(impl_->db.get(), impl_->path,
                          "SELECT " AG_VAULT_ENTRY_COLUMNS ", secret, phantom FROM entries WHERE name = ?1");
  if (!st) return st.error();
  st->blob(1, name);
  int rc = st->step();
  if (rc == SQLITE_DONE) return std::optional<Unsealed>();
  if (rc != SQLITE_ROW) return st->error(fmt::format("cannot read entry {}", shown(name)));
  auto u = readUnsealed(*st, impl_->key, impl_->path);
  if (!u) return u.error();
  return std::optional<Unsealed>(std::move(*u));
}

Result<std::vector<Entry>> Vault::list() {
  std::lock_guard lock(impl_->mu);
  auto st = Stmt::prepare(impl_->db.get(), impl_->path,
                          "SELECT " AG_VAULT_ENTRY_COLUMNS " FROM entries ORDER BY created_at, name");
  if (!st) return st.error();
  return entries(*st, "cannot list the entries", impl_->path);
}

Result<std::vector<Unsealed>> Vault::findByLookup(Kind k, std::string_view target, std::string_view lookup) {
  std::vector<Unsealed> out;
  if (lookup.empty()) return out;
  std::lock_guard lock(impl_->mu);
  auto st = Stmt::prepare(impl_->db.get(), impl_->path,
                          "SELECT " AG_VAULT_ENTRY_COLUMNS
                          ", secret, phantom FROM entries"
                          " WHERE kind = ?1 AND target = ?2 AND lookup = ?3 AND pending = 0"
                          " ORDER BY created_at, name");
  if (!st) return st.error();
  st->text(1, kindName(k));
  st->blob(2, target);
  st->blob(3, lookup);
  auto r = eachRow(*st, "cannot look entries up", [&]() -> Result<void> {
    auto u = readUnsealed(*st, impl_->key, impl_->path);
    if (!u) return u.error();
    out.push_back(std::move(*u));
    return {};
  });
  if (!r) return r.error();
  return out;
}

Result<std::vector<Entry>> Vault::findByObject(Kind k, std::string_view target, std::string_view object) {
  // "starts with object/" as a range of blobs: [object + "/", object + "0")
  // ('0' follows '/'), byte for byte, with no LIKE pattern to escape. The
  // index seeks [object, object + "0"), which holds both; the rest of the
  // condition drops what sorts between them ("a/b.": '.' precedes '/').
  std::string from = std::string(object) + "/";
  std::string to = std::string(object) + "0";
  std::lock_guard lock(impl_->mu);
  auto st = Stmt::prepare(impl_->db.get(), impl_->path,
                          "SELECT " AG_VAULT_ENTRY_COLUMNS
                          " FROM entries WHERE kind = ?1 AND target = ?2 AND object >= ?3 AND object < ?5"
                          " AND (object = ?3 OR object >= ?4) AND pending = 0 ORDER BY created_at, name");
  if (!st) return st.error();
  st->text(1, kindName(k));
  st->blob(2, target);
  st->blob(3, object);
  st->blob(4, from);
  st->blob(5, to);
  return entries(*st, "cannot find entries by object", impl_->path);
}

Result<bool> Vault::remove(std::string_view name) {
  std::lock_guard lock(impl_->mu);
  sqlite3* db = impl_->db.get();
  auto st = Stmt::prepare(db, impl_->path, "DELETE FROM entries WHERE name = ?1");
  if (!st) return st.error();
  st->blob(1, name);
  if (auto r = st->run(fmt::format("cannot remove entry {}", shown(name))); !r) return r.error();
  return sqlite3_changes(db) > 0;
}

std::size_t Vault::size() {
  std::lock_guard lock(impl_->mu);
  auto st = Stmt::prepare(impl_->db.get(), impl_->path, "SELECT count(*) FROM entries");
  if (!st || st->step() != SQLITE_ROW) return 0;
  return static_cast<std::size_t>(st->columnInt(0));
}

#undef AG_VAULT_ENTRY_COLUMNS

}  // namespace atlasgate::vault
