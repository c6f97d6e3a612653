// The guest workload of a stress run: N vCPU threads that take and release many SpinLocks guarding
// shared counters, translate pages through their software TLBs and shoot translations down, run
// the demo guest's op sites and the feature-keyed sites, and now and then go idle; plus the NMI
// handler's work, which takes a lock of the spinlock group in NMI context.
//
// What each vCPU does is drawn from its own generator, seeded from the scenario's seed and its
// index. Every vCPU keeps tallies of what it did (only it writes them; anyone reads them, relaxed),
// and checks as it goes: mutual exclusion (a holder that finds another inside the lock), stale TLB
// reads, and the demo clock's value. The end-of-run checks compare the tallies with the shared
// counters (no lost update).
#ifndef REPATCH_STRESS_WORKLOAD_H_
#define REPATCH_STRESS_WORKLOAD_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "guest/demo_ops.h"
#include "guest/feature_ops.h"
#include "guest/spinlock.h"
#include "guest/tlb.h"
#include "repatch/error.h"
#include "stress/scenario.h"
#include "stress/violations.h"
#include "stress/workload_counters.h"
#include "sync/vcpu.h"

namespace repatch::stress {

/// One vCPU's tallies. Written by that vCPU only (relaxed: they are counts, read for progress and,
/// after the threads are joined, for the final checks, where the join orders them).
struct alignas(64) VcpuTally {
  std::atomic<std::uint64_t> iterations{0};  ///< loop iterations: the watchdog's sign of life
  /// The counters of source CounterSource::kVcpuTallies (the others stay 0).
  std::atomic<std::uint64_t> counts[kCounterCount] = {};

  void add(Counter counter, std::uint64_t n = 1) {
    counts[static_cast<std::size_t>(counter)].fetch_add(n, std::memory_order_relaxed);
  }
};

class Workload {
 public:
  /// Creates the locks and counters (after boot_machine(): locks start in the booted encoding).
  /// `violations` outlives the workload.
  Workload(const Scenario& scenario, ViolationLog& violations);
  /// Stops and joins the threads if they still run. Only when they can finish (see join_within).
  ~Workload();
  Workload(const Workload&) = delete;
  Workload& operator=(const Workload&) = delete;

  /// Starts the vCPU threads and returns once each is registered and has an empty TLB, and the NMI
  /// handler's lock work is installed (guest::set_machine_nmi_hook). Fails with what
  /// sync::Vcpu::enter() failed with on some thread (then every thread has stopped).
  Status start();

  /// Asks every vCPU to finish its current iteration and leave.
  void stop();
  /// Waits up to `timeout` for every vCPU thread to leave; true when all have (then they are
  /// joined). False when some vCPU is stuck: its thread cannot be joined, and the process must
  /// end without destroying this object (std::_Exit).
  bool join_within(std::chrono::milliseconds timeout);

  /// Indices of the vCPU threads that have not left (after stop(): the stuck ones).
  std::vector<std::size_t> unfinished() const;

  /// The vCPU ids, in thread order (valid after start()).
  const std::vector<sync::VcpuId>& ids() const { return ids_; }
  /// The kernel thread id of vCPU thread `index`.
  pid_t tid(std::size_t index) const { return tids_[index]; }
  const VcpuTally& tally(std::size_t index) const { return tallies_[index]; }
  /// NMI handler runs that took the NMI lock.
  std::uint64_t nmi_runs() const;
  /// Those of vCPU `id`'s NMI handler alone.
  std::uint64_t nmi_runs_of(sync::VcpuId id) const {
    return nmi_runs_[id].load(std::memory_order_relaxed);
  }
  /// The time vCPU `id` has spent in the workload's NMI hook (taking and holding the NMI lock),
  /// over the hooks that have returned. Read by the NMI injector's throttle.
  std::chrono::nanoseconds nmi_time_of(sync::VcpuId id) const {
    return std::chrono::nanoseconds(nmi_ns_[id].load(std::memory_order_relaxed));
  }
  /// Every counter of workload_counters() now: the vCPUs' tallies summed, the NMI handler's
  /// runs, the guest's statistics.
  WorkloadCounts totals() const;

  /// After a commit: checks that every lock is in the encoding of `spinlock_variant`
  /// (guest::kNativeVariant or kPvVariant) and records a kStateEncoding violation for each that
  /// is not. Normal context; call while no switch runs.
  void check_lock_encoding(int spinlock_variant);

  /// One pass of a module (stress/module_loader.h), on the module loader's vCPU: `add(lock,
  /// counter, inside, overlap)` adds `adds` to the counter of lock `round % locks` under that lock
  /// through the module's own sites, counting holders in `inside` and setting `overlap` if there
  /// were ever two (then a kMutualExclusion violation is recorded). The adds are tallied for
  /// check_final(). One thread at a time.
  void run_module_pass(const std::function<void(guest::SpinLock*, std::uint64_t*, std::atomic<int>*,
                                                std::atomic<bool>*)>& add,
                       std::size_t round, int adds);

  /// After join_within() succeeded (and the module loader stopped): every shared counter equals
  /// the sum of the tallies for it (kLostUpdate) and every lock is unlocked (kLeftoverState).
  void check_final();

 private:
  struct Guarded;
  void run_vcpu(std::size_t index);
  static void nmi_hook(sync::VcpuId self, void* ucontext);

  const Scenario scenario_;
  ViolationLog& violations_;
  std::vector<std::unique_ptr<Guarded>> guarded_;
  std::vector<std::uint64_t> module_increments_;  // per lock, by run_module_pass
  std::unique_ptr<guest::SpinLock> nmi_lock_;
  std::uint64_t nmi_counter_ = 0;  // under nmi_lock_
  std::atomic<int> nmi_inside_{0};
  std::atomic<std::uint64_t> nmi_runs_[sync::kMaxVcpus] = {};
  std::atomic<std::uint64_t> nmi_ns_[sync::kMaxVcpus] = {};
  std::vector<std::unique_ptr<demo::Lock>> demo_locks_;
  std::vector<std::uint64_t> demo_counters_;  // each under its demo lock
  std::vector<std::unique_ptr<features::ElidedLock>> elided_locks_;
  std::vector<std::uint64_t> elided_counters_;  // each under its elided lock
  std::unique_ptr<VcpuTally[]> tallies_;
  /// Counter-lock increments per vCPU and lock: the tallies of the no-lost-update check.
  std::vector<std::vector<std::uint64_t>> increments_;
  std::vector<std::vector<std::uint64_t>> demo_tallies_;
  std::vector<std::vector<std::uint64_t>> elided_tallies_;
  std::vector<sync::VcpuId> ids_;
  std::vector<pid_t> tids_;
  tlb::CpuMask everyone_;
  std::vector<std::thread> threads_;
  std::atomic<int> registered_{0};
  std::atomic<int> failed_{0};
  std::atomic<int> finished_{0};
  std::unique_ptr<std::atomic<bool>[]> left_;  // per thread: it has left
  std::atomic<bool> go_{false};
  std::atomic<bool> stop_{false};
  bool joined_ = false;
};

}  // namespace repatch::stress

#endif  // REPATCH_STRESS_WORKLOAD_H_
