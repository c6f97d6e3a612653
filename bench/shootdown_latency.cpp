// shootdown_latency: how long one TLB shootdown takes (tlb_flush_many: post a range to every other
// vCPU, NMI them, and wait as the variant requires), native against pv, with every target running
// and with one target preempted by the simulated hypervisor for the whole shootdown.
//
// The engine boots once, in main(), before any thread exists, with the tlb group in native and
// tlb::group_state() registered; each row switches the group to the variant it measures while no
// vCPU thread runs. The NMI handler calls tlb::on_interrupt() and the hypervisor's resume hook is
// tlb::resume_hook, as in tests/guest/tlb_test.cpp.
//
// Targets are vCPU threads that translate pages 0-31 in a loop, call tlb::checkpoint() every 16
// translations, report a QSBR quiescent state and yield every 1024 iterations (a guest kernel's
// scheduling points). The shooter is the benchmark thread, registered as a vCPU for the row.
// Each iteration is one shootdown of 8 pages (pte_update of each, flush_many, pte_mark_flushed),
// timed around flush_many alone and reported as manual time; the median, p99 and maximum over the
// row's shootdowns are the counters med_us, p99_us and max_us. In the preempted rows the first
// target is parked (hypervisor::preempt until resume) before each shootdown and a helper thread
// resumes it 1 ms after the shootdown starts: a native shootdown must wait that out, a pv one
// leaves a flush-on-resume mark. No target may ever translate through a flushed entry
// (tlb::total_stale_reads() stays 0), else the row fails.
#include <benchmark/benchmark.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <tuple>
#include <vector>

#include "bench/guest_threads.h"
#include "bench/stats.h"
#include "guest/hypervisor.h"
#include "guest/machine.h"
#include "guest/tlb.h"
#include "guest/tlb_group_state.h"
#include "repatch/engine.h"
#include "sync/vcpu.h"

namespace {

using repatch::bench::percentile_of_sorted;

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;
namespace tlb = repatch::tlb;
namespace hv = repatch::hypervisor;

constexpr int kShootdowns = 1000;           // per row
constexpr std::uint64_t kPagesWalked = 32;  // by every target
constexpr std::uint64_t kRangePages = 8;    // per shootdown
constexpr auto kPark = 1ms;                 // a preempted target's park, from the shootdown's start
constexpr auto kBetween = 200us;            // untimed, between shootdowns: targets refill TLBs

// ---- statistics ---------------------------------------------------------------------------------

struct RowKey {
  std::string variant;
  int targets;
  bool preempted;
  bool operator<(const RowKey& o) const {
    return std::tie(preempted, targets, variant) < std::tie(o.preempted, o.targets, o.variant);
  }
};
struct RowData {
  std::vector<double> latency_us;
  std::uint64_t waited = 0;
  std::uint64_t marked = 0;
  std::string error;
};
std::map<RowKey, RowData> g_rows;

// ---- the resumer --------------------------------------------------------------------------------

// Resumes a parked vCPU at a deadline, so that a park's end is fixed relative to the shootdown's
// start whatever the shooter does meanwhile.
class Resumer {
 public:
  Resumer() : thread_([this] { run(); }) {}
  ~Resumer() {
    quit_.store(true);
    thread_.join();
  }
  void arm(repatch::sync::VcpuId id, Clock::time_point at) {
    id_.store(id);
    at_.store(at.time_since_epoch().count());
    armed_.store(true, std::memory_order_release);
  }
  // Waits until the armed resume has been issued.
  void wait_fired() {
    while (armed_.load(std::memory_order_acquire))
      std::this_thread::sleep_for(20us);
  }

