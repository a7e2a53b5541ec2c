#include "proxy/mongo_logins.h"

#include <boost/json.hpp>
#include <openssl/rand.h>

#include "common/log.h"
#include "credentials/digest.h"
#include "credentials/token_provider.h"
#include "proxy/capture.h"
#include "upstream/call.h"

namespace atlasgate::proxy {

namespace json = boost::json;

namespace {

constexpr std::string_view kAccept = "application/vnd.atlas.2023-01-01+json";

std::string isoDate(TemporaryUsers::Clock::time_point t) {
  const std::time_t tt = TemporaryUsers::Clock::to_time_t(t);
  std::tm tm{};
  gmtime_r(&tt, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string randomHex(std::size_t bytes) {
  std::string raw(bytes, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(raw.data()), static_cast<int>(bytes)) != 1)
    throw std::runtime_error("RAND_bytes failed");
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned char c : raw) {
    out.push_back(kHex[c >> 4]);
    out.push_back(kHex[c & 15]);
  }
  return out;
}

// Users are named after agents, but a path segment must stay one segment.
std::string pathSegment(std::string_view s) {
  std::string out;
  for (char c : s) {
    if (std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.')
      out.push_back(c);
    else
      out += fmt::format("%{:02X}", static_cast<unsigned char>(c));
  }
  return out;
}

}  // namespace

TemporaryUsers::TemporaryUsers(upstream::UpstreamPool& pool, std::string apiHost, CredentialRuntime api,
                               config::TemporaryUser spec, std::chrono::seconds timeout)
    : pool_(pool), apiHost_(std::move(apiHost)), api_(std::move(api)), spec_(std::move(spec)), timeout_(timeout) {}

std::string TemporaryUsers::usernameFor(std::string_view agentName) {
  std::string base;
  for (char c : agentName) {
    const auto u = static_cast<unsigned char>(c);
    if (std::isalnum(u))
      base.push_back(static_cast<char>(std::tolower(u)));
    else if (!base.empty() && base.back() != '-')
      base.push_back('-');
    if (base.size() >= 40) break;
  }
  while (!base.empty() && base.back() == '-') base.pop_back();
  if (base.empty()) base = "agent";
  return "atlasgate-" + base + "-" + randomHex(4);
}

std::vector<std::string> TemporaryUsers::users() const {
  std::vector<std::string> out;
  for (const auto& [key, u] : users_)
    if (!u->login.username.empty()) out.push_back(u->login.username);
  return out;
}

net::asio::awaitable<Result<DatabaseLogin>> TemporaryUsers::login(const AgentIdentity& agent) {
  auto executor = co_await net::asio::this_coro::executor;
  std::shared_ptr<User>& slot = users_[agent.name];  // one user per agent name, across its launches
  if (!slot) slot = std::make_shared<User>();
  std::shared_ptr<User> u = slot;
  // One mint or renewal at a time per agent; the others wait for it.
  net::asio::steady_timer wait(executor);
  for (int i = 0; u->busy && i < 2400; ++i) {
    wait.expires_after(std::chrono::milliseconds(50));
    co_await wait.async_wait(net::kUseTuple);
  }
  if (u->busy) co_return makeError("a temporary user for agent {} is still being made", agent.name);
  const auto now = Clock::now();
  if (!u->login.username.empty() && u->expires - now > spec_.lifetime / 3) co_return u->login;
  u->busy = true;
  // (No co_await inside ?: — GCC 12 destroys both branches' temporaries.)
  Result<void> r;
  if (u->login.username.empty() || u->expires <= now + std::chrono::minutes(1))
    r = co_await mint(*u, agent.name);
  else
    r = co_await renew(*u);
  u->busy = false;
  if (!r) co_return r.error();
  co_return u->login;
}

net::asio::awaitable<Result<void>> TemporaryUsers::mint(User& u, const std::string& agentName) {
  DatabaseLogin login;
  login.username = usernameFor(agentName);
  login.password = capture::strongPassword();
  login.authSource = "admin";
  login.temporary = true;
  const auto expires = Clock::now() + spec_.lifetime;
  json::array roles;
  for (const auto& r : spec_.roles) {
    json::object o{{"roleName", r.roleName}, {"databaseName", r.databaseName}};
    if (!r.collectionName.empty()) o["collectionName"] = r.collectionName;
    roles.push_back(std::move(o));
  }
  json::object body{{"databaseName", "admin"},
                    {"username", login.username},
                    {"password", login.password},
                    {"roles", std::move(roles)},
                    {"deleteAfterDate", isoDate(expires)},
                    {"description", "atlasgate temporary user for agent " + agentName}};
  if (!spec_.scopes.empty()) {
    json::array scopes;
    for (const auto& s : spec_.scopes) scopes.push_back(json::object{{"name", s}, {"type", "CLUSTER"}});
    body["scopes"] = std::move(scopes);
  }
  auto status =
      co_await call(net::http::verb::post, fmt::format("/api/atlas/v2/groups/{}/databaseUsers", spec_.groupId),
                    json::serialize(body));
  if (!status) co_return status.error();
  if (*status != 200 && *status != 201)
    co_return makeError("creating temporary user {} for agent {}: Atlas answered {}", login.username, agentName,
                        *status);
  log::info("temporary database user {} made for agent {} (until {})", login.username, agentName, isoDate(expires));
  u.login = std::move(login);
  u.expires = expires;
  co_return Result<void>{};
}

net::asio::awaitable<Result<void>> TemporaryUsers::renew(User& u) {
  const auto expires = Clock::now() + spec_.lifetime;
  json::object body{{"deleteAfterDate", isoDate(expires)}};
  auto status = co_await call(
      net::http::verb::patch,
      fmt::format("/api/atlas/v2/groups/{}/databaseUsers/admin/{}", spec_.groupId, pathSegment(u.login.username)),
      json::serialize(body));
  if (!status) co_return status.error();
  if (*status != 200) co_return makeError("renewing temporary user {}: Atlas answered {}", u.login.username, *status);
  u.expires = expires;
  co_return Result<void>{};
}

net::asio::awaitable<Result<void>> TemporaryUsers::remove(const std::string& username) {
  auto status = co_await call(
      net::http::verb::delete_,
      fmt::format("/api/atlas/v2/groups/{}/databaseUsers/admin/{}", spec_.groupId, pathSegment(username)), {});
  if (!status) co_return status.error();
  if (*status != 200 && *status != 202 && *status != 204 && *status != 404)
    co_return makeError("deleting temporary user {}: Atlas answered {}", username, *status);
  log::info("temporary database user {} deleted", username);
  co_return Result<void>{};
}

net::asio::awaitable<void> TemporaryUsers::forget(std::string agentName) {
  auto it = users_.find(agentName);
  if (it == users_.end()) co_return;
  std::shared_ptr<User> u = it->second;
  users_.erase(it);
  if (u->login.username.empty()) co_return;
  if (auto r = co_await remove(u->login.username); !r) log::warn("{}", r.error().message);
}

net::asio::awaitable<void> TemporaryUsers::removeAll() {
  auto users = std::move(users_);
  users_.clear();
  for (auto& [key, u] : users) {
    if (u->login.username.empty()) continue;
    if (auto r = co_await remove(u->login.username); !r) log::warn("{}", r.error().message);
  }
}

net::asio::awaitable<Result<unsigned>> TemporaryUsers::call(net::http::verb method, const std::string& path,
                                                            std::string body) {
  std::string token;
  for (int round = 0; round < 3; ++round) {
    net::http::request<net::http::string_body> req{method, path, 11};
    req.set(net::http::field::host, apiHost_);
    req.set(net::http::field::accept, kAccept);
    req.set(net::http::field::user_agent, "atlasgate");
    if (!body.empty()) {
      req.set(net::http::field::content_type, kAccept);
      req.body() = body;
    }
    req.prepare_payload();
    if (api_.tokens) {
      auto t = co_await api_.tokens->token();
      if (!t) co_return t.error();
      token = std::move(t.value());
      req.set(net::http::field::authorization, "Bearer " + token);
    } else if (api_.digest) {
      if (auto h = api_.digest->authorize(req.method_string(), req.target()))
        req.set(net::http::field::authorization, *h);
    }
    auto res = co_await upstream::roundTrip(pool_, apiHost_, std::move(req), timeout_);
    if (res.ec) co_return makeError("Admin API {} {}: {}", res.what, apiHost_, res.ec.message());
    const unsigned status = res.response.result_int();
    if (status != 401) co_return status;
    if (api_.digest) {
      auto ch = credentials::parseDigestChallenge(res.response[net::http::field::www_authenticate]);
      if (!ch) co_return status;
      (void)api_.digest->onChallenge(res.response[net::http::field::www_authenticate]);
    } else if (api_.tokens && round == 0) {
      api_.tokens->invalidate(token);
    } else {
      co_return status;
    }
  }
  co_return 401u;
}

}  // namespace atlasgate::proxy
