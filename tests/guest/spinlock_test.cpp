// The spinlock ops run by vCPU threads: mutual exclusion in both variants, the pv lock's sleep and
// kick, and waiters that restart when their lock is converted under them. Each test boots its own
// process (ctest runs one test per process) in the variant it needs.
#include "guest/spinlock.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "guest/lock_state.h"
#include "guest/preempted.h"
#include "repatch/engine.h"
#include "sync/stop_machine.h"
#include "sync/vcpu.h"
#include "tests/guest/spinlock_support.h"

namespace repatch::guest {
namespace {

// N vCPUs add to one counter under the lock; per-vCPU tallies must add up to it.
void run_mutual_exclusion(int vcpus, int iterations) {
  SpinLock lock("counter");
  std::uint64_t counter = 0;
  std::vector<std::uint64_t> tallies(static_cast<std::size_t>(vcpus), 0);
  std::atomic<int> inside{0};
  std::atomic<bool> overlap{false};
  {
    std::vector<std::unique_ptr<VcpuThread>> threads;
    threads.reserve(static_cast<std::size_t>(vcpus));
    for (int v = 0; v < vcpus; ++v) {
      threads.push_back(std::make_unique<VcpuThread>([&, v](sync::Vcpu& self) {
        for (int i = 0; i < iterations; ++i) {
          spin_lock(&lock);
          if (inside.fetch_add(1, std::memory_order_relaxed) != 0) overlap.store(true);
          const std::uint64_t seen = counter;
          counter = seen + 1;  // a lost update shows if two vCPUs are ever inside
          ++tallies[static_cast<std::size_t>(v)];
          inside.fetch_sub(1, std::memory_order_relaxed);
          spin_unlock(&lock);
          self.quiescent_state();
        }
      }));
    }
  }
  std::uint64_t sum = 0;
  for (std::uint64_t t : tallies)
    sum += t;
  EXPECT_FALSE(overlap.load());
  EXPECT_EQ(sum, static_cast<std::uint64_t>(vcpus) * static_cast<std::uint64_t>(iterations));
  EXPECT_EQ(counter, sum) << "an update was lost";
  EXPECT_EQ(classify(lock.load_word()), LockState::kUnlocked);
}

TEST(Spinlock, NativeTicketLockExcludes) {
  boot_in("native");
  // As many vCPUs as the machine has cores: a fair ticket lock whose next waiter is descheduled
  // stalls every vCPU for a time slice (the lock-waiter preemption that pv exists for), which
  // oversubscription would turn into minutes.
  run_mutual_exclusion(2, 20000);
  EXPECT_EQ(spinlock_stats().sleeps.load(), 0u) << "native never sleeps";
}

TEST(Spinlock, PvLockExcludesWhenOversubscribed) {
  boot_in("pv");
  // More vCPUs than the machine's 2 cores: waiters of preempted holders end up asleep.
  run_mutual_exclusion(4, 20000);
  std::printf("pv: %llu sleeps, %llu kicks\n",
              static_cast<unsigned long long>(spinlock_stats().sleeps.load()),
              static_cast<unsigned long long>(spinlock_stats().kicks.load()));
}

TEST(Spinlock, PvWaiterSleepsOfflineAndUnlockKicksIt) {
  boot_in("pv");
  SpinLock lock("held-a-while");
  Holder holder;
  VcpuThread h(holder.body(lock));
  await([&] { return holder.holding.load(); }, "the holder has the lock");
  Waiter waiter;
  VcpuThread w(waiter.body(lock));
  const pid_t tid = sync::slot(w.id()).tid.load();
  await(
      [&] {
        return word::sleepers(lock.load_word()) == 1 && !sync::slot(w.id()).online.load() &&
               thread_state(tid) == 'S';
      },
      "the waiter sleeps in the futex, offline");
  EXPECT_FALSE(waiter.acquired.load());
  EXPECT_EQ(classify(lock.load_word()), LockState::kHeldWithSleepingWaiters);
  EXPECT_GE(spinlock_stats().sleeps.load(), 1u);
  holder.release.store(true);
  await([&] { return waiter.acquired.load(); }, "the kicked waiter has the lock");
  EXPECT_GE(spinlock_stats().kicks.load(), 1u);
  await([&] { return classify(lock.load_word()) == LockState::kUnlocked; }, "all released");
}

TEST(Spinlock, PvWaiterSleepsAtOnceWhenTheOwnerIsPreempted) {
  boot_in("pv");
  SpinLock lock("preempted-owner");
  Holder holder;
  VcpuThread h(holder.body(lock));
  await([&] { return holder.holding.load(); }, "the holder has the lock");
  EXPECT_EQ(lock.owner().load(), h.id() + 1u);
  // The simulated hypervisor's mark; the holder in fact keeps running.
  hypervisor::preempted(h.id()).store(true);
  Waiter waiter;
  VcpuThread w(waiter.body(lock));
  await([&] { return spinlock_stats().preempted_owner_sleeps.load() >= 1; },
        "the waiter gives up spinning because the owner is preempted");
  hypervisor::preempted(h.id()).store(false);
  holder.release.store(true);
  await([&] { return waiter.acquired.load(); }, "the waiter has the lock");
}

// The restart protocol, without the engine switching sites: the waiter's site keeps running the
// old variant, which must see the converted word each time and return "restart" without writing
// it. Converting back lets the waiter finish in its own variant once the holder lets go.
TEST(Spinlock, NativeSpinnerRestartsWhenItsLockIsConverted) {
  boot_in("native");
  SpinLock lock("converted-under-a-spinner");
  Holder holder;
  VcpuThread h(holder.body(lock));
  await([&] { return holder.holding.load(); }, "the holder has the lock");
  Waiter waiter;
  VcpuThread w(waiter.body(lock));
  await([&] { return classify(lock.load_word()) == LockState::kHeldWithSpinningWaiters; },
        "the waiter holds a ticket");
  const std::uint64_t restarts = spinlock_stats().restarts.load();
  SpinlockGroupState& state = spinlock_group_state();
  char why[256];
  ASSERT_TRUE(state.can_convert(kNativeVariant, kPvVariant, why, sizeof why)) << why;
  state.convert(kNativeVariant, kPvVariant);
  const std::uint64_t as_pv = lock.load_word();
  EXPECT_EQ(classify(as_pv), LockState::kHeld);
  await([&] { return spinlock_stats().restarts.load() >= restarts + 100; },
        "the spinner restarts, again and again, on the pv word");
  EXPECT_EQ(lock.load_word(), as_pv) << "a restarting waiter must not write the word";
  EXPECT_FALSE(waiter.acquired.load());
  state.convert(kPvVariant, kNativeVariant);
  await([&] { return classify(lock.load_word()) == LockState::kHeldWithSpinningWaiters; },
        "the restarted waiter takes a ticket in the new native word");
  holder.release.store(true);
  await([&] { return waiter.acquired.load(); }, "the waiter has the lock");
  await([&] { return classify(lock.load_word()) == LockState::kUnlocked; }, "all released");
}

// A native unlock hands the lock to the next ticket before its waiter has read the word. When the
// lock is converted in between (the waiter parked by a stop), the converted word is held, and its
// holder is that waiter: it must take the lock, not restart and leave it held by nobody.
TEST(Spinlock, NativeWaiterServedJustBeforeAConversionHoldsTheLock) {
  boot_in("native");
  SpinLock lock("served-then-converted");
  spin_lock(&lock);  // ticket 0, on this thread (not a vCPU: no switch runs in this test)
  Holder waiter;
  VcpuThread w(waiter.body(lock));
  await([&] { return classify(lock.load_word()) == LockState::kHeldWithSpinningWaiters; },
        "the waiter holds ticket 1 and spins");
  // With the waiter parked: unlock (head now serves ticket 1), then convert to pv.
  struct ServeThenConvert final : sync::StopWork {
    SpinLock* lock = nullptr;
    int check_parked(sync::VcpuId, const void*) noexcept override { return 0; }
    int run(sync::StopContext&) noexcept override {
      spin_unlock(lock);
      spinlock_group_state().convert(kNativeVariant, kPvVariant);
      return 0;
    }
  } work;
  work.lock = &lock;
  sync::StopResult result;
  for (int attempt = 0; attempt < 100; ++attempt) {
    // The work runs only when the waiter acknowledged in time (the machine may be loaded).
    result = sync::stop_machine(work);
    if (result.outcome != sync::StopOutcome::kAckTimeout) break;
  }
  ASSERT_EQ(result.outcome, sync::StopOutcome::kDone);
  ASSERT_EQ(result.targets, 1u);
  EXPECT_EQ(classify(lock.load_word()), LockState::kHeld);
  const std::uint64_t restarts = spinlock_stats().restarts.load();
  await(
      [&] { return waiter.holding.load() || spinlock_stats().restarts.load() >= restarts + 1000; },
      "the waiter holds the lock or keeps restarting");
  if (!waiter.holding.load()) {
    // It restarts for ever on a word held by nobody, and could never be joined.
    ADD_FAILURE() << "the served waiter restarted; the converted lock 0x" << std::hex
                  << lock.load_word() << " is held by nobody";
    std::fflush(nullptr);
    std::_Exit(1);
  }
  // Back to native, the encoding its unlock site (never switched here) releases.
  spinlock_group_state().convert(kPvVariant, kNativeVariant);
  waiter.release.store(true);
  await([&] { return classify(lock.load_word()) == LockState::kUnlocked; }, "all released");
}

TEST(Spinlock, PvSleeperIsWokenAndRestartsWhenItsLockIsConverted) {
  boot_in("pv");
  SpinLock lock("converted-under-a-sleeper");
  Holder holder;
  VcpuThread h(holder.body(lock));
  await([&] { return holder.holding.load(); }, "the holder has the lock");
  Waiter waiter;
  VcpuThread w(waiter.body(lock));
  const pid_t tid = sync::slot(w.id()).tid.load();
  await(
      [&] {
        return classify(lock.load_word()) == LockState::kHeldWithSleepingWaiters &&
               !sync::slot(w.id()).online.load() && thread_state(tid) == 'S';
      },
      "the waiter sleeps");
  const std::uint64_t restarts = spinlock_stats().restarts.load();
  SpinlockGroupState& state = spinlock_group_state();
  char why[256];
  ASSERT_TRUE(state.can_convert(kPvVariant, kNativeVariant, why, sizeof why)) << why;
  state.convert(kPvVariant, kNativeVariant);
  const std::uint64_t as_native = lock.load_word();
  EXPECT_EQ(classify(as_native), LockState::kHeld);
  // Only the conversion's wake can get it out of the futex: the holder never unlocks meanwhile.
  await([&] { return spinlock_stats().restarts.load() >= restarts + 100; },
        "the sleeper wakes and restarts, again and again, on the native word");
  EXPECT_EQ(lock.load_word(), as_native) << "a restarting waiter must not write the word";
  EXPECT_TRUE(sync::slot(w.id()).online.load()) << "a restarted waiter is back online";
  state.convert(kNativeVariant, kPvVariant);
  holder.release.store(true);
  await([&] { return waiter.acquired.load(); }, "the waiter has the lock");
  await([&] { return classify(lock.load_word()) == LockState::kUnlocked; }, "all released");
}

}  // namespace
}  // namespace repatch::guest
