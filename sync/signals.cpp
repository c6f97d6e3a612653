#include "sync/signals.h"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <mutex>
#include <string>

#include "base/context.h"
#include "base/errno_text.h"
#include "base/return_if_error.h"
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

Status install(int sig, void (*handler)(int, siginfo_t*, void*), const sigset_t& mask,
               const char* what) {
  struct sigaction action {};
  action.sa_sigaction = handler;
  action.sa_mask = mask;
  action.sa_flags = SA_SIGINFO | SA_RESTART | SA_ONSTACK;
  if (sigaction(sig, &action, nullptr) != 0) {
    const int err = errno;
    return Error(ErrorCode::kSystem, std::string("sigaction(") + std::to_string(sig) +
                                         ") for the " + what +
                                         " handler failed: " + text::errno_text(err));
  }
  return {};
}

}  // namespace

namespace detail {

Status install_interrupt_signals() {
  // Normal context only, so a mutex is fine; it makes concurrent first enter() calls choose once.
  base::assert_normal_context();
  static std::mutex mutex;
  const std::lock_guard<std::mutex> lock(mutex);
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
                 "no two real-time signals from SIGRTMIN (" + std::to_string(SIGRTMIN) +
                     ") to SIGRTMAX (" + std::to_string(SIGRTMAX) +
                     ") are free (SIG_DFL) for the vCPU IPI and NMI; something else in the "
                     "process handles them all: release two of them before the first vCPU starts");
  }

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

}  // namespace detail

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
