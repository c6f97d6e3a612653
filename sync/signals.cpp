#include "sync/signals.h"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <mutex>
#include <string>
#include <tuple>
#include <utility>

#include "base/context.h"
#include "base/errno_text.h"
#include "base/return_if_error.h"
#include "base/signal_name.h"
#include "base/text.h"
#include "sync/vcpu.h"

namespace repatch::sync {
namespace {

// Zero until installed. Stored with release after both handlers are in place, loaded with acquire:
// whoever reads a nonzero number (send_ipi, IrqOffGuard, tests) also sees the installation done.
std::atomic<int> g_ipi_signal{0};
std::atomic<int> g_nmi_signal{0};

// Set by the layer above in normal context and read in handlers. Release/acquire: whatever the
// layer prepared before setting its handler (its state, its tables) is visible to the handler
// that loads the pointer. Function pointers are lock-free atomics, so the loads are
// async-signal-safe.
std::atomic<InterruptHandler> g_ipi_handler{nullptr};
std::atomic<InterruptHandler> g_nmi_handler{nullptr};

// Only tgkill() from this process is an interrupt. A kill(1) from outside, or a process-directed
// signal, would otherwise look like an IPI to whichever thread the kernel picked.
bool sent_by_this_process(const siginfo_t* info) {
  return info != nullptr && info->si_code == SI_TKILL && info->si_pid == getpid();
}

void on_ipi(int /*sig*/, siginfo_t* info, void* ucontext) {
  const base::SignalHandlerScope in_handler;
  const int saved_errno = errno;
  Vcpu* self = Vcpu::current();
  if (self != nullptr && sent_by_this_process(info)) {
    const VcpuId id = self->id();
    // Before any state is read: pairs with the sender's exchange (send_signal in vcpu.cpp).
    slot(id).ipi_pending.store(false, std::memory_order_seq_cst);
    // Relaxed: a statistic; nothing else is ordered by it.
    slot(id).ipis.fetch_add(1, std::memory_order_relaxed);
    if (InterruptHandler handler = g_ipi_handler.load(std::memory_order_acquire)) {
      handler(id, ucontext);
    }
  }
  errno = saved_errno;
}

void on_nmi(int /*sig*/, siginfo_t* info, void* ucontext) {
  const base::SignalHandlerScope in_handler;
  const int saved_errno = errno;
  Vcpu* self = Vcpu::current();
  if (self != nullptr && sent_by_this_process(info)) {
    const VcpuId id = self->id();
    VcpuSlot& s = slot(id);
    s.nmi_pending.store(false, std::memory_order_seq_cst);  // as in on_ipi
    // Counted before in_nmi is set: wait_for_nmis_in_flight tells a new NMI from the one it waits
    // for by this count (the locked add is ordered before the seq_cst store below).
    s.nmis.fetch_add(1, std::memory_order_relaxed);
    // seq_cst (a full barrier): the handler's later loads of shared state (a transaction's step
    // counter, say) cannot move before this store. So a thread that publishes such state with
    // seq_cst and then reads in_nmi == false knows that an NMI not yet visible to it will see the
    // new state.
    s.in_nmi.store(true, std::memory_order_seq_cst);
    // A seq_cst store alone does not order the handler's later weaker loads after it.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (InterruptHandler handler = g_nmi_handler.load(std::memory_order_acquire)) {
      handler(id, ucontext);
    }
    // Release: everything the handler did is visible to whoever sees in_nmi == false with acquire.
    s.in_nmi.store(false, std::memory_order_release);
  }
  errno = saved_errno;
}

// SIG_DFL and no SA_SIGINFO handler: nobody in the process uses the signal.
bool signal_is_free(int sig) {
  struct sigaction current {};
  if (sigaction(sig, nullptr, &current) != 0) {
    return false;
  }
  return (current.sa_flags & SA_SIGINFO) == 0 && current.sa_handler == SIG_DFL;
}

// What the disposition of `sig` is, for a message: "a handler at 0x...", "SIG_IGN", "SIG_DFL".
std::string disposition_text(int sig) {
  struct sigaction current {};
  if (sigaction(sig, nullptr, &current) != 0) {
    return "unreadable (" + text::errno_text(errno) + ")";
  }
  if ((current.sa_flags & SA_SIGINFO) != 0) {
    return "a handler at " + text::hex(reinterpret_cast<std::uintptr_t>(current.sa_sigaction));
  }
  if (current.sa_handler == SIG_IGN) return "ignored (SIG_IGN)";
  if (current.sa_handler == SIG_DFL) return "the default action (SIG_DFL)";
  return "a handler at " + text::hex(reinterpret_cast<std::uintptr_t>(current.sa_handler));
}

using InterruptSignalHandler = void (*)(int, siginfo_t*, void*);

// Whether `sig` still runs `handler` as installed here.
bool runs(int sig, InterruptSignalHandler handler) {
  struct sigaction current {};
  return sigaction(sig, nullptr, &current) == 0 && (current.sa_flags & SA_SIGINFO) != 0 &&
         current.sa_sigaction == handler;
}

// Up to `wanted` real-time signals nobody handles, other than the two excepted, for a message that
// tells a person which ones they could choose.
std::string free_signals_text(int wanted, int except_a, int except_b) {
  std::string out;
  int found = 0;
  for (int sig = SIGRTMIN; sig <= SIGRTMAX && found < wanted; ++sig) {
    if (sig == except_a || sig == except_b || !signal_is_free(sig)) continue;
    out += (found == 0 ? "" : ", ") + text::signal_name(sig);
    ++found;
  }
  return found == 0 ? "none is" : out + (found == 1 ? " is" : " are");
}

Status install(int sig, void (*handler)(int, siginfo_t*, void*), const sigset_t& mask,
               const char* what) {
  struct sigaction action {};
  action.sa_sigaction = handler;
  action.sa_mask = mask;
  action.sa_flags = SA_SIGINFO | SA_RESTART | SA_ONSTACK;
  if (sigaction(sig, &action, nullptr) != 0) {
    const int err = errno;
    return Error(ErrorCode::kSystem, "sigaction(" + text::signal_name(sig) + ") for the " + what +
                                         " handler failed: " + text::errno_text(err));
  }
  return {};
}

// Installs both handlers on two free, distinct real-time signals and publishes the numbers.
Status install_pair(int ipi, int nmi) {
  // The IPI handler blocks nothing beyond the IPI itself (added by the kernel): NMIs and SIGTRAP
  // must reach a vCPU that is handling an IPI.
  sigset_t ipi_mask;
  sigemptyset(&ipi_mask);
  // The NMI handler blocks the IPI and the NMI, never SIGTRAP.
  sigset_t nmi_mask;
  sigemptyset(&nmi_mask);
  sigaddset(&nmi_mask, ipi);
  sigaddset(&nmi_mask, nmi);

  // The NMI handler first, so that an IPI handler never exists without the NMI one.
  REPATCH_RETURN_IF_ERROR(install(nmi, &on_nmi, nmi_mask, "NMI"));
  if (Status s = install(ipi, &on_ipi, ipi_mask, "IPI"); !s.ok()) {
    signal(nmi, SIG_DFL);
    return s;
  }
  g_nmi_signal.store(nmi, std::memory_order_release);
  g_ipi_signal.store(ipi, std::memory_order_release);
  return {};
}

// Normal context only, so a mutex is fine; it makes concurrent first enter() calls choose once.
std::mutex g_install_mutex;

}  // namespace

