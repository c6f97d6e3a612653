// The IPI and NMI signals: choosing their numbers and installing their handlers (internal to
// sync/).
//
// The numbers are set once per process: by the program (use_interrupt_signals, from the engine's
// boot options), or else at the first Vcpu::enter() or choose_interrupt_signals() as the first two
// real-time signals from SIGRTMIN whose disposition is still SIG_DFL. glibc keeps the ones below
// SIGRTMIN, and a signal somebody else already handles or ignores is not ours to take, whoever
// chose it. Once installed they are never shared or chained: check_interrupt_signals() tells
// whether somebody has replaced one since.
//
// Masks while a handler runs (the kernel adds the handler's own signal unless SA_NODEFER):
//   IPI handler: the IPI only. An NMI must still arrive inside it, and SIGTRAP must never be
//                blocked (an int3 with SIGTRAP blocked kills the process).
//   NMI handler: the IPI and the NMI. NMIs do not nest and an IPI must not interrupt an NMI, as on
//                a real CPU. SIGTRAP is still not blocked.
// Both are installed with SA_SIGINFO | SA_RESTART | SA_ONSTACK: the ucontext reaches the layer
// above, system calls interrupted in guest code resume, and the handlers run on the vCPU's
// alternate stack.
#ifndef REPATCH_SYNC_SIGNALS_H_
#define REPATCH_SYNC_SIGNALS_H_

#include "repatch/error.h"

namespace repatch::sync::detail {

/// Chooses the two signals and installs their handlers, once per process; once they are installed
/// (by this or by use_interrupt_signals) later calls succeed and change nothing. Thread-safe;
/// normal context only (it takes a mutex).
Status install_interrupt_signals();

}  // namespace repatch::sync::detail

#endif  // REPATCH_SYNC_SIGNALS_H_
