// A module with sites of the program's spinlock group, loaded and unloaded 1,000 times while the
// group switches between native and pv under contention: its sites always hold the group's
// variant, so the lock excludes and no update is lost, whichever object's sites take it.
#include <dlfcn.h>
#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "guest/lock_state.h"
#include "guest/spinlock.h"
#include "repatch/engine.h"
#include "sync/vcpu.h"
#include "tests/guest/spinlock_support.h"

namespace repatch::guest {
namespace {

using ModuleSpinAdd = void(SpinLock*, std::uint64_t*, int, std::atomic<int>*, std::atomic<bool>*);

TEST(SpinlockModule, LoadedAndUnloaded1000TimesWhileTheGroupSwitches) {
  boot_in("native");
  Engine* engine = Engine::get();
  SpinLock lock("shared with a module");
  std::uint64_t counter = 0;
  std::atomic<int> inside{0};
  std::atomic<bool> overlap{false};
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> program_adds{0};
  PeriodicSwitcher switcher;
  {
    std::vector<std::unique_ptr<VcpuThread>> workers;
    workers.reserve(3);
    for (int v = 0; v < 3; ++v) {
      workers.push_back(std::make_unique<VcpuThread>([&](sync::Vcpu& self) {
        while (!stop.load()) {
          guarded_increment(lock, counter, inside, overlap);
          program_adds.fetch_add(1, std::memory_order_relaxed);
          self.quiescent_state();
        }
      }));
    }
    // This thread is a vCPU too while it runs the module's sites.
    std::unique_ptr<sync::Vcpu> self = sync::Vcpu::enter().value();
    const std::string path =
        std::string(REPATCH_TEST_MODULE_DIR) + "/librepatch_test_spinlock_module.so";
    std::uint64_t module_adds = 0;
    for (int i = 0; i < 1000 && !HasFatalFailure(); ++i) {
      if (getenv("NOMOD")) {
        for (int k = 0; k < 20; ++k) {
          spin_lock(&lock);
          ++counter;
          spin_unlock(&lock);
        }
        module_adds += 20;
        self->quiescent_state();
        continue;
      }
      Result<void*> handle = engine->load_module(path);
      ASSERT_TRUE(handle.ok()) << handle.error().to_string();
      auto* add = reinterpret_cast<ModuleSpinAdd*>(dlsym(handle.value(), "module_spin_add"));
      ASSERT_NE(add, nullptr);
      add(&lock, &counter, 20, &inside, &overlap);
      module_adds += 20;
      self->quiescent_state();
      ASSERT_EQ(dlclose(handle.value()), 0);
    }
    stop.store(true);
    self.reset();
    workers.clear();
    switcher.stop();
    EXPECT_FALSE(overlap.load()) << "two holders were inside the lock at once";
    EXPECT_EQ(counter, program_adds.load() + module_adds) << "an update was lost";
  }
  std::printf("%d switches committed, %llu adds under the lock\n", switcher.committed(),
              static_cast<unsigned long long>(counter));
  EXPECT_GT(switcher.committed(), 0);
  EXPECT_EQ(switcher.failed(), 0);
  EXPECT_TRUE(engine->verify_group("spinlock").ok());
  EXPECT_EQ(classify(lock.load_word()), LockState::kUnlocked);
}

}  // namespace
}  // namespace repatch::guest
