// /proc/pressure/cpu: pressure stall information (PSI) for the CPU.
#ifndef REPATCH_TRIGGER_PRESSURE_H_
#define REPATCH_TRIGGER_PRESSURE_H_

#include <cstdint>
#include <optional>
#include <string_view>

#include "repatch/error.h"

namespace repatch::triggers {

/// One line: shares of time (percent) over 10, 60 and 300 s, and the total stall in µs.
struct PressureLine {
  double avg10 = 0, avg60 = 0, avg300 = 0;
  std::uint64_t total_us = 0;
};

struct CpuPressure {
  PressureLine some;
  std::optional<PressureLine> full;  ///< since Linux 5.13; all zero for the CPU at system level
};

/// Parses the contents of /proc/pressure/cpu ("some avg10=0.12 avg60=... avg300=... total=N",
/// optionally a "full" line). Fails with kInvalidArgument, naming the line, when the "some" line
/// is missing, a line is not "some" or "full", a field is missing, repeated, unknown or not a
/// number, or a share is outside 0-100.
Result<CpuPressure> parse_cpu_pressure(std::string_view text);

}  // namespace repatch::triggers

#endif  // REPATCH_TRIGGER_PRESSURE_H_
