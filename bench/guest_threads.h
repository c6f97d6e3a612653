// Guest vCPU threads for the blackout benchmarks: each registers as a vCPU and runs a guest loop
// until the object is destroyed, so that a stop or a switch has someone to interrupt.
#ifndef REPATCH_BENCH_GUEST_THREADS_H_
#define REPATCH_BENCH_GUEST_THREADS_H_

#include <sched.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <thread>
#include <vector>

#include "sync/vcpu.h"

namespace repatch::bench {

class GuestVcpus {
 public:
  /// Starts `n` vCPU threads and returns once every one has tried to register. Each calls
  /// `step(vcpu, iteration)` in a loop (iteration counts from 1). With `yield_every` nonzero (a
  /// power of two) it gives the core away every that many iterations, standing in for a guest
  /// kernel's scheduling points; with 0 it computes without a break and is only preempted at a
  /// scheduler tick.
  template <typename Step>
  GuestVcpus(int n, std::uint32_t yield_every, Step step) {
    // A mask, not a division: in stop_blackout the step is a single increment, and a divide would
    // set the pace of the loop.
    const std::uint64_t yield_mask = yield_every == 0 ? 0 : yield_every - 1;
    threads_.reserve(static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i) {
      threads_.emplace_back([this, yield_every, yield_mask, step] {
        auto vcpu = repatch::sync::Vcpu::enter();
        if (!vcpu.ok()) failed_.fetch_add(1);
        ready_.fetch_add(1);
        if (!vcpu.ok()) return;
        repatch::sync::Vcpu& self = *vcpu.value();
        std::uint64_t iteration = 0;
        while (!stop_.load(std::memory_order_relaxed)) {
          step(self, ++iteration);
          if (yield_every != 0 && (iteration & yield_mask) == 0) sched_yield();
        }
      });
    }
    while (ready_.load() < n)
      sched_yield();
  }

  ~GuestVcpus() {
    stop_.store(true);
    for (std::thread& t : threads_)
      t.join();
  }

  GuestVcpus(const GuestVcpus&) = delete;
  GuestVcpus& operator=(const GuestVcpus&) = delete;

  /// Threads whose Vcpu::enter() failed (they exited at once, so the run has fewer vCPUs).
  int failed() const { return failed_.load(); }

 private:
  std::vector<std::thread> threads_;
  std::atomic<int> ready_{0};
  std::atomic<int> failed_{0};
  std::atomic<bool> stop_{false};
};

}  // namespace repatch::bench

#endif  // REPATCH_BENCH_GUEST_THREADS_H_
