#include "stress/module_loader.h"

#include <dlfcn.h>
#include <limits.h>
#include <unistd.h>

#include <memory>

#include "sync/vcpu.h"

namespace repatch::stress {
namespace {

// guest/spinlock_module.cpp's entry point.
using ModuleSpinAdd = void(guest::SpinLock*, std::uint64_t*, int, std::atomic<int>*,
                           std::atomic<bool>*);

// Adds per pass: a few lock round trips, enough for the module's sites to meet the vCPUs'.
constexpr int kAddsPerPass = 32;

std::string executable_directory() {
  char path[PATH_MAX];
  const ssize_t n = ::readlink("/proc/self/exe", path, sizeof path - 1);
  if (n <= 0) return ".";
  path[n] = '\0';
  std::string dir(path);
  return dir.substr(0, dir.rfind('/'));
}

}  // namespace

Result<std::string> stress_module_path(int index) {
  const std::string file = "librepatch_stress_module_" + std::to_string(index) + ".so";
  const std::string dir = executable_directory();
  const std::string beside = dir + "/" + file;
  const std::string installed = dir + "/" + REPATCH_STRESS_MODULE_RELDIR + "/" + file;
  for (const std::string& candidate : {beside, installed}) {
    if (::access(candidate.c_str(), R_OK) == 0) return candidate;
  }
  return Error(ErrorCode::kSystem, "--modules: module " + std::to_string(index) +
                                       " is neither at " + beside + " nor at " + installed +
                                       " (it is built with the command and installed with it)");
}

ModuleLoader::ModuleLoader(Engine* engine, Workload& workload, ViolationLog& violations,
                           std::vector<std::string> paths)
    : engine_(engine), workload_(workload), violations_(violations), paths_(std::move(paths)) {}

ModuleLoader::~ModuleLoader() {
  stop();
}

void ModuleLoader::start() {
  thread_ = std::thread([this] { run(); });
}

void ModuleLoader::stop() {
  stop_.store(true, std::memory_order_relaxed);
  if (thread_.joinable()) thread_.join();
}

void ModuleLoader::run() {
  Result<std::unique_ptr<sync::Vcpu>> self = sync::Vcpu::enter();
  if (!self.ok()) {
    const std::string line =
        "--modules: the module loader could not become a vCPU: " + self.error().to_string();
    violations_.record(Violation::kModuleLoad, line.c_str());
    return;
  }
  for (std::size_t round = 0; !stop_.load(std::memory_order_relaxed); ++round) {
    const std::string& path = paths_[round % paths_.size()];
    Result<void*> handle = engine_->load_module(path);
    if (!handle.ok()) {
      violations_.record(Violation::kModuleLoad, handle.error().to_string().c_str());
      break;
    }
    loads_.fetch_add(1, std::memory_order_relaxed);
    auto* add = reinterpret_cast<ModuleSpinAdd*>(::dlsym(handle.value(), "module_spin_add"));
    if (add == nullptr) {
      const std::string line = path + " has no module_spin_add";
      violations_.record(Violation::kModuleLoad, line.c_str());
    } else {
      workload_.run_module_pass(
          [add](guest::SpinLock* lock, std::uint64_t* counter, std::atomic<int>* inside,
                std::atomic<bool>* overlap) { add(lock, counter, kAddsPerPass, inside, overlap); },
          round, kAddsPerPass);
      passes_.fetch_add(1, std::memory_order_relaxed);
    }
    self.value()->quiescent_state();
    if (::dlclose(handle.value()) != 0) {
      const std::string line = path + ": dlclose failed: " + ::dlerror();
      violations_.record(Violation::kModuleLoad, line.c_str());
      break;
    }
    unloads_.fetch_add(1, std::memory_order_relaxed);
  }
}

}  // namespace repatch::stress
