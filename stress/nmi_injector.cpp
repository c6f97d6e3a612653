#include "stress/nmi_injector.h"

#include <algorithm>
#include <random>

namespace repatch::stress {

NmiInjector::NmiInjector(std::vector<sync::VcpuId> vcpus, double rate, std::uint64_t seed,
                         HandlerTime handler_time)
    : vcpus_(std::move(vcpus)), handler_time_(std::move(handler_time)) {
  if (rate > 0 && !vcpus_.empty()) thread_ = std::thread([this, rate, seed] { run(rate, seed); });
}

NmiInjector::~NmiInjector() {
  stop();
}

void NmiInjector::stop() {
  stop_.store(true, std::memory_order_relaxed);
  if (thread_.joinable()) thread_.join();
}

void NmiInjector::run(double rate, std::uint64_t seed) {
  using Clock = std::chrono::steady_clock;
  std::mt19937_64 random(seed ^ 0x4e4d49ull);  // "NMI": a stream of its own
  std::exponential_distribution<double> gap_seconds(rate);
  std::uniform_int_distribution<std::size_t> target(0, vcpus_.size() - 1);
  // Per target: the handler time already accounted for, and when it may receive NMIs again.
  constexpr double kQuietPerHandlerTime = (1 - kMaxHandlerShare) / kMaxHandlerShare;
  std::vector<std::chrono::nanoseconds> accounted(vcpus_.size(), std::chrono::nanoseconds{0});
  std::vector<Clock::time_point> quiet_until(vcpus_.size(), Clock::time_point{});
  Clock::time_point due = Clock::now();
  while (!stop_.load(std::memory_order_relaxed)) {
    due += std::chrono::duration_cast<Clock::duration>(
        std::chrono::duration<double>(gap_seconds(random)));
    // Sleeping has a granularity of tens of microseconds: at high rates, every NMI that has come
    // due is sent in one burst, which keeps the mean rate.
    if (due > Clock::now()) std::this_thread::sleep_until(due);
    const std::size_t index = target(random);
    if (handler_time_) {
      const Clock::time_point now = Clock::now();
      const std::chrono::nanoseconds total = handler_time_(vcpus_[index]);
      const std::chrono::nanoseconds added = total - accounted[index];
      accounted[index] = total;
      if (added.count() > 0) {
        quiet_until[index] =
            std::max(quiet_until[index], now) +
            std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double, std::nano>(
                static_cast<double>(added.count()) * kQuietPerHandlerTime));
      }
      if (now < quiet_until[index]) {
        throttled_.fetch_add(1, std::memory_order_relaxed);
        continue;
      }
    }
    if (sync::send_nmi(vcpus_[index]) == 0) {
      sent_.fetch_add(1, std::memory_order_relaxed);
    } else {
      failed_.fetch_add(1, std::memory_order_relaxed);
    }
  }
}

}  // namespace repatch::stress
