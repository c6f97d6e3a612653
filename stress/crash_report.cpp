#include "stress/crash_report.h"

#include <signal.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "base/errno_text.h"
#include "base/fixed_line.h"
#include "sync/vcpu.h"

namespace repatch::stress {
namespace {

constexpr int kFatalSignals[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE};

const char* signal_name(int sig) {
  switch (sig) {
    case SIGSEGV:
      return "SIGSEGV";
    case SIGBUS:
      return "SIGBUS";
    case SIGILL:
      return "SIGILL";
    case SIGFPE:
      return "SIGFPE";
    default:
      return "a fatal signal";
  }
}

// Async-signal-safe: FixedLine and write(2) only.
void on_fatal(int sig, siginfo_t* info, void* context) {
  const auto* uc = static_cast<const ucontext_t*>(context);
  char line[256];
  text::FixedLine out(line, sizeof line);
  out.text("repatch stress: crashed: ")
      .text(signal_name(sig))
      .text(" in thread ")
      .dec(static_cast<std::uint64_t>(syscall(SYS_gettid)));
  if (const sync::Vcpu* vcpu = sync::Vcpu::current()) out.text(" (vCPU ").dec(vcpu->id()).text(")");
  out.text(" at RIP ")
      .hex(static_cast<std::uint64_t>(uc->uc_mcontext.gregs[REG_RIP]))
      .text(", fault address ")
      .hex(reinterpret_cast<std::uintptr_t>(info->si_addr))
      .text("\n");
  const ssize_t ignored = write(STDERR_FILENO, line, std::strlen(line));
  (void)ignored;
  // SA_RESETHAND restored the default action, and the signal is blocked while this handler runs:
  // raised again it is delivered as the handler returns and kills the process, whether it came
  // from a fault or from kill(2).
  raise(sig);
}

}  // namespace

Status install_crash_report() {
  for (const int sig : kFatalSignals) {
    struct sigaction action = {};
    action.sa_sigaction = &on_fatal;
    action.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESETHAND;
    sigemptyset(&action.sa_mask);
    if (sigaction(sig, &action, nullptr) != 0) {
      return Error(ErrorCode::kSystem, std::string("sigaction(") + signal_name(sig) +
                                           ") for the crash report: " + text::errno_text(errno));
    }
  }
  return {};
}

}  // namespace repatch::stress