namespace detail {

Status install_interrupt_signals() {
  base::assert_normal_context();
  const std::lock_guard<std::mutex> lock(g_install_mutex);
  if (g_ipi_signal.load(std::memory_order_relaxed) != 0) {
    return {};
  }
  int ipi = 0;
  int nmi = 0;
  for (int sig = SIGRTMIN; sig <= SIGRTMAX && nmi == 0; ++sig) {
    if (!signal_is_free(sig)) {
      continue;
    }
    (ipi == 0 ? ipi : nmi) = sig;
  }
  if (nmi == 0) {
    return Error(ErrorCode::kSystem,
                 "the vCPU IPI and NMI need two real-time signals nobody handles; every one from " +
                     text::realtime_signal_range() + " was tried and " +
                     (ipi == 0 ? "none is free (SIG_DFL)"
                               : "only " + text::signal_name(ipi) + " is free (SIG_DFL)") +
                     ": something else in the process handles or ignores the others. Release two "
                     "of them before the first vCPU starts (or before boot)");
  }
  return install_pair(ipi, nmi);
}

}  // namespace detail

Status use_interrupt_signals(int ipi, int nmi) {
  base::assert_normal_context();
  const auto out_of_range = [](int sig, const char* what) {
    return Error(ErrorCode::kInvalidArgument,
                 std::string("the vCPU ") + what + " signal " + text::signal_name(sig) +
                     " is not a real-time signal: choose the IPI and NMI signals from " +
                     text::realtime_signal_range() + ", two distinct ones");
  };
  if (ipi < SIGRTMIN || ipi > SIGRTMAX) return out_of_range(ipi, "IPI");
  if (nmi < SIGRTMIN || nmi > SIGRTMAX) return out_of_range(nmi, "NMI");
  if (ipi == nmi) {
    return Error(ErrorCode::kInvalidArgument,
                 "the vCPU IPI and NMI signals are both " + text::signal_name(ipi) +
                     ": they must differ (an NMI must arrive while an IPI is handled); choose "
                     "two distinct ones from " +
                     text::realtime_signal_range());
  }
  const std::lock_guard<std::mutex> lock(g_install_mutex);
  const int installed_ipi = g_ipi_signal.load(std::memory_order_relaxed);
  const int installed_nmi = g_nmi_signal.load(std::memory_order_relaxed);
  if (installed_ipi != 0) {
    if (installed_ipi == ipi && installed_nmi == nmi) return {};
    return Error(ErrorCode::kState,
                 "the vCPU IPI and NMI are " + text::signal_name(installed_ipi) + " and " +
                     text::signal_name(installed_nmi) +
                     " already (installed by an earlier Vcpu::enter() or "
                     "choose_interrupt_signals()), so they cannot become " +
                     text::signal_name(ipi) + " and " + text::signal_name(nmi) +
                     ": choose the signals before the first vCPU starts, or ask for these");
  }
  for (const auto& [sig, what] : {std::pair{ipi, "IPI"}, std::pair{nmi, "NMI"}}) {
    if (signal_is_free(sig)) continue;
    return Error(ErrorCode::kState,
                 text::signal_name(sig) + ", asked for as the vCPU " + what +
                     " signal, is not free: its disposition is " + disposition_text(sig) +
                     ", set by something else in the process. The engine does not share its "
                     "real-time signals (it could not tell its interrupts from the other "
                     "user's signals, nor park vCPUs through a handler that is not its own): "
                     "choose signals nobody handles (of the others, " +
                     free_signals_text(2, ipi, nmi) + " free now), or release this one first");
  }
  return install_pair(ipi, nmi);
}

