// The sealed credential store (vault/vault.h), each test in a temp dir:
// round trips of every kind, replace by name, pending -> active, lookups
// (active only, kind and target matched, object prefix semantics), reopen,
// what reaches the disk (never a secret or a phantom in vault.db, -wal or
// -shm), the key file's checks, tampering with the file as an attacker with
// write access would (copied, swapped, flipped, retargeted blobs; a foreign
// key), hostile names, bounds, kill -9 mid-write, damaged and future
// databases, lock contention, and the cost of a put and a lookup.

#include <gtest/gtest.h>
#include <signal.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "vault/vault.h"

using namespace atlasgate;
using namespace atlasgate::vault;
using namespace std::string_literals;

namespace {

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/ag_vault_test_XXXXXX";
    const char* p = ::mkdtemp(tmpl);
    EXPECT_NE(p, nullptr);
    path_ = p ? p : "/tmp";
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string file(std::string_view name) const { return path_ + "/" + std::string(name); }
  std::string db() const { return file("vault.db"); }
  std::string key() const { return file("vault.key"); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void spit(const std::string& path, std::string_view bytes, mode_t mode = 0600) {
  ::unlink(path.c_str());
  {
    std::ofstream out(path, std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }
  ::chmod(path.c_str(), mode);
}

bool contains(std::string_view haystack, std::string_view needle) {
  return haystack.find(needle) != std::string_view::npos;
}

std::unique_ptr<Vault> openOk(const TempDir& dir) {
  auto v = Vault::open(dir.db(), dir.key());
  EXPECT_TRUE(v) << v.error().message;
  return v ? std::move(v).value() : nullptr;
}

std::string openError(const TempDir& dir) {
  auto v = Vault::open(dir.db(), dir.key());
  EXPECT_FALSE(v) << "opened, but should have been refused";
  return v ? "" : v.error().message;
}

Entry entry(std::string name, Kind kind = Kind::ApiKey, std::string lookup = "pubkey", std::int64_t at = 1700000000) {
  Entry e;
  e.name = std::move(name);
  e.kind = kind;
  e.target = "cloud.mongodb.com";
  e.owner = "claude";
  e.scope = "orgs/5f1a";
  e.object = "65aa01";
  e.lookup = std::move(lookup);
  e.label = "made by an agent";
  e.createdAt = at;
  return e;
}

void putOk(Vault& v, const Entry& e, std::string_view secret, std::string_view phantom) {
  auto r = v.put(e, secret, phantom);
  ASSERT_TRUE(r) << r.error().message;
}

std::vector<std::string> names(const std::vector<Entry>& es) {
  std::vector<std::string> out;
  for (const auto& e : es) out.push_back(e.name);
  return out;
}

std::vector<std::string> names(const std::vector<Unsealed>& us) {
  std::vector<std::string> out;
  for (const auto& u : us) out.push_back(u.entry.name);
  return out;
}

// A connection of the test's own: the file as an attacker (or an operator's
// sqlite3) sees it.
class Raw {
 public:
  explicit Raw(const std::string& path) {
    EXPECT_EQ(sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr), SQLITE_OK);
    sqlite3_busy_timeout(db_, 5000);
  }
  ~Raw() { sqlite3_close_v2(db_); }
  void exec(const std::string& sql) {
    char* err = nullptr;
    EXPECT_EQ(sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &err), SQLITE_OK) << sql << ": " << (err ? err : "");
    sqlite3_free(err);
  }
  std::string blob(std::string_view name, const char* column) {
    sqlite3_stmt* st = nullptr;
    std::string sql = fmt::format("SELECT {} FROM entries WHERE name = ?1", column);
    EXPECT_EQ(sqlite3_prepare_v2(db_, sql.c_str(), -1, &st, nullptr), SQLITE_OK);
    sqlite3_bind_blob(st, 1, name.data(), static_cast<int>(name.size()), SQLITE_TRANSIENT);
    std::string out;
    if (sqlite3_step(st) == SQLITE_ROW) {
      const char* p = static_cast<const char*>(sqlite3_column_blob(st, 0));
      out.assign(p ? p : "", static_cast<std::size_t>(sqlite3_column_bytes(st, 0)));
    } else {
      ADD_FAILURE() << "no row " << name;
    }
    sqlite3_finalize(st);
    return out;
  }
  void setBlob(std::string_view name, const char* column, std::string_view value) {
    sqlite3_stmt* st = nullptr;
    std::string sql = fmt::format("UPDATE entries SET {} = ?1 WHERE name = ?2", column);
    EXPECT_EQ(sqlite3_prepare_v2(db_, sql.c_str(), -1, &st, nullptr), SQLITE_OK);
    sqlite3_bind_blob(st, 1, value.data(), static_cast<int>(value.size()), SQLITE_TRANSIENT);
    sqlite3_bind_blob(st, 2, name.data(), static_cast<int>(name.size()), SQLITE_TRANSIENT);
    EXPECT_EQ(sqlite3_step(st), SQLITE_DONE);
    EXPECT_EQ(sqlite3_changes(db_), 1);
    sqlite3_finalize(st);
  }
  sqlite3* get() { return db_; }

 private:
  sqlite3* db_ = nullptr;
};

}  // namespace

TEST(VaultKind, NamesRoundTrip) {
  for (Kind k : {Kind::ApiKey, Kind::ServiceAccountSecret, Kind::DatabaseUser, Kind::X509Certificate}) {
    auto back = kindFromName(kindName(k));
    ASSERT_TRUE(back);
    EXPECT_EQ(*back, k);
  }
  EXPECT_EQ(kindName(Kind::ApiKey), "api_key");
  EXPECT_EQ(kindName(Kind::ServiceAccountSecret), "service_account");
  EXPECT_EQ(kindName(Kind::DatabaseUser), "database_user");
  EXPECT_EQ(kindName(Kind::X509Certificate), "x509");
  EXPECT_FALSE(kindFromName("API_KEY"));
  EXPECT_FALSE(kindFromName(""));
  EXPECT_FALSE(kindFromName("unknown"));
}

