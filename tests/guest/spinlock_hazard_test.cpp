// The lock-state hazards of switching the spinlock group live (DESIGN H6, H7), through the engine:
// every test switches the group's sites with Engine::switch_groups while vCPUs hold and wait for
// locks, once with the stop-machine writer and once with the stopless one. ctest runs each test a
// second time with its handler switched off (tests/CMakeLists.txt), and that run must fail.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "guest/hypervisor.h"
#include "guest/lock_state.h"
#include "guest/spinlock.h"
#include "repatch/engine.h"
#include "tests/guest/spinlock_support.h"
#include "tests/support/each_writer.h"

namespace repatch::guest {
namespace {

Engine* boot_with_state(const char* variant) {
  boot_in(variant);
  Engine* engine = Engine::get();
  EXPECT_TRUE(engine->set_group_state("spinlock", &spinlock_group_state()).ok());
  return engine;
}

// Each test runs under both writers that can switch a group with state.
class EachWriter : public ::testing::TestWithParam<SwitchWriter> {};

INSTANTIATE_TEST_SUITE_P(Hazard, EachWriter, testing::kStatefulWriters, testing::writer_test_name);

void flip(Engine* engine, const char* variant, SwitchWriter writer) {
  const SwitchOutcome outcome = engine->switch_groups({{"spinlock", variant}}, {.writer = writer});
  ASSERT_TRUE(outcome.committed()) << outcome.status.error().to_string();
  EXPECT_EQ(engine->current_variant("spinlock").value(), variant);
}

// A lock only NMI handlers take (one their own vCPU's normal context may hold would deadlock).
struct NmiCounter {
  SpinLock* lock = nullptr;
  std::uint64_t counter = 0;
  std::atomic<int> inside{0};
  std::atomic<bool> overlap{false};
  std::atomic<std::uint64_t> runs{0};
};
NmiCounter g_nmi;

void nmi_takes_a_lock(sync::VcpuId, void*) {
  spin_lock(g_nmi.lock);
  if (g_nmi.inside.fetch_add(1, std::memory_order_relaxed) != 0) g_nmi.overlap.store(true);
  ++g_nmi.counter;
  g_nmi.inside.fetch_sub(1, std::memory_order_relaxed);
  spin_unlock(g_nmi.lock);
  g_nmi.runs.fetch_add(1, std::memory_order_relaxed);
}

// vCPUs hammer a few locks, each guarding a counter, while the group switches back and forth
// thousands of times, the simulated hypervisor preempts them at random (from a fixed seed), and
// NMIs whose handler takes a lock of the group arrive on every vCPU:
// held locks, spinning waiters and (in pv) sleeping ones are all converted, and nobody ever runs
// one encoding's code on the other's word. Mutual exclusion and no lost update must hold.
TEST_P(EachWriter, LockStateConverted) {
  Engine* engine = boot_with_state("native");
  ASSERT_NE(engine, nullptr);
  ASSERT_TRUE(hypervisor::install().ok());
  SpinLock nmi_lock("taken-in-nmi");
  g_nmi.lock = &nmi_lock;
  sync::set_nmi_handler(&nmi_takes_a_lock);
  constexpr int kVcpus = 2;
  constexpr int kLocks = 3;
  struct Guarded {
    SpinLock lock{"hazard-counter"};
    std::uint64_t counter = 0;
    std::atomic<int> inside{0};
  };
  std::vector<std::unique_ptr<Guarded>> guarded;
  guarded.reserve(kLocks);
  for (int i = 0; i < kLocks; ++i)
    guarded.push_back(std::make_unique<Guarded>());
  std::atomic<bool> stop{false};
  std::atomic<bool> overlap{false};
  bool wrong_encoding = false;
  std::uint64_t tallies[kVcpus] = {};
  {
    std::vector<std::unique_ptr<VcpuThread>> vcpus;
    vcpus.reserve(kVcpus);
    for (int v = 0; v < kVcpus; ++v) {
      vcpus.push_back(std::make_unique<VcpuThread>([&, v](sync::Vcpu& self) {
        for (std::uint64_t i = 0; !stop.load(std::memory_order_relaxed); ++i) {
          Guarded& g = *guarded[(i + static_cast<std::uint64_t>(v)) % kLocks];
          spin_lock(&g.lock);
          if (g.inside.fetch_add(1, std::memory_order_relaxed) != 0) overlap.store(true);
          ++g.counter;
          ++tallies[v];
          g.inside.fetch_sub(1, std::memory_order_relaxed);
          spin_unlock(&g.lock);
          self.quiescent_state();
        }
      }));
    }
    std::vector<sync::VcpuId> ids;
    ids.reserve(vcpus.size());
    for (const auto& v : vcpus)
      ids.push_back(v->id());
    hypervisor::Preemptor preemptor(hypervisor::schedule(
        0x10c4, ids, 1000000,
        {.min_gap = 200us, .max_gap = 2ms, .min_duration = 50us, .max_duration = 1ms}));
    std::atomic<bool> stop_nmis{false};
    std::thread nmis([&] {  // not a vCPU
      while (!stop_nmis.load(std::memory_order_relaxed)) {
        for (const sync::VcpuId id : ids)
          sync::send_nmi(id);
        std::this_thread::sleep_for(200us);
      }
    });
    for (int i = 0; i < 2000 && !overlap.load(); ++i) {
      const char* variant = i % 2 == 0 ? "pv" : "native";
      flip(engine, variant, GetParam());
      // After every commit each lock is in the encoding of the code its sites now hold.
      const int encoding = std::string(variant) == "pv" ? kPvVariant : kNativeVariant;
      for (const auto& g : guarded) {
        if (word::tag(g->lock.load_word()) != word::tag_of_variant(encoding)) {
          ADD_FAILURE() << "lock word 0x" << std::hex << g->lock.load_word()
                        << " after switching to " << variant;
          wrong_encoding = true;
        }
      }
      if (wrong_encoding) break;
    }
    preemptor.stop();
    stop_nmis.store(true);
    nmis.join();
    EXPECT_GT(preemptor.played(), 0u) << "no vCPU was ever preempted";
    stop.store(true);
    // Joining waits for every vCPU to finish its last acquisition: a vCPU stranded on a lock that
    // was not converted keeps the test from ending, which ctest's timeout turns into a failure.
  }
  std::uint64_t sum = 0;
  std::uint64_t counted = 0;
  for (std::uint64_t t : tallies)
    sum += t;
  for (const auto& g : guarded)
    counted += g->counter;
  EXPECT_FALSE(overlap.load()) << "two vCPUs were inside one lock at once";
  EXPECT_EQ(counted, sum) << "an update was lost";
  EXPECT_GT(sum, 2000u);
  sync::set_nmi_handler(nullptr);
  EXPECT_GT(g_nmi.runs.load(), 0u) << "no NMI ever ran";
  EXPECT_FALSE(g_nmi.overlap.load()) << "two NMI handlers were inside the NMI lock at once";
  EXPECT_EQ(g_nmi.counter, g_nmi.runs.load()) << "an NMI handler's update was lost";
  EXPECT_EQ(classify(nmi_lock.load_word()), LockState::kUnlocked);
  for (const auto& g : guarded)
    EXPECT_EQ(classify(g->lock.load_word()), LockState::kUnlocked);
  EXPECT_TRUE(engine->verify_sites().ok());
}

// A pv waiter asleep in its futex when the group switches to native: native unlock never kicks,
// so the switch itself must wake it, and it restarts on the native code.
TEST_P(EachWriter, SleepingWaitersNotStranded) {
  Engine* engine = boot_with_state("pv");
  ASSERT_NE(engine, nullptr);
  SpinLock lock("sleepers");
  Holder holder;
  VcpuThread h(holder.body(lock));
  await([&] { return holder.holding.load(); }, "the holder has the lock");
  Waiter waiter;
  VcpuThread w(waiter.body(lock));
  await([&] { return word::sleepers(lock.load_word()) == 1 && !sync::slot(w.id()).online.load(); },
        "the waiter sleeps in the futex, offline");
  flip(engine, "native", GetParam());
  holder.release.store(true);
  // Without the wake the waiter sleeps for ever: await() fails the test after its patience.
  await([&] { return waiter.acquired.load(); }, "the woken waiter has the lock, on native code");
  await([&] { return classify(lock.load_word()) == LockState::kUnlocked; }, "all released");
}

// A lock whose word is in no encoding (overwritten) refuses the switch with the lock named, and
// nothing is written or converted.
TEST_P(EachWriter, CorruptLockRefused) {
  Engine* engine = boot_with_state("native");
  ASSERT_NE(engine, nullptr);
  SpinLock healthy("healthy");
  SpinLock corrupt("overwritten");
  const std::uint64_t healthy_word = healthy.load_word();
  corrupt.word().store(0x00ff00ff00ff00ffu);  // no tag: nobody's encoding
  const EngineStatus before = engine->status();
  const SwitchOutcome outcome = engine->switch_groups({{"spinlock", "pv"}}, {.writer = GetParam()});
  ASSERT_FALSE(outcome.committed()) << "a switch went ahead over a corrupt lock";
  EXPECT_EQ(outcome.reason, SwitchAbort::kStateRefused);
  const std::string message = outcome.status.error().message();
  EXPECT_NE(message.find("'overwritten'"), std::string::npos) << message;
  EXPECT_EQ(engine->current_variant("spinlock").value(), "native");
  EXPECT_EQ(healthy.load_word(), healthy_word) << "a lock was converted by a refused switch";
  EXPECT_EQ(current_encoding(), kNativeVariant);
  for (std::size_t i = 0; i < before.sites.size(); ++i) {
    EXPECT_EQ(before.sites[i].bytes, engine->status().sites[i].bytes) << before.sites[i].op;
  }
  corrupt.word().store(healthy_word);  // so that its destructor finds a lock
}

}  // namespace
}  // namespace repatch::guest
