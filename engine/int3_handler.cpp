#include "engine/int3_handler.h"

#include <signal.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <mutex>
#include <string>

#include "arch/x86/instruction.h"
#include "base/context.h"
#include "base/errno_text.h"
#include "base/return_if_error.h"
#include "base/signal_name.h"
#include "base/test_hooks.h"
#include "engine/object_list.h"
#include "engine/switch_protocol.h"
#include "engine/transaction.h"
#include "sync/realtime.h"
#include "sync/vcpu.h"

namespace repatch::engine {
namespace {

// Written once in normal context before the handler is installed; the handler only reads it.
struct sigaction g_previous {};

// What to do with a trap at the start of a site of the table.
enum class Verdict { kResumeAtSite, kRetrap, kNotOurs };

// A thread that hit the fence runs the attempt itself (H5), inside an NMI handler too (H4). It may
// have interrupted any other executor, the primary included, so it never waits for one; under the
// stopless writer it waits only for threads inside an op of the groups to leave it, and only when
// it is neither inside one itself nor in an NMI handler (the op it would wait for may be the one
// its own vCPU was running when the NMI came). A trap that needs nothing of the attempt but to get
// past the site gives way to a primary at work instead (handle_site_trap).
class TrapExecutor final : public Executor {
 public:
  TrapExecutor(bool in_nmi, bool self_in_op) : in_nmi_(in_nmi), self_in_op_(self_in_op) {}

  bool quiescent(Transaction& attempt) noexcept override {
    switch (attempt.writer()) {
      case SwitchWriter::kBatch:
        return true;
      case SwitchWriter::kStopless:
        if (!in_nmi_ && !self_in_op_) return attempt.wait_until_no_thread_in_op();
        break;
      case SwitchWriter::kAuto:
      case SwitchWriter::kStopMachine:
        break;
    }
    return attempt.thread_in_op() == kNoOpThread;
  }

