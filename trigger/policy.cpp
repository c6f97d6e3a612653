// The oversubscription policy: readings to decisions, with hysteresis, dwell, rate limit and
// retries.
#include <algorithm>
#include <cmath>
#include <cstdio>

#include "base/return_if_error.h"
#include "repatch/triggers.h"

namespace repatch::triggers {

const char* mode_name(Mode mode) {
  return mode == Mode::kDedicated ? "dedicated" : "oversubscribed";
}

const char* action_name(Action action) {
  switch (action) {
    case Action::kStay:
      return "stay";
    case Action::kSwitch:
      return "switch";
    case Action::kWouldSwitch:
      return "would_switch";
    case Action::kHeldByDwell:
      return "held_by_dwell";
    case Action::kHeldByRateLimit:
      return "held_by_rate_limit";
    case Action::kHeldByBackoff:
      return "held_by_backoff";
    case Action::kGaveUp:
      return "gave_up";
    case Action::kSourceError:
      return "source_error";
  }
  return "unknown";
}

namespace {

Status check_thresholds(const char* name, const std::optional<Thresholds>& t) {
  if (!t) return {};
  if (!std::isfinite(t->enter) || !std::isfinite(t->leave) || t->leave < 0 || t->leave > t->enter) {
    return Error(ErrorCode::kInvalidArgument,
                 std::string("policy thresholds '") + name +
                     "' need 0 <= leave <= enter (finite numbers); leave is the lower one");
  }
  return {};
}

std::string number(double v) {
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%.4g", v);
  return buffer;
}

// One signal of a reading against its thresholds.
struct Signal {
  const char* name;
  const char* unit;
  std::optional<double> value;
  const std::optional<Thresholds>& thresholds;
};

}  // namespace

Status validate(const PolicyConfig& config) {
  REPATCH_RETURN_IF_ERROR(check_thresholds("steal", config.steal));
  REPATCH_RETURN_IF_ERROR(check_thresholds("psi", config.psi));
  REPATCH_RETURN_IF_ERROR(check_thresholds("runnable_per_cpu", config.runnable_per_cpu));
  if (config.max_switches == 0) {
    return Error(ErrorCode::kInvalidArgument, "policy max_switches must be at least 1");
  }
  if (config.min_dwell.count() < 0 || config.rate_window.count() < 0 ||
      config.retry_backoff.count() < 0) {
    return Error(ErrorCode::kInvalidArgument,
                 "policy min_dwell, rate_window and retry_backoff must not be negative");
  }
  return {};
}

Policy::Policy(PolicyConfig config) : config_(config), mode_(config.initial) {}

Mode Policy::wanted_mode(const HintReading& r, std::string& reason) const {
  if (r.realtime_hint) {
    reason = "KVM_HINTS_REALTIME: the host promises dedicated CPUs";
    return Mode::kDedicated;
  }
  std::optional<double> per_cpu;
  if (r.runnable && r.allowed_cpus && *r.allowed_cpus > 0) {
    per_cpu = static_cast<double>(*r.runnable) / *r.allowed_cpus;
  }
  const Signal signals[] = {
      {"steal", "%", r.steal_percent, config_.steal},
      {"psi", "%", r.psi_some_avg10, config_.psi},
      {"runnable/cpu", "", per_cpu, config_.runnable_per_cpu},
  };
  std::string above_enter, above_leave, below;
  bool measured = false;
  for (const Signal& s : signals) {
    if (!s.thresholds || !s.value) continue;
    measured = true;
    const std::string v = std::string(s.name) + " " + number(*s.value) + s.unit;
    if (*s.value >= s.thresholds->enter) {
      above_enter += (above_enter.empty() ? "" : ", ") + v + " >= enter " +
                     number(s.thresholds->enter) + s.unit;
    } else if (*s.value > s.thresholds->leave) {
      above_leave += (above_leave.empty() ? "" : ", ") + v + " > leave " +
                     number(s.thresholds->leave) + s.unit;
    } else {
      below +=
          (below.empty() ? "" : ", ") + v + " <= leave " + number(s.thresholds->leave) + s.unit;
    }
  }
  if (!measured) {
    reason = "no configured signal measured: keep the current mode";
    return mode_;
  }
  if (mode_ == Mode::kDedicated) {
    if (!above_enter.empty()) {
      reason = above_enter;
      return Mode::kOversubscribed;
    }
    reason = "below every enter threshold";
    if (!above_leave.empty()) reason += " (" + above_leave + ")";
    return Mode::kDedicated;
  }
  if (above_enter.empty() && above_leave.empty()) {
    reason = below;
    return Mode::kDedicated;
  }
  reason = above_enter.empty() ? above_leave : above_enter;
  if (!above_enter.empty() && !above_leave.empty()) reason += ", " + above_leave;
  return Mode::kOversubscribed;
}

Decision Policy::decide(const HintReading& reading) {
  Decision d;
  d.sequence = next_sequence_++;
  d.reading = reading;
  d.mode = mode_;
  const std::chrono::nanoseconds now = reading.time;
  if (!mode_since_) mode_since_ = now;
  d.wanted = wanted_mode(reading, d.reason);
  if (d.wanted == mode_) {
    failures_ = 0;  // what failed is no longer wanted
    d.action = Action::kStay;
    return d;
  }
  if (failures_ > config_.max_retries) {
    d.action = Action::kGaveUp;
    d.reason += "; gave up after " + std::to_string(failures_) + " failed switches";
    return d;
  }
  if (failures_ > 0 && now < retry_at_) {
    d.action = Action::kHeldByBackoff;
    d.reason += "; retry " + std::to_string(failures_) + " waits for its backoff";
    return d;
  }
  if (now - *mode_since_ < config_.min_dwell) {
    d.action = Action::kHeldByDwell;
    d.reason += "; " + std::string(mode_name(mode_)) + " for less than the minimum dwell";
    return d;
  }
  // Attempts older than the window no longer count.
  std::erase_if(attempt_times_,
                [&](std::chrono::nanoseconds t) { return now - t >= config_.rate_window; });
  if (attempt_times_.size() >= config_.max_switches) {
    d.action = Action::kHeldByRateLimit;
    d.reason += "; " + std::to_string(attempt_times_.size()) + " switches within the rate window";
    return d;
  }
  attempt_times_.push_back(now);
  if (config_.dry_run) {
    // A dry run follows the mode as if the switch had committed, so that its log shows the
    // switches a live run would make, dwell and rate limit included.
    d.action = Action::kWouldSwitch;
    mode_ = d.wanted;
    mode_since_ = now;
    return d;
  }
  d.action = Action::kSwitch;
  d.retry = failures_;
  return d;
}

void Policy::record_outcome(Decision& d, const SwitchOutcome& outcome,
                            std::chrono::nanoseconds switched_at) {
  d.committed = outcome.committed();
  d.abort_reason = outcome.reason;
  d.attempts = outcome.attempts;
  d.blackout = outcome.blackout;
  d.switched_at = switched_at;
  if (d.committed) {
    mode_ = d.wanted;
    mode_since_ = d.reading.time;
    failures_ = 0;
    return;
  }
  d.error = outcome.status.ok() ? "not committed" : outcome.status.error().to_string();
  ++failures_;
  const std::uint32_t doublings = std::min<std::uint32_t>(failures_ - 1, 16);
  retry_at_ = d.reading.time + config_.retry_backoff * (std::int64_t{1} << doublings);
}

Decision Policy::source_error(const Error& error) {
  Decision d;
  d.sequence = next_sequence_++;
  d.mode = mode_;
  d.wanted = mode_;
  d.action = Action::kSourceError;
  d.reason = error.to_string();
  return d;
}

std::string describe(const Decision& d) {
  std::string out =
      "#" + std::to_string(d.sequence) + " " + action_name(d.action) + " " + mode_name(d.mode);
  if (d.wanted != d.mode) out += std::string(" -> ") + mode_name(d.wanted);
  out += ": " + d.reason;
  if (d.action == Action::kSwitch) {
    out += d.committed ? " [committed"
                       : " [failed (" + std::string(switch_abort_name(d.abort_reason)) + ")";
    out += ", " + std::to_string(d.attempts) + " attempt" + (d.attempts == 1 ? "" : "s");
    if (d.retry > 0) out += ", retry " + std::to_string(d.retry);
    if (d.committed) {
      out += ", blackout " + std::to_string(d.blackout.count() / 1000) + "us";
    } else {
      out += ": " + d.error;
    }
    out += "]";
  }
  if (d.action != Action::kSourceError) {
    // The reading's fields, as a trace line without its time (which is on the source's clock).
    const std::string fields = format_trace_line(d.reading, d.reading.time);
    out += " (" + fields.substr(fields.find(' ') + 1) + ")";
  }
  return out;
}

}  // namespace repatch::triggers
