// W^X: no mapping of this process is ever writable and executable, before, during or after boot.
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <string>

#include "arch/x86/proc_maps.h"
#include "guest/demo_workload.h"
#include "repatch/engine.h"
#include "tests/support/wx_filter.h"

namespace repatch {
namespace {

using testing::g_first_wx_prot;
using testing::g_first_wx_syscall;
using testing::g_wx_attempts;
using testing::refuse_writable_and_executable_requests;

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

// The kernel refuses (and counts) every request for a writable and executable mapping: see
// tests/support/wx_filter.h. The filter cannot be removed and binds every later thread. Under
// ctest each test is a process of its own; when the binary is run whole, an earlier test has
// booted already, so the test skips before installing anything and the tests after it run
// unfiltered.

void boot_with_every_rwx_request_refused(TextWriter writer) {
  if (Engine::get() != nullptr) {
    GTEST_SKIP() << "an earlier test in this process booted already; run this test on its own";
  }
  const std::string failed = refuse_writable_and_executable_requests();
  ASSERT_EQ(failed, "") << "cannot install the seccomp filter";

  // The filter bites: a direct request for each of the three calls is refused and counted...
  const long page = sysconf(_SC_PAGESIZE);
  errno = 0;
  void* rwx =
      mmap(nullptr, page, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  EXPECT_EQ(rwx, MAP_FAILED);
  EXPECT_EQ(errno, EPERM);
  void* rw = mmap(nullptr, page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(rw, MAP_FAILED);
  errno = 0;
  EXPECT_EQ(mprotect(rw, page, PROT_READ | PROT_WRITE | PROT_EXEC), -1);
  EXPECT_EQ(errno, EPERM);
  errno = 0;
  EXPECT_EQ(syscall(SYS_pkey_mprotect, rw, page, PROT_WRITE | PROT_EXEC, -1), -1);
  EXPECT_EQ(errno, EPERM);
  EXPECT_EQ(g_wx_attempts.load(), 3);
  // ...and it refuses nothing else: flipping between W and X stays possible.
  EXPECT_EQ(mprotect(rw, page, PROT_READ | PROT_EXEC), 0) << errno;
  EXPECT_EQ(mprotect(rw, page, PROT_READ | PROT_WRITE), 0) << errno;
  EXPECT_EQ(munmap(rw, page), 0);
  g_wx_attempts.store(0);
  g_first_wx_syscall.store(-1);

  const std::uint64_t pv_acquires = demo_pv_acquire_calls.load();
  Result<Engine*> engine =
      boot({.initial = {{"demo_lock", "pv"}, {"demo_clock", "shared"}}, .writer = writer});
  EXPECT_EQ(g_wx_attempts.load(), 0)
      << "boot asked for a writable and executable mapping: system call "
      << g_first_wx_syscall.load() << ", prot 0x" << std::hex << g_first_wx_prot.load();
  ASSERT_TRUE(engine.ok()) << engine.error().to_string();
  const EngineStatus status = engine.value()->status();
  EXPECT_EQ(status.writer, writer == TextWriter::kMemfdAlias ? "memfd" : "procmem");
  EXPECT_FALSE(status.sites.empty());
  EXPECT_TRUE(engine.value()->verify_sites().ok());

  demo::Lock lock;
  std::uint64_t counter = 0;
  demo::locked_increment(&lock, &counter);
  demo::locked_increment(&lock, &counter);
  EXPECT_EQ(counter, 2u);
  EXPECT_EQ(demo_pv_acquire_calls.load(), pv_acquires + 2) << "the pv lock variant did not run";
  demo_clock_value = 0x5a5a;
  EXPECT_EQ(demo::read_clock(), 0x5a5au);
  EXPECT_EQ(g_wx_attempts.load(), 0);
  EXPECT_TRUE(writable_and_executable("/proc/self/maps").empty());
}

TEST(WriteXorExecute, KernelRefusesAnyRwxRequestDuringBoot_Memfd) {
  boot_with_every_rwx_request_refused(TextWriter::kMemfdAlias);
}

TEST(WriteXorExecute, KernelRefusesAnyRwxRequestDuringBoot_Procmem) {
  boot_with_every_rwx_request_refused(TextWriter::kProcSelfMem);
}

}  // namespace
}  // namespace repatch
