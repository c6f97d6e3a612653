// The hazards of a live switch (DESIGN H1-H5, H7, H8, H11), each made to happen for real at an
// exact step of the protocol through an injection point (base/test_hooks.h). The tests of the
// EachWriter suite run once with the stop-machine writer and once with the stopless one; the
// Hazard suite's are about one writer, named in the test.
//
// Every test here is also run by ctest with its handler switched off (REPATCH_TEST_DISABLE, see
// tests/CMakeLists.txt), and that run must fail: by a broken expectation, a crash, or the
// watchdog below when the process hangs.
#include <gtest/gtest.h>
#include <sched.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#include "arch/x86/proc_maps.h"
#include "base/test_hooks.h"
#include "repatch/engine.h"
#include "repatch/in_op.h"
#include "sync/realtime.h"
#include "sync/stop_machine.h"
#include "sync/vcpu.h"
#include "tests/hazard/hazard_guest.h"
#include "tests/support/each_writer.h"
#include "tests/support/wx_filter.h"

namespace repatch {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// A hang is a failure too: SIGALRM's default action ends the process.
class Watchdog {
 public:
  explicit Watchdog(unsigned seconds) { alarm(seconds); }
  ~Watchdog() { alarm(0); }
};

void spin_for(std::chrono::nanoseconds duration) {
  const auto until = Clock::now() + duration;
  while (Clock::now() < until)
    __builtin_ia32_pause();
}

// Waits for other threads. The switch primary runs real-time (SwitchOptions::realtime), so an
// injection that waits on it must let the threads it waits for have its CPU: sync::relax().
template <typename Predicate>
bool spin_until(Predicate done, std::chrono::nanoseconds limit) {
  const auto until = Clock::now() + limit;
  while (!done()) {
    if (Clock::now() >= until) return false;
    sync::relax();
  }
  return true;
}

// Each test is a process of its own (ctest runs them one by one): boot, then make the main thread
// a vCPU, so that it can be sent NMIs while it is the switch primary.
class Hazard : public ::testing::Test {
 protected:
  void SetUp() override {
    if (Engine::get() != nullptr) GTEST_SKIP() << "run each hazard test in a process of its own";
    const std::string name = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    if (name.starts_with("NoRwxEver")) {
      ASSERT_EQ(testing::refuse_writable_and_executable_requests(), "");
    }
    Result<Engine*> engine =
        boot({.initial = {{"hz_pair", "a"}, {"hz_wide", "b"}, {"hz_alt", "a"}}});
    ASSERT_TRUE(engine.ok()) << engine.error().to_string();
    engine_ = engine.value();
    Result<std::unique_ptr<sync::Vcpu>> self = sync::Vcpu::enter();
    ASSERT_TRUE(self.ok()) << self.error().to_string();
    self_ = std::move(self).value();
  }

  void TearDown() override {
    test::set_injection(nullptr, nullptr);
    sync::set_nmi_handler(nullptr);
    stop_.store(true);
    for (std::thread& t : threads_)
      t.join();
  }

  // Starts a thread that registers as a vCPU and runs `body` until the test ends.
  template <typename Body>
  void start_vcpu(Body body) {
    threads_.emplace_back([this, body] {
      Result<std::unique_ptr<sync::Vcpu>> vcpu = sync::Vcpu::enter();
      if (!vcpu.ok()) {
        failures_.fetch_add(1);
        return;
      }
      started_.fetch_add(1);
      body(*vcpu.value());
    });
  }

  void wait_started(int n) {
    ASSERT_TRUE(spin_until([&] { return started_.load() >= n; }, 10s));
  }

  // Switches with the fixture's writer unless `options` names one.
  SwitchOutcome flip(const char* group, const char* variant, SwitchOptions options = {}) {
    if (options.writer == SwitchWriter::kAuto) options.writer = writer_;
    SwitchOutcome outcome = engine_->switch_groups({{group, variant}}, options);
    EXPECT_TRUE(outcome.committed())
        << group << " to " << variant << ": "
        << (outcome.committed() ? "" : outcome.status.error().to_string());
    return outcome;
  }

  bool stopless() const { return writer_ == SwitchWriter::kStopless; }

