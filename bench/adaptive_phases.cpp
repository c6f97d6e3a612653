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
//    (lock_throughput's schedule), accounting the time as steal. Its thread runs SCHED_FIFO when
//    the process may (HostPriority::kRealtime), as a host preempts without waiting for its
//    guests; the summary says when it could not.
// Each running vCPU loops: lock, a short critical section (a shared counter and a second shared
// cache line), unlock, then `outside` multiply-adds of work outside the lock (the benchmark's
// argument, as in lock_throughput):
//  - 800 (about 1 us): the lock is free between bursts, as a guest kernel's lock usually is;
//  - 48 (about 60 ns): the lock is saturated, so a lock that lets its releaser take it again from
//    its own cache (test-and-set) runs two vCPUs almost as fast as one, while a fair lock moves
//    the lock and the data between the cores at every acquisition.
// The shared counter must equal the sum of the per-vCPU counts at the end, else the run fails.
//
// The adaptive contender starts in native with a TriggerLoop polling the simulated hint source
// (the hypervisor's steal time, guest/simulated_source.h) every 50 ms over the 16 vCPUs. One
// preemption at a time over 16 vCPUs gives 2-3% steal here, and exactly 0 when dedicated, so the
// policy enters oversubscribed at 0.3% and leaves at 0.1%, with a 300 ms minimum dwell: the config
// of a host whose steal is known to be nil when dedicated. A 50 ms window of the oversubscribed
// phase still sees a dozen preemptions end, so no reading there falls to the leave threshold (the
// recorded runs made exactly 2 switches each); the policy would flap if one did. The time the
// loop takes to notice and the blackout of its switches count against it: nothing is excluded
// from its phases.
//
// Each phase lasts 3 s; --phase_seconds=S sets all three, --oversub_seconds=S the oversubscribed
// one alone (the whole-run ratio depends on how the run is shared between the phases).
//
// Per contender, load and repetition the counters are the acquisitions per second in each phase
// (`dedicated1`, `oversub`, `dedicated2`) and over the whole run (`overall`); for adaptive, also
// the lag from the start of a phase to the commit of the switch it calls for (`lag_oversub_ms`,
// `lag_dedicated2_ms`) and that switch's own time from decision to commit (`switch_oversub_ms`,
// `switch_dedicated2_ms`). Adaptive runs twice: `adaptive` with the engine's default writer for
// the spinlock group (stop-machine), `adaptive_stopless` with SwitchWriter::kStopless. The
// summary prints medians over repetitions and the two targets
// with a verdict.
#include <benchmark/benchmark.h>
#include <sched.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
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
#include "guest/simulated_source.h"
#include "guest/spinlock.h"
#include "repatch/engine.h"
#include "repatch/triggers.h"
#include "sync/vcpu.h"

namespace {

using repatch::bench::is_adaptive;
using repatch::bench::kFixedKinds;
using repatch::bench::Kind;
using repatch::bench::kind_name;
using repatch::bench::median;
using repatch::bench::PerVcpu;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

constexpr int kVcpus = 16;
constexpr int kDedicatedVcpus = 2;
constexpr int kPhases = 3;
constexpr std::array<const char*, kPhases> kPhaseNames = {"dedicated1", "oversub", "dedicated2"};
constexpr std::array<int, kPhases> kRunning = {kDedicatedVcpus, kVcpus, kDedicatedVcpus};
// Wall time of each phase: --phase_seconds=S sets all three, then --oversub_seconds=S the
// oversubscribed one.
std::array<double, kPhases> g_phase_seconds = {3.0, 3.0, 3.0};

double run_seconds() {
  return g_phase_seconds[0] + g_phase_seconds[1] + g_phase_seconds[2];
}

constexpr repatch::hypervisor::ScheduleOptions kPreemptions{
    .min_gap = 500us, .max_gap = 1500us, .min_duration = 500us, .max_duration = 2ms};
constexpr std::uint64_t kSeed = 0xada9;
constexpr std::size_t kPlanLength = 20000;
constexpr std::uint64_t kQuiescentEvery = 64;

constexpr std::array<Kind, 6> kKinds = {Kind::kNative, Kind::kPv,       Kind::kMutex,
                                        Kind::kTas,    Kind::kAdaptive, Kind::kAdaptiveStopless};

repatch::guest::SpinLock* g_spinlock = nullptr;

using repatch::bench::GuestSpinlock;
using repatch::bench::Shared;
using repatch::bench::StdMutex;
using repatch::bench::TasLock;

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
  bool host_realtime = true;  // every Preemptor got SCHED_FIFO
  // From the start of a phase to the commit of the first switch into the mode it calls for;
  // negative when there was none in that phase.
  std::array<double, kPhases> switch_lag_ms{-1, -1, -1};
  // That switch's own duration, from the loop's decision to the commit.
  std::array<double, kPhases> switch_ms{-1, -1, -1};
};

