// lock_throughput: acquisitions per second of one contended lock, all vCPUs together, and how
// evenly they are shared, for the guest's spinlock group in its two variants (native ticket lock,
// pv spin-then-sleep lock) against std::mutex and a plain test-and-set spinlock, with vCPUs
// dedicated (2 vCPUs on the machine's 2 cores) and oversubscribed (8 and 16), each with and without
// the simulated hypervisor preempting vCPUs.
//
// The engine boots once, in main(), before any thread exists, with the spinlock group in native.
// The one SpinLock of the program lives for the whole run; each row of the spinlock switches the
// group to the variant it measures while no vCPU thread runs (Engine::switch_groups, with
// spinlock_group_state() registered, so that the switch converts the live lock's word).
//
// Each row runs for a fixed wall time (not a fixed number of acquisitions: a native ticket lock
// with 16 vCPUs on 2 cores and preempted waiters may make only a few hundred acquisitions a
// second). Every vCPU thread registers with Vcpu::enter() and loops: lock, a short critical
// section (a shared counter and a second shared cache line), unlock, a little work outside. The
// shared counter must equal the sum of the per-vCPU counts, else the row fails.
//
// A row with one vCPU (never preempted) gives the uncontended cost of lock and unlock.
//
// After the run the program prints a summary: every row's median over its repetitions, and the
// issue's targets with a verdict.
#include <benchmark/benchmark.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <tuple>
#include <vector>

#include "bench/contended_locks.h"
#include "bench/stats.h"
#include "guest/hypervisor.h"
#include "guest/lock_state.h"
#include "guest/machine.h"
#include "guest/spinlock.h"
#include "repatch/engine.h"
#include "sync/vcpu.h"

