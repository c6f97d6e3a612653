#include "arch/x86/sync_core.h"

#include <atomic>

// IRET to self, as a function of its own rather than inline asm: the frame is pushed below %rsp,
// and inside a caller's body that would overwrite the caller's red zone (code outside the site
// libraries is built with one). Called, it only pushes below its own return address, where the
// ABI allows it. It clobbers %rax only, which the ABI lets a callee clobber.
//
// The frame is what IRETQ pops in 64-bit mode: RIP, CS, RFLAGS, RSP, SS. The RSP pushed is the
// value before the SS push, so the stack is exactly as on entry after the IRETQ, and RFLAGS is
// the current value, so no flag changes. IRET is architecturally serialising: instructions after
// it are fetched anew, after every earlier store (through any mapping) is visible to this CPU.
asm(R"(
  .pushsection .text
  .p2align 4
  .globl repatch_x86_iret_to_self
  .hidden repatch_x86_iret_to_self
  .type repatch_x86_iret_to_self, @function
repatch_x86_iret_to_self:
  .cfi_startproc
  movl %ss, %eax
  pushq %rax
  .cfi_adjust_cfa_offset 8
  leaq 8(%rsp), %rax
  pushq %rax
  .cfi_adjust_cfa_offset 8
  pushfq
  .cfi_adjust_cfa_offset 8
  movl %cs, %eax
  pushq %rax
  .cfi_adjust_cfa_offset 8
  leaq 1f(%rip), %rax
  pushq %rax
  .cfi_adjust_cfa_offset 8
  iretq
1:
  .cfi_def_cfa_offset 8
  ret
  .cfi_endproc
  .size repatch_x86_iret_to_self, . - repatch_x86_iret_to_self
  .popsection
)");

extern "C" void repatch_x86_iret_to_self();

namespace repatch::x86 {
namespace {

// Written once at boot before other threads exist and read-only afterwards; thread creation
// orders the write before every read, so relaxed loads suffice. Atomic so that a late
// select_sync_core_method() call is a stale choice, not undefined behaviour.
std::atomic<SyncCoreMethod> g_method{SyncCoreMethod::kIretToSelf};

inline void serialize_instruction() {
  // SERIALIZE (0f 01 e8), spelt as bytes because older assemblers lack the mnemonic. The memory
  // clobber keeps the compiler from moving stores to the text alias across it.
  asm volatile(".byte 0x0f, 0x01, 0xe8" ::: "memory");
}

}  // namespace

void select_sync_core_method(bool cpu_has_serialize) {
  g_method.store(cpu_has_serialize ? SyncCoreMethod::kSerialize : SyncCoreMethod::kIretToSelf,
                 std::memory_order_relaxed);
}

SyncCoreMethod sync_core_method() {
  return g_method.load(std::memory_order_relaxed);
}

void sync_core() {
  if (g_method.load(std::memory_order_relaxed) == SyncCoreMethod::kSerialize) {
    serialize_instruction();
  } else {
    // An opaque call: the compiler already treats it as reading and writing all escaped memory,
    // so no store to the text alias moves past it.
    repatch_x86_iret_to_self();
  }
}

}  // namespace repatch::x86
