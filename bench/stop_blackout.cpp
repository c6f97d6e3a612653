// stop_blackout: how long stop_machine() keeps the other vCPUs parked (first IPI to last vCPU
// released), against the number of vCPU threads on this machine's cores, and how much the parked
// vCPUs' spin-then-sleep wait matters when vCPUs outnumber cores (DESIGN, H9).
//
// Each repetition is one stop with empty work (one sync_all round, as a write phase would have),
// timed by the engine itself (StopResult::blackout) and reported as manual time, so the median and
// p99 are over individual stops.
//
// The stopless writer has no counterpart here. It has no rendezvous: there is nothing to time with
// empty work, and its one wait (vCPUs inside an op of the switched groups) exists only for a
// real switch of a real group. A row doing that switch against the same computing vCPUs is
// exactly a busy row of switch_blackout (BM_SwitchBusy/stopless, beside BM_SwitchBusy/stop, which
// is this rendezvous plus the writes), so the summary points there instead of duplicating it.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "bench/guest_threads.h"
#include "bench/stats.h"
#include "sync/stop_machine.h"
#include "sync/vcpu.h"

namespace {

using repatch::sync::StopContext;
using repatch::sync::StopOutcome;
using repatch::sync::StopWork;

class OneSyncRound : public StopWork {
 public:
  int check_parked(repatch::sync::VcpuId, const void*) noexcept override { return 0; }
  int run(StopContext& context) noexcept override { return context.sync_all() ? 0 : 1; }
};

double p99(const std::vector<double>& v) {
  return repatch::bench::percentile(v, 0.99);
}

// Args: vCPU threads besides the primary, pause iterations before a parked vCPU sleeps, and
// whether the guest loop yields.
void BM_StopBlackout(benchmark::State& state) {
  const int vcpus = static_cast<int>(state.range(0));
  const auto spin = static_cast<std::uint32_t>(state.range(1));
  // The guest loop is pure computation; the yielding one gives the core away every 1024
  // iterations, as a guest kernel's scheduling points would.
  const repatch::bench::GuestVcpus guests(
      vcpus, state.range(2) != 0 ? 1024 : 0,
      [](repatch::sync::Vcpu&, std::uint64_t iteration) { benchmark::DoNotOptimize(iteration); });
  if (guests.failed() != 0) {
    state.SkipWithError("a guest thread could not register as a vCPU");
    return;
  }
  OneSyncRound work;
  for (auto _ : state) {
    // The busy-spin rows measure the naive rendezvous, so nothing may cut their spinning short.
    const auto result =
        repatch::sync::stop_machine(work, {.ack_deadline = std::chrono::seconds(2),
                                           .spin_before_sleep = spin,
                                           .sleep_when_oversubscribed = spin < 50000000});
    if (result.outcome != StopOutcome::kDone || result.work_result != 0) {
      state.SkipWithError("a stop did not complete");
      break;
    }
    state.SetIterationTime(std::chrono::duration<double>(result.blackout).count());
  }
}

}  // namespace

// Spin 2000 pause iterations (about 10-60 us) then sleep, against 50 million (busy-spinning for
// the whole stop, as a naive rendezvous would).
BENCHMARK(BM_StopBlackout)
    ->ArgNames({"vcpus", "spin", "yielding"})
    ->ArgsProduct({{1, 2, 4, 8, 16}, {2000, 50000000}, {0, 1}})
    ->UseManualTime()
    ->Iterations(1)
    ->Repetitions(200)
    ->ComputeStatistics("p99", p99)
    ->ReportAggregatesOnly(true)
    ->Unit(benchmark::kMicrosecond);

int main(int argc, char** argv) {
  return repatch::bench::run_benchmarks(argc, argv, [](std::FILE* out) {
    std::fprintf(out,
                 "\nstop_blackout: the stopless writer has no rendezvous to time here; its "
                 "switches against the same computing vCPUs are switch_blackout's busy rows "
                 "(BM_SwitchBusy/stopless beside BM_SwitchBusy/stop)\n");
  });
}
