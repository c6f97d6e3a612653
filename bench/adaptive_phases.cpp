// adaptive_phases: the promise of the project, measured. One workload whose host changes under it
// (dedicated, then oversubscribed, then dedicated again), run by every lock a user could pick
// (static native, static pv, std::mutex, a test-and-set spinlock) and by repatch adaptive: the
// guest's spinlock with the trigger loop switching its group as the host changes.
//
// The guest has 16 vCPU threads for the whole run; a phase decides how many of them run:
//  - dedicated: vCPUs 0 and 1 run, pinned to CPUs 0 and 1 (a vCPU per core); the 14 others are
//    offline, asleep, as a guest's idle vCPUs halted by the host;
//  - oversubscribed: all 16 run on the 2 CPUs (the host's scheduler time-slices them: real
//    oversubscription), and the simulated hypervisor parks one vCPU at a time for 0.5-2 ms
//    (lock_throughput's schedule), accounting the time as steal.
// Each running vCPU loops: lock, a short critical section (a shared counter and a second shared
// cache line), unlock, about 60 ns of work outside (lock_throughput's saturated lock). The shared
// counter must equal the sum of the per-vCPU counts at the end, else the run fails.
//
// The adaptive contender starts in native with a TriggerLoop polling the simulated hint source
// (the hypervisor's steal time, trigger/simulated_source.h) every 100 ms over the 16 vCPUs. One
// preemption at a time over 16 vCPUs is about 3% steal (55% of the time one vCPU of 16), so its
// policy enters oversubscribed at 1.5% and leaves at 0.3%, with a 300 ms minimum dwell: the
// config of a host whose steal is known to be low when dedicated; 100 ms readings, because in
// shorter ones the oversubscribed phase has windows with no preemption ending (the policy then
// flaps). The time the loop takes to notice and the blackout of its switches count against it:
// nothing is excluded from its phases.
//
// Per contender and repetition the counters are the acquisitions per second in each phase
// (`dedicated1`, `oversub`, `dedicated2`) and over the whole run (`overall`); the summary prints
// their medians over repetitions and the two targets with a verdict.
#include <benchmark/benchmark.h>
#include <sched.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "bench/contended_locks.h"
#include "bench/stats.h"
#include "guest/hypervisor.h"
#include "guest/lock_state.h"
#include "guest/machine.h"
#include "guest/spinlock.h"
#include "repatch/engine.h"
#include "repatch/triggers.h"
#include "sync/vcpu.h"
#include "trigger/simulated_source.h"

