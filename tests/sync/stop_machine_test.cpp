// stop_machine(): every other online vCPU is parked while the work runs; a vCPU that cannot
// acknowledge or is busy aborts the attempt before the work runs; vCPUs coming online wait.
#include "sync/stop_machine.h"

#include <gtest/gtest.h>
#include <sched.h>
#include <time.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <thread>
#include <vector>

#include "sync/vcpu.h"

namespace repatch::sync {
namespace {

using namespace std::chrono_literals;

// Threads registered as vCPUs that count loop iterations until told to stop.
class Workers {
 public:
  explicit Workers(int n) : counts_(n) {
    for (int i = 0; i < n; ++i) {
      threads_.emplace_back([this, i] {
        Result<std::unique_ptr<Vcpu>> vcpu = Vcpu::enter();
        if (!vcpu.ok()) {
          failed_.store(true);
          ready_.fetch_add(1);
          return;
        }
        ids_[i].store(vcpu.value()->id());
        ready_.fetch_add(1);
        while (!stop_.load(std::memory_order_relaxed)) {
          counts_[i].fetch_add(1, std::memory_order_relaxed);
          if (block_ipi_.load(std::memory_order_relaxed) == i) {
            IrqOffGuard irqs_off;
            blocking_.store(true);
            while (block_ipi_.load(std::memory_order_relaxed) == i)
              sched_yield();
            blocking_.store(false);
          }
        }
      });
    }
    while (ready_.load() < n)
      sched_yield();
  }
  ~Workers() {
    stop_.store(true);
    block_ipi_.store(-1);
    for (std::thread& t : threads_)
      t.join();
  }

  bool failed() const { return failed_.load(); }
  VcpuId id(int i) const { return ids_[i].load(); }
  std::uint64_t count(int i) const { return counts_[i].load(std::memory_order_relaxed); }
  std::size_t size() const { return threads_.size(); }

  // Worker `i` blocks its IPI signal (an irq-off section that never ends) until unblock().
  void block_ipi(int i) {
    block_ipi_.store(i);
    while (!blocking_.load())
      sched_yield();
  }
  void unblock() { block_ipi_.store(-1); }

 private:
  std::vector<std::atomic<std::uint64_t>> counts_;
  std::atomic<VcpuId> ids_[64]{};
  std::vector<std::thread> threads_;
  std::atomic<int> ready_{0};
  std::atomic<bool> failed_{false};
  std::atomic<bool> stop_{false};
  std::atomic<int> block_ipi_{-1};
  std::atomic<bool> blocking_{false};
};

void sleep_for(std::chrono::nanoseconds ns) {
  const timespec t{0, static_cast<long>(ns.count())};
  nanosleep(&t, nullptr);  // async-signal-safe and allocation-free, unlike std::this_thread
}

// Records the workers' counters twice, a little apart, while everyone is parked.
class FreezeCheck : public StopWork {
 public:
  explicit FreezeCheck(const Workers& workers) : workers_(workers) {}
  int check_parked(VcpuId, const void*) noexcept override {
    parked_.fetch_add(1);
    return 0;
  }
  int run(StopContext& context) noexcept override {
    ran_ = true;
    for (std::size_t i = 0; i < workers_.size(); ++i)
      before_[i] = workers_.count(static_cast<int>(i));
    sleep_for(2ms);
    synced_ = context.sync_all();
    for (std::size_t i = 0; i < workers_.size(); ++i)
      after_[i] = workers_.count(static_cast<int>(i));
    state_during_run_ = stop_state();
    return 7;
  }