TEST(Vault, RoundTripOfEachKind) {
  TempDir dir;
  auto v = openOk(dir);
  ASSERT_TRUE(v);
  EXPECT_EQ(v->path(), dir.db());
  const Kind kinds[] = {Kind::ApiKey, Kind::ServiceAccountSecret, Kind::DatabaseUser, Kind::X509Certificate};
  std::vector<Entry> written;
  for (int i = 0; i < 4; ++i) {
    Entry e =
        entry(fmt::format("captured:{}:{}", kindName(kinds[i]), i), kinds[i], fmt::format("lookup{}", i), 100 - i);
    e.target = fmt::format("host{}.example", i);
    e.owner = fmt::format("agent{}", i);
    e.scope = fmt::format("groups/{}", i);
    e.object = fmt::format("db{}/user{}", i, i);
    e.label = fmt::format("label {}", i);
    e.pending = i == 2;
    putOk(*v, e, fmt::format("secret-{}", i), fmt::format("phantom-{}", i));
    written.push_back(e);
  }
  EXPECT_EQ(v->size(), 4u);
  for (int i = 0; i < 4; ++i) {
    auto got = v->get(written[i].name);
    ASSERT_TRUE(got) << got.error().message;
    ASSERT_TRUE(got->has_value());
    EXPECT_EQ((*got)->entry, written[i]);
    EXPECT_EQ((*got)->secret, fmt::format("secret-{}", i));
    EXPECT_EQ((*got)->phantom, fmt::format("phantom-{}", i));
  }
  auto none = v->get("captured:api_key:absent");
  ASSERT_TRUE(none);
  EXPECT_FALSE(none->has_value());
  // list(): metadata, by createdAt (100, 99, 98, 97: written in reverse).
  auto all = v->list();
  ASSERT_TRUE(all);
  ASSERT_EQ(all->size(), 4u);
  for (int i = 0; i < 4; ++i) EXPECT_EQ((*all)[i], written[3 - i]);
}

TEST(Vault, ListOrdersByCreatedAtThenName) {
  TempDir dir;
  auto v = openOk(dir);
  ASSERT_TRUE(v);
  putOk(*v, entry("b", Kind::ApiKey, "l", 5), "s", "p");
  putOk(*v, entry("a", Kind::ApiKey, "l", 5), "s", "p");
  putOk(*v, entry("z", Kind::ApiKey, "l", -3), "s", "p");
  putOk(*v, entry("c", Kind::ApiKey, "l", 7), "s", "p");
  auto all = v->list();
  ASSERT_TRUE(all);
  EXPECT_EQ(names(*all), (std::vector<std::string>{"z", "a", "b", "c"}));
}

TEST(Vault, PutReplacesByName) {
  TempDir dir;
  auto v = openOk(dir);
  ASSERT_TRUE(v);
  Entry first = entry("n", Kind::ApiKey, "old-lookup");
  putOk(*v, first, "old-secret", "old-phantom");
  Entry second = entry("n", Kind::DatabaseUser, "new-lookup", 42);
  second.target = "other.example";
  putOk(*v, second, "new-secret", "new-phantom");
  EXPECT_EQ(v->size(), 1u);
  auto got = v->get("n");
  ASSERT_TRUE(got && got->has_value());
  EXPECT_EQ((*got)->entry, second);
  EXPECT_EQ((*got)->secret, "new-secret");
  EXPECT_EQ((*got)->phantom, "new-phantom");
  auto old = v->findByLookup(Kind::ApiKey, "cloud.mongodb.com", "old-lookup");
  ASSERT_TRUE(old);
  EXPECT_TRUE(old->empty());
}

TEST(Vault, PendingUntilActivated) {
  TempDir dir;
  auto v = openOk(dir);
  ASSERT_TRUE(v);
  Entry e = entry("db-user", Kind::DatabaseUser, "alice");
  e.object = "admin/alice";
  e.pending = true;
  putOk(*v, e, "pw", "phantom-pw");
  auto found = v->findByLookup(Kind::DatabaseUser, e.target, "alice");
  ASSERT_TRUE(found);
  EXPECT_TRUE(found->empty());
  auto byObject = v->findByObject(Kind::DatabaseUser, e.target, "admin/alice");
  ASSERT_TRUE(byObject);
  EXPECT_TRUE(byObject->empty());
  auto got = v->get("db-user");
  ASSERT_TRUE(got && got->has_value());
  EXPECT_TRUE((*got)->entry.pending);

  ASSERT_TRUE(v->activate("db-user"));
  found = v->findByLookup(Kind::DatabaseUser, e.target, "alice");
  ASSERT_TRUE(found);
  ASSERT_EQ(found->size(), 1u);
  EXPECT_FALSE((*found)[0].entry.pending);
  EXPECT_EQ((*found)[0].secret, "pw");
  byObject = v->findByObject(Kind::DatabaseUser, e.target, "admin/alice");
  ASSERT_TRUE(byObject);
  EXPECT_EQ(byObject->size(), 1u);
  // Activating an active entry again changes nothing and is no error.
  EXPECT_TRUE(v->activate("db-user"));

  auto absent = v->activate("no-such\x1b[2J");
  ASSERT_FALSE(absent);
  EXPECT_TRUE(contains(absent.error().message, "no entry \"no-such\\x1b[2J\"")) << absent.error().message;
  EXPECT_TRUE(contains(absent.error().message, dir.db())) << absent.error().message;
}

