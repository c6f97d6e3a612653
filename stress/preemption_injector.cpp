#include "stress/preemption_injector.h"

#include <algorithm>

namespace repatch::stress {
namespace {

using std::chrono::microseconds;

constexpr microseconds kMinPark{50};
constexpr microseconds kMaxPark{1000};

}  // namespace

PreemptionInjector::PreemptionInjector(const std::vector<sync::VcpuId>& vcpus, double rate,
                                       std::chrono::milliseconds duration, std::uint64_t seed,
                                       bool phases) {
  if (rate <= 0 || vcpus.empty()) return;
  // One preemption cycle is a gap then a park: a mean cycle of 1/rate, less the mean park, is the
  // mean gap, drawn uniformly from half to one and a half of it.
  const double cycle_us = 1e6 / rate;
  const double park_us = static_cast<double>((kMinPark + kMaxPark).count()) / 2.0;
  const double gap_us = std::max(10.0, cycle_us - park_us);
  hypervisor::ScheduleOptions options{
      .min_gap = microseconds(static_cast<std::int64_t>(gap_us / 2)),
      .max_gap = microseconds(static_cast<std::int64_t>(gap_us * 3 / 2)),
      .min_duration = kMinPark,
      .max_duration = kMaxPark,
  };
  // Enough for the run at the nominal rate, with a margin for a faster pace.
  const double count = rate * static_cast<double>(duration.count()) / 1000.0 * 1.5 + 16;
  std::vector<hypervisor::Preemption> plan = hypervisor::schedule(
      seed ^ 0x70726565ull, vcpus, static_cast<std::size_t>(count), options);  // "pree"
  if (phases) {
    // Odd phases are calm: their gaps stretch fourfold. The phase is that of the plan's nominal
    // time (gaps and parks as scheduled), which the played time follows closely.
    std::chrono::nanoseconds at{0};
    for (hypervisor::Preemption& p : plan) {
      if ((at / kPhaseLength) % 2 == 1) p.gap *= 4;
      at += p.gap + p.duration;
    }
  }
  preemptor_ = std::make_unique<hypervisor::Preemptor>(std::move(plan));
}

PreemptionInjector::~PreemptionInjector() {
  stop();
}

void PreemptionInjector::stop() {
  if (preemptor_ != nullptr) preemptor_->stop();
}

std::uint64_t PreemptionInjector::played() const {
  return preemptor_ == nullptr ? 0 : preemptor_->played();
}

}  // namespace repatch::stress
