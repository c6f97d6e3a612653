#include "stress/trigger_decider.h"

#include <algorithm>

namespace repatch::stress {
namespace {

// A preemption parks its vCPU for 50 us to 1 ms, uniformly (stress/preemption_injector.cpp).
constexpr double kMeanParkSeconds = 525e-6;

const char* variant_of(triggers::Mode mode) {
  return mode == triggers::Mode::kOversubscribed ? "pv" : "native";
}

}  // namespace

TriggerSettings trigger_settings(const Scenario& scenario) {
  TriggerSettings settings;
  // A real host and a recorded trace are judged by the policy's own steal thresholds (enter at
  // 10%, leave at 3%).
  if (scenario.trigger == Trigger::kSimulated) {
    // The steal share the scenario's preemptions cause on average at their full rate, in percent
    // of the vCPUs' time. Under --trigger simulated the preemptions come in phases (full rate, then
    // a quarter of it; stress/preemption_injector.h), and parks overrun their nominal length a
    // little on a loaded machine: a contended phase reads above this mean and a calm one well below
    // half of it. So the policy enters oversubscribed at the mean and leaves at half of it. Without
    // preemptions the steal stays 0 and nothing switches.
    const double mean_steal =
        scenario.preempt_rate * kMeanParkSeconds / static_cast<double>(scenario.vcpus) * 100.0;
    settings.policy.steal =
        triggers::Thresholds{.enter = std::max(mean_steal, 0.01), .leave = mean_steal / 2.0};
  }
  settings.policy.min_dwell = std::chrono::seconds(1);
  settings.policy.max_switches = 20;
  settings.policy.rate_window = std::chrono::seconds(10);
  settings.policy.retry_backoff = std::chrono::milliseconds(250);
  settings.interval = std::chrono::milliseconds(250);
  return settings;
}

TriggerDecider::TriggerDecider(std::vector<SwitchableGroup> groups,
                               std::unique_ptr<triggers::HintSource> source,
                               TriggerSettings settings)
    : groups_(std::move(groups)),
      source_(std::move(source)),
      policy_(settings.policy),
      interval_(settings.interval) {
  totals_.source = std::string(source_->name());
}

void TriggerDecider::count(const triggers::Decision& decision) {
  ++totals_.by_action[static_cast<std::size_t>(decision.action)];
}

std::optional<SwitchRequest> TriggerDecider::next(Clock::time_point now, Clock::time_point* wake) {
  if (ended_ || now < next_poll_) {
    *wake = ended_ ? now + std::chrono::seconds(1) : next_poll_;
    return std::nullopt;
  }
  next_poll_ = now + interval_;
  *wake = next_poll_;
  Result<std::optional<triggers::HintReading>> reading = source_->read();
  if (!reading.ok()) {
    if (totals_.first_source_error.empty()) {
      totals_.first_source_error = reading.error().to_string();
    }
    count(policy_.source_error(reading.error()));
    return std::nullopt;
  }
  if (!reading.value()) {
    ended_ = true;
    totals_.source_ended = 1;
    return std::nullopt;
  }
  triggers::Decision decision = policy_.decide(*reading.value());
  if (decision.action != triggers::Action::kSwitch) {
    count(decision);
    return std::nullopt;
  }
  SwitchRequest request;
  for (const SwitchableGroup& group : groups_)
    request.choices.push_back({group.name, variant_of(decision.wanted)});
  pending_ = std::move(decision);
  return request;
}

void TriggerDecider::observe(const DeciderEvent& event) {
  if (event.kind != DeciderEvent::Kind::kSwitchDone || !pending_) return;
  const auto switched_at =
      std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch());
  policy_.record_outcome(*pending_, *event.outcome, switched_at);
  count(*pending_);
  if (totals_.switches.size() < kKeptDecisions) {
    totals_.switches.push_back(triggers::describe(*pending_));
  }
  if (event.outcome->committed()) {
    for (const GroupChoice& choice : event.request->choices) {
      for (SwitchableGroup& group : groups_)
        if (group.name == choice.group) group.current = choice.variant;
    }
  }
  pending_.reset();
}

}  // namespace repatch::stress
