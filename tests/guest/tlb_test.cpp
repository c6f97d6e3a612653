// The tlb group: no vCPU uses a translation older than a completed shootdown, with both variants
// and with targets the hypervisor preempts; the paravirt shootdown does not wait for a preempted
// target, which flushes on resume; switching pv -> native drains the flush-on-resume marks (H10),
// and without the drain a vCPU resumes with a stale TLB.
//
// Each test is its own process (ctest runs one per test): boot() first, before any thread starts.
// No timed assertions: waits are bounded and generous, and every "has not happened yet" is one
// that cannot happen while a vCPU is parked.
#include "guest/tlb.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "base/test_hooks.h"
#include "guest/hypervisor.h"
#include "guest/tlb_group_state.h"
#include "repatch/engine.h"
#include "sync/vcpu.h"
#include "tests/support/each_writer.h"
#include "tests/support/eventually.h"

namespace repatch::tlb {
namespace {

using namespace std::chrono_literals;
using testing::kPatience;

using testing::eventually;

// What every test does first, on its single thread: boot with the tlb group in `variant`, route
// NMIs to the TLB, hook the hypervisor's resume path, and start from empty TLBs.
Engine* setup(const char* variant) {
  Result<Engine*> engine = boot({.initial = {{"tlb", variant}}});
  EXPECT_TRUE(engine.ok()) << engine.error().to_string();
  EXPECT_TRUE(hypervisor::install().ok());
  sync::set_nmi_handler([](sync::VcpuId self, void*) { on_interrupt(self); });
  hypervisor::set_resume_hook(&resume_hook);
  page_table_reset();
  tlbs_reset();
  return engine.ok() ? engine.value() : nullptr;
}

// A vCPU that translates pages [0, pages) in a loop, with a checkpoint every 16 translations
// (where a kernel would have interrupts on: rarely enough that a vCPU resumed without its flush
// translates with its old TLB for a while), and can also shoot pages down itself.
class Walker {
 public:
  explicit Walker(std::uint64_t pages, int remaps = 0, const CpuMask* targets = nullptr)
      : thread_([this, pages, remaps, targets] {
          std::unique_ptr<sync::Vcpu> self = sync::Vcpu::enter().value();
          attach();
          id_.store(self->id());
          ready_.store(true);
          std::uint64_t page = 0;
          std::uint32_t frame = 1000 * (self->id() + 1);
          int done_remaps = 0;
          while (!stop_.load(std::memory_order_relaxed)) {
            const Translation t = translate(page % pages);
            last_frame_[page % pages].store(t.frame, std::memory_order_relaxed);
            translations_.fetch_add(1, std::memory_order_relaxed);
            if (page % 16 == 0) checkpoint();
            if (done_remaps < remaps && page % 8 == 0 &&
                remaps_open_.load(std::memory_order_relaxed)) {
              Shootdown report{};
              remap(page % pages, ++frame, *targets, &report);
              marked_.fetch_add(report.marked, std::memory_order_relaxed);
              ++done_remaps;
              remaps_done_.fetch_add(1, std::memory_order_relaxed);
            }
            ++page;
            self->quiescent_state();
          }
        }) {
    EXPECT_TRUE(eventually([this] { return ready_.load(); }));
  }
  ~Walker() { stop(); }
  void stop() {
    stop_.store(true);
    if (thread_.joinable()) thread_.join();
  }
  sync::VcpuId id() const { return id_.load(); }
  std::uint64_t translations() const { return translations_.load(); }
  std::uint32_t last_frame(std::uint64_t page) const { return last_frame_[page].load(); }
  int remaps_done() const { return remaps_done_.load(); }
  /// Remaps start only once opened (they are open from the start unless closed first).
  void set_remaps_open(bool open) { remaps_open_.store(open); }
  std::uint64_t marked() const { return marked_.load(); }

