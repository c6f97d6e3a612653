// The simulated hypervisor: parking and resuming vCPUs, the preempted flag, steal time, the resume
// hook, interrupts held while parked, and the seeded schedule. No timed assertions: every wait is
// bounded and generous, and every "did not happen" is one that cannot happen while a vCPU is
// parked, whatever the machine's load.
#include "guest/hypervisor.h"

#include <gtest/gtest.h>
#include <pthread.h>
#include <sched.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <memory>
#include <thread>
#include <vector>

#include "guest/preempted.h"
#include "sync/vcpu.h"
#include "tests/support/eventually.h"

namespace repatch::hypervisor {
namespace {

using namespace std::chrono_literals;
using testing::kPatience;

using testing::eventually;

// A vCPU thread that counts loop iterations until told to stop.
class Spinner {
 public:
  Spinner()
      : thread_([this] {
          std::unique_ptr<sync::Vcpu> self = sync::Vcpu::enter().value();
          id_.store(self->id());
          ready_.store(true);
          while (!stop_.load(std::memory_order_relaxed)) {
            iterations_.fetch_add(1, std::memory_order_relaxed);
            self->quiescent_state();
          }
        }) {
    EXPECT_TRUE(eventually([this] { return ready_.load(); }));
  }
  ~Spinner() {
    stop_.store(true);
    thread_.join();
  }
  sync::VcpuId id() const { return id_.load(); }
  std::uint64_t iterations() const { return iterations_.load(); }

