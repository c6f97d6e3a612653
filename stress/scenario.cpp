#include "stress/scenario.h"

#include <string>

namespace repatch::stress {
namespace {

std::string number(double value) {
  std::string s = std::to_string(value);
  while (s.find('.') != std::string::npos && (s.back() == '0' || s.back() == '.')) {
    const bool dot = s.back() == '.';
    s.pop_back();
    if (dot) break;
  }
  return s;
}

Error out_of_range(const char* option, double value, const char* range) {
  return Error(ErrorCode::kInvalidArgument,
               std::string(option) + " " + number(value) + " is out of range: " + range);
}

}  // namespace

const char* trigger_name(Trigger trigger) {
  switch (trigger) {
    case Trigger::kManual:
      return "manual";
    case Trigger::kSimulated:
      return "simulated";
    case Trigger::kReal:
      return "real";
    case Trigger::kReplay:
      return "replay";
  }
  return "?";
}

Status validate(const Scenario& s) {
  if (s.vcpus < 1 || s.vcpus > kMaxVcpus) {
    return out_of_range("--vcpus", s.vcpus, "1 to 64 vCPUs");
  }
  if (s.duration.count() < 100 || s.duration > std::chrono::hours(24 * 7)) {
    return out_of_range("--duration", static_cast<double>(s.duration.count()) / 1000.0,
                        "0.1 s to one week (604800 s)");
  }
  if (!(s.switch_rate >= 0 && s.switch_rate <= kMaxSwitchRate)) {
    return out_of_range("--switch-rate", s.switch_rate, "0 to 10000 switches per second");
  }
  if (!(s.nmi_rate >= 0 && s.nmi_rate <= kMaxNmiRate)) {
    return out_of_range("--nmi-rate", s.nmi_rate, "0 to 100000 NMIs per second");
  }
  if (!(s.preempt_rate >= 0 && s.preempt_rate <= kMaxPreemptRate)) {
    return out_of_range("--preempt-rate", s.preempt_rate,
                        "0 to 1000 preemptions per second (one is played at a time, parked 50 us "
                        "to 1 ms)");
  }
  if (s.modules < 0 || s.modules > 8) {
    return out_of_range("--modules", s.modules, "0 to 8 modules");
  }
  if (s.locks < 1 || s.locks > kMaxLocks) {
    return out_of_range("--locks", s.locks, "1 to 100000 locks");
  }
  if (s.watchdog < std::chrono::seconds(1)) {
    return out_of_range("--watchdog", static_cast<double>(s.watchdog.count()) / 1000.0,
                        "at least 1 s");
  }
  if (s.microcode_every_s != 0 &&
      !(s.microcode_every_s >= kMinMicrocodeEvery && s.microcode_every_s <= kMaxMicrocodeEvery)) {
    return out_of_range("--microcode-every", s.microcode_every_s, "0 (off) or 0.1 to 3600 seconds");
  }
  if (s.trigger != Trigger::kManual && !s.groups.empty()) {
    return Error(ErrorCode::kInvalidArgument,
                 std::string("--groups applies to --trigger manual only; --trigger ") +
                     trigger_name(s.trigger) + " switches spinlock and tlb");
  }
  if (s.writer != SwitchWriter::kAuto && s.writer != SwitchWriter::kStopMachine &&
      s.writer != SwitchWriter::kStopless) {
    return Error(ErrorCode::kInvalidArgument,
                 std::string("--writer ") + switch_writer_name(s.writer) +
                     " is not one of auto, stop, stopless (the batch writer cannot switch groups "
                     "that are not interchangeable)");
  }
  if (s.trigger == Trigger::kReplay && s.replay_file.empty()) {
    return Error(ErrorCode::kInvalidArgument, "--trigger replay needs a file: replay:FILE");
  }
  for (std::size_t i = 0; i < s.groups.size(); ++i) {
    for (std::size_t j = 0; j < i; ++j) {
      if (s.groups[i] == s.groups[j]) {
        return Error(ErrorCode::kInvalidArgument,
                     "--groups names group '" + s.groups[i] + "' twice");
      }
    }
  }
  return {};
}

}  // namespace repatch::stress
