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

#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <cstring>
#include <deque>

#include "common/log.h"
#include "dns/resolver.h"
#include "mongo/command.h"
#include "mongo/scram.h"
#include "mongo/wire.h"
#include "policy/policy.h"
#include "proxy/captured.h"
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
asio::awaitable<std::optional<MongoMessage>> readMessage(Stream& s, std::size_t maxBytes, std::string& why,
                                                         std::chrono::seconds deadline = std::chrono::seconds(300)) {
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
  // The body grows as it arrives (a header claiming 48 MB reserves nothing
  // by itself), and must arrive within the request timeout.
  const std::size_t total = static_cast<std::size_t>(h->length);
  auto& lower = beast::get_lowest_layer(s);
  lower.expires_after(deadline);
  while (m.bytes.size() < total) {
    const std::size_t have = m.bytes.size();
    m.bytes.resize(std::min(total, std::max<std::size_t>(have * 2, 64 * 1024)));
    auto [ec2, n2] =
        co_await asio::async_read(s, asio::buffer(m.bytes.data() + have, m.bytes.size() - have), kUseTuple);
    if (ec2) {
      why = ec2.message();
      co_return std::nullopt;
    }
  }
  lower.expires_never();
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
  for (const char* wrapper : {"$query", "query"}) {
    // Legacy wrapping: {$query: {isMaster: 1, ...}, $readPreference: ...}, or {query: {...}}.
    auto inner = view.document(wrapper);
    if (!inner || (std::string_view(wrapper) == "query" && view.firstKey() != "query")) continue;
    mongo::Doc outer = mongo::without(body, {wrapper});
    mongo::Doc clean = mongo::without(*inner, {"compression", "speculativeAuthenticate", "saslSupportedMechs"});
    bson_append_document(outer.get(), wrapper, static_cast<int>(std::strlen(wrapper)), clean.get());
    return outer;
  }
  return mongo::without(body, {"compression", "speculativeAuthenticate", "saslSupportedMechs"});
}

}  // namespace

// An upstream connection and the credential it was authenticated with.
struct MongoUpstream {
  std::unique_ptr<TlsSocket> stream;
  std::string credential;
};

// What the agent's first message says about its own authentication.
struct AgentHello {
  bool legacy = false;               // an OP_QUERY (the answer is an OP_REPLY)
  bool authenticates = false;        // it asked for mechanisms or started SCRAM
  bool askedMechs = false;           // saslSupportedMechs: "db.user"
  std::optional<Bytes> speculative;  // speculativeAuthenticate: a saslStart document
};

