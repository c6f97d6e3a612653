#include "base/errno_text.h"

#include <gtest/gtest.h>

#include <cerrno>

namespace repatch::text {
namespace {

TEST(ErrnoText, NamesAndDescribesAKnownValue) {
  EXPECT_STREQ(errno_name(ENOMEM), "ENOMEM");
  EXPECT_STREQ(errno_description(ENOENT), "No such file or directory");
  EXPECT_EQ(errno_text(EAGAIN), "Resource temporarily unavailable (EAGAIN)");
}

TEST(ErrnoText, AnUnknownValueKeepsItsNumber) {
  constexpr int kUnknown = 4321;
  EXPECT_STREQ(errno_name(kUnknown), "an unknown errno");
  EXPECT_STREQ(errno_description(kUnknown), "Unknown error");
  EXPECT_EQ(errno_text(kUnknown), "Unknown error (errno 4321)");
  EXPECT_EQ(errno_text(-1), "Unknown error (errno -1)");
}

}  // namespace
}  // namespace repatch::text
