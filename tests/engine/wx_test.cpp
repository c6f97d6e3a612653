// W^X: no mapping of this process is ever writable and executable, before, during or after boot.
#include <gtest/gtest.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <ucontext.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <iterator>
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

// The kernel itself refuses every request for a writable and executable mapping, so boot cannot
// create one even for an instant that a /proc/<pid>/maps reader would miss. A seccomp filter
// traps mmap, mprotect and pkey_mprotect whenever prot has both PROT_WRITE and PROT_EXEC; the
// SIGSYS handler counts the attempt and makes the call fail with EPERM. Counting matters: code
// that tried W+X and quietly fell back to something else would still boot.
//
// The filter cannot be removed and binds every later thread. Under ctest each test is a process
// of its own; when the binary is run whole, an earlier test has booted already, so the test
// skips before installing anything and the tests after it run unfiltered.

std::atomic<int> g_wx_attempts{0};
std::atomic<long> g_first_wx_syscall{-1};
std::atomic<unsigned long> g_first_wx_prot{0};

void count_wx_attempt(int, siginfo_t* info, void* context) {
  auto* uc = static_cast<ucontext_t*>(context);
  if (g_wx_attempts.fetch_add(1) == 0) {
    g_first_wx_syscall.store(info->si_syscall);
    g_first_wx_prot.store(static_cast<unsigned long>(uc->uc_mcontext.gregs[REG_RDX]));
  }
  // The kernel skipped the system call; whatever RAX holds when the handler returns is its result.
  uc->uc_mcontext.gregs[REG_RAX] = -EPERM;
}

// Returns "" or why the filter could not be installed.
std::string refuse_writable_and_executable_requests() {
  struct sigaction sa = {};
  sa.sa_sigaction = count_wx_attempt;
  sa.sa_flags = SA_SIGINFO;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGSYS, &sa, nullptr) != 0) return "sigaction(SIGSYS): " + std::to_string(errno);

  constexpr std::uint32_t kWx = PROT_WRITE | PROT_EXEC;
  // Little-endian: the low 32 bits of args[2] come first, and only they hold prot bits.
  constexpr std::uint32_t kProtLow = offsetof(seccomp_data, args) + 2 * sizeof(std::uint64_t);
  sock_filter program[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, arch)),
      // A 32-bit (int 0x80) mmap has other numbers and argument places: not a way round.
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
      // Nor the x32 numbers, which share the x86-64 audit arch.
      BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, __X32_SYSCALL_BIT, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_mmap, 3, 0),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_mprotect, 2, 0),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_pkey_mprotect, 1, 0),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, kProtLow),
      BPF_STMT(BPF_ALU | BPF_AND | BPF_K, kWx),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, kWx, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_TRAP),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  sock_fprog fprog = {.len = static_cast<unsigned short>(std::size(program)), .filter = program};
  // Lets an unprivileged process install a filter.
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
    return "prctl(PR_SET_NO_NEW_PRIVS): " + std::to_string(errno);
  }
  if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &fprog) != 0) {
    return "seccomp(SECCOMP_SET_MODE_FILTER): " + std::to_string(errno);
  }
  return "";
}

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
