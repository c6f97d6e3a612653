// Attempts are handed over so that an executor still holding attempt n never writes it over
// attempt n + 1, and a thread that holds n without writing holds up nobody (engine/transaction.h,
// publish_attempt).
#include "engine/transaction.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "base/test_hooks.h"
#include "engine/switch_protocol.h"
#include "guest/demo_ops.h"
#include "guest/demo_workload.h"
#include "repatch/engine.h"
#include "sync/realtime.h"
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

// Attempt n's injection point after its writes: lets the late writer below count itself in while
// n is still running, and waits until it has.
std::atomic<bool> g_in_attempt{false};
std::atomic<bool> g_writer_counted_in{false};

void let_late_writer_in(test::Point point, std::uint32_t, void*) noexcept {
  if (point != test::Point::kWritten || g_in_attempt.exchange(true)) return;
  const auto until = Clock::now() + std::chrono::seconds(5);
  while (!g_writer_counted_in.load() && Clock::now() < until)
    sync::relax();
}

// A late writer: it counted itself in as a writer of attempt n while n ran (as a thread that
// trapped on n's fence, found its primary stalled and was then descheduled would), and replays n
// after n's primary has finished writing. Until it has left, the call that ran n must not return,
// so that n + 1 neither plans on sites it may still change nor writes beside it.
TEST(Transaction, LateWriterHoldsUpTheEndOfItsAttempt) {
  Result<Engine*> booted = boot({.initial = {{"demo_clock", "fixed"}}});
  ASSERT_TRUE(booted.ok()) << booted.error().to_string();
  Engine* engine = booted.value();
  demo_clock_value = 0x1234;

  std::atomic<bool> n_returned{false};
  std::atomic<bool> replayed_before_return{false};
  std::thread late([&] {
    const auto until = Clock::now() + std::chrono::seconds(5);
    while (!g_in_attempt.load() && Clock::now() < until)
      std::this_thread::yield();
    engine::with_published([&](engine::Transaction* n) noexcept {
      if (n == nullptr || !n->enter_writing()) return 0;
      g_writer_counted_in.store(true);
      // Give a primary that did not wait every chance to return first.
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      LateExecutor executor;
      engine::run_switch_protocol(*n, executor);
      replayed_before_return.store(!n_returned.load());
      n->leave_writing();
      return 0;
    });
  });
  test::set_injection(&let_late_writer_in, nullptr);
  const SwitchOutcome n = engine->switch_groups({{"demo_clock", "shared"}});
  n_returned.store(true);
  test::set_injection(nullptr, nullptr);
  late.join();
  ASSERT_TRUE(n.committed()) << n.status.error().to_string();
  ASSERT_TRUE(g_writer_counted_in.load()) << "the late thread never counted itself in";
  EXPECT_TRUE(replayed_before_return.load()) << "attempt n returned while a writer was inside";
  const SwitchOutcome back = engine->switch_groups({{"demo_clock", "fixed"}});  // attempt n + 1
  ASSERT_TRUE(back.committed()) << back.status.error().to_string();
  EXPECT_TRUE(engine->verify_sites().ok()) << engine->verify_sites().error().to_string();
  EXPECT_EQ(demo::read_clock(), demo::kFixedClock);
}

// A thread that holds attempt n without writing it (it gave way to n's primary, and was then
// descheduled inside the handler) holds up nobody: attempt n + 1 commits while it still holds n,
// n stays readable meanwhile, and once n + 1 is published the thread cannot start writing n.
TEST(Transaction, HolderThatWritesNothingDelaysNoOne) {
  Result<Engine*> booted = boot({.initial = {{"demo_clock", "fixed"}}});
  ASSERT_TRUE(booted.ok()) << booted.error().to_string();
  Engine* engine = booted.value();
  ASSERT_TRUE(engine->switch_groups({{"demo_clock", "shared"}}).committed());  // attempt n

  std::atomic<bool> holding{false};
  std::atomic<bool> next_committed{false};
  std::atomic<bool> could_write{true};
  std::atomic<bool> held_through_commit{false};
  std::atomic<std::size_t> sites_seen{0};
  std::thread late([&] {
    engine::with_published([&](engine::Transaction* n) noexcept {
      holding.store(true);
      const auto until = Clock::now() + std::chrono::seconds(5);
      while (!next_committed.load() && Clock::now() < until)
        std::this_thread::yield();
      held_through_commit.store(next_committed.load());
      sites_seen.store(n->size());  // still allocated: retired, not freed
      could_write.store(n->enter_writing());
      return 0;
    });
  });
  while (!holding.load())
    std::this_thread::yield();
  const SwitchOutcome back = engine->switch_groups({{"demo_clock", "fixed"}});  // attempt n + 1
  next_committed.store(true);
  late.join();
  ASSERT_TRUE(back.committed()) << back.status.error().to_string();
  EXPECT_TRUE(held_through_commit.load()) << "attempt n + 1 waited for a thread that only held n";
  EXPECT_FALSE(could_write.load()) << "attempt n was still open to writers after n + 1";
  EXPECT_GT(sites_seen.load(), 0u);
  EXPECT_TRUE(engine->verify_sites().ok()) << engine->verify_sites().error().to_string();
  EXPECT_EQ(demo::read_clock(), demo::kFixedClock);
}

// A closed attempt takes no new writer once its last writer has left, but does while one remains:
// the one still writing may be the code that a signal handler running a site interrupted on the
// same thread, and only a new writer can finish the steps it was between (a trap that found the
// attempt closed would otherwise run the site again for ever).
TEST(Transaction, ClosedAttemptTakesWritersOnlyWhileOneIsWriting) {
  engine::Transaction attempt({}, {}, SwitchWriter::kStopless, {}, std::chrono::milliseconds(2));
  ASSERT_TRUE(attempt.enter_writing());
  std::atomic<bool> closing{false};
  std::atomic<bool> closed{false};
  std::thread closer([&] {
    closing.store(true);
    attempt.close_and_drain_writers();
    closed.store(true);
  });
  while (!closing.load())
    std::this_thread::yield();
  std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_TRUE(attempt.enter_writing()) << "a writer is still inside: the attempt must take another";
  attempt.leave_writing();
  std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_FALSE(closed.load()) << "the closer returned while a writer was inside";
  attempt.leave_writing();
  closer.join();
  EXPECT_FALSE(attempt.enter_writing()) << "a closed attempt with no writer took one";
}

}  // namespace
}  // namespace repatch
