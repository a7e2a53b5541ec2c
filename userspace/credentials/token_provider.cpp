#include "credentials/token_provider.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <algorithm>
#include <boost/json.hpp>
#include <boost/url/pct_string_view.hpp>
#include <random>

#include "common/log.h"
#include "common/text.h"
#include "credentials/oauth.h"

namespace atlasgate::credentials {

namespace asio = net::asio;
namespace http = net::http;
using net::kUseTuple;
using upstream::RoundTripResult;
using upstream::UpstreamPool;
namespace json = boost::json;

namespace {

constexpr std::chrono::milliseconds kSafetyMargin{5000};  // never inject a token this close to expiry
constexpr std::chrono::seconds kMaxBackoff{60};

std::chrono::milliseconds backoff(unsigned failures) {
  // 500 ms, 1 s, 2 s ... capped, with up to 25% jitter so that many daemons
  // do not hammer a recovering token endpoint in step.
  auto base = std::chrono::milliseconds(500) * (1u << std::min(failures - 1, 7u));
  base = std::min<std::chrono::milliseconds>(base, kMaxBackoff);
  static thread_local std::minstd_rand rng{std::random_device{}()};
  std::uniform_int_distribution<long> jitter(0, base.count() / 4);
  return base + std::chrono::milliseconds(jitter(rng));
}

}  // namespace

std::string basicCredentials(std::string_view id, std::string_view secret) {
  std::string plain;
  plain.reserve(id.size() + secret.size() + 1);
  plain.append(id).append(":").append(secret);
  std::string out(4 * ((plain.size() + 2) / 3) + 1, '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(plain.data()), static_cast<int>(plain.size()));
  OPENSSL_cleanse(plain.data(), plain.size());
  out.resize(n > 0 ? static_cast<std::size_t>(n) : 0);
  return out;
}

ClientCredentials::~ClientCredentials() { OPENSSL_cleanse(secret.data(), secret.size()); }

namespace {

// application/x-www-form-urlencoded decoding of one component (Boost.URL,
// as the proxy's form parsing); nullopt on a bad escape.
std::optional<std::string> formDecode(std::string_view s) {
  auto pct = boost::urls::make_pct_string_view(s);
  if (!pct) return std::nullopt;
  boost::urls::encoding_opts opt;
  opt.space_as_plus = true;
  return pct->decode(opt);
}

}  // namespace

std::optional<ClientCredentials> parseBasicCredentials(std::string_view a) {
  if (a.size() > 4096 || a.size() < 6 || !text::iequals(a.substr(0, 6), "basic ")) return std::nullopt;
  std::string_view b64 = text::trimOws(a.substr(6));
  if (b64.empty() || b64.size() % 4 != 0) return std::nullopt;
  // '=' only as padding, at the very end (EVP_DecodeBlock would take it inside).
  if (std::size_t eq = b64.find('=');
      eq != std::string_view::npos && (eq < b64.size() - 2 || b64.find_first_not_of('=', eq) != std::string_view::npos))
    return std::nullopt;
  std::string plain(b64.size() / 4 * 3 + 1, '\0');
  int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(plain.data()),
                          reinterpret_cast<const unsigned char*>(b64.data()), static_cast<int>(b64.size()));
  if (n < 0) return std::nullopt;
  std::size_t len = static_cast<std::size_t>(n);
  for (std::size_t pad = 0; pad < 2 && b64.size() > pad && b64[b64.size() - 1 - pad] == '='; ++pad) --len;
  plain.resize(len);
  std::size_t colon = plain.find(':');
  std::optional<ClientCredentials> out;
  if (colon != std::string::npos) {
    auto id = formDecode(std::string_view(plain).substr(0, colon));
    auto secret = formDecode(std::string_view(plain).substr(colon + 1));
    if (id && secret) out = ClientCredentials{std::move(*id), std::move(*secret)};
    if (secret) OPENSSL_cleanse(secret->data(), secret->size());
  }
  OPENSSL_cleanse(plain.data(), plain.size());
  return out;
}

Result<TokenResponse> parseTokenResponse(unsigned status, std::string_view body) {
  boost::system::error_code ec;
  json::value v = json::parse(body, ec);
  if (status != 200) {
    // OAuth error shape: {"error":"invalid_client","error_description":"…"}.
    std::string code = "unknown";
    if (!ec && v.is_object()) {
      if (auto* e = v.as_object().if_contains("error"); e && e->is_string())
        code = std::string(e->as_string().subview(0, std::min<std::size_t>(e->as_string().size(), 64)));
    }
    return makeError("token endpoint answered {} ({})", status, code);
  }
  if (ec || !v.is_object()) return makeError("token endpoint answered 200 with a body that is not a JSON object");
  const json::object& o = v.as_object();
  const json::value* at = o.if_contains("access_token");
  const json::value* tt = o.if_contains("token_type");
  const json::value* ei = o.if_contains("expires_in");
  if (!at || !at->is_string() || at->as_string().empty()) return makeError("token endpoint answer has no access_token");
  if (!tt || !tt->is_string()) return makeError("token endpoint answer has no token_type");
  std::string_view type = tt->as_string();
  if (!text::iequals(type, "bearer"))
    return makeError("token endpoint answered token_type {}, not Bearer", type.substr(0, 32));
  // Lifetimes are capped (a year) so that no arithmetic on them can overflow.
  constexpr std::int64_t kMaxTtl = 365 * 24 * 3600;
  std::int64_t ttl = 3600;
  if (ei) {
    if (ei->is_int64()) {
      ttl = std::min<std::int64_t>(ei->as_int64(), kMaxTtl);
    } else if (ei->is_uint64()) {
      ttl = static_cast<std::int64_t>(std::min<std::uint64_t>(ei->as_uint64(), kMaxTtl));
    } else if (ei->is_double()) {
      double d = ei->as_double();
      if (!(d > 0)) return makeError("token endpoint answered expires_in {}", d);  // also NaN
      ttl = d >= static_cast<double>(kMaxTtl) ? kMaxTtl : static_cast<std::int64_t>(d);
    } else {
      return makeError("token endpoint answered a non-numeric expires_in");
    }
  }
  if (ttl <= 0) return makeError("token endpoint answered expires_in {}", ttl);
  return TokenResponse{std::string(at->as_string()), std::chrono::seconds(ttl)};
}

TokenProvider::TokenProvider(asio::any_io_executor ex, UpstreamPool& pool, std::string host, std::string clientId,
                             Secret secret, std::chrono::seconds timeout)
    : ex_(ex),
      pool_(pool),
      host_(std::move(host)),
      clientId_(std::move(clientId)),
      secret_(std::move(secret)),
      timeout_(timeout),
      wake_(ex) {}

bool TokenProvider::valid(Clock::time_point now) const { return !token_.empty() && now + margin_ < expiresAt_; }

std::string TokenProvider::basicAuth() const { return "Basic " + basicCredentials(clientId_, secret_.view()); }

asio::awaitable<Result<std::string>> TokenProvider::token() {
  // co_spawn may run refresh() at once on this thread: never under mu_.
  bool ahead = false;
  std::optional<std::string> cached;
  {
    // The common case, from any thread: a valid token, copied under the lock.
    std::lock_guard lock(mu_);
    auto now = Clock::now();
    if (valid(now)) {
      cached.emplace(token_.view());
      ahead = now >= refreshAt_ && !refreshing_ && now >= nextAttempt_;
      if (ahead) refreshing_ = true;  // claimed here: one refresh at a time
    }
  }
  if (ahead) asio::co_spawn(ex_, refresh(), asio::detached);  // ahead of expiry, in the background
  if (cached) co_return std::move(*cached);
  // No valid token: wait for one on the provider's own executor, where its
  // timer lives (a worker's request hops there and back).
  if ((co_await asio::this_coro::executor) == ex_) co_return co_await fetched();
  // (co_spawn's result must be default-constructible: Result is not.)
  auto there = [this]() -> asio::awaitable<std::optional<Result<std::string>>> { co_return co_await fetched(); };
  std::optional<Result<std::string>> got = co_await asio::co_spawn(ex_, there(), asio::use_awaitable);
  co_return std::move(*got);
}

asio::awaitable<Result<std::string>> TokenProvider::fetched() {
  bool start = false;
  {
    std::lock_guard lock(mu_);
    auto now = Clock::now();
    if (valid(now)) co_return std::string(token_.view());
    if (!refreshing_) {
      if (failures_ > 0 && now < nextAttempt_)
        co_return makeError("no valid token for {} (last attempt: {})", clientId_, lastError_);
      refreshing_ = start = true;
    }
  }
  if (start) asio::co_spawn(ex_, refresh(), asio::detached);
  // Wait for the one refresh in flight (bounded by its own timeout).
  // (refresh() arms the timer when it begins; re-arming it here would
  // cancel the other waiters' waits.)
  while (isRefreshing()) co_await wake_.async_wait(kUseTuple);
  std::lock_guard lock(mu_);
  if (valid(Clock::now())) co_return std::string(token_.view());
  co_return makeError("no valid token for {} ({})", clientId_, lastError_.empty() ? "unavailable" : lastError_);
}

bool TokenProvider::isRefreshing() const {
  std::lock_guard lock(mu_);
  return refreshing_;
}

asio::awaitable<void> TokenProvider::refresh() {
  // refreshing_ was set by whoever spawned this, under the lock.
  wake_.expires_at(Clock::time_point::max());
  {
    std::lock_guard lock(mu_);
    ++stats_.fetches;
  }
  http::request<http::string_body> req{http::verb::post, "/api/oauth/token", 11};
  req.set(http::field::host, host_);
  req.set(http::field::authorization, basicAuth());
  req.set(http::field::content_type, "application/x-www-form-urlencoded");
  req.set(http::field::accept, "application/json");
  req.set(http::field::user_agent, "atlasgate/0.1");
  req.body() = "grant_type=client_credentials";
  auto started = Clock::now();
  RoundTripResult rt = co_await roundTrip(pool_, host_, std::move(req), timeout_);
  Result<TokenResponse> parsed =
      rt.ec ? Result<TokenResponse>(makeError("token endpoint {} failed: {}", rt.what, rt.ec.message()))
            : parseTokenResponse(rt.response.result_int(), rt.response.body());
  auto now = Clock::now();
  std::unique_lock lock(mu_);
  if (parsed) {
    auto ttl = parsed->expiresIn;
    token_ = Secret(std::move(parsed->accessToken));
    expiresAt_ = started + ttl;
    // Refresh at 80% of the lifetime, and no later than 10 s before expiry
    // where the lifetime allows it; never inject within the last 10% or 5 s.
    std::chrono::milliseconds life = ttl;
    std::chrono::milliseconds at = life * 8 / 10;
    if (life > std::chrono::seconds(20)) at = std::min<std::chrono::milliseconds>(at, life - std::chrono::seconds(10));
    refreshAt_ = started + at;
    margin_ = std::min<std::chrono::milliseconds>(kSafetyMargin, life / 10);
    failures_ = 0;
    lastError_.clear();
    refreshing_ = false;
    lock.unlock();
    log::info("service account {}: token obtained, valid {}s", clientId_, ttl.count());
  } else {
    ++stats_.failures;
    ++failures_;
    lastError_ = parsed.error().message;
    nextAttempt_ = now + backoff(failures_);
    const unsigned attempt = failures_;
    const auto next = nextAttempt_;
    refreshing_ = false;
    lock.unlock();
    log::warn("service account {}: {} (attempt {}, next in {} ms)", clientId_, parsed.error().message, attempt,
              std::chrono::duration_cast<std::chrono::milliseconds>(next - now).count());
  }
  wake_.cancel();
}

void TokenProvider::invalidate(const std::string& token) {
  {
    std::lock_guard lock(mu_);
    if (token_.empty() || token_.view() != token) return;
    ++stats_.invalidations;
    token_.wipe();
    expiresAt_ = {};
  }
  log::warn("service account {}: upstream rejected the current token; fetching a new one", clientId_);
}

asio::awaitable<void> TokenProvider::revoke() {
  std::string current;
  {
    std::lock_guard lock(mu_);
    if (token_.empty()) co_return;
    current = std::string(token_.view());
  }
  http::request<http::string_body> req{http::verb::post, "/api/oauth/revoke", 11};
  req.set(http::field::host, host_);
  req.set(http::field::authorization, basicAuth());
  req.set(http::field::content_type, "application/x-www-form-urlencoded");
  req.set(http::field::accept, "application/json");
  req.body() = "token=" + current + "&token_type_hint=access_token";
  OPENSSL_cleanse(current.data(), current.size());
  RoundTripResult rt = co_await roundTrip(pool_, host_, std::move(req), std::chrono::seconds(3));
  if (rt.ec || rt.response.result_int() != 200)
    log::warn("service account {}: revoking the token failed", clientId_);
  else
    log::info("service account {}: token revoked", clientId_);
  std::lock_guard lock(mu_);
  token_.wipe();
}

TokenStats TokenProvider::stats() const {
  std::lock_guard lock(mu_);
  return stats_;
}

std::string TokenProvider::describeState() const {
  std::lock_guard lock(mu_);
  auto now = Clock::now();
  if (refreshing_) return "refreshing";
  if (valid(now))
    return fmt::format("valid, expires in {}s",
                       std::chrono::duration_cast<std::chrono::seconds>(expiresAt_ - now).count());
  if (failures_ > 0) return fmt::format("failing ({} attempts): {}", failures_, lastError_);
  return "no token yet";
}

}  // namespace atlasgate::credentials