TEST(Vault, FindByLookupOnlyActiveOfThatKindOnThatTarget) {
  TempDir dir;
  auto v = openOk(dir);
  ASSERT_TRUE(v);
  putOk(*v, entry("match-1", Kind::ApiKey, "PUB", 1), "s1", "p1");
  putOk(*v, entry("match-2", Kind::ApiKey, "PUB", 2), "s2", "p2");
  putOk(*v, entry("other-kind", Kind::ServiceAccountSecret, "PUB"), "s", "p");
  Entry otherTarget = entry("other-target", Kind::ApiKey, "PUB");
  otherTarget.target = "cloud-dev.mongodb.com";
  putOk(*v, otherTarget, "s", "p");
  Entry pending = entry("pending", Kind::ApiKey, "PUB");
  pending.pending = true;
  putOk(*v, pending, "s", "p");
  putOk(*v, entry("other-lookup", Kind::ApiKey, "PUB2"), "s", "p");
  putOk(*v, entry("case", Kind::ApiKey, "pub"), "s", "p");
  putOk(*v, entry("no-lookup", Kind::ApiKey, ""), "s", "p");

  auto found = v->findByLookup(Kind::ApiKey, "cloud.mongodb.com", "PUB");
  ASSERT_TRUE(found) << found.error().message;
  EXPECT_EQ(names(*found), (std::vector<std::string>{"match-1", "match-2"}));
  EXPECT_EQ((*found)[0].secret, "s1");
  EXPECT_EQ((*found)[1].phantom, "p2");

  auto dev = v->findByLookup(Kind::ApiKey, "cloud-dev.mongodb.com", "PUB");
  ASSERT_TRUE(dev);
  EXPECT_EQ(names(*dev), (std::vector<std::string>{"other-target"}));
  auto sa = v->findByLookup(Kind::ServiceAccountSecret, "cloud.mongodb.com", "PUB");
  ASSERT_TRUE(sa);
  EXPECT_EQ(names(*sa), (std::vector<std::string>{"other-kind"}));
  auto prefix = v->findByLookup(Kind::ApiKey, "cloud.mongodb.com", "PU");
  ASSERT_TRUE(prefix);
  EXPECT_TRUE(prefix->empty());
  // An entry without a lookup is not reachable by presenting none.
  auto empty = v->findByLookup(Kind::ApiKey, "cloud.mongodb.com", "");
  ASSERT_TRUE(empty);
  EXPECT_TRUE(empty->empty());
}

TEST(Vault, FindByObjectMatchesTheObjectAndWhatIsBelowIt) {
  TempDir dir;
  auto v = openOk(dir);
  ASSERT_TRUE(v);
  int n = 0;
  for (const char* object : {"a/b", "a/b/c", "a/bc", "a", "a/b/", "a/b0", "a/b.", "a/b/c/d", "b/a/b"}) {
    Entry e = entry(fmt::format("{}:{}", n, object), Kind::DatabaseUser, "u", n);
    e.object = object;
    putOk(*v, e, "s", "p");
    ++n;
  }
  Entry otherKind = entry("other-kind", Kind::X509Certificate, "u", 100);
  otherKind.object = "a/b";
  putOk(*v, otherKind, "s", "p");
  Entry otherTarget = entry("other-target", Kind::DatabaseUser, "u", 101);
  otherTarget.object = "a/b";
  otherTarget.target = "elsewhere";
  putOk(*v, otherTarget, "s", "p");
  Entry pending = entry("pending", Kind::DatabaseUser, "u", 102);
  pending.object = "a/b/p";
  pending.pending = true;
  putOk(*v, pending, "s", "p");

  auto found = v->findByObject(Kind::DatabaseUser, "cloud.mongodb.com", "a/b");
  ASSERT_TRUE(found) << found.error().message;
  EXPECT_EQ(names(*found), (std::vector<std::string>{"0:a/b", "1:a/b/c", "4:a/b/", "7:a/b/c/d"}));
  auto leaf = v->findByObject(Kind::DatabaseUser, "cloud.mongodb.com", "a/b/c");
  ASSERT_TRUE(leaf);
  EXPECT_EQ(names(*leaf), (std::vector<std::string>{"1:a/b/c", "7:a/b/c/d"}));
  // "a/" finds "a/" and "a//...": none here ("a/b" is below "a", not "a/").
  auto none = v->findByObject(Kind::DatabaseUser, "cloud.mongodb.com", "a/");
  ASSERT_TRUE(none);
  EXPECT_TRUE(none->empty());
  auto a = v->findByObject(Kind::DatabaseUser, "cloud.mongodb.com", "a");
  ASSERT_TRUE(a);
  EXPECT_EQ(a->size(), 8u);  // all but "b/a/b"
}

TEST(Vault, RemoveSaysWhetherThereWasOne) {
  TempDir dir;
  auto v = openOk(dir);
  ASSERT_TRUE(v);
  putOk(*v, entry("gone"), "s", "p");
  putOk(*v, entry("stays"), "s", "p");
  auto r = v->remove("gone");
  ASSERT_TRUE(r);
  EXPECT_TRUE(*r);
  r = v->remove("gone");
  ASSERT_TRUE(r);
  EXPECT_FALSE(*r);
  auto got = v->get("gone");
  ASSERT_TRUE(got);
  EXPECT_FALSE(got->has_value());
  EXPECT_EQ(v->size(), 1u);
}