namespace {

AgentHello inspectHello(const MongoMessage& m) {
  AgentHello h;
  std::optional<ByteView> body;
  std::optional<mongo::Query> q;
  std::optional<mongo::Msg> msg;
  if (m.header.opCode == static_cast<std::int32_t>(mongo::OpCode::Query)) {
    auto parsed = mongo::parseQuery(m.bytes);
    if (!parsed) return h;
    q = std::move(parsed.value());
    body = q->query;
    h.legacy = true;
    mongo::DocView outer(*body);
    if (auto inner = outer.document("$query")) {
      body = *inner;
    } else if (auto q2 = outer.document("query"); q2 && outer.firstKey() == "query") {
      body = *q2;
    }
  } else if (m.header.opCode == static_cast<std::int32_t>(mongo::OpCode::Msg)) {
    auto parsed = mongo::parseMsg(m.bytes);
    if (!parsed) return h;
    msg = std::move(parsed.value());
    body = msg->body;
  }
  if (!body) return h;
  mongo::DocView v(*body);
  if (!isHello(v.firstKey())) return h;
  h.askedMechs = v.string("saslSupportedMechs").has_value();
  if (auto spec = v.document("speculativeAuthenticate"))
    if (mongo::DocView(*spec).string("mechanism") == "SCRAM-SHA-256") h.speculative = Bytes(spec->begin(), spec->end());
  h.authenticates = h.askedMechs || v.has("speculativeAuthenticate");
  return h;
}

// {conversationId: 1, done, payload, ok: 1}: a SASL step answered here.
mongo::Doc saslAnswer(std::string_view payload, bool done) {
  mongo::Doc d;
  BSON_APPEND_INT32(d.get(), "conversationId", 1);
  BSON_APPEND_BOOL(d.get(), "done", done);
  bson_append_binary(d.get(), "payload", 7, BSON_SUBTYPE_BINARY, reinterpret_cast<const std::uint8_t*>(payload.data()),
                     static_cast<std::uint32_t>(payload.size()));
  BSON_APPEND_DOUBLE(d.get(), "ok", 1.0);
  return d;
}

// The server's hello reply, with what atlasgate answers for the agent's own
// authentication in place of the server's.
Result<Bytes> editedHelloReply(const MongoMessage& reply, const AgentHello& h,
                               const std::optional<std::string>& speculative) {
  auto edit = [&](ByteView doc) {
    mongo::Doc out = mongo::without(doc, {"saslSupportedMechs", "speculativeAuthenticate"});
    if (h.askedMechs) {
      bson_t mechs;
      BSON_APPEND_ARRAY_BEGIN(out.get(), "saslSupportedMechs", &mechs);
      BSON_APPEND_UTF8(&mechs, "0", "SCRAM-SHA-256");
      bson_append_array_end(out.get(), &mechs);
    }
    if (speculative) {
      mongo::Doc step = saslAnswer(*speculative, false);
      mongo::Doc clean = mongo::without(step.bytes(), {"ok"});
      BSON_APPEND_DOCUMENT(out.get(), "speculativeAuthenticate", clean.get());
    }
    return out;
  };
  if (reply.header.opCode == static_cast<std::int32_t>(mongo::OpCode::Reply)) {
    auto r = mongo::parseReply(reply.bytes);
    if (!r) return r.error();
    if (r->documents.size() != 1) return makeError("a hello reply with {} documents", r->documents.size());
    mongo::Doc out = edit(r->documents[0]);
    return mongo::buildReply(reply.header.requestId, reply.header.responseTo, r->responseFlags, r->cursorId,
                             out.bytes());
  }
  auto m = mongo::parseMsg(reply.bytes);
  if (!m) return m.error();
  mongo::Doc out = edit(m->body);
  return mongo::buildMsg(reply.header.requestId, reply.header.responseTo, m->flags & ~mongo::kChecksumPresent,
                         out.bytes());
}

// A stable salt per username (so the salted-password cache serves repeated
// logins), unpredictable from outside the process.
std::string saltFor(std::string_view username) {
  static const std::string key = [] {
    std::string k(32, '\0');
    RAND_bytes(reinterpret_cast<unsigned char*>(k.data()), static_cast<int>(k.size()));
    return k;
  }();
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), reinterpret_cast<const unsigned char*>(username.data()),
       username.size(), md, &len);
  return std::string(reinterpret_cast<const char*>(md), 16);
}

// The agent's hello as it goes upstream (sanitizedHello), re-framed.
Bytes sanitizedHelloMessage(const mongo::Query& q) {
  mongo::Doc clean = sanitizedHello(q.query);
  return mongo::buildQuery(q.header.requestId, q.flags, q.fullCollectionName, q.numberToSkip, q.numberToReturn,
                           clean.bytes());
}

Bytes sanitizedHelloMessage(const mongo::Msg& m) {
  mongo::Doc clean = sanitizedHello(m.body);
  return mongo::buildMsg(m.header.requestId, 0, m.flags & ~mongo::kChecksumPresent, clean.bytes(), m.sequences);
}

