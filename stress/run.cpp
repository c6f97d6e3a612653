#include "stress/run.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>

#include "guest/hypervisor.h"
#include "guest/machine.h"
#include "guest/simulated_source.h"
#include "stress/crash_report.h"
#include "stress/invariants.h"
#include "stress/microcode_injector.h"
#include "stress/module_loader.h"
#include "stress/nmi_injector.h"
#include "stress/preemption_injector.h"
#include "stress/progress.h"
#include "stress/switcher.h"
#include "stress/trigger_decider.h"
#include "stress/watchdog.h"
#include "stress/workload.h"

namespace repatch::stress {
namespace {

std::string progress_line(Clock::time_point start, const Scenario& s, const Switcher* switcher,
                          const Workload& workload, const ViolationLog& violations) {
  const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  const WorkloadCounts t = workload.totals();
  char line[256];
  std::snprintf(line, sizeof line,
                "%5.1f/%.1f s  switches %llu committed, %llu aborted  %.2fM ops/s  NMIs %llu  "
                "violations %llu",
                elapsed, static_cast<double>(s.duration.count()) / 1000.0,
                static_cast<unsigned long long>(switcher ? switcher->committed() : 0),
                static_cast<unsigned long long>(switcher ? switcher->aborted() : 0),
                elapsed > 0 ? static_cast<double>(t[Counter::kOps]) / elapsed / 1e6 : 0.0,
                static_cast<unsigned long long>(t[Counter::kNmiAcquisitions]),
                static_cast<unsigned long long>(violations.total()));
  return line;
}

}  // namespace

Result<Engine*> boot_for_stress() {
  return guest::boot_machine({});
}

Result<std::vector<SwitchableGroup>> resolve_groups(Engine* engine, const Scenario& scenario) {
  const EngineStatus status = engine->status();
  std::vector<std::string> names = scenario.groups;
  const bool defaults = names.empty();
  if (defaults) names.assign(std::begin(kDefaultGroups), std::end(kDefaultGroups));
  std::vector<SwitchableGroup> out;
  for (const std::string& name : names) {
    const GroupStatus* found = nullptr;
    for (const GroupStatus& g : status.groups)
      if (g.name == name) found = &g;
    if (found == nullptr) {
      std::string known;
      for (const GroupStatus& g : status.groups)
        known += (known.empty() ? "" : ", ") + g.name;
      return Error(ErrorCode::kUnknownName,
                   "--groups: no group '" + name + "'; the groups are " + known);
    }
    if (!found->feature.empty() && !found->feature_present) {
      if (defaults) continue;  // the default scenario flips only what this CPU can run
      return Error(ErrorCode::kInvalidArgument,
                   "--groups: group '" + name + "' is keyed on CPU feature '" + found->feature +
                       "', which this CPU lacks: its '" + found->variants.back() +
                       "' variant would be an illegal instruction");
    }
    if (found->variants.size() < 2) {
      return Error(ErrorCode::kInvalidArgument,
                   "--groups: group '" + name + "' has one variant: nothing to switch to");
    }
    out.push_back({found->name, found->variants, found->variant});
  }
  return out;
}

Report run(Engine* engine, const Scenario& scenario, std::vector<SwitchableGroup> groups,
           std::unique_ptr<triggers::HintSource> replay) {
  Report report;
  report.scenario = scenario;
  // The features simulated microcode updates toggle, and the groups keyed on them: those follow
  // the features alone, so the decider leaves them out.
  std::vector<std::string> toggled;
  std::vector<std::string> microcode_groups;
  if (scenario.microcode_every_s > 0) {
    Result<std::vector<std::string>> features = MicrocodeInjector::toggleable_features();
    if (!features.ok()) {
      report.error = "--microcode-every: " + features.error().to_string();
      return report;
    }
    toggled = std::move(features.value());
    for (const GroupStatus& g : engine->status().groups) {
      if (std::find(toggled.begin(), toggled.end(), g.feature) != toggled.end())
        microcode_groups.push_back(g.name);
    }
    std::erase_if(groups, [&](const SwitchableGroup& g) {
      return std::find(microcode_groups.begin(), microcode_groups.end(), g.name) !=
             microcode_groups.end();
    });
  }
  if (scenario.trigger != Trigger::kManual) {
    // The policy's modes move spinlock and tlb together.
    std::erase_if(groups,
                  [](const SwitchableGroup& g) { return g.name != "spinlock" && g.name != "tlb"; });
    if (groups.size() != 2) {
      report.error = "--trigger needs the spinlock and tlb groups, which this guest lacks";
      return report;
    }
  }
  for (const SwitchableGroup& g : groups)
    report.groups.push_back(g.name);
  for (const std::string& g : microcode_groups)
    report.groups.push_back(g);
  // --writer applies to requests that name a group which is not interchangeable.
  std::vector<std::string> interchangeable;
  for (const GroupStatus& g : engine->status().groups) {
    if (g.interchangeable) interchangeable.push_back(g.name);
  }
  std::vector<std::string> module_paths;
  for (int m = 0; m < scenario.modules; ++m) {
    Result<std::string> path = stress_module_path(m);
    if (!path.ok()) {
      report.error = path.error().to_string();
      return report;
    }
    module_paths.push_back(std::move(path).value());
  }
  // Heap-allocated so that, when threads are stuck, what they use can be left alive (released)
  // rather than destroyed under them.
  if (Status s = install_crash_report(); !s.ok()) {
    report.error = s.error().to_string();
    return report;
  }
  auto violations_owner = std::make_unique<ViolationLog>();
  ViolationLog& violations = *violations_owner;
  auto workload = std::make_unique<Workload>(scenario, violations);
  if (Status s = workload->start(); !s.ok()) {
    report.error = "the workload could not start: " + s.error().to_string();
    return report;
  }
  auto invariants_owner =
      std::make_unique<Invariants>(engine, *workload, violations, report.groups);
  Invariants& invariants = *invariants_owner;
  const Clock::time_point start = Clock::now();
  // A simulated trigger watches the steal time: the host's contention comes and goes in phases.
  auto preemptions = std::make_unique<PreemptionInjector>(workload->ids(), scenario.preempt_rate,
                                                          scenario.duration, scenario.seed,
                                                          scenario.trigger == Trigger::kSimulated);
  auto nmis = std::make_unique<NmiInjector>(
      workload->ids(), scenario.nmi_rate, scenario.seed,
      [&workload = *workload](sync::VcpuId id) { return workload.nmi_time_of(id); });
  std::unique_ptr<SwitchDecider> decider;
  TriggerDecider* trigger = nullptr;
  if (scenario.trigger != Trigger::kManual) {
    std::unique_ptr<triggers::HintSource> source;
    switch (scenario.trigger) {
      case Trigger::kSimulated:
        source = triggers::make_simulated_source(workload->ids());
        break;
      case Trigger::kReal:
        source = triggers::make_real_source();
        break;
      case Trigger::kReplay:
      case Trigger::kManual:
        source = std::move(replay);
        break;
    }
    const TriggerSettings settings = trigger_settings(scenario);
    report.trigger_steal_enter = settings.policy.steal->enter;
    report.trigger_steal_leave = settings.policy.steal->leave;
    auto owned = std::make_unique<TriggerDecider>(std::move(groups), std::move(source), settings);
    trigger = owned.get();
    decider = std::move(owned);
  } else if (scenario.switch_rate > 0 && !groups.empty()) {
    decider = std::make_unique<RateDecider>(std::move(groups), scenario.switch_rate, scenario.seed,
                                            start);
  }
  const bool switching = decider != nullptr;
  auto switcher = std::make_unique<Switcher>(
      engine, std::move(decider),
      [&invariants](const SwitchRequest& request) { invariants.after_commit(request); },
      scenario.writer, std::move(interchangeable));
  if (switching) switcher->start();
  std::unique_ptr<ModuleLoader> modules;
  if (!module_paths.empty()) {
    modules = std::make_unique<ModuleLoader>(engine, *workload, violations, module_paths);
    modules->start();
  }
  std::unique_ptr<MicrocodeInjector> microcode;
  if (scenario.microcode_every_s > 0) {
    Result<std::unique_ptr<MicrocodeInjector>> created = MicrocodeInjector::create(
        engine, switcher.get(),
        std::chrono::milliseconds(std::llround(scenario.microcode_every_s * 1000.0)),
        workload->ids().size());
    if (created.ok()) {
      microcode = std::move(created.value());
      microcode->start();
    } else {
      report.error = "--microcode-every: " + created.error().to_string();
    }
  }
  auto watchdog = std::make_unique<Watchdog>(*workload, *switcher, violations, scenario.watchdog);
  if (Status s = watchdog->start(); !s.ok()) report.error = s.error().to_string();
  {
    ProgressLine progress(!scenario.quiet && !scenario.json, [&] {
      return progress_line(start, scenario, switching ? switcher.get() : nullptr, *workload,
                           violations);
    });
    const Clock::time_point end = start + scenario.duration;
    while (Clock::now() < end && !watchdog->fired())
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  report.elapsed_s = std::chrono::duration<double>(Clock::now() - start).count();
  report.stuck = watchdog->fired();

  // Stop the injectors first: a switch in progress may be waiting for an executor whose vCPU an
  // NMI storm or a preemption holds. Then the switches, so that none runs while the vCPUs leave
  // (the microcode injector's go through the switcher, so it stops first); then the vCPUs.
  nmis->stop();
  preemptions->stop();
  // The loader is a vCPU that takes the workload's locks: it finishes its module before the
  // switches stop, so that its last unload never waits for a switch that waits for it.
  if (modules) {
    modules->stop();
    report.modules = Report::ModuleTotals{scenario.modules, modules->loads(), modules->unloads(),
                                          modules->passes()};
  }
  const bool microcode_stopped = !microcode || microcode->stop_within(scenario.watchdog);
  const bool switcher_stopped =
      (!switching || switcher->stop_within(scenario.watchdog)) && microcode_stopped;
  workload->stop();
  const bool joined = workload->join_within(scenario.watchdog);
  watchdog->stop();
  if (!joined) {
    for (const std::size_t i : workload->unfinished()) {
      const std::string line = "vCPU " + std::to_string(workload->ids()[i]) +
                               " did not finish its iteration within " +
                               std::to_string(scenario.watchdog.count()) + " ms of the end; at " +
                               Watchdog::where(workload->tid(i));
      violations.record(Violation::kStuck, line.c_str());
    }
  }
  if (!switcher_stopped) {
    violations.record(Violation::kStuck,
                      microcode_stopped ? "the switcher did not return from its switch at the end"
                                        : "a microcode update's switch did not return at the end");
  }
  report.unfinished = !joined || !switcher_stopped;
  if (!report.unfinished) invariants.at_end();

  if (switcher_stopped) {
    report.switches = switcher->totals();
    summarise_blackouts(report);
    if (trigger != nullptr) report.trigger = trigger->totals();
  }
  if (microcode && microcode_stopped) report.microcode_events = microcode->totals();
  report.commits_checked = invariants.commits_checked();
  report.nmis_injected = nmis->sent();
  report.nmis_injected_failed = nmis->failed();
  report.nmis_throttled = nmis->throttled();
  report.nmis_delivered = workload->nmi_runs();
  for (const sync::VcpuId id : workload->ids()) {
    report.preemptions += hypervisor::preemptions(id);
    report.steal_ns += hypervisor::steal_ns(id);
  }
  report.workload = workload->totals();
  for (std::size_t i = 0; i < static_cast<std::size_t>(Violation::kCount); ++i)
    report.violations_by_kind[i] = violations.count(static_cast<Violation>(i));
  report.violations = violations.total();
  report.violation_lines = violations.lines();
  if (report.unfinished) {
    // Stuck threads still use these: leave them alive.
    (void)workload.release();
    (void)switcher.release();
    (void)microcode.release();
    (void)preemptions.release();
    (void)nmis.release();
    (void)invariants_owner.release();
    (void)violations_owner.release();
  }
  return report;
}

}  // namespace repatch::stress
