#include "stress/switcher.h"

#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>

namespace repatch::stress {
namespace {

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
      .count();
}

}  // namespace

Switcher::Switcher(Engine* engine, std::unique_ptr<SwitchDecider> decider,
                   std::function<void(const SwitchRequest&)> after_commit, SwitchWriter writer,
                   std::vector<std::string> interchangeable)
    : engine_(engine),
      decider_(std::move(decider)),
      after_commit_(std::move(after_commit)),
      writer_(writer),
      interchangeable_(std::move(interchangeable)) {}

Switcher::~Switcher() {
  stop_.store(true, std::memory_order_relaxed);
  if (thread_.joinable()) thread_.join();
}

void Switcher::start() {
  thread_ = std::thread([this] { run(); });
}

bool Switcher::stop_within(std::chrono::milliseconds timeout) {
  stop_.store(true, std::memory_order_relaxed);
  if (!thread_.joinable()) return true;
  const Clock::time_point deadline = Clock::now() + timeout;
  while (!done_.load(std::memory_order_acquire)) {
    if (Clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  thread_.join();
  return true;
}

SwitchOutcome Switcher::make(const std::vector<GroupChoice>& choices,
                             const SwitchOptions& options) {
  // Relaxed: a hint for the switcher's thread; the mutex orders the switches themselves.
  outside_waiters_.fetch_add(1, std::memory_order_relaxed);
  const base::MutexLock hold(switch_mutex_);
  outside_waiters_.fetch_sub(1, std::memory_order_relaxed);
  return switch_and_account(SwitchRequest{choices}, options);
}

SwitchOptions Switcher::options_for(const SwitchRequest& request) const {
  const bool only_interchangeable =
      std::all_of(request.choices.begin(), request.choices.end(), [this](const GroupChoice& c) {
        return std::find(interchangeable_.begin(), interchangeable_.end(), c.group) !=
               interchangeable_.end();
      });
  return {.writer = only_interchangeable ? SwitchWriter::kAuto : writer_};
}

SwitchOutcome Switcher::switch_and_account(const SwitchRequest& request,
                                           const SwitchOptions& options) {
  // Relaxed: the watchdog reads these as hints for its report, nothing else depends on them.
  in_switch_tid_.store(static_cast<pid_t>(syscall(SYS_gettid)), std::memory_order_relaxed);
  in_switch_since_.store(now_ns(), std::memory_order_relaxed);
  SwitchOutcome outcome = engine_->switch_groups(request.choices, options);
  in_switch_since_.store(0, std::memory_order_relaxed);
  in_switch_tid_.store(0, std::memory_order_relaxed);
  ++totals_.requested;
  // A request refused before the engine chose a writer still says kAuto.
  const SwitchWriter used = outcome.writer != SwitchWriter::kAuto ? outcome.writer : options.writer;
  WriterTotals& by_writer =
      totals_
          .by_writer[std::min<std::size_t>(static_cast<std::size_t>(used), kSwitchWriterCount - 1)];
  ++by_writer.requested;
  std::uint64_t aborts = 0;
  for (std::size_t r = 0; r < kSwitchAbortCount; ++r) {
    totals_.aborted_attempts[r] += outcome.aborts[r];
    by_writer.aborted_attempts[r] += outcome.aborts[r];
    aborts += outcome.aborts[r];
  }
  aborted_.fetch_add(aborts, std::memory_order_relaxed);
  totals_.int3_completions += outcome.int3_completions;
  totals_.nmi_completions += outcome.nmi_completions;
  if (outcome.committed()) {
    ++totals_.committed;
    committed_.fetch_add(1, std::memory_order_relaxed);
    totals_.sites += outcome.sites;
    const auto blackout_ns = static_cast<std::uint64_t>(outcome.blackout.count());
    totals_.blackouts_ns.push_back(blackout_ns);
    ++by_writer.committed;
    by_writer.blackouts_ns.push_back(blackout_ns);
    switch (outcome.writer) {
      case SwitchWriter::kBatch:
        ++totals_.batch;
        break;
      case SwitchWriter::kStopless:
        ++totals_.stopless;
        break;
      case SwitchWriter::kAuto:  // never after a commit: the engine names the writer it used
      case SwitchWriter::kStopMachine:
        ++totals_.stop_machine;
        break;
    }
  } else {
    ++totals_.failed[static_cast<std::size_t>(outcome.reason)];
    ++by_writer.failed[static_cast<std::size_t>(outcome.reason)];
    if (totals_.first_failure.empty()) {
      totals_.first_failure = outcome.status.error().to_string();
    }
  }
  if (outcome.committed()) after_commit_(request);
  return outcome;
}

void Switcher::run() {
  // Release pairs with tid()'s acquire.
  tid_.store(static_cast<pid_t>(syscall(SYS_gettid)), std::memory_order_release);
  while (!stop_.load(std::memory_order_relaxed)) {
    const Clock::time_point now = Clock::now();
    Clock::time_point wake = now + std::chrono::milliseconds(10);
    std::optional<SwitchRequest> request = decider_->next(now, &wake);
    if (!request) {
      std::this_thread::sleep_until(std::min(wake, now + std::chrono::milliseconds(10)));
      continue;
    }
    while (outside_waiters_.load(std::memory_order_relaxed) != 0 &&
           !stop_.load(std::memory_order_relaxed)) {
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
    const base::MutexLock hold(switch_mutex_);
    const SwitchOutcome outcome = switch_and_account(*request, options_for(*request));
    decider_->observe({DeciderEvent::Kind::kSwitchDone, &*request, &outcome});
  }
  // Release pairs with stop_within's acquire: the totals are complete.
  done_.store(true, std::memory_order_release);
}

}  // namespace repatch::stress
