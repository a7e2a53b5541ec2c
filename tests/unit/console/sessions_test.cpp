// The console's sign-in links, sessions and CSRF tokens (console/sessions.h),
// with time passed in.
#include "console/sessions.h"

#include <gtest/gtest.h>

#include <set>

using namespace atlasgate::console;
using namespace std::chrono_literals;

namespace {

SteadyTime t0() { return SteadyTime(std::chrono::hours(1000)); }

TEST(RandomToken, Is43Base64UrlCharactersAndNeverRepeats) {
  std::set<std::string> seen;
  for (int i = 0; i < 200; ++i) {
    std::string t = randomToken();
    ASSERT_EQ(t.size(), 43u);
    for (char c : t) EXPECT_TRUE(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_') << t;
    EXPECT_TRUE(seen.insert(t).second);
  }
}

TEST(Sessions, ALinkOpensOneSessionAndIsThenSpent) {
  Sessions s(3600s);
  std::string link = s.mintSignIn(t0());
  Sessions::Opened a, b;
  EXPECT_EQ(s.signIn(link, t0() + 1s, a), Sessions::SignInResult::Opened);
  EXPECT_EQ(a.key.size(), 43u);
  EXPECT_EQ(a.lifetime, 3600s);
  EXPECT_NE(a.key, link);
  // The second use (a link preview, a shoulder-surfer) gets nothing.
  EXPECT_EQ(s.signIn(link, t0() + 2s, b), Sessions::SignInResult::Refused);
  EXPECT_TRUE(b.key.empty());
  ASSERT_NE(s.find(a.key, t0() + 3s), nullptr);
  EXPECT_EQ(s.open(), 1u);
}

TEST(Sessions, AnUnusedLinkExpiresAfterTenMinutes) {
  Sessions s(3600s);
  std::string early = s.mintSignIn(t0());
  std::string late = s.mintSignIn(t0());
  Sessions::Opened o;
  EXPECT_EQ(s.signIn(early, t0() + 9min + 59s, o), Sessions::SignInResult::Opened);
  EXPECT_EQ(s.signIn(late, t0() + 10min, o), Sessions::SignInResult::Refused);
}

TEST(Sessions, ASessionEndsAtItsLifetimeAndOnSignOut) {
  Sessions s(60s);
  Sessions::Opened a, b;
  ASSERT_EQ(s.signIn(s.mintSignIn(t0()), t0(), a), Sessions::SignInResult::Opened);
  ASSERT_EQ(s.signIn(s.mintSignIn(t0()), t0(), b), Sessions::SignInResult::Opened);
  EXPECT_NE(s.find(a.key, t0() + 59s), nullptr);
  EXPECT_EQ(s.find(a.key, t0() + 60s), nullptr);
  EXPECT_EQ(s.find(a.key, t0() + 1s), nullptr) << "an expired session is forgotten, not revived";
  s.signOut(b.key);
  EXPECT_EQ(s.find(b.key, t0() + 1s), nullptr);
}

TEST(Sessions, KeysThatAreNotSessionsFindNothing) {
  Sessions s(60s);
  Sessions::Opened a;
  std::string link = s.mintSignIn(t0());
  ASSERT_EQ(s.signIn(link, t0(), a), Sessions::SignInResult::Opened);
  EXPECT_EQ(s.find("", t0()), nullptr);
  EXPECT_EQ(s.find(link, t0()), nullptr) << "a sign-in token is no session key";
  std::string other = a.key;
  other[0] = other[0] == 'A' ? 'B' : 'A';
  EXPECT_EQ(s.find(other, t0()), nullptr);
  EXPECT_EQ(s.find(a.key + "x", t0()), nullptr);
  EXPECT_EQ(s.find(std::string(43, '\0'), t0()), nullptr);
}

TEST(Sessions, CsrfTokenMustMatchExactly) {
  Sessions s(60s);
  Sessions::Opened a;
  ASSERT_EQ(s.signIn(s.mintSignIn(t0()), t0(), a), Sessions::SignInResult::Opened);
  const auto* session = s.find(a.key, t0());
  ASSERT_NE(session, nullptr);
  EXPECT_EQ(a.csrf.size(), 43u);
  EXPECT_NE(a.csrf, a.key);
  EXPECT_EQ(session->csrfDigest.find(a.csrf), std::string::npos) << "only its digest is kept";
  EXPECT_TRUE(Sessions::csrfMatches(*session, a.csrf));
  EXPECT_FALSE(Sessions::csrfMatches(*session, ""));
  EXPECT_FALSE(Sessions::csrfMatches(*session, a.key)) << "the cookie is not the CSRF token";
  EXPECT_FALSE(Sessions::csrfMatches(*session, a.csrf.substr(1)));
  EXPECT_FALSE(Sessions::csrfMatches(*session, a.csrf + "A"));
  Sessions::Session empty{t0(), ""};
  EXPECT_FALSE(Sessions::csrfMatches(empty, "")) << "no token is never a match";
  EXPECT_FALSE(Sessions::csrfMatches(empty, a.csrf));
}

TEST(Sessions, GuessingIsSlowedDownAndTheBucketRefills) {
  Sessions s(60s);
  Sessions::Opened o;
  std::string good = s.mintSignIn(t0());
  for (int i = 0; i < Sessions::kSignInBurst; ++i)
    EXPECT_EQ(s.signIn(randomToken(), t0(), o), Sessions::SignInResult::Refused) << i;
  EXPECT_EQ(s.signIn(randomToken(), t0(), o), Sessions::SignInResult::RateLimited);
  // A local process that keeps guessing cannot lock the operator out: a
  // live link is honoured whatever the bucket holds.
  EXPECT_EQ(s.signIn(good, t0(), o), Sessions::SignInResult::Opened);
  EXPECT_EQ(s.signIn(good, t0(), o), Sessions::SignInResult::RateLimited) << "spent now, and a miss";
  EXPECT_EQ(s.signIn(randomToken(), t0() + Sessions::kSignInRefill, o), Sessions::SignInResult::Refused)
      << "the bucket refills";
}

TEST(Sessions, OutstandingLinksAndSessionsAreCapped) {
  Sessions s(3600s);
  std::string first = s.mintSignIn(t0());
  for (std::size_t i = 0; i < Sessions::kMaxSignIns; ++i) s.mintSignIn(t0() + std::chrono::seconds(i + 1));
  EXPECT_EQ(s.pendingSignIns(), Sessions::kMaxSignIns);
  Sessions::Opened o;
  EXPECT_EQ(s.signIn(first, t0() + 100s, o), Sessions::SignInResult::Refused) << "the oldest link made room";
  Sessions many(3600s);
  for (std::size_t i = 0; i < Sessions::kMaxSessions + 5; ++i) {
    Sessions::Opened x;
    ASSERT_EQ(many.signIn(many.mintSignIn(t0()), t0() + std::chrono::seconds(i), x), Sessions::SignInResult::Opened);
  }
  EXPECT_EQ(many.open(), Sessions::kMaxSessions);
}

}  // namespace
