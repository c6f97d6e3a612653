// trigger_reaction: from a reading that crosses a policy threshold to the committed switch of the
// guest's spinlock and tlb groups, through the trigger loop (repatch/triggers.h).
//
// A ManualSource stands for the host: the bench sets a reading on one side of the thresholds, waits
// for the loop to settle, then sets one on the other side and takes the time (t0). The loop polls
// on its grid of `interval`, decides, and switches both groups with the engine (stop-machine: the
// groups carry state); the decision's switched_at is stamped when switch_groups returns. Each
// crossing is one sample; crossings alternate up (native -> pv) and down (pv -> native).
//
//   reaction = switched_at - t0 = (wait for the next poll: uniform in [0, interval))
//                                 + (decision + switch_groups call, blackout included)
//
// Reported per case: the reaction's median and p99, its two parts (poll wait, switch call) and the
// blackout, in microseconds. The bound the design asks for is two intervals plus the blackout.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <exception>
#include <memory>
#include <thread>
#include <vector>

#include "bench/guest_threads.h"
#include "bench/stats.h"
#include "guest/hypervisor.h"
#include "guest/lock_state.h"
#include "guest/spinlock.h"
#include "guest/tlb.h"
#include "guest/tlb_group_state.h"
#include "repatch/engine.h"
#include "repatch/triggers.h"

namespace {

using namespace std::chrono_literals;
using repatch::bench::percentile;
using repatch::triggers::Decision;
using repatch::triggers::HintReading;

repatch::Engine* g_engine = nullptr;
repatch::guest::SpinLock* g_lock = nullptr;

struct Row {
  int vcpus;
  double interval_ms;
  double med_us, p99_us, poll_med_us, switch_med_us, blackout_med_us, bound_us;
  std::size_t samples, over_bound;
};
std::vector<Row> g_rows;

HintReading steal(double percent) {
  HintReading r;
  r.steal_percent = percent;
  return r;
}

// Args: vCPUs, interval in microseconds.
void BM_TriggerReaction(benchmark::State& state) {
  const int vcpus = static_cast<int>(state.range(0));
  const auto interval = std::chrono::microseconds(state.range(1));
  std::uint64_t counter = 0;  // guarded by g_lock
  repatch::bench::GuestVcpus guests(vcpus, 64, [&](repatch::sync::Vcpu& self, std::uint64_t i) {
    if (i == 1) repatch::tlb::attach();
    {
      repatch::guest::SpinGuard guard(*g_lock);
      counter = counter + 1;
    }
    (void)repatch::tlb::translate(i % 8);
    if (i % 16 == 0) repatch::tlb::checkpoint();
    self.quiescent_state();
  });

  auto manual = std::make_unique<repatch::triggers::ManualSource>();
  repatch::triggers::ManualSource* source = manual.get();
  source->set(steal(0));
  std::atomic<std::int64_t> committed_at{0};
  std::atomic<std::uint64_t> commits{0};
  repatch::triggers::TriggerConfig config;
  config.policy.min_dwell = 0s;
  config.policy.max_switches = 1000000;
  config.interval = interval;
  config.log_capacity = 100000;
  config.on_decision = [&](const Decision& d) {
    if (d.action == repatch::triggers::Action::kSwitch && d.committed) {
      committed_at.store(d.switched_at.count());
      commits.fetch_add(1);
    }
  };
  auto loop = repatch::triggers::TriggerLoop::create(std::move(manual), config,
                                                     repatch::triggers::engine_switcher(g_engine));
  if (!loop.ok() || !loop.value()->start().ok()) {
    state.SkipWithError("cannot start the trigger loop");
    return;
  }
  const repatch::triggers::Clock clock = repatch::triggers::steady_clock();
  std::vector<double> reaction_us, poll_us, switch_us, blackout_us;
  bool up = true;
  for (auto _ : state) {
    const std::uint64_t before = commits.load();
    // Off the poll grid: a random phase, so the wait for the next poll is a fair sample.
    std::this_thread::sleep_for(std::chrono::microseconds(std::rand() % state.range(1)));
    const std::chrono::nanoseconds t0 = clock();
    source->set(steal(up ? 40 : 0));
    while (commits.load() == before)
      std::this_thread::sleep_for(20us);
    const std::chrono::nanoseconds reaction{committed_at.load() - t0.count()};
    state.SetIterationTime(static_cast<double>(reaction.count()) / 1e9);
    reaction_us.push_back(static_cast<double>(reaction.count()) / 1e3);
    up = !up;
  }
  loop.value()->stop();
  for (const Decision& d : loop.value()->decisions()) {
    if (d.action != repatch::triggers::Action::kSwitch || !d.committed) continue;
    switch_us.push_back(static_cast<double>((d.switched_at - d.decided_at).count()) / 1e3);
    blackout_us.push_back(static_cast<double>(d.blackout.count()) / 1e3);
  }
  for (std::size_t i = 0; i < reaction_us.size() && i < switch_us.size(); ++i) {
    poll_us.push_back(reaction_us[i] - switch_us[i]);
  }
  Row row{vcpus,
          static_cast<double>(state.range(1)) / 1e3,
          percentile(reaction_us, 0.5),
          percentile(reaction_us, 0.99),
          percentile(poll_us, 0.5),
          percentile(switch_us, 0.5),
          percentile(blackout_us, 0.5),
          0,
          reaction_us.size(),
          0};
  for (std::size_t i = 0; i < reaction_us.size() && i < blackout_us.size(); ++i) {
    const double bound = 2 * static_cast<double>(state.range(1)) + blackout_us[i];
    row.over_bound += reaction_us[i] > bound ? 1 : 0;
  }
  row.bound_us = 2 * static_cast<double>(state.range(1)) + row.blackout_med_us;
  state.counters["med_us"] = row.med_us;
  state.counters["p99_us"] = row.p99_us;
  state.counters["poll_med_us"] = row.poll_med_us;
  state.counters["switch_med_us"] = row.switch_med_us;
  state.counters["blackout_med_us"] = row.blackout_med_us;
  state.counters["over_bound"] = static_cast<double>(row.over_bound);
  g_rows.push_back(row);
}

// Iterations is per registration, hence two: fewer crossings for the long interval.
BENCHMARK(BM_TriggerReaction)
    ->ArgsProduct({{2, 8}, {1000, 10000}})
    ->Iterations(200)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_TriggerReaction)
    ->ArgsProduct({{2, 8}, {100000}})
    ->Iterations(40)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