 private:
  std::atomic<bool> ready_{false};
  std::atomic<bool> stop_{false};
  std::atomic<sync::VcpuId> id_{0};
  std::atomic<std::uint64_t> translations_{0};
  std::atomic<int> remaps_done_{0};
  std::atomic<bool> remaps_open_{true};
  std::atomic<std::uint64_t> marked_{0};
  std::atomic<std::uint32_t> last_frame_[kPages] = {};
  std::thread thread_;
};

TEST(Tlb, StaleReadsAreDetected) {
  // The checker itself: an update published as flushed without any shootdown must be caught.
  ASSERT_NE(setup("native"), nullptr);
  std::unique_ptr<sync::Vcpu> self = sync::Vcpu::enter().value();
  attach();
  EXPECT_FALSE(translate(3).stale);
  const std::uint32_t generation = pte_update(3, 77);
  EXPECT_FALSE(translate(3).stale) << "before its shootdown returns, the old translation is fine";
  pte_mark_flushed(3, generation);
  const Translation t = translate(3);
  EXPECT_TRUE(t.stale);
  EXPECT_NE(t.frame, 77u);
  EXPECT_EQ(counters(self->id()).stale_reads, 1u);
  flush_local(3);
  EXPECT_EQ(translate(3).frame, 77u);
  EXPECT_EQ(total_stale_reads(), 1u);
}

TEST(Tlb, LocalFlushAndRemapOnTheCallerAlone) {
  ASSERT_NE(setup("native"), nullptr);
  std::unique_ptr<sync::Vcpu> self = sync::Vcpu::enter().value();
  attach();
  EXPECT_EQ(translate(5).frame, 5u);
  EXPECT_EQ(translate(5).frame, 5u);
  EXPECT_GE(counters(self->id()).hits, 1u);
  CpuMask me;
  me.set(self->id());
  Shootdown report{};
  remap(5, 55, me, &report);
  EXPECT_EQ(report.waited, 0u);
  const Translation t = translate(5);
  EXPECT_EQ(t.frame, 55u);
  EXPECT_FALSE(t.stale);
  EXPECT_EQ(total_stale_reads(), 0u);
}

// Holds the thread posting a flush request to `target` midway through merging its range into the
// target's mailbox (test::Point::kTlbRangeMerge), once, until released.
struct HoldMidMerge {
  explicit HoldMidMerge(sync::VcpuId id) : target(id) {}
  static void at(test::Point point, std::uint32_t vcpu, void* arg) noexcept {
    auto* hold = static_cast<HoldMidMerge*>(arg);
    if (point != test::Point::kTlbRangeMerge || vcpu != hold->target) return;
    if (!hold->armed.exchange(false)) return;
    hold->holding.store(true);
    while (!hold->released.load())
      std::this_thread::yield();
  }
  const sync::VcpuId target;
  std::atomic<bool> armed{true};
  std::atomic<bool> holding{false};
  std::atomic<bool> released{false};
};

TEST(Tlb, RequestMergedWhileTheTargetServesIsHonoured) {
  // The target serves its mailbox while a shooter is midway through merging a request into it,
  // with an earlier request pending: the serve must not take part of the later range and leave the
  // rest to a serve that then vouches for the later ticket without flushing it. The later page is
  // above the earlier one, so its merge leaves the low end as it is (the case that lost it).
  ASSERT_NE(setup("native"), nullptr);
  std::unique_ptr<sync::Vcpu> self = sync::Vcpu::enter().value();
  attach();
  const sync::VcpuId me = self->id();
  constexpr std::uint64_t kEarlier = 3;
  constexpr std::uint64_t kLater = 9;          // another TLB entry than kEarlier's
  EXPECT_EQ(translate(kLater).frame, kLater);  // cached at generation 0
  post_flush(me, kEarlier, 1);                 // posted, its NMI not taken yet
  HoldMidMerge hold(me);
  test::set_injection(&HoldMidMerge::at, &hold);
  CpuMask target;
  target.set(me);
  std::atomic<bool> returned{false};
  std::thread shooter([&] {
    std::unique_ptr<sync::Vcpu> shooter_self = sync::Vcpu::enter().value();
    attach();
    remap(kLater, 99, target);
    returned.store(true);
  });
  ASSERT_TRUE(eventually([&] { return hold.holding.load(); }));
  checkpoint();  // serves the earlier request, mid-merge of the later one
  hold.released.store(true);
  // The shooter takes its ticket and waits for it: serve it (here or in the NMI handler).
  EXPECT_TRUE(eventually([&] {
    checkpoint();
    return returned.load();
  }));
  shooter.join();
  test::set_injection(nullptr, nullptr);
  const Translation t = translate(kLater);
  EXPECT_FALSE(t.stale) << "the shootdown of page " << kLater
                        << " returned with this vCPU still caching generation " << t.generation;
  EXPECT_EQ(t.frame, 99u);
  EXPECT_EQ(total_stale_reads(), 0u);
}

// Walkers translate while shooters (themselves walkers) remap pages on everyone, and the hypervisor
// preempts them all at random. Not one stale translation may appear.
void no_stale_read_under_fire(const char* variant) {
  ASSERT_NE(setup(variant), nullptr);
  constexpr std::uint64_t kPagesUsed = 24;  // wider than one TLB: misses and evictions too
  constexpr int kRemapsEach = 150;
  CpuMask everyone;
  std::vector<std::unique_ptr<Walker>> walkers;
  // Target slots up front: the walkers take the lowest free slots, 0 to 2 in this process.
  for (sync::VcpuId id = 0; id < 3; ++id)
    everyone.set(id);
  for (int i = 0; i < 3; ++i) {
    walkers.push_back(std::make_unique<Walker>(kPagesUsed, kRemapsEach, &everyone));
    walkers.back()->set_remaps_open(false);
  }
  std::vector<sync::VcpuId> ids;
  for (const auto& w : walkers) {
    ASSERT_LT(w->id(), 3) << "walkers were expected in slots 0-2";
    ids.push_back(w->id());
  }
  hypervisor::Preemptor preemptor(hypervisor::schedule(
      0x7eb, ids, 100000,
      {.min_gap = 200us, .max_gap = 2ms, .min_duration = 100us, .max_duration = 2ms}));
  // The shootdowns begin once the hypervisor is preempting: on a busy machine they could otherwise
  // all be over before its first preemption.
  ASSERT_TRUE(eventually([&] { return preemptor.played() > 0; }));
  for (const auto& w : walkers)
    w->set_remaps_open(true);
  ASSERT_TRUE(eventually([&] {
    for (const auto& w : walkers) {
      if (w->remaps_done() < kRemapsEach) return false;
    }
    return true;
  }));
  preemptor.stop();
  for (const auto& w : walkers)
    w->stop();
  std::uint64_t translations = 0;
  std::uint64_t marked = 0;
  for (const auto& w : walkers) {
    translations += w->translations();
    marked += w->marked();
  }
  EXPECT_GT(translations, 0u);
  if (std::strcmp(variant, "pv") == 0) {
    EXPECT_GT(marked, 0u) << "no shootdown found a preempted target: the pv path went untested";
  } else {
    EXPECT_EQ(marked, 0u);
  }
  EXPECT_GT(preemptor.played(), 0u);
  EXPECT_EQ(total_stale_reads(), 0u);
}

TEST(Tlb, NoStaleReadAfterShootdowns_Native) {
  no_stale_read_under_fire("native");
}

TEST(Tlb, NoStaleReadAfterShootdowns_Pv) {
  no_stale_read_under_fire("pv");
}

TEST(Tlb, PvDoesNotWaitForAPreemptedTarget_ItFlushesOnResume) {
  ASSERT_NE(setup("pv"), nullptr);
  Walker target(4);
  const sync::VcpuId id = target.id();
  ASSERT_TRUE(eventually([&] { return target.last_frame(2) == 2; }));
  ASSERT_EQ(hypervisor::preempt(id), 0);  // until resumed
  ASSERT_TRUE(hypervisor::wait_parked(id, kPatience));
  CpuMask mask;
  mask.set(id);
  Shootdown report{};
  remap(2, 222, mask, &report);
  // It returned while the target is still parked: it cannot have waited for it.
  EXPECT_TRUE(hypervisor::parked(id));
  EXPECT_EQ(report.marked, 1u);
  EXPECT_EQ(report.waited, 0u);
  EXPECT_EQ(resume_mark(id), kFlushOnResume);
  const std::uint64_t resume_flushes = counters(id).resume_flushes;
  hypervisor::resume(id);
  ASSERT_TRUE(hypervisor::wait_running(id, kPatience));
  EXPECT_EQ(resume_mark(id), kNoMark);
  EXPECT_EQ(counters(id).resume_flushes, resume_flushes + 1);
  EXPECT_TRUE(eventually([&] { return target.last_frame(2) == 222; }));
  target.stop();
  EXPECT_EQ(total_stale_reads(), 0u);
}

TEST(Tlb, NativeWaitsForAPreemptedTarget) {
  ASSERT_NE(setup("native"), nullptr);
  Walker target(4);
  const sync::VcpuId id = target.id();
  ASSERT_EQ(hypervisor::preempt(id), 0);
  ASSERT_TRUE(hypervisor::wait_parked(id, kPatience));
  std::atomic<bool> returned{false};
  Shootdown report{};
  std::thread shooter([&] {
    std::unique_ptr<sync::Vcpu> self = sync::Vcpu::enter().value();
    attach();
    CpuMask mask;
    mask.set(id);
    remap(2, 222, mask, &report);
    returned.store(true);
  });
  std::this_thread::sleep_for(20ms);
  EXPECT_FALSE(returned.load()) << "a native shootdown returned before its parked target flushed";
  hypervisor::resume(id);
  EXPECT_TRUE(eventually([&] { return returned.load(); }));
  shooter.join();
  EXPECT_EQ(report.waited, 1u);
  EXPECT_EQ(report.marked, 0u);
  EXPECT_EQ(resume_mark(id), kNoMark);
  target.stop();
  EXPECT_EQ(total_stale_reads(), 0u);
}

TEST(Tlb, GroupStateDrainFlushesMarkedVcpus) {
  ASSERT_NE(setup("pv"), nullptr);
  Walker marked(4);
  Walker unmarked(4);
  ASSERT_EQ(hypervisor::preempt(marked.id()), 0);
  ASSERT_TRUE(hypervisor::wait_parked(marked.id(), kPatience));
  CpuMask mask;
  mask.set(marked.id());
  mask.set(unmarked.id());
  Shootdown report{};
  remap(1, 111, mask, &report);
  EXPECT_EQ(report.marked, 1u);
  EXPECT_EQ(report.waited, 1u);
  ASSERT_EQ(resume_mark(marked.id()), kFlushOnResume);
  ASSERT_EQ(resume_mark(unmarked.id()), kNoMark);

  TlbGroupState& state = group_state();
  char why[256];
  EXPECT_TRUE(state.can_convert(kPvVariant, kNativeVariant, why, sizeof why));
  const std::uint64_t drained = state.drained();
  state.convert(kNativeVariant, kPvVariant);  // nothing to convert in that direction
  EXPECT_EQ(resume_mark(marked.id()), kFlushOnResume);
  const std::uint64_t remote_before = counters(marked.id()).remote_flushes;
  state.convert(kPvVariant, kNativeVariant);
  EXPECT_EQ(resume_mark(marked.id()), kNoMark);
  EXPECT_EQ(counters(marked.id()).remote_flushes, remote_before + 1);
  EXPECT_EQ(counters(unmarked.id()).remote_flushes, 0u);
  EXPECT_EQ(state.drained(), drained + 1);
  state.convert(kPvVariant, kNativeVariant);  // idempotent: a second executor finds nothing
  EXPECT_EQ(counters(marked.id()).remote_flushes, remote_before + 1);
  EXPECT_EQ(state.drained(), drained + 1);

  hypervisor::resume(marked.id());
  ASSERT_TRUE(hypervisor::wait_running(marked.id(), kPatience));
  EXPECT_TRUE(eventually([&] { return marked.last_frame(1) == 111; }));
  marked.stop();
  unmarked.stop();
  EXPECT_EQ(total_stale_reads(), 0u);
}

TEST(Tlb, GroupStateRefusesACorruptMark) {
  ASSERT_NE(setup("pv"), nullptr);
  Walker vcpu(4);
  set_resume_mark_raw_for_test(vcpu.id(), 7);
  char why[512];
  EXPECT_FALSE(group_state().can_convert(kPvVariant, kNativeVariant, why, sizeof why));
  EXPECT_NE(std::strstr(why, "vCPU"), nullptr) << why;
  EXPECT_NE(std::strstr(why, "holds 7"), nullptr) << why;
  char tiny[8];
  EXPECT_FALSE(group_state().can_convert(kPvVariant, kNativeVariant, tiny, sizeof tiny));
  EXPECT_EQ(std::strlen(tiny), sizeof tiny - 1) << "cut at the buffer, NUL-terminated";
  set_resume_mark_raw_for_test(vcpu.id(), kNoMark);
  EXPECT_TRUE(group_state().can_convert(kPvVariant, kNativeVariant, why, sizeof why));
}

// H10 end to end: a vCPU the hypervisor preempts while it is idle (offline, so a switch does not
// wait for it) carries a flush-on-resume mark across a switch from pv to native. With the group's
// state registered the switch drains the mark; without it, the vCPU resumes under native (whose
// resume hook knows nothing of marks) and translates with its old TLB.
void resume_after_switch_to_native(bool register_state, bool expect_stale,
                                   SwitchWriter writer = SwitchWriter::kAuto) {
  Engine* engine = setup("pv");
  ASSERT_NE(engine, nullptr);
  if (register_state) {
    ASSERT_TRUE(engine->set_group_state("tlb", &group_state()).ok());
  }
  std::atomic<int> step{0};
  std::atomic<sync::VcpuId> id{0};
  Translation after{};
  std::thread vcpu([&] {
    std::unique_ptr<sync::Vcpu> self = sync::Vcpu::enter().value();
    attach();
    id.store(self->id());
    translate(6);  // cached
    self->go_offline();
    step.store(1);
    while (step.load() != 2)
      std::this_thread::sleep_for(100us);
    self->go_online();
    after = translate(6);  // first thing back: no checkpoint in between
  });
  ASSERT_TRUE(eventually([&] { return step.load() == 1; }));
  ASSERT_EQ(hypervisor::preempt(id.load()), 0);
  ASSERT_TRUE(hypervisor::wait_parked(id.load(), kPatience));
  CpuMask mask;
  mask.set(id.load());
  Shootdown report{};
  remap(6, 666, mask, &report);
  ASSERT_EQ(report.marked, 1u);
  const SwitchOutcome outcome = engine->switch_groups({{"tlb", "native"}}, {.writer = writer});
  ASSERT_TRUE(outcome.committed()) << outcome.status.error().to_string();
  EXPECT_EQ(resume_mark(id.load()), register_state ? kNoMark : kFlushOnResume);
  hypervisor::resume(id.load());
  ASSERT_TRUE(hypervisor::wait_running(id.load(), kPatience));
  step.store(2);
  vcpu.join();
  EXPECT_EQ(after.stale, expect_stale);
  EXPECT_EQ(after.frame == 666, !expect_stale);
}

TEST(Tlb, SwitchToNativeWithoutTheDrainResumesStale) {
  // The hazard the drain exists for: this must go wrong without it.
  resume_after_switch_to_native(/*register_state=*/false, /*expect_stale=*/true);
  EXPECT_EQ(total_stale_reads(), 1u);
}

// H10 as a hazard test, under both writers that can switch a group with state: ctest also runs it
// with REPATCH_TEST_DISABLE=tlb_drain, and that run must fail (tests/CMakeLists.txt).
class EachWriter : public ::testing::TestWithParam<SwitchWriter> {};

INSTANTIATE_TEST_SUITE_P(Hazard, EachWriter, testing::kStatefulWriters, testing::writer_test_name);

TEST_P(EachWriter, TlbFlushNotLostAcrossSwitch) {
  resume_after_switch_to_native(/*register_state=*/true, /*expect_stale=*/false, GetParam());
  EXPECT_EQ(total_stale_reads(), 0u);
}

TEST(Tlb, SwitchesBackAndForthUnderFire) {
  Engine* engine = setup("native");
  ASSERT_NE(engine, nullptr);
  ASSERT_TRUE(engine->set_group_state("tlb", &group_state()).ok());
  CpuMask everyone;
  for (sync::VcpuId id = 0; id < 2; ++id)
    everyone.set(id);
  Walker first(12, 200, &everyone);
  Walker second(12, 200, &everyone);
  hypervisor::Preemptor preemptor(hypervisor::schedule(
      11, {first.id(), second.id()}, 100000,
      {.min_gap = 500us, .max_gap = 3ms, .min_duration = 100us, .max_duration = 1ms}));
  int switches = 0;
  // Until both have shot down their pages and the group has switched at least 20 times.
  while (first.remaps_done() < 200 || second.remaps_done() < 200 || switches < 20) {
    const SwitchOutcome outcome =
        engine->switch_groups({{"tlb", switches % 2 == 0 ? "pv" : "native"}});
    if (outcome.committed()) ++switches;
    std::this_thread::sleep_for(1ms);
  }
  preemptor.stop();
  first.stop();
  second.stop();
  EXPECT_GE(switches, 20);
  EXPECT_EQ(total_stale_reads(), 0u);
}

}  // namespace
}  // namespace repatch::tlb
