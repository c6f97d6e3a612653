// vCPUs: the threads of the guest kernel that this process models.
//
// A vCPU is a thread registered for its lifetime with a `Vcpu` object. While registered it is
// *online* (a liburcu QSBR reader that reports quiescent states) unless it says it is idle
// (`go_offline()`, the extended quiescent state of a real CPU). Every vCPU has a fixed slot in a
// process-wide table that any thread, and any signal handler, may read without locks: that is what
// stop-machine walks to decide whom to interrupt and what each stopped vCPU was doing.
//
// The interrupt model:
//   IPI  a real-time signal sent to one vCPU thread with tgkill(). Blocked by IrqOffGuard (the
//        analogue of local_irq_disable()).
//   NMI  a second real-time signal that guest code never blocks. Its handler does not nest (the
//        NMI signal is blocked while it runs) and is async-signal-safe.
// Both signal numbers are chosen at run time from SIGRTMIN upwards (glibc keeps the first ones),
// as the first two that nobody in the process handles, or given by the program
// (use_interrupt_signals); docs/signals.md says what is checked and why they are not shared.
// Handlers run on a per-vCPU alternate signal stack, allocated at registration, so that nested
// IPI -> NMI -> #BP handlers have bounded, known stack. SIGTRAP is never blocked by any handler.
#ifndef REPATCH_SYNC_VCPU_H_
#define REPATCH_SYNC_VCPU_H_

#include <sys/types.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>

#include "repatch/error.h"

namespace repatch::sync {

inline constexpr std::size_t kMaxVcpus = 256;

using VcpuId = std::uint16_t;

/// The per-vCPU record. Fields are written by the vCPU itself unless noted; anyone may read them.
struct alignas(64) VcpuSlot {
  /// The kernel thread id, or 0 when the slot is free. Written at registration and release.
  std::atomic<pid_t> tid{0};
  /// Registered and not idle. Written by the vCPU around go_offline()/go_online().
  std::atomic<bool> online{false};
  /// Inside the NMI handler now (NMIs do not nest).
  std::atomic<bool> in_nmi{false};
  /// Depth of IrqOffGuard nesting.
  std::atomic<std::uint32_t> irq_off_depth{0};
  /// An IPI / NMI was sent and its handler has not started yet. A send while one is pending is
  /// merged into it (as a CPU latches one pending NMI), so a vCPU whose IPIs stay blocked never
  /// fills the process's queue of real-time signals, which the kernel bounds per user
  /// (RLIMIT_SIGPENDING): a full queue would make every later send fail, in other processes too.
  std::atomic<bool> ipi_pending{false};
  std::atomic<bool> nmi_pending{false};
  /// IPIs and NMIs received, for reports.
  std::atomic<std::uint64_t> ipis{0};
  std::atomic<std::uint64_t> nmis{0};
};

/// The slot table. Index = VcpuId. Never moves, never shrinks.
VcpuSlot& slot(VcpuId id);

/// One past the highest VcpuId ever handed out (slots below it may be free again).
VcpuId slot_limit();

/// Registers the calling thread as a vCPU for the object's lifetime (online on creation).
class Vcpu {
 public:
  /// Registers the calling thread and brings it online the way go_online() does (gate, then
  /// sync_core). Fails with kState when this thread is already a vCPU, kUnsupported when kMaxVcpus
  /// are registered, kSystem when the signals or the signal stack cannot be set up. The thread
  /// must not be registered with liburcu QSBR by anyone else (liburcu aborts on a second
  /// registration).
  static Result<std::unique_ptr<Vcpu>> enter();

  /// Unregisters: goes offline, leaves the QSBR reader set and frees the slot. Must run on the
  /// thread that registered.
  ~Vcpu();
  Vcpu(const Vcpu&) = delete;
  Vcpu& operator=(const Vcpu&) = delete;

  VcpuId id() const { return id_; }

  /// The calling thread's vCPU, or nullptr. Async-signal-safe.
  static Vcpu* current();

  /// Idle: an extended quiescent state. Stop-machine does not wait for offline vCPUs.
  void go_offline();
  /// Back from idle: publishes `online`, waits at the online gate while a switch is in progress
  /// and serialises (sync_core) before returning to guest code, so that it never runs a
  /// half-written site. Both calls do nothing when the vCPU is already in that state. Call it with
  /// IPIs enabled: a switch that starts meanwhile interrupts this vCPU, and would time out on it.
  void go_online();

  /// Reports a quiescent state (liburcu QSBR). Call from loops that do not block. Does nothing
  /// while offline (reporting would bring the QSBR reader back online behind go_online's back).
  void quiescent_state();

