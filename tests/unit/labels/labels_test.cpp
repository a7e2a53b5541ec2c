// Kubernetes label selectors (labels/labels.h): the forms Kubernetes
// accepts, what they match, and what is refused. Pure, no I/O.

#include <string>

#include <gtest/gtest.h>

#include "labels/labels.h"

using namespace atlasgate::labels;

TEST(LabelSelector, EqualityForms) {
  Labels l{{"atlasgate.io/inject", "true"}, {"app", "ops"}};
  for (const char* s : {"atlasgate.io/inject=true", "atlasgate.io/inject==true", " atlasgate.io/inject = true "}) {
    auto sel = LabelSelector::parse(s);
    ASSERT_TRUE(sel) << s << ": " << sel.error().message;
    EXPECT_TRUE(sel->matches(l)) << s;
    EXPECT_FALSE(sel->matches({{"atlasgate.io/inject", "false"}})) << s;
    EXPECT_FALSE(sel->matches({})) << s;
    EXPECT_EQ(sel->str(), "atlasgate.io/inject=true");
  }
}

TEST(LabelSelector, NotEqualsMatchesAbsentKey) {
  auto sel = LabelSelector::parse("tier!=prod");
  ASSERT_TRUE(sel);
  EXPECT_TRUE(sel->matches({}));
  EXPECT_TRUE(sel->matches({{"tier", "dev"}}));
  EXPECT_FALSE(sel->matches({{"tier", "prod"}}));
}

TEST(LabelSelector, ExistsAndNotExists) {
  auto sel = LabelSelector::parse("agent, !legacy");
  ASSERT_TRUE(sel) << sel.error().message;
  EXPECT_TRUE(sel->matches({{"agent", ""}}));
  EXPECT_FALSE(sel->matches({}));
  EXPECT_FALSE(sel->matches({{"agent", "x"}, {"legacy", "1"}}));
  EXPECT_EQ(sel->str(), "agent,!legacy");
}

TEST(LabelSelector, SetBased) {
  auto sel = LabelSelector::parse("env in (prod, staging),team notin (x)");
  ASSERT_TRUE(sel) << sel.error().message;
  EXPECT_TRUE(sel->matches({{"env", "prod"}}));
  EXPECT_TRUE(sel->matches({{"env", "staging"}, {"team", "y"}}));
  EXPECT_FALSE(sel->matches({{"env", "dev"}}));
  EXPECT_FALSE(sel->matches({{"team", "y"}}));  // in needs the key
  EXPECT_FALSE(sel->matches({{"env", "prod"}, {"team", "x"}}));
  EXPECT_EQ(sel->str(), "env in (prod,staging),team notin (x)");
  ASSERT_EQ(sel->requirements().size(), 2u);
  EXPECT_EQ(sel->requirements()[0].op, LabelRequirement::Op::In);
}

TEST(LabelSelector, CommaIsAnd) {
  auto sel = LabelSelector::parse("a=1,b=2,c");
  ASSERT_TRUE(sel);
  EXPECT_TRUE(sel->matches({{"a", "1"}, {"b", "2"}, {"c", "3"}}));
  EXPECT_FALSE(sel->matches({{"a", "1"}, {"b", "2"}}));
  EXPECT_FALSE(sel->matches({{"a", "1"}, {"b", "3"}, {"c", "3"}}));
}

TEST(LabelSelector, EmptyMatchesEverything) {
  for (const char* s : {"", "   "}) {
    auto sel = LabelSelector::parse(s);
    ASSERT_TRUE(sel);
    EXPECT_TRUE(sel->empty());
    EXPECT_TRUE(sel->matches({}));
    EXPECT_EQ(sel->str(), "");
  }
}

TEST(LabelSelector, EmptyValue) {
  auto sel = LabelSelector::parse("a=");
  ASSERT_TRUE(sel) << sel.error().message;
  EXPECT_TRUE(sel->matches({{"a", ""}}));
  EXPECT_FALSE(sel->matches({{"a", "x"}}));
}

TEST(LabelSelector, Errors) {
  for (const char* s : {"a=b,", ",a", "a b", "a in b", "a in (b", "a in (b,)", "a>3", "-a=b", "a=-b", "Ex.com/a=b",
                        "a/b/c=d", "a=b/c", "!", "a notin", "a=b c", "a in ()"}) {
    auto sel = LabelSelector::parse(s);
    EXPECT_FALSE(sel) << s;
    if (!sel) {
      EXPECT_NE(sel.error().message.find("label selector"), std::string::npos) << sel.error().message;
    }
  }
  std::string longName(64, 'a');
  EXPECT_FALSE(LabelSelector::parse(longName + "=x"));
  EXPECT_FALSE(LabelSelector::parse("a=" + longName));
  EXPECT_TRUE(LabelSelector::parse(std::string(63, 'a') + "=" + std::string(63, 'b')));
}
