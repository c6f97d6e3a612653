// The NMI injector: a thread (not a vCPU) that sends NMIs to the vCPUs at a mean rate, each to a
// vCPU and after a gap drawn from a generator seeded by the scenario's seed. The handler that runs
// is the guest machine's (guest/machine.h): it serves TLB flush requests, then runs the
// workload's hook, which takes a lock of the spinlock group in NMI context.
//
// Throttling. The NMI lock is one ticket lock for every vCPU's handler; with native encoding on an
// oversubscribed host it is handed over once per scheduling of the next waiter, so NMIs can come
// faster than handlers finish. A vCPU then runs one handler after another and nothing else: an NMI
// storm no real machine survives either, and one that starves a vCPU completing a switch in its
// #BP handler, holding the switch until the injector stops. The kernel's perf subsystem throttles
// its NMIs for the same reason (perf_cpu_time_max_percent, 25% by default); the injector does the
// same: a vCPU whose NMI handlers took d since its last NMI receives none for the next 3d, so its
// handlers hold at most a quarter of its time. Dropped NMIs are counted as throttled.
#ifndef REPATCH_STRESS_NMI_INJECTOR_H_
#define REPATCH_STRESS_NMI_INJECTOR_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <thread>
#include <vector>

#include "sync/vcpu.h"

namespace repatch::stress {

class NmiInjector {
 public:
  /// The time a vCPU has spent in NMI handlers so far, over the handlers that have returned.
  using HandlerTime = std::function<std::chrono::nanoseconds(sync::VcpuId)>;

  /// The share of a vCPU's time its NMI handlers may take before its NMIs are throttled.
  static constexpr double kMaxHandlerShare = 0.25;

  /// Starts sending `rate` NMIs per second (exponential gaps, uniformly chosen targets among
  /// `vcpus`) from `seed`'s schedule, throttled by `handler_time` (see above; an empty function
  /// throttles nothing). A rate of 0 starts nothing.
  NmiInjector(std::vector<sync::VcpuId> vcpus, double rate, std::uint64_t seed,
              HandlerTime handler_time);
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
  /// NMIs not sent because their target's handlers were over kMaxHandlerShare.
  std::uint64_t throttled() const { return throttled_.load(std::memory_order_relaxed); }

 private:
  void run(double rate, std::uint64_t seed);
  std::vector<sync::VcpuId> vcpus_;
  HandlerTime handler_time_;
  std::atomic<bool> stop_{false};
  std::atomic<std::uint64_t> sent_{0};
  std::atomic<std::uint64_t> failed_{0};
  std::atomic<std::uint64_t> throttled_{0};
  std::thread thread_;
};

}  // namespace repatch::stress

#endif  // REPATCH_STRESS_NMI_INJECTOR_H_
