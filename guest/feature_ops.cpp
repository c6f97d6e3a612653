#include "guest/feature_ops.h"

#include <sched.h>

#include "arch/x86/cpuid.h"

namespace repatch::features {

ElisionStats& elision_stats() {
  static ElisionStats stats;
  return stats;
}

}  // namespace repatch::features

namespace {

// XBEGIN's value when the transaction started (_XBEGIN_STARTED).
constexpr std::uint32_t kTransactionStarted = ~0u;
// Transactions tried before an acquisition takes the lock for real.
constexpr int kElisionTries = 3;

// Starts a transaction; returns kTransactionStarted inside it, or the abort status after an
// abort (execution resumes here with the transaction's effects undone). Written in assembly so
// that the file needs no -mrtm: the instruction only runs on CPUs with RTM (boot's choice).
inline std::uint32_t transaction_begin() {
  std::uint32_t status = kTransactionStarted;
  asm volatile("xbegin 1f\n1:" : "+a"(status) : : "memory");
  return status;
}

inline bool in_transaction() {
  bool inside;
  asm volatile("xtest" : "=@ccnz"(inside) : : "memory");
  return inside;
}

void plain_acquire(repatch::features::ElidedLock* lock) {
  while (lock->locked.exchange(1, std::memory_order_acquire) != 0) {
    while (lock->locked.load(std::memory_order_relaxed) != 0)
      __builtin_ia32_pause();
  }
}

// RDTSCP's presence, read once (CPUID exits to the hypervisor: not on the op's path).
const bool g_has_rdtscp = repatch::x86::read_cpu_info().rdtscp;

}  // namespace

extern "C" {

__attribute__((used)) void feature_plain_lock(repatch::features::ElidedLock* lock) {
  plain_acquire(lock);
}

__attribute__((used)) void feature_rtm_lock(repatch::features::ElidedLock* lock) {
  for (int i = 0; i < kElisionTries; ++i) {
    const std::uint32_t status = transaction_begin();
    if (status == kTransactionStarted) {
      // The lock word joins the read set: a real acquisition by anyone aborts this transaction.
      if (lock->locked.load(std::memory_order_relaxed) == 0) return;
      asm volatile("xabort $0xff" ::: "memory");
    }
    repatch::features::elision_stats().aborts.fetch_add(1, std::memory_order_relaxed);
    while (lock->locked.load(std::memory_order_relaxed) != 0)
      __builtin_ia32_pause();
  }
  repatch::features::elision_stats().fallbacks.fetch_add(1, std::memory_order_relaxed);
  plain_acquire(lock);
}

__attribute__((used)) void feature_rtm_unlock(repatch::features::ElidedLock* lock) {
  if (in_transaction()) {
    asm volatile("xend" ::: "memory");
    return;
  }
  // Release pairs with the acquire exchange of the next owner.
  lock->locked.store(0, std::memory_order_release);
}

__attribute__((used)) std::uint64_t feature_rdtscp_cpu() {
  if (g_has_rdtscp) {
    std::uint32_t lo, hi, aux;
    asm volatile("rdtscp" : "=a"(lo), "=d"(hi), "=c"(aux));
    return aux;
  }
  const int cpu = sched_getcpu();
  return cpu < 0 ? 0 : static_cast<std::uint64_t>(cpu);
}
}

REPATCH_DEFINE_FEATURE_GROUP(lock_elision, 0, "rtm", "plain", "rtm");
REPATCH_DEFINE_FEATURE_GROUP(cpu_number, repatch::abi::kGroupInterchangeable, "rdpid", "rdtscp",
                             "rdpid");
REPATCH_DEFINE_FEATURE_GROUP(cache_flush, repatch::abi::kGroupInterchangeable, "clflushopt",
                             "clflush", "clflushopt");

REPATCH_DEFINE_OP(elision_lock, lock_elision, plain);
REPATCH_CALLEE_SAVE_THUNK(feature_plain_lock_thunk, feature_plain_lock, void);
REPATCH_CALLEE_SAVE_THUNK(feature_rtm_lock_thunk, feature_rtm_lock, void);
REPATCH_CALL_VARIANT(elision_lock, plain, feature_plain_lock_thunk);
REPATCH_CALL_VARIANT(elision_lock, rtm, feature_rtm_lock_thunk);

REPATCH_DEFINE_OP(elision_unlock, lock_elision, plain);
REPATCH_INLINE_VARIANT(elision_unlock, plain, "movb $0, (%rdi)");
REPATCH_CALLEE_SAVE_THUNK(feature_rtm_unlock_thunk, feature_rtm_unlock, void);
REPATCH_CALL_VARIANT(elision_unlock, rtm, feature_rtm_unlock_thunk);

REPATCH_DEFINE_OP(cpu_number_read, cpu_number, rdtscp);
REPATCH_CALLEE_SAVE_THUNK(feature_rdtscp_cpu_thunk, feature_rdtscp_cpu, value);
REPATCH_CALL_VARIANT(cpu_number_read, rdtscp, feature_rdtscp_cpu_thunk);
REPATCH_INLINE_VARIANT(cpu_number_read, rdpid, "rdpid %rax");

REPATCH_DEFINE_OP(cache_flush_line, cache_flush, clflush);
REPATCH_INLINE_VARIANT(cache_flush_line, clflush, "clflush (%rdi)");
REPATCH_INLINE_VARIANT(cache_flush_line, clflushopt, "clflushopt (%rdi)");