 private:
  std::atomic<bool> ready_{false};
  std::atomic<bool> stop_{false};
  std::atomic<sync::VcpuId> id_{0};
  std::atomic<std::uint64_t> iterations_{0};
  std::thread thread_;
};

TEST(Hypervisor, ParksSetsPreemptedAccountsStealAndResumes) {
  ASSERT_TRUE(install().ok());
  ASSERT_NE(preempt_signal(), 0);
  EXPECT_NE(preempt_signal(), sync::ipi_signal());
  EXPECT_NE(preempt_signal(), sync::nmi_signal());
  Spinner vcpu;
  const sync::VcpuId id = vcpu.id();
  ASSERT_TRUE(eventually([&] { return vcpu.iterations() > 0; }));
  EXPECT_FALSE(hypervisor::preempted(id).load());

  ASSERT_EQ(preempt(id), 0);
  ASSERT_TRUE(wait_parked(id, kPatience));
  EXPECT_TRUE(hypervisor::preempted(id).load());
  EXPECT_TRUE(sync::slot(id).online.load()) << "a preempted vCPU is not idle";
  const auto parked_at = std::chrono::steady_clock::now();
  const std::uint64_t frozen = vcpu.iterations();
  std::this_thread::sleep_for(20ms);
  EXPECT_EQ(vcpu.iterations(), frozen) << "a parked vCPU ran guest code";
  EXPECT_TRUE(parked(id));
  const auto resumed_at = std::chrono::steady_clock::now();
  resume(id);
  ASSERT_TRUE(wait_running(id, kPatience));
  EXPECT_FALSE(hypervisor::preempted(id).load());
  EXPECT_TRUE(eventually([&] { return vcpu.iterations() > frozen; }));
  EXPECT_EQ(preemptions(id), 1u);
  // The park began before we saw it and ended after we asked for the end.
  EXPECT_GE(steal_ns(id),
            static_cast<std::uint64_t>(std::chrono::nanoseconds(resumed_at - parked_at).count()));
}

TEST(Hypervisor, TimedPreemptionEndsByItself) {
  ASSERT_TRUE(install().ok());
  Spinner vcpu;
  const sync::VcpuId id = vcpu.id();
  ASSERT_EQ(preempt(id, 5ms), 0);
  ASSERT_TRUE(eventually([&] { return preemptions(id) == 1; }));
  ASSERT_TRUE(wait_running(id, kPatience));
  EXPECT_GE(steal_ns(id), 5'000'000u) << "a timed preemption lasts at least its duration";
  EXPECT_FALSE(hypervisor::preempted(id).load());
}

TEST(Hypervisor, ResumeBeforeTheSignalLandsEndsThatPreemption) {
  ASSERT_TRUE(install().ok());
  Spinner vcpu;
  const sync::VcpuId id = vcpu.id();
  ASSERT_EQ(preempt(id), 0);
  resume(id);  // possibly before the handler runs: it must not then park for ever
  ASSERT_TRUE(wait_running(id, kPatience));
  EXPECT_EQ(preemptions(id), 1u);
}

TEST(Hypervisor, RefusesWhatItCannotDo) {
  ASSERT_TRUE(install().ok());
  Spinner vcpu;
  const sync::VcpuId id = vcpu.id();
  ASSERT_EQ(preempt(id), 0);
  EXPECT_EQ(preempt(id), EBUSY);
  ASSERT_TRUE(wait_parked(id, kPatience));
  EXPECT_EQ(preempt(id), EBUSY);
  resume(id);
  ASSERT_TRUE(wait_running(id, kPatience));
  EXPECT_EQ(preempt(static_cast<sync::VcpuId>(sync::kMaxVcpus - 1)), ESRCH);
  EXPECT_EQ(preempt(static_cast<sync::VcpuId>(sync::kMaxVcpus)), ESRCH);
}

std::atomic<int> g_hook_calls{0};
std::atomic<int> g_hook_saw_preempted{0};
std::atomic<int> g_hook_wrong_vcpu{0};
std::atomic<sync::VcpuId> g_hook_expected{0};

TEST(Hypervisor, ResumeHookRunsOnTheVcpuAfterPreemptedIsCleared) {
  ASSERT_TRUE(install().ok());
  set_resume_hook([](sync::VcpuId self) {
    g_hook_calls.fetch_add(1);
    if (hypervisor::preempted(self).load()) g_hook_saw_preempted.fetch_add(1);
    const sync::Vcpu* current = sync::Vcpu::current();
    if (current == nullptr || current->id() != self || self != g_hook_expected.load()) {
      g_hook_wrong_vcpu.fetch_add(1);
    }
  });
  Spinner vcpu;
  g_hook_expected.store(vcpu.id());
  for (int i = 0; i < 5; ++i) {
    ASSERT_EQ(preempt(vcpu.id(), 1ms), 0);
    ASSERT_TRUE(eventually([&] { return preemptions(vcpu.id()) == static_cast<unsigned>(i + 1); }));
    ASSERT_TRUE(wait_running(vcpu.id(), kPatience));
  }
  set_resume_hook(nullptr);
  EXPECT_EQ(g_hook_calls.load(), 5);
  EXPECT_EQ(g_hook_saw_preempted.load(), 0);
  EXPECT_EQ(g_hook_wrong_vcpu.load(), 0);
}

std::atomic<int> g_nmis{0};

TEST(Hypervisor, InterruptsToAParkedVcpuWaitForItsResume) {
  ASSERT_TRUE(install().ok());
  sync::set_nmi_handler([](sync::VcpuId, void*) { g_nmis.fetch_add(1); });
  Spinner vcpu;
  ASSERT_EQ(preempt(vcpu.id()), 0);
  ASSERT_TRUE(wait_parked(vcpu.id(), kPatience));
  ASSERT_EQ(sync::send_nmi(vcpu.id()), 0);
  std::this_thread::sleep_for(20ms);
  EXPECT_EQ(g_nmis.load(), 0) << "a parked vCPU took an NMI";
  resume(vcpu.id());
  EXPECT_TRUE(eventually([] { return g_nmis.load() == 1; }));
  sync::set_nmi_handler(nullptr);
}

TEST(Hypervisor, ScheduleIsAFunctionOfTheSeed) {
  const std::vector<sync::VcpuId> vcpus = {3, 5, 9};
  const ScheduleOptions options;
  const std::vector<Preemption> a = schedule(42, vcpus, 200, options);
  const std::vector<Preemption> b = schedule(42, vcpus, 200, options);
  const std::vector<Preemption> c = schedule(43, vcpus, 200, options);
  ASSERT_EQ(a.size(), 200u);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  EXPECT_EQ(schedule(42, vcpus, 50, options), std::vector<Preemption>(a.begin(), a.begin() + 50))
      << "a shorter schedule is a prefix of a longer one";
  bool seen[3] = {};
  for (const Preemption& p : a) {
    ASSERT_TRUE(p.vcpu == 3 || p.vcpu == 5 || p.vcpu == 9);
    seen[p.vcpu == 3 ? 0 : p.vcpu == 5 ? 1 : 2] = true;
    EXPECT_GE(p.gap, options.min_gap);
    EXPECT_LE(p.gap, options.max_gap);
    EXPECT_GE(p.duration, options.min_duration);
    EXPECT_LE(p.duration, options.max_duration);
  }
  EXPECT_TRUE(seen[0] && seen[1] && seen[2]);
}

TEST(Hypervisor, PreemptorPlaysTheScheduleAndStealAddsUp) {
  ASSERT_TRUE(install().ok());
  Spinner first;
  Spinner second;
  const std::vector<Preemption> plan =
      schedule(7, {first.id(), second.id()}, 20,
               {.min_gap = 50us, .max_gap = 500us, .min_duration = 100us, .max_duration = 1ms});
  std::uint64_t expected_count[2] = {};
  std::uint64_t expected_steal[2] = {};
  for (const Preemption& p : plan) {
    const int i = p.vcpu == first.id() ? 0 : 1;
    ++expected_count[i];
    expected_steal[i] += static_cast<std::uint64_t>(p.duration.count());
  }
  Preemptor preemptor(plan);
  ASSERT_TRUE(eventually([&] { return preemptor.done(); }));
  EXPECT_EQ(preemptor.played(), plan.size());
  EXPECT_EQ(preemptions(first.id()), expected_count[0]);
  EXPECT_EQ(preemptions(second.id()), expected_count[1]);
  EXPECT_GE(steal_ns(first.id()), expected_steal[0]);
  EXPECT_GE(steal_ns(second.id()), expected_steal[1]);
  EXPECT_FALSE(hypervisor::preempted(first.id()).load());
  EXPECT_FALSE(hypervisor::preempted(second.id()).load());
}

// Whether this process may give one of its threads SCHED_FIFO (root, CAP_SYS_NICE or an
// RLIMIT_RTPRIO): asked of a thread of its own, which then ends.
bool may_run_realtime() {
  std::atomic<bool> release{false};
  std::thread probe([&] {
    while (!release.load())
      std::this_thread::sleep_for(1ms);
  });
  sched_param param{};
  param.sched_priority = sched_get_priority_min(SCHED_FIFO);
  const bool allowed = pthread_setschedparam(probe.native_handle(), SCHED_FIFO, &param) == 0;
  release.store(true);
  probe.join();
  return allowed;
}

TEST(Hypervisor, PreemptorRunsRealtimeOnlyWhenAskedAndAllowed) {
  ASSERT_TRUE(install().ok());
  Spinner vcpu;
  // One preemption after a gap longer than the test: the thread only has to exist.
  const std::vector<Preemption> plan = {{.vcpu = vcpu.id(), .gap = 1h, .duration = 1ms}};
  Preemptor normal(plan);
  EXPECT_FALSE(normal.realtime());
  Preemptor host(plan, HostPriority::kRealtime);
  // Where SCHED_FIFO is refused, the Preemptor must say so (and still play as a normal thread).
  EXPECT_EQ(host.realtime(), may_run_realtime());
}

}  // namespace
}  // namespace repatch::hypervisor
