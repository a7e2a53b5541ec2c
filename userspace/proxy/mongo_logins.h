#pragma once
// The database logins atlasgate authenticates with on agents' behalf
// (README "MongoDB clusters"): a configured database_user, the same for every
// agent it serves, or a temporary_user: one short-lived user per agent,
// minted through the Admin API with atlasgate's own credential, so that
// Atlas' own database audit names the agent.
//
// Temporary users: POST /api/atlas/v2/groups/{group}/databaseUsers with a
// random 32-character password and deleteAfterDate = now + lifetime (Atlas
// deletes the user itself should atlasgate never come back). A login asked
// for when less than a third of the lifetime is left PATCHes the date
// forward. Users are deleted when the agent goes away (forget) and when the
// daemon stops (removeAll). The password lives in memory only.

#include <chrono>
#include <map>
#include <memory>
#include <string>

#include "config/config.h"
#include "proxy/runtime.h"
#include "upstream/upstream.h"

namespace atlasgate::proxy {

class StaticLogin : public DatabaseLogins {
 public:
  explicit StaticLogin(DatabaseLogin login) : login_(std::move(login)) {}
  net::asio::awaitable<Result<DatabaseLogin>> login(const AgentIdentity&) override { co_return login_; }
  std::string describe() const override { return "database_user:" + login_.username; }

 private:
  DatabaseLogin login_;
};

class TemporaryUsers : public DatabaseLogins {
 public:
  using Clock = std::chrono::system_clock;
  // `api` is the https target's credential atlasgate mints with (tokens or
  // digest); `apiHost` that target.
  TemporaryUsers(upstream::UpstreamPool& pool, std::string apiHost, CredentialRuntime api, config::TemporaryUser spec,
                 std::chrono::seconds timeout);
  net::asio::awaitable<Result<DatabaseLogin>> login(const AgentIdentity& agent) override;
  std::string describe() const override { return "temporary_user:" + spec_.groupId; }

  // The agent is gone: its user is deleted.
  net::asio::awaitable<void> forget(std::string agentName);
  // Shutdown: every user this daemon made is deleted.
  net::asio::awaitable<void> removeAll();
  // Usernames alive now (status, tests).
  std::vector<std::string> users() const;

  // "atlasgate-<agent name, letters digits and '-' only, at most 40>-<8 hex>".
  static std::string usernameFor(std::string_view agentName);

 private:
  struct User {
    DatabaseLogin login;
    Clock::time_point expires;
    bool busy = false;  // a mint or renewal is under way
  };
  net::asio::awaitable<Result<void>> mint(User& u, const std::string& agentName);
  net::asio::awaitable<Result<void>> renew(User& u);
  net::asio::awaitable<Result<void>> remove(const std::string& username);
  // One Admin API call with atlasgate's credential (a token, or a Digest round).
  net::asio::awaitable<Result<unsigned>> call(net::http::verb method, const std::string& path, std::string body);

  upstream::UpstreamPool& pool_;
  std::string apiHost_;
  CredentialRuntime api_;
  config::TemporaryUser spec_;
  std::chrono::seconds timeout_;
  std::map<std::string, std::shared_ptr<User>> users_;  // by agent name
};

}  // namespace atlasgate::proxy
