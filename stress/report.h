// The final report of a stress run, and its two renderings: text for people and one JSON object
// for programs (README's "Stress harness" section documents every field).
#ifndef REPATCH_STRESS_REPORT_H_
#define REPATCH_STRESS_REPORT_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "repatch/engine.h"
#include "stress/microcode_injector.h"
#include "stress/scenario.h"
#include "stress/switcher.h"
#include "stress/trigger_decider.h"
#include "stress/violations.h"
#include "stress/workload_counters.h"

namespace repatch::stress {

struct Report {
  // The scenario as run.
  Scenario scenario;
  std::vector<std::string> groups;  ///< the groups the switcher flipped
  double elapsed_s = 0;             ///< wall time from the workload's start to its stop
  // Switches.
  SwitchTotals switches;
  std::uint64_t blackout_p50_ns = 0;
  std::uint64_t blackout_p99_ns = 0;
  std::uint64_t blackout_max_ns = 0;
  /// The same three figures writer by writer (index: SwitchWriter), from
  /// `switches.by_writer[w].blackouts_ns`.
  struct Blackouts {
    std::uint64_t p50_ns = 0;
    std::uint64_t p99_ns = 0;
    std::uint64_t max_ns = 0;
  };
  Blackouts writer_blackouts[kSwitchWriterCount];
  // Injected events.
  std::uint64_t nmis_injected = 0;         ///< sent by the NMI injector
  std::uint64_t nmis_injected_failed = 0;  ///< sends that failed
  std::uint64_t nmis_throttled = 0;        ///< not sent: the target's handlers were over 25%
  std::uint64_t nmis_delivered = 0;        ///< NMI handler runs on the vCPUs, any sender
  std::uint64_t preemptions = 0;           ///< preemptions that ended (all vCPUs)
  std::uint64_t steal_ns = 0;              ///< time the vCPUs spent parked
  /// The simulated microcode updates and what they switched; absent (null in JSON, "off" in text)
  /// without --microcode-every.
  std::optional<MicrocodeTotals> microcode_events;
  /// --modules: how many modules, and the loader's loads, unloads and passes (adds under a lock
  /// through a module's sites); absent (null in JSON) without --modules.
  struct ModuleTotals {
    int modules = 0;
    std::uint64_t loads = 0;
    std::uint64_t unloads = 0;
    std::uint64_t passes = 0;
  };
  std::optional<ModuleTotals> modules;
  /// The trigger policy's decisions; absent with --trigger manual.
  std::optional<TriggerTotals> trigger;
  // The trigger's policy as configured (with `trigger`).
  double trigger_steal_enter = 0;
  double trigger_steal_leave = 0;
  // The workload: every counter of workload_counters().
  WorkloadCounts workload;
  std::uint64_t commits_checked = 0;
  // Verdict.
  std::uint64_t violations_by_kind[static_cast<std::size_t>(Violation::kCount)] = {};
  std::uint64_t violations = 0;
  std::vector<std::string> violation_lines;
  bool stuck = false;       ///< the watchdog fired
  bool unfinished = false;  ///< some vCPU could not be joined at the end
  std::string error;        ///< set when the run could not start or went wrong (not a violation)

  /// 0 when the run passed, 1 on any violation, stuck thread or error.
  int exit_status() const;
};

/// Fills blackout_p50_ns, _p99_ns and _max_ns from `switches.blackouts_ns`, and
/// writer_blackouts from each writer's (nearest rank).
void summarise_blackouts(Report& report);

/// The report as text, several lines, each ending in '\n'.
std::string render_text(const Report& report);
/// One line: "PASS"/"FAIL", elapsed, switches, violations.
std::string render_summary(const Report& report);
/// The report as one JSON object (no trailing newline).
std::string render_json(const Report& report);

}  // namespace repatch::stress

#endif  // REPATCH_STRESS_REPORT_H_