TEST(Vault, ReopenKeepsEverything) {
  TempDir dir;
  std::vector<Entry> written;
  {
    auto v = openOk(dir);
    ASSERT_TRUE(v);
    for (int i = 0; i < 30; ++i) {
      Entry e = entry(fmt::format("e{:02}", i), i % 2 ? Kind::ApiKey : Kind::DatabaseUser, fmt::format("l{}", i), i);
      e.pending = i % 5 == 0;
      putOk(*v, e, fmt::format("secret {}", i), fmt::format("phantom {}", i));
      written.push_back(e);
    }
    ASSERT_TRUE(v->remove("e03"));
    written.erase(written.begin() + 3);
  }
  auto v = openOk(dir);
  ASSERT_TRUE(v);
  auto all = v->list();
  ASSERT_TRUE(all);
  EXPECT_EQ(*all, written);
  for (const Entry& e : written) {
    auto got = v->get(e.name);
    ASSERT_TRUE(got && got->has_value()) << e.name;
    int i = std::stoi(e.name.substr(1));
    EXPECT_EQ((*got)->secret, fmt::format("secret {}", i));
    EXPECT_EQ((*got)->phantom, fmt::format("phantom {}", i));
  }
}

TEST(Vault, TwoHandlesOnOneVaultSeeEachOthersWrites) {
  TempDir dir;
  auto a = openOk(dir);
  auto b = openOk(dir);
  ASSERT_TRUE(a && b);
  putOk(*a, entry("from-a"), "sa", "pa");
  auto got = b->get("from-a");
  ASSERT_TRUE(got && got->has_value());
  EXPECT_EQ((*got)->secret, "sa");
}

TEST(Vault, NoSecretOrPhantomEverReachesTheDisk) {
  TempDir dir;
  auto v = openOk(dir);
  ASSERT_TRUE(v);
  std::vector<std::string> secrets, phantoms;
  for (int i = 0; i < 40; ++i) {
    secrets.push_back(fmt::format("PLAINTEXT-SECRET-{:04}-7f3a9c2e", i));
    phantoms.push_back(fmt::format("PLAINTEXT-PHANTOM-{:04}-c0ffee", i));
    putOk(*v, entry(fmt::format("visible-name-{:04}", i), Kind::ApiKey, fmt::format("l{}", i)), secrets.back(),
          phantoms.back());
  }
  // Replaced and removed entries leave nothing either (secure_delete).
  putOk(*v, entry("visible-name-0000"), "PLAINTEXT-SECRET-REPLACEMENT", "PLAINTEXT-PHANTOM-REPLACEMENT");
  ASSERT_TRUE(v->remove("visible-name-0001"));
  auto check = [&](const char* when) {
    std::string all;
    for (const char* suffix : {"", "-wal", "-shm"}) all += slurp(dir.db() + suffix);
    // The metadata is in clear, so a plaintext would be seen if it were there.
    EXPECT_TRUE(contains(all, "visible-name-0039")) << when;
    EXPECT_FALSE(contains(all, "PLAINTEXT")) << when;
    for (std::size_t i = 0; i < secrets.size(); ++i) {
      EXPECT_FALSE(contains(all, secrets[i])) << when << " " << i;
      EXPECT_FALSE(contains(all, phantoms[i])) << when << " " << i;
    }
  };
  // While open: the entries sit in the WAL.
  struct stat st {};
  ASSERT_EQ(::stat((dir.db() + "-wal").c_str(), &st), 0);
  EXPECT_GT(st.st_size, 0);
  check("while open");
  v.reset();
  check("after close");
}

TEST(Vault, FilesAreCreated0600WhateverTheUmask) {
  // 0: SQLite alone would make 0644; 0277: open(0600) alone would make 0400.
  for (mode_t mask : {0, 022, 0277}) {
    TempDir dir;
    mode_t old = ::umask(mask);
    auto v = Vault::open(dir.db(), dir.key());
    if (v) putOk(**v, entry("x"), "s", "p");
    ::umask(old);
    ASSERT_TRUE(v) << v.error().message;
    for (const std::string& f : {dir.db(), dir.db() + "-wal", dir.db() + "-shm", dir.key()}) {
      struct stat st {};
      ASSERT_EQ(::lstat(f.c_str(), &st), 0) << f;
      EXPECT_TRUE(S_ISREG(st.st_mode)) << f;
      EXPECT_EQ(st.st_mode & 07777, 0600u) << f << " umask " << mask;
      EXPECT_EQ(st.st_uid, ::geteuid()) << f;
    }
    EXPECT_EQ(slurp(dir.key()).size(), 32u);
  }
}

TEST(Vault, KeyFileIsRandomAndKeptAcrossOpens) {
  TempDir a, b;
  { ASSERT_TRUE(openOk(a)); }
  { ASSERT_TRUE(openOk(b)); }
  std::string ka = slurp(a.key());
  EXPECT_EQ(ka.size(), 32u);
  EXPECT_NE(ka, slurp(b.key()));
  EXPECT_NE(ka, std::string(32, '\0'));
  { ASSERT_TRUE(openOk(a)); }
  EXPECT_EQ(slurp(a.key()), ka);
  // Only the four files: no temporary key file left behind.
  std::set<std::string> files;
  for (const auto& f : std::filesystem::directory_iterator(a.path())) files.insert(f.path().filename());
  EXPECT_TRUE(files == (std::set<std::string>{"vault.db", "vault.key"}) ||
              files == (std::set<std::string>{"vault.db", "vault.key", "vault.db-wal", "vault.db-shm"}))
      << files.size();
}

TEST(VaultKeyFile, GroupOrOtherAccessIsRefused) {
  for (mode_t mode : {0644, 0640, 0604, 0602, 0620, 0610}) {
    TempDir dir;
    spit(dir.key(), std::string(32, 'k'), mode);
    std::string err = openError(dir);
    EXPECT_TRUE(contains(err, dir.key())) << err;
    EXPECT_TRUE(contains(err, fmt::format("mode {:04o}", mode))) << err;
  }
  TempDir ok;
  spit(ok.key(), std::string(32, 'k'), 0400);
  EXPECT_TRUE(openOk(ok));
}

