// The switcher: a thread (not a vCPU) that asks its decider for switches, makes them with
// Engine::switch_groups while the workload runs, accounts every outcome, and runs the
// after-commit checks (stress/invariants.h) right after each commit, before any other switch can
// start. Switches decided elsewhere (a simulated microcode update's) go through make(), so that
// they are accounted and checked the same way and never overlap the thread's own.
#ifndef REPATCH_STRESS_SWITCHER_H_
#define REPATCH_STRESS_SWITCHER_H_

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "base/mutex.h"
#include "base/thread_annotations.h"
#include "repatch/engine.h"
#include "stress/switch_decider.h"

namespace repatch::stress {

/// What the switches made with one writer did. A request is counted under the writer the engine
/// used (SwitchOutcome::writer), or, when it was refused before the engine chose one, under the
/// writer that was asked for.
struct WriterTotals {
  std::uint64_t requested = 0;
  std::uint64_t committed = 0;
  /// Requests that did not commit, by the reason of their last attempt (index: SwitchAbort).
  std::uint64_t failed[kSwitchAbortCount] = {};
  /// Aborted attempts, committed requests' retries included (index: SwitchAbort).
  std::uint64_t aborted_attempts[kSwitchAbortCount] = {};
  /// The blackout of every committed switch, in nanoseconds, in order.
  std::vector<std::uint64_t> blackouts_ns;
};

/// Every switch's outcome, summed.
struct SwitchTotals {
  std::uint64_t requested = 0;  ///< switch_groups calls
  std::uint64_t committed = 0;
  /// Requests that did not commit, by the reason of their last attempt (index: SwitchAbort).
  std::uint64_t failed[kSwitchAbortCount] = {};
  /// Aborted attempts, committed requests' retries included (index: SwitchAbort).
  std::uint64_t aborted_attempts[kSwitchAbortCount] = {};
  std::uint64_t stop_machine = 0;  ///< committed with the stop-machine writer
  std::uint64_t batch = 0;         ///< committed with the batch writer
  std::uint64_t stopless = 0;      ///< committed with the stopless writer
  std::uint64_t int3_completions = 0;
  std::uint64_t nmi_completions = 0;
  std::uint64_t sites = 0;  ///< sites rewritten by committed switches
  /// The blackout of every committed switch, in nanoseconds, in order.
  std::vector<std::uint64_t> blackouts_ns;
  /// The same figures writer by writer (index: SwitchWriter).
  WriterTotals by_writer[kSwitchWriterCount];
  /// The message of the first failed request (empty if none).
  std::string first_failure;
};

class Switcher {
 public:
  /// `after_commit` runs on the switcher's thread after each commit, with the request. The
  /// decider's requests that name a group not in `interchangeable` are made with `writer`; those
  /// of interchangeable groups only with SwitchWriter::kAuto (the batch writer).
  Switcher(Engine* engine, std::unique_ptr<SwitchDecider> decider,
           std::function<void(const SwitchRequest&)> after_commit, SwitchWriter writer,
           std::vector<std::string> interchangeable);
  ~Switcher();
  Switcher(const Switcher&) = delete;
  Switcher& operator=(const Switcher&) = delete;

  void start();
  /// Asks the thread to stop after the switch in progress and waits up to `timeout` for it;
  /// true when it has stopped (and is joined). False when it is stuck inside a switch: then the
  /// object must never be destroyed (the process ends with std::_Exit).
  bool stop_within(std::chrono::milliseconds timeout);

  /// Makes one switch that the decider did not ask for (e.g. a microcode watcher's), from any
  /// thread, with `options` as given (its writer too): waits for a switch in progress, switches,
  /// accounts the outcome and runs the after-commit checks before the next switch can start.
  /// Returns the engine's outcome.
  SwitchOutcome make(const std::vector<GroupChoice>& choices, const SwitchOptions& options);

  std::uint64_t committed() const { return committed_.load(std::memory_order_relaxed); }
  /// Aborted attempts so far.
  std::uint64_t aborted() const { return aborted_.load(std::memory_order_relaxed); }
  /// When the switch in progress began (steady-clock nanoseconds), or 0 when none is. For the
  /// watchdog.
  std::int64_t in_switch_since() const { return in_switch_since_.load(std::memory_order_relaxed); }
  /// The switcher thread's kernel id (0 before it starts).
  pid_t tid() const { return tid_.load(std::memory_order_acquire); }
  /// The kernel id of the thread inside the switch in progress (the switcher's, or make()'s
  /// caller's), or 0 when none is. For the watchdog.
  pid_t in_switch_tid() const { return in_switch_tid_.load(std::memory_order_relaxed); }
  /// The totals. Only after stop().
  const SwitchTotals& totals() const { return totals_; }
  const SwitchDecider& decider() const { return *decider_; }

 private:
  void run();
  // The options of a decided request: writer_ when it names a group that is not interchangeable.
  SwitchOptions options_for(const SwitchRequest& request) const;
  // Switches, accounts and checks.
  SwitchOutcome switch_and_account(const SwitchRequest& request, const SwitchOptions& options)
      REPATCH_REQUIRES(switch_mutex_);
  Engine* engine_;
  base::Mutex switch_mutex_;  // one switch at a time, its after-commit checks included
  // make() callers waiting for switch_mutex_. The mutex is not fair, and a switcher that runs
  // behind its rate takes it again the moment it lets it go, so the thread steps aside while this
  // is nonzero: without that, a microcode update's switch waited for the whole run.
  std::atomic<std::uint32_t> outside_waiters_{0};
  std::unique_ptr<SwitchDecider> decider_;
  std::function<void(const SwitchRequest&)> after_commit_;
  SwitchWriter writer_;
  std::vector<std::string> interchangeable_;
  SwitchTotals totals_;
  std::atomic<std::uint64_t> committed_{0};
  std::atomic<std::uint64_t> aborted_{0};
  std::atomic<std::int64_t> in_switch_since_{0};
  std::atomic<pid_t> tid_{0};
  std::atomic<pid_t> in_switch_tid_{0};
  std::atomic<bool> stop_{false};
  std::atomic<bool> done_{false};
  std::thread thread_;
};

}  // namespace repatch::stress

#endif  // REPATCH_STRESS_SWITCHER_H_
