// The stress harness's NMI injector: its throttle keeps a vCPU whose NMI handlers are slow from
// receiving one NMI after another, and leaves the others alone.
#include "stress/nmi_injector.h"

#include <gtest/gtest.h>
#include <sched.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "sync/vcpu.h"

namespace repatch::stress {
namespace {

using std::chrono::milliseconds;
using std::chrono::nanoseconds;

std::atomic<std::uint64_t> g_runs[sync::kMaxVcpus];

void count_run(sync::VcpuId self, void* /*ucontext*/) {
  g_runs[self].fetch_add(1, std::memory_order_relaxed);
}

// A vCPU thread that stays online until the test ends.
class Spinner {
 public:
  Spinner() {
    thread_ = std::thread([this] {
      auto vcpu = sync::Vcpu::enter();
      if (!vcpu.ok()) {
        id_.store(sync::kMaxVcpus, std::memory_order_release);
        return;
      }
      id_.store(vcpu.value()->id(), std::memory_order_release);
      while (!stop_.load(std::memory_order_acquire)) {
        vcpu.value()->quiescent_state();
        sched_yield();
      }
    });
    while (id_.load(std::memory_order_acquire) == kUnset)
      sched_yield();
  }
  ~Spinner() {
    stop_.store(true, std::memory_order_release);
    thread_.join();
  }
  Spinner(const Spinner&) = delete;
  Spinner& operator=(const Spinner&) = delete;

  sync::VcpuId id() const { return id_.load(std::memory_order_acquire); }

 private:
  static constexpr sync::VcpuId kUnset = sync::kMaxVcpus + 1;
  std::atomic<sync::VcpuId> id_{kUnset};
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

struct Runs {
  std::uint64_t slow = 0;
  std::uint64_t fast = 0;
  std::uint64_t throttled = 0;
  milliseconds elapsed{0};
};

// Injects 20,000 NMIs/s over two vCPUs, of which `slow` reports 10 ms of handler time per NMI it
// ran (to the injector only; its handler is as fast as the other's), for at least 300 ms and until
// the fast vCPU has run 200 NMIs (a loaded machine delivers fewer), or 10 s.
Runs inject(bool throttle) {
  sync::set_nmi_handler(&count_run);
  Spinner slow;
  Spinner fast;
  EXPECT_NE(slow.id(), sync::kMaxVcpus);
  EXPECT_NE(fast.id(), sync::kMaxVcpus);
  const sync::VcpuId slow_id = slow.id();
  const std::uint64_t slow_before = g_runs[slow_id].load();
  const std::uint64_t fast_before = g_runs[fast.id()].load();
  NmiInjector::HandlerTime handler_time;
  if (throttle) {
    handler_time = [slow_id, slow_before](sync::VcpuId id) {
      if (id != slow_id) return nanoseconds{0};
      return nanoseconds{milliseconds{10}} *
             static_cast<std::int64_t>(g_runs[slow_id].load() - slow_before);
    };
  }
  Runs runs;
  {
    const auto start = std::chrono::steady_clock::now();
    NmiInjector injector({slow.id(), fast.id()}, 20000, 7, handler_time);
    std::this_thread::sleep_for(milliseconds{300});
    while (g_runs[fast.id()].load() - fast_before < 200 &&
           std::chrono::steady_clock::now() - start < milliseconds{10000}) {
      std::this_thread::sleep_for(milliseconds{10});
    }
    injector.stop();
    runs.elapsed =
        std::chrono::duration_cast<milliseconds>(std::chrono::steady_clock::now() - start);
    runs.throttled = injector.throttled();
  }
  runs.slow = g_runs[slow_id].load() - slow_before;
  runs.fast = g_runs[fast.id()].load() - fast_before;
  sync::set_nmi_handler(nullptr);
  return runs;
}

TEST(NmiInjector, ThrottlesAVcpuWhoseHandlersAreSlow) {
  const Runs runs = inject(true);
  // 10 ms per handler allows one NMI per 40 ms at most (8 in 300 ms), plus slack.
  EXPECT_LE(runs.slow, static_cast<std::uint64_t>(runs.elapsed / milliseconds{40}) + 12);
  EXPECT_GT(runs.throttled, 100u);
  // The other vCPU is not throttled (its handlers report no time).
  EXPECT_GE(runs.fast, 50u);
}

TEST(NmiInjector, WithoutHandlerTimeNothingIsThrottled) {
  const Runs runs = inject(false);
  EXPECT_EQ(runs.throttled, 0u);
  EXPECT_GE(runs.slow, 50u);
  EXPECT_GE(runs.fast, 50u);
}

}  // namespace
}  // namespace repatch::stress
