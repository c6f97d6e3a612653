// The trigger-driven decider: the triggers' policy (repatch/triggers.h, Policy) deciding the stress
// run's switches from a hint source, so that every switch it wants goes through the harness's
// switcher (accounted, and checked after each commit).
//
// Once per polling interval next() reads the source and hands the reading to Policy::decide(); a
// kSwitch decision becomes the request that moves every mode group (spinlock, tlb) to the wanted
// mode's variant (native for dedicated, pv for oversubscribed), and the outcome that the switcher
// feeds back goes to Policy::record_outcome(), so that the policy's dwell, rate limit and retries
// see what really happened. Every decision is counted by action; switch decisions are also kept
// as the policy describes them.
#ifndef REPATCH_STRESS_TRIGGER_DECIDER_H_
#define REPATCH_STRESS_TRIGGER_DECIDER_H_

#include <array>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "repatch/triggers.h"
#include "stress/scenario.h"
#include "stress/switch_decider.h"

namespace repatch::stress {

/// What the policy decided during a run.
struct TriggerTotals {
  std::string source;                                                ///< the hint source's name
  std::array<std::uint64_t, triggers::kActionCount> by_action = {};  ///< index: triggers::Action
  std::uint64_t source_ended = 0;  ///< 1 when a replay reached the end of its trace
  /// describe() of each switch decision (with its outcome), oldest first, at most kKeptDecisions.
  std::vector<std::string> switches;
  /// The first source error's message (empty if none).
  std::string first_source_error;
};

inline constexpr std::size_t kKeptDecisions = 200;

/// The policy and polling interval the harness uses for `scenario` (README documents them): for
/// --trigger simulated, steal thresholds set from the steal the scenario's preemptions cause on
/// average (else the policy's defaults); always a short dwell and a rate limit loose enough for
/// several switches in a 20-second run.
struct TriggerSettings {
  triggers::PolicyConfig policy;
  std::chrono::milliseconds interval{250};
};
TriggerSettings trigger_settings(const Scenario& scenario);

class TriggerDecider final : public SwitchDecider {
 public:
  /// `groups` must hold spinlock and tlb (their current variants as booted); `source` not null.
  TriggerDecider(std::vector<SwitchableGroup> groups, std::unique_ptr<triggers::HintSource> source,
                 TriggerSettings settings);
  std::optional<SwitchRequest> next(Clock::time_point now, Clock::time_point* wake) override;
  void observe(const DeciderEvent& event) override;
  const std::vector<SwitchableGroup>& groups() const override { return groups_; }
  /// The decisions so far. Only from the switcher's thread, or after it stopped.
  const TriggerTotals& totals() const { return totals_; }

 private:
  void count(const triggers::Decision& decision);
  std::vector<SwitchableGroup> groups_;
  std::unique_ptr<triggers::HintSource> source_;
  triggers::Policy policy_;
  std::chrono::milliseconds interval_;
  Clock::time_point next_poll_{};
  bool ended_ = false;
  std::optional<triggers::Decision> pending_;  // a kSwitch decision whose switch is being made
  TriggerTotals totals_;
};

}  // namespace repatch::stress

#endif  // REPATCH_STRESS_TRIGGER_DECIDER_H_
