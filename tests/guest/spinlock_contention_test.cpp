// The spinlock group switched live under its own locks, set up the way the spinlock tests boot
// (boot_in: boot, then adopt_engine_variant, and no other call): every switch converts the live
// locks, so that a lock stays usable whichever variant its sites hold.
//
// A program that adopted the booted encoding but whose engine had no GroupState for the group got
// its sites switched and its words left alone. In pv, every pv body then found a native word and
// returned "restart" to its site, for as long as the group stayed pv: a holder could not release,
// and four vCPUs on one lock made about 200 acquisitions a second, which looked like a deadlock in
// the native wait (guest/lock_state.cpp, adopt_engine_variant, has the whole story).
#include <gtest/gtest.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#include "guest/lock_state.h"
#include "guest/spinlock.h"
#include "repatch/engine.h"
#include "sync/vcpu.h"
#include "tests/guest/spinlock_support.h"

namespace repatch::guest {
namespace {

void switch_to(Engine* engine, const char* variant) {
  const SwitchOutcome outcome =
      engine->switch_groups({{"spinlock", variant}}, {.writer = SwitchWriter::kStopless});
  ASSERT_TRUE(outcome.committed()) << outcome.status.error().to_string();
}

// Deterministic: one switch there and back, with one lock free and one held across both.
TEST(SpinlockContention, ASwitchConvertsTheLocksOfAProgramThatAdoptedTheBootedVariant) {
  boot_in("native");
  Engine* engine = Engine::get();
  SpinLock idle("idle across the switches");
  SpinLock held("held across the switches");
  spin_lock(&held);  // on this thread, which runs the switches itself: no lock op meanwhile
  ASSERT_NO_FATAL_FAILURE(switch_to(engine, "pv"));
  EXPECT_EQ(word::tag(idle.load_word()), word::kTagPv) << std::hex << idle.load_word();
  EXPECT_EQ(classify(idle.load_word()), LockState::kUnlocked);
  // A pv unlock of a word left native would return "restart" for ever: stop here instead.
  ASSERT_EQ(word::tag(held.load_word()), word::kTagPv)
      << "the switch to pv left the held lock's word 0x" << std::hex << held.load_word()
      << " native";
  EXPECT_EQ(classify(held.load_word()), LockState::kHeld);
  spin_unlock(&held);  // the pv variant now
  EXPECT_EQ(classify(held.load_word()), LockState::kUnlocked);
  ASSERT_NO_FATAL_FAILURE(switch_to(engine, "native"));
  for (const SpinLock* lock : {&idle, &held}) {
    EXPECT_EQ(word::tag(lock->load_word()), word::kTagNative) << lock->name();
    EXPECT_EQ(word::generation(lock->load_word()), 2u) << lock->name() << ": one per conversion";
    EXPECT_EQ(classify(lock->load_word()), LockState::kUnlocked) << lock->name();
  }
}

// Under load: four vCPUs take one lock in a tight loop while a thread that is no vCPU switches the
// group native <-> pv every 200 us with the stopless writer. Each vCPU must take the lock 20,000
// times while at least 2,000 switches commit, within 15 s (about 1.5 s when the locks are
// converted; with the words left native, the four together took about 200 a second).
TEST(SpinlockContention, FourVcpusOnOneLockWhileTheGroupSwitchesEvery200us) {
  constexpr int kVcpus = 4;
  constexpr std::uint64_t kAcquisitionsEach = 20'000;
  constexpr int kSwitchesAtLeast = 2000;
  boot_in("native");
  Engine* engine = Engine::get();
  SpinLock lock("shared by four vCPUs");
  std::uint64_t counter = 0;  // guarded by `lock`
  std::atomic<int> inside{0};
  std::atomic<bool> overlap{false};
  std::atomic<bool> stop{false};
  std::array<std::atomic<std::uint64_t>, kVcpus> acquisitions{};
  PeriodicSwitcher switcher;
  {
    std::vector<std::unique_ptr<VcpuThread>> vcpus;
    vcpus.reserve(kVcpus);
    for (int v = 0; v < kVcpus; ++v) {
      vcpus.push_back(std::make_unique<VcpuThread>([&, v](sync::Vcpu& self) {
        while (!stop.load(std::memory_order_relaxed)) {
          guarded_increment(lock, counter, inside, overlap);
          acquisitions[v].fetch_add(1, std::memory_order_relaxed);
          self.quiescent_state();
        }
      }));
    }
    // On a timeout, await ends the process: the vCPUs could not be joined.
    await(
        [&] {
          for (const auto& a : acquisitions) {
            if (a.load(std::memory_order_relaxed) < kAcquisitionsEach) return false;
          }
          return switcher.committed() >= kSwitchesAtLeast;
        },
        "each of 4 vCPUs has taken the lock 20,000 times while 2,000 switches committed", 15s);
    stop.store(true);
    vcpus.clear();
    switcher.stop();
  }
  std::uint64_t total = 0;
  for (const auto& a : acquisitions)
    total += a.load();
  EXPECT_FALSE(overlap.load()) << "two holders were inside the lock at once";
  EXPECT_EQ(counter, total) << "an update was lost";
  EXPECT_GE(switcher.committed(), kSwitchesAtLeast);
  EXPECT_EQ(switcher.failed(), 0);
  EXPECT_TRUE(engine->verify_group("spinlock").ok());
  const std::uint64_t w = lock.load_word();
  EXPECT_EQ(classify(w), LockState::kUnlocked) << std::hex << w;
  const bool pv = engine->current_variant("spinlock").value() == "pv";
  EXPECT_EQ(word::tag(w), pv ? word::kTagPv : word::kTagNative)
      << "the word's encoding is not the group's variant: 0x" << std::hex << w;
}

}  // namespace
}  // namespace repatch::guest
