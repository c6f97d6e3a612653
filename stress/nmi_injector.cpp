#include "stress/nmi_injector.h"

#include <chrono>
#include <random>

namespace repatch::stress {

NmiInjector::NmiInjector(std::vector<sync::VcpuId> vcpus, double rate, std::uint64_t seed)
    : vcpus_(std::move(vcpus)) {
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
  Clock::time_point due = Clock::now();
  while (!stop_.load(std::memory_order_relaxed)) {
    due += std::chrono::duration_cast<Clock::duration>(
        std::chrono::duration<double>(gap_seconds(random)));
    // Sleeping has a granularity of tens of microseconds: at high rates, every NMI that has come
    // due is sent in one burst, which keeps the mean rate.
    if (due > Clock::now()) std::this_thread::sleep_until(due);
    if (sync::send_nmi(vcpus_[target(random)]) == 0) {
      sent_.fetch_add(1, std::memory_order_relaxed);
    } else {
      failed_.fetch_add(1, std::memory_order_relaxed);
    }
  }
}

}  // namespace repatch::stress