 private:
  bool in_nmi_;
  bool self_in_op_;
};

Verdict handle_site_trap(std::uintptr_t site) noexcept {
  return with_published([site](Transaction* transaction) noexcept {
    const SitePlan* plan = transaction != nullptr ? transaction->site_at(site) : nullptr;
    const auto* first = reinterpret_cast<const volatile std::uint8_t*>(site);  // NOLINT
    if (plan == nullptr) {
      // Not being switched by the attempt we hold. Ours if the int3 we hit is gone already (the
      // attempt that fenced it finished between our trap and this load), or if a newer attempt
      // has been published since we loaded ours: this thread may have been descheduled here for
      // long enough that a later switch fenced the site, and publishing waits only for writers,
      // not for threads that merely hold an attempt. Run the site again; its trap finds the newer
      // one. The order makes the second look enough: an attempt is published (seq_cst) before
      // its fence is written, and x86 makes stores visible in order, so an int3 seen here that
      // came from a newer attempt implies that attempt's pointer is seen by the load after it.
      if (*first != x86::kInt3) return Verdict::kResumeAtSite;
      return still_published(transaction) ? Verdict::kNotOurs : Verdict::kResumeAtSite;
    }
    const sync::Vcpu* self = sync::Vcpu::current();
    const bool in_nmi =
        self != nullptr && sync::slot(self->id()).in_nmi.load(std::memory_order_relaxed);
    const bool self_in_op = transaction->this_thread_in_op();
    if (in_nmi ? test::disabled(test::Handler::kNmiCompletion)
               : test::disabled(test::Handler::kInt3Completion)) {
      // With completion off, an NMI can only wait for someone else to finish (it re-traps until
      // then: a livelock when the NMI sits on the primary); anything else is not handled at all.
      return in_nmi ? Verdict::kRetrap : Verdict::kNotOurs;
    }
    // Outside an op and an NMI handler, nothing waits for this thread: while the primary is at
    // work, run the site again (it traps until the site is written) rather than write beside it.
    // An executor descheduled inside this handler would hold up the next attempt's drain; one that
    // only looked holds up nothing.
    if (!in_nmi && !self_in_op && transaction->primary_at_work()) {
      sync::relax();
      return Verdict::kResumeAtSite;
    }
    // The attempt has ended and nobody is writing it any more: a newer one may have the sites.
    if (!transaction->enter_writing()) return Verdict::kResumeAtSite;
    TrapExecutor executor(in_nmi, self_in_op);
    run_switch_protocol(*transaction, executor);
    transaction->count_completion(in_nmi);
    transaction->leave_writing();
    return Verdict::kResumeAtSite;
  });
}

// The default action of SIGTRAP (a core dump), taken now: restore SIG_DFL and re-send. SIGTRAP is
// not blocked in this handler (SA_NODEFER), so the signal is delivered at once.
void die_of_sigtrap() noexcept {
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  sigaction(SIGTRAP, &dfl, nullptr);
  syscall(SYS_tgkill, getpid(), static_cast<pid_t>(syscall(SYS_gettid)), SIGTRAP);
}

void pass_on(int sig, siginfo_t* info, void* ucontext) noexcept {
  if ((g_previous.sa_flags & SA_SIGINFO) != 0 && g_previous.sa_sigaction != nullptr) {
    g_previous.sa_sigaction(sig, info, ucontext);
  } else if (g_previous.sa_handler == SIG_IGN) {
    return;
  } else if (g_previous.sa_handler == SIG_DFL) {
    die_of_sigtrap();
  } else {
    g_previous.sa_handler(sig);
  }
}

void on_sigtrap(int sig, siginfo_t* info, void* ucontext) {
  const base::SignalHandlerScope in_handler;
  const int saved_errno = errno;
  auto* context = static_cast<ucontext_t*>(ucontext);
  // An int3 reports SI_KERNEL with RIP just past the int3 byte; raise() and debuggers' single
  // steps report other codes.
  if (info != nullptr && info->si_code == SI_KERNEL) {
    const auto site = static_cast<std::uintptr_t>(context->uc_mcontext.gregs[REG_RIP]) - 1;
    if (is_site_start(site)) {
      const Verdict verdict = handle_site_trap(site);
      if (verdict != Verdict::kNotOurs) {
        // Back to the first byte: the whole instruction there runs, never its tail alone (H2).
        if (!test::disabled(test::Handler::kInt3Rewind) || verdict == Verdict::kRetrap) {
          context->uc_mcontext.gregs[REG_RIP] = static_cast<greg_t>(site);
        }
        errno = saved_errno;
        return;
      }
    }
  }
  errno = saved_errno;
  pass_on(sig, info, ucontext);
}

}  // namespace

Status install_int3_handler() {
  base::assert_normal_context();
  static std::mutex once;
  std::lock_guard<std::mutex> lock(once);
  static bool installed = false;
  if (installed) {
    // Whoever replaced the handler since gets the fences' traps, which it cannot finish: a thread
    // that meets a fence would die or spin. Nothing chains back to a handler that was replaced.
    struct sigaction current {};
    if (sigaction(SIGTRAP, nullptr, &current) == 0 && (current.sa_flags & SA_SIGINFO) != 0 &&
        current.sa_sigaction == &on_sigtrap) {
      return {};
    }
    return Error(ErrorCode::kState,
                 text::signal_name(SIGTRAP) +
                     " no longer runs the engine's #BP handler: something in the process "
                     "installed its own (or reset it) after boot, and a thread that met a switch's "
                     "INT3 fence would reach it instead. Install SIGTRAP handlers before boot: the "
                     "engine keeps the one it finds and passes it every trap that is not at a "
                     "repatch site");
  }
  // The IPI is blocked while the handler runs, so a vCPU never parks while it writes an attempt
  // (the end of an attempt waits for its writers). Its number must be known now.
  REPATCH_RETURN_IF_ERROR(sync::choose_interrupt_signals());
  struct sigaction action {};
  action.sa_sigaction = &on_sigtrap;
  // SA_NODEFER: SIGTRAP stays deliverable inside the handler (an int3 with SIGTRAP blocked kills
  // the process). SA_ONSTACK: on a vCPU, nested on top of its IPI and NMI frames.
  action.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART | SA_NODEFER;
  sigemptyset(&action.sa_mask);
  sigaddset(&action.sa_mask, sync::ipi_signal());
  // The previous disposition is read first: a foreign SIGTRAP that arrives the moment ours is in
  // place must find where to go.
  if (sigaction(SIGTRAP, nullptr, &g_previous) != 0 || sigaction(SIGTRAP, &action, nullptr) != 0) {
    const int err = errno;
    return Error(ErrorCode::kSystem, std::string("sigaction(SIGTRAP) failed: ") +
                                         text::errno_text(err) +
                                         "; live switches need the #BP handler");
  }
  installed = true;
  return {};
}

}  // namespace repatch::engine