  // The Hazard suite's tests are about stop-machine unless they name their writer.
  SwitchWriter writer_ = SwitchWriter::kStopMachine;
  Engine* engine_ = nullptr;
  std::unique_ptr<sync::Vcpu> self_;
  std::atomic<bool> stop_{false};
  std::atomic<int> started_{0};
  std::atomic<int> failures_{0};
  std::vector<std::thread> threads_;
};

// The same hazard under each writer that can switch a group which is not interchangeable.
class EachWriter : public Hazard, public ::testing::WithParamInterface<SwitchWriter> {
 protected:
  void SetUp() override {
    writer_ = GetParam();
    Hazard::SetUp();
  }
};

INSTANTIATE_TEST_SUITE_P(Hazard, EachWriter, testing::kStatefulWriters, testing::writer_test_name);

// ---- H1: no vCPU ever runs a mix of variants of one group --------------------------------------

std::atomic<std::uint64_t> g_pairs{0};
std::atomic<std::uint64_t> g_mixed{0};
// Holds, numbered from 1: while hold n is requested and not released, a pair that has run its
// first op waits before its second, and says so in g_hold_caught.
std::atomic<std::uint64_t> g_hold_requested{0};
std::atomic<std::uint64_t> g_hold_released{0};
std::atomic<std::uint64_t> g_hold_caught{0};

// Runs the two ops of hz_pair as one unit (the way lock and unlock go together) and counts the
// times they disagreed.
void run_pair(std::chrono::nanoseconds between) {
  const OpInFlight in_op(repatch_group_hz_pair);
  const std::uint32_t a = hazard::first();
  spin_for(between);
  if (const std::uint64_t hold = g_hold_requested.load(); hold > g_hold_released.load()) {
    g_hold_caught.store(hold);
    spin_until([hold] { return g_hold_released.load() >= hold; }, 50ms);
  }
  const std::uint32_t b = hazard::second();
  g_pairs.fetch_add(1, std::memory_order_relaxed);
  if (a != b) g_mixed.fetch_add(1, std::memory_order_relaxed);
}

// Makes pairs run across the fence, however loaded the machine is. Under stop-machine, the
// primary holds the fence until the vCPUs have run a few pairs, or 5 ms have passed (when they are
// stopped, as they should be). The stopless writer stops nobody, and a pair that reaches a fenced
// site from inside its op takes the fence back: so in the first attempt of each switch only, the
// primary waits before its fence for a pair to be between its two ops and keeps it there until
// the fence is up. That pair must take the attempt back, and a later attempt commits.
struct HoldAtFence {
  bool stopless;
  std::atomic<bool> armed{false};  // set before each switch; its first attempt disarms it

