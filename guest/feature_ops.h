// The guest's feature-keyed alternatives: ops whose best implementation depends on a CPU feature
// that a late microcode load may add or remove (the triggers re-apply them; trigger/microcode.cpp).
//
//  group lock_elision {plain, rtm}  keyed on "rtm"; not interchangeable (stop-machine)
//    elision_lock(lock)    plain: call (test-and-set spin)   rtm: call (XBEGIN: run the critical
//                                                            section as a transaction while the
//                                                            lock is free; after aborts, as plain)
//    elision_unlock(lock)  plain: inline movb $0             rtm: call (XEND inside a transaction,
//                                                            else a plain release)
//  group cpu_number {rdtscp, rdpid}  keyed on "rdpid"; interchangeable (batch writer)
//    cpu_number_read()     rdtscp: call (RDTSCP's TSC_AUX,   rdpid: inline rdpid %rax
//                          or getcpu() without RDTSCP)
//  group cache_flush {clflush, clflushopt}  keyed on "clflushopt"; interchangeable
//    cache_flush_line(p)   clflush: inline clflush           clflushopt: inline clflushopt
//
// The first variant of each group is correct on every x86-64 CPU; boot puts each group in the
// variant that matches the CPU (repatch/op.h, REPATCH_DEFINE_FEATURE_GROUP), so a variant whose
// instruction the CPU lacks never runs. lock_elision is not interchangeable: a section entered
// under rtm and left by the plain unlock stays a transaction until something aborts it, so the two
// variants are not meant to run side by side; stop-machine's IPI aborts every open transaction
// before the write.
//
// Kept out of the demo guest (repatch_demo_guest), whose group count tests check; the `repatch`
// command links them (repatch_guest_features).
#ifndef REPATCH_GUEST_FEATURE_OPS_H_
#define REPATCH_GUEST_FEATURE_OPS_H_

#include <atomic>
#include <cstdint>

#include "repatch/op.h"

namespace repatch::features {

/// A lock whose critical sections the rtm variant elides. One byte: 0 free, 1 held.
struct ElidedLock {
  std::atomic<std::uint8_t> locked{0};
};

/// Counters of the rtm variant since start (relaxed; written outside transactions only).
struct ElisionStats {
  std::atomic<std::uint64_t> aborts{0};     ///< transactions that aborted
  std::atomic<std::uint64_t> fallbacks{0};  ///< acquisitions that gave up eliding
};
ElisionStats& elision_stats();

}  // namespace repatch::features

REPATCH_DECLARE_GROUP(lock_elision);
REPATCH_DECLARE_GROUP(cpu_number);
REPATCH_DECLARE_GROUP(cache_flush);
REPATCH_DECLARE_OP(elision_lock, 8);
REPATCH_DECLARE_OP(elision_unlock, 8);
REPATCH_DECLARE_OP(cpu_number_read, 8);
REPATCH_DECLARE_OP(cache_flush_line, 8);

namespace repatch::features {

// always_inline: each site then lives in the function that runs the op, at any optimisation level.

[[gnu::always_inline]] inline void elided_lock(ElidedLock* lock) {
  REPATCH_SITE(elision_lock, (), "D"(lock));
}

[[gnu::always_inline]] inline void elided_unlock(ElidedLock* lock) {
  REPATCH_SITE(elision_unlock, (), "D"(lock));
}

/// The number of the CPU the caller runs on (it may move right after).
[[gnu::always_inline]] inline std::uint32_t current_cpu() {
  std::uint64_t aux;
  REPATCH_SITE(cpu_number_read, ("=a"(aux)));
  // TSC_AUX as Linux sets it: (node << 12) | cpu.
  return static_cast<std::uint32_t>(aux & 0xfff);
}

/// Writes back and evicts the cache line holding `line`.
[[gnu::always_inline]] inline void flush_cache_line(const void* line) {
  REPATCH_SITE(cache_flush_line, (), "D"(line));
}

}  // namespace repatch::features

#endif  // REPATCH_GUEST_FEATURE_OPS_H_
