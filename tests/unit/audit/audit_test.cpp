// The audit trail (audit/audit.h): the exact JSON line of a record (field
// order, timestamp, two-decimal durations, the optional error), hostile
// agent-controlled fields (quotes, controls, NUL, bytes that are no UTF-8),
// and the log file (append, one line per record, rotation, lost records on
// a full disk).

#include <gtest/gtest.h>
#include <unistd.h>

#include <boost/json/parse.hpp>
#include <boost/json/value.hpp>
#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <utility>

#include "audit/audit.h"
#include "common/text.h"

namespace json = boost::json;
using namespace atlasgate;
using namespace std::string_literals;

namespace {

std::chrono::system_clock::time_point at(std::int64_t unixMs) {
  return std::chrono::system_clock::time_point(std::chrono::milliseconds(unixMs));
}

audit::Record sample() {
  audit::Record r;
  r.ts = at(1700000000123);  // 2023-11-14T22:13:20.123Z
  r.agent = "claude";
  r.pid = 4242;
  r.comm = "node";
  r.cgroup = "/agents/claude";
  r.method = "GET";
  r.host = "cloud.mongodb.com";
  r.path = "/api/atlas/v2/groups";
  r.rule = "read-only";
  r.decision = "allow";
  r.status = 200;
  r.upstreamMs = 12.5;
  r.totalMs = 13.25;
  r.bytesIn = 0;
  r.bytesOut = 1234;
  r.credential = "service_account:mdb_sa_id_abc";
  r.dst = "10.0.0.1:443";
  return r;
}

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/ag_audit_test_XXXXXX";
    const char* p = ::mkdtemp(tmpl);
    EXPECT_NE(p, nullptr);
    path_ = p ? p : "/tmp";
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string file(std::string_view name) const { return path_ + "/" + std::string(name); }

 private:
  std::string path_;
};

}  // namespace

TEST(AuditJson, ExactLine) {
  EXPECT_EQ(audit::toJson(sample()),
            R"({"ts":"2023-11-14T22:13:20.123Z","agent":"claude","pid":4242,"comm":"node","cgroup":"/agents/claude",)"
            R"("method":"GET","host":"cloud.mongodb.com","path":"/api/atlas/v2/groups","rule":"read-only",)"
            R"("decision":"allow","status":200,"upstream_ms":12.50,"total_ms":13.25,"bytes_in":0,"bytes_out":1234,)"
            R"("credential":"service_account:mdb_sa_id_abc","dst":"10.0.0.1:443"})");
}

TEST(AuditJson, ErrorOnlyWhenSet) {
  audit::Record r = sample();
  EXPECT_EQ(audit::toJson(r).find("\"error\""), std::string::npos);
  r.error = "credential_unavailable";
  std::string line = audit::toJson(r);
  const std::string tail = R"(,"dst":"10.0.0.1:443","error":"credential_unavailable"})";
  ASSERT_GE(line.size(), tail.size());
  EXPECT_EQ(line.substr(line.size() - tail.size()), tail);
}

TEST(AuditJson, EmptyRecordIsStillComplete) {
  audit::Record r;  // epoch, all empty
  EXPECT_EQ(audit::toJson(r),
            R"({"ts":"1970-01-01T00:00:00.000Z","agent":"","pid":0,"comm":"","cgroup":"","method":"","host":"",)"
            R"("path":"","rule":"","decision":"","status":0,"upstream_ms":0.00,"total_ms":0.00,"bytes_in":0,)"
            R"("bytes_out":0,"credential":"","dst":""})");
}

TEST(AuditJson, TimestampMilliseconds) {
  audit::Record r = sample();
  r.ts = at(1700000000000);
  EXPECT_EQ(audit::toJson(r).substr(0, 33), R"({"ts":"2023-11-14T22:13:20.000Z",)");
  r.ts = at(1700000000999);
  EXPECT_EQ(audit::toJson(r).substr(0, 33), R"({"ts":"2023-11-14T22:13:20.999Z",)");
  r.ts = at(1700000000999) + std::chrono::microseconds(999);  // sub-millisecond: truncated
  EXPECT_EQ(audit::toJson(r).substr(0, 33), R"({"ts":"2023-11-14T22:13:20.999Z",)");
  r.ts = at(951782400007);  // 2000-02-29 (leap day)
  EXPECT_EQ(audit::toJson(r).substr(0, 33), R"({"ts":"2000-02-29T00:00:00.007Z",)");
}

