// `repatch stress --modules N`: shared objects with sites of the spinlock group (docs/modules.md)
// loaded and unloaded while the groups switch.
//
// One thread, registered as a vCPU of its own (it takes the workload's spinlocks, which only vCPUs
// may do while a switch can run), goes round N modules: it loads one with Engine::load_module(),
// adds to one of the workload's counters under its lock through the module's own sites
// (Workload::run_module_pass), and unloads it. A module whose sites were left out of a switch, or
// patched to another variant than the group's, breaks the lock's mutual exclusion or loses an
// update, which the workload's checks catch; a refused load is a violation of its own.
#ifndef REPATCH_STRESS_MODULE_LOADER_H_
#define REPATCH_STRESS_MODULE_LOADER_H_

#include <atomic>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include "repatch/engine.h"
#include "stress/violations.h"
#include "stress/workload.h"

namespace repatch::stress {

/// The most modules --modules takes: the shared objects built with the command.
inline constexpr int kMaxModules = 8;

/// The path of module `index` (0 to kMaxModules - 1): next to the running executable, or in
/// ../<libdir>/repatch from it once installed. Fails with kSystem naming both places when it is in
/// neither.
Result<std::string> stress_module_path(int index);

class ModuleLoader {
 public:
  /// `paths`: the modules to go round, each from stress_module_path().
  ModuleLoader(Engine* engine, Workload& workload, ViolationLog& violations,
               std::vector<std::string> paths);
  ~ModuleLoader();
  ModuleLoader(const ModuleLoader&) = delete;
  ModuleLoader& operator=(const ModuleLoader&) = delete;

  void start();
  /// Asks the thread to stop after its current module and joins it.
  void stop();

  std::uint64_t loads() const { return loads_.load(std::memory_order_relaxed); }
  std::uint64_t unloads() const { return unloads_.load(std::memory_order_relaxed); }
  std::uint64_t passes() const { return passes_.load(std::memory_order_relaxed); }

 private:
  void run();

  Engine* engine_;
  Workload& workload_;
  ViolationLog& violations_;
  std::vector<std::string> paths_;
  std::atomic<bool> stop_{false};
  std::atomic<std::uint64_t> loads_{0};
  std::atomic<std::uint64_t> unloads_{0};
  std::atomic<std::uint64_t> passes_{0};
  std::thread thread_;
};

}  // namespace repatch::stress

#endif  // REPATCH_STRESS_MODULE_LOADER_H_
