#include "base/return_if_error.h"

#include <gtest/gtest.h>

#include <string>

namespace repatch {
namespace {

Status fails(const std::string& why) {
  return Error(ErrorCode::kInvalidArgument, why);
}
Result<int> number(bool ok) {
  if (!ok) return Error(ErrorCode::kUnknownName, "no number");
  return 7;
}

Result<std::string> describe(bool number_ok, int& steps) {
  REPATCH_RETURN_IF_ERROR(number(number_ok));
  ++steps;
  REPATCH_RETURN_IF_ERROR(fails("second step refused"));
  ++steps;
  return std::string("unreachable");
}

TEST(ReturnIfError, PassesTheFirstFailureUpAndStops) {
  int steps = 0;
  Result<std::string> r = describe(false, steps);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), ErrorCode::kUnknownName);
  EXPECT_EQ(r.error().message(), "no number");
  EXPECT_EQ(steps, 0);

  r = describe(true, steps);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().message(), "second step refused");
  EXPECT_EQ(steps, 1);
}

TEST(ReturnIfError, SuccessFallsThroughAndEvaluatesOnce) {
  int evaluated = 0;
  auto succeeds = [&]() -> Result<int> {
    ++evaluated;
    return 1;
  };
  auto run = [&]() -> Status {
    REPATCH_RETURN_IF_ERROR(succeeds());
    return fails("after the check");
  };
  EXPECT_EQ(run().error().message(), "after the check");
  EXPECT_EQ(evaluated, 1);
}

TEST(ReturnIfError, IsOneStatementUnderAnUnbracedIf) {
  auto run = [](bool check) -> Status {
    if (check)
      REPATCH_RETURN_IF_ERROR(fails("checked"));
    else
      return fails("not checked");
    return {};
  };
  EXPECT_EQ(run(true).error().message(), "checked");
  EXPECT_EQ(run(false).error().message(), "not checked");
}

}  // namespace
}  // namespace repatch
