// W^X: no mapping of this process is ever writable and executable, before, during or after boot.
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <string>

#include "arch/x86/proc_maps.h"
#include "guest/demo_workload.h"
#include "repatch/engine.h"

namespace repatch {
namespace {

std::vector<std::string> writable_and_executable(const char* maps_path) {
  std::vector<std::string> out;
  Result<std::vector<x86::MapEntry>> maps = x86::read_proc_maps(maps_path);
  if (!maps.ok()) return {"cannot read " + std::string(maps_path) + ": " + maps.error().message()};
  for (const x86::MapEntry& m : maps.value()) {
    if (m.w && m.x) out.push_back(x86::describe_mapping(m));
  }
  return out;
}

TEST(WriteXorExecute, NoMappingIsWritableAndExecutableAfterBoot) {
  Result<Engine*> engine = boot({.initial = {{"demo_lock", "pv"}}});
  ASSERT_TRUE(engine.ok()) << engine.error().to_string();
  EXPECT_TRUE(writable_and_executable("/proc/self/maps").empty());

  // The sites now live in an r-x shared memfd mapping; its writable alias is not executable.
  const EngineStatus status = engine.value()->status();
  Result<std::vector<x86::MapEntry>> maps = x86::read_proc_maps();
  ASSERT_TRUE(maps.ok());
  for (const SiteStatus& site : status.sites) {
    const x86::MapEntry* m = x86::find_mapping(maps.value(), site.address);
    ASSERT_NE(m, nullptr);
    EXPECT_TRUE(m->r && m->x && !m->w && m->shared) << x86::describe_mapping(*m);
    EXPECT_NE(m->path.find("/memfd:repatch-text"), std::string::npos) << m->path;
  }
  demo::Lock lock;
  std::uint64_t counter = 0;
  demo::locked_increment(&lock, &counter);
  EXPECT_EQ(counter, 1u) << "the remapped text must still run";
}

// A child process reads this process's maps in a loop while it boots, so that even a short-lived
// writable+executable mapping during the remap would be seen.
TEST(WriteXorExecute, NoMappingIsWritableAndExecutableWhileBooting) {
  struct Shared {
    std::atomic<int> started{0};
    std::atomic<int> stop{0};
    std::atomic<int> scans{0};
    std::atomic<int> violations{0};
    char first_violation[256];
  };
  void* page =
      mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(page, MAP_FAILED);
  auto* shared = new (page) Shared;
  const std::string maps = "/proc/" + std::to_string(getpid()) + "/maps";
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    shared->started.store(1);
    while (shared->stop.load() == 0) {
      const auto bad = writable_and_executable(maps.c_str());
      if (!bad.empty() && shared->violations.fetch_add(1) == 0) {
        snprintf(shared->first_violation, sizeof shared->first_violation, "%s", bad[0].c_str());
      }
      shared->scans.fetch_add(1);
    }
    _exit(0);
  }
  while (shared->started.load() == 0)
    usleep(100);
  const int scans_before = shared->scans.load();
  Result<Engine*> engine = boot({.initial = {{"demo_lock", "pv"}, {"demo_clock", "shared"}}});
  // Let the child see the final state a few times too.
  const int scans_at_boot = shared->scans.load();
  while (shared->scans.load() < scans_at_boot + 3)
    usleep(100);
  shared->stop.store(1);
  int wstatus = 0;
  waitpid(child, &wstatus, 0);
  ASSERT_TRUE(engine.ok()) << engine.error().to_string();
  EXPECT_GT(shared->scans.load(), scans_before);
  EXPECT_EQ(shared->violations.load(), 0) << shared->first_violation;
  munmap(page, sizeof(Shared));
}

}  // namespace
}  // namespace repatch
