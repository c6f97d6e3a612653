#include "sync/vcpu.h"

#include <pthread.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <urcu/urcu-qsbr.h>

#include <atomic>
#include <cassert>
#include <cerrno>
#include <cstdlib>
#include <string>

#include "arch/x86/sync_core.h"
#include "base/return_if_error.h"
#include "sync/alt_stack.h"
#include "sync/signals.h"

namespace repatch::sync {
namespace {

VcpuSlot g_slots[kMaxVcpus];

// One past the highest slot ever claimed. Raised with release after the claiming CAS on `tid`, and
// read with acquire: a walker that sees the limit cover slot i also sees slot i's tid (or a later
// one). It never falls, so a walker never misses a slot because another one was freed meanwhile.
std::atomic<VcpuId> g_slot_limit{0};

// Indexed like g_slots and touched only by the slot's owner thread (enter and ~Vcpu), so no
// synchronisation of its own: the claim and release of the slot order successive owners.
detail::AltStack g_alt_stacks[kMaxVcpus];

// Set once by the layer above before vCPUs exist. Release/acquire so that the gate's own state,
// prepared before it was set, is visible to a vCPU that loads the pointer.
std::atomic<OnlineGate> g_online_gate{nullptr};

// Added once each by the layers above before vCPUs exist; the count is released after the hook is
// stored, so a claimer that loads the count (acquire) sees every hook below it.
std::atomic<ClaimHook> g_claim_hooks[kMaxClaimHooks]{};
std::atomic<std::size_t> g_claim_hook_count{0};

// Initial-exec: reading it is one %fs-relative load with no call to __tls_get_addr (which may
// allocate), so handlers may read it. It is trivially initialised, so there is no TLS wrapper
// either. (This assumes the library is linked into the executable or a library loaded at start,
// which is how repatch is used; a dlopen()ed library would need static TLS to spare.)
[[gnu::tls_model("initial-exec")]] thread_local Vcpu* t_current = nullptr;

// IrqOffGuard's state, for every thread, vCPU or not. The slot's irq_off_depth mirrors `depth` for
// readers on other threads; this is the authority because it exists before, during and after the
// thread's registration.
struct IrqState {
  std::uint32_t depth;
  int blocked_signal;  // the signal the outermost guard blocked (0 before signals are chosen)
  bool was_blocked;    // whether it was already blocked before the outermost guard
};
[[gnu::tls_model("initial-exec")]] thread_local IrqState t_irq = {0, 0, false};

// Handlers interrupt the owner thread only at instruction boundaries, and see its memory in
// program order if the compiler keeps that order: a signal fence is all a handler needs.
inline void compiler_order() {
  std::atomic_signal_fence(std::memory_order_seq_cst);
}

void mirror_irq_depth() {
  if (Vcpu* self = t_current) {
    // Relaxed: a report for other threads. The blocked signal mask, not this counter, is what
    // keeps IPIs out; a reader that needs certainty sends the IPI and waits for it.
    g_slots[self->id()].irq_off_depth.store(t_irq.depth, std::memory_order_relaxed);
  }
}

void raise_slot_limit(VcpuId id) {
  const VcpuId wanted = static_cast<VcpuId>(id + 1);
  VcpuId limit = g_slot_limit.load(std::memory_order_relaxed);
  while (limit < wanted &&
         !g_slot_limit.compare_exchange_weak(limit, wanted, std::memory_order_release,
                                             std::memory_order_relaxed)) {
  }
}

// Published `online`, then the gate, then serialise: the path of every vCPU back to guest code.
void come_online(VcpuId id) {
  VcpuSlot& s = g_slots[id];
  // The store must be visible before this vCPU reads "switch in progress" at the gate, and the
  // stop-machine primary does the mirror image: it publishes "switch in progress", then reads
  // every `online`. With a StoreLoad barrier on both sides, at least one of the two sees the
  // other: either the primary counts this vCPU and interrupts it, or the gate sees the switch and
  // waits. A seq_cst store followed by a seq_cst fence pairs with either style the primary may use
  // (seq_cst stores and loads, or relaxed ones around a seq_cst fence); on x86 the store alone is
  // already a locked exchange, and this path is rare enough that the extra fence costs nothing.
  s.online.store(true, std::memory_order_seq_cst);
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (OnlineGate gate = g_online_gate.load(std::memory_order_acquire)) {
    gate(id);
  }
  // Sites may have been rewritten while this vCPU was offline or waiting at the gate; its CPU may
  // still hold the old bytes in its instruction pipeline. Serialise before any guest code runs.
  x86::sync_core();
}

void die(const char* message) {
  // write(2) rather than stdio: this may run with the heap or stdio locks in any state.
  const std::size_t n = std::char_traits<char>::length(message);
  [[maybe_unused]] ssize_t ignored = write(STDERR_FILENO, message, n);
  std::abort();
}

std::string tid_text(pid_t tid) {
  return std::to_string(tid);
}

int send_signal(VcpuId id, int sig, std::atomic<bool> VcpuSlot::*pending) {
  if (id >= kMaxVcpus) {
    return ESRCH;
  }
  // Relaxed: only the value is used, nothing it might publish. A stale value is the same race as
  // the vCPU leaving just after the load, which tgkill with our own pid makes harmless (below).
  const pid_t tid = g_slots[id].tid.load(std::memory_order_relaxed);
  if (tid == 0 || sig == 0) {
    return ESRCH;
  }
  // seq_cst exchange, paired with the handler's seq_cst clear before it reads any state: either
  // the pending signal's handler has not cleared the flag yet, and will see whatever the caller
  // published before this send, or it has, and this send queues a new signal.
  std::atomic<bool>& is_pending = g_slots[id].*pending;
  if (is_pending.exchange(true, std::memory_order_seq_cst)) {
    return 0;
  }
  const int saved_errno = errno;
  // tgkill with our own pid: if the slot was freed and its tid reused meanwhile, the signal can
  // only reach a thread of this process, whose handler ignores it unless it is a vCPU (and an
  // extra IPI to a vCPU is harmless: handlers must cope with spurious ones).
  int result = 0;
  if (syscall(SYS_tgkill, getpid(), tid, sig) != 0) {
    result = errno;
    is_pending.store(false, std::memory_order_seq_cst);  // nothing was queued after all
  }
  errno = saved_errno;
  return result;
}

}  // namespace

VcpuSlot& slot(VcpuId id) {
  assert(id < kMaxVcpus);
  return g_slots[id];
}

VcpuId slot_limit() {
  return g_slot_limit.load(std::memory_order_acquire);
}

void set_online_gate(OnlineGate gate) {
  g_online_gate.store(gate, std::memory_order_release);
}

void add_claim_hook(ClaimHook hook) {
  const std::size_t index = g_claim_hook_count.load(std::memory_order_relaxed);
  if (index >= kMaxClaimHooks) {
    die("repatch: more than kMaxClaimHooks per-vCPU state resets were added; raise the limit\n");
  }
  g_claim_hooks[index].store(hook, std::memory_order_relaxed);
  g_claim_hook_count.store(index + 1, std::memory_order_release);
}

Vcpu::Vcpu(VcpuId id) : id_(id) {}

Vcpu* Vcpu::current() {
  return t_current;
}

Result<std::unique_ptr<Vcpu>> Vcpu::enter() {
  const pid_t tid = gettid();
  if (t_current != nullptr) {
    return Error(ErrorCode::kState, "thread " + tid_text(tid) + " is already vCPU " +
                                        std::to_string(t_current->id()) +
                                        "; a thread registers once (destroy its Vcpu first)");
  }
  REPATCH_RETURN_IF_ERROR(detail::install_interrupt_signals());

  VcpuId id = 0;
  bool claimed = false;
  for (std::size_t i = 0; i < kMaxVcpus && !claimed; ++i) {
    pid_t expected = 0;
    // Acquire pairs with the release that freed the slot: the previous owner's last writes to it
    // (and to its alternate-stack record) happen before ours.
    if (g_slots[i].tid.load(std::memory_order_relaxed) == 0 &&
        g_slots[i].tid.compare_exchange_strong(expected, tid, std::memory_order_acq_rel,
                                               std::memory_order_relaxed)) {
      id = static_cast<VcpuId>(i);
      claimed = true;
    }
  }
  if (!claimed) {
    return Error(ErrorCode::kUnsupported,
                 "all " + std::to_string(kMaxVcpus) + " vCPU slots are in use, so thread " +
                     tid_text(tid) +
                     " cannot become a vCPU; destroy a Vcpu (or run fewer vCPU threads) first");
  }

  VcpuSlot& s = g_slots[id];
  // The previous owner's state stays readable after it leaves (for reports) until the slot is
  // claimed again, so the new owner resets it, and the layers above reset theirs (claim hooks).
  // Relaxed: nobody acts on a slot that is not online, and `online` is published later.
  const std::size_t hooks = g_claim_hook_count.load(std::memory_order_acquire);
  for (std::size_t i = 0; i < hooks; ++i) {
    g_claim_hooks[i].load(std::memory_order_relaxed)(id);
  }
  s.online.store(false, std::memory_order_relaxed);
  s.in_nmi.store(false, std::memory_order_relaxed);
  s.irq_off_depth.store(t_irq.depth, std::memory_order_relaxed);
  s.ipis.store(0, std::memory_order_relaxed);
  s.nmis.store(0, std::memory_order_relaxed);
  s.ipi_pending.store(false, std::memory_order_relaxed);
  s.nmi_pending.store(false, std::memory_order_relaxed);

  if (Status st = g_alt_stacks[id].install(); !st.ok()) {
    s.tid.store(0, std::memory_order_release);
    return st.error();
  }
  raise_slot_limit(id);

  std::unique_ptr<Vcpu> vcpu(new Vcpu(id));
  urcu_qsbr_register_thread();  // also brings the QSBR reader online
  // Before `online` is published: a primary that sees this vCPU online sends it an IPI, and the
  // handler must find the vCPU. Only this thread's handlers read t_current, hence a signal fence.
  t_current = vcpu.get();
  compiler_order();
  come_online(id);
  return vcpu;
}

Vcpu::~Vcpu() {
  if (t_current != this) {
    die("repatch: a Vcpu was destroyed on a thread other than the one it registers; "
        "it must die on its own thread\n");
  }
  VcpuSlot& s = g_slots[id_];
  // Release: everything this vCPU did while online happens before a primary's acquire (or seq_cst)
  // load that sees it gone and stops counting on it.
  s.online.store(false, std::memory_order_release);
  urcu_qsbr_unregister_thread();  // goes QSBR-offline first if it was online
  // From here on this thread's handlers ignore IPIs and NMIs, so nothing runs on the alternate
  // stack while it goes away or touches the slot after it is freed.
  t_current = nullptr;
  compiler_order();
  g_alt_stacks[id_].release();
  s.irq_off_depth.store(0, std::memory_order_relaxed);
  // Release pairs with the next claimer's CAS (see enter()).
  s.tid.store(0, std::memory_order_release);
}

void Vcpu::go_offline() {
  VcpuSlot& s = g_slots[id_];
  if (!s.online.load(std::memory_order_relaxed)) {  // only this thread writes it
    return;
  }
  // Release: this vCPU's guest-code accesses happen before a primary's acquire or seq_cst load
  // that sees it offline and therefore does not stop it. Offline before QSBR-offline, so that the
  // two views never disagree in the direction "QSBR idle but stop-machine still waits".
  s.online.store(false, std::memory_order_release);
  urcu_qsbr_thread_offline();
}

void Vcpu::go_online() {
  VcpuSlot& s = g_slots[id_];
  if (s.online.load(std::memory_order_relaxed)) {  // only this thread writes it
    return;
  }
  // QSBR first: from the moment the gate lets this vCPU into guest code it may read RCU-protected
  // data, so it must be a reader before that.
  urcu_qsbr_thread_online();
  come_online(id_);
}

void Vcpu::quiescent_state() {
  if (g_slots[id_].online.load(std::memory_order_relaxed)) {
    urcu_qsbr_quiescent_state();
  }
}

IrqOffGuard::IrqOffGuard() {
  if (t_irq.depth != 0) {
    // Not atomic, and need not be: a handler that interrupts the increment leaves depth as it
    // found it, since its own guards are balanced before it returns.
    ++t_irq.depth;
    mirror_irq_depth();
    return;
  }
  const int sig = ipi_signal();
  sigset_t block;
  sigset_t old;
  sigemptyset(&block);
  sigemptyset(&old);
  if (sig != 0) {
    sigaddset(&block, sig);
    pthread_sigmask(SIG_BLOCK, &block, &old);
  }
  // The order below matters against a handler (an NMI) that takes its own guard on this thread.
  // Before depth is 1, such a handler sees depth 0 and runs a complete outermost guard of its own:
  // it finds the IPI blocked (we blocked it) and so leaves it blocked. Once depth is 1 it only
  // nests and never touches the saved state, so that state can be written after depth.
  t_irq.depth = 1;
  compiler_order();
  t_irq.blocked_signal = sig;
  t_irq.was_blocked = sig != 0 && sigismember(&old, sig) == 1;
  mirror_irq_depth();
}

IrqOffGuard::~IrqOffGuard() {
  if (t_irq.depth != 1) {
    --t_irq.depth;
    mirror_irq_depth();
    return;
  }
  // Read the saved state before depth drops to 0: from then on a handler's outermost guard may
  // overwrite it (harmlessly for itself: it finds the IPI still blocked and leaves it so).
  const int sig = t_irq.blocked_signal;
  const bool was_blocked = t_irq.was_blocked;
  compiler_order();
  t_irq.depth = 0;
  compiler_order();
  mirror_irq_depth();
  // Only the IPI bit is restored, never the whole old mask: a guard must not undo changes to other
  // signals made while it lived, and it must never be able to block SIGTRAP or the NMI.
  if (sig != 0 && !was_blocked) {
    sigset_t unblock;
    sigemptyset(&unblock);
    sigaddset(&unblock, sig);
    pthread_sigmask(SIG_UNBLOCK, &unblock, nullptr);
  }
}

int send_ipi(VcpuId id) {
  return send_signal(id, ipi_signal(), &VcpuSlot::ipi_pending);
}
int send_nmi(VcpuId id) {
  return send_signal(id, nmi_signal(), &VcpuSlot::nmi_pending);
}

}  // namespace repatch::sync
