// The invariant violations a stress run found: a count per kind and the first few descriptions.
//
// Violations are recorded from vCPU threads, the switcher, the watchdog and NMI handlers, so
// record() is async-signal-safe: an atomic count, and the description copied into one of a fixed
// number of preallocated lines claimed by an atomic index.
#ifndef REPATCH_STRESS_VIOLATIONS_H_
#define REPATCH_STRESS_VIOLATIONS_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace repatch::stress {

enum class Violation : std::uint8_t {
  kMutualExclusion,  ///< two holders inside one lock at once
  kLostUpdate,       ///< per-vCPU tallies do not add up to a shared counter
  kStaleTlbRead,     ///< a translation older than the page's last completed shootdown
  kMixedVariant,     ///< after a commit, a site of a switched group is not in the group's variant
  kStateEncoding,    ///< after a commit, a group's in-memory state is not in its variant's form
  kWrongResult,      ///< an op returned what none of its variants returns
  kLeftoverState,    ///< at the end, a lock is not unlocked or a site not as its table says
  kStuck,            ///< a vCPU or the switcher made no progress within the watchdog's time
  kModuleLoad,       ///< --modules: a module was refused, or could not be used or unloaded
  kCount,
};

/// "mutual_exclusion", "lost_update", "stale_tlb_read", "mixed_variant", "state_encoding",
/// "wrong_result", "leftover_state", "stuck", "module_load": the report's and README's names.
const char* violation_name(Violation kind);

class ViolationLog {
 public:
  /// Descriptions kept; later violations are only counted.
  static constexpr std::size_t kKeptLines = 32;
  static constexpr std::size_t kLineSize = 512;

  /// Counts one violation of `kind` and keeps `what` (cut at kLineSize - 1) if a line is free.
  /// Async-signal-safe; any thread.
  void record(Violation kind, const char* what) noexcept;

  std::uint64_t count(Violation kind) const;
  std::uint64_t total() const;
  /// The kept descriptions, "kind: what", in the order they were claimed. Normal context.
  std::vector<std::string> lines() const;

 private:
  std::atomic<std::uint64_t> counts_[static_cast<std::size_t>(Violation::kCount)] = {};
  std::atomic<std::size_t> claimed_{0};
  char text_[kKeptLines][kLineSize] = {};
  Violation kinds_[kKeptLines] = {};
  /// Set (release) once a claimed line is written; lines() reads it (acquire) before the text.
  std::atomic<bool> ready_[kKeptLines] = {};
};

}  // namespace repatch::stress

#endif  // REPATCH_STRESS_VIOLATIONS_H_
