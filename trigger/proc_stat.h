// /proc/stat: CPU time per CPU (with the steal column) and the number of runnable tasks.
#ifndef REPATCH_TRIGGER_PROC_STAT_H_
#define REPATCH_TRIGGER_PROC_STAT_H_

#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

#include "repatch/error.h"

namespace repatch::triggers {

/// One "cpu" or "cpuN" line, in clock ticks since boot.
struct CpuTimes {
  int cpu = -1;             ///< N of "cpuN"; -1 for the "cpu" line (all CPUs together)
  std::uint64_t total = 0;  ///< user + nice + system + idle + iowait + irq + softirq + steal
  /// The 8th column; empty on kernels that do not report it.
  std::optional<std::uint64_t> steal;
};

struct ProcStat {
  CpuTimes all;
  std::vector<CpuTimes> cpus;  ///< in file order
  std::optional<std::uint32_t> procs_running;
};

/// Parses the contents of /proc/stat. Lines other than cpu* and procs_running are ignored.
/// Fails with kInvalidArgument, naming the line, when there is no "cpu" line, a cpu line has
/// fewer than 4 columns or a column that is not a whole number, a CPU appears twice, or the sum
/// overflows.
Result<ProcStat> parse_proc_stat(std::string_view text);

/// Stolen share of CPU time between two samples, in percent.
struct StealShare {
  double all_percent = 0;      ///< over every CPU
  double max_cpu_percent = 0;  ///< the CPU that lost the most (among those in both samples)
};

/// The steal share from `before` to `after`; empty when either lacks the steal column or no time
/// passed (a counter going backwards, as after CPU hotplug, also counts as no time).
std::optional<StealShare> steal_between(const ProcStat& before, const ProcStat& after);

}  // namespace repatch::triggers

#endif  // REPATCH_TRIGGER_PROC_STAT_H_
