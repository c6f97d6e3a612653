// The #BP handler takes only the traps of the engine's own fences: every other SIGTRAP goes where
// it would have gone without the engine.
#include <gtest/gtest.h>
#include <signal.h>

#include <atomic>

#include "guest/demo_ops.h"
#include "repatch/engine.h"

namespace repatch {
namespace {

std::atomic<int> g_previous_calls{0};
std::atomic<int> g_previous_code{0};

void previous_handler(int, siginfo_t* info, void*) {
  g_previous_calls.fetch_add(1);
  g_previous_code.store(info->si_code);
}

// Boots, which installs the engine's handler on top of whatever is there, and switches once.
void boot_and_switch() {
  Result<Engine*> engine = boot({.initial = {{"demo_lock", "native"}}});
  ASSERT_TRUE(engine.ok()) << engine.error().to_string();
  const SwitchOutcome outcome = engine.value()->switch_groups({{"demo_lock", "pv"}});
  ASSERT_TRUE(outcome.committed()) << outcome.status.error().to_string();
}

TEST(Int3Handler, OtherTrapsGoToThePreviousHandler) {
  struct sigaction action {};
  action.sa_sigaction = &previous_handler;
  action.sa_flags = SA_SIGINFO;
  sigemptyset(&action.sa_mask);
  ASSERT_EQ(sigaction(SIGTRAP, &action, nullptr), 0);
  boot_and_switch();
  struct sigaction now {};
  ASSERT_EQ(sigaction(SIGTRAP, nullptr, &now), 0);
  EXPECT_NE(now.sa_sigaction, &previous_handler) << "the engine's handler is not installed";

  raise(SIGTRAP);
  EXPECT_EQ(g_previous_calls.load(), 1);
  EXPECT_NE(g_previous_code.load(), SI_KERNEL);
  asm volatile("int3");  // not a site: a breakpoint somebody else planted
  EXPECT_EQ(g_previous_calls.load(), 2);
  EXPECT_EQ(g_previous_code.load(), SI_KERNEL);
}

TEST(Int3Handler, OtherTrapsGetTheDefaultActionWhenNobodyHandledThem) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        boot_and_switch();
        asm volatile("int3");
        _exit(0);
      },
      ::testing::KilledBySignal(SIGTRAP), "");
}

TEST(Int3Handler, IgnoredTrapsStayIgnored) {
  signal(SIGTRAP, SIG_IGN);
  boot_and_switch();
  asm volatile("int3");
  SUCCEED() << "an ignored int3 outside any site is still ignored";
}

}  // namespace
}  // namespace repatch
