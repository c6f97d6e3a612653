// What the spinlock tests share: booting in a variant, bounded waits, vCPU threads, a holder and
// a waiter.
#ifndef REPATCH_TESTS_GUEST_SPINLOCK_SUPPORT_H_
#define REPATCH_TESTS_GUEST_SPINLOCK_SUPPORT_H_

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "guest/lock_state.h"
#include "guest/spinlock.h"
#include "repatch/engine.h"
#include "sync/vcpu.h"

namespace repatch::guest {

using namespace std::chrono_literals;

// Generous: the machine is shared and may be loaded; a test only waits this long when it fails.
constexpr auto kPatience = 60s;

inline void boot_in(const char* variant) {
  Result<Engine*> engine = boot({.initial = {{"spinlock", variant}}});
  ASSERT_TRUE(engine.ok()) << engine.error().to_string();
  ASSERT_TRUE(adopt_engine_variant().ok());
  ASSERT_EQ(current_encoding(), std::string(variant) == "pv" ? kPvVariant : kNativeVariant);
}

// Waits for `done`, polling; on timeout (after `patience`) the test fails and the process exits at
// once, since threads stuck in a lock could never be joined.
inline void await(const std::function<bool()>& done, const char* what,
                  std::chrono::steady_clock::duration patience = kPatience) {
  const auto deadline = std::chrono::steady_clock::now() + patience;
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) {
      ADD_FAILURE() << "timed out waiting until " << what;
      std::fprintf(stderr, "timed out waiting until %s\n", what);
      std::fflush(nullptr);
      std::_Exit(1);
    }
    std::this_thread::sleep_for(200us);
  }
}

// A thread registered as a vCPU for its whole life.
class VcpuThread {
 public:
  explicit VcpuThread(std::function<void(sync::Vcpu&)> body)
      : thread_([this, body = std::move(body)] {
          std::unique_ptr<sync::Vcpu> self = sync::Vcpu::enter().value();
          id_.store(self->id());
          started_.store(true);
          body(*self);
        }) {
    await([this] { return started_.load(); }, "a vCPU thread started");
  }
  ~VcpuThread() { thread_.join(); }
  sync::VcpuId id() const { return id_.load(); }

 private:
  std::atomic<bool> started_{false};
  std::atomic<sync::VcpuId> id_{0};
  std::thread thread_;
};

inline char thread_state(pid_t tid) {
  std::ifstream stat("/proc/self/task/" + std::to_string(tid) + "/stat");
  std::string line;
  std::getline(stat, line);
  const std::size_t paren = line.rfind(')');
  return paren != std::string::npos && line.size() > paren + 2 ? line[paren + 2] : '?';
}

// Holds `lock` on a vCPU until told to let go.
struct Holder {
  std::atomic<bool> holding{false};
  std::atomic<bool> release{false};
  std::function<void(sync::Vcpu&)> body(SpinLock& lock) {
    return [this, &lock](sync::Vcpu&) {
      spin_lock(&lock);
      holding.store(true);
      while (!release.load())
        std::this_thread::sleep_for(200us);
      spin_unlock(&lock);
    };
  }
};

// A vCPU that takes `lock` once and reports it.
struct Waiter {
  std::atomic<bool> acquired{false};
  std::function<void(sync::Vcpu&)> body(SpinLock& lock) {
    return [this, &lock](sync::Vcpu&) {
      spin_lock(&lock);
      acquired.store(true);
      spin_unlock(&lock);
    };
  }
};

// One increment of `counter` under `lock`, counting the holders in `inside`: `overlap` is set if
// there were ever two, and an update is lost if they both wrote.
inline void guarded_increment(SpinLock& lock, std::uint64_t& counter, std::atomic<int>& inside,
                              std::atomic<bool>& overlap) {
  spin_lock(&lock);
  if (inside.fetch_add(1, std::memory_order_relaxed) != 0) overlap.store(true);
  const std::uint64_t seen = counter;
  counter = seen + 1;
  inside.fetch_sub(1, std::memory_order_relaxed);
  spin_unlock(&lock);
}

// A thread that is no vCPU switching the spinlock group native <-> pv with the stopless writer,
// one switch every 200 us, until destroyed.
class PeriodicSwitcher {
 public:
  PeriodicSwitcher()
      : thread_([this] {
          for (int i = 0; !stop_.load(); ++i) {
            const SwitchOutcome r = Engine::get()->switch_groups(
                {{"spinlock", i % 2 == 0 ? "pv" : "native"}}, {.writer = SwitchWriter::kStopless});
            (r.committed() ? committed_ : failed_).fetch_add(1);
            std::this_thread::sleep_for(200us);
          }
        }) {}
  ~PeriodicSwitcher() { stop(); }
  PeriodicSwitcher(const PeriodicSwitcher&) = delete;
  PeriodicSwitcher& operator=(const PeriodicSwitcher&) = delete;

  void stop() {
    stop_.store(true);
    if (thread_.joinable()) thread_.join();
  }
  int committed() const { return committed_.load(); }
  int failed() const { return failed_.load(); }

 private:
  std::atomic<bool> stop_{false};
  std::atomic<int> committed_{0};
  std::atomic<int> failed_{0};
  std::thread thread_;
};

}  // namespace repatch::guest

#endif  // REPATCH_TESTS_GUEST_SPINLOCK_SUPPORT_H_