TEST(VaultKeyFile, WrongSizeIsRefused) {
  for (std::size_t n : {0, 16, 31, 33, 64}) {
    TempDir dir;
    spit(dir.key(), std::string(n, 'k'));
    std::string err = openError(dir);
    EXPECT_TRUE(contains(err, dir.key())) << err;
    EXPECT_TRUE(contains(err, fmt::format("is {} bytes", n))) << err;
  }
}

TEST(VaultKeyFile, SymlinkIsRefused) {
  TempDir dir;
  std::string real = dir.file("real.key");
  spit(real, std::string(32, 'k'));
  ASSERT_EQ(::symlink(real.c_str(), dir.key().c_str()), 0);
  std::string err = openError(dir);
  EXPECT_TRUE(contains(err, dir.key())) << err;
  EXPECT_TRUE(contains(err, "symbolic link")) << err;
  // A dangling one is not replaced by a fresh key either.
  TempDir dangling;
  ASSERT_EQ(::symlink(dangling.file("nowhere").c_str(), dangling.key().c_str()), 0);
  err = openError(dangling);
  EXPECT_TRUE(contains(err, "symbolic link")) << err;
  EXPECT_FALSE(std::filesystem::exists(dangling.file("nowhere")));
}

TEST(VaultKeyFile, NotARegularFileIsRefused) {
  TempDir dir;
  ASSERT_EQ(::mkdir(dir.key().c_str(), 0700), 0);
  std::string err = openError(dir);
  EXPECT_TRUE(contains(err, dir.key())) << err;
  EXPECT_TRUE(contains(err, "not a regular file")) << err;
  TempDir fifo;
  ASSERT_EQ(::mkfifo(fifo.key().c_str(), 0600), 0);
  err = openError(fifo);  // refused, does not block
  EXPECT_TRUE(contains(err, "not a regular file")) << err;
}

TEST(VaultKeyFile, AnotherOwnerIsRefused) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to give the key file away";
  TempDir dir;
  spit(dir.key(), std::string(32, 'k'));
  ASSERT_EQ(::chown(dir.key().c_str(), 65534, 65534), 0);
  std::string err = openError(dir);
  EXPECT_TRUE(contains(err, dir.key())) << err;
  EXPECT_TRUE(contains(err, "owned by uid 65534")) << err;
}

TEST(VaultKeyFile, MissingKeyOfASealedVaultIsNotRecreated) {
  TempDir dir;
  { ASSERT_TRUE(openOk(dir)); }
  ASSERT_EQ(::unlink(dir.key().c_str()), 0);
  std::string err = openError(dir);
  EXPECT_TRUE(contains(err, dir.key())) << err;
  EXPECT_TRUE(contains(err, "missing")) << err;
  EXPECT_FALSE(std::filesystem::exists(dir.key()));
}

TEST(VaultKeyFile, AnotherKeyIsRefusedAndNothingOpens) {
  TempDir dir;
  {
    auto v = openOk(dir);
    ASSERT_TRUE(v);
    putOk(*v, entry("x"), "the-secret", "the-phantom");
  }
  std::string original = slurp(dir.key());
  std::string other = original;
  other[0] = static_cast<char>(other[0] ^ 1);
  spit(dir.key(), other);
  std::string err = openError(dir);
  EXPECT_TRUE(contains(err, dir.key())) << err;
  EXPECT_TRUE(contains(err, "does not match")) << err;
  // The key is not replaced and the vault still opens with its own key.
  EXPECT_EQ(slurp(dir.key()), other);
  spit(dir.key(), original);
  auto v = openOk(dir);
  ASSERT_TRUE(v);
  auto got = v->get("x");
  ASSERT_TRUE(got && got->has_value());
  EXPECT_EQ((*got)->secret, "the-secret");
}

TEST(VaultKeyFile, DeletedKeyCheckIsRefused) {
  TempDir dir;
  { ASSERT_TRUE(openOk(dir)); }
  { Raw(dir.db()).exec("DELETE FROM key_check"); }
  std::string err = openError(dir);
  EXPECT_TRUE(contains(err, dir.db())) << err;
  EXPECT_TRUE(contains(err, "no key check")) << err;
}

namespace {

// A vault with rows "a" and "b" for the tampering tests.
void twoRows(const TempDir& dir) {
  auto v = openOk(dir);
  ASSERT_TRUE(v);
  putOk(*v, entry("a", Kind::ApiKey, "la"), "SECRET-OF-A", "PHANTOM-OF-A");
  putOk(*v, entry("b", Kind::ApiKey, "lb"), "SECRET-OF-B", "PHANTOM-OF-B");
}

void expectRefused(Vault& v, std::string_view name, std::string_view lookup, const char* role) {
  auto got = v.get(name);
  ASSERT_FALSE(got) << "opened a tampered entry";
  const std::string& m = got.error().message;
  EXPECT_TRUE(contains(m, fmt::format("the {} of entry \"{}\" does not open", role, name))) << m;
  EXPECT_FALSE(contains(m, "SECRET-OF") || contains(m, "PHANTOM-OF")) << m;
  auto found = v.findByLookup(Kind::ApiKey, "cloud.mongodb.com", lookup);
  EXPECT_FALSE(found) << "found a tampered entry";
}

}  // namespace

TEST(VaultTamper, BlobCopiedFromAnotherRowIsRefused) {
  TempDir dir;
  twoRows(dir);
  {
    Raw raw(dir.db());
    raw.setBlob("b", "secret", raw.blob("a", "secret"));
  }
  auto v = openOk(dir);
  ASSERT_TRUE(v);
  expectRefused(*v, "b", "lb", "secret");
  auto a = v->get("a");
  ASSERT_TRUE(a && a->has_value());
  EXPECT_EQ((*a)->secret, "SECRET-OF-A");
}

TEST(VaultTamper, SwappedSecretAndPhantomAreRefused) {
  TempDir dir;
  twoRows(dir);
  { Raw(dir.db()).exec("UPDATE entries SET secret = phantom, phantom = secret WHERE name = x'61'"); }
  auto v = openOk(dir);
  ASSERT_TRUE(v);
  expectRefused(*v, "a", "la", "secret");
}