std::optional<Bytes> sanitizedHelloMessage(const MongoMessage& hello) {
  if (hello.header.opCode == static_cast<std::int32_t>(mongo::OpCode::Query)) {
    auto q = mongo::parseQuery(hello.bytes);
    if (!q) return std::nullopt;
    return sanitizedHelloMessage(*q);
  }
  auto m = mongo::parseMsg(hello.bytes);
  if (!m) return std::nullopt;
  return sanitizedHelloMessage(*m);
}

// saslStart and friends on a connection atlasgate authenticated itself.
mongo::Doc authenticatedByAtlasgate() {
  return errorDoc("atlasgate: this connection is authenticated by atlasgate; connect without credentials",
                  kAuthenticationFailed, "AuthenticationFailed");
}

// One step of the agent's SCRAM conversation, answered here. A wrong
// password and an unknown user fail alike (ScramServer).
mongo::Doc saslStep(const mongo::Msg& msg, std::unique_ptr<mongo::ScramServer>& server,
                    const mongo::ScramServer::Lookup& lookup) {
  mongo::DocView body(msg.body);
  const std::string_view name = body.firstKey();
  auto payload = body.binary("payload");
  const std::string_view text =
      payload ? std::string_view(reinterpret_cast<const char*>(payload->data()), payload->size()) : std::string_view();
  if (name == "saslStart") {
    if (body.string("mechanism") != "SCRAM-SHA-256")
      return errorDoc("atlasgate: only SCRAM-SHA-256 is supported", kAuthenticationFailed, "AuthenticationFailed");
    server = std::make_unique<mongo::ScramServer>(lookup);
    if (auto r = server->first(text)) return saslAnswer(*r, false);
  } else if (name == "saslContinue") {
    if (server->done()) return saslAnswer("", true);  // a client that does not skip the empty exchange
    if (auto r = server->final(text)) return saslAnswer(*r, true);
  } else {
    return errorDoc("atlasgate: authenticate first (the hello asked to)", kUnauthorized, "Unauthorized");
  }
  return errorDoc("Authentication failed.", kAuthenticationFailed, "AuthenticationFailed");
}

}  // namespace

// One terminated MongoDB connection.
struct MongoConn {
  Server& server;
  TlsSocket& agent;
  TlsSocket& up;
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
      // A reader that stops reading is cut off, not waited for.
      agent.expires_after(std::chrono::seconds(60));
      auto [ec, n] = co_await asio::async_write(agent, asio::buffer(b), kUseTuple);
      agent.expires_never();
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
  std::shared_ptr<const Runtime> rt = runtime();
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
asio::awaitable<Result<mongo::Doc>> command(TlsSocket& up, const mongo::Doc& body, std::int32_t id,
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
asio::awaitable<Result<void>> authenticate(TlsSocket& up, const DatabaseLogin& login, mongo::SaltedPasswordCache& cache,
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

// A user the agent has just made may still be deploying: a failed SCRAM
// leaves the connection usable, so it is tried again with backoff.
asio::awaitable<Result<void>> authenticatePatiently(TlsSocket& up, const DatabaseLogin& login,
                                                    mongo::SaltedPasswordCache& cache, std::int32_t& id) {
  auto auth = co_await authenticate(up, login, cache, id, mongo::kDefaultMaxMessageBytes);
  asio::steady_timer pause(up.get_executor());
  auto backoff = std::chrono::milliseconds(250);
  for (auto deadline = Clock::now() + kDeployWait;
       !auth && auth.error().code == kAuthenticationFailed && Clock::now() < deadline;) {
    pause.expires_after(backoff);
    co_await pause.async_wait(kUseTuple);
    backoff = std::min(backoff * 2, std::chrono::milliseconds(4000));
    auth = co_await authenticate(up, login, cache, id, mongo::kDefaultMaxMessageBytes);
  }
  co_return auth;
}

}  // namespace

// Dials the server the agent named and authenticates; nullptr (logged) when
// it cannot.
static asio::awaitable<std::unique_ptr<TlsSocket>> dialMongo(asio::io_context& io, asio::thread_pool& pool,
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
    auto stream = std::make_unique<TlsSocket>(tcp::socket(io), tlsCtx);
    if (auto r = tls::prepareClientSsl(stream->native_handle(), host); !r) {
      log::warn("conn {}: upstream {}: {}", flow.id, host, r.error().message);
      co_return nullptr;
    }
    stream->expires_after(limits.upstreamConnectTimeout);
    // The port the agent dialled: the mongodb targets' port (the kernel redirects no other).
    auto [cec] = co_await stream->async_connect(tcp::endpoint(addr, flow.originalDst.port()), kUseTuple);
    if (cec) {
      log::info("conn {}: upstream {} ({}) connect failed: {}", flow.id, host, a, cec.message());
      continue;
    }
    stream->socket().set_option(tcp::no_delay(true), aec);
    auto [hec] = co_await stream->async_handshake(ssl::stream_base::client, kUseTuple);
    if (hec) {
      log::warn("conn {}: upstream {} ({}) TLS failed: {}", flow.id, host, a, hec.message());
      continue;
    }
    stream->expires_never();
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
    default: return fmt::format("atlasgate: blocked by rule \"{}\" ({})", d.ruleName, what);
  }
}

}  // namespace

