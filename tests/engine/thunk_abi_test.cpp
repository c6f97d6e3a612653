// REPATCH_CALLEE_SAVE_THUNK keeps the op ABI, checked at the instruction level: a hand-written
// driver loads every general-purpose register with a known value, calls a thunk from an aligned and
// from a misaligned stack, and stores every register afterwards. The C functions behind the thunks
// trash every caller-saved register, so a thunk that forgets to save or restore one, or restores it
// wrongly, shows up here even where compiled callers happen not to notice. They also record what
// the SysV ABI promises them (aligned stack, arguments) and walk the stack with the unwinder, which
// only gets back to the driver through the thunk's CFI.
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
#include <unwind.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>

#include "base/errno_text.h"
#include "repatch/op.h"

namespace {

// Register order of the driver's input and output arrays (the byte offsets in its assembly).
enum Reg : int {
  kRax,
  kRbx,
  kRcx,
  kRdx,
  kRsi,
  kRdi,
  kRbp,
  kR8,
  kR9,
  kR10,
  kR11,
  kR12,
  kR13,
  kR14,
  kR15,
  kRegCount
};

constexpr const char* kRegName[kRegCount] = {"rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8",
                                             "r9",  "r10", "r11", "r12", "r13", "r14", "r15"};

struct DriverOut {
  std::uint64_t regs[kRegCount];  ///< every register right after the call returned
  std::uint64_t rsp_before;       ///< %rsp at the call instruction
  std::uint64_t rsp_after;        ///< %rsp right after the call returned
};
// The driver's assembly hard-codes these offsets.
static_assert(offsetof(DriverOut, rsp_before) == 120);
static_assert(offsetof(DriverOut, rsp_after) == 128);

// Distinct, and unlike anything the C functions write, so a value in the wrong register is caught.
constexpr std::uint64_t kIn[kRegCount] = {
    0x0a11'0000'0000'00a0, 0x0a11'0000'0000'00b0, 0x0a11'0000'0000'00c0, 0x0a11'0000'0000'00d0,
    0x0a11'0000'0000'0051, 0x0a11'0000'0000'00d1, 0x0a11'0000'0000'00b9, 0x0a11'0000'0000'0008,
    0x0a11'0000'0000'0009, 0x0a11'0000'0000'0010, 0x0a11'0000'0000'0011, 0x0a11'0000'0000'0012,
    0x0a11'0000'0000'0013, 0x0a11'0000'0000'0014, 0x0a11'0000'0000'0015};

constexpr std::uint64_t kValueResult = 0x7e5a'17ed'0000'0042;

constexpr int kMaxFrames = 64;

// What the C functions behind the thunks saw. Plain fixed-size data: it is copied back from the
// child process that ran the call, and the functions may run on a misaligned stack if the thunk is
// broken, where they should report that rather than crash in an allocator.
struct Seen {
  int calls;
  std::uint64_t args[6];
  std::uintptr_t cfa;  ///< %rsp before the call into the function
  bool backtrace;      ///< whether to walk the stack (set by the test)
  int frames;
  std::uintptr_t ip[kMaxFrames];    ///< per frame, an address inside the call instruction
  std::uintptr_t func[kMaxFrames];  ///< per frame, the start of its FDE's function (0: none)
};

Seen g_seen;

_Unwind_Reason_Code record_frame(_Unwind_Context* context, void* arg) {
  auto* seen = static_cast<Seen*>(arg);
  if (seen->frames == kMaxFrames) return _URC_NORMAL_STOP;
  int before_insn = 0;
  std::uintptr_t ip = _Unwind_GetIPInfo(context, &before_insn);
  // A return address may be the first byte after its function; step back into the call.
  if (!before_insn && ip != 0) --ip;
  seen->ip[seen->frames] = ip;
  seen->func[seen->frames] =
      reinterpret_cast<std::uintptr_t>(_Unwind_FindEnclosingFunction(reinterpret_cast<void*>(ip)));
  ++seen->frames;
  return _URC_NO_REASON;
}

// Everything the thunk must make up for: the C function may change every caller-saved register.
// Written explicitly because a small C function often leaves most of them alone.
inline void trash_caller_saved_registers() {
  asm volatile(
      "xor %%eax, %%eax\n\t"  // the flags too
      "movabs $0xdead00000000000a, %%rax\n\t"
      "movabs $0xdead00000000000c, %%rcx\n\t"
      "movabs $0xdead00000000000d, %%rdx\n\t"
      "movabs $0xdead000000000051, %%rsi\n\t"
      "movabs $0xdead0000000000d1, %%rdi\n\t"
      "movabs $0xdead000000000008, %%r8\n\t"
      "movabs $0xdead000000000009, %%r9\n\t"
      "movabs $0xdead000000000010, %%r10\n\t"
      "movabs $0xdead000000000011, %%r11"
      :
      :
      : "rax", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11", "cc");
}

inline void record_call(std::uint64_t a0, std::uint64_t a1, std::uint64_t a2, std::uint64_t a3,
                        std::uint64_t a4, std::uint64_t a5, std::uintptr_t cfa) {
  ++g_seen.calls;
  g_seen.args[0] = a0;
  g_seen.args[1] = a1;
  g_seen.args[2] = a2;
  g_seen.args[3] = a3;
  g_seen.args[4] = a4;
  g_seen.args[5] = a5;
  g_seen.cfa = cfa;
  if (g_seen.backtrace) _Unwind_Backtrace(&record_frame, &g_seen);
}

}  // namespace

// The C functions behind the thunks: ordinary SysV functions with six arguments (used: only the
// thunks' assembly calls them).
extern "C" __attribute__((used)) void thunk_abi_test_void_c(std::uint64_t a0, std::uint64_t a1,
                                                            std::uint64_t a2, std::uint64_t a3,
                                                            std::uint64_t a4, std::uint64_t a5) {
  record_call(a0, a1, a2, a3, a4, a5, reinterpret_cast<std::uintptr_t>(__builtin_dwarf_cfa()));
  trash_caller_saved_registers();
}

extern "C" __attribute__((used)) std::uint64_t thunk_abi_test_value_c(
    std::uint64_t a0, std::uint64_t a1, std::uint64_t a2, std::uint64_t a3, std::uint64_t a4,
    std::uint64_t a5) {
  record_call(a0, a1, a2, a3, a4, a5, reinterpret_cast<std::uintptr_t>(__builtin_dwarf_cfa()));
  trash_caller_saved_registers();
  return kValueResult;
}

REPATCH_CALLEE_SAVE_THUNK(thunk_abi_test_void_thunk, thunk_abi_test_void_c, void);
REPATCH_CALLEE_SAVE_THUNK(thunk_abi_test_value_thunk, thunk_abi_test_value_c, value);

// thunk_abi_test_drive(thunk, in, out, misalign): calls `thunk` the way a site does, with every
// register i holding in[i] and %rsp % 16 == misalign (0 or 8) at the call, then stores every
// register to out->regs and %rsp before and after the call to out. Its own state lives in static
// storage reached through %rip, because after the call no register can be trusted to point
// anywhere: it restores %rsp from there too, so a thunk that returns with a wrong %rsp is reported
// instead of crashing the driver. While the thunk runs, %rbp is test data and %rsp has been
// realigned, so the CFA is recovered from a copy of the entry %rsp kept at 0(%rsp):
// DW_CFA_def_cfa_expression { DW_OP_breg7 0; DW_OP_deref; DW_OP_plus_uconst 56 }.
extern "C" void thunk_abi_test_drive(void (*thunk)(), const std::uint64_t* in, DriverOut* out,
                                     std::uint64_t misalign);
extern "C" void thunk_abi_test_drive_end();  // the first byte after the driver
asm(R"(
  .pushsection .text, "ax", @progbits
  .globl thunk_abi_test_drive
  .hidden thunk_abi_test_drive
  .type thunk_abi_test_drive, @function
thunk_abi_test_drive:
  .cfi_startproc
  push %rbp
  .cfi_def_cfa_offset 16
  .cfi_offset %rbp, -16
  push %rbx
  .cfi_def_cfa_offset 24
  .cfi_offset %rbx, -24
  push %r12
  .cfi_def_cfa_offset 32
  .cfi_offset %r12, -32
  push %r13
  .cfi_def_cfa_offset 40
  .cfi_offset %r13, -40
  push %r14
  .cfi_def_cfa_offset 48
  .cfi_offset %r14, -48
  push %r15
  .cfi_def_cfa_offset 56
  .cfi_offset %r15, -56
  mov %rsp, %rax
  .cfi_def_cfa_register %rax
  mov %rax, thunk_abi_test_saved_rsp(%rip)
  mov %rdi, thunk_abi_test_target(%rip)
  mov %rdx, thunk_abi_test_out(%rip)
  and $-16, %rsp
  sub %rcx, %rsp
  sub $16, %rsp
  mov %rax, (%rsp)
  .cfi_escape 0x0f, 0x05, 0x77, 0x00, 0x06, 0x23, 0x38
  mov %rsp, 120(%rdx)
  mov 0(%rsi), %rax
  mov 8(%rsi), %rbx
  mov 16(%rsi), %rcx
  mov 24(%rsi), %rdx
  mov 40(%rsi), %rdi
  mov 48(%rsi), %rbp
  mov 56(%rsi), %r8
  mov 64(%rsi), %r9
  mov 72(%rsi), %r10
  mov 80(%rsi), %r11
  mov 88(%rsi), %r12
  mov 96(%rsi), %r13
  mov 104(%rsi), %r14
  mov 112(%rsi), %r15
  mov 32(%rsi), %rsi
  call *thunk_abi_test_target(%rip)
  mov %rax, thunk_abi_test_rax(%rip)
  mov thunk_abi_test_out(%rip), %rax
  mov %rbx, 8(%rax)
  mov %rcx, 16(%rax)
  mov %rdx, 24(%rax)
  mov %rsi, 32(%rax)
  mov %rdi, 40(%rax)
  mov %rbp, 48(%rax)
  mov %r8, 56(%rax)
  mov %r9, 64(%rax)
  mov %r10, 72(%rax)
  mov %r11, 80(%rax)
  mov %r12, 88(%rax)
  mov %r13, 96(%rax)
  mov %r14, 104(%rax)
  mov %r15, 112(%rax)
  mov %rsp, 128(%rax)
  mov thunk_abi_test_rax(%rip), %rbx
  mov %rbx, 0(%rax)
  mov thunk_abi_test_saved_rsp(%rip), %rsp
  .cfi_def_cfa %rsp, 56
  pop %r15
  .cfi_def_cfa_offset 48
  .cfi_restore %r15
  pop %r14
  .cfi_def_cfa_offset 40
  .cfi_restore %r14
  pop %r13
  .cfi_def_cfa_offset 32
  .cfi_restore %r13
  pop %r12
  .cfi_def_cfa_offset 24
  .cfi_restore %r12
  pop %rbx
  .cfi_def_cfa_offset 16
  .cfi_restore %rbx
  pop %rbp
  .cfi_def_cfa_offset 8
  .cfi_restore %rbp
  ret
  .cfi_endproc
  .globl thunk_abi_test_drive_end
  .hidden thunk_abi_test_drive_end
thunk_abi_test_drive_end:
  .size thunk_abi_test_drive, . - thunk_abi_test_drive
  .pushsection .bss
  .balign 8
thunk_abi_test_saved_rsp: .zero 8
thunk_abi_test_target: .zero 8
thunk_abi_test_out: .zero 8
thunk_abi_test_rax: .zero 8
  .popsection
  .popsection
)");

namespace {

enum class Kind { kVoid, kValue };

constexpr Kind kKinds[] = {Kind::kVoid, Kind::kValue};
constexpr std::uint64_t kMisalignments[] = {0, 8};

struct Observed {
  DriverOut out;
  Seen seen;
};

// Runs the driver once, in a child process: a broken thunk may return to a wrong address, or send
// the unwinder through garbage, and that must fail the test with a message rather than end the
// whole test program. Returns nothing (and records a failure) if the child did not finish.
std::optional<Observed> drive(Kind kind, std::uint64_t misalign, bool backtrace = false) {
  void* shared =
      mmap(nullptr, sizeof(Observed), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (shared == MAP_FAILED) {
    ADD_FAILURE() << "mmap: " << repatch::text::errno_text(errno);
    return std::nullopt;
  }
  const pid_t child = fork();
  if (child == 0) {
    alarm(10);  // a thunk that loops forever fails too
    g_seen = {};
    g_seen.backtrace = backtrace;
    auto* observed = static_cast<Observed*>(shared);
    thunk_abi_test_drive(
        kind == Kind::kVoid ? &thunk_abi_test_void_thunk : &thunk_abi_test_value_thunk, kIn,
        &observed->out, misalign);
    observed->seen = g_seen;
    _exit(0);
  }
  std::optional<Observed> result;
  int status = 0;
  if (child < 0) {
    ADD_FAILURE() << "fork: " << repatch::text::errno_text(errno);
  } else if (waitpid(child, &status, 0) != child) {
    ADD_FAILURE() << "waitpid: " << repatch::text::errno_text(errno);
  } else if (WIFSIGNALED(status)) {
    ADD_FAILURE() << "the call through the thunk died of signal " << WTERMSIG(status) << " ("
                  << strsignal(WTERMSIG(status)) << ")";
  } else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    ADD_FAILURE() << "the child running the thunk failed, wait status " << status;
  } else {
    result = *static_cast<const Observed*>(shared);
  }
  munmap(shared, sizeof(Observed));
  return result;
}

std::string describe(Kind kind, std::uint64_t misalign) {
  return std::string(kind == Kind::kVoid ? "void" : "value") +
         " thunk, %rsp % 16 == " + std::to_string(misalign) + " at the call";
}

TEST(ThunkAbi, DriverCallsFromTheRequestedAlignment) {
  // Checks the harness itself: the other tests mean nothing unless both alignments are exercised.
  for (Kind kind : kKinds) {
    for (std::uint64_t misalign : kMisalignments) {
      SCOPED_TRACE(describe(kind, misalign));
      const std::optional<Observed> o = drive(kind, misalign);
      ASSERT_TRUE(o.has_value());
      EXPECT_EQ(o->out.rsp_before % 16, misalign);
      EXPECT_EQ(o->seen.calls, 1) << "the thunk did not call its function exactly once";
    }
  }
}

TEST(ThunkAbi, VoidThunkPreservesEveryRegister) {
  for (std::uint64_t misalign : kMisalignments) {
    SCOPED_TRACE(describe(Kind::kVoid, misalign));
    const std::optional<Observed> o = drive(Kind::kVoid, misalign);
    ASSERT_TRUE(o.has_value());
    for (int r = 0; r < kRegCount; ++r)
      EXPECT_EQ(o->out.regs[r], kIn[r]) << "%" << kRegName[r] << " changed across the site";
  }
}

TEST(ThunkAbi, ValueThunkReturnsInRaxAndPreservesTheRest) {
  for (std::uint64_t misalign : kMisalignments) {
    SCOPED_TRACE(describe(Kind::kValue, misalign));
    const std::optional<Observed> o = drive(Kind::kValue, misalign);
    ASSERT_TRUE(o.has_value());
    EXPECT_EQ(o->out.regs[kRax], kValueResult) << "%rax is not the function's result";
    for (int r = 0; r < kRegCount; ++r) {
      if (r == kRax) continue;
      EXPECT_EQ(o->out.regs[r], kIn[r]) << "%" << kRegName[r] << " changed across the site";
    }
  }
}

TEST(ThunkAbi, StackPointerIsRestored) {
  for (Kind kind : kKinds) {
    for (std::uint64_t misalign : kMisalignments) {
      SCOPED_TRACE(describe(kind, misalign));
      const std::optional<Observed> o = drive(kind, misalign);
      ASSERT_TRUE(o.has_value());
      EXPECT_EQ(o->out.rsp_after, o->out.rsp_before);
    }
  }
}

TEST(ThunkAbi, FunctionRunsOnSysVAlignedStack) {
  // SysV: %rsp % 16 == 0 at the call into a function, i.e. its CFA is 16-byte aligned. A site may
  // sit at either alignment (compiled code calls with rsp%16==0, a hand-written caller or a leaf
  // function's body need not), so the thunk must realign for both.
  for (Kind kind : kKinds) {
    for (std::uint64_t misalign : kMisalignments) {
      SCOPED_TRACE(describe(kind, misalign));
      const std::optional<Observed> o = drive(kind, misalign);
      ASSERT_TRUE(o.has_value());
      ASSERT_EQ(o->seen.calls, 1);
      EXPECT_EQ(o->seen.cfa % 16, 0u) << "the function was called with a misaligned stack";
      // The thunk's frame lies below the site's stack, never on top of what the site's caller owns.
      EXPECT_LT(o->seen.cfa, o->out.rsp_before);
    }
  }
}

TEST(ThunkAbi, ArgumentsPassThroughUnchanged) {
  constexpr Reg kArgRegs[6] = {kRdi, kRsi, kRdx, kRcx, kR8, kR9};
  for (Kind kind : kKinds) {
    for (std::uint64_t misalign : kMisalignments) {
      SCOPED_TRACE(describe(kind, misalign));
      const std::optional<Observed> o = drive(kind, misalign);
      ASSERT_TRUE(o.has_value());
      ASSERT_EQ(o->seen.calls, 1);
      for (int i = 0; i < 6; ++i)
        EXPECT_EQ(o->seen.args[i], kIn[kArgRegs[i]])
            << "argument " << i << " (%" << kRegName[kArgRegs[i]] << ")";
    }
  }
}

TEST(ThunkAbi, UnwinderPassesThroughThunk) {
  // Debuggers, profilers and C++ exceptions unwind through a thunk with its CFI alone. Walking the
  // stack from inside the function must find the thunk's frame and, right after it, the driver's
  // call: only a correct CFA rule for every instruction of the thunk leads there.
  const auto drive_begin = reinterpret_cast<std::uintptr_t>(&thunk_abi_test_drive);
  const auto drive_end = reinterpret_cast<std::uintptr_t>(&thunk_abi_test_drive_end);
  for (Kind kind : kKinds) {
    for (std::uint64_t misalign : kMisalignments) {
      SCOPED_TRACE(describe(kind, misalign));
      const auto thunk = reinterpret_cast<std::uintptr_t>(
          kind == Kind::kVoid ? &thunk_abi_test_void_thunk : &thunk_abi_test_value_thunk);
      const std::optional<Observed> o = drive(kind, misalign, /*backtrace=*/true);
      ASSERT_TRUE(o.has_value());
      ASSERT_EQ(o->seen.calls, 1);
      int thunk_frame = -1;
      for (int f = 0; f < o->seen.frames && thunk_frame < 0; ++f)
        if (o->seen.func[f] == thunk) thunk_frame = f;
      ASSERT_GE(thunk_frame, 0) << "the backtrace has no frame in the thunk (" << o->seen.frames
                                << " frames)";
      ASSERT_LT(thunk_frame + 1, o->seen.frames) << "the backtrace stops at the thunk";
      const std::uintptr_t caller = o->seen.ip[thunk_frame + 1];
      EXPECT_TRUE(caller >= drive_begin && caller < drive_end)
          << "the frame above the thunk is not the driver: 0x" << std::hex << caller
          << ", driver is [0x" << drive_begin << ", 0x" << drive_end << ")";
    }
  }
}

}  // namespace
