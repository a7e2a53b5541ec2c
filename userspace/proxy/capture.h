#pragma once
// Credential capture, the pure part: which Atlas requests mint or drop a
// credential, and how a request or response is rewritten so that the real
// secret never reaches the agent. No sockets, no vault: the session
// (server.cpp) and the registry (captured.h) do the I/O.
//
//   minting responses  POST …/apiKeys, …/serviceAccounts, …/secrets, …/certs:
//                      each secret is swapped for a phantom of the same shape
//                      (a v4 UUID for a UUID, "mdb_sa_sk_" and the same
//                      alphabet and length for a service-account secret, a
//                      private key of the same type and size for a PEM key);
//                      every other byte of the body stays as Atlas sent it.
//   outgoing passwords POST …/databaseUsers and PATCH of one with a password:
//                      Atlas receives a strong random password; the agent's
//                      own becomes its phantom.
//   deletions          DELETE of a key, account, secret or user drops what
//                      the vault holds for it once Atlas said yes.
// tests/unit/proxy/capture_test.cpp covers the table and every rewrite.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "vault/vault.h"

namespace atlasgate::proxy::capture {

enum class Action {
  MintApiKey,                // POST /orgs/{o}/apiKeys, POST /groups/{g}/apiKeys (v2 and v1.0)
  MintServiceAccount,        // POST /orgs|groups/{x}/serviceAccounts
  MintServiceAccountSecret,  // POST …/serviceAccounts/{clientId}/secrets
  MintCertificate,           // POST /groups/{g}/databaseUsers/{username}/certs
  SetDatabasePassword,       // POST /groups/{g}/databaseUsers; PATCH /groups/{g}/databaseUsers/{db}/{user}
  MintOrganization,          // POST /orgs: its first API key and service account
  Forget,                    // DELETE of something the vault may hold
};

struct Forget {
  vault::Kind kind;
  std::string object;  // exact, or a prefix followed by "/" (vault::findByObject)
};

struct Plan {
  Action action = Action::MintApiKey;
  std::string scope;            // "orgs/<id>" or "groups/<id>"
  std::string object;           // clientId (secrets), username (certs), "<db>/<user>" (PATCH)
  std::vector<Forget> forgets;  // Action::Forget
};

// nullopt: the request neither mints nor drops a credential. `target` is the
// request-target as the agent sent it; it is normalised like the rules'
// paths, so no spelling of a minting path escapes capture.
std::optional<Plan> planFor(std::string_view method, std::string_view target);

// The database users a request may change, create or delete: every segment
// after databaseUsers for any method but GET and HEAD on
// .../groups/{g}/databaseUsers/... (either reading of the path: {db}/{user},
// {user}/certs), and the `username` of a POST to .../databaseUsers
// (or a body atlasgate cannot read: "" then, which callers must treat as
// unknown). Used to keep agents off the users atlasgate itself manages.
std::vector<std::string> databaseUsersTouched(std::string_view method, std::string_view target, std::string_view body);

// Who minted it, where, when: the metadata of the entries a capture makes.
struct Origin {
  std::string target;  // the Atlas host
  std::string owner;   // the agent's name
  std::int64_t now = 0;
  static Origin current(std::string target, std::string owner);  // at the wall clock's now
};

struct Minted {
  vault::Entry entry;
  std::string secret;
  std::string phantom;
  Minted() = default;
  ~Minted();
  Minted(Minted&&) noexcept = default;
  Minted& operator=(Minted&&) noexcept = default;
};

struct Rewritten {
  std::string body;
  std::vector<Minted> minted;
  std::string unclaimed;  // what Atlas made, for the operator if the vault fails ("API key 5f1a… (public key x)")
};

// A 2xx minting response: its secrets swapped for phantoms. An error means
// the body cannot be shown to the agent at all (no secret where one must be,
// not the shape Atlas documents): the session withholds it.
Result<Rewritten> rewriteResponse(const Plan& plan, std::string_view body, const Origin& origin);

// POST or PATCH of a database user: nullopt when the body carries no
// password (X.509, AWS IAM and LDAP users have none). The entry is pending
// until Atlas answers 2xx.
struct PasswordSwap {
  std::string body;  // what Atlas receives
  Minted minted;     // secret: the password Atlas gets; phantom: the agent's
};
Result<std::optional<PasswordSwap>> swapDatabasePassword(const Plan& plan, std::string_view body, const Origin& origin);

// The safety net behind the table: a 2xx answer that capture did not plan
// for (an endpoint Atlas adds, a shape that drifts) is watched as it is
// relayed, and the relay stops before bytes that look like a minted secret
// reach the agent: an unmasked "privateKey" value, a service-account secret
// ("mdb_sa_sk_" not followed by a mask), a PEM private key, or `extra` (the
// real password just given to Atlas). Streaming: a match split across
// pieces is found.
class Tripwire {
 public:
  explicit Tripwire(std::string extra = {}) : extra_(std::move(extra)) {}
  ~Tripwire();
  // Whether this piece (after the earlier ones) shows a secret.
  bool hit(std::string_view piece);

 private:
  bool scan(std::string_view s) const;
  static constexpr std::size_t kExtraLead = 8;  // of the extra secret's characters: enough to trip
  std::string extra_;
  std::string tail_;  // the end of the previous piece, for matches across pieces
};

// Same shape, other value: the phantom handed to the agent for `secret`.
std::string phantomLike(std::string_view secret);
// A password Atlas accepts, with ~190 bits of entropy.
std::string strongPassword();

}  // namespace atlasgate::proxy::capture
