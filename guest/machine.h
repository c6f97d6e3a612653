// The guest machine: the engine booted with the guest kernel's groups, their in-memory state
// registered for switches, and the simulated hypervisor installed with the TLB's resume hook.
//
// Every program that runs the spinlock and TLB groups under switches (the stress harness, tests,
// benchmarks) needs the same steps in the same order, before any vCPU thread starts:
//   boot -> adopt the spinlock encoding of the booted variant -> register the spinlock and tlb
//   GroupStates -> install the hypervisor -> route its resume hook and the vCPU NMI to the TLB.
// boot_machine() does them all; a program adds what its own NMI handler does through
// set_machine_nmi_hook(), since the NMI handler is one process-wide slot (sync::set_nmi_handler)
// and the TLB needs it too.
//
// A program that uses it links the object libraries repatch_guest_machine,
// repatch_guest_spinlock, repatch_guest_tlb and repatch_guest_hypervisor.
#ifndef REPATCH_GUEST_MACHINE_H_
#define REPATCH_GUEST_MACHINE_H_

#include "repatch/engine.h"
#include "sync/vcpu.h"

namespace repatch::guest {

/// Boots the engine with `options` (repatch::boot), then converts every live lock and the encoding
/// of new locks to the spinlock group's booted variant, registers the spinlock and tlb GroupStates,
/// empties the page table and every TLB, installs the simulated hypervisor, sets its resume hook
/// to tlb::resume_hook and the vCPU NMI handler to one that serves TLB flush requests
/// (tlb::on_interrupt) and then runs the hook of set_machine_nmi_hook(). Call once, while the
/// process has a single thread. Returns the engine; fails with what boot(), adopt_engine_variant(),
/// set_group_state() or hypervisor::install() fail with, the message saying which step failed.
Result<Engine*> boot_machine(const BootOptions& options);

/// What the machine's NMI handler runs after it has served the TLB: `hook(self, ucontext)` in NMI
/// context (async-signal-safe; see sync/vcpu.h and, for taking a spinlock there, guest/spinlock.h).
/// nullptr = nothing more. Set it before NMIs are sent; any thread. The store is release and the
/// handler's load acquire, so a hook sees what was written before it was set.
void set_machine_nmi_hook(sync::InterruptHandler hook);

}  // namespace repatch::guest

#endif  // REPATCH_GUEST_MACHINE_H_
