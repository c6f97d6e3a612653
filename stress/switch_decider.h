// What decides the stress run's switches: the seam between "when and to what" and "do it".
//
// The switcher (stress/switcher.h) asks its decider for the next request, makes it, and feeds the
// outcome back as an event. A decider knows the switchable groups and their variants, tracks the
// current variant of each from the outcomes it is fed, and decides the targets; it never calls the
// engine.
//
// Two deciders exist: RateDecider (--trigger=manual, the harness flipping groups at
// --switch-rate), here, and TriggerDecider (stress/trigger_decider.h), which reads a hint source
// itself and turns its readings into requests through the triggers' policy. Microcode updates do
// not go through a decider: their watcher switches through Switcher::make.
#ifndef REPATCH_STRESS_SWITCH_DECIDER_H_
#define REPATCH_STRESS_SWITCH_DECIDER_H_

#include <chrono>
#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "repatch/engine.h"

namespace repatch::stress {

using Clock = std::chrono::steady_clock;

/// A group the decider may switch: its name, its variants and the one it is in.
struct SwitchableGroup {
  std::string name;
  std::vector<std::string> variants;
  std::string current;
};

/// One switch to make: every choice in one Engine::switch_groups call.
struct SwitchRequest {
  std::vector<GroupChoice> choices;
};

/// What the switcher tells its decider.
struct DeciderEvent {
  enum class Kind : std::uint8_t {
    kSwitchDone,  ///< a request was made: `request` and its `outcome`
  };
  Kind kind;
  const SwitchRequest* request = nullptr;
  const SwitchOutcome* outcome = nullptr;
};

class SwitchDecider {
 public:
  virtual ~SwitchDecider() = default;
  /// The request due at `now`, if any. Otherwise nullopt, and `*wake` is set to when to ask
  /// again at the latest.
  virtual std::optional<SwitchRequest> next(Clock::time_point now, Clock::time_point* wake) = 0;
  /// Feeds an event (in the order they happened).
  virtual void observe(const DeciderEvent& event) = 0;
  /// The groups as the decider knows them now.
  virtual const std::vector<SwitchableGroup>& groups() const = 0;
};

/// Requests at a fixed rate: the k-th is due `k / rate` seconds after `start` (when switches take
/// longer than that, requests follow each other without a pause). Each names a random non-empty
/// subset of the groups, drawn from `seed` (so the sequence of subsets is reproducible), and moves
/// each named group to a variant other than its current one (with two variants, the other one):
/// the targets follow the outcomes, since an aborted switch leaves a group where it was.
class RateDecider final : public SwitchDecider {
 public:
  /// `rate` > 0 requests per second; `groups` not empty, each with at least two variants.
  RateDecider(std::vector<SwitchableGroup> groups, double rate, std::uint64_t seed,
              Clock::time_point start);
  std::optional<SwitchRequest> next(Clock::time_point now, Clock::time_point* wake) override;
  void observe(const DeciderEvent& event) override;
  const std::vector<SwitchableGroup>& groups() const override { return groups_; }

 private:
  std::vector<SwitchableGroup> groups_;
  std::chrono::duration<double> period_;
  Clock::time_point start_;
  std::uint64_t issued_ = 0;
  std::mt19937_64 random_;
};

}  // namespace repatch::stress

#endif  // REPATCH_STRESS_SWITCH_DECIDER_H_