  static void at(test::Point point, std::uint32_t, void* arg) noexcept {
    auto* hold = static_cast<HoldAtFence*>(arg);
    if (!hold->stopless) {
      if (point != test::Point::kFenced) return;
      const std::uint64_t before = g_pairs.load();
      spin_until([&] { return g_pairs.load() >= before + 4; }, 5ms);
    } else if (point == test::Point::kStopped && hold->armed.exchange(false)) {
      const std::uint64_t hold_now = g_hold_requested.fetch_add(1) + 1;
      spin_until([hold_now] { return g_hold_caught.load() == hold_now; }, 5ms);
    } else if (point == test::Point::kFenced) {
      g_hold_released.store(g_hold_requested.load());
    }
  }
};

TEST_P(EachWriter, HalfSwitchNeverObserved) {
  const Watchdog watchdog(60);
  for (int i = 0; i < 2; ++i) {
    start_vcpu([this](sync::Vcpu& vcpu) {
      while (!stop_.load(std::memory_order_relaxed)) {
        run_pair(5us);
        spin_for(10us);
        vcpu.quiescent_state();
      }
    });
  }
  wait_started(2);
  HoldAtFence hold{.stopless = stopless()};
  test::set_injection(&HoldAtFence::at, &hold);
  std::uint32_t attempts = 0;
  for (int i = 0; i < 100; ++i) {
    hold.armed.store(true);
    // The vCPUs are inside a pair a third of the time: a stopless attempt often meets one.
    const SwitchOutcome outcome =
        flip("hz_pair", i % 2 == 0 ? "b" : "a", {.deadline = 20s, .first_backoff = 50us});
    attempts += outcome.attempts;
    // After every commit the group is wholly in one variant.
    ASSERT_TRUE(engine_->verify_sites().ok()) << engine_->verify_sites().error().to_string();
    ASSERT_EQ(engine_->current_variant("hz_pair").value(), i % 2 == 0 ? "b" : "a");
  }
  EXPECT_GT(g_pairs.load(), 100u);
  EXPECT_EQ(g_mixed.load(), 0u) << "a vCPU ran one op of hz_pair in one variant and the other in "
                                   "the other, in "
                                << g_mixed.load() << " of " << g_pairs.load() << " pairs";
  RecordProperty("attempts", static_cast<int>(attempts));
}

// ---- H1 and H7 for threads the program never registered as vCPUs ------------------------------

// A plain thread (no sync::Vcpu) is between the two ops of a pair when the fence lands. The stop
// does not park it and no vCPU slot holds its marks: only its own row of the in-op marks table
// (engine/op_marks.h) tells the switch that it is inside an op. Its second op must run in the
// variant of its first, and the switch commits once it has left.
TEST_P(EachWriter, UnregisteredThreadInOp_NeverSeesAHalfSwitch) {
  const Watchdog watchdog(30);
  std::atomic<int> fences{0};
  std::atomic<bool> inside{false};
  std::atomic<std::uint32_t> seen_first{0}, seen_second{0};
  threads_.emplace_back([&] {
    const OpInFlight in_op(repatch_group_hz_pair);
    seen_first.store(hazard::first());
    inside.store(true);
    spin_until([&] { return fences.load() >= 1; }, 10s);
    seen_second.store(hazard::second());
  });
  ASSERT_TRUE(spin_until([&] { return inside.load(); }, 10s));
  struct Count {
    static void at(test::Point point, std::uint32_t, void* arg) noexcept {
      if (point != test::Point::kFenced) return;
      static_cast<std::atomic<int>*>(arg)->fetch_add(1);
      // Let the thread reach its second op while this attempt's fence is up.
      spin_for(std::chrono::milliseconds(2));
    }
  };
  test::set_injection(&Count::at, &fences);
  const SwitchOutcome outcome =
      flip("hz_pair", "b", {.deadline = 5s, .first_backoff = 1ms, .in_op_deadline = 2ms});
  test::set_injection(nullptr, nullptr);
  ASSERT_TRUE(spin_until([&] { return seen_second.load() != 0; }, 10s));
  EXPECT_EQ(seen_first.load(), seen_second.load())
      << "a thread that is not a vCPU ran the first op of a pair in one variant and the second in "
         "the other";
  EXPECT_GE(outcome.attempts, 2u) << "the first attempt should have given way to the thread's op";
  EXPECT_EQ(hazard::first(), 2u);
}

// Plain threads run pairs of hz_pair while the group switches back and forth, each switch
// committing once no pair is open. (Whether a pair straddles a fence is left to the scheduler:
// the handler-off run is UnregisteredThreadInOp_NeverSeesAHalfSwitch's.)
TEST_P(EachWriter, UnregisteredThreadsRunPairsWhileSwitching) {
  const Watchdog watchdog(60);
  for (int i = 0; i < 2; ++i) {
    threads_.emplace_back([this] {
      started_.fetch_add(1);
      while (!stop_.load(std::memory_order_relaxed)) {
        run_pair(5us);
        spin_for(10us);
      }
    });
  }
  wait_started(2);
  std::uint32_t attempts = 0;
  for (int i = 0; i < 100; ++i) {
    const SwitchOutcome outcome =
        flip("hz_pair", i % 2 == 0 ? "b" : "a", {.deadline = 20s, .first_backoff = 50us});
    attempts += outcome.attempts;
    ASSERT_TRUE(engine_->verify_sites().ok()) << engine_->verify_sites().error().to_string();
  }
  EXPECT_GT(g_pairs.load(), 100u);
  EXPECT_EQ(g_mixed.load(), 0u) << "a thread that is not a vCPU ran one op of hz_pair in one "
                                   "variant and the other in the other, in "
                                << g_mixed.load() << " of " << g_pairs.load() << " pairs";
  RecordProperty("attempts", static_cast<int>(attempts));
}

// A plain thread that stays inside an op holds a stopless switch as a vCPU would, and the error
// names it as what it is.
TEST_F(Hazard, Stopless_UnregisteredThreadInOp_IsWaitedForAndNamed) {
  const Watchdog watchdog(20);
  std::atomic<bool> inside{false};
  threads_.emplace_back([&] {
    const OpInFlight in_op(repatch_group_hz_pair);
    inside.store(true);
    while (!stop_.load())
      spin_for(1ms);
  });
  ASSERT_TRUE(spin_until([&] { return inside.load(); }, 10s));
  const SwitchOutcome outcome =
      engine_->switch_groups({{"hz_pair", "b"}}, {.writer = SwitchWriter::kStopless,
                                                  .deadline = 100ms,
                                                  .first_backoff = 1ms,
                                                  .in_op_deadline = 2ms});
  ASSERT_FALSE(outcome.committed());
  EXPECT_EQ(outcome.reason, SwitchAbort::kInOpTimeout);
  EXPECT_NE(outcome.status.error().message().find("(not a vCPU)"), std::string::npos)
      << outcome.status.error().message();
  EXPECT_EQ(engine_->current_variant("hz_pair").value(), "a");
}

// ---- H7: an op in flight makes the attempt retry; it never runs on under a switch --------------

TEST_F(Hazard, OpInFlight_RetriesThenSucceeds) {
  const Watchdog watchdog(30);
  std::atomic<bool> inside{false};
  std::atomic<std::uint32_t> seen_first{0}, seen_second{0};
  start_vcpu([&](sync::Vcpu& vcpu) {
    {
      const OpInFlight in_op(repatch_group_hz_pair);
      seen_first.store(hazard::first());
      const std::uint64_t ipis = sync::slot(vcpu.id()).ipis.load();
      inside.store(true);
      // The op's slow path, with IPIs enabled, until the first attempt's IPI has come and gone.
      spin_until([&] { return sync::slot(vcpu.id()).ipis.load() > ipis; }, 10s);
      seen_second.store(hazard::second());
    }
    while (!stop_.load())
      vcpu.quiescent_state();
  });
  ASSERT_TRUE(spin_until([&] { return inside.load(); }, 10s));
  const SwitchOutcome outcome = flip("hz_pair", "b", {.deadline = 2s, .first_backoff = 1ms});
  EXPECT_GE(outcome.attempts, 2u) << "the first attempt should have found the op in flight";
  EXPECT_GE(outcome.aborts[static_cast<int>(SwitchAbort::kBusy)], 1u);
  ASSERT_TRUE(spin_until([&] { return seen_second.load() != 0; }, 10s));
  EXPECT_EQ(seen_first.load(), seen_second.load())
      << "the op in flight began in one variant and went on in the other";
  EXPECT_EQ(hazard::first(), 2u);
}

// ---- H3: a vCPU that never acknowledges: abort in time, nothing written -----------------------

TEST_F(Hazard, VcpuNeverAcks_AbortsCleanly) {
  const Watchdog watchdog(20);
  start_vcpu([this](sync::Vcpu&) {
    const sync::IrqOffGuard irqs_off;  // its IPIs stay pending for as long as the test runs
    while (!stop_.load())
      spin_for(1ms);
  });
  wait_started(1);
  const std::vector<std::uint8_t> before = engine_->status().sites.front().bytes;
  const auto start = Clock::now();
  // A deadline of many ack deadlines: on a loaded machine one attempt's rendezvous can take a few
  // hundred milliseconds before its ack deadline even starts to count, and the test wants retries.
  // Stop-machine by name: the engine's own choice, the stopless writer, waits for no ack.
  const SwitchOutcome outcome =
      engine_->switch_groups({{"hz_pair", "b"}}, {.writer = SwitchWriter::kStopMachine,
                                                  .ack_deadline = 20ms,
                                                  .deadline = 1s,
                                                  .first_backoff = 10ms});
  const auto took = Clock::now() - start;
  ASSERT_FALSE(outcome.committed());
  EXPECT_EQ(outcome.reason, SwitchAbort::kAckTimeout);
  EXPECT_GE(outcome.attempts, 2u);
  EXPECT_EQ(outcome.aborts[static_cast<int>(SwitchAbort::kAckTimeout)], outcome.attempts);
  EXPECT_NE(outcome.status.error().message().find("did not acknowledge"), std::string::npos)
      << outcome.status.error().message();
  EXPECT_LT(took, 5s) << "the switch did not give up near its deadline";
  EXPECT_EQ(engine_->current_variant("hz_pair").value(), "a");
  EXPECT_TRUE(engine_->verify_sites().ok());
  EXPECT_EQ(engine_->status().sites.front().bytes, before);
  EXPECT_EQ(hazard::first(), 1u);
  EXPECT_EQ(hazard::second(), 1u);
}

// ---- H4: an NMI on the primary in the middle of its writes finishes them -----------------------

std::atomic<std::uint32_t> g_nmi_first{0}, g_nmi_second{0};
std::atomic<int> g_nmi_runs{0};

void nmi_runs_pair(sync::VcpuId, void*) {
  const OpInFlight in_op(repatch_group_hz_pair);
  g_nmi_first.store(hazard::first(), std::memory_order_relaxed);
  g_nmi_second.store(hazard::second(), std::memory_order_relaxed);
  g_nmi_runs.fetch_add(1, std::memory_order_release);
}

struct NmiAt {
  test::Point point;
  std::uint32_t sites_done;
  sync::VcpuId target;
  std::atomic<bool> sent{false};  // once per test step: only the first attempt gets the NMI
};

void send_nmi_at(test::Point point, std::uint32_t sites_done, void* arg) noexcept {
  auto* at = static_cast<NmiAt*>(arg);
  if (point == at->point && sites_done == at->sites_done && !at->sent.exchange(true)) {
    sync::send_nmi(at->target);
  }
}

TEST_P(EachWriter, NmiOnPrimaryMidWrite_Completes) {
  const Watchdog watchdog(20);
  sync::set_nmi_handler(&nmi_runs_pair);
  start_vcpu([this](sync::Vcpu& vcpu) {
    while (!stop_.load())
      vcpu.quiescent_state();
  });
  wait_started(1);

  // Between the tails of the two sites: the direction is forward, so the NMI finishes the writes
  // and runs the new variant; the primary's own remaining writes then find them done.
  NmiAt mid_tails{test::Point::kTailWrite, 1, self_->id()};
  test::set_injection(&send_nmi_at, &mid_tails);
  SwitchOutcome outcome = flip("hz_pair", "b");
  EXPECT_TRUE(mid_tails.sent.load());
  EXPECT_EQ(g_nmi_runs.load(), 1);
  EXPECT_EQ(outcome.nmi_completions, 1u);
  EXPECT_EQ(g_nmi_first.load(), 2u);
  EXPECT_EQ(g_nmi_second.load(), 2u);
  EXPECT_EQ(outcome.attempts, 1u);
  EXPECT_TRUE(engine_->verify_sites().ok()) << engine_->verify_sites().error().to_string();

  // After the first INT3 and before the second: nothing is decided yet and the NMI is inside an
  // op of the group, so it takes the fence back and runs the old variant whole; the attempt
  // aborts and the next one commits.
  NmiAt mid_fence{test::Point::kFenceWrite, 1, self_->id()};
  test::set_injection(&send_nmi_at, &mid_fence);
  outcome = flip("hz_pair", "a");
  EXPECT_TRUE(mid_fence.sent.load());
  EXPECT_EQ(g_nmi_runs.load(), 2);
  EXPECT_EQ(g_nmi_first.load(), 2u);
  EXPECT_EQ(g_nmi_second.load(), 2u);
  EXPECT_EQ(outcome.attempts, 2u);
  EXPECT_EQ(outcome.aborts[static_cast<int>(SwitchAbort::kFenceUndone)], 1u);
  EXPECT_TRUE(engine_->verify_sites().ok()) << engine_->verify_sites().error().to_string();
  EXPECT_EQ(hazard::first(), 1u);
  EXPECT_EQ(hazard::second(), 1u);
}

// ---- H4: many NMIs on many vCPUs at once ------------------------------------------------------

std::atomic<std::uint64_t> g_nmi_bad{0};
// Which switch's fence is in place (0: none), and how many NMI handlers that started while it was
// ran their ops to the end.
std::atomic<std::uint64_t> g_fences{0};
std::atomic<std::uint64_t> g_fence_number{0};
std::atomic<std::uint64_t> g_runs_inside_fence{0};

void nmi_runs_ops(sync::VcpuId, void*) {
  const std::uint64_t fence = g_fence_number.load();
  const std::uint32_t a = hazard::first();
  const std::uint32_t b = hazard::alt();
  if ((a != 1 && a != 2) || (b != 1 && b != 2)) g_nmi_bad.fetch_add(1, std::memory_order_relaxed);
  g_nmi_runs.fetch_add(1, std::memory_order_relaxed);
  if (fence != 0 && fence == g_fence_number.load()) g_runs_inside_fence.fetch_add(1);
}

// At the fence, every vCPU (the primary included) gets an NMI whose handler runs fenced sites. The
// primary then waits until one such handler has run: an NMI merged into one already pending is
// delivered only at the target's next entry to the kernel, which may come after a switch that
// makes no system call has ended. A handler that started after the fence traps on it and finishes
// the switch (or, with nmi_completion off, re-traps for ever).
void nmi_everyone_at_fence(test::Point point, std::uint32_t, void*) noexcept {
  if (point != test::Point::kFenced) return;
  g_runs_inside_fence.store(0);
  g_fence_number.store(g_fences.fetch_add(1) + 1);
  for (sync::VcpuId id = 0; id < sync::slot_limit(); ++id) {
    if (sync::slot(id).tid.load() != 0) sync::send_nmi(id);
  }
  spin_until([] { return g_runs_inside_fence.load() >= 1; }, 1s);
  g_fence_number.store(0);
}

TEST_P(EachWriter, NmiStormDuringSwitch) {
  const Watchdog watchdog(60);
  sync::set_nmi_handler(&nmi_runs_ops);
  for (int i = 0; i < 3; ++i) {
    start_vcpu([this](sync::Vcpu& vcpu) {
      while (!stop_.load(std::memory_order_relaxed)) {
        run_pair(0ns);
        vcpu.quiescent_state();
        sched_yield();
      }
    });
  }
  wait_started(3);
  // And NMIs at random moments besides, from a thread that is not a vCPU.
  threads_.emplace_back([this] {
    while (!stop_.load(std::memory_order_relaxed)) {
      for (sync::VcpuId id = 0; id < sync::slot_limit(); ++id) {
        if (sync::slot(id).tid.load() != 0) sync::send_nmi(id);
      }
      std::this_thread::sleep_for(50us);
    }
  });
  test::set_injection(&nmi_everyone_at_fence, nullptr);
  std::uint64_t nmi_completions = 0;
  for (int i = 0; i < 60; ++i) {
    // Both groups in turn, each to its other variant.
    const SwitchOutcome outcome = flip(i % 2 == 0 ? "hz_pair" : "hz_alt", i % 4 < 2 ? "b" : "a",
                                       {.deadline = 20s, .first_backoff = 50us});
    nmi_completions += outcome.nmi_completions;
    ASSERT_TRUE(engine_->verify_sites().ok()) << engine_->verify_sites().error().to_string();
  }
  EXPECT_GT(g_nmi_runs.load(), 60u);
  EXPECT_GE(nmi_completions, 60u) << "each switch's fence NMIs should have finished it";
  EXPECT_EQ(g_nmi_bad.load(), 0u);
  EXPECT_EQ(g_mixed.load(), 0u);
}

// ---- H5: a thread the stop does not hold hits the INT3 and completes forward ------------------

std::atomic<std::uint64_t> g_unstopped_reads{0};
std::atomic<std::uint64_t> g_unstopped_bad{0};

// Waits at the fence until the thread outside the stop has read through a fenced site.
void wait_for_unstopped_reader(test::Point point, std::uint32_t, void*) noexcept {
  if (point != test::Point::kFenced) return;
  const std::uint64_t before = g_unstopped_reads.load();
  spin_until([&] { return g_unstopped_reads.load() >= before + 2; }, 50ms);
}

TEST_P(EachWriter, Int3OnUnstoppedCpu_CompletesForward) {
  const Watchdog watchdog(60);
  // Not a vCPU: stop-machine does not know it, so it runs on through every switch.
  threads_.emplace_back([this] {
    while (!stop_.load(std::memory_order_relaxed)) {
      const std::uint32_t value = hazard::first();
      if (value != 1 && value != 2) g_unstopped_bad.fetch_add(1);
      g_unstopped_reads.fetch_add(1, std::memory_order_relaxed);
    }
  });
  ASSERT_TRUE(spin_until([] { return g_unstopped_reads.load() > 0; }, 10s));
  test::set_injection(&wait_for_unstopped_reader, nullptr);
  std::uint64_t int3_completions = 0;
  for (int i = 0; i < 50; ++i) {
    int3_completions += flip("hz_pair", i % 2 == 0 ? "b" : "a").int3_completions;
    ASSERT_TRUE(engine_->verify_sites().ok()) << engine_->verify_sites().error().to_string();
  }
  EXPECT_GE(int3_completions, 25u) << "the unstopped thread should have finished most switches";
  EXPECT_EQ(g_unstopped_bad.load(), 0u);
}

// ---- H2: a trapped executor resumes at the site's first byte, never inside it -----------------

std::atomic<std::uint64_t> g_nmi_wide_value{0};

void nmi_runs_wide(sync::VcpuId, void*) {
  g_nmi_wide_value.store(hazard::wide(), std::memory_order_relaxed);
}

TEST_P(EachWriter, NeverResumesMidSite) {
  const Watchdog watchdog(20);
  sync::set_nmi_handler(&nmi_runs_wide);
  ASSERT_EQ(hazard::wide(), 2u);
  // hz_wide "a" is a 10-byte movabs with no padding: one byte into it is another instruction.
  NmiAt fenced{test::Point::kFenceWrite, 1, self_->id()};
  test::set_injection(&send_nmi_at, &fenced);
  const SwitchOutcome outcome = flip("hz_wide", "a");
  EXPECT_TRUE(fenced.sent.load());
  EXPECT_EQ(outcome.nmi_completions, 1u);
  EXPECT_EQ(g_nmi_wide_value.load(), hazard::kWideA);
  EXPECT_EQ(hazard::wide(), hazard::kWideA);
  test::set_injection(nullptr, nullptr);
  flip("hz_wide", "b");
  EXPECT_EQ(hazard::wide(), 2u);
}

// ---- H8: a vCPU that comes online during a switch waits for it --------------------------------
//
// Under stop-machine it waits at the online gate for the stop to end. The stopless writer stops
// nobody, so it has no gate: the vCPU runs on at once, and its first fenced site makes it one more
// #BP executor (H5), which must leave it on the new variant whole.

TEST_P(EachWriter, OfflineVcpuOnlineMidSwitch) {
  const Watchdog watchdog(20);
  struct Late {
    std::atomic<bool> offline{false};
    std::atomic<bool> go{false};
    std::atomic<bool> going_online{false};
    std::atomic<bool> online{false};
    std::atomic<sync::StopState> state_when_online{sync::StopState::kIdle};
    std::atomic<std::uint32_t> first{0};
  } late;
  start_vcpu([&](sync::Vcpu& vcpu) {
    vcpu.go_offline();
    late.offline.store(true);
    while (!late.go.load())
      std::this_thread::sleep_for(100us);
    late.going_online.store(true);
    vcpu.go_online();
    late.state_when_online.store(sync::stop_state());
    late.first.store(hazard::first());
    late.online.store(true);
    while (!stop_.load())
      vcpu.quiescent_state();
  });
  ASSERT_TRUE(spin_until([&] { return late.offline.load(); }, 10s));
  struct Hook {
    static void at(test::Point point, std::uint32_t, void* arg) noexcept {
      auto* l = static_cast<Late*>(arg);
      if (point != test::Point::kFenced || l->go.exchange(true)) return;
      // Give it every chance to come online while the group is half written: wait until it is
      // on its way (however busy the machine), then for it to get through.
      spin_until([&] { return l->going_online.load(); }, 10s);
      spin_until([&] { return l->online.load(); }, 100ms);
    }
  };
  test::set_injection(&Hook::at, &late);
  flip("hz_pair", "b");
  ASSERT_TRUE(spin_until([&] { return late.online.load(); }, 10s));
  EXPECT_EQ(late.state_when_online.load(), sync::StopState::kIdle)
      << "the vCPU came online and ran guest code during the stop ("
      << sync::stop_state_name(late.state_when_online.load()) << ")";
  EXPECT_EQ(late.first.load(), 2u);
}

// ---- The stopless writer's own cases of H7 and H3, and the vCPUs it needs nothing from --------

// H7: a vCPU inside an op of the group when the fence lands delays the switch; past the in-op
// deadline the fence is taken back with nothing changed, and a later attempt commits once the op
// has left. The op runs whole in the variant it began in.
TEST_F(Hazard, Stopless_OpInFlight_DelaysThenCommits) {
  const Watchdog watchdog(30);
  std::atomic<int> fences{0};
  std::atomic<bool> inside{false};
  std::atomic<std::uint32_t> seen_first{0}, seen_second{0};
  start_vcpu([&](sync::Vcpu& vcpu) {
    {
      const OpInFlight in_op(repatch_group_hz_pair);
      seen_first.store(hazard::first());
      inside.store(true);
      // Inside the op until a second attempt has fenced (the first gave up on it, as it should).
      spin_until([&] { return fences.load() >= 2; }, 10s);
      seen_second.store(hazard::second());
    }
    while (!stop_.load())
      vcpu.quiescent_state();
  });
  ASSERT_TRUE(spin_until([&] { return inside.load(); }, 10s));
  struct Count {
    static void at(test::Point point, std::uint32_t, void* arg) noexcept {
      if (point == test::Point::kFenced) static_cast<std::atomic<int>*>(arg)->fetch_add(1);
    }
  };
  test::set_injection(&Count::at, &fences);
  const SwitchOutcome outcome = flip("hz_pair", "b",
                                     {.writer = SwitchWriter::kStopless,
                                      .deadline = 5s,
                                      .first_backoff = 1ms,
                                      .in_op_deadline = 2ms});
  EXPECT_GE(outcome.attempts, 2u) << "the first attempt should have waited for the op, then gone";
  EXPECT_GE(outcome.aborts[static_cast<int>(SwitchAbort::kInOpTimeout)], 1u);
  ASSERT_TRUE(spin_until([&] { return seen_second.load() != 0; }, 10s));
  EXPECT_EQ(seen_first.load(), seen_second.load())
      << "the op in flight began in one variant and went on in the other";
  EXPECT_EQ(hazard::first(), 2u);
}

// H3 for the stopless writer: a vCPU that never leaves its op (a lost wake-up, a guest bug) must
// not hold the switch for ever. Every attempt gives up at its in-op deadline; the switch gives up
// at its own deadline, with every site as it was.
TEST_F(Hazard, Stopless_VcpuNeverLeavesOp_AbortsCleanly) {
  const Watchdog watchdog(20);
  start_vcpu([this](sync::Vcpu&) {
    const OpInFlight in_op(repatch_group_hz_pair);
    while (!stop_.load())
      spin_for(1ms);
  });
  wait_started(1);
  const std::vector<std::uint8_t> before = engine_->status().sites.front().bytes;
  const auto start = Clock::now();
  const SwitchOutcome outcome =
      engine_->switch_groups({{"hz_pair", "b"}}, {.writer = SwitchWriter::kStopless,
                                                  .deadline = 300ms,
                                                  .first_backoff = 1ms,
                                                  .in_op_deadline = 2ms});
  const auto took = Clock::now() - start;
  ASSERT_FALSE(outcome.committed());
  EXPECT_EQ(outcome.reason, SwitchAbort::kInOpTimeout);
  EXPECT_GE(outcome.attempts, 2u);
  EXPECT_EQ(outcome.aborts[static_cast<int>(SwitchAbort::kInOpTimeout)], outcome.attempts);
  EXPECT_NE(outcome.status.error().message().find("still inside an op"), std::string::npos)
      << outcome.status.error().message();
  EXPECT_LT(took, 5s) << "the switch did not give up near its deadline";
  EXPECT_EQ(engine_->current_variant("hz_pair").value(), "a");
  EXPECT_TRUE(engine_->verify_sites().ok());
  EXPECT_EQ(engine_->status().sites.front().bytes, before);
  EXPECT_EQ(hazard::first(), 1u);
  EXPECT_EQ(hazard::second(), 1u);
}

// What the stopless writer is for: a vCPU that runs no op of the group needs nothing from anyone.
// One whose IPIs are blocked for the whole switch (under stop-machine, H3's abort) is neither sent
// one nor waited for, and the switch commits at its first attempt.
TEST_F(Hazard, Stopless_VcpuWithIpisBlockedIsNotWaitedFor) {
  const Watchdog watchdog(20);
  std::atomic<sync::VcpuId> blocked{sync::kMaxVcpus};
  start_vcpu([&](sync::Vcpu& vcpu) {
    const sync::IrqOffGuard irqs_off;
    blocked.store(vcpu.id());
    while (!stop_.load())
      spin_for(1ms);
  });
  wait_started(1);
  ASSERT_TRUE(spin_until([&] { return blocked.load() != sync::kMaxVcpus; }, 10s));
  const SwitchOutcome outcome = flip("hz_pair", "b", {.writer = SwitchWriter::kStopless});
  EXPECT_EQ(outcome.writer, SwitchWriter::kStopless);
  EXPECT_EQ(outcome.attempts, 1u);
  EXPECT_FALSE(sync::slot(blocked.load()).ipi_pending.load()) << "the blocked vCPU was sent an IPI";
  EXPECT_EQ(hazard::first(), 2u);
  EXPECT_EQ(hazard::second(), 2u);
}

// ---- H11: no mapping is ever writable and executable while switching --------------------------

// The fixture installs the seccomp filter of tests/support/wx_filter.h before it boots.
TEST_P(EachWriter, NoRwxEver) {
  const Watchdog watchdog(60);
  start_vcpu([this](sync::Vcpu& vcpu) {
    while (!stop_.load(std::memory_order_relaxed)) {
      hazard::first();
      hazard::alt();
      vcpu.quiescent_state();
    }
  });
  wait_started(1);
  for (int i = 0; i < 20; ++i) {
    const char* to = i % 2 == 0 ? "b" : "a";
    EXPECT_EQ(flip("hz_pair", to).writer, writer_);
    EXPECT_EQ(flip("hz_alt", to, {.writer = SwitchWriter::kBatch}).writer, SwitchWriter::kBatch);
    ASSERT_TRUE(engine_->verify_sites().ok()) << engine_->verify_sites().error().to_string();
  }
  EXPECT_EQ(testing::g_wx_attempts.load(), 0)
      << "a switch asked for a writable and executable mapping: system call "
      << testing::g_first_wx_syscall.load() << ", prot 0x" << std::hex
      << testing::g_first_wx_prot.load();
  Result<std::vector<x86::MapEntry>> maps = x86::read_proc_maps();
  ASSERT_TRUE(maps.ok());
  for (const x86::MapEntry& m : maps.value())
    EXPECT_FALSE(m.w && m.x) << x86::describe_mapping(m);
}

}  // namespace
}  // namespace repatch
