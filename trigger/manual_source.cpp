// The manual source: readings a harness or a test sets.
#include "repatch/triggers.h"

namespace repatch::triggers {

ManualSource::ManualSource(Clock clock) : clock_(std::move(clock)) {}

void ManualSource::set(HintReading reading) {
  std::lock_guard lock(mutex_);
  reading_ = std::move(reading);
}

Result<std::optional<HintReading>> ManualSource::read() {
  std::lock_guard lock(mutex_);
  HintReading r = reading_;
  r.time = clock_();
  return std::optional<HintReading>(std::move(r));
}

}  // namespace repatch::triggers