TEST(AuditJson, TimestampBeforeTheEpoch) {
  // Expected: a valid ISO-8601 time ("1969-12-31T23:59:59.999Z") or at
  // least a well-formed one. Fixed bug (userspace/audit/audit.cpp, toJson):
  // the milliseconds were `count() % 1000`, negative before 1970, and the
  // seconds came from to_time_t, which truncates toward zero: ts = -1 ms
  // gave "1970-01-01T00:00:00.-01Z". Only reachable with a system clock
  // set before 1970.
  audit::Record r = sample();
  r.ts = at(-1);
  EXPECT_EQ(audit::toJson(r).substr(0, 33), R"({"ts":"1969-12-31T23:59:59.999Z",)");
}

TEST(AuditJson, DurationsHaveTwoDecimals) {
  audit::Record r = sample();
  r.upstreamMs = 0.004;
  r.totalMs = 123456.789;
  std::string line = audit::toJson(r);
  EXPECT_NE(line.find(R"("upstream_ms":0.00,"total_ms":123456.79,)"), std::string::npos) << line;
  r.upstreamMs = 1e9;  // never exponent form
  r.totalMs = 0.5;
  line = audit::toJson(r);
  EXPECT_NE(line.find(R"("upstream_ms":1000000000.00,"total_ms":0.50,)"), std::string::npos) << line;
}

TEST(AuditJson, LargeCounters) {
  audit::Record r = sample();
  r.pid = 0xFFFFFFFFu;
  r.status = 999;
  r.bytesIn = 0xFFFFFFFFFFFFFFFFull;
  r.bytesOut = 1ull << 40;
  std::string line = audit::toJson(r);
  EXPECT_NE(line.find(R"("pid":4294967295,)"), std::string::npos);
  EXPECT_NE(line.find(R"("status":999,)"), std::string::npos);
  EXPECT_NE(line.find(R"("bytes_in":18446744073709551615,"bytes_out":1099511627776,)"), std::string::npos);
  json::value v = json::parse(line);
  EXPECT_EQ(v.at("bytes_in").as_uint64(), 0xFFFFFFFFFFFFFFFFull);
}

