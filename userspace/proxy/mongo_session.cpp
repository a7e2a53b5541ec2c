// The MongoDB front end (README "MongoDB clusters"): a connection to the
// mongodb targets' port whose ClientHello names a mongodb target is
// terminated with a leaf for that name; atlasgate dials the same name itself
// (its own resolver, the target's upstream CA, the name verified),
// authenticates with SCRAM-SHA-256 as the agent's database login, then
// relays message by message. Every command is described (mongo/command.h)
// and checked against the protocol: mongodb rules before it is forwarded; a
// refusal is a MongoDB error document and the connection stays usable.
// Replies stream back untouched, so exhaust streams (moreToCome) and cursors
// work as they would directly. Compression is negotiated away: the agent's
// hello loses its `compression` list, so neither side compresses.

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <boost/asio/experimental/awaitable_operators.hpp>

#include <fnmatch.h>

#include <deque>

#include "common/log.h"
#include "dns/resolver.h"
#include "mongo/command.h"
#include "mongo/scram.h"
#include "mongo/wire.h"
#include "policy/policy.h"
#include "proxy/server.h"
#include "tls/client_context.h"
#include "tls/server_context.h"

namespace atlasgate::proxy {

struct MongoMessage {
  mongo::Header header;
  mongo::Bytes bytes;
};

namespace {

using mongo::Bytes;
using mongo::ByteView;
using Clock = std::chrono::steady_clock;
using namespace asio::experimental::awaitable_operators;

constexpr std::int32_t kUnauthorized = 13;
constexpr std::int32_t kAuthenticationFailed = 18;
// How long a temporary user may take to become usable (Atlas deploys it).
constexpr std::chrono::seconds kDeployWait{120};

// One whole message; nullopt at the end of the stream or on a bad header.
template <class Stream>
asio::awaitable<std::optional<MongoMessage>> readMessage(Stream& s, std::size_t maxBytes, std::string& why) {
  MongoMessage m;
  m.bytes.resize(mongo::kHeaderBytes);
  auto [ec, n] = co_await asio::async_read(s, asio::buffer(m.bytes), kUseTuple);
  if (ec) {
    why = ec.message();
    co_return std::nullopt;
  }
  auto h = mongo::parseHeader(m.bytes, maxBytes);
  if (!h) {
    why = h.error().message;
    co_return std::nullopt;
  }
  m.header = *h;
  m.bytes.resize(static_cast<std::size_t>(h->length));
  auto [ec2, n2] = co_await asio::async_read(
      s, asio::buffer(m.bytes.data() + mongo::kHeaderBytes, m.bytes.size() - mongo::kHeaderBytes), kUseTuple);
  if (ec2) {
    why = ec2.message();
    co_return std::nullopt;
  }
  co_return m;
}

// {ok: 0, errmsg, code, codeName}: what drivers show their users.
mongo::Doc errorDoc(std::string_view errmsg, std::int32_t code, std::string_view codeName) {
  mongo::Doc d;
  BSON_APPEND_DOUBLE(d.get(), "ok", 0.0);
  bson_append_utf8(d.get(), "errmsg", 6, errmsg.data(), static_cast<int>(errmsg.size()));
  BSON_APPEND_INT32(d.get(), "code", code);
  bson_append_utf8(d.get(), "codeName", 8, codeName.data(), static_cast<int>(codeName.size()));
  return d;
}

bool isHello(std::string_view name) { return name == "hello" || name == "isMaster" || name == "ismaster"; }
bool isAuth(std::string_view name) {
  return name == "saslStart" || name == "saslContinue" || name == "authenticate" || name == "logout" ||
         name == "getnonce";
}

// The agent's hello without what would make atlasgate's upstream session
// differ from what it checks: compression (negotiated away) and the agent's
// own authentication (atlasgate's is the connection's).
mongo::Doc sanitizedHello(ByteView body) {
  mongo::DocView view(body);
  if (auto inner = view.document("$query")) {
    // Legacy wrapping: {$query: {isMaster: 1, ...}, $readPreference: ...}.
    mongo::Doc outer = mongo::without(body, {"$query"});
    mongo::Doc clean = mongo::without(*inner, {"compression", "speculativeAuthenticate", "saslSupportedMechs"});
    bson_append_document(outer.get(), "$query", 6, clean.get());
    return outer;
  }
  return mongo::without(body, {"compression", "speculativeAuthenticate", "saslSupportedMechs"});
}

}  // namespace

// One terminated MongoDB connection.
struct MongoConn {
  Server& server;
  TlsStream& agent;
  TlsStream& up;
  Flow& flow;
  const TargetRuntime& target;
  std::string host;
  std::shared_ptr<const Runtime> rt;
  std::string credential;
  std::size_t maxMessage = mongo::kDefaultMaxMessageBytes;
  std::deque<Bytes> toAgent;
  std::size_t queuedBytes = 0;
  bool writing = false;
  bool failed = false;
  std::int32_t nextId = 0x41470000;  // atlasgate's own request ids

