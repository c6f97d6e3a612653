// The preemption injector: the simulated hypervisor (guest/hypervisor.h) playing a schedule of
// preemptions drawn from the scenario's seed, at a mean rate, one at a time, each parking a vCPU
// for 50 us to 1 ms wherever it is.
#ifndef REPATCH_STRESS_PREEMPTION_INJECTOR_H_
#define REPATCH_STRESS_PREEMPTION_INJECTOR_H_

#include <chrono>
#include <cstdint>
#include <memory>
#include <vector>

#include "guest/hypervisor.h"

namespace repatch::stress {

class PreemptionInjector {
 public:
  /// Starts playing hypervisor::schedule(seed, vcpus, ...) with gaps chosen so that about `rate`
  /// preemptions happen per second, enough of them to last `duration`. A rate of 0 plays nothing.
  /// With `phases`, the host's contention comes and goes: the schedule alternates
  /// kPhaseLength of that rate with kPhaseLength of a quarter of it (gaps four times as long),
  /// so that a trigger watching the steal time has something to react to.
  PreemptionInjector(const std::vector<sync::VcpuId>& vcpus, double rate,
                     std::chrono::milliseconds duration, std::uint64_t seed, bool phases = false);

  static constexpr std::chrono::seconds kPhaseLength{2};
  /// Stops (resuming a vCPU it parked) and joins.
  ~PreemptionInjector();
  PreemptionInjector(const PreemptionInjector&) = delete;
  PreemptionInjector& operator=(const PreemptionInjector&) = delete;

  /// Stops playing; a vCPU it parked is resumed. Idempotent.
  void stop();
  /// Preemptions played (sent and ended).
  std::uint64_t played() const;

 private:
  std::unique_ptr<hypervisor::Preemptor> preemptor_;
};

}  // namespace repatch::stress

#endif  // REPATCH_STRESS_PREEMPTION_INJECTOR_H_
