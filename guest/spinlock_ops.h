// The spinlock group's definitions, for every object that runs its sites: the guest's own
// (guest/spinlock.cpp) and any shared object loaded as a module. Each object defines its own copy
// of the group, its ops and their variants (the engine matches them by name); the variants' C
// bodies are the guest's, which a module reaches through its own thunks.
#ifndef REPATCH_GUEST_SPINLOCK_OPS_H_
#define REPATCH_GUEST_SPINLOCK_OPS_H_

#include <cstdint>

#include "guest/spinlock.h"
#include "repatch/op.h"

// The C bodies behind the call variants (guest/spinlock.cpp): each returns 0 when done and 1 for
// "restart".
extern "C" {
std::uint32_t spinlock_native_lock(repatch::guest::SpinLock* lock);
std::uint32_t spinlock_pv_lock(repatch::guest::SpinLock* lock);
std::uint32_t spinlock_pv_unlock(repatch::guest::SpinLock* lock);
std::uint32_t spinlock_pv_vcpu_is_preempted(std::uint64_t cpu);
}

// Once per object, at file scope.
// clang-format off
#define REPATCH_GUEST_DEFINE_SPINLOCK_OPS()                                                        \
  REPATCH_DEFINE_GROUP(spinlock, 0, "native", "pv");                                               \
  REPATCH_DEFINE_OP(spinlock_lock, spinlock, native);                                              \
  REPATCH_CALLEE_SAVE_THUNK(spinlock_native_lock_thunk, spinlock_native_lock, value);              \
  REPATCH_CALLEE_SAVE_THUNK(spinlock_pv_lock_thunk, spinlock_pv_lock, value);                      \
  REPATCH_CALL_VARIANT(spinlock_lock, native, spinlock_native_lock_thunk);                         \
  REPATCH_CALL_VARIANT(spinlock_lock, pv, spinlock_pv_lock_thunk);                                 \
  /* Head is the low 16 bits of the word: one increment of it releases a ticket lock, and     */   \
  /* leaves %eax (preset to 0 by spin_unlock) alone. No lock prefix: only the holder writes   */   \
  /* head, and the instruction stores only head's two bytes, so a locker's compare-and-swap   */   \
  /* of the whole word either sees the new head or fails and reads again. x86 keeps the store */   \
  /* after the critical section's loads and stores (a release), and without the prefix the    */   \
  /* store does not wait for them to drain (lock_throughput, 2 vCPUs, lock free between       */   \
  /* bursts: 0.90x a test-and-set lock's rate with it, 0.93-0.99x without).                   */   \
  REPATCH_DEFINE_OP(spinlock_unlock, spinlock, native);                                            \
  REPATCH_INLINE_VARIANT(spinlock_unlock, native, "incw (%rdi)");                                  \
  REPATCH_CALLEE_SAVE_THUNK(spinlock_pv_unlock_thunk, spinlock_pv_unlock, value);                  \
  REPATCH_CALL_VARIANT(spinlock_unlock, pv, spinlock_pv_unlock_thunk);                             \
  REPATCH_DEFINE_OP(spinlock_vcpu_is_preempted, spinlock, native);                                 \
  REPATCH_INLINE_VARIANT(spinlock_vcpu_is_preempted, native, "xor %eax, %eax");                    \
  REPATCH_CALLEE_SAVE_THUNK(spinlock_pv_vcpu_is_preempted_thunk, spinlock_pv_vcpu_is_preempted,    \
                            value);                                                                \
  REPATCH_CALL_VARIANT(spinlock_vcpu_is_preempted, pv, spinlock_pv_vcpu_is_preempted_thunk)
// clang-format on

#endif  // REPATCH_GUEST_SPINLOCK_OPS_H_
