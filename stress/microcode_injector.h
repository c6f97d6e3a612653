// The microcode injector: simulated late microcode loads during a stress run.
//
// A SimulatedCpu (repatch/triggers.h) starts with this machine's real features (CPUID). Every
// period the injector loads a simulated update with a new revision that alternately removes and
// adds back the toggled features: those of the watcher's whitelist that this CPU really has, so
// that an update never adds a feature the CPU lacks and a variant needing it never runs. Then it
// polls the MicrocodeWatcher, which sees the new revision, diffs the features and switches the
// feature-keyed groups through the harness's switcher (Switcher::make: accounted, and each
// switched group checked wholly in one variant right after its commit).
#ifndef REPATCH_STRESS_MICROCODE_INJECTOR_H_
#define REPATCH_STRESS_MICROCODE_INJECTOR_H_

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "repatch/engine.h"
#include "repatch/triggers.h"
#include "stress/switcher.h"

namespace repatch::stress {

/// What the injector did.
struct MicrocodeTotals {
  std::vector<std::string> toggled;      ///< the features the updates remove and add back
  std::vector<std::string> groups;       ///< the feature-keyed groups keyed on them
  std::uint64_t updates = 0;             ///< simulated updates loaded
  std::uint64_t reloads = 0;             ///< revision changes the watcher noticed
  std::uint64_t feature_changes = 0;     ///< features added or removed, summed over reloads
  std::uint64_t switches_committed = 0;  ///< switches the watcher made that committed
  std::uint64_t switches_failed = 0;
  std::uint64_t needs_restart = 0;  ///< "needs restart" reports (non-whitelisted changes)
  std::uint64_t errors = 0;         ///< polls or loads that failed
  /// The first reloads as describe(MicrocodeReport) puts them, and the first error.
  std::vector<std::string> lines;
};

inline constexpr std::size_t kKeptMicrocodeLines = 6;

class MicrocodeInjector {
 public:
  /// The whitelisted features this CPU has (CPUID), sorted: what the updates may toggle. Fails
  /// when CPUID cannot be read as a feature set.
  static Result<std::vector<std::string>> toggleable_features();

  /// Creates the simulated CPU and the watcher over `engine`, whose switches go through
  /// `switcher` (both outlive the injector). `period` > 0. Fails as SimulatedCpu::create and
  /// MicrocodeWatcher::create fail.
  static Result<std::unique_ptr<MicrocodeInjector>> create(Engine* engine, Switcher* switcher,
                                                           std::chrono::milliseconds period,
                                                           std::size_t cpus);
  ~MicrocodeInjector();  ///< stops (only when it can: see stop_within)
  MicrocodeInjector(const MicrocodeInjector&) = delete;
  MicrocodeInjector& operator=(const MicrocodeInjector&) = delete;

  /// Starts the injecting thread.
  void start();
  /// Asks the thread to stop after the update in progress and waits up to `timeout` for it; true
  /// when it has stopped (and is joined). False when it is stuck inside a switch: then the object
  /// must never be destroyed (the process ends with std::_Exit).
  bool stop_within(std::chrono::milliseconds timeout);
  /// Updates loaded so far (for progress).
  std::uint64_t updates() const { return updates_.load(std::memory_order_relaxed); }
  /// The totals. Only after stop().
  const MicrocodeTotals& totals() const { return totals_; }

 private:
  MicrocodeInjector(triggers::SimulatedCpu* cpu, std::unique_ptr<triggers::MicrocodeWatcher> w,
                    std::chrono::milliseconds period, MicrocodeTotals totals);
  void run();
  void inject_one();
  triggers::SimulatedCpu* cpu_;  // owned by watcher_
  std::unique_ptr<triggers::MicrocodeWatcher> watcher_;
  std::chrono::milliseconds period_;
  MicrocodeTotals totals_;
  std::atomic<std::uint64_t> updates_{0};
  std::atomic<bool> done_{false};
  std::mutex wake_mutex_;
  std::condition_variable_any wake_;
  std::jthread thread_;
};

}  // namespace repatch::stress

#endif  // REPATCH_STRESS_MICROCODE_INJECTOR_H_