  const Workers& workers_;
  std::atomic<int> parked_{0};
  bool ran_ = false;
  bool synced_ = false;
  StopState state_during_run_ = StopState::kIdle;
  std::uint64_t before_[64]{};
  std::uint64_t after_[64]{};
};

TEST(StopMachine, EveryOtherVcpuIsParkedWhileTheWorkRuns) {
  Workers workers(3);
  ASSERT_FALSE(workers.failed());
  FreezeCheck work(workers);
  const StopResult result = stop_machine(work);
  ASSERT_EQ(result.outcome, StopOutcome::kDone);
  EXPECT_TRUE(work.ran_);
  EXPECT_TRUE(work.synced_);
  EXPECT_EQ(result.work_result, 7);
  EXPECT_EQ(result.targets, 3u);
  EXPECT_EQ(work.parked_.load(), 3);
  EXPECT_EQ(work.state_during_run_, StopState::kSync);
  for (std::size_t i = 0; i < workers.size(); ++i) {
    EXPECT_EQ(work.before_[i], work.after_[i]) << "worker " << i << " ran during the stop";
  }
  EXPECT_GT(result.blackout.count(), 0);
  EXPECT_EQ(stop_state(), StopState::kIdle);
  // Released: everyone runs again.
  const std::uint64_t after = workers.count(0);
  while (workers.count(0) == after)
    sched_yield();
}

TEST(StopMachine, PrimaryMayBeAVcpu) {
  Workers workers(2);
  Result<std::unique_ptr<Vcpu>> self = Vcpu::enter();
  ASSERT_TRUE(self.ok()) << self.error().to_string();
  FreezeCheck work(workers);
  const StopResult result = stop_machine(work);
  ASSERT_EQ(result.outcome, StopOutcome::kDone);
  EXPECT_EQ(result.targets, 2u) << "the primary must not target itself";
}

class NeverRuns : public StopWork {
 public:
  explicit NeverRuns(VcpuId busy = kMaxVcpus) : busy_(busy) {}
  int check_parked(VcpuId self, const void*) noexcept override { return self == busy_ ? 42 : 0; }
  int run(StopContext&) noexcept override {
    ran_.store(true);
    return 0;
  }
  VcpuId busy_;
  std::atomic<bool> ran_{false};
};

TEST(StopMachine, VcpuWithIpiBlockedAbortsBeforeTheWorkRuns) {
  Workers workers(3);
  workers.block_ipi(1);
  NeverRuns work;
  const StopResult result = stop_machine(work, {.ack_deadline = 50ms, .spin_before_sleep = 100});
  EXPECT_EQ(result.outcome, StopOutcome::kAckTimeout);
  EXPECT_EQ(result.culprit, workers.id(1));
  EXPECT_FALSE(work.ran_.load());
  EXPECT_EQ(stop_state(), StopState::kIdle);
  // Its IPI arrives late, finds the stop over and returns; the next stop goes through.
  workers.unblock();
  FreezeCheck again(workers);
  EXPECT_EQ(stop_machine(again).outcome, StopOutcome::kDone);
}

TEST(StopMachine, BusyVcpuAbortsBeforeTheWorkRuns) {
  Workers workers(3);
  NeverRuns work(workers.id(2));
  const StopResult result = stop_machine(work);
  EXPECT_EQ(result.outcome, StopOutcome::kBusy);
  EXPECT_EQ(result.work_result, 42);
  EXPECT_EQ(result.culprit, workers.id(2));
  EXPECT_FALSE(work.ran_.load());
}

TEST(StopMachine, OfflineVcpusAreNotWaitedFor) {
  Workers workers(2);
  std::atomic<bool> release{false};
  std::atomic<bool> offline{false};
  std::thread idle([&] {
    Result<std::unique_ptr<Vcpu>> vcpu = Vcpu::enter();
    ASSERT_TRUE(vcpu.ok());
    vcpu.value()->go_offline();
    offline.store(true);
    while (!release.load())
      sched_yield();
    vcpu.value()->go_online();
  });
  while (!offline.load())
    sched_yield();
  FreezeCheck work(workers);
  const StopResult result = stop_machine(work);
  release.store(true);
  idle.join();
  EXPECT_EQ(result.outcome, StopOutcome::kDone);
  EXPECT_EQ(result.targets, 2u);
}

// A vCPU that comes online while the work runs must wait at the gate until the stop is over.
class OnlineDuringRun : public StopWork {
 public:
  int check_parked(VcpuId, const void*) noexcept override { return 0; }
  int run(StopContext&) noexcept override {
    go_.store(true);
    sleep_for(5ms);  // long enough for the vCPU to reach the gate, if it was going to pass it
    passed_gate_during_run_ = passed_gate_.load();
    return 0;
  }
  std::atomic<bool> go_{false};
  std::atomic<bool> passed_gate_{false};
  bool passed_gate_during_run_ = true;
};

TEST(StopMachine, VcpuComingOnlineWaitsUntilRelease) {
  OnlineDuringRun work;
  std::atomic<bool> offline{false};
  std::thread late([&] {
    Result<std::unique_ptr<Vcpu>> vcpu = Vcpu::enter();
    ASSERT_TRUE(vcpu.ok());
    vcpu.value()->go_offline();
    offline.store(true);
    while (!work.go_.load())
      sched_yield();
    vcpu.value()->go_online();
    work.passed_gate_.store(true);
  });
  while (!offline.load())
    sched_yield();
  const StopResult result = stop_machine(work);
  late.join();
  EXPECT_EQ(result.outcome, StopOutcome::kDone);
  EXPECT_FALSE(work.passed_gate_during_run_) << "a vCPU came online in the middle of the stop";
  EXPECT_TRUE(work.passed_gate_.load());
}

TEST(StopMachine, OversubscribedVcpusAllPark) {
  Workers workers(16);  // 16 vCPUs on this machine's 2 cores
  ASSERT_FALSE(workers.failed());
  for (int round = 0; round < 20; ++round) {
    FreezeCheck work(workers);
    const StopResult result = stop_machine(work, {.ack_deadline = 2s, .spin_before_sleep = 200});
    ASSERT_EQ(result.outcome, StopOutcome::kDone) << "round " << round;
    EXPECT_EQ(work.parked_.load(), 16);
    for (std::size_t i = 0; i < workers.size(); ++i) {
      ASSERT_EQ(work.before_[i], work.after_[i]) << "worker " << i << " ran during the stop";
    }
  }
}

// NMIs still reach parked vCPUs (their handler runs on top of the parked IPI handler).
std::atomic<int> g_nmis_seen{0};

class NmiDuringRun : public StopWork {
 public:
  explicit NmiDuringRun(const Workers& workers) : workers_(workers) {}
  int check_parked(VcpuId, const void*) noexcept override { return 0; }
  int run(StopContext&) noexcept override {
    for (std::size_t i = 0; i < workers_.size(); ++i)
      send_nmi(workers_.id(static_cast<int>(i)));
    for (int spins = 0; spins < 200 && g_nmis_seen.load() < static_cast<int>(workers_.size());
         ++spins) {
      sleep_for(1ms);
    }
    return g_nmis_seen.load();
  }
  const Workers& workers_;
};

TEST(StopMachine, NmisReachParkedVcpus) {
  set_nmi_handler([](VcpuId, void*) { g_nmis_seen.fetch_add(1); });
  Workers workers(3);
  NmiDuringRun work(workers);
  const StopResult result = stop_machine(work);
  ASSERT_EQ(result.outcome, StopOutcome::kDone);
  EXPECT_EQ(result.work_result, 3);
  set_nmi_handler(nullptr);
}

TEST(StopMachine, NoOtherVcpus) {
  NeverRuns work;
  const StopResult result = stop_machine(work);
  EXPECT_EQ(result.outcome, StopOutcome::kDone);
  EXPECT_TRUE(work.ran_.load());
  EXPECT_EQ(result.targets, 0u);
}

class Reentrant : public StopWork {
 public:
  int check_parked(VcpuId, const void*) noexcept override { return 0; }
  int run(StopContext&) noexcept override {
    NeverRuns inner;
    return static_cast<int>(stop_machine(inner).outcome);
  }
};

TEST(StopMachine, NestedStopIsRefused) {
  Reentrant work;
  const StopResult result = stop_machine(work);
  ASSERT_EQ(result.outcome, StopOutcome::kDone);
  EXPECT_EQ(result.work_result, static_cast<int>(StopOutcome::kNotAllowed));
}

// A stop begun inside a handler would wait for the mutex or the acknowledgement of the thread the
// handler interrupted: refused, however the handler got there.
std::atomic<int> g_outcome_in_handler{-1};

TEST(StopMachine, StopFromASignalHandlerIsRefused) {
  set_nmi_handler([](VcpuId, void*) {
    NeverRuns work;
    g_outcome_in_handler.store(static_cast<int>(stop_machine(work).outcome));
  });
  Workers workers(1);
  ASSERT_FALSE(workers.failed());
  send_nmi(workers.id(0));
  for (int spins = 0; spins < 2000 && g_outcome_in_handler.load() < 0; ++spins)
    std::this_thread::sleep_for(1ms);
  set_nmi_handler(nullptr);
  EXPECT_EQ(g_outcome_in_handler.load(), static_cast<int>(StopOutcome::kNotAllowed));
}

}  // namespace
}  // namespace repatch::sync