void print_summary(std::FILE* out) {
  std::fprintf(out,
               "\nreaction: reading crosses the threshold -> switch of spinlock+tlb committed "
               "(microseconds)\n");
  std::fprintf(out, "%5s %10s %9s %9s %9s %9s %9s %14s %8s\n", "vCPUs", "interval", "median", "p99",
               "poll_med", "call_med", "blackout", "2*int+blackout", "over");
  for (const Row& r : g_rows) {
    std::fprintf(out, "%5d %8.0fms %9.0f %9.0f %9.0f %9.0f %9.0f %14.0f %4zu/%zu\n", r.vcpus,
                 r.interval_ms, r.med_us, r.p99_us, r.poll_med_us, r.switch_med_us,
                 r.blackout_med_us, r.bound_us, r.over_bound, r.samples);
  }
}

bool boot() {
  auto engine = repatch::boot({.initial = {{"spinlock", "native"}, {"tlb", "native"}}});
  if (!engine.ok()) {
    std::fprintf(stderr, "trigger_reaction: boot failed: %s\n", engine.error().to_string().c_str());
    return false;
  }
  g_engine = engine.value();
  auto ok = [](const repatch::Status& s, const char* what) {
    if (!s.ok()) {
      std::fprintf(stderr, "trigger_reaction: %s: %s\n", what, s.error().to_string().c_str());
    }
    return s.ok();
  };
  if (!ok(repatch::guest::adopt_engine_variant(), "adopt_engine_variant") ||
      !ok(g_engine->set_group_state("spinlock", &repatch::guest::spinlock_group_state()),
          "set_group_state spinlock") ||
      !ok(g_engine->set_group_state("tlb", &repatch::tlb::group_state()), "set_group_state tlb") ||
      !ok(repatch::hypervisor::install(), "hypervisor::install")) {
    return false;
  }
  repatch::sync::set_nmi_handler(
      [](repatch::sync::VcpuId self, void*) { repatch::tlb::on_interrupt(self); });
  repatch::hypervisor::set_resume_hook(&repatch::tlb::resume_hook);
  repatch::tlb::page_table_reset();
  repatch::tlb::tlbs_reset();
  g_lock = new repatch::guest::SpinLock("trigger_reaction");  // lives for the whole run
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  // The loop's std::function, vectors and thread may throw (allocation, thread creation): say so
  // rather than terminate without a word.
  try {
    // Before benchmark::Initialize and before any thread exists.
    if (!boot()) return 1;
    return repatch::bench::run_benchmarks(argc, argv, &print_summary);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "trigger_reaction: %s\n", e.what());
    return 1;
  }
}
