// The locks that lock_throughput and adaptive_phases compare, and the work their loops do under
// and outside the lock, so that both programs measure the same thing.
#ifndef REPATCH_BENCH_CONTENDED_LOCKS_H_
#define REPATCH_BENCH_CONTENDED_LOCKS_H_

#include <benchmark/benchmark.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <mutex>

#include "guest/spinlock.h"
#include "sync/vcpu.h"

namespace repatch::bench {

/// The summary's line when a simulated hypervisor's thread could not run SCHED_FIFO
/// (hypervisor::HostPriority::kRealtime refused).
inline constexpr const char* kHostNotRealtime =
    "note: the simulated hypervisor could not run SCHED_FIFO (no CAP_SYS_NICE): it preempted less "
    "often than its schedule says";

/// The contenders. kNative and kPv are the guest's spinlock held in one variant; kAdaptive and
/// kAdaptiveStopless are the guest's spinlock switched by the trigger loop (adaptive_phases only),
/// with the engine's default writer for the group (stop-machine: the group is not
/// interchangeable) and with SwitchWriter::kStopless.
enum class Kind { kNative, kPv, kMutex, kTas, kAdaptive, kAdaptiveStopless };

/// The contenders whose lock does not change during a run, as lock_throughput measures them.
inline constexpr std::array<Kind, 4> kFixedKinds = {Kind::kNative, Kind::kPv, Kind::kMutex,
                                                    Kind::kTas};

inline bool is_adaptive(Kind kind) {
  return kind == Kind::kAdaptive || kind == Kind::kAdaptiveStopless;
}

/// The name in benchmark names, tables and JSON: "native", "adaptive_stopless".
inline const char* kind_name(Kind kind) {
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
    case Kind::kAdaptiveStopless:
      return "adaptive_stopless";
  }
  return "?";
}

/// A vCPU's counts, each on a cache line of its own; read by the main thread while the vCPUs run.
struct alignas(64) PerVcpu {
  std::atomic<std::uint64_t> count{0};  ///< every acquisition
  std::atomic<std::uint64_t> timed{0};  ///< those released before the row's time was up
  std::atomic<sync::VcpuId> id{0};
};

/// The guest's spinlock, in whatever variant its group is in.
struct GuestSpinlock {
  guest::SpinLock* target;
  void lock() { guest::spin_lock(target); }
  void unlock() { guest::spin_unlock(target); }
};

/// std::mutex (glibc: no spinning, a futex wait when held).
struct StdMutex {
  std::mutex m;
  void lock() { m.lock(); }
  void unlock() { m.unlock(); }
};

/// A plain test-and-set spinlock: exchange, and while it is held, read with PAUSE until it looks
/// free (test-and-test-and-set, so that waiters do not bounce the line with writes).
struct TasLock {
  alignas(64) std::atomic<bool> held{false};
  void lock() {
    while (held.exchange(true, std::memory_order_acquire)) {
      do {
        __builtin_ia32_pause();
      } while (held.load(std::memory_order_relaxed));
    }
  }
  void unlock() { held.store(false, std::memory_order_release); }
};

/// What the critical section writes: a counter (a plain variable, written only under the lock,
/// which must end equal to the acquisitions counted) and a second cache line.
struct alignas(64) Shared {
  std::uint64_t counter = 0;
  alignas(64) std::uint64_t line[8] = {};

  /// The critical section: runs with the lock held.
  void update(std::uint64_t x) {
    const std::uint64_t c = counter;
    counter = c + 1;
    line[c & 7] += x;
  }
};

/// Work outside the lock: `n` dependent multiply-adds on `x` (about 1.25 ns each here).
inline std::uint64_t outside_work(std::uint64_t x, int n) {
  for (int i = 0; i < n; ++i)
    x = x * 6364136223846793005ull + 1442695040888963407ull;
  benchmark::DoNotOptimize(x);
  return x;
}

}  // namespace repatch::bench

#endif  // REPATCH_BENCH_CONTENDED_LOCKS_H_
