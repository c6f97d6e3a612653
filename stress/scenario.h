// A stress scenario: what `repatch stress` runs, for how long and how hard.
//
// Every rate is per second of the whole run, spread over the vCPUs; every injected event (which
// groups a switch names and when, which vCPU an NMI or a preemption hits, when and for how long) is
// drawn from generators seeded by `seed`, so one seed gives one schedule. Where in the guest code
// each event lands depends on real timing and is not reproducible.
#ifndef REPATCH_STRESS_SCENARIO_H_
#define REPATCH_STRESS_SCENARIO_H_

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "repatch/engine.h"
#include "repatch/error.h"

namespace repatch::stress {

/// What decides the switches (stress/switch_decider.h). kManual: the harness's own switcher flips
/// groups at `switch_rate`. The others run the triggers' policy (repatch/triggers.h) over a hint
/// source and switch spinlock and tlb between native (dedicated) and pv (oversubscribed):
/// kSimulated reads the simulated hypervisor's steal time of the workload's vCPUs, kReal this
/// machine's /proc and CPUID, kReplay the trace in `replay_file`.
enum class Trigger : std::uint8_t {
  kManual,
  kSimulated,
  kReal,
  kReplay,
};

/// "manual", "simulated", "real", "replay".
const char* trigger_name(Trigger trigger);

/// Groups the switcher flips by default: the guest's two sets with state and the three demo
/// groups (demo_flush only where the CPU has clflushopt; see Scenario::groups).
inline constexpr const char* kDefaultGroups[] = {"spinlock", "tlb", "demo_lock", "demo_clock",
                                                 "demo_flush"};

struct Scenario {
  int vcpus = 4;  ///< guest vCPU threads (more than the machine's cores: vCPUs are oversubscribed)
  std::chrono::milliseconds duration{20000};
  double switch_rate = 200;   ///< switch requests per second (0: none)
  double nmi_rate = 1000;     ///< NMIs injected per second, over all vCPUs (0: none)
  double preempt_rate = 100;  ///< preemptions per second by the simulated hypervisor (0: none)
  int locks = 64;             ///< SpinLocks guarding shared counters
  /// Shared objects with sites of the spinlock group loaded and unloaded in turn during the run
  /// (stress/module_loader.h); 0: none.
  int modules = 0;
  Trigger trigger = Trigger::kManual;
  std::string replay_file;  ///< the trace of kReplay
  /// The writer of every decided request that names a group which is not interchangeable
  /// (spinlock, tlb, demo_lock): kAuto (the engine's choice), kStopMachine or kStopless. Requests
  /// of interchangeable groups only take kAuto, which is the batch writer for them; the microcode
  /// watcher's switches keep the writers it asks for.
  SwitchWriter writer = SwitchWriter::kAuto;
  /// Seconds between two simulated microcode updates (0: none). See stress/microcode_injector.h.
  double microcode_every_s = 0;
  std::uint64_t seed = 1;
  /// A vCPU (or the switcher) that makes no progress for this long is stuck: the run ends with a
  /// violation naming it and where it is.
  std::chrono::milliseconds watchdog{10000};
  /// Groups the switcher flips; empty means kDefaultGroups (demo_flush dropped when the CPU lacks
  /// clflushopt, since its second variant would then be an illegal instruction).
  std::vector<std::string> groups;
  bool json = false;
  bool quiet = false;
};

/// The highest values Scenario accepts, so that a typo is refused rather than run.
inline constexpr int kMaxVcpus = 64;
inline constexpr double kMaxSwitchRate = 10000;
inline constexpr double kMaxNmiRate = 100000;
/// One preemption is played at a time, parked 50 us to 1 ms: more than this cannot be played.
inline constexpr double kMaxPreemptRate = 1000;
inline constexpr int kMaxLocks = 100000;
/// --microcode-every: 0, or 0.1 s to one hour.
inline constexpr double kMinMicrocodeEvery = 0.1;
inline constexpr double kMaxMicrocodeEvery = 3600;

/// Checks every field's range. Fails with kInvalidArgument naming the option (as the command
/// spells it), the value and the accepted range.
Status validate(const Scenario& scenario);

}  // namespace repatch::stress

#endif  // REPATCH_STRESS_SCENARIO_H_