namespace {

using repatch::bench::median;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

constexpr int kVcpus = 16;
constexpr int kDedicatedVcpus = 2;
constexpr int kPhases = 3;
constexpr std::array<const char*, kPhases> kPhaseNames = {"dedicated1", "oversub", "dedicated2"};
constexpr std::array<int, kPhases> kRunning = {kDedicatedVcpus, kVcpus, kDedicatedVcpus};
// Wall time of one phase (--phase_seconds=S changes it).
double g_phase_seconds = 3.0;

constexpr repatch::hypervisor::ScheduleOptions kPreemptions{
    .min_gap = 500us, .max_gap = 1500us, .min_duration = 500us, .max_duration = 2ms};
constexpr std::uint64_t kSeed = 0xada9;
constexpr std::size_t kPlanLength = 20000;
constexpr int kOutsideWork = 48;
constexpr std::uint64_t kQuiescentEvery = 64;

enum class Kind { kNative, kPv, kMutex, kTas, kAdaptive };
constexpr std::array<Kind, 5> kKinds = {Kind::kNative, Kind::kPv, Kind::kMutex, Kind::kTas,
                                        Kind::kAdaptive};

const char* kind_name(Kind kind) {
  switch (kind) {
    case Kind::kNative:
      return "native";
    case Kind::kPv:
      return "pv";
    case Kind::kMutex:
      return "mutex";
    case Kind::kTas:
      return "tas";
    case Kind::kAdaptive:
      return "adaptive";
  }
  return "?";
}

repatch::guest::SpinLock* g_spinlock = nullptr;

using repatch::bench::GuestSpinlock;
using repatch::bench::Shared;
using repatch::bench::StdMutex;
using repatch::bench::TasLock;

struct alignas(64) PerVcpu {
  std::atomic<std::uint64_t> count{0};  // read by the main thread at phase boundaries
  std::atomic<repatch::sync::VcpuId> id{0};
};

// The phase the vCPUs are in: 0..kPhases-1, then kPhases (stop). Waited on by idle vCPUs.
struct Run {
  std::atomic<int> phase{-1};
  std::atomic<int> ready{0};
  std::atomic<int> failed{0};
};

bool running_in(int vcpu, int phase) {
  return phase >= 0 && phase < kPhases && vcpu < kRunning[static_cast<std::size_t>(phase)];
}

struct RunResult {
  std::array<double, kPhases> ops_per_s{};
  double overall = 0;
  std::string error;
  std::uint64_t switches = 0;
  std::uint64_t preemptions = 0;
};

template <typename Lock>
RunResult run_phases(Lock& lock, repatch::triggers::TriggerLoop* (*start_loop)(
                                     const std::vector<repatch::sync::VcpuId>&)) {
  Shared shared;
  std::vector<PerVcpu> per(kVcpus);
  Run run;
  std::vector<std::thread> threads;
  threads.reserve(kVcpus);
  for (int v = 0; v < kVcpus; ++v) {
    threads.emplace_back([&, v] {
      auto self = repatch::sync::Vcpu::enter();
      if (!self.ok()) {
        run.failed.fetch_add(1);
        run.ready.fetch_add(1);
        return;
      }
      repatch::sync::Vcpu& vcpu = *self.value();
      if (v < kDedicatedVcpus) {
        cpu_set_t cpus;
        CPU_ZERO(&cpus);
        CPU_SET(v, &cpus);
        if (sched_setaffinity(0, sizeof cpus, &cpus) != 0) run.failed.fetch_add(1);
      }
      PerVcpu& mine = per[static_cast<std::size_t>(v)];
      mine.id.store(vcpu.id());
      run.ready.fetch_add(1);
      std::uint64_t count = 0;
      std::uint64_t x = static_cast<std::uint64_t>(v) + 1;
      for (;;) {
        int phase = run.phase.load(std::memory_order_acquire);
        if (phase >= kPhases) break;
        if (!running_in(v, phase)) {
          // Idle in this phase: offline, so that no stop waits for it, asleep until the phase
          // changes (std::atomic::wait is a futex wait).
          vcpu.go_offline();
          run.phase.wait(phase, std::memory_order_acquire);
          vcpu.go_online();
          continue;
        }
        while (run.phase.load(std::memory_order_relaxed) == phase) {
          lock.lock();
          shared.update(x);
          lock.unlock();
          ++count;
          // Relaxed: the main thread reads a running total; a count a few acquisitions late at a
          // phase boundary is noise against seconds of phase.
          mine.count.store(count, std::memory_order_relaxed);
          x = repatch::bench::outside_work(x, kOutsideWork);
          if (count % kQuiescentEvery == 0) vcpu.quiescent_state();
        }
      }
    });
  }
  while (run.ready.load() < kVcpus)
    std::this_thread::sleep_for(1ms);
  RunResult result;
  std::vector<repatch::sync::VcpuId> ids;
  ids.reserve(per.size());
  for (const PerVcpu& p : per)
    ids.push_back(p.id.load());
  repatch::triggers::TriggerLoop* loop =
      run.failed.load() == 0 && start_loop != nullptr ? start_loop(ids) : nullptr;
  auto total = [&] {
    std::uint64_t sum = 0;
    for (const PerVcpu& p : per)
      sum += p.count.load(std::memory_order_relaxed);
    return sum;
  };
  const auto run_start = Clock::now();
  for (int phase = 0; phase < kPhases && run.failed.load() == 0; ++phase) {
    std::optional<repatch::hypervisor::Preemptor> preemptor;
    const std::uint64_t before = total();
    const auto start = Clock::now();
    run.phase.store(phase, std::memory_order_release);
    run.phase.notify_all();
    if (kRunning[static_cast<std::size_t>(phase)] > kDedicatedVcpus) {
      preemptor.emplace(repatch::hypervisor::schedule(kSeed, ids, kPlanLength, kPreemptions));
    }
    std::this_thread::sleep_for(std::chrono::duration<double>(g_phase_seconds));
    const std::uint64_t after = total();
    const auto end = Clock::now();
    if (preemptor) {
      preemptor->stop();
      result.preemptions += preemptor->played();
    }
    result.ops_per_s[static_cast<std::size_t>(phase)] =
        static_cast<double>(after - before) / std::chrono::duration<double>(end - start).count();
  }
  const std::uint64_t all = total();
  const double seconds = std::chrono::duration<double>(Clock::now() - run_start).count();
  run.phase.store(kPhases, std::memory_order_release);
  run.phase.notify_all();
  for (std::thread& t : threads)
    t.join();
  if (loop != nullptr) {
    loop->stop();
    for (const repatch::triggers::Decision& d : loop->decisions()) {
      if (d.action == repatch::triggers::Action::kSwitch && d.committed) ++result.switches;
    }
  }
  if (run.failed.load() != 0) {
    result.error = "a thread could not register as a vCPU or be pinned";
    return result;
  }
  std::uint64_t counted = 0;
  for (const PerVcpu& p : per)
    counted += p.count.load();
  if (counted != shared.counter) {
    result.error = "lost updates: the shared counter is " + std::to_string(shared.counter) +
                   ", the vCPUs counted " + std::to_string(counted);
  }
  result.overall = static_cast<double>(all) / seconds;
  return result;
}

// ---- the adaptive contender's trigger loop ------------------------------------------------------

std::unique_ptr<repatch::triggers::TriggerLoop> g_loop;

repatch::triggers::TriggerLoop* start_trigger_loop(const std::vector<repatch::sync::VcpuId>& ids) {
  repatch::triggers::TriggerConfig config;
  config.dedicated = {{"spinlock", "native"}};
  config.oversubscribed = {{"spinlock", "pv"}};
  config.interval = 100ms;
  config.policy.steal = repatch::triggers::Thresholds{.enter = 1.5, .leave = 0.3};
  config.policy.min_dwell = 300ms;
  config.policy.max_switches = 100;
  config.policy.rate_window = 10s;
  config.policy.retry_backoff = 10ms;
  auto loop = repatch::triggers::TriggerLoop::create(
      repatch::triggers::make_simulated_source(ids), config,
      repatch::triggers::engine_switcher(repatch::Engine::get()));
  if (!loop.ok()) {
    std::fprintf(stderr, "adaptive_phases: %s\n", loop.error().to_string().c_str());
    return nullptr;
  }
  g_loop = std::move(loop.value());
  if (const repatch::Status s = g_loop->start(); !s.ok()) {
    std::fprintf(stderr, "adaptive_phases: %s\n", s.error().to_string().c_str());
    g_loop.reset();
  }
  return g_loop.get();
}

// ---- the benchmark ------------------------------------------------------------------------------

struct Row {
  std::array<std::vector<double>, kPhases> phases;
  std::vector<double> overall;
  std::uint64_t switches = 0;
  std::string error;
};
std::map<Kind, Row> g_rows;

std::string switch_spinlock(const char* variant) {
  const repatch::SwitchOutcome outcome =
      repatch::Engine::get()->switch_groups({{"spinlock", variant}});
  if (!outcome.committed()) {
    return std::string("switch to ") + variant + " failed: " + outcome.status.error().to_string();
  }
  return "";
}

void BM_Phases(benchmark::State& state, Kind kind) {
  Row& row = g_rows[kind];
  for (auto _ : state) {
    RunResult r;
    const char* initial = kind == Kind::kPv ? "pv" : "native";
    if (kind == Kind::kNative || kind == Kind::kPv || kind == Kind::kAdaptive) {
      row.error = switch_spinlock(initial);
      if (!row.error.empty()) break;
    }
    switch (kind) {
      case Kind::kNative:
      case Kind::kPv: {
        GuestSpinlock lock{g_spinlock};
        r = run_phases(lock, nullptr);
        break;
      }
      case Kind::kAdaptive: {
        GuestSpinlock lock{g_spinlock};
        r = run_phases(lock, &start_trigger_loop);
        if (g_loop == nullptr && r.error.empty()) r.error = "the trigger loop did not start";
        g_loop.reset();
        break;
      }
      case Kind::kMutex: {
        auto lock = std::make_unique<StdMutex>();
        r = run_phases(*lock, nullptr);
        break;
      }
      case Kind::kTas: {
        auto lock = std::make_unique<TasLock>();
        r = run_phases(*lock, nullptr);
        break;
      }
    }
    if (!r.error.empty()) {
      row.error = r.error;
      break;
    }
    state.SetIterationTime(g_phase_seconds * kPhases);
    for (std::size_t p = 0; p < kPhases; ++p) {
      state.counters[kPhaseNames[p]] = r.ops_per_s[p];
      row.phases[p].push_back(r.ops_per_s[p]);
    }
    state.counters["overall"] = r.overall;
    state.counters["switches"] = static_cast<double>(r.switches);
    state.counters["preempts"] = static_cast<double>(r.preemptions);
    row.overall.push_back(r.overall);
    row.switches += r.switches;
  }
  if (!row.error.empty()) state.SkipWithError(row.error.c_str());
}

BENCHMARK_CAPTURE(BM_Phases, native, Kind::kNative)->Iterations(1)->UseManualTime();
BENCHMARK_CAPTURE(BM_Phases, pv, Kind::kPv)->Iterations(1)->UseManualTime();
BENCHMARK_CAPTURE(BM_Phases, mutex, Kind::kMutex)->Iterations(1)->UseManualTime();
BENCHMARK_CAPTURE(BM_Phases, tas, Kind::kTas)->Iterations(1)->UseManualTime();
BENCHMARK_CAPTURE(BM_Phases, adaptive, Kind::kAdaptive)->Iterations(1)->UseManualTime();

// ---- the summary --------------------------------------------------------------------------------

void print_summary(std::FILE* out) {
  std::fprintf(out,
               "\nadaptive_phases: acquisitions per second, median over repetitions; %.2f s per "
               "phase\n%-9s %14s %14s %14s %14s %9s\n",
               g_phase_seconds, "lock", kPhaseNames[0], kPhaseNames[1], kPhaseNames[2], "overall",
               "switches");
  for (const Kind kind : kKinds) {
    const auto it = g_rows.find(kind);
    if (it == g_rows.end()) continue;
    const Row& row = it->second;
    if (!row.error.empty() || row.overall.empty()) {
      std::fprintf(out, "%-9s failed: %s\n", kind_name(kind), row.error.c_str());
      continue;
    }
    std::fprintf(out, "%-9s %14.0f %14.0f %14.0f %14.0f %9.1f\n", kind_name(kind),
                 median(row.phases[0]), median(row.phases[1]), median(row.phases[2]),
                 median(row.overall),
                 static_cast<double>(row.switches) / static_cast<double>(row.overall.size()));
  }
  const auto adaptive = g_rows.find(Kind::kAdaptive);
  if (adaptive == g_rows.end() || adaptive->second.overall.empty()) {
    std::fprintf(out, "\ntargets: not judged (adaptive did not run)\n");
    return;
  }
  bool statics_ran = false;
  for (const Kind kind : {Kind::kNative, Kind::kPv, Kind::kMutex, Kind::kTas}) {
    const auto it = g_rows.find(kind);
    statics_ran = statics_ran || (it != g_rows.end() && !it->second.overall.empty());
  }
  if (!statics_ran) {
    std::fprintf(out, "\ntargets: not judged (no static lock ran)\n");
    return;
  }
  std::fprintf(out, "\n");
  for (std::size_t p = 0; p < kPhases; ++p) {
    double best = 0;
    const char* best_name = "?";
    for (const Kind kind : {Kind::kNative, Kind::kPv, Kind::kMutex, Kind::kTas}) {
      const auto it = g_rows.find(kind);
      if (it == g_rows.end() || it->second.phases[p].empty()) continue;
      const double m = median(it->second.phases[p]);
      if (m > best) {
        best = m;
        best_name = kind_name(kind);
      }
    }
    const double ratio = best > 0 ? median(adaptive->second.phases[p]) / best : 0;
    std::fprintf(out, "target: %s, adaptive >= 0.9x the best static (%s): %.3g, %s\n",
                 kPhaseNames[p], best_name, ratio, ratio >= 0.9 ? "met" : "MISSED");
  }
  double worst = 0;
  const char* worst_name = "?";
  for (const Kind kind : {Kind::kNative, Kind::kPv, Kind::kMutex, Kind::kTas}) {
    const auto it = g_rows.find(kind);
    if (it == g_rows.end() || it->second.overall.empty()) continue;
    const double m = median(it->second.overall);
    if (worst == 0 || m < worst) {
      worst = m;
      worst_name = kind_name(kind);
    }
  }
  const double ratio = worst > 0 ? median(adaptive->second.overall) / worst : 0;
  std::fprintf(out, "target: whole run, adaptive >= 3x the worst static (%s): %.3g, %s\n",
               worst_name, ratio, ratio >= 3.0 ? "met" : "MISSED");
}

bool boot() {
  const repatch::Result<repatch::Engine*> engine =
      repatch::guest::boot_machine({.initial = {{"spinlock", "native"}}});
  if (!engine.ok()) {
    std::fprintf(stderr, "adaptive_phases: %s\n", engine.error().to_string().c_str());
    return false;
  }
  g_spinlock = new repatch::guest::SpinLock("adaptive_phases");  // lives for the whole run
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  if (std::thread::hardware_concurrency() < kDedicatedVcpus) {
    std::fprintf(stderr, "adaptive_phases: needs at least %d CPUs\n", kDedicatedVcpus);
    return 1;
  }
  if (!boot()) return 1;
  int kept = 1;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg.starts_with("--phase_seconds=")) {
      char* end = nullptr;
      g_phase_seconds = std::strtod(argv[i] + std::string_view("--phase_seconds=").size(), &end);
      if (end == nullptr || *end != '\0' || !(g_phase_seconds > 0)) {
        std::fprintf(stderr, "adaptive_phases: --phase_seconds must be positive\n");
        return 1;
      }
      continue;
    }
    argv[kept++] = argv[i];
  }
  argc = kept;
  return repatch::bench::run_benchmarks(argc, argv, &print_summary);
}