  // Writes are serialised: replies relayed from upstream and answers
  // atlasgate gives itself share the agent's stream.
  asio::awaitable<bool> send(Bytes bytes) {
    queuedBytes += bytes.size();
    toAgent.push_back(std::move(bytes));
    if (writing) {
      // Bounded: a slow agent holds the upstream relay back.
      asio::steady_timer pause(co_await asio::this_coro::executor);
      while (writing && queuedBytes > 2 * maxMessage && !failed) {
        pause.expires_after(std::chrono::milliseconds(2));
        co_await pause.async_wait(kUseTuple);
      }
      co_return !failed;
    }
    writing = true;
    while (!toAgent.empty() && !failed) {
      Bytes b = std::move(toAgent.front());
      toAgent.pop_front();
      queuedBytes -= b.size();
      auto [ec, n] = co_await asio::async_write(agent, asio::buffer(b), kUseTuple);
      if (ec) failed = true;
    }
    writing = false;
    co_return !failed;
  }
};

ssl::context* Server::mongoUpstreamTls(const std::optional<std::string>& caFile) {
  const std::string key = caFile.value_or("");
  auto it = mongoTls_.find(key);
  if (it != mongoTls_.end()) return it->second.get();
  auto ctx = tls::makeClientContext(caFile);
  if (!ctx) {
    log::error("mongodb upstream TLS context ({}): {}", key.empty() ? "system trust store" : key, ctx.error().message);
    return nullptr;
  }
  // MongoDB servers speak no ALPN: offer none.
  SSL_CTX_set_alpn_protos(ctx->get(), nullptr, 0);
  auto owned = std::make_unique<ssl::context>(ctx->release());
  return mongoTls_.emplace(key, std::move(owned)).first->second.get();
}

asio::awaitable<void> Server::mongoClassify(tcp::socket socket, Flow flow) {
  std::shared_ptr<const Runtime> rt = runtime_;
  tls::HelloPeek hello = co_await peekHello(socket);
  if (hello.status == tls::HelloStatus::NeedMore && !socket.is_open()) co_return;
  if (hello.status == tls::HelloStatus::Sni) {
    if (const TargetRuntime* t = rt->findMongodbTarget(hello.host)) {
      co_await mongoServe(std::move(socket), std::move(flow), *t, hello.host, rt);
      co_return;
    }
  }
  // Plain MongoDB, or TLS to a name no mongodb target matches: not ours.
  co_await passthrough(std::move(socket), std::move(flow));
}

namespace {

// Runs on a pool thread (dns::resolve blocks). Results travel in an
// optional: co_spawn wants a default-constructible value. A plain function,
// not a capturing lambda: GCC 12 mishandles coroutine lambdas' captures.
asio::awaitable<std::optional<Result<dns::Answer>>> resolveTask(std::string host, std::vector<std::string> servers) {
  co_return dns::resolve(host, servers);
}

// The addresses of `host` by atlasgate's own resolver.
asio::awaitable<Result<dns::Answer>> resolveOn(asio::thread_pool& pool, const std::string& host,
                                               const std::vector<std::string>& servers) {
  auto r = co_await asio::co_spawn(pool, resolveTask(host, servers), asio::use_awaitable);
  co_return std::move(*r);
}

// One command of atlasgate's own (SCRAM), and its reply's body.
asio::awaitable<Result<mongo::Doc>> command(TlsStream& up, const mongo::Doc& body, std::int32_t id,
                                            std::size_t maxBytes) {
  Bytes msg = mongo::buildMsg(id, 0, 0, body.bytes());
  auto [ec, n] = co_await asio::async_write(up, asio::buffer(msg), kUseTuple);
  if (ec) co_return makeError("writing to the server: {}", ec.message());
  std::string why;
  auto reply = co_await readMessage(up, maxBytes, why);
  if (!reply) co_return makeError("reading the server's reply: {}", why);
  if (reply->header.opCode != static_cast<std::int32_t>(mongo::OpCode::Msg))
    co_return makeError("the server answered with opcode {}", reply->header.opCode);
  auto parsed = mongo::parseMsg(reply->bytes);
  if (!parsed) co_return parsed.error();
  co_return mongo::Doc::fromBytes(parsed->body);
}

mongo::Doc saslDoc(std::string_view cmd, std::string_view payload, std::optional<std::int64_t> conversation,
                   const std::string& db) {
  mongo::Doc d;
  if (conversation) {
    BSON_APPEND_INT32(d.get(), "saslContinue", 1);
    BSON_APPEND_INT32(d.get(), "conversationId", static_cast<std::int32_t>(*conversation));
  } else {
    BSON_APPEND_INT32(d.get(), "saslStart", 1);
    BSON_APPEND_UTF8(d.get(), "mechanism", "SCRAM-SHA-256");
  }
  bson_append_binary(d.get(), "payload", 7, BSON_SUBTYPE_BINARY, reinterpret_cast<const std::uint8_t*>(payload.data()),
                     static_cast<std::uint32_t>(payload.size()));
  if (!conversation) {
    bson_t opts;
    BSON_APPEND_DOCUMENT_BEGIN(d.get(), "options", &opts);
    BSON_APPEND_BOOL(&opts, "skipEmptyExchange", true);
    bson_append_document_end(d.get(), &opts);
  }
  (void)cmd;
  bson_append_utf8(d.get(), "$db", 3, db.data(), static_cast<int>(db.size()));
  return d;
}

// A reply's ok, payload and conversation id; an {ok: 0} is an Error whose code is the server's.
Result<std::pair<std::string, std::int64_t>> saslReply(const mongo::Doc& reply) {
  mongo::DocView v(reply.bytes());
  bson_iter_t it;
  double ok = 0;
  if (bson_iter_init_find(&it, reply.get(), "ok") && BSON_ITER_HOLDS_NUMBER(&it)) ok = bson_iter_as_double(&it);
  if (ok != 1.0) {
    Error e = makeError("the server refused ({}: {})", v.integer("code").value_or(0),
                        std::string(v.string("codeName").value_or("?")));
    e.code = static_cast<int>(v.integer("code").value_or(0));
    return e;
  }
  auto payload = v.binary("payload");
  if (!payload) return makeError("a SASL reply without a payload");
  return std::pair{std::string(reinterpret_cast<const char*>(payload->data()), payload->size()),
                   v.integer("conversationId").value_or(0)};
}

// SCRAM-SHA-256 as `login` on a fresh upstream connection.
asio::awaitable<Result<void>> authenticate(TlsStream& up, const DatabaseLogin& login, mongo::SaltedPasswordCache& cache,
                                           std::int32_t& id, std::size_t maxBytes) {
  mongo::ScramClient client(login.username, login.password, cache);
  auto r1 = co_await command(up, saslDoc("saslStart", client.first(), std::nullopt, login.authSource), id++, maxBytes);
  if (!r1) co_return r1.error();
  auto first = saslReply(*r1);
  if (!first) co_return first.error();
  auto final = client.final(first->first);
  if (!final) co_return final.error();
  auto r2 = co_await command(up, saslDoc("saslContinue", *final, first->second, login.authSource), id++, maxBytes);
  if (!r2) co_return r2.error();
  auto second = saslReply(*r2);
  if (!second) co_return second.error();
  if (auto v = client.verify(second->first); !v) co_return v.error();
  mongo::DocView v2(r2->bytes());
  if (v2.boolean("done").value_or(false)) co_return Result<void>{};
  // Without skipEmptyExchange support: one empty round closes the conversation.
  auto r3 = co_await command(up, saslDoc("saslContinue", "", first->second, login.authSource), id++, maxBytes);
  if (!r3) co_return r3.error();
  if (auto third = saslReply(*r3); !third) co_return third.error();
  co_return Result<void>{};
}

}  // namespace

// Dials the server the agent named and authenticates; nullptr (logged) when
// it cannot.
static asio::awaitable<std::unique_ptr<TlsStream>> dialMongo(asio::io_context& io, asio::thread_pool& pool,
                                                             ssl::context& tlsCtx, const Runtime& rt,
                                                             const TargetRuntime& target, const std::string& host,
                                                             const Flow& flow) {
  const auto& limits = rt.config->limits;
  auto answer = co_await resolveOn(pool, host, rt.config->dns.servers);
  if (!answer || answer->addresses.empty()) {
    log::warn("conn {} agent {}: cannot resolve {}: {}", flow.id, flow.agent.name, host,
              answer ? "no addresses" : answer.error().message);
    co_return nullptr;
  }
  for (const std::string& a : answer->addresses) {
    beast::error_code aec;
    auto addr = asio::ip::make_address(a, aec);
    if (aec) continue;
    auto stream = std::make_unique<TlsStream>(io, tlsCtx);
    if (auto r = tls::prepareClientSsl(stream->native_handle(), host); !r) {
      log::warn("conn {}: upstream {}: {}", flow.id, host, r.error().message);
      co_return nullptr;
    }
    auto& lower = beast::get_lowest_layer(*stream);
    lower.expires_after(limits.upstreamConnectTimeout);
    // The port the agent dialled: the mongodb targets' port (the kernel redirects no other).
    auto [cec] = co_await lower.async_connect(tcp::endpoint(addr, flow.originalDst.port()), kUseTuple);
    if (cec) {
      log::info("conn {}: upstream {} ({}) connect failed: {}", flow.id, host, a, cec.message());
      continue;
    }
    lower.socket().set_option(tcp::no_delay(true), aec);
    auto [hec] = co_await stream->async_handshake(ssl::stream_base::client, kUseTuple);
    if (hec) {
      log::warn("conn {}: upstream {} ({}) TLS failed: {}", flow.id, host, a, hec.message());
      continue;
    }
    lower.expires_never();
    co_return stream;
  }
  co_return nullptr;
}

namespace {

std::string refusalText(const policy::Decision& d, const mongo::CommandInfo& info) {
  const std::string what = fmt::format("{} on {}", info.name, d.path.empty() ? info.database : d.path);
  switch (d.verdict) {
    case policy::Verdict::RateLimited:
      return fmt::format("atlasgate: rate limited by rule \"{}\" ({}); retry in {} s", d.ruleName, what,
                         d.retryAfter.count());
    case policy::Verdict::Approve:
      return fmt::format(
          "atlasgate: rule \"{}\" needs an operator's approval, which MongoDB commands cannot wait "
          "for yet ({})",
          d.ruleName, what);
    default: return fmt::format("atlasgate: blocked by rule \"{}\" ({})", d.ruleName, what);
  }
}

}  // namespace

asio::awaitable<void> Server::mongoServe(tcp::socket socket, Flow flow, const TargetRuntime& target, std::string host,
                                         std::shared_ptr<const Runtime> rt) {
  const auto& limits = rt->config->limits;
  TlsStream stream(std::move(socket), *sslCtx_);
  beast::get_lowest_layer(stream).expires_after(limits.handshakeTimeout);
  auto [hec] = co_await stream.async_handshake(ssl::stream_base::server, kUseTuple);
  if (hec) {
    counters_.add(Counter::HandshakeFailures);
    log::info("conn {} agent {}: TLS handshake failed: {}", flow.id, flow.agent.name, hec.message());
    co_return;
  }
  beast::get_lowest_layer(stream).expires_never();
  // The credential: the first of the target's whose agents match.
  const CredentialRuntime* cred = nullptr;
  for (const auto& c : target.credentials) {
    bool match = c.agents.empty();
    for (const auto& g : c.agents) match = match || ::fnmatch(g.c_str(), flow.agent.name.c_str(), 0) == 0;
    if (match && c.database) {
      cred = &c;
      break;
    }
  }
  if (cred == nullptr) {
    log::warn("conn {} agent {}: no database credential of {} serves this agent: closed", flow.id, flow.agent.name,
              target.host);
    co_return;
  }
  if (!scramCache_) scramCache_ = std::make_unique<mongo::SaltedPasswordCache>();
  if (!resolvers_) resolvers_ = std::make_unique<asio::thread_pool>(2);
  ssl::context* upTls = mongoUpstreamTls(rt->config->targets.empty() ? std::nullopt : [&] {
    for (const auto& t : rt->config->targets)
      if (t.host == target.host) return t.upstreamCa;
    return std::optional<std::string>{};
  }());
  if (upTls == nullptr) co_return;

  // Dial and authenticate; a temporary user Atlas is still deploying fails
  // with AuthenticationFailed: try again with backoff.
  std::unique_ptr<TlsStream> up;
  std::int32_t id = 0x41470000;
  const auto deadline = Clock::now() + kDeployWait;
  auto backoff = std::chrono::milliseconds(250);
  asio::steady_timer pause(io_);
  for (;;) {
    auto login = co_await cred->database->login(flow.agent);
    if (!login) {
      log::warn("conn {} agent {}: no database login: {}", flow.id, flow.agent.name, login.error().message);
      co_return;
    }
    up = co_await dialMongo(io_, *resolvers_, *upTls, *rt, target, host, flow);
    if (!up) co_return;
    auto auth = co_await authenticate(*up, *login, *scramCache_, id, mongo::kDefaultMaxMessageBytes);
    if (auth) break;
    const bool retry = login->temporary && auth.error().code == kAuthenticationFailed && Clock::now() < deadline;
    log::info("conn {} agent {}: authenticating as {} on {} failed: {}{}", flow.id, flow.agent.name, login->username,
              host, auth.error().message, retry ? " (the user may still be deploying: retrying)" : "");
    if (!retry) co_return;
    beast::error_code ignored;
    beast::get_lowest_layer(*up).socket().close(ignored);
    pause.expires_after(backoff);
    co_await pause.async_wait(kUseTuple);
    backoff = std::min(backoff * 2, std::chrono::milliseconds(4000));
  }
  log::debug("conn {} agent {}: mongodb {} authenticated as {}", flow.id, flow.agent.name, host,
             cred->database->describe());
  MongoConn c{*this, stream, *up, flow, target, host, rt, cred->database->describe()};
  co_await (mongoFromAgent(c) || mongoToAgent(c));
}

asio::awaitable<void> Server::mongoToAgent(MongoConn& c) {
  for (;;) {
    std::string why;
    auto m = co_await readMessage(c.up, c.maxMessage, why);
    if (!m) {
      log::debug("conn {}: mongodb upstream ended: {}", c.flow.id, why);
      co_return;
    }
    if (!co_await c.send(std::move(m->bytes))) co_return;
  }
}

// One command, checked: the decision, or an error to answer.
Result<std::pair<policy::Decision, mongo::CommandInfo>> Server::mongoDecide(MongoConn& c,
                                                                            Result<mongo::CommandInfo> info) {
  if (!info) return info.error();
  std::vector<policy::CommandAccess> accesses;
  for (const auto& a : info->accesses) accesses.push_back({a.command, a.database, a.collection});
  policy::CommandRequest req{c.target.host, c.flow.agent.name, std::move(accesses), c.flow.agent.podLabels.get(),
                             c.flow.agent.containerLabels.get()};
  policy::Decision d = c.rt->policy->evaluateCommand(req, Clock::now());
  return std::pair{std::move(d), std::move(info.value())};
}

void Server::mongoAudit(MongoConn& c, const mongo::CommandInfo& info, const policy::Decision* d,
                        std::string_view decision, std::string_view error, std::size_t bytesIn) {
  audit::Record rec;
  rec.ts = std::chrono::system_clock::now();
  rec.agent = c.flow.agent.name;
  rec.pid = c.flow.origin.pid;
  rec.comm = c.flow.comm;
  rec.cgroup = c.flow.agent.cgroupPath;
  rec.protocol = "mongodb";
  rec.method = info.name;
  rec.command = info.name;
  rec.database = info.database;
  rec.collection = info.collection;
  rec.host = c.host;
  rec.path = info.collection.empty() ? info.database : info.database + "." + info.collection;
  rec.rule = d ? d->ruleName : "";
  rec.decision = std::string(decision);
  rec.bytesIn = bytesIn;
  rec.credential = c.credential;
  rec.dst = endpointText(c.flow.originalDst);
  rec.error = std::string(error);
  audit_.write(rec);
}

asio::awaitable<void> Server::mongoFromAgent(MongoConn& c) {
  for (;;) {
    std::string why;
    auto m = co_await readMessage(c.agent, c.maxMessage, why);
    if (!m) {
      if (why != "End of file" && why != "stream truncated")
        log::info("conn {} agent {}: mongodb connection ended: {}", c.flow.id, c.flow.agent.name, why);
      co_return;
    }
    counters_.add(Counter::Requests);
    const auto op = static_cast<mongo::OpCode>(m->header.opCode);
    bool ok = false;
    if (op == mongo::OpCode::Msg)
      ok = co_await mongoMsg(c, *m);
    else if (op == mongo::OpCode::Query)
      ok = co_await mongoQuery(c, *m);
    else
      log::warn(
          "conn {} agent {}: mongodb opcode {} refused (compression is negotiated away; legacy writes are "
          "gone from MongoDB): closed",
          c.flow.id, c.flow.agent.name, m->header.opCode);
    if (!ok) co_return;
  }
}

asio::awaitable<bool> Server::mongoMsg(MongoConn& c, MongoMessage& m) {
  auto parsed = mongo::parseMsg(m.bytes);
  if (!parsed) {
    log::warn("conn {} agent {}: malformed OP_MSG: {}: closed", c.flow.id, c.flow.agent.name, parsed.error().message);
    co_return false;
  }
  const bool silent = (parsed->flags & mongo::kMoreToCome) != 0;  // no reply expected
  auto answer = [&](const mongo::Doc& doc) -> asio::awaitable<bool> {
    if (silent) co_return true;
    co_return co_await c.send(mongo::buildMsg(c.nextId++, m.header.requestId, 0, doc.bytes()));
  };
  auto described = mongoDecide(c, mongo::describe(*parsed));
  if (!described) {
    counters_.add(Counter::BadRequests);
    mongo::CommandInfo none;
    none.name = std::string(mongo::DocView(parsed->body).firstKey());
    mongoAudit(c, none, nullptr, "error", "MALFORMED_COMMAND", m.bytes.size());
    co_return co_await answer(errorDoc("atlasgate: " + described.error().message, 2, "BadValue"));
  }
  auto& [d, info] = described.value();
  if (isHello(info.name)) {
    mongo::Doc clean = sanitizedHello(parsed->body);
    Bytes out = mongo::buildMsg(m.header.requestId, 0, parsed->flags & ~mongo::kChecksumPresent, clean.bytes(),
                                parsed->sequences);
    auto [ec, n] = co_await asio::async_write(c.up, asio::buffer(out), kUseTuple);
    co_return !ec;
  }
  if (isAuth(info.name)) {
    mongoAudit(c, info, nullptr, "local", "ATLASGATE_AUTHENTICATES", m.bytes.size());
    co_return co_await answer(
        errorDoc("atlasgate: this connection is authenticated by atlasgate; connect without credentials",
                 kAuthenticationFailed, "AuthenticationFailed"));
  }
  co_return co_await mongoForward(c, m, info, d, answer);
}

asio::awaitable<bool> Server::mongoForward(MongoConn& c, MongoMessage& m, const mongo::CommandInfo& info,
                                           const policy::Decision& d,
                                           const std::function<asio::awaitable<bool>(const mongo::Doc&)>& answer) {
  if (d.verdict != policy::Verdict::Allow) {
    counters_.add(d.verdict == policy::Verdict::RateLimited ? Counter::RateLimited : Counter::Blocked);
    mongoAudit(c, info, &d, d.verdict == policy::Verdict::RateLimited ? "rate_limited" : "block", "", m.bytes.size());
    co_return co_await answer(errorDoc(refusalText(d, info), kUnauthorized, "Unauthorized"));
  }
  mongoAudit(c, info, &d, d.logOnlyWouldBe ? "log_only" : "allow", "", m.bytes.size());
  auto [ec, n] = co_await asio::async_write(c.up, asio::buffer(m.bytes), kUseTuple);
  co_return !ec;
}

asio::awaitable<bool> Server::mongoQuery(MongoConn& c, MongoMessage& m) {
  auto q = mongo::parseQuery(m.bytes);
  if (!q) {
    log::warn("conn {} agent {}: malformed OP_QUERY: {}: closed", c.flow.id, c.flow.agent.name, q.error().message);
    co_return false;
  }
  auto answer = [&](const mongo::Doc& doc) -> asio::awaitable<bool> {
    co_return co_await c.send(mongo::buildReply(c.nextId++, m.header.requestId, 0, 0, doc.bytes()));
  };
  auto described = mongoDecide(c, mongo::describe(*q));
  if (!described) {
    counters_.add(Counter::BadRequests);
    co_return co_await answer(errorDoc("atlasgate: " + described.error().message, 2, "BadValue"));
  }
  auto& [d, info] = described.value();
  if (isHello(info.name)) {
    mongo::Doc clean = sanitizedHello(q->query);
    Bytes out = mongo::buildQuery(m.header.requestId, q->flags, q->fullCollectionName, q->numberToSkip,
                                  q->numberToReturn, clean.bytes());
    auto [ec, n] = co_await asio::async_write(c.up, asio::buffer(out), kUseTuple);
    co_return !ec;
  }
  if (isAuth(info.name)) {
    co_return co_await answer(
        errorDoc("atlasgate: this connection is authenticated by atlasgate; connect without credentials",
                 kAuthenticationFailed, "AuthenticationFailed"));
  }
  co_return co_await mongoForward(c, m, info, d, answer);
}

}  // namespace atlasgate::proxy