TEST(AuditJson, HostileFieldsStayOneValidLine) {
  audit::Record r = sample();
  r.path = "/a\"b\\c\r\n{\"decision\":\"allow\"}\x1b[2J\0end"s;
  r.comm =
      "\xFF\xFE"
      "evil\xC3";
  r.agent =
      "\xE2\x80\xAE"
      "gnp";  // valid UTF-8 (RLO): kept, JSON-escaping is for the terminal
  r.cgroup = std::string(100000, 'c');
  r.error = "\x7f";
  std::string line = audit::toJson(r);
  EXPECT_EQ(line.find('\n'), std::string::npos);
  EXPECT_EQ(line.find('\r'), std::string::npos);
  EXPECT_EQ(line.find('\0'), std::string::npos);
  EXPECT_EQ(line.find('\x1b'), std::string::npos);
  EXPECT_TRUE(text::isUtf8(line));
  EXPECT_NE(line.find(R"("path":"/a\"b\\c\r\n{\"decision\":\"allow\"}\u001b[2J\u0000end")"), std::string::npos) << line;
  json::value v = json::parse(line);  // throws when not JSON
  const json::object& o = v.as_object();
  EXPECT_EQ(o.size(), 18u);
  EXPECT_EQ(o.at("path").as_string(), json::string_view(r.path));
  EXPECT_EQ(o.at("comm").as_string(),
            "\xEF\xBF\xBD\xEF\xBF\xBD"
            "evil\xEF\xBF\xBD");
  EXPECT_EQ(o.at("agent").as_string(),
            "\xE2\x80\xAE"
            "gnp");
  EXPECT_EQ(o.at("cgroup").as_string().size(), 100000u);
  EXPECT_EQ(o.at("decision").as_string(), "allow");  // the real one, not the injected one
  EXPECT_EQ(o.at("error").as_string(), "\x7f");
}

TEST(AuditLogFile, AppendsOneLinePerRecord) {
  TempDir dir;
  std::string path = dir.file("sub/dir/audit.log");  // parents are created
  auto log = audit::AuditLog::open(path);
  ASSERT_TRUE(log) << log.error().message;
  EXPECT_EQ((*log)->path(), path);
  audit::Record a = sample();
  audit::Record b = sample();
  b.path = "/second\nline";
  (*log)->write(a);
  (*log)->write(b);
  EXPECT_EQ((*log)->written(), 2u);
  EXPECT_EQ((*log)->lost(), 0u);
  EXPECT_EQ(slurp(path), audit::toJson(a) + "\n" + audit::toJson(b) + "\n");
  EXPECT_EQ(std::filesystem::status(path).permissions() & std::filesystem::perms::others_all,
            std::filesystem::perms::none);

  // A second open appends, it does not truncate.
  auto again = audit::AuditLog::open(path);
  ASSERT_TRUE(again);
  (*again)->write(a);
  EXPECT_EQ(slurp(path), audit::toJson(a) + "\n" + audit::toJson(b) + "\n" + audit::toJson(a) + "\n");
}

TEST(AuditLogFile, ReopenFollowsRotation) {
  TempDir dir;
  std::string path = dir.file("audit.log");
  auto log = audit::AuditLog::open(path);
  ASSERT_TRUE(log);
  audit::Record r = sample();
  (*log)->write(r);
  std::filesystem::rename(path, path + ".1");
  r.status = 201;
  (*log)->write(r);  // still the rotated file
  ASSERT_TRUE((*log)->reopen());
  r.status = 202;
  (*log)->write(r);
  EXPECT_EQ(slurp(path), audit::toJson(r) + "\n");
  std::string rotated = slurp(path + ".1");
  EXPECT_NE(rotated.find(R"("status":200,)"), std::string::npos);
  EXPECT_NE(rotated.find(R"("status":201,)"), std::string::npos);
  EXPECT_EQ((*log)->written(), 3u);
}

TEST(AuditLogFile, OpenErrors) {
  auto dirAsFile = audit::AuditLog::open("/");
  ASSERT_FALSE(dirAsFile);
  EXPECT_EQ(dirAsFile.error().code, EISDIR);
  EXPECT_EQ(dirAsFile.error().message.rfind("open audit log /", 0), 0u) << dirAsFile.error().message;
  TempDir dir;
  std::string path = dir.file("audit.log");
  auto log = audit::AuditLog::open(path);
  ASSERT_TRUE(log);
  std::filesystem::remove(path);
  std::filesystem::create_directory(path);  // the path is now a directory
  auto re = (*log)->reopen();
  ASSERT_FALSE(re);
  EXPECT_EQ(re.error().code, EISDIR);
}

TEST(AuditLogFile, FullDiskCountsLostRecords) {
  if (::access("/dev/full", W_OK) != 0) GTEST_SKIP() << "no writable /dev/full";
  auto log = audit::AuditLog::open("/dev/full");
  ASSERT_TRUE(log) << log.error().message;
  for (int i = 0; i < 5; ++i) (*log)->write(sample());
  EXPECT_EQ((*log)->written(), 0u);
  EXPECT_EQ((*log)->lost(), 5u);
}

// With a deferrer (the daemon's loop), records gather until the deferred
// flush runs, then go out together; nothing gathered is lost by a reopen,
// the destructor or a full disk's accounting.
TEST(AuditLogBatches, GatheredRecordsGoOutInOneFlush) {
  TempDir dir;
  std::string path = dir.file("audit.log");
  auto log = audit::AuditLog::open(path);
  ASSERT_TRUE(log);
  std::vector<std::function<void()>> queued;
  (*log)->setDeferrer([&](std::chrono::microseconds, std::function<void()> f) { queued.push_back(std::move(f)); });
  std::vector<std::string> seen;
  (*log)->setObserver([&](const audit::Record&, std::string_view json) { seen.emplace_back(json); });
  audit::Record a = sample(), b = sample();
  b.status = 500;
  (*log)->write(a);
  (*log)->write(b);
  EXPECT_EQ(queued.size(), 1u) << "one flush queued for the batch";
  EXPECT_EQ(slurp(path), "") << "nothing written before the flush";
  EXPECT_EQ(seen, (std::vector<std::string>{audit::toJson(a), audit::toJson(b)})) << "observed at once";
  queued[0]();
  EXPECT_EQ(slurp(path), audit::toJson(a) + "\n" + audit::toJson(b) + "\n");
  EXPECT_EQ((*log)->written(), 2u);
  (*log)->write(a);
  EXPECT_EQ(queued.size(), 2u) << "the next record queues the next flush";
  std::filesystem::rename(path, path + ".1");
  ASSERT_TRUE((*log)->reopen());
  EXPECT_EQ(slurp(path + ".1"), audit::toJson(a) + "\n" + audit::toJson(b) + "\n" + audit::toJson(a) + "\n")
      << "reopen flushed to the old file";
  (*log)->write(b);
  log->reset();  // the destructor flushes
  EXPECT_EQ(slurp(path), audit::toJson(b) + "\n");
}

TEST(AuditLogBatches, ABigBatchIsWrittenWithoutWaiting) {
  TempDir dir;
  std::string path = dir.file("audit.log");
  auto log = audit::AuditLog::open(path);
  ASSERT_TRUE(log);
  int queued = 0;
  (*log)->setDeferrer([&](std::chrono::microseconds, std::function<void()>) { ++queued; });
  audit::Record r = sample();
  r.path = std::string(1000, 'p');
  const std::size_t lineBytes = audit::toJson(r).size() + 1;
  std::size_t records = audit::AuditLog::kBatchBytes / lineBytes + 1;
  for (std::size_t i = 0; i < records; ++i) (*log)->write(r);
  EXPECT_EQ(slurp(path).size(), records * lineBytes) << "the cap flushed without the deferred call";
  EXPECT_EQ((*log)->written(), records);
  EXPECT_EQ(queued, 1);
}

// A record after a quiet spell is flushed at once (the next loop turn); one
// that follows a write by less than the linger waits out the rest of it.
TEST(AuditLogBatches, UnderLoadBatchesWaitOutTheLinger) {
  TempDir dir;
  std::string path = dir.file("audit.log");
  auto log = audit::AuditLog::open(path);
  ASSERT_TRUE(log);
  std::vector<std::pair<std::chrono::microseconds, std::function<void()>>> queued;
  (*log)->setDeferrer(
      [&](std::chrono::microseconds delay, std::function<void()> f) { queued.emplace_back(delay, std::move(f)); });
  const auto linger = audit::AuditLog::kLinger;
  (*log)->write(sample());
  ASSERT_EQ(queued.size(), 1u);
  EXPECT_EQ(queued[0].first.count(), 0) << "nothing written before: no wait";
  const auto before = std::chrono::steady_clock::now();
  queued[0].second();
  (*log)->write(sample());
  const auto took = std::chrono::steady_clock::now() - before;
  ASSERT_EQ(queued.size(), 2u);
  EXPECT_LE(queued[1].first, linger);
  if (took < linger / 2)  // (a machine that stalled for the linger owes no wait)
    EXPECT_GE(queued[1].first, linger / 2) << "right after a write: wait";
  queued[1].second();
  std::this_thread::sleep_for(linger * 3);
  (*log)->write(sample());
  ASSERT_EQ(queued.size(), 3u);
  EXPECT_EQ(queued[2].first.count(), 0) << "quiet again: no wait";
  queued[2].second();
  EXPECT_EQ((*log)->written(), 3u);
  const std::string all = slurp(path);
  EXPECT_EQ(std::count(all.begin(), all.end(), '\n'), 3);
}

TEST(AuditLogBatches, AFullDiskLosesTheWholeBatchCounted) {
  if (::access("/dev/full", W_OK) != 0) GTEST_SKIP() << "no writable /dev/full";
  auto log = audit::AuditLog::open("/dev/full");
  ASSERT_TRUE(log);
  std::function<void()> flush;
  (*log)->setDeferrer([&](std::chrono::microseconds, std::function<void()> f) { flush = std::move(f); });
  for (int i = 0; i < 4; ++i) (*log)->write(sample());
  flush();
  EXPECT_EQ((*log)->written(), 0u);
  EXPECT_EQ((*log)->lost(), 4u);
}

TEST(AuditLogFile, StdoutNeedsNoFile) {
  auto log = audit::AuditLog::open("-");
  ASSERT_TRUE(log);
  EXPECT_EQ((*log)->path(), "-");
  EXPECT_TRUE((*log)->reopen());
}
