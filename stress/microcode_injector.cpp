#include "stress/microcode_injector.h"

#include <algorithm>
#include <condition_variable>
#include <cstdio>

namespace repatch::stress {

Result<std::vector<std::string>> MicrocodeInjector::toggleable_features() {
  Result<triggers::FeatureSet> real = triggers::make_real_cpu_source()->features();
  if (!real.ok()) return real.error();
  std::vector<std::string> out;
  for (const std::string& f : triggers::default_microcode_whitelist()) {
    if (std::binary_search(real.value().begin(), real.value().end(), f)) out.push_back(f);
  }
  std::sort(out.begin(), out.end());
  return out;
}

Result<std::unique_ptr<MicrocodeInjector>> MicrocodeInjector::create(
    Engine* engine, Switcher* switcher, std::chrono::milliseconds period, std::size_t cpus) {
  Result<triggers::FeatureSet> real = triggers::make_real_cpu_source()->features();
  if (!real.ok()) return real.error();
  Result<std::vector<std::string>> toggled = toggleable_features();
  if (!toggled.ok()) return toggled.error();
  Result<std::unique_ptr<triggers::SimulatedCpu>> cpu =
      triggers::SimulatedCpu::create(real.value(), "0x1", std::max<std::size_t>(cpus, 1));
  if (!cpu.ok()) return cpu.error();
  triggers::SimulatedCpu* cpu_view = cpu.value().get();
  MicrocodeTotals totals;
  totals.toggled = toggled.value();
  for (const GroupStatus& g : engine->status().groups) {
    if (std::find(totals.toggled.begin(), totals.toggled.end(), g.feature) != totals.toggled.end())
      totals.groups.push_back(g.name);
  }
  Result<std::unique_ptr<triggers::MicrocodeWatcher>> watcher = triggers::MicrocodeWatcher::create(
      std::move(cpu.value()), engine, {},
      [switcher](const std::vector<GroupChoice>& choices, const SwitchOptions& options) {
        return switcher->make(choices, options);
      });
  if (!watcher.ok()) return watcher.error();
  return std::unique_ptr<MicrocodeInjector>(
      new MicrocodeInjector(cpu_view, std::move(watcher.value()), period, std::move(totals)));
}

MicrocodeInjector::MicrocodeInjector(triggers::SimulatedCpu* cpu,
                                     std::unique_ptr<triggers::MicrocodeWatcher> w,
                                     std::chrono::milliseconds period, MicrocodeTotals totals)
    : cpu_(cpu), watcher_(std::move(w)), period_(period), totals_(std::move(totals)) {}

MicrocodeInjector::~MicrocodeInjector() {
  if (thread_.joinable()) {
    thread_.request_stop();
    thread_.join();
  }
}

void MicrocodeInjector::start() {
  thread_ = std::jthread([this](const std::stop_token& stop) {
    while (true) {
      std::unique_lock<std::mutex> lock(wake_mutex_);
      if (wake_.wait_for(lock, stop, period_, [&] { return stop.stop_requested(); })) break;
      lock.unlock();
      inject_one();
    }
    // Release pairs with stop_within's acquire: the totals are complete.
    done_.store(true, std::memory_order_release);
  });
}

bool MicrocodeInjector::stop_within(std::chrono::milliseconds timeout) {
  if (!thread_.joinable()) return true;
  thread_.request_stop();
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!done_.load(std::memory_order_acquire)) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  thread_.join();
  return true;
}

void MicrocodeInjector::inject_one() {
  const std::uint64_t n = totals_.updates + 1;
  char revision[32];
  std::snprintf(revision, sizeof revision, "0x%llx", static_cast<unsigned long long>(n) + 1);
  // Odd updates remove the toggled features, even ones add them back: the CPU never gains a
  // feature it did not have at the start.
  const bool remove = n % 2 == 1;
  const std::vector<std::string> none;
  const Status loaded =
      cpu_->load_update(revision, remove ? none : totals_.toggled, remove ? totals_.toggled : none);
  ++totals_.updates;
  updates_.fetch_add(1, std::memory_order_relaxed);
  auto note_error = [&](const std::string& what) {
    ++totals_.errors;
    if (totals_.lines.size() < kKeptMicrocodeLines) totals_.lines.push_back("error: " + what);
  };
  if (!loaded.ok()) {
    note_error(loaded.error().to_string());
    return;
  }
  Result<std::optional<triggers::MicrocodeReport>> polled = watcher_->poll();
  if (!polled.ok()) {
    note_error(polled.error().to_string());
    return;
  }
  if (!polled.value()) return;
  const triggers::MicrocodeReport& report = *polled.value();
  ++totals_.reloads;
  totals_.feature_changes += report.changes.size();
  totals_.needs_restart += report.needs_restart.size();
  for (const triggers::MicrocodeSwitch& s : report.switches)
    ++(s.committed ? totals_.switches_committed : totals_.switches_failed);
  if (totals_.lines.size() < kKeptMicrocodeLines) {
    std::string text = triggers::describe(report);
    while (!text.empty() && text.back() == '\n')
      text.pop_back();
    totals_.lines.push_back(std::move(text));
  }
}

}  // namespace repatch::stress