asio::awaitable<void> Server::mongoServe(tcp::socket socket, Flow flow, const TargetRuntime& target, std::string host,
                                         std::shared_ptr<const Runtime> rt) {
  const auto& limits = rt->config->limits;
  TlsSocket stream(std::move(socket), *sslCtx_);
  stream.expires_after(limits.handshakeTimeout);
  auto [hec] = co_await stream.async_handshake(ssl::stream_base::server, kUseTuple);
  if (hec) {
    counters_.add(Counter::HandshakeFailures);
    log::info("conn {} agent {}: TLS handshake failed: {}", flow.id, flow.agent.name, hec.message());
    co_return;
  }
  if (!scramCache_) scramCache_ = std::make_unique<mongo::SaltedPasswordCache>();
  if (!resolvers_) resolvers_ = std::make_unique<asio::thread_pool>(2);
  std::optional<std::string> upstreamCa;
  for (const auto& t : rt->config->targets)
    if (t.host == target.host) upstreamCa = t.upstreamCa;
  ssl::context* upTls = mongoUpstreamTls(upstreamCa);
  if (upTls == nullptr) co_return;

  // The agent speaks first: its hello says whether it authenticates itself
  // (with a phantom password) or leaves that to atlasgate.
  std::string why;
  auto first = co_await readMessage(stream, mongo::kDefaultMaxMessageBytes, why);
  if (!first) co_return;
  stream.expires_never();
  const AgentHello hello = inspectHello(*first);
  MongoUpstream up;
  if (hello.authenticates) {
    up = co_await mongoAgentAuth(stream, flow, *rt, target, host, *first, hello, *upTls);
  } else {
    up = co_await mongoAtlasgateAuth(flow, *rt, target, host, *upTls);
  }
  if (!up.stream) co_return;
  MongoConn c{*this, stream, *up.stream, flow, target, host, rt, up.credential};
  if (!hello.authenticates) {
    // The first message goes the way of every other.
    const auto op = static_cast<mongo::OpCode>(first->header.opCode);
    bool ok = false;
    if (op == mongo::OpCode::Msg)
      ok = co_await mongoMsg(c, *first);
    else if (op == mongo::OpCode::Query)
      ok = co_await mongoQuery(c, *first);
    if (!ok) co_return;
  }
  co_await (mongoFromAgent(c) || mongoToAgent(c));
}

