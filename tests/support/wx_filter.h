// A seccomp filter that makes the kernel refuse, and count, every request for a writable and
// executable mapping, so that code under test cannot create one even for an instant that a
// /proc/<pid>/maps reader would miss. It traps mmap, mprotect and pkey_mprotect whenever prot has
// both PROT_WRITE and PROT_EXEC; the SIGSYS handler counts the attempt and makes the call fail
// with EPERM. Counting matters: code that tried W+X and quietly fell back to something else would
// still work. The filter cannot be removed and binds every later thread of the process.
#ifndef REPATCH_TESTS_SUPPORT_WX_FILTER_H_
#define REPATCH_TESTS_SUPPORT_WX_FILTER_H_

#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <string>

#include "base/errno_text.h"

namespace repatch::testing {

/// Requests refused since the filter was installed, and the first one's system call and prot.
inline std::atomic<int> g_wx_attempts{0};
inline std::atomic<long> g_first_wx_syscall{-1};
inline std::atomic<unsigned long> g_first_wx_prot{0};

inline void count_wx_attempt(int, siginfo_t* info, void* context) {
  auto* uc = static_cast<ucontext_t*>(context);
  if (g_wx_attempts.fetch_add(1) == 0) {
    g_first_wx_syscall.store(info->si_syscall);
    g_first_wx_prot.store(static_cast<unsigned long>(uc->uc_mcontext.gregs[REG_RDX]));
  }
  // The kernel skipped the system call; whatever RAX holds when the handler returns is its result.
  uc->uc_mcontext.gregs[REG_RAX] = -EPERM;
}

/// Installs the filter for the whole process. Returns "" or why it could not be installed.
inline std::string refuse_writable_and_executable_requests() {
  struct sigaction sa = {};
  sa.sa_sigaction = count_wx_attempt;
  sa.sa_flags = SA_SIGINFO;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGSYS, &sa, nullptr) != 0)
    return "sigaction(SIGSYS): " + repatch::text::errno_text(errno);

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
    return "prctl(PR_SET_NO_NEW_PRIVS): " + repatch::text::errno_text(errno);
  }
  if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &fprog) != 0) {
    return "seccomp(SECCOMP_SET_MODE_FILTER): " + repatch::text::errno_text(errno);
  }
  return "";
}

}  // namespace repatch::testing

#endif  // REPATCH_TESTS_SUPPORT_WX_FILTER_H_
