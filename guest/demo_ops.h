// The demo guest: a few ops of the kind a guest kernel patches, declared with the public API
// exactly as any program would. The `repatch status` command and the tests boot it.
//
//  group demo_lock {native, pv}  -- a test-and-set lock whose paravirt variants count their calls
//    demo_lock_acquire(lock)      native: call (spin)          pv: call (spin, counted)
//    demo_lock_release(lock)      native: inline movb $0       pv: call (store, counted "kick")
//    demo_vcpu_is_preempted(cpu)  native: inline xor %eax      pv: call (reads a flag)
//  group demo_clock {fixed, shared} -- flags kGroupInterchangeable: both variants are correct
//    demo_clock_read()            fixed: inline mov $imm       shared: inline RIP-relative load
//  group demo_flush {clflush, clflushopt} -- a feature-keyed alternative on "clflushopt"
//    demo_flush_line(addr)        clflush: inline clflush      clflushopt: inline clflushopt
#ifndef REPATCH_GUEST_DEMO_OPS_H_
#define REPATCH_GUEST_DEMO_OPS_H_

#include <atomic>
#include <cstdint>

#include "repatch/op.h"

namespace repatch::demo {

struct Lock {
  std::atomic<std::uint8_t> locked{0};
};

/// What the fixed variant of demo_clock_read returns.
inline constexpr std::uint32_t kFixedClock = 0x2a;

}  // namespace repatch::demo

extern "C" {
/// What the shared variant of demo_clock_read returns (read RIP-relative at the site).
extern REPATCH_DETAIL_HIDDEN std::uint32_t demo_clock_value;
/// Calls of the pv variants since start.
extern REPATCH_DETAIL_HIDDEN std::atomic<std::uint64_t> demo_pv_acquire_calls;
extern REPATCH_DETAIL_HIDDEN std::atomic<std::uint64_t> demo_pv_release_calls;
extern REPATCH_DETAIL_HIDDEN std::atomic<std::uint64_t> demo_pv_preempted_calls;
/// Per-vCPU preempted flags read by the pv demo_vcpu_is_preempted (index & 63).
extern REPATCH_DETAIL_HIDDEN std::atomic<std::uint8_t> demo_preempted[64];
}

REPATCH_DECLARE_GROUP(demo_lock);
REPATCH_DECLARE_GROUP(demo_clock);
REPATCH_DECLARE_GROUP(demo_flush);
REPATCH_DECLARE_OP(demo_lock_acquire, 8);
REPATCH_DECLARE_OP(demo_lock_release, 8);
REPATCH_DECLARE_OP(demo_vcpu_is_preempted, 8);
REPATCH_DECLARE_OP(demo_clock_read, 10);
REPATCH_DECLARE_OP(demo_flush_line, 8);

namespace repatch::demo {

// always_inline: each site then lives in the function that runs the op, at any optimisation level.
[[gnu::always_inline]] inline void lock_acquire(Lock* lock) {
  REPATCH_SITE(demo_lock_acquire, (), "D"(lock));
}

[[gnu::always_inline]] inline void lock_release(Lock* lock) {
  REPATCH_SITE(demo_lock_release, (), "D"(lock));
}

[[gnu::always_inline]] inline bool vcpu_is_preempted(std::uint64_t cpu) {
  std::uint32_t preempted;
  REPATCH_SITE(demo_vcpu_is_preempted, ("=a"(preempted)), "D"(cpu));
  return (preempted & 0xff) != 0;
}

[[gnu::always_inline]] inline std::uint32_t clock_read() {
  std::uint32_t now;
  REPATCH_SITE(demo_clock_read, ("=a"(now)));
  return now;
}

[[gnu::always_inline]] inline void flush_line(const void* line) {
  REPATCH_SITE(demo_flush_line, (), "D"(line));
}

}  // namespace repatch::demo

#endif  // REPATCH_GUEST_DEMO_OPS_H_