 private:
  explicit Vcpu(VcpuId id);
  VcpuId id_;
};

/// Blocks the IPI signal on the calling thread while it lives (local_irq_disable); nests, and may
/// be taken in handlers too. NMIs and #BP still arrive. Works on any thread; on a vCPU it also
/// keeps the slot's irq_off_depth. The outermost guard restores only the IPI bit of the mask, as
/// it found it. Before the first Vcpu::enter() there is no IPI signal yet, so a guard taken then
/// blocks nothing. Async-signal-safe.
class IrqOffGuard {
 public:
  IrqOffGuard();
  ~IrqOffGuard();
  IrqOffGuard(const IrqOffGuard&) = delete;
  IrqOffGuard& operator=(const IrqOffGuard&) = delete;
};

/// The two signal numbers in use (valid after the first Vcpu::enter() or
/// choose_interrupt_signals(); 0 before).
int ipi_signal();
int nmi_signal();

/// Chooses the IPI and NMI signals and installs their handlers now, as the first Vcpu::enter()
/// would, for a layer that needs the numbers earlier (the #BP handler blocks the IPI). Does nothing
/// once they are installed. Normal context. Fails with kSystem or kUnsupported as Vcpu::enter()
/// does; kSystem names the signals it tried.
Status choose_interrupt_signals();

/// Installs the IPI and NMI handlers on `ipi` and `nmi`, chosen by the program instead of found by
/// choose_interrupt_signals(). Call it before the first Vcpu::enter(). Normal context. Fails with
/// kInvalidArgument when a number is outside SIGRTMIN..SIGRTMAX (read at run time: glibc keeps the
/// first real-time signals) or the two are equal; kState when the signals are installed already
/// with other numbers (asking again for the installed ones succeeds), or when either signal is not
/// free: something else in the process handles or ignores it (the message names it, says what its
/// disposition is and which signals are free); kSystem when sigaction refuses.
Status use_interrupt_signals(int ipi, int nmi);

/// Checks that the IPI and NMI signals still run the handlers installed for them: a program that
/// installs its own handler on one afterwards (or resets it) replaces the vCPUs' interrupts, and
/// nothing chains to them. Two sigaction() reads. Ok when no signals are installed yet. Fails with
/// kState naming the signal and its disposition now. Normal context (the message allocates).
Status check_interrupt_signals();

/// What a vCPU's IPI and NMI handlers run. Set once, before vCPUs exist, by the layer above
/// (stop-machine). Each is called in signal context with the receiving vCPU's id and the
/// interrupted context; it must be async-signal-safe. nullptr = ignore.
using InterruptHandler = void (*)(VcpuId self, void* ucontext);
void set_ipi_handler(InterruptHandler handler);
void set_nmi_handler(InterruptHandler handler);

/// Sends an IPI / NMI to vCPU `id` with tgkill, unless one is already pending there (its handler
/// not yet started): then the two are merged and the one handler run serves both, since handlers
/// read the state they act on after they start. Async-signal-safe, so it reports failure as an
/// errno value rather than an Error (which would allocate): 0 on success or merge, ESRCH when the
/// slot is free (or `id` is not below kMaxVcpus), or tgkill's errno (EAGAIN: the user's queue of
/// real-time signals is full).
int send_ipi(VcpuId id);
int send_nmi(VcpuId id);

/// What a vCPU runs on its way online (Vcpu::enter() and go_online()), after it has published
/// `online` and before it serialises and returns to guest code: the stop-machine layer's wait
/// while a switch is in progress (H8). Called in normal context with the vCPU's id; it may block,
/// but the vCPU counts as online meanwhile, so a gate that waits must not wait for a stop that
/// waits for this vCPU. Set once, before vCPUs exist. nullptr = no gate.
using OnlineGate = void (*)(VcpuId self);
void set_online_gate(OnlineGate gate);

/// What a layer that keeps per-vCPU state of its own (in its own table, indexed by VcpuId) runs
/// when a thread claims slot `self` in Vcpu::enter(): it resets what the slot's previous owner left
/// there. Called in normal context, after the claim and before the vCPU is published online, so a
/// reader that sees the vCPU online (seq_cst or acquire) also sees the reset, even a relaxed one.
/// Added before vCPUs exist; at most kMaxClaimHooks, run in the order added.
using ClaimHook = void (*)(VcpuId self);
inline constexpr std::size_t kMaxClaimHooks = 4;
void add_claim_hook(ClaimHook hook);

}  // namespace repatch::sync

#endif  // REPATCH_SYNC_VCPU_H_