TEST(VaultTamper, PhantomCopiedFromAnotherRowIsRefused) {
  TempDir dir;
  twoRows(dir);
  {
    Raw raw(dir.db());
    raw.setBlob("b", "phantom", raw.blob("a", "phantom"));
  }
  auto v = openOk(dir);
  ASSERT_TRUE(v);
  expectRefused(*v, "b", "lb", "phantom");
}

TEST(VaultTamper, EditedMetadataIsRefused) {
  // The blobs are bound to where the secret goes: a row edited to send it
  // to another host, or to answer another lookup, does not open.
  for (const char* column : {"target", "lookup", "owner", "scope", "object", "name"}) {
    TempDir dir;
    twoRows(dir);
    std::string name = "a";
    {
      Raw raw(dir.db());
      raw.setBlob("a", column, std::string_view(column) == "name" ? "b2" : "attacker.example");
      if (std::string_view(column) == "name") name = "b2";
    }
    auto v = openOk(dir);
    ASSERT_TRUE(v);
    auto got = v->get(name);
    EXPECT_FALSE(got) << column;
  }
}

TEST(VaultTamper, EditedLabelOrTimeStillOpens) {
  // Not bound: they decide nothing (and pending changes on activate).
  TempDir dir;
  twoRows(dir);
  { Raw(dir.db()).exec("UPDATE entries SET label = x'6c', created_at = 5, pending = 1"); }
  auto v = openOk(dir);
  ASSERT_TRUE(v);
  auto got = v->get("a");
  ASSERT_TRUE(got && got->has_value());
  EXPECT_EQ((*got)->secret, "SECRET-OF-A");
}

TEST(VaultTamper, FlippedByteIsRefused) {
  TempDir dir;
  twoRows(dir);
  std::string original;
  { original = Raw(dir.db()).blob("a", "secret"); }
  ASSERT_EQ(original.size(), 1 + 12 + std::string("SECRET-OF-A").size() + 16);
  // The version byte, the nonce, the ciphertext, the tag.
  for (std::size_t at : {std::size_t{0}, std::size_t{1}, std::size_t{12}, std::size_t{13}, std::size_t{20},
                         original.size() - 16, original.size() - 1}) {
    std::string bad = original;
    bad[at] = static_cast<char>(bad[at] ^ 0x01);
    { Raw(dir.db()).setBlob("a", "secret", bad); }
    auto v = openOk(dir);
    ASSERT_TRUE(v);
    auto got = v->get("a");
    ASSERT_FALSE(got) << "byte " << at;
    EXPECT_FALSE(contains(got.error().message, "SECRET-OF")) << got.error().message;
  }
  { Raw(dir.db()).setBlob("a", "secret", original.substr(0, 20)); }
  auto v = openOk(dir);
  ASSERT_TRUE(v);
  EXPECT_FALSE(v->get("a"));
  { Raw(dir.db()).setBlob("a", "secret", original); }
  auto back = v->get("a");
  ASSERT_TRUE(back && back->has_value());
  EXPECT_EQ((*back)->secret, "SECRET-OF-A");
}

TEST(Vault, HostileNamesAndLookupsAreStoredAndFoundVerbatim) {
  TempDir dir;
  auto v = openOk(dir);
  ASSERT_TRUE(v);
  const std::vector<std::string> hostile = {
      "'; DROP TABLE entries; --",
      "\"); DELETE FROM entries; --",
      "a\0b"s,
      "a",
      "\0"s,
      "%",
      "_",
      "*?[",
      "\xff\xfe\x80 not utf-8",
      "line\nbreak\r\x1b[31mred",
      std::string(1024, '\''),
  };
  for (std::size_t i = 0; i < hostile.size(); ++i) {
    Entry e = entry(hostile[i], Kind::ApiKey, hostile[i], static_cast<std::int64_t>(i));
    e.object = hostile[i];
    e.label = hostile[i];
    putOk(*v, e, "secret:" + hostile[i], "phantom:" + hostile[i]);
  }
  EXPECT_EQ(v->size(), hostile.size());
  for (std::size_t i = 0; i < hostile.size(); ++i) {
    auto got = v->get(hostile[i]);
    ASSERT_TRUE(got && got->has_value()) << i;
    EXPECT_EQ((*got)->entry.name, hostile[i]);
    EXPECT_EQ((*got)->entry.lookup, hostile[i]);
    EXPECT_EQ((*got)->secret, "secret:" + hostile[i]);
    auto found = v->findByLookup(Kind::ApiKey, "cloud.mongodb.com", hostile[i]);
    ASSERT_TRUE(found) << i;
    ASSERT_EQ(found->size(), 1u) << i;  // "a" does not find "a\0b", "%" finds only "%"
    EXPECT_EQ((*found)[0].entry.name, hostile[i]);
    auto byObject = v->findByObject(Kind::ApiKey, "cloud.mongodb.com", hostile[i]);
    ASSERT_TRUE(byObject) << i;
    EXPECT_EQ(byObject->size(), 1u) << i;
  }
  auto all = v->list();
  ASSERT_TRUE(all);
  EXPECT_EQ(all->size(), hostile.size());
  auto removed = v->remove("a");
  ASSERT_TRUE(removed && *removed);
  auto other = v->get("a\0b"s);
  EXPECT_TRUE(other && other->has_value());
}

