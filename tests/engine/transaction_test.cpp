// Attempts are handed over so that an executor still holding attempt n never writes it over
// attempt n + 1 (engine/transaction.h, publish_and_drain).
#include "engine/transaction.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "engine/switch_protocol.h"
#include "guest/demo_ops.h"
#include "guest/demo_workload.h"
#include "repatch/engine.h"
#include "sync/vcpu.h"

namespace repatch {
namespace {

using Clock = std::chrono::steady_clock;

// An executor that is no vCPU and finds nobody inside an op, as a late #BP executor would.
class LateExecutor final : public engine::Executor {
 public:
  bool quiescent(engine::Transaction& attempt) noexcept override {
    return attempt.thread_in_op() == engine::kNoOpThread;
  }
};

engine::Transaction* published_now() {
  return engine::with_published([](engine::Transaction* t) noexcept { return t; });
}

// A late executor: it took hold of attempt n (as a thread that trapped on n's fence and was
// descheduled would), and replays n once attempt n + 1 has been published. The replay must find n
// finished and change nothing, because n + 1 must not write before the late executor has left.
TEST(Transaction, LateExecutorNeverWritesAnOldAttemptOverANewOne) {
  Result<Engine*> booted = boot({.initial = {{"demo_clock", "fixed"}}});
  ASSERT_TRUE(booted.ok()) << booted.error().to_string();
  Engine* engine = booted.value();
  demo_clock_value = 0x1234;
  ASSERT_TRUE(engine->switch_groups({{"demo_clock", "shared"}}).committed());  // attempt n
  ASSERT_EQ(demo::read_clock(), 0x1234u);

  std::atomic<bool> holding{false};
  std::atomic<bool> saw_next{false};
  std::thread late([&] {
    engine::with_published([&](engine::Transaction* n) noexcept {
      holding.store(true);
      const auto until = Clock::now() + std::chrono::seconds(5);
      while (published_now() == n && Clock::now() < until)
        std::this_thread::yield();
      saw_next.store(published_now() != n);
      // Give a primary that did not wait every chance to write its attempt first.
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      LateExecutor executor;
      engine::run_switch_protocol(*n, executor);
      return 0;
    });
  });
  while (!holding.load())
    std::this_thread::yield();
  const SwitchOutcome back = engine->switch_groups({{"demo_clock", "fixed"}});  // attempt n + 1
  late.join();
  ASSERT_TRUE(back.committed()) << back.status.error().to_string();
  EXPECT_TRUE(saw_next.load()) << "attempt n + 1 was never published";
  EXPECT_TRUE(engine->verify_sites().ok()) << engine->verify_sites().error().to_string();
  EXPECT_EQ(demo::read_clock(), demo::kFixedClock);
}

}  // namespace
}  // namespace repatch
