// The trigger loop driving the guest's spinlock and tlb groups with the real engine: the
// simulated hypervisor's steal time switches them to pv and, once preemptions stop, back to
// native; and a reading that crosses a threshold is followed by a committed switch within two
// polling intervals plus the blackout (a generous bound; bench/trigger_reaction.cpp measures it).
//
// Each test is its own process: boot() first, before any thread starts.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <memory>
#include <thread>
#include <vector>

#include "guest/hypervisor.h"
#include "guest/lock_state.h"
#include "guest/simulated_source.h"
#include "guest/spinlock.h"
#include "guest/tlb.h"
#include "guest/tlb_group_state.h"
#include "repatch/engine.h"
#include "repatch/triggers.h"
#include "sync/vcpu.h"
#include "tests/support/eventually.h"

namespace repatch::triggers {
namespace {

using namespace std::chrono_literals;
using repatch::testing::eventually;

Engine* setup() {
  Result<Engine*> engine = boot({.initial = {{"spinlock", "native"}, {"tlb", "native"}}});
  EXPECT_TRUE(engine.ok()) << engine.error().to_string();
  if (!engine.ok()) return nullptr;
  EXPECT_TRUE(guest::adopt_engine_variant().ok());
  EXPECT_TRUE(engine.value()->set_group_state("spinlock", &guest::spinlock_group_state()).ok());
  EXPECT_TRUE(engine.value()->set_group_state("tlb", &tlb::group_state()).ok());
  EXPECT_TRUE(hypervisor::install().ok());
  sync::set_nmi_handler([](sync::VcpuId self, void*) { tlb::on_interrupt(self); });
  hypervisor::set_resume_hook(&tlb::resume_hook);
  tlb::page_table_reset();
  tlb::tlbs_reset();
  return engine.value();
}

// vCPUs that take a shared spinlock, translate pages, and (vCPU 0) remap a page with a shootdown
// on every vCPU now and then: both groups' ops run while the trigger switches them.
class Guest {
 public:
  explicit Guest(int vcpus) : lock_("trigger test") {
    for (int i = 0; i < vcpus; ++i) {
      threads_.emplace_back([this, i, vcpus] {
        std::unique_ptr<sync::Vcpu> self = sync::Vcpu::enter().value();
        tlb::attach();
        ids_[i].store(self->id());
        started_.fetch_add(1);
        while (started_.load() < vcpus)
          std::this_thread::yield();
        tlb::CpuMask all;
        for (int v = 0; v < vcpus; ++v)
          all.set(ids_[v].load());
        std::uint32_t frame = 100;
        for (std::uint64_t n = 0; !stop_.load(std::memory_order_relaxed); ++n) {
          {
            guest::SpinGuard guard(lock_);
            counter_ = counter_ + 1;
          }
          increments_.fetch_add(1, std::memory_order_relaxed);
          (void)tlb::translate(n % 8);
          if (n % 16 == 0) tlb::checkpoint();
          if (i == 0 && n % 512 == 0) tlb::remap(n % 8, ++frame, all);
          self->quiescent_state();
        }
      });
    }
    while (started_.load() < vcpus)
      std::this_thread::yield();
  }
  ~Guest() { stop(); }
  void stop() {
    stop_.store(true);
    for (std::thread& t : threads_) {
      if (t.joinable()) t.join();
    }
  }
  std::vector<sync::VcpuId> ids() const {
    std::vector<sync::VcpuId> out;
    for (std::size_t i = 0; i < threads_.size(); ++i)
      out.push_back(ids_[i].load());
    return out;
  }
  std::uint64_t counter() const { return counter_; }
  std::uint64_t increments() const { return increments_.load(); }

