// The context and lock checks (base/context.h, base/mutex.h): in a build without NDEBUG each stops
// the program with its place named; in an optimised build they are gone, and these tests say so.
#include <gtest/gtest.h>

#include <thread>

#include "base/context.h"
#include "base/mutex.h"

namespace repatch::base {
namespace {

#ifdef NDEBUG
constexpr bool kChecked = false;
#else
constexpr bool kChecked = true;
#endif

void normal_context_code() {
  assert_normal_context();
}

TEST(ContextChecks, NormalContextCodeRunsOutsideHandlers) {
  normal_context_code();
  EXPECT_FALSE(in_signal_handler());
}

TEST(ContextChecksDeathTest, NormalContextCodeInAHandlerStops) {
  if (!kChecked) GTEST_SKIP() << "the checks exist only in builds without NDEBUG";
  EXPECT_DEATH(
      {
        const SignalHandlerScope in_handler;
        normal_context_code();
      },
      "normal-context code called from a signal handler at .*context_checks_test.cpp");
}

TEST(ContextChecksDeathTest, TakingAMutexInAHandlerStops) {
  if (!kChecked) GTEST_SKIP() << "the checks exist only in builds without NDEBUG";
  Mutex mutex;
  EXPECT_DEATH(
      {
        const SignalHandlerScope in_handler;
        const MutexLock lock(mutex);
      },
      "normal-context code called from a signal handler");
}

TEST(ContextChecks, AssertHeldPassesForTheHolder) {
  Mutex mutex;
  const MutexLock lock(mutex);
  mutex.assert_held();
}

TEST(ContextChecksDeathTest, AssertHeldStopsWhenNotHeld) {
  if (!kChecked) GTEST_SKIP() << "the checks exist only in builds without NDEBUG";
  Mutex mutex;
  EXPECT_DEATH(mutex.assert_held(), "a mutex that must be held is not held by this thread");
}

TEST(ContextChecksDeathTest, AssertHeldStopsWhenAnotherThreadHoldsIt) {
  if (!kChecked) GTEST_SKIP() << "the checks exist only in builds without NDEBUG";
  Mutex mutex;
  const MutexLock lock(mutex);
  EXPECT_DEATH(std::thread([&mutex] { mutex.assert_held(); }).join(),
               "a mutex that must be held is not held by this thread");
}

}  // namespace
}  // namespace repatch::base