// The agent authenticates nothing: atlasgate does, as the target's database
// login for this agent (none: the connection stays unauthenticated, as a
// driver's monitoring connection is). A temporary user Atlas is still
// deploying fails with AuthenticationFailed: dial again with backoff.
asio::awaitable<MongoUpstream> Server::mongoAtlasgateAuth(const Flow& flow, const Runtime& rt,
                                                          const TargetRuntime& target, const std::string& host,
                                                          ssl::context& upTls) {
  // A mongodb target's credentials are all database logins (config/).
  const CredentialRuntime* cred = chooseCredential(target, flow.agent.name, "");
  if (cred != nullptr && !cred->database) cred = nullptr;
  MongoUpstream out;
  if (cred == nullptr) {
    out.stream = co_await dialMongo(io_, *resolvers_, upTls, rt, target, host, flow);
    co_return out;
  }
  std::int32_t id = 0x41470000;
  const auto deadline = Clock::now() + kDeployWait;
  auto backoff = std::chrono::milliseconds(250);
  asio::steady_timer pause(io_);
  for (;;) {
    auto login = co_await cred->database->login(flow.agent);
    if (!login) {
      log::warn("conn {} agent {}: no database login: {}", flow.id, flow.agent.name, login.error().message);
      co_return MongoUpstream{};
    }
    auto up = co_await dialMongo(io_, *resolvers_, upTls, rt, target, host, flow);
    if (!up) co_return MongoUpstream{};
    auto auth = co_await authenticate(*up, *login, *scramCache_, id, mongo::kDefaultMaxMessageBytes);
    if (auth) {
      log::debug("conn {} agent {}: mongodb {} authenticated as {}", flow.id, flow.agent.name, host,
                 cred->database->describe());
      co_return MongoUpstream{std::move(up), cred->database->describe()};
    }
    const bool retry = login->temporary && auth.error().code == kAuthenticationFailed && Clock::now() < deadline;
    log::info("conn {} agent {}: authenticating as {} on {} failed: {}{}", flow.id, flow.agent.name, login->username,
              host, auth.error().message, retry ? " (the user may still be deploying: retrying)" : "");
    if (!retry) co_return MongoUpstream{};
    pause.expires_after(backoff);
    co_await pause.async_wait(kUseTuple);
    backoff = std::min(backoff * 2, std::chrono::milliseconds(4000));
  }
}