 private:
  guest::SpinLock lock_;
  std::uint64_t counter_ = 0;  // guarded by lock_
  std::atomic<std::uint64_t> increments_{0};
  std::atomic<sync::VcpuId> ids_[8] = {};
  std::atomic<int> started_{0};
  std::atomic<bool> stop_{false};
  std::vector<std::thread> threads_;
};

std::size_t committed_switches(const TriggerLoop& loop, Mode to) {
  std::size_t n = 0;
  for (const Decision& d : loop.decisions()) {
    n += d.action == Action::kSwitch && d.committed && d.wanted == to ? 1 : 0;
  }
  return n;
}

TEST(TriggerLoop, SimulatedHypervisorDrivesSpinlockAndTlb) {
  Engine* engine = setup();
  ASSERT_NE(engine, nullptr);
  Guest guest(2);
  TriggerConfig config;
  config.policy.steal = Thresholds{.enter = 15, .leave = 2};
  config.policy.min_dwell = 0s;
  config.interval = 20ms;
  config.on_decision = [](const Decision& d) {
    if (d.action != Action::kStay) std::printf("%s\n", describe(d).c_str());
  };
  auto loop =
      TriggerLoop::create(make_simulated_source(guest.ids()), config, engine_switcher(engine));
  ASSERT_TRUE(loop.ok()) << loop.error().to_string();
  ASSERT_TRUE(loop.value()->start().ok());

  {
    // Each vCPU is preempted for 2-6 ms after gaps of 0.2-1 ms: most of its time is stolen.
    hypervisor::Preemptor preemptor(hypervisor::schedule(
        7, guest.ids(), 100000,
        {.min_gap = 200us, .max_gap = 1ms, .min_duration = 2ms, .max_duration = 6ms}));
    ASSERT_TRUE(eventually([&] { return loop.value()->mode() == Mode::kOversubscribed; }));
  }
  EXPECT_EQ(engine->current_variant("spinlock").value(), "pv");
  EXPECT_EQ(engine->current_variant("tlb").value(), "pv");
  // Preemptions over: steal falls to 0 and the groups go back to native.
  ASSERT_TRUE(eventually([&] { return loop.value()->mode() == Mode::kDedicated; }));
  EXPECT_EQ(engine->current_variant("spinlock").value(), "native");
  EXPECT_EQ(engine->current_variant("tlb").value(), "native");
  loop.value()->stop();
  guest.stop();
  EXPECT_EQ(guest.counter(), guest.increments());
  EXPECT_GE(committed_switches(*loop.value(), Mode::kOversubscribed), 1u);
  EXPECT_GE(committed_switches(*loop.value(), Mode::kDedicated), 1u);
  // Every switch decision carries the reading that caused it.
  for (const Decision& d : loop.value()->decisions()) {
    if (d.action != Action::kSwitch) continue;
    ASSERT_TRUE(d.reading.steal_percent.has_value());
    EXPECT_TRUE(d.wanted == Mode::kOversubscribed ? *d.reading.steal_percent >= 15
                                                  : *d.reading.steal_percent <= 2)
        << describe(d);
  }
  EXPECT_TRUE(engine->verify_sites().ok());
}

TEST(TriggerLoop, DecidesWithinTwoIntervalsOfTheCrossing) {
  Engine* engine = setup();
  ASSERT_NE(engine, nullptr);
  Guest guest(2);
  auto manual = std::make_unique<ManualSource>();
  ManualSource* source = manual.get();
  HintReading calm;
  calm.steal_percent = 0.0;
  source->set(calm);
  TriggerConfig config;
  config.policy.min_dwell = 0s;
  config.interval = 50ms;
  config.on_decision = [](const Decision& d) { std::printf("%s\n", describe(d).c_str()); };
  auto loop = TriggerLoop::create(std::move(manual), config, engine_switcher(engine));
  ASSERT_TRUE(loop.ok());
  ASSERT_TRUE(loop.value()->start().ok());
  std::this_thread::sleep_for(120ms);  // a few polls of the calm reading

  HintReading stolen;
  stolen.steal_percent = 40.0;
  const std::chrono::nanoseconds crossed = steady_clock()();
  source->set(stolen);
  ASSERT_TRUE(eventually([&] { return loop.value()->mode() == Mode::kOversubscribed; }));
  loop.value()->stop();
  guest.stop();
  EXPECT_EQ(guest.counter(), guest.increments());

  const std::vector<Decision> log = loop.value()->decisions();
  const auto it = std::find_if(log.begin(), log.end(), [](const Decision& d) {
    return d.action == Action::kSwitch && d.committed;
  });
  ASSERT_NE(it, log.end());
  // The loop's part of the reaction is noticing: the decision comes within two intervals of the
  // crossing. The switch call that follows is the engine's (blackout, planning, retries), and
  // bench/trigger_reaction measures the whole. The bound is generous (1 s of slack): a loaded
  // 2-core machine may not run the loop's thread for a while, and this is not a benchmark.
  const std::chrono::nanoseconds noticed = it->decided_at - crossed;
  const std::chrono::nanoseconds reaction = it->switched_at - crossed;
  EXPECT_LE(noticed, 2 * config.interval + 1s)
      << "decided " << noticed.count() / 1000 << " us after the crossing; " << describe(*it);
  EXPECT_GT(noticed, 0ns);
  EXPECT_GE(reaction, noticed);
  EXPECT_EQ(engine->current_variant("spinlock").value(), "pv");
}

}  // namespace
}  // namespace repatch::triggers
