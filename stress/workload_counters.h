// The counts a stress run reports about its workload, in one table. The vCPUs' tallies, their
// totals, the report's text and its JSON all follow the table: a new count is an entry here and
// the code that counts it.
#ifndef REPATCH_STRESS_WORKLOAD_COUNTERS_H_
#define REPATCH_STRESS_WORKLOAD_COUNTERS_H_

#include <cstddef>
#include <cstdint>
#include <span>

namespace repatch::stress {

/// The index of a count in VcpuTally::counts, WorkloadCounts and workload_counters(), in the
/// order of the report.
enum class Counter : std::uint8_t {
  kOps,
  kAcquisitionsNative,
  kAcquisitionsPv,
  kNmiAcquisitions,
  kDemoIncrements,
  kElidedIncrements,
  kLockRestarts,
  kLockSleeps,
  kTranslations,
  kShootdowns,
  kShootdownsMarked,
  kTlbMarksDrained,
  kStaleReads,
  kIdles,
};
/// One past the last Counter: a new last counter must replace it here.
inline constexpr std::size_t kCounterCount = static_cast<std::size_t>(Counter::kIdles) + 1;

/// Where a count comes from.
enum class CounterSource : std::uint8_t {
  kVcpuTallies,  ///< each vCPU counts its own in its VcpuTally; the total is their sum
  kNmiHandlers,  ///< NMI handler runs that took the NMI lock (Workload::nmi_runs())
  kGuest,        ///< the guest's own statistics (CounterSpec::read_guest)
};

struct CounterSpec {
  Counter counter;
  CounterSource source;
  /// kGuest: reads the guest's statistic (any thread, any time).
  std::uint64_t (*read_guest)();
  /// The object of the report's JSON that holds the count ("lock_acquisitions", "tlb"), or
  /// nullptr for the top level; consecutive entries share an object.
  const char* json_object;
  const char* json_key;
  /// The text report prints text_before, the count, its rate per second when `per_second`
  /// (" (N per second)"), then text_after: the entries of one line carry its words and
  /// separators.
  const char* text_before;
  const char* text_after;
  bool per_second;
};

/// Every counter, in the order of Counter.
std::span<const CounterSpec> workload_counters();

/// A value per Counter.
struct WorkloadCounts {
  std::uint64_t values[kCounterCount] = {};

  std::uint64_t& operator[](Counter c) { return values[static_cast<std::size_t>(c)]; }
  std::uint64_t operator[](Counter c) const { return values[static_cast<std::size_t>(c)]; }
};

}  // namespace repatch::stress

#endif  // REPATCH_STRESS_WORKLOAD_COUNTERS_H_
