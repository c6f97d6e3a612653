#include "guest/demo_ops.h"

extern "C" {
// used: only the shared variant's assembly reads it, which link-time optimisation cannot see.
__attribute__((used)) std::uint32_t demo_clock_value = 0x5eed;
std::atomic<std::uint64_t> demo_pv_acquire_calls{0};
std::atomic<std::uint64_t> demo_pv_release_calls{0};
std::atomic<std::uint64_t> demo_pv_preempted_calls{0};
std::atomic<std::uint8_t> demo_preempted[64];

// The C bodies behind the call variants. They run behind callee-save thunks, so they are
// ordinary functions; `used` because only the thunks' assembly calls them.
__attribute__((used)) void demo_native_acquire(repatch::demo::Lock* lock) {
  while (lock->locked.exchange(1, std::memory_order_acquire) != 0) {
    while (lock->locked.load(std::memory_order_relaxed) != 0) {
      __builtin_ia32_pause();
    }
  }
}

__attribute__((used)) void demo_pv_acquire(repatch::demo::Lock* lock) {
  demo_pv_acquire_calls.fetch_add(1, std::memory_order_relaxed);
  demo_native_acquire(lock);
}

__attribute__((used)) void demo_pv_release(repatch::demo::Lock* lock) {
  demo_pv_release_calls.fetch_add(1, std::memory_order_relaxed);
  // Release pairs with the acquire exchange of the next owner.
  lock->locked.store(0, std::memory_order_release);
}

__attribute__((used)) std::uint32_t demo_pv_vcpu_is_preempted(std::uint64_t cpu) {
  demo_pv_preempted_calls.fetch_add(1, std::memory_order_relaxed);
  return demo_preempted[cpu & 63].load(std::memory_order_relaxed);
}
}

REPATCH_DEFINE_GROUP(demo_lock, 0, "native", "pv");
REPATCH_DEFINE_GROUP(demo_clock, repatch::abi::kGroupInterchangeable, "fixed", "shared");
REPATCH_DEFINE_FEATURE_GROUP(demo_flush, repatch::abi::kGroupInterchangeable, "clflushopt",
                             "clflush", "clflushopt");

REPATCH_DEFINE_OP(demo_lock_acquire, demo_lock, native);
REPATCH_CALLEE_SAVE_THUNK(demo_native_acquire_thunk, demo_native_acquire, void);
REPATCH_CALLEE_SAVE_THUNK(demo_pv_acquire_thunk, demo_pv_acquire, void);
REPATCH_CALL_VARIANT(demo_lock_acquire, native, demo_native_acquire_thunk);
REPATCH_CALL_VARIANT(demo_lock_acquire, pv, demo_pv_acquire_thunk);

REPATCH_DEFINE_OP(demo_lock_release, demo_lock, native);
REPATCH_INLINE_VARIANT(demo_lock_release, native, "movb $0, (%rdi)");
REPATCH_CALLEE_SAVE_THUNK(demo_pv_release_thunk, demo_pv_release, void);
REPATCH_CALL_VARIANT(demo_lock_release, pv, demo_pv_release_thunk);

REPATCH_DEFINE_OP(demo_vcpu_is_preempted, demo_lock, native);
REPATCH_INLINE_VARIANT(demo_vcpu_is_preempted, native, "xor %eax, %eax");
REPATCH_CALLEE_SAVE_THUNK(demo_pv_vcpu_is_preempted_thunk, demo_pv_vcpu_is_preempted, value);
REPATCH_CALL_VARIANT(demo_vcpu_is_preempted, pv, demo_pv_vcpu_is_preempted_thunk);

REPATCH_DEFINE_OP(demo_clock_read, demo_clock, fixed);
REPATCH_INLINE_VARIANT(demo_clock_read, fixed, "mov $" REPATCH_DETAIL_STR(0x2a) ", %eax");
REPATCH_INLINE_VARIANT(demo_clock_read, shared, "mov demo_clock_value(%rip), %eax");

REPATCH_DEFINE_OP(demo_flush_line, demo_flush, clflush);
REPATCH_INLINE_VARIANT(demo_flush_line, clflush, "clflush (%rdi)");
REPATCH_INLINE_VARIANT(demo_flush_line, clflushopt, "clflushopt (%rdi)");