TEST(Vault, OverLongAndEmptyFieldsAreRefused) {
  TempDir dir;
  auto v = openOk(dir);
  ASSERT_TRUE(v);
  std::string atLimit(kMaxFieldBytes, 'x');
  std::string over(kMaxFieldBytes + 1, 'x');
  using Field = std::string Entry::*;
  const std::pair<const char*, Field> fields[] = {
      {"name", &Entry::name},     {"target", &Entry::target}, {"owner", &Entry::owner}, {"scope", &Entry::scope},
      {"object", &Entry::object}, {"lookup", &Entry::lookup}, {"label", &Entry::label}};
  for (const auto& [field, member] : fields) {
    Entry e = entry(fmt::format("limit-{}", field));
    e.*member = atLimit;
    EXPECT_TRUE(v->put(e, "s", "p")) << field;
    e.*member = over;
    auto r = v->put(e, "s", "p");
    ASSERT_FALSE(r) << field;
    EXPECT_TRUE(contains(r.error().message, fmt::format("{} is 1025 bytes", field))) << r.error().message;
  }
  std::string secret(kMaxSecretBytes, 'S');
  EXPECT_TRUE(v->put(entry("big"), secret, secret));
  auto r = v->put(entry("too-big"), secret + "S", "p");
  ASSERT_FALSE(r);
  EXPECT_TRUE(contains(r.error().message, "the secret is 65537 bytes")) << r.error().message;
  EXPECT_FALSE(contains(r.error().message, "SSSS"));
  r = v->put(entry("too-big"), "s", secret + "P");
  ASSERT_FALSE(r);
  EXPECT_TRUE(contains(r.error().message, "the phantom is 65537 bytes")) << r.error().message;
  r = v->put(entry(""), "s", "p");
  ASSERT_FALSE(r);
  EXPECT_TRUE(contains(r.error().message, "name is empty")) << r.error().message;
  r = v->put(entry("no-secret"), "", "p");
  ASSERT_FALSE(r);
  EXPECT_TRUE(contains(r.error().message, "secret is empty")) << r.error().message;
  Entry badKind = entry("bad-kind");
  badKind.kind = static_cast<Kind>(17);
  EXPECT_FALSE(v->put(badKind, "s", "p"));
  auto got = v->get("too-big");
  ASSERT_TRUE(got);
  EXPECT_FALSE(got->has_value());
  auto big = v->get("big");
  ASSERT_TRUE(big && big->has_value());
  EXPECT_EQ((*big)->secret, secret);
}

namespace {

std::string crashName(int round, int i) { return fmt::format("r{:02}-{:06}", round, i); }
std::string crashSecret(int round, int i) { return fmt::format("secret {} {} {}", round, i, std::string(200, 's')); }

// The child of the kill -9 test: puts entries until it is killed, writing
// the index of each one acknowledged (put returned) to fd.
[[noreturn]] void putForever(const TempDir& dir, int round, int fd) {
  auto v = Vault::open(dir.db(), dir.key());
  if (!v) ::_exit(2);
  for (int i = 0;; ++i) {
    Entry e = entry(crashName(round, i), Kind::ApiKey, fmt::format("lookup {}", i), round);
    if (!(*v)->put(e, crashSecret(round, i), "phantom")) ::_exit(3);
    if (::write(fd, &i, sizeof i) != sizeof i) ::_exit(4);
  }
}

// The last index the child acknowledged, -1 for none.
int lastAcknowledged(int fd) {
  int last = -1, i = 0;
  while (::read(fd, &i, sizeof i) == sizeof i) last = i;
  return last;
}

}  // namespace

TEST(VaultCrash, KillDashNineMidWriteLosesNothingAcknowledged) {
  TempDir dir;
  std::size_t before = 0;
  for (int round = 0; round < 20; ++round) {
    int fds[2];
    ASSERT_EQ(::pipe(fds), 0);
    pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      ::close(fds[0]);
      putForever(dir, round, fds[1]);
    }
    ::close(fds[1]);
    // Round 0 kills it while it may still be creating the key and schema.
    std::this_thread::sleep_for(std::chrono::milliseconds(round == 0 ? 5 : 50));
    ASSERT_EQ(::kill(pid, SIGKILL), 0);
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "the child ended by itself: " << status;
    int acked = lastAcknowledged(fds[0]);
    ::close(fds[0]);

    auto v = openOk(dir);
    ASSERT_TRUE(v) << "round " << round;
    auto all = v->list();
    ASSERT_TRUE(all) << all.error().message;
    ASSERT_EQ(v->size(), all->size());
    // Every put that returned is there; at most the one in flight besides.
    std::size_t thisRound = all->size() - before;
    EXPECT_GE(static_cast<int>(thisRound), acked + 1) << "round " << round;
    EXPECT_LE(static_cast<int>(thisRound), acked + 2) << "round " << round;
    for (int i = 0; i < static_cast<int>(thisRound); ++i) {
      auto got = v->get(crashName(round, i));
      ASSERT_TRUE(got) << got.error().message;
      ASSERT_TRUE(got->has_value()) << crashName(round, i) << " missing: not a prefix";
      EXPECT_EQ((*got)->secret, crashSecret(round, i));
    }
    before = all->size();
    for (const auto& f : std::filesystem::directory_iterator(dir.path())) {
      std::string n = f.path().filename();
      EXPECT_TRUE(n == "vault.db" || n == "vault.key" || n == "vault.db-wal" || n == "vault.db-shm") << n;
    }
  }
  EXPECT_GT(before, 20u) << "the children hardly wrote: the test did not test much";
}

TEST(VaultFile, FutureSchemaIsRefused) {
  TempDir dir;
  { ASSERT_TRUE(openOk(dir)); }
  { Raw(dir.db()).exec("UPDATE schema_version SET version = 2"); }
  std::string err = openError(dir);
  EXPECT_TRUE(contains(err, dir.db())) << err;
  EXPECT_TRUE(contains(err, "schema version 2, written by a newer atlasgate")) << err;
}

