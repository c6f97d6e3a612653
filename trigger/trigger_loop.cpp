// The trigger loop: poll a hint source, decide, switch, log.
#include <set>

#include "base/return_if_error.h"
#include "repatch/triggers.h"

namespace repatch::triggers {

SwitchFunction engine_switcher(Engine* engine) {
  return [engine](const std::vector<GroupChoice>& choices, const SwitchOptions& options) {
    return engine->switch_groups(choices, options);
  };
}

Status validate(const TriggerConfig& config) {
  REPATCH_RETURN_IF_ERROR(validate(config.policy));
  if (config.interval.count() <= 0) {
    return Error(ErrorCode::kInvalidArgument, "trigger interval must be positive");
  }
  if (!config.clock) return Error(ErrorCode::kInvalidArgument, "trigger clock is empty");
  if (config.dedicated.empty() || config.oversubscribed.empty()) {
    return Error(ErrorCode::kInvalidArgument,
                 "trigger needs the groups' variants for both modes (dedicated, oversubscribed)");
  }
  auto groups = [](const std::vector<GroupChoice>& choices, const char* mode,
                   std::set<std::string>& out) -> Status {
    for (const GroupChoice& c : choices) {
      if (!out.insert(c.group).second) {
        return Error(
            ErrorCode::kInvalidArgument,
            std::string("trigger ") + mode + " choices name group '" + c.group + "' twice");
      }
    }
    return {};
  };
  std::set<std::string> dedicated, oversubscribed;
  REPATCH_RETURN_IF_ERROR(groups(config.dedicated, "dedicated", dedicated));
  REPATCH_RETURN_IF_ERROR(groups(config.oversubscribed, "oversubscribed", oversubscribed));
  if (dedicated != oversubscribed) {
    return Error(ErrorCode::kInvalidArgument,
                 "trigger dedicated and oversubscribed choices must name the same groups");
  }
  return {};
}

Result<std::unique_ptr<TriggerLoop>> TriggerLoop::create(std::unique_ptr<HintSource> source,
                                                         TriggerConfig config,
                                                         SwitchFunction switcher) {
  REPATCH_RETURN_IF_ERROR(validate(config));
  if (source == nullptr) return Error(ErrorCode::kInvalidArgument, "trigger source is null");
  if (!switcher) return Error(ErrorCode::kInvalidArgument, "trigger switch function is empty");
  return std::unique_ptr<TriggerLoop>(
      new TriggerLoop(std::move(source), std::move(config), std::move(switcher)));
}

TriggerLoop::TriggerLoop(std::unique_ptr<HintSource> source, TriggerConfig config,
                         SwitchFunction switcher)
    : source_(std::move(source)),
      config_(std::move(config)),
      switcher_(std::move(switcher)),
      policy_(config_.policy),
      mode_(config_.policy.initial) {}

TriggerLoop::~TriggerLoop() {
  stop();
}

std::optional<Decision> TriggerLoop::step() {
  Result<std::optional<HintReading>> reading = source_->read();
  Decision d;
  if (!reading.ok()) {
    d = policy_.source_error(reading.error());
    d.decided_at = config_.clock();
  } else if (!reading.value()) {
    return std::nullopt;
  } else {
    d = policy_.decide(*reading.value());
    d.decided_at = config_.clock();
    if (d.action == Action::kSwitch) {
      const std::vector<GroupChoice>& choices =
          d.wanted == Mode::kOversubscribed ? config_.oversubscribed : config_.dedicated;
      const SwitchOutcome outcome = switcher_(choices, config_.switch_options);
      policy_.record_outcome(d, outcome, config_.clock());
    }
  }
  // Relaxed: mode() is a report; nothing else is published through it.
  mode_.store(policy_.mode(), std::memory_order_relaxed);
  {
    std::lock_guard lock(mutex_);
    if (log_.size() >= config_.log_capacity && !log_.empty()) log_.erase(log_.begin());
    if (config_.log_capacity > 0) log_.push_back(d);
  }
  if (config_.on_decision) config_.on_decision(d);
  return d;
}

Result<std::optional<Decision>> TriggerLoop::poll_once() {
  if (running_.load(std::memory_order_acquire)) {
    return Error(ErrorCode::kState, "poll_once() while the trigger loop's thread polls");
  }
  return step();
}

Status TriggerLoop::start() {
  if (running_.load(std::memory_order_acquire)) {
    return Error(ErrorCode::kState, "the trigger loop is already running (stop() it first)");
  }
  if (thread_.joinable()) thread_.join();  // a thread whose source ended
  // Set before the thread exists, so that poll_once() refuses from now on (acquire pairs).
  running_.store(true, std::memory_order_release);
  try {
    thread_ = std::jthread([this](const std::stop_token& stop) { run(stop); });
  } catch (const std::system_error& e) {
    running_.store(false, std::memory_order_release);
    return Error(ErrorCode::kSystem, std::string("cannot start the trigger thread: ") + e.what());
  }
  return {};
}

void TriggerLoop::run(const std::stop_token& stop) {
  // Polls on a fixed grid (start + k * interval), so a slow switch does not shift later polls.
  auto next = std::chrono::steady_clock::now();
  while (!stop.stop_requested()) {
    if (!step()) break;  // the source ended
    next += config_.interval;
    const auto now = std::chrono::steady_clock::now();
    if (next < now) next = now;  // fell behind (a long switch): poll at once, then on the grid
    std::unique_lock lock(wake_mutex_);
    wake_.wait_until(lock, stop, next, [] { return false; });
  }
  running_.store(false, std::memory_order_release);
}

void TriggerLoop::stop() {
  if (thread_.joinable()) {
    thread_.request_stop();  // wakes the wait_until above
    thread_.join();
  }
  running_.store(false, std::memory_order_release);
}

bool TriggerLoop::running() const {
  return running_.load(std::memory_order_acquire);
}

std::vector<Decision> TriggerLoop::decisions() const {
  std::lock_guard lock(mutex_);
  return log_;
}

Mode TriggerLoop::mode() const {
  return mode_.load(std::memory_order_relaxed);
}

}  // namespace repatch::triggers