Status check_interrupt_signals() {
  base::assert_normal_context();
  const int ipi = g_ipi_signal.load(std::memory_order_acquire);
  const int nmi = g_nmi_signal.load(std::memory_order_acquire);
  if (ipi == 0) return {};
  const std::tuple<int, const char*, InterruptSignalHandler, const char*> installed[] = {
      {ipi, "IPI", &on_ipi, "a stop could not park the vCPUs"},
      {nmi, "NMI", &on_nmi, "NMIs sent to vCPUs would not run the vCPUs' NMI handler"}};
  for (const auto& [sig, what, handler, consequence] : installed) {
    if (runs(sig, handler)) continue;
    return Error(ErrorCode::kState,
                 "the vCPU " + std::string(what) + " signal " + text::signal_name(sig) +
                     " no longer runs the vCPU " + what +
                     " handler: something in the process changed its disposition after it was "
                     "installed (it is now " +
                     disposition_text(sig) + "), and " + consequence +
                     ". Leave the signal alone, or give the engine signals the program does not "
                     "use (BootOptions::interrupt_signals)");
  }
  return {};
}

int ipi_signal() {
  return g_ipi_signal.load(std::memory_order_acquire);
}
int nmi_signal() {
  return g_nmi_signal.load(std::memory_order_acquire);
}

Status choose_interrupt_signals() {
  return detail::install_interrupt_signals();
}

void set_ipi_handler(InterruptHandler handler) {
  g_ipi_handler.store(handler, std::memory_order_release);
}
void set_nmi_handler(InterruptHandler handler) {
  g_nmi_handler.store(handler, std::memory_order_release);
}

}  // namespace repatch::sync