TEST(VaultFile, NotADatabaseIsRefused) {
  TempDir dir;
  spit(dir.db(), std::string(8192, 'G'));
  std::string err = openError(dir);
  EXPECT_TRUE(contains(err, dir.db())) << err;
  EXPECT_TRUE(contains(err, "not an SQLite database")) << err;
}

TEST(VaultFile, AnotherApplicationsDatabaseIsRefused) {
  TempDir dir;
  { Raw(dir.db()).exec("CREATE TABLE t (x)"); }
  std::string err = openError(dir);
  EXPECT_TRUE(contains(err, dir.db())) << err;
  EXPECT_TRUE(contains(err, "not an atlasgate vault")) << err;
}

TEST(VaultFile, DamagedDatabaseIsRefused) {
  TempDir dir;
  {
    auto v = openOk(dir);
    ASSERT_TRUE(v);
    for (int i = 0; i < 200; ++i) putOk(*v, entry(fmt::format("e{:04}", i)), std::string(300, 's'), "p");
  }
  std::string bytes = slurp(dir.db());
  ASSERT_GT(bytes.size(), 4096u * 8);
  // Scribble over the middle of a few pages (headers left intact).
  for (std::size_t page = 3; page < 8; ++page) {
    for (std::size_t i = 100; i < 1000; ++i) bytes[page * 4096 + i] = static_cast<char>(0xa5);
  }
  spit(dir.db(), bytes);
  std::string err = openError(dir);
  EXPECT_TRUE(contains(err, dir.db())) << err;
}

TEST(VaultFile, SymlinkedDatabaseIsRefused) {
  TempDir dir;
  std::string real = dir.file("real.db");
  ASSERT_EQ(::symlink(real.c_str(), dir.db().c_str()), 0);
  std::string err = openError(dir);
  EXPECT_TRUE(contains(err, dir.db())) << err;
  EXPECT_TRUE(contains(err, "symbolic link")) << err;
}

TEST(VaultConcurrency, AnotherWritersLockIsWaitedFor) {
  TempDir dir;
  auto v = openOk(dir);
  ASSERT_TRUE(v);
  putOk(*v, entry("first"), "s", "p");
  Raw reader(dir.db());
  // A reader in a transaction does not block a write (WAL).
  reader.exec("BEGIN; SELECT count(*) FROM entries;");
  putOk(*v, entry("while-read"), "s", "p");
  reader.exec("COMMIT");
  // A writer holding the lock for a while: the put waits for it.
  Raw writer(dir.db());
  writer.exec("BEGIN IMMEDIATE");
  std::thread release([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    writer.exec("COMMIT");
  });
  auto start = std::chrono::steady_clock::now();
  auto r = v->put(entry("after-lock"), "s", "p");
  auto waited = std::chrono::steady_clock::now() - start;
  release.join();
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_GE(waited, std::chrono::milliseconds(250));
  EXPECT_EQ(v->size(), 3u);
}

TEST(VaultConcurrency, ThreadsShareOneVault) {
  TempDir dir;
  auto v = openOk(dir);
  ASSERT_TRUE(v);
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 25; ++i) {
        std::string name = fmt::format("t{}-{}", t, i);
        if (!v->put(entry(name, Kind::ApiKey, name), "secret " + name, "p")) ++failures;
        auto found = v->findByLookup(Kind::ApiKey, "cloud.mongodb.com", name);
        if (!found || found->size() != 1 || (*found)[0].secret != "secret " + name) ++failures;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(v->size(), 100u);
}

TEST(VaultUnsealed, MovingLeavesNoSecretBehind) {
  TempDir dir;
  auto v = openOk(dir);
  ASSERT_TRUE(v);
  putOk(*v, entry("x"), "short", "tiny");
  auto got = v->get("x");
  ASSERT_TRUE(got && got->has_value());
  Unsealed& source = **got;
  const char* p = source.secret.data();  // a short string: in the object itself
  Unsealed moved = std::move(source);
  EXPECT_EQ(moved.secret, "short");
  EXPECT_EQ(moved.phantom, "tiny");
  EXPECT_TRUE(source.secret.empty());  // NOLINT(bugprone-use-after-move)
  EXPECT_TRUE(source.phantom.empty());
  for (int i = 0; i < 5; ++i) EXPECT_EQ(p[i], '\0') << i;
  Unsealed assigned;
  assigned = std::move(moved);
  EXPECT_EQ(assigned.secret, "short");
  EXPECT_TRUE(moved.secret.empty());  // NOLINT(bugprone-use-after-move)
}

// Not an assertion: what a durable put and an indexed lookup cost here.
TEST(VaultCost, PutAndFindByLookup) {
  TempDir dir;
  auto v = openOk(dir);
  ASSERT_TRUE(v);
  using Clock = std::chrono::steady_clock;
  constexpr int kPuts = 200;
  auto t0 = Clock::now();
  for (int i = 0; i < kPuts; ++i) {
    putOk(*v, entry(fmt::format("e{:05}", i), Kind::ApiKey, fmt::format("PUBKEY{:05}", i), i),
          "a private key of some length 0123456789abcdef", "phantom 0123456789");
  }
  auto t1 = Clock::now();
  constexpr int kFinds = 5000;
  std::size_t hits = 0;
  for (int i = 0; i < kFinds; ++i) {
    auto found = v->findByLookup(Kind::ApiKey, "cloud.mongodb.com", fmt::format("PUBKEY{:05}", i % kPuts));
    ASSERT_TRUE(found);
    hits += found->size();
  }
  auto t2 = Clock::now();
  EXPECT_EQ(hits, static_cast<std::size_t>(kFinds));
  auto us = [](Clock::duration d, int n) { return std::chrono::duration<double, std::micro>(d).count() / n; };
  std::printf("vault cost: put (durable) %.1f us, findByLookup (1 of %d, unsealed) %.1f us\n", us(t1 - t0, kPuts),
              kPuts, us(t2 - t1, kFinds));
}
