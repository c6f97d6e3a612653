#include "stress/workload_counters.h"

#include <array>

#include "guest/spinlock.h"
#include "guest/tlb_cpu.h"
#include "guest/tlb_group_state.h"

namespace repatch::stress {
namespace {

using enum Counter;
using enum CounterSource;

std::uint64_t lock_restarts() {
  return guest::spinlock_stats().restarts.load(std::memory_order_relaxed);
}
std::uint64_t lock_sleeps() {
  return guest::spinlock_stats().sleeps.load(std::memory_order_relaxed);
}
std::uint64_t tlb_marks_drained() {
  return tlb::group_state().drained();
}
std::uint64_t stale_reads() {
  return tlb::total_stale_reads();
}

// README's "Stress harness" section documents each text line and JSON key.
constexpr std::array<CounterSpec, kCounterCount> kCounters = {{
    // Op-site calls (lock, unlock, tlb, demo).
    {kOps, kVcpuTallies, nullptr, nullptr, "ops", "ops: ", "\n", true},
    // Acquisitions of the counter locks, by the encoding of the lock word just after acquiring.
    {kAcquisitionsNative, kVcpuTallies, nullptr, "lock_acquisitions", "native",
     "lock acquisitions: native ", "", false},
    {kAcquisitionsPv, kVcpuTallies, nullptr, "lock_acquisitions", "pv", ", pv ", "", false},
    {kNmiAcquisitions, kNmiHandlers, nullptr, "lock_acquisitions", "nmi", "; in NMI handlers ", "",
     false},
    {kDemoIncrements, kVcpuTallies, nullptr, "lock_acquisitions", "demo", "; demo lock ", "",
     false},
    // Increments under the elided locks (the lock_elision, cpu_number and cache_flush sites).
    {kElidedIncrements, kVcpuTallies, nullptr, "lock_acquisitions", "elided", "; elided lock ",
     "\n", false},
    // Waits restarted because their lock was converted; pv futex sleeps.
    {kLockRestarts, kGuest, &lock_restarts, "lock_acquisitions", "restarts",
     "  lock waits restarted by a conversion: ", "", false},
    {kLockSleeps, kGuest, &lock_sleeps, "lock_acquisitions", "pv_sleeps", ", pv sleeps: ", "\n",
     false},
    {kTranslations, kVcpuTallies, nullptr, "tlb", "translations", "TLB: ", " translations", false},
    {kShootdowns, kVcpuTallies, nullptr, "tlb", "shootdowns", ", ", " shootdowns", false},
    // Shootdown targets that left a flush-on-resume mark.
    {kShootdownsMarked, kVcpuTallies, nullptr, "tlb", "shootdowns_marked", " (",
     " targets left a flush-on-resume mark)", false},
    // Flush-on-resume marks drained by pv -> native switches.
    {kTlbMarksDrained, kGuest, &tlb_marks_drained, "tlb", "marks_drained", ", ",
     " marks drained by switches", false},
    // From the TLBs' own count (tlb::total_stale_reads).
    {kStaleReads, kGuest, &stale_reads, "tlb", "stale_reads", ", ", " stale reads\n", false},
    // Times a vCPU went offline (halted) briefly.
    {kIdles, kVcpuTallies, nullptr, nullptr, "idles", "idle periods: ", "\n", false},
}};

constexpr bool in_counter_order() {
  for (std::size_t i = 0; i < kCounters.size(); ++i) {
    if (static_cast<std::size_t>(kCounters[i].counter) != i) return false;
    if ((kCounters[i].source == kGuest) != (kCounters[i].read_guest != nullptr)) return false;
  }
  return true;
}
static_assert(in_counter_order(),
              "each Counter has its entry at its own index, and exactly the kGuest entries a "
              "reader");

}  // namespace

std::span<const CounterSpec> workload_counters() {
  return kCounters;
}

}  // namespace repatch::stress