 private:
  void run() {
    while (!quit_.load()) {
      if (!armed_.load(std::memory_order_acquire)) {
        std::this_thread::sleep_for(20us);
        continue;
      }
      std::this_thread::sleep_until(Clock::time_point(Clock::duration(at_.load())));
      hv::resume(id_.load());
      armed_.store(false, std::memory_order_release);
    }
  }
  std::atomic<bool> quit_{false};
  std::atomic<bool> armed_{false};
  std::atomic<repatch::sync::VcpuId> id_{0};
  std::atomic<Clock::rep> at_{0};
  std::thread thread_;
};

// ---- one row ------------------------------------------------------------------------------------

void BM_Shootdown(benchmark::State& state, const char* variant) {
  const int targets = static_cast<int>(state.range(0));
  const bool preempted = state.range(1) != 0;
  RowData& row = g_rows[{variant, targets, preempted}];
  // The row's samples accumulate over repetitions (for the summary); the counters are this
  // repetition's.
  const std::size_t first_sample = row.latency_us.size();
  const std::uint64_t waited_before = row.waited;
  const std::uint64_t marked_before = row.marked;
  auto fail = [&](std::string why) {
    row.error = std::move(why);
    state.SkipWithError(row.error.c_str());
  };
  // Switched while no vCPU thread runs.
  const repatch::SwitchOutcome outcome = repatch::Engine::get()->switch_groups({{"tlb", variant}});
  if (!outcome.committed()) {
    fail("switch to " + std::string(variant) + " failed: " + outcome.status.error().to_string());
    return;
  }
  tlb::page_table_reset();
  tlb::tlbs_reset();

  std::atomic<int> attached{0};
  std::vector<std::atomic<repatch::sync::VcpuId>> ids(static_cast<std::size_t>(targets));
  std::atomic<int> next{0};
  const repatch::bench::GuestVcpus guests(
      targets, 1024, [&](repatch::sync::Vcpu& self, std::uint64_t iteration) {
        if (iteration == 1) {
          tlb::attach();
          ids[static_cast<std::size_t>(next.fetch_add(1))].store(self.id());
          attached.fetch_add(1);
        }
        benchmark::DoNotOptimize(tlb::translate(iteration % kPagesWalked));
        if (iteration % 16 == 0) tlb::checkpoint();
        self.quiescent_state();
      });
  if (guests.failed() != 0) {
    fail("a target could not register as a vCPU");
    return;
  }
  while (attached.load() < targets)
    std::this_thread::sleep_for(50us);
  tlb::CpuMask mask;
  for (const auto& id : ids)
    mask.set(id.load());
  const repatch::sync::VcpuId victim = ids[0].load();

  auto me = repatch::sync::Vcpu::enter();
  if (!me.ok()) {
    fail("the shooter could not register as a vCPU: " + me.error().to_string());
    return;
  }
  tlb::attach();
  std::optional<Resumer> resumer;  // only where it has work: it polls every 20 us
  if (preempted) resumer.emplace();
  std::uint32_t frame = 5000;
  std::uint64_t first = 0;
  for (auto _ : state) {
    if (preempted) {
      if (hv::preempt(victim) != 0 || !hv::wait_parked(victim, 2s)) {
        fail("the target could not be preempted");
        break;
      }
    }
    std::uint32_t generations[kRangePages];
    for (std::uint64_t p = 0; p < kRangePages; ++p)
      generations[p] = tlb::pte_update(first + p, ++frame);
    tlb::Shootdown request{&mask, first, kRangePages};
    const auto start = Clock::now();
    if (preempted) resumer->arm(victim, start + kPark);
    tlb::flush_many(&request);
    const auto end = Clock::now();
    for (std::uint64_t p = 0; p < kRangePages; ++p)
      tlb::pte_mark_flushed(first + p, generations[p]);
    const double seconds = std::chrono::duration<double>(end - start).count();
    state.SetIterationTime(seconds);
    row.latency_us.push_back(seconds * 1e6);
    row.waited += request.waited;
    row.marked += request.marked;
    if (preempted) {
      resumer->wait_fired();
      if (!hv::wait_running(victim, 2s)) {
        fail("the preempted target did not resume");
        break;
      }
    }
    first = (first + kRangePages) % kPagesWalked;
    me.value()->quiescent_state();
    std::this_thread::sleep_for(kBetween);
  }
  me.value().reset();  // the shooter leaves before the targets stop
  if (!row.error.empty()) return;
  if (const std::uint64_t stale = tlb::total_stale_reads(); stale != 0) {
    fail(std::to_string(stale) + " stale translations after shootdowns");
    return;
  }
  std::vector<double> sorted(row.latency_us.begin() + static_cast<std::ptrdiff_t>(first_sample),
                             row.latency_us.end());
  std::sort(sorted.begin(), sorted.end());
  const double n = static_cast<double>(sorted.size());
  state.counters["med_us"] = percentile_of_sorted(sorted, 0.5);
  state.counters["p99_us"] = percentile_of_sorted(sorted, 0.99);
  state.counters["max_us"] = sorted.empty() ? 0.0 : sorted.back();
  state.counters["waited"] = static_cast<double>(row.waited - waited_before) / n;
  state.counters["marked"] = static_cast<double>(row.marked - marked_before) / n;
}

void rows(benchmark::internal::Benchmark* b) {
  b->ArgNames({"targets", "preempted"})
      ->ArgsProduct({{1, 3}, {0, 1}})
      ->Iterations(kShootdowns)
      ->UseManualTime()
      ->Unit(benchmark::kMicrosecond);
}

BENCHMARK_CAPTURE(BM_Shootdown, native, "native")->Apply(rows);
BENCHMARK_CAPTURE(BM_Shootdown, pv, "pv")->Apply(rows);

// ---- the summary --------------------------------------------------------------------------------

void print_summary(std::FILE* out) {
  std::fprintf(out,
               "\nshootdown_latency: one shootdown of %llu pages, in us, over every timed "
               "shootdown of a row\n",
               static_cast<unsigned long long>(kRangePages));
  std::fprintf(out, "%-7s %8s %10s %6s %10s %10s %10s %8s %8s\n", "variant", "targets", "preempted",
               "n", "median", "p99", "max", "waited", "marked");
  for (const auto& [key, data] : g_rows) {
    if (!data.error.empty() || data.latency_us.empty()) {
      std::fprintf(out, "%-7s %8d %10d  failed: %s\n", key.variant.c_str(), key.targets,
                   key.preempted ? 1 : 0, data.error.c_str());
      continue;
    }
    std::vector<double> sorted = data.latency_us;
    std::sort(sorted.begin(), sorted.end());
    const double n = static_cast<double>(sorted.size());
    std::fprintf(out, "%-7s %8d %10d %6zu %10.1f %10.1f %10.1f %8.2f %8.2f\n", key.variant.c_str(),
                 key.targets, key.preempted ? 1 : 0, sorted.size(),
                 percentile_of_sorted(sorted, 0.5), percentile_of_sorted(sorted, 0.99),
                 sorted.back(), static_cast<double>(data.waited) / n,
                 static_cast<double>(data.marked) / n);
  }
}

bool boot() {
  const repatch::Result<repatch::Engine*> engine =
      repatch::guest::boot_machine({.initial = {{"tlb", "native"}}});
  if (!engine.ok()) {
    std::fprintf(stderr, "shootdown_latency: %s\n", engine.error().to_string().c_str());
    return false;
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  // Before benchmark::Initialize and before any thread exists.
  if (!boot()) return 1;
  return repatch::bench::run_benchmarks(argc, argv, &print_summary);
}
