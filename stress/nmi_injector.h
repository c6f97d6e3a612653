// The NMI injector: a thread (not a vCPU) that sends NMIs to the vCPUs at a mean rate, each to a
// vCPU and after a gap drawn from a generator seeded by the scenario's seed. The handler that runs
// is the guest machine's (guest/machine.h): it serves TLB flush requests, then runs the
// workload's hook, which takes a lock of the spinlock group in NMI context.
#ifndef REPATCH_STRESS_NMI_INJECTOR_H_
#define REPATCH_STRESS_NMI_INJECTOR_H_

#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

#include "sync/vcpu.h"

namespace repatch::stress {

class NmiInjector {
 public:
  /// Starts sending `rate` NMIs per second (exponential gaps, uniformly chosen targets among
  /// `vcpus`) from `seed`'s schedule. A rate of 0 starts nothing.
  NmiInjector(std::vector<sync::VcpuId> vcpus, double rate, std::uint64_t seed);
  /// Stops and joins.
  ~NmiInjector();
  NmiInjector(const NmiInjector&) = delete;
  NmiInjector& operator=(const NmiInjector&) = delete;

  /// Stops sending and joins the thread. Idempotent.
  void stop();
  /// NMIs sent (each either a new signal or merged into one still pending on its target).
  std::uint64_t sent() const { return sent_.load(std::memory_order_relaxed); }
  /// Sends that failed (tgkill's error, e.g. EAGAIN when the signal queue is full).
  std::uint64_t failed() const { return failed_.load(std::memory_order_relaxed); }

 private:
  void run(double rate, std::uint64_t seed);
  std::vector<sync::VcpuId> vcpus_;
  std::atomic<bool> stop_{false};
  std::atomic<std::uint64_t> sent_{0};
  std::atomic<std::uint64_t> failed_{0};
  std::thread thread_;
};

}  // namespace repatch::stress

#endif  // REPATCH_STRESS_NMI_INJECTOR_H_