asio::awaitable<MongoUpstream> Server::mongoAgentAuth(TlsSocket& agent, const Flow& flow, const Runtime& rt,
                                                      const TargetRuntime& target, const std::string& host,
                                                      const MongoMessage& hello, const AgentHello& h,
                                                      ssl::context& upTls) {
  auto up = co_await dialMongo(io_, *resolvers_, upTls, rt, target, host, flow);
  if (!up) co_return MongoUpstream{};
  // The hello goes upstream without the agent's authentication fields; its
  // answer comes back with atlasgate's.
  auto forwarded = sanitizedHelloMessage(hello);
  if (!forwarded) co_return MongoUpstream{};
  auto [wec, wn] = co_await asio::async_write(*up, asio::buffer(*forwarded), kUseTuple);
  std::string why;
  if (wec) co_return MongoUpstream{};
  // (No co_await inside ?: anywhere here: GCC 12 miscompiles it.)
  auto reply = co_await readMessage(*up, mongo::kDefaultMaxMessageBytes, why);
  if (!reply) co_return MongoUpstream{};

  std::vector<std::string> httpsHosts;
  for (const auto& t : rt.targets)
    if (t.protocol == config::Protocol::Https) httpsHosts.push_back(t.host);
  std::shared_ptr<vault::Unsealed> chosen;
  mongo::ScramServer::Lookup lookup = [&](std::string_view username) -> std::optional<mongo::ScramCredential> {
    chosen.reset();
    if (captured_ == nullptr) return std::nullopt;
    auto found = captured_->databaseUser(httpsHosts, username, flow.agent.name);
    if (!found.usable || !mongo::checkPassword(found.usable->phantom)) return std::nullopt;
    auto cred = mongo::ScramCredential::derive(found.usable->phantom, saltFor(username), 15000, *scramCache_);
    chosen = std::make_shared<vault::Unsealed>(std::move(*found.usable));
    return cred;
  };
  auto server = std::make_unique<mongo::ScramServer>(lookup);
  std::optional<std::string> speculative;
  if (h.speculative) {
    if (auto p = mongo::DocView(*h.speculative).binary("payload")) {
      auto r = server->first(std::string_view(reinterpret_cast<const char*>(p->data()), p->size()));
      if (r) speculative = std::move(r.value());
    }
  }
  auto edited = editedHelloReply(*reply, h, speculative);
  if (!edited) {
    log::warn("conn {} agent {}: the server's hello reply: {}", flow.id, flow.agent.name, edited.error().message);
    co_return MongoUpstream{};
  }
  auto [aec, an] = co_await asio::async_write(agent, asio::buffer(*edited), kUseTuple);
  if (aec) co_return MongoUpstream{};
  std::int32_t id = 0x41480000;
  for (int step = 0; step < 8; ++step) {
    // Authentication is a few quick round trips: an agent that stalls in it
    // does not keep an upstream connection.
    agent.expires_after(rt.config->limits.handshakeTimeout);
    auto m = co_await readMessage(agent, mongo::kDefaultMaxMessageBytes, why);
    if (!m) co_return MongoUpstream{};
    auto msg = mongo::parseMsg(m->bytes);
    if (!msg) co_return MongoUpstream{};
    auto answer = saslStep(*msg, server, lookup);
    Bytes out = mongo::buildMsg(id++, m->header.requestId, 0, answer.bytes());
    auto [ec, n] = co_await asio::async_write(agent, asio::buffer(out), kUseTuple);
    if (ec) co_return MongoUpstream{};
    if (!server->done() || !chosen) continue;
    // The agent proved it knows the phantom: upstream as that user, with the
    // password Atlas has (which the agent never saw).
    DatabaseLogin login{server->username(), chosen->secret, "admin", false};
    auto auth = co_await authenticatePatiently(*up, login, *scramCache_, id);
    if (!auth) {
      log::warn("conn {} agent {}: authenticating as captured user {} on {} failed: {}", flow.id, flow.agent.name,
                login.username, host, auth.error().message);
      co_return MongoUpstream{};
    }
    log::debug("conn {} agent {}: authenticated with the phantom of {}", flow.id, flow.agent.name, chosen->entry.name);
    co_return MongoUpstream{std::move(up), chosen->entry.name};
  }
  co_return MongoUpstream{};
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
    Bytes out = sanitizedHelloMessage(*parsed);
    auto [ec, n] = co_await asio::async_write(c.up, asio::buffer(out), kUseTuple);
    co_return !ec;
  }
  if (isAuth(info.name)) {
    mongoAudit(c, info, nullptr, "local", "ATLASGATE_AUTHENTICATES", m.bytes.size());
    co_return co_await answer(authenticatedByAtlasgate());
  }
  co_return co_await mongoForward(c, m, info, d, answer);
}

