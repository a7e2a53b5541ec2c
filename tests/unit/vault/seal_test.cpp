// Sealing (vault/seal.h) on its own: round trip, a fresh nonce per seal, and
// refusal (an error and an empty output, never garbage) of a wrong key, a
// wrong aad, every single flipped byte, a truncated blob, an unknown
// version; and wipe(), which must reach bytes beyond a string's size.

#include <gtest/gtest.h>

#include <string>

#include "vault/seal.h"

using namespace atlasgate;
using namespace atlasgate::vault;

namespace {

Key keyOf(unsigned char fill) {
  Key k;
  for (std::size_t i = 0; i < Key::kBytes; ++i) k.data()[i] = static_cast<unsigned char>(fill + i);
  return k;
}

}  // namespace

TEST(Seal, RoundTripAndLayout) {
  Key k = keyOf(1);
  const std::string plain = "the private key 0123456789abcdef";
  auto blob = seal(k, plain, "aad");
  ASSERT_TRUE(blob) << blob.error().message;
  ASSERT_EQ(blob->size(), 1 + kNonceBytes + plain.size() + kTagBytes);
  EXPECT_EQ(static_cast<unsigned char>((*blob)[0]), kSealVersion);
  EXPECT_EQ(blob->find(plain), std::string::npos);
  std::string out = "previous";
  ASSERT_TRUE(unseal(k, *blob, "aad", out));
  EXPECT_EQ(out, plain);
}

TEST(Seal, EmptyPlaintextRoundTrips) {
  Key k = keyOf(1);
  auto blob = seal(k, "", "aad");
  ASSERT_TRUE(blob);
  EXPECT_EQ(blob->size(), kSealOverhead);
  std::string out = "x";
  ASSERT_TRUE(unseal(k, *blob, "aad", out));
  EXPECT_EQ(out, "");
  EXPECT_FALSE(unseal(k, *blob, "other", out));
}

TEST(Seal, FreshNonceEverySeal) {
  Key k = keyOf(1);
  auto a = seal(k, "same", "aad");
  auto b = seal(k, "same", "aad");
  ASSERT_TRUE(a && b);
  EXPECT_NE(a->substr(1, kNonceBytes), b->substr(1, kNonceBytes));
  EXPECT_NE(*a, *b);
}

TEST(Seal, WrongKeyIsAnErrorNotGarbage) {
  auto blob = seal(keyOf(1), "secret value", "aad");
  ASSERT_TRUE(blob);
  std::string out = "previous";
  auto r = unseal(keyOf(2), *blob, "aad", out);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("does not authenticate"), std::string::npos) << r.error().message;
  EXPECT_EQ(out, "");
}

TEST(Seal, WrongAadIsRefused) {
  Key k = keyOf(1);
  auto blob = seal(k, "secret value", std::string("name\0secret", 11));
  ASSERT_TRUE(blob);
  std::string out;
  EXPECT_FALSE(unseal(k, *blob, std::string("name\0phantom", 12), out));
  EXPECT_FALSE(unseal(k, *blob, "name", out));
  EXPECT_FALSE(unseal(k, *blob, "", out));
  EXPECT_EQ(out, "");
  EXPECT_TRUE(unseal(k, *blob, std::string("name\0secret", 11), out));
}

TEST(Seal, EveryFlippedBitIsRefused) {
  Key k = keyOf(1);
  auto blob = seal(k, "a secret", "aad");
  ASSERT_TRUE(blob);
  for (std::size_t i = 0; i < blob->size(); ++i) {
    for (int bit = 0; bit < 8; ++bit) {
      std::string bad = *blob;
      bad[i] = static_cast<char>(bad[i] ^ (1 << bit));
      std::string out;
      EXPECT_FALSE(unseal(k, bad, "aad", out)) << "byte " << i << " bit " << bit;
      EXPECT_EQ(out, "");
    }
  }
}

TEST(Seal, TruncatedExtendedAndUnknownVersionAreRefused) {
  Key k = keyOf(1);
  auto blob = seal(k, "a secret", "aad");
  ASSERT_TRUE(blob);
  std::string out;
  for (std::size_t n : {std::size_t{0}, std::size_t{1}, kSealOverhead - 1, blob->size() - 1}) {
    EXPECT_FALSE(unseal(k, blob->substr(0, n), "aad", out)) << n;
  }
  EXPECT_FALSE(unseal(k, *blob + "x", "aad", out));
  std::string v2 = *blob;
  v2[0] = 2;
  auto r = unseal(k, v2, "aad", out);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("unknown version 2"), std::string::npos) << r.error().message;
}

TEST(Seal, WipeReachesTheWholeBuffer) {
  // A short string lives in the object itself; a moved-from or shortened
  // one keeps its old bytes past size(): wipe must zero them too.
  std::string s = "0123456789";
  const char* p = s.data();
  s.resize(2);
  wipe(s);
  EXPECT_TRUE(s.empty());
  for (int i = 0; i < 10; ++i) EXPECT_EQ(p[i], '\0') << i;

  std::string longer(100, 'S');
  const char* q = longer.data();
  std::size_t cap = longer.capacity();
  wipe(longer);
  EXPECT_EQ(longer.data(), q);  // the same buffer, not a fresh one
  for (std::size_t i = 0; i < cap; ++i) ASSERT_EQ(q[i], '\0') << i;
}

TEST(Seal, KeyIsWipedWhenMovedFrom) {
  Key a = keyOf(7);
  Key b = std::move(a);
  for (std::size_t i = 0; i < Key::kBytes; ++i) {
    EXPECT_EQ(a.data()[i], 0) << i;  // NOLINT(bugprone-use-after-move): that is the point
    EXPECT_EQ(b.data()[i], static_cast<unsigned char>(7 + i));
  }
}
