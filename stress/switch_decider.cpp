#include "stress/switch_decider.h"

namespace repatch::stress {

RateDecider::RateDecider(std::vector<SwitchableGroup> groups, double rate, std::uint64_t seed,
                         Clock::time_point start)
    : groups_(std::move(groups)),
      period_(1.0 / rate),
      start_(start),
      random_(seed ^ 0x73776974ull) {}  // "swit": a stream of its own

std::optional<SwitchRequest> RateDecider::next(Clock::time_point now, Clock::time_point* wake) {
  const Clock::time_point due =
      start_ + std::chrono::duration_cast<Clock::duration>(period_ * static_cast<double>(issued_));
  if (now < due) {
    *wake = due;
    return std::nullopt;
  }
  ++issued_;
  // A random non-empty subset: one bit per group, and one group at random when no bit is set.
  SwitchRequest request;
  const std::uint64_t bits = random_();
  const std::uint64_t fallback = random_() % groups_.size();
  for (std::size_t g = 0; g < groups_.size(); ++g) {
    if (((bits >> (g % 64)) & 1) != 0) request.choices.push_back({groups_[g].name, ""});
  }
  if (request.choices.empty()) request.choices.push_back({groups_[fallback].name, ""});
  for (GroupChoice& choice : request.choices) {
    for (const SwitchableGroup& group : groups_) {
      if (group.name != choice.group) continue;
      // Another variant than the current one: an offset of 1 .. n-1 from it, drawn.
      std::size_t current = 0;
      for (std::size_t v = 0; v < group.variants.size(); ++v)
        if (group.variants[v] == group.current) current = v;
      const std::size_t n = group.variants.size();
      const std::size_t offset = 1 + random_() % (n - 1);
      choice.variant = group.variants[(current + offset) % n];
    }
  }
  return request;
}

void RateDecider::observe(const DeciderEvent& event) {
  if (event.kind != DeciderEvent::Kind::kSwitchDone || !event.outcome->committed()) return;
  for (const GroupChoice& choice : event.request->choices) {
    for (SwitchableGroup& group : groups_)
      if (group.name == choice.group) group.current = choice.variant;
  }
}

}  // namespace repatch::stress