namespace {

using repatch::bench::Kind;
using repatch::bench::kind_name;
using repatch::bench::median;
using repatch::bench::PerVcpu;

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

// ---- configuration ------------------------------------------------------------------------------

// Wall time of one row (--case_seconds=S changes it).
double g_case_seconds = 1.0;
// --pin: in rows with no more vCPUs than the machine has CPUs, vCPU v runs on CPU v only (each
// vCPU a core of its own, as a hypervisor pins dedicated vCPUs); otherwise the host scheduler may
// put both vCPU threads of a 2-vCPU row on one CPU while the other is busy with another process.
bool g_pin = false;
// Set when some row's simulated hypervisor could not run SCHED_FIFO.
bool g_host_not_realtime = false;

// The simulated hypervisor of an oversubscribed host: one vCPU at a time is taken off its CPU for
// 0.5-2 ms, then, after a gap of 0.5-1.5 ms, another one chosen at random (the Preemptor plays one
// preemption at a time). So some vCPU of the guest is preempted about 55% of the time, and each
// vCPU for 1/n of that. The seed is fixed per vCPU count, so every lock meets the same schedule.
// The Preemptor's thread runs SCHED_FIFO when the process may (a host preempts without waiting
// for its guests' threads to yield a CPU); else it preempts less often, and the summary says so.
constexpr repatch::hypervisor::ScheduleOptions kPreemptions{
    .min_gap = 500us, .max_gap = 1500us, .min_duration = 500us, .max_duration = 2ms};
constexpr std::uint64_t kSeed = 0x10c4;
// More than a row can play: one preemption takes at least 1 ms.
constexpr std::size_t kPlanLength = 20000;

// Multiply-adds outside the lock, a dependent chain of about 1.25 ns each here: the row argument
// `outside`. 48 (about 60 ns) keeps the lock saturated; 800 (about 1 µs) leaves it free for part
// of the time, as a lock of a guest kernel between bursts of other work.
constexpr int kSaturated = 48;
constexpr int kModerate = 800;
// Iterations between QSBR quiescent states (each is two full barriers in liburcu).
constexpr std::uint64_t kQuiescentEvery = 64;

// ---- the locks ----------------------------------------------------------------------------------

// The guest's spinlock, in whatever variant its group is in. Created in main() after boot.
repatch::guest::SpinLock* g_spinlock = nullptr;

using repatch::bench::GuestSpinlock;
using repatch::bench::Shared;
using repatch::bench::StdMutex;
using repatch::bench::TasLock;

// ---- one row ------------------------------------------------------------------------------------

struct RowKey {
  Kind kind;
  int vcpus;
  bool preempt;
  int outside;
  bool operator<(const RowKey& o) const {
    return std::tie(kind, outside, vcpus, preempt) <
           std::tie(o.kind, o.outside, o.vcpus, o.preempt);
  }
};
struct RowData {
  std::vector<double> ops_per_s;
  std::vector<double> fairness;
  std::uint64_t sleeps = 0;
  std::uint64_t kicks = 0;
  std::uint64_t owner_preempted = 0;
  std::uint64_t preemptions = 0;
  std::string error;
};
std::map<RowKey, RowData> g_rows;

struct RunResult {
  double seconds = 0;
  std::vector<std::uint64_t> counts;
  std::vector<std::uint64_t> timed;
  std::uint64_t counter = 0;
  std::size_t preemptions = 0;
  int failed = 0;
};

template <typename Lock>
RunResult run_row(Lock& lock, int vcpus, bool preempt, int outside) {
  Shared shared;
  std::vector<PerVcpu> per(static_cast<std::size_t>(vcpus));
  std::atomic<int> ready{0};
  std::atomic<int> failed{0};
  std::atomic<bool> go{false};
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  threads.reserve(static_cast<std::size_t>(vcpus));
  for (int v = 0; v < vcpus; ++v) {
    threads.emplace_back([&, v] {
      auto self = repatch::sync::Vcpu::enter();
      if (!self.ok()) {
        failed.fetch_add(1);
        ready.fetch_add(1);
        return;
      }
      repatch::sync::Vcpu& vcpu = *self.value();
      if (g_pin && vcpus <= static_cast<int>(std::thread::hardware_concurrency())) {
        cpu_set_t cpus;
        CPU_ZERO(&cpus);
        CPU_SET(v, &cpus);
        if (sched_setaffinity(0, sizeof cpus, &cpus) != 0) failed.fetch_add(1);
      }
      PerVcpu& mine = per[static_cast<std::size_t>(v)];
      mine.id.store(vcpu.id());
      ready.fetch_add(1);
      while (!go.load(std::memory_order_acquire))
        sched_yield();
      std::uint64_t count = 0;
      std::uint64_t timed = 0;
      std::uint64_t x = static_cast<std::uint64_t>(v) + 1;
      while (!stop.load(std::memory_order_relaxed)) {
        lock.lock();
        shared.update(x);
        lock.unlock();
        ++count;
        // The last acquisition of a thread may end long after the time is up (a ticket waiter
        // behind descheduled vCPUs): it counts for the check, not for the rate.
        if (!stop.load(std::memory_order_relaxed)) ++timed;
        x = repatch::bench::outside_work(x, outside);
        if (count % kQuiescentEvery == 0) vcpu.quiescent_state();
      }
      mine.count.store(count, std::memory_order_relaxed);
      mine.timed.store(timed, std::memory_order_relaxed);
    });
  }
  while (ready.load() < vcpus)
    sched_yield();
  RunResult result;
  result.failed = failed.load();
  std::optional<repatch::hypervisor::Preemptor> preemptor;
  if (preempt && result.failed == 0) {
    std::vector<repatch::sync::VcpuId> ids;
    ids.reserve(per.size());
    for (const PerVcpu& p : per)
      ids.push_back(p.id.load());
    preemptor.emplace(repatch::hypervisor::schedule(kSeed + static_cast<std::uint64_t>(vcpus), ids,
                                                    kPlanLength, kPreemptions),
                      repatch::hypervisor::HostPriority::kRealtime);
    if (!preemptor->realtime()) g_host_not_realtime = true;
  }
  const auto start = Clock::now();
  go.store(true, std::memory_order_release);
  std::this_thread::sleep_for(std::chrono::duration<double>(g_case_seconds));
  stop.store(true, std::memory_order_relaxed);
  const auto end = Clock::now();
  // Resumes a parked vCPU, so that every thread can finish its last acquisition.
  if (preemptor) {
    preemptor->stop();
    result.preemptions = preemptor->played();
  }
  for (std::thread& t : threads)
    t.join();
  result.seconds = std::chrono::duration<double>(end - start).count();
  for (const PerVcpu& p : per) {
    result.counts.push_back(p.count.load());
    result.timed.push_back(p.timed.load());
  }
  result.counter = shared.counter;
  return result;
}

void BM_Lock(benchmark::State& state, Kind kind) {
  const int vcpus = static_cast<int>(state.range(0));
  const bool preempt = state.range(1) != 0;
  const int outside = static_cast<int>(state.range(2));
  const RowKey key{kind, vcpus, preempt, outside};
  RowData& row = g_rows[key];
  if (kind == Kind::kNative || kind == Kind::kPv) {
    const char* variant = kind == Kind::kPv ? "pv" : "native";
    const repatch::SwitchOutcome outcome =
        repatch::Engine::get()->switch_groups({{"spinlock", variant}});
    const int encoding =
        kind == Kind::kPv ? repatch::guest::kPvVariant : repatch::guest::kNativeVariant;
    if (!outcome.committed()) {
      row.error =
          "switch to " + std::string(variant) + " failed: " + outcome.status.error().to_string();
    } else if (repatch::guest::current_encoding() != encoding ||
               repatch::guest::word::tag(g_spinlock->load_word()) !=
                   repatch::guest::word::tag_of_variant(encoding)) {
      row.error = "the switch to " + std::string(variant) + " did not convert the live lock";
    }
    if (!row.error.empty()) {
      state.SkipWithError(row.error.c_str());
      return;
    }
  }
  repatch::guest::SpinlockStats& stats = repatch::guest::spinlock_stats();
  for (auto _ : state) {
    const std::uint64_t sleeps0 = stats.sleeps.load();
    const std::uint64_t kicks0 = stats.kicks.load();
    const std::uint64_t owner0 = stats.preempted_owner_sleeps.load();
    RunResult r;
    switch (kind) {
      case Kind::kNative:
      case Kind::kPv: {
        GuestSpinlock lock{g_spinlock};
        r = run_row(lock, vcpus, preempt, outside);
        break;
      }
      case Kind::kMutex: {
        auto lock = std::make_unique<StdMutex>();
        r = run_row(*lock, vcpus, preempt, outside);
        break;
      }
      case Kind::kTas: {
        auto lock = std::make_unique<TasLock>();
        r = run_row(*lock, vcpus, preempt, outside);
        break;
      }
      case Kind::kAdaptive:
      case Kind::kAdaptiveStopless:
        row.error = "an adaptive contender needs a trigger loop: adaptive_phases measures it";
        state.SkipWithError(row.error.c_str());
        return;
    }
    if (r.failed != 0) {
      row.error = "a thread could not register as a vCPU (or, with --pin, be pinned)";
      state.SkipWithError(row.error.c_str());
      return;
    }
    std::uint64_t total = 0;
    for (std::uint64_t c : r.counts)
      total += c;
    if (total != r.counter) {
      row.error = "lost updates: the shared counter is " + std::to_string(r.counter) +
                  ", the vCPUs counted " + std::to_string(total);
      state.SkipWithError(row.error.c_str());
      return;
    }
    if ((kind == Kind::kNative || kind == Kind::kPv) &&
        repatch::guest::classify(g_spinlock->load_word()) != repatch::guest::LockState::kUnlocked) {
      row.error = "the spinlock is not unlocked after the row";
      state.SkipWithError(row.error.c_str());
      return;
    }
    std::uint64_t timed = 0;
    for (std::uint64_t c : r.timed)
      timed += c;
    const auto [lo, hi] = std::minmax_element(r.timed.begin(), r.timed.end());
    const double fairness = *lo == 0 ? std::numeric_limits<double>::infinity()
                                     : static_cast<double>(*hi) / static_cast<double>(*lo);
    const double ops = static_cast<double>(timed) / r.seconds;
    state.SetIterationTime(r.seconds);
    state.counters["ops_per_s"] = ops;
    state.counters["fairness"] = fairness;
    state.counters["min_count"] = static_cast<double>(*lo);
    state.counters["max_count"] = static_cast<double>(*hi);
    state.counters["preempts"] = static_cast<double>(r.preemptions);
    const std::uint64_t sleeps = stats.sleeps.load() - sleeps0;
    const std::uint64_t kicks = stats.kicks.load() - kicks0;
    const std::uint64_t owner_preempted = stats.preempted_owner_sleeps.load() - owner0;
    if (kind == Kind::kPv) {
      state.counters["sleeps"] = static_cast<double>(sleeps);
      state.counters["kicks"] = static_cast<double>(kicks);
      state.counters["owner_preempted"] = static_cast<double>(owner_preempted);
    }
    row.ops_per_s.push_back(ops);
    row.fairness.push_back(fairness);
    row.sleeps += sleeps;
    row.kicks += kicks;
    row.owner_preempted += owner_preempted;
    row.preemptions += r.preemptions;
  }
}

void rows(benchmark::internal::Benchmark* b) {
  // One vCPU, never preempted: the uncontended cost of lock and unlock, for reference.
  b->ArgNames({"vcpus", "preempt", "outside"})
      ->Args({1, 0, kSaturated})
      ->ArgsProduct({{2, 8, 16}, {0, 1}, {kSaturated}})
      // Dedicated, with the lock free between bursts: where a fair lock's handoff is not on every
      // acquisition's path.
      ->Args({2, 0, kModerate})
      ->Iterations(1)
      ->UseManualTime()
      ->Unit(benchmark::kMillisecond);
}

BENCHMARK_CAPTURE(BM_Lock, native, Kind::kNative)->Apply(rows);
BENCHMARK_CAPTURE(BM_Lock, pv, Kind::kPv)->Apply(rows);
BENCHMARK_CAPTURE(BM_Lock, mutex, Kind::kMutex)->Apply(rows);
BENCHMARK_CAPTURE(BM_Lock, tas, Kind::kTas)->Apply(rows);

// ---- the summary --------------------------------------------------------------------------------

const char* verdict(bool met) {
  return met ? "met" : "MISSED";
}

std::optional<double> median_ops(Kind kind, int vcpus, bool preempt, int outside) {
  const auto it = g_rows.find({kind, vcpus, preempt, outside});
  if (it == g_rows.end() || it->second.ops_per_s.empty()) return std::nullopt;
  return median(it->second.ops_per_s);
}

void print_ratio_target(std::FILE* out, const char* what, Kind a, Kind b, int vcpus, bool preempt,
                        int outside, double at_least) {
  const auto x = median_ops(a, vcpus, preempt, outside);
  const auto y = median_ops(b, vcpus, preempt, outside);
  if (!x || !y) {
    std::fprintf(out, "target: %s: not measured in this run\n", what);
    return;
  }
  const double ratio = *y > 0 ? *x / *y : std::numeric_limits<double>::infinity();
  std::fprintf(out, "target: %s: %s/%s = %.3g (%.4g / %.4g ops/s), %s\n", what, kind_name(a),
               kind_name(b), ratio, *x, *y, verdict(ratio >= at_least));
}

void print_summary(std::FILE* out) {
  std::fprintf(out,
               "\nlock_throughput: median over repetitions, %.2f s per row%s; fairness = max/min "
               "per-vCPU acquisitions\n",
               g_case_seconds, g_pin ? ", vCPU v pinned to CPU v when vCPUs <= CPUs" : "");
  std::fprintf(out,
               "ops/s: median, min and max over the repetitions; fairness: median; sleeps, kicks, "
               "owner_pre(empted sleeps) and preempts(played): mean per repetition\n");
  if (g_host_not_realtime) {
    std::fprintf(out, "%s\n", repatch::bench::kHostNotRealtime);
  }
  std::fprintf(out, "%-7s %5s %7s %7s %4s %12s %12s %12s %9s %8s %8s %9s %8s\n", "lock", "vcpus",
               "preempt", "outside", "reps", "median", "min", "max", "fairness", "sleeps", "kicks",
               "owner_pre", "preempts");
  for (const auto& [key, data] : g_rows) {
    if (!data.error.empty() || data.ops_per_s.empty()) {
      std::fprintf(out, "%-7s %5d %7d %7d  failed: %s\n", kind_name(key.kind), key.vcpus,
                   key.preempt ? 1 : 0, key.outside, data.error.c_str());
      continue;
    }
    const std::size_t reps = data.ops_per_s.size();
    const auto [lo, hi] = std::minmax_element(data.ops_per_s.begin(), data.ops_per_s.end());
    const auto mean = [reps](std::uint64_t total) {
      return static_cast<unsigned long long>(total / reps);
    };
    std::fprintf(out, "%-7s %5d %7d %7d %4zu %12.0f %12.0f %12.0f %9.3g %8llu %8llu %9llu %8llu\n",
                 kind_name(key.kind), key.vcpus, key.preempt ? 1 : 0, key.outside, reps,
                 median(data.ops_per_s), *lo, *hi, median(data.fairness), mean(data.sleeps),
                 mean(data.kicks), mean(data.owner_preempted), mean(data.preemptions));
  }
  std::fprintf(out, "\n");
  print_ratio_target(out, "8 vCPUs with preemption, pv >= 10x native", Kind::kPv, Kind::kNative, 8,
                     true, kSaturated, 10.0);
  print_ratio_target(out, "16 vCPUs with preemption, pv >= 10x native", Kind::kPv, Kind::kNative,
                     16, true, kSaturated, 10.0);
  for (const int outside : {kSaturated, kModerate}) {
    const char* load = outside == kSaturated ? "saturated" : "moderate";
    const std::string vs_pv =
        std::string("2 vCPUs (dedicated), ") + load + " lock, native >= 1.0x pv";
    const std::string vs_mutex =
        std::string("2 vCPUs (dedicated), ") + load + " lock, native >= 1.0x std::mutex";
    print_ratio_target(out, vs_pv.c_str(), Kind::kNative, Kind::kPv, 2, false, outside, 1.0);
    print_ratio_target(out, vs_mutex.c_str(), Kind::kNative, Kind::kMutex, 2, false, outside, 1.0);
  }
}

bool boot() {
  const repatch::Result<repatch::Engine*> engine =
      repatch::guest::boot_machine({.initial = {{"spinlock", "native"}}});
  if (!engine.ok()) {
    std::fprintf(stderr, "lock_throughput: %s\n", engine.error().to_string().c_str());
    return false;
  }
  g_spinlock = new repatch::guest::SpinLock("lock_throughput");  // lives for the whole run
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  // Before benchmark::Initialize and before any thread exists.
  if (!boot()) return 1;
  int kept = 1;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg.starts_with("--case_seconds=")) {
      const std::optional<double> seconds =
          repatch::bench::positive_seconds("lock_throughput", arg);
      if (!seconds) return 1;
      g_case_seconds = *seconds;
      continue;
    }
    if (arg == "--pin") {
      g_pin = true;
      continue;
    }
    argv[kept++] = argv[i];
  }
  argc = kept;
  return repatch::bench::run_benchmarks(argc, argv, &print_summary);
}
