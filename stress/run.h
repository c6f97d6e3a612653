// Running a stress scenario: boot the guest machine, choose the groups to switch, run the
// workload with every injector and the watchdog for the scenario's duration, check the
// invariants, and report.
#ifndef REPATCH_STRESS_RUN_H_
#define REPATCH_STRESS_RUN_H_

#include <memory>
#include <vector>

#include "repatch/engine.h"
#include "repatch/triggers.h"
#include "stress/report.h"
#include "stress/scenario.h"
#include "stress/switch_decider.h"

namespace repatch::stress {

/// Boots the guest machine (guest/machine.h) with every group in its default variant. Call once,
/// before any thread starts. Fails as guest::boot_machine() does.
Result<Engine*> boot_for_stress();

/// The groups `scenario` switches, each with its variants and current variant: scenario.groups,
/// or kDefaultGroups when it is empty (then demo_flush is left out when the CPU lacks
/// clflushopt). Fails with kUnknownName for a group the engine does not have (the message lists
/// those it has), kInvalidArgument for a group with one variant, or a feature-keyed group whose
/// feature the CPU lacks (its other variant would be an illegal instruction).
Result<std::vector<SwitchableGroup>> resolve_groups(Engine* engine, const Scenario& scenario);

/// Runs `scenario` on the booted `engine`, switching `groups`; returns the report. With
/// --trigger manual the switcher flips `groups` at the switch rate; with another trigger the
/// policy switches spinlock and tlb (those of `groups`) from the hint source: `replay` for
/// kReplay (loaded by the caller, so that a bad trace is a usage error), the real or simulated
/// source otherwise. With --microcode-every, groups keyed on a feature the simulated updates
/// toggle are switched by the microcode watcher only. When report.unfinished is set some threads
/// are stuck and still exist: the caller prints the report and ends the process with std::_Exit,
/// without returning from main.
Report run(Engine* engine, const Scenario& scenario, std::vector<SwitchableGroup> groups,
           std::unique_ptr<triggers::HintSource> replay = nullptr);

}  // namespace repatch::stress

#endif  // REPATCH_STRESS_RUN_H_
