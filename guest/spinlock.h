// The guest's spinlock group: one lock object whose word is in the encoding of the group's current
// variant, and the ops that take and release it through patchable sites.
//
//  group spinlock {native, pv}
//    spinlock_lock(lock)           native: call (ticket lock)   pv: call (spin, then futex sleep)
//    spinlock_unlock(lock)         native: inline incw          pv: call (release, kick sleepers)
//    spinlock_vcpu_is_preempted(c) native: inline xor %eax      pv: call (the vCPU's preempted
//    flag)
//
// The word's layout is in guest/lock_state.h. Every wait re-reads the word on each iteration; when
// its tag or generation says the lock was converted under it (a switch ran, DESIGN H6/H7), the
// waiter leaves at once without writing the word, since its ticket or waiter count belonged to the
// encoding that no longer exists, and the op returns "restart" (1 in %eax) to its site wrapper,
// which runs the site again: by then the site holds the new variant. So no wait holds an
// OpInFlight mark, and a switch never has to wait for contention to end.
//
// Locks are for vCPU threads (sync::Vcpu) and, when no switch can run meanwhile, any other thread:
// a pv waiter goes offline while it sleeps only if it is a vCPU.
#ifndef REPATCH_GUEST_SPINLOCK_H_
#define REPATCH_GUEST_SPINLOCK_H_

#include <atomic>
#include <cstdint>

#include "guest/lock_registry.h"
#include "guest/lock_state.h"
#include "repatch/op.h"

REPATCH_DECLARE_GROUP(spinlock);
REPATCH_DECLARE_OP(spinlock_lock, 8);
REPATCH_DECLARE_OP(spinlock_unlock, 8);
REPATCH_DECLARE_OP(spinlock_vcpu_is_preempted, 8);

namespace repatch::guest {

/// A fair spinlock whose encoding follows the `spinlock` group's variant. Not copyable or
/// movable: the registry and waiters know it by address.
class SpinLock {
 public:
  /// An unlocked lock in the encoding of the current variant, registered for conversion. `name`
  /// (a string that outlives the lock, or null) appears in refusals of a switch. Normal context,
  /// any thread (see guest/lock_registry.h); never in a signal handler.
  explicit SpinLock(const char* name = nullptr);
  /// Unregisters; may wait for a switch's walk of the registry in progress. The lock must be
  /// unlocked with no waiters. Normal context.
  ~SpinLock();
  SpinLock(const SpinLock&) = delete;
  SpinLock& operator=(const SpinLock&) = delete;

  const char* name() const { return name_; }
  /// The current word (for tests, reports and the converter).
  std::uint64_t load_word() const { return word_.load(std::memory_order_acquire); }

  /// The word itself. Ops and lock_state use it; tests craft states through it.
  std::atomic<std::uint64_t>& word() { return word_; }
  /// The vCPU id + 1 of the last pv holder, 0 when unknown: a hint for vcpu_is_preempted, written
  /// by a pv holder after it acquires (relaxed: a stale owner only costs a wrong spin-or-sleep
  /// guess; the native lock leaves it alone, see spinlock.cpp).
  std::atomic<std::uint32_t>& owner() { return owner_; }

 private:
  // The word comes first, 8-aligned: `incw (%rdi)` (the native unlock) adds one to its low 16
  // bits, and the pv futex is its upper half at offset 4.
  alignas(8) std::atomic<std::uint64_t> word_;
  std::atomic<std::uint32_t> owner_{0};
  const char* name_;
  RegistryNode registry_node_;
};
static_assert(sizeof(std::atomic<std::uint64_t>) == 8);

/// Counters of the slow paths since start, for tests and reports (relaxed; approximate while ops
/// run).
struct SpinlockStats {
  std::atomic<std::uint64_t> restarts{0};  ///< waits abandoned because the word was converted
  std::atomic<std::uint64_t> sleeps{0};    ///< pv futex waits entered
  std::atomic<std::uint64_t> preempted_owner_sleeps{
      0};                               ///< of those, cut short by a preempted owner
  std::atomic<std::uint64_t> kicks{0};  ///< pv unlocks that woke sleepers
};
SpinlockStats& spinlock_stats();

// always_inline: each site then lives in the function that runs the op, at any optimisation level.

/// Acquires `lock`. Runs the lock site until it reports "acquired" (0); each "restart" (1) means
/// the lock was converted while this vCPU waited, so the site, now holding the other variant, runs
/// again.
[[gnu::always_inline]] inline void spin_lock(SpinLock* lock) {
  std::uint32_t restart;
  do {  // NOLINT(bugprone-infinite-loop): the site's asm writes `restart` (its %eax output)
    REPATCH_SITE(spinlock_lock, ("=a"(restart)), "D"(lock));
  } while (restart != 0);
}

/// Releases `lock`, held by the caller. The native variant is one `incw` that leaves %eax
/// alone, hence %eax preset to 0 ("done"); the pv variant returns 1 when it finds the word
/// converted to native (its holder was stopped inside the pv unlock body while a switch ran), and
/// the site, native by then, runs again.
[[gnu::always_inline]] inline void spin_unlock(SpinLock* lock) {
  std::uint32_t restart;
  do {
    restart = 0;
    REPATCH_SITE(spinlock_unlock, ("+a"(restart)), "D"(lock));
  } while (restart != 0);
}

/// Whether vCPU `cpu` is preempted by the hypervisor, as the current variant knows it (native:
/// never).
[[gnu::always_inline]] inline bool vcpu_is_preempted(std::uint64_t cpu) {
  std::uint32_t preempted;
  REPATCH_SITE(spinlock_vcpu_is_preempted, ("=a"(preempted)), "D"(cpu));
  return (preempted & 0xff) != 0;
}

/// RAII holder of a SpinLock.
class SpinGuard {
 public:
  explicit SpinGuard(SpinLock& lock) : lock_(lock) { spin_lock(&lock_); }
  ~SpinGuard() { spin_unlock(&lock_); }
  SpinGuard(const SpinGuard&) = delete;
  SpinGuard& operator=(const SpinGuard&) = delete;

 private:
  SpinLock& lock_;
};

}  // namespace repatch::guest

#endif  // REPATCH_GUEST_SPINLOCK_H_