// The trigger loop's clock, shared with the phase boundaries so that decisions can be placed in
// their phase.
std::chrono::nanoseconds now_ns() {
  return Clock::now().time_since_epoch();
}

template <typename Lock>
RunResult run_phases(
    Lock& lock, int outside,
    repatch::triggers::TriggerLoop* (*start_loop)(const std::vector<repatch::sync::VcpuId>&)) {
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
          x = repatch::bench::outside_work(x, outside);
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
  std::array<std::chrono::nanoseconds, kPhases + 1> boundaries{};
  for (int phase = 0; phase < kPhases && run.failed.load() == 0; ++phase) {
    std::optional<repatch::hypervisor::Preemptor> preemptor;
    const std::uint64_t before = total();
    const auto start = Clock::now();
    boundaries[static_cast<std::size_t>(phase)] = start.time_since_epoch();
    run.phase.store(phase, std::memory_order_release);
    run.phase.notify_all();
    if (kRunning[static_cast<std::size_t>(phase)] > kDedicatedVcpus) {
      preemptor.emplace(repatch::hypervisor::schedule(kSeed, ids, kPlanLength, kPreemptions),
                        repatch::hypervisor::HostPriority::kRealtime);
      result.host_realtime = result.host_realtime && preemptor->realtime();
    }
    std::this_thread::sleep_for(
        std::chrono::duration<double>(g_phase_seconds[static_cast<std::size_t>(phase)]));
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
  const auto run_end = Clock::now();
  boundaries[kPhases] = run_end.time_since_epoch();
  const double seconds = std::chrono::duration<double>(run_end - run_start).count();
  run.phase.store(kPhases, std::memory_order_release);
  run.phase.notify_all();
  for (std::thread& t : threads)
    t.join();
  if (loop != nullptr) {
    loop->stop();
    for (const repatch::triggers::Decision& d : loop->decisions()) {
      if (d.action != repatch::triggers::Action::kSwitch || !d.committed) continue;
      ++result.switches;
      for (std::size_t p = 0; p < kPhases; ++p) {
        const bool in_phase = d.switched_at >= boundaries[p] && d.switched_at < boundaries[p + 1];
        const auto wanted = kRunning[p] > kDedicatedVcpus ? repatch::triggers::Mode::kOversubscribed
                                                          : repatch::triggers::Mode::kDedicated;
        if (in_phase && d.wanted == wanted && result.switch_lag_ms[p] < 0) {
          result.switch_lag_ms[p] =
              std::chrono::duration<double, std::milli>(d.switched_at - boundaries[p]).count();
          result.switch_ms[p] =
              std::chrono::duration<double, std::milli>(d.switched_at - d.decided_at).count();
        }
      }
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
  // The whole run is a weighted mean of the phases (less the moments between them), so it cannot
  // exceed the fastest phase; if it does, the counts are wrong and no figure of this run stands.
  const double fastest = *std::max_element(result.ops_per_s.begin(), result.ops_per_s.end());
  if (result.error.empty() && result.overall > fastest * 1.02) {
    result.error = "inconsistent counts: " + std::to_string(result.overall) +
                   " acquisitions/s over the whole run, " + std::to_string(fastest) +
                   " in the fastest phase";
  }
  return result;
}

// ---- the adaptive contender's trigger loop ------------------------------------------------------

std::unique_ptr<repatch::triggers::TriggerLoop> g_loop;
repatch::SwitchWriter g_loop_writer = repatch::SwitchWriter::kAuto;  // set before each run

repatch::triggers::TriggerLoop* start_trigger_loop(const std::vector<repatch::sync::VcpuId>& ids) {
  repatch::triggers::TriggerConfig config;
  config.dedicated = {{"spinlock", "native"}};
  config.oversubscribed = {{"spinlock", "pv"}};
  config.interval = 50ms;
  config.clock = &now_ns;
  config.policy.steal = repatch::triggers::Thresholds{.enter = 0.3, .leave = 0.1};
  config.policy.min_dwell = 300ms;
  config.policy.max_switches = 100;
  config.policy.rate_window = 10s;
  config.policy.retry_backoff = 10ms;
  config.switch_options.writer = g_loop_writer;
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

// The two loads (see the top of the file), the realistic one first.
constexpr std::array<int, 2> kOutsideLoads = {800, 48};

struct Row {
  std::array<std::vector<double>, kPhases> phases;
  std::vector<double> overall;
  std::array<std::vector<double>, kPhases> switch_lag_ms;
  std::array<std::vector<double>, kPhases> switch_ms;
  std::uint64_t switches = 0;
  bool host_realtime = true;
  std::string error;
};
std::map<std::pair<Kind, int>, Row> g_rows;  // by contender and outside work

std::string switch_spinlock(const char* variant) {
  const repatch::SwitchOutcome outcome =
      repatch::Engine::get()->switch_groups({{"spinlock", variant}});
  if (!outcome.committed()) {
    return std::string("switch to ") + variant + " failed: " + outcome.status.error().to_string();
  }
  return "";
}

void BM_Phases(benchmark::State& state, Kind kind) {
  const int outside = static_cast<int>(state.range(0));
  Row& row = g_rows[{kind, outside}];
  for (auto _ : state) {
    RunResult r;
    const char* initial = kind == Kind::kPv ? "pv" : "native";
    if (kind == Kind::kNative || kind == Kind::kPv || is_adaptive(kind)) {
      row.error = switch_spinlock(initial);
      if (!row.error.empty()) break;
    }
    switch (kind) {
      case Kind::kNative:
      case Kind::kPv: {
        GuestSpinlock lock{g_spinlock};
        r = run_phases(lock, outside, nullptr);
        break;
      }
      case Kind::kAdaptive:
      case Kind::kAdaptiveStopless: {
        g_loop_writer = kind == Kind::kAdaptiveStopless ? repatch::SwitchWriter::kStopless
                                                        : repatch::SwitchWriter::kAuto;
        GuestSpinlock lock{g_spinlock};
        r = run_phases(lock, outside, &start_trigger_loop);
        if (g_loop == nullptr && r.error.empty()) r.error = "the trigger loop did not start";
        g_loop.reset();
        break;
      }
      case Kind::kMutex: {
        auto lock = std::make_unique<StdMutex>();
        r = run_phases(*lock, outside, nullptr);
        break;
      }
      case Kind::kTas: {
        auto lock = std::make_unique<TasLock>();
        r = run_phases(*lock, outside, nullptr);
        break;
      }
    }
    if (!r.error.empty()) {
      row.error = r.error;
      break;
    }
    state.SetIterationTime(run_seconds());
    for (std::size_t p = 0; p < kPhases; ++p) {
      state.counters[kPhaseNames[p]] = r.ops_per_s[p];
      state.counters[std::string("seconds_") + kPhaseNames[p]] = g_phase_seconds[p];
      row.phases[p].push_back(r.ops_per_s[p]);
      if (is_adaptive(kind) && p > 0) {
        // -1: the phase ended before the switch it calls for committed.
        state.counters[std::string("lag_") + kPhaseNames[p] + "_ms"] = r.switch_lag_ms[p];
        state.counters[std::string("switch_") + kPhaseNames[p] + "_ms"] = r.switch_ms[p];
        if (r.switch_lag_ms[p] >= 0) {
          row.switch_lag_ms[p].push_back(r.switch_lag_ms[p]);
          row.switch_ms[p].push_back(r.switch_ms[p]);
        }
      }
    }
    state.counters["overall"] = r.overall;
    state.counters["switches"] = static_cast<double>(r.switches);
    state.counters["preempts"] = static_cast<double>(r.preemptions);
    state.counters["host_realtime"] = r.host_realtime ? 1 : 0;
    row.overall.push_back(r.overall);
    row.switches += r.switches;
    row.host_realtime = row.host_realtime && r.host_realtime;
  }
  if (!row.error.empty()) state.SkipWithError(row.error.c_str());
}

void register_phases() {
  for (const Kind kind : kKinds) {
    auto* b =
        benchmark::RegisterBenchmark((std::string("BM_Phases/") + kind_name(kind)).c_str(),
                                     [kind](benchmark::State& state) { BM_Phases(state, kind); });
    b->ArgName("outside")->Iterations(1)->UseManualTime();
    for (const int outside : kOutsideLoads)
      b->Arg(outside);
  }
}

// ---- the summary --------------------------------------------------------------------------------

const Row* find_row(Kind kind, int outside) {
  const auto it = g_rows.find({kind, outside});
  return it == g_rows.end() || it->second.overall.empty() || !it->second.error.empty()
             ? nullptr
             : &it->second;
}

void print_load(std::FILE* out, int outside) {
  std::fprintf(out,
               "\nadaptive_phases, outside:%d: acquisitions per second, median over repetitions; "
               "phases of %.2f, %.2f and %.2f s\n%-17s %14s %14s %14s %14s %9s\n",
               outside, g_phase_seconds[0], g_phase_seconds[1], g_phase_seconds[2], "lock",
               kPhaseNames[0], kPhaseNames[1], kPhaseNames[2], "overall", "switches");
  bool host_realtime = true;
  for (const Kind kind : kKinds) {
    const auto it = g_rows.find({kind, outside});
    if (it == g_rows.end()) continue;
    const Row& row = it->second;
    if (!row.error.empty() || row.overall.empty()) {
      std::fprintf(out, "%-17s failed: %s\n", kind_name(kind), row.error.c_str());
      continue;
    }
    host_realtime = host_realtime && row.host_realtime;
    std::fprintf(out, "%-17s %14.0f %14.0f %14.0f %14.0f %9.1f\n", kind_name(kind),
                 median(row.phases[0]), median(row.phases[1]), median(row.phases[2]),
                 median(row.overall),
                 static_cast<double>(row.switches) / static_cast<double>(row.overall.size()));
  }
  if (!host_realtime) {
    std::fprintf(out, "%s\n", repatch::bench::kHostNotRealtime);
  }
  for (const Kind kind : {Kind::kAdaptive, Kind::kAdaptiveStopless}) {
    const Row* row = find_row(kind, outside);
    if (row == nullptr) continue;
    for (std::size_t p = 1; p < kPhases; ++p) {
      if (row->switch_lag_ms[p].empty()) continue;
      std::vector<double> lags = row->switch_lag_ms[p];
      std::sort(lags.begin(), lags.end());
      std::fprintf(out,
                   "%s: switch committed %.0f ms (median; max %.0f) into %s, %zu of %zu runs; "
                   "the switch itself %.2f ms (median, decision to commit)\n",
                   kind_name(kind), median(lags), lags.back(), kPhaseNames[p], lags.size(),
                   row->overall.size(), median(row->switch_ms[p]));
    }
  }
  const Row* adaptive = find_row(Kind::kAdaptive, outside);
  const bool statics_ran = std::any_of(kFixedKinds.begin(), kFixedKinds.end(),
                                       [&](Kind k) { return find_row(k, outside) != nullptr; });
  if (adaptive == nullptr || !statics_ran) {
    std::fprintf(out, "targets: not judged (%s)\n",
                 adaptive == nullptr ? "adaptive did not run" : "no static lock ran");
    return;
  }
  if (const Row* stopless = find_row(Kind::kAdaptiveStopless, outside); stopless != nullptr) {
    // Lock throughput with either writer: the phase the switch lands in, and the whole run.
    std::fprintf(out, "adaptive_stopless / adaptive: oversub %.3g, overall %.3g\n",
                 median(stopless->phases[1]) / median(adaptive->phases[1]),
                 median(stopless->overall) / median(adaptive->overall));
  }
  double best_run = 0;  // the whole run of a lock as good as the best static in every phase
  for (std::size_t p = 0; p < kPhases; ++p) {
    double best = 0;
    const char* best_name = "?";
    for (const Kind kind : kFixedKinds) {
      const Row* row = find_row(kind, outside);
      if (row == nullptr) continue;
      const double m = median(row->phases[p]);
      if (m > best) {
        best = m;
        best_name = kind_name(kind);
      }
    }
    best_run += best * g_phase_seconds[p] / run_seconds();
    const double ratio = best > 0 ? median(adaptive->phases[p]) / best : 0;
    std::fprintf(out, "target: %s, adaptive >= 0.9x the best static (%s): %.3g, %s\n",
                 kPhaseNames[p], best_name, ratio, ratio >= 0.9 ? "met" : "MISSED");
  }
  double worst = 0;
  const char* worst_name = "?";
  for (const Kind kind : kFixedKinds) {
    const Row* row = find_row(kind, outside);
    if (row == nullptr) continue;
    const double m = median(row->overall);
    if (worst == 0 || m < worst) {
      worst = m;
      worst_name = kind_name(kind);
    }
  }
  const double ratio = worst > 0 ? median(adaptive->overall) / worst : 0;
  std::fprintf(out, "target: whole run, adaptive >= 3x the worst static (%s): %.3g, %s\n",
               worst_name, ratio, ratio >= 3.0 ? "met" : "MISSED");
  // The whole run is the mean of the phases weighted by their lengths, so a lock that is no
  // faster than the best static in each phase cannot beat the worst static by more than this.
  if (worst > 0) {
    std::fprintf(out,
                 "  (the best static of each phase, taken in turn, would be %.3gx the worst over "
                 "the whole run: the ceiling for a lock no faster than those within each phase)\n",
                 best_run / worst);
  }
}

void print_summary(std::FILE* out) {
  for (const int outside : kOutsideLoads) {
    // A load that --benchmark_filter left out has nothing to report.
    const bool ran = std::any_of(kKinds.begin(), kKinds.end(), [&](Kind kind) {
      return g_rows.find({kind, outside}) != g_rows.end();
    });
    if (ran) print_load(out, outside);
  }
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
  std::optional<double> all_phases;
  std::optional<double> oversub;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    const bool is_all = arg.starts_with("--phase_seconds=");
    if (is_all || arg.starts_with("--oversub_seconds=")) {
      const std::optional<double> seconds =
          repatch::bench::positive_seconds("adaptive_phases", arg);
      if (!seconds) return 1;
      (is_all ? all_phases : oversub) = seconds;
      continue;
    }
    argv[kept++] = argv[i];
  }
  argc = kept;
  // --oversub_seconds wins over --phase_seconds for its phase, in whichever order they come.
  if (all_phases) g_phase_seconds.fill(*all_phases);
  if (oversub) g_phase_seconds[1] = *oversub;
  register_phases();
  return repatch::bench::run_benchmarks(argc, argv, &print_summary);
}
