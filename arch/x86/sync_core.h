// sync_core(): make this CPU discard any instruction bytes it fetched before now, so that code
// written through another mapping (or by another CPU) is what it runs next.
//
// IRET to self is architecturally serialising and legal in user mode; SERIALIZE is the cheaper
// dedicated instruction where CPUID reports it. CPUID also serialises but exits to the hypervisor
// in a VM, so it is never used here.
#ifndef REPATCH_ARCH_X86_SYNC_CORE_H_
#define REPATCH_ARCH_X86_SYNC_CORE_H_

namespace repatch::x86 {

enum class SyncCoreMethod : unsigned char { kIretToSelf, kSerialize };

/// Chooses the method once from a CPUID result taken by the caller (boot). Not thread-safe with
/// concurrent sync_core() calls: call before other threads run.
void select_sync_core_method(bool cpu_has_serialize);

/// The method in use.
SyncCoreMethod sync_core_method();

/// Serialises instruction fetch on the calling thread's CPU. Async-signal-safe, no system call.
void sync_core();

}  // namespace repatch::x86

#endif  // REPATCH_ARCH_X86_SYNC_CORE_H_