asio::awaitable<bool> Server::mongoForward(MongoConn& c, MongoMessage& m, const mongo::CommandInfo& info,
                                           const policy::Decision& d,
                                           const std::function<asio::awaitable<bool>(const mongo::Doc&)>& answer) {
  if (d.verdict == policy::Verdict::Approve) {
    // Held for an operator: this connection's later commands wait behind
    // it (their order is the agent's), replies keep flowing meanwhile.
    const std::string_view verdict = co_await mongoHold(c, m, info, d);
    mongoAudit(c, info, &d, verdict, "", m.bytes.size());
    if (verdict != "approved") {
      const std::string_view why = verdict == "queue_full"  ? "too many commands are held; retry later"
                                   : verdict == "timed_out" ? "no operator approved it in time"
                                                            : "an operator denied it";
      const std::string text = fmt::format("atlasgate: rule \"{}\": {} ({} on {})", d.ruleName, why, info.name,
                                           d.path.empty() ? info.database : d.path);
      co_return co_await answer(errorDoc(text, kUnauthorized, "Unauthorized"));
    }
    auto [ec, n] = co_await asio::async_write(c.up, asio::buffer(m.bytes), kUseTuple);
    co_return !ec;
  }
  if (d.verdict != policy::Verdict::Allow) {
    counters_.add(d.verdict == policy::Verdict::RateLimited ? Counter::RateLimited : Counter::Blocked);
    mongoAudit(c, info, &d, d.verdict == policy::Verdict::RateLimited ? "rate_limited" : "block", "", m.bytes.size());
    co_return co_await answer(errorDoc(refusalText(d, info), kUnauthorized, "Unauthorized"));
  }
  mongoAudit(c, info, &d, d.logOnlyWouldBe ? "log_only" : "allow", "", m.bytes.size());
  auto [ec, n] = co_await asio::async_write(c.up, asio::buffer(m.bytes), kUseTuple);
  co_return !ec;
}

// An approve rule's command, held: "approved", "denied", "timed_out" or
// "queue_full". The operator sees the command and its namespace, and the
// start of its body as relaxed extended JSON.
asio::awaitable<std::string_view> Server::mongoHold(MongoConn& c, const MongoMessage& m, const mongo::CommandInfo& info,
                                                    const policy::Decision& d) {
  const config::Limits& limits = c.rt->config->limits;
  ApprovalInfo hold;
  hold.agent = c.flow.agent.name;
  hold.agentKey = c.flow.agent.key;
  hold.method = info.name;
  hold.host = c.host;
  hold.path = d.path.empty() ? info.database : d.path;
  hold.rule = d.ruleName;
  hold.since = std::chrono::system_clock::now();
  hold.timeout = d.approveTimeout;
  // What the command does comes first (padding cannot push a hidden $out
  // out of the preview), then the start of its body.
  std::string preview = "accesses:";
  for (const auto& a : info.accesses)
    preview += fmt::format(" {} {}{}{};", a.command, a.database, a.collection.empty() ? "" : ".", a.collection);
  if (m.header.opCode == static_cast<std::int32_t>(mongo::OpCode::Msg) && m.bytes.size() <= 64 * 1024) {
    if (auto parsed = mongo::parseMsg(m.bytes)) {
      if (auto body = mongo::Doc::fromBytes(parsed->body)) preview += " body: " + body->json();
    }
  }
  previewBody(hold, preview);
  hold.bodyBytes = m.bytes.size();
  Admission admission =
      approvals_.add(hold, HoldLimits{limits.maxHeldRequests, limits.maxHeldPerAgent, limits.maxHeldBodyBytes});
  if (!admission.id) co_return "queue_full";
  counters_.add(Counter::ApprovalsHeld);
  log::info("conn {} agent {}: mongodb {} on {} held for approval by rule \"{}\" (request {})", c.flow.id,
            c.flow.agent.name, info.name, hold.path, d.ruleName, admission.id);
  ApprovalOutcome outcome = co_await approvals_.wait(admission.id);
  if (outcome == ApprovalOutcome::Waiting) {  // the connection is ending
    approvals_.abandon(admission.id);
    co_return "abandoned";
  }
  co_return outcome == ApprovalOutcome::Approved ? "approved"
  : outcome == ApprovalOutcome::TimedOut         ? "timed_out"
                                                 : "denied";
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
    Bytes out = sanitizedHelloMessage(*q);
    auto [ec, n] = co_await asio::async_write(c.up, asio::buffer(out), kUseTuple);
    co_return !ec;
  }
  if (isAuth(info.name)) {
    co_return co_await answer(authenticatedByAtlasgate());
  }
  co_return co_await mongoForward(c, m, info, d, answer);
}

}  // namespace atlasgate::proxy
