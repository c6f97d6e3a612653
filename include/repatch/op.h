// Declaring ops, their variants, the groups they switch in, and their call sites.
//
// An *op* is a hot low-level operation (a spinlock release, a TLB flush) whose implementation is
// chosen at run time. Each op belongs to exactly one *group*: the set of ops that must always run
// the same *variant* (a native lock release must never pair with a paravirt acquire). A *site* is
// one place in the code that runs an op; it is a single instruction of the op's fixed length:
//
//   before boot      cs ... cs call *repatch_slot_<op>(%rip)   (works with no patching at all)
//   inline variant   cs ... cs movb $0, (%rdi)                  (the op's body, in place)
//   call variant     cs ... cs call <target>                    (a direct call)
//
// Because every variant is one instruction that fills the site, a thread that is interrupted or
// preempted is always at the start or the end of a site, never inside one.
//
// The op ABI is callee-save: a site preserves every general-purpose register except the outputs it
// declares, and the stack pointer. Flags, vector registers (xmm0-15) and memory are clobbered. An
// inline variant therefore costs what the same instruction written by hand costs. When the code is
// built with AVX-512, xmm16-31 and k1-k7 are clobbered too. A call variant
// targets code that keeps that promise: a hand-written assembly routine, or a C function wrapped
// by REPATCH_CALLEE_SAVE_THUNK. x87 state must not be live across a site.
//
// Code that contains sites must be built without a red zone (a call pushes below %rsp behind the
// compiler's back): use the CMake helper repatch_site_code(<target>).
//
// Use (names are C identifiers, global across the program):
//
//   // in a header
//   REPATCH_DECLARE_GROUP(demo_lock);
//   REPATCH_DECLARE_OP(demo_release, 8);   // 8-byte sites
//   inline void demo_release(Lock* l) { REPATCH_SITE(demo_release, (), "D"(l)); }
//
//   // in exactly one .cpp, all together (a linker drops unreferenced objects of a static library)
//   REPATCH_DEFINE_GROUP(demo_lock, 0, "native", "pv");       // the first variant is the default
//   REPATCH_DEFINE_OP(demo_release, demo_lock, native);       // slot starts at the native variant
//   REPATCH_INLINE_VARIANT(demo_release, native, "movb $0, (%rdi)");
//   extern "C" void demo_pv_release_c(Lock* l);
//   REPATCH_CALLEE_SAVE_THUNK(demo_pv_release_thunk, demo_pv_release_c, void);
//   REPATCH_CALL_VARIANT(demo_release, pv, demo_pv_release_thunk);
//
// boot() checks everything the compiler could not: every op has exactly one variant for each of
// its group's variants, every image is one allowed instruction of the site length, and every site
// holds the bytes it should.
#ifndef REPATCH_OP_H_
#define REPATCH_OP_H_

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace repatch::abi {

// The records below are read by the engine from dedicated ELF sections. Their layout is part of the
// ABI between code that declares sites and the library that patches them.

/// Group flag: the group's variants may replace each other at any instant without stopping other
/// vCPUs (feature alternatives whose old and new code are both correct at once).
inline constexpr std::uint32_t kGroupInterchangeable = 1u << 0;

/// Groups whose in-op depth threads track (repatch/in_op.h): the first this many the catalog
/// lists. A switch of a group beyond them stops the machine.
inline constexpr std::size_t kMaxTrackedGroups = 32;
/// GroupRuntime::tracked_index of a group that is not tracked (before boot, or beyond the first
/// kMaxTrackedGroups).
inline constexpr std::uint8_t kUntrackedGroup = 0xff;

/// What the engine writes about a group at boot, beside its read-only descriptor.
struct GroupRuntime {
  /// The group's index in every thread's in-op depths, or kUntrackedGroup. Stored once by boot()
  /// (release, after the group's phase word is settled); read by OpInFlight on entry.
  std::atomic<std::uint8_t> tracked_index{kUntrackedGroup};
};

struct GroupDesc {
  const char* name;
  const char* const* variants;  ///< variant names; [0] is the default
  std::uint32_t variant_count;
  std::uint32_t flags;  ///< kGroup* bits
  /// For a feature-keyed alternative: the CPU feature ("rtm", "clflushopt", ...) whose presence
  /// selects variants[1] and whose absence selects variants[0]. Null for other groups.
  const char* feature;
  GroupRuntime* runtime;  ///< the group's runtime record, defined with it
};

struct OpDesc {
  const char* name;
  const GroupDesc* group;
  void** slot;               ///< target of the unpatched `call *slot(%rip)`
  std::uint8_t site_length;  ///< every site of this op is this long
};

enum class VariantKind : std::uint8_t { kInline = 1, kCall = 2 };

struct VariantDesc {
  const OpDesc* op;
  const char* name;  ///< one of op->group->variants
  VariantKind kind;
  /// kInline: the one instruction, as assembled at `fragment` (relocated when copied to a site).
  const std::uint8_t* fragment;
  const std::uint8_t* fragment_end;
  /// A function with the op ABI that does what the variant does: for kCall the call target, for
  /// kInline the fragment followed by RET. The op slot points at it while this variant is current.
  void (*callable)();
};

/// One site, in section `repatch_sites`. Both fields are offsets from the field's own address, so
/// the section needs no run-time relocation and is the same in every process.
struct SiteRecord {
  std::int32_t site;  ///< to the first byte of the site
  std::int32_t op;    ///< to the op's OpDesc
};
static_assert(sizeof(SiteRecord) == 8);

/// One object's declarations: the bounds of its repatch sections (the executable's, or a shared
/// object's). Every object that includes this header hands its own to the engine from a
/// constructor that runs before the object's other constructors (below), and takes them back from
/// a destructor that runs after its other destructors: the engine finds sites in shared objects
/// loaded before boot at boot, and in those loaded later with dlopen() as they load.
struct ObjectSections {
  std::uint32_t abi_version;  ///< kObjectAbiVersion of the header the object was built with
  std::uint32_t reserved;
  const GroupDesc* const* groups_begin;
  const GroupDesc* const* groups_end;
  const OpDesc* const* ops_begin;
  const OpDesc* const* ops_end;
  const VariantDesc* const* variants_begin;
  const VariantDesc* const* variants_end;
  const SiteRecord* sites_begin;
  const SiteRecord* sites_end;
};
inline constexpr std::uint32_t kObjectAbiVersion = 1;

}  // namespace repatch::abi

extern "C" {
/// Called by each object's constructor with its sections (once per translation unit; the engine
/// keeps the first call). Before boot it records the object; after boot it brings the object's
/// sites into their groups' current variants, or refuses the object (Engine::modules() says why)
/// and leaves its sites unusable: each runs a refusal trap that names the object and aborts.
void repatch_abi_object_loaded(const repatch::abi::ObjectSections* object);
/// Called by each object's destructor: takes its sites out of the engine, waiting for a switch in
/// progress. Once it returns, no switch writes into the object and no #BP lookup reads its table.
void repatch_abi_object_unloading(const repatch::abi::ObjectSections* object);

// The linker defines __start_/__stop_ symbols for every section whose name is a C identifier,
// one pair per object (hidden). Weak: an object without some section still links (null then).
#define REPATCH_DETAIL_SECTION_BOUNDS(kind, type)                                         \
  extern __attribute__((weak, visibility("hidden"))) type const __start_repatch_##kind[]; \
  extern __attribute__((weak, visibility("hidden"))) type const __stop_repatch_##kind[];
REPATCH_DETAIL_SECTION_BOUNDS(groups, const repatch::abi::GroupDesc*)
REPATCH_DETAIL_SECTION_BOUNDS(ops, const repatch::abi::OpDesc*)
REPATCH_DETAIL_SECTION_BOUNDS(variants, const repatch::abi::VariantDesc*)
REPATCH_DETAIL_SECTION_BOUNDS(sites, repatch::abi::SiteRecord)
#undef REPATCH_DETAIL_SECTION_BOUNDS
}

namespace repatch::abi::detail {
/// This object's sections: one copy per object (an inline variable, hidden, so that every
/// translation unit of the object shares it and no other object's replaces it).
__attribute__((visibility("hidden"))) inline constexpr ObjectSections kThisObject = {
    kObjectAbiVersion,        0,
    __start_repatch_groups,   __stop_repatch_groups,
    __start_repatch_ops,      __stop_repatch_ops,
    __start_repatch_variants, __stop_repatch_variants,
    __start_repatch_sites,    __stop_repatch_sites};
}  // namespace repatch::abi::detail

// Every translation unit that includes this header registers its object: the engine cannot tell
// which of them hold sites, and a site it does not know would run its default variant for ever.
// Priority 101, the first user priority: the sites are patched before the object's own
// constructors run (they may run sites), and taken out after its destructors.
// NOLINTBEGIN(misc-definitions-in-headers,cert-dcl59-cpp,google-build-namespaces)
namespace {
[[gnu::constructor(101), gnu::used]] void repatch_detail_register_this_object() {
  repatch_abi_object_loaded(&::repatch::abi::detail::kThisObject);
}
[[gnu::destructor(101), gnu::used]] void repatch_detail_unregister_this_object() {
  repatch_abi_object_unloading(&::repatch::abi::detail::kThisObject);
}
}  // namespace
// NOLINTEND(misc-definitions-in-headers,cert-dcl59-cpp,google-build-namespaces)

// ---- implementation details of the macros ----------------------------------------------------
// The assembly below is laid out one directive per line on purpose.
// clang-format off

#define REPATCH_DETAIL_STR2(x) #x
#define REPATCH_DETAIL_STR(x) REPATCH_DETAIL_STR2(x)
#define REPATCH_DETAIL_UNWRAP(...) __VA_ARGS__
#define REPATCH_DETAIL_USED __attribute__((used))
#define REPATCH_DETAIL_HIDDEN __attribute__((visibility("hidden")))

// Registers a descriptor by placing a pointer to it in section `repatch_<kind>`; the engine walks
// the section between the linker-made __start_/__stop_ symbols.
// Hidden, like every symbol the macros define: each object (the program, each shared object) has
// its own copy, which another object's must never interpose.
#define REPATCH_DETAIL_REGISTER(kind, type, ident)                                        \
  extern "C" REPATCH_DETAIL_USED REPATCH_DETAIL_HIDDEN                                    \
  __attribute__((section("repatch_" #kind), aligned(8)))                                 \
  const ::repatch::abi::type* const repatch_##kind##_ptr_##ident = &ident

// ---- groups ----------------------------------------------------------------------------------

/// Declares a group defined elsewhere with REPATCH_DEFINE_GROUP.
#define REPATCH_DECLARE_GROUP(group) \
  extern "C" REPATCH_DETAIL_HIDDEN const ::repatch::abi::GroupDesc repatch_group_##group

#define REPATCH_DETAIL_DEFINE_GROUP(group, flags, feature, ...)                              \
  static const char* const repatch_group_variants_##group[] = {__VA_ARGS__};                \
  static ::repatch::abi::GroupRuntime repatch_group_runtime_##group;                        \
  extern "C" const ::repatch::abi::GroupDesc repatch_group_##group = {                      \
      #group, repatch_group_variants_##group,                                               \
      sizeof(repatch_group_variants_##group) / sizeof(repatch_group_variants_##group[0]),   \
      (flags), (feature), &repatch_group_runtime_##group};                                  \
  REPATCH_DETAIL_REGISTER(groups, GroupDesc, repatch_group_##group)

/// Defines group `group` with `flags` (0 or abi::kGroup* bits) and its variant names; the first is
/// the default, the variant every site runs before boot().
#define REPATCH_DEFINE_GROUP(group, flags, ...) \
  REPATCH_DETAIL_DEFINE_GROUP(group, flags, nullptr, __VA_ARGS__)

/// Defines a feature-keyed alternative: group `group` has two variants, `without` (the default,
/// correct on every CPU) and `with` (needs CPU feature `feature`: one of "clflushopt", "hle",
/// "rdpid", "rdtscp", "rtm", "serialize"). boot() picks `with` when the CPU reports the feature,
/// unless the boot options name the group.
#define REPATCH_DEFINE_FEATURE_GROUP(group, flags, feature, without, with) \
  REPATCH_DETAIL_DEFINE_GROUP(group, flags, feature, without, with)

// ---- ops -------------------------------------------------------------------------------------

/// Declares op `op` whose sites are `length` bytes (6 to 15: the unpatched indirect call needs 6).
#define REPATCH_DECLARE_OP(op, length)                                            \
  extern "C" REPATCH_DETAIL_HIDDEN void* repatch_slot_##op;                       \
  extern "C" REPATCH_DETAIL_HIDDEN const ::repatch::abi::OpDesc repatch_op_##op;  \
  inline constexpr std::uint8_t repatch_op_length_##op = (length);                \
  static_assert((length) >= 6 && (length) <= 15,                                  \
                "a site holds one instruction: 6 (indirect call) to 15 bytes")

/// Defines op `op` (declared with REPATCH_DECLARE_OP) in group `group`. `default_variant` must be
/// the group's first variant: the op slot starts at its callable, so unpatched sites run it.
#define REPATCH_DEFINE_OP(op, group, default_variant)                                        \
  extern "C" void repatch_callable_##op##__##default_variant();                              \
  extern "C" {                                                                               \
  void* repatch_slot_##op = reinterpret_cast<void*>(&repatch_callable_##op##__##default_variant); \
  }                                                                                          \
  extern "C" const ::repatch::abi::OpDesc repatch_op_##op = {                                \
      #op, &repatch_group_##group, &repatch_slot_##op, repatch_op_length_##op};              \
  REPATCH_DETAIL_REGISTER(ops, OpDesc, repatch_op_##op)

// ---- variants --------------------------------------------------------------------------------

/// Variant `variant` of `op` is the single instruction `insn` (AT&T syntax), copied into every site
/// and padded with CS prefixes. RIP-relative operands are relocated. The instruction must not use
/// the stack pointer: its callable form (insn; ret) runs with %rsp 8 bytes lower. A variable that
/// only `insn` references must be marked __attribute__((used)), or link-time optimisation, which
/// cannot see into assembly, may drop it.
#define REPATCH_INLINE_VARIANT(op, variant, insn)                                            \
  asm(".pushsection repatch_fragments, \"a\"\n"                                              \
      ".globl repatch_fragment_" #op "__" #variant "\n"                                      \
      ".hidden repatch_fragment_" #op "__" #variant "\n"                                     \
      ".globl repatch_fragment_end_" #op "__" #variant "\n"                                  \
      ".hidden repatch_fragment_end_" #op "__" #variant "\n"                                 \
      "repatch_fragment_" #op "__" #variant ":\n"                                            \
      "\t" insn "\n"                                                                         \
      "repatch_fragment_end_" #op "__" #variant ":\n"                                        \
      ".popsection\n"                                                                        \
      ".pushsection .text.repatch_callable, \"ax\", @progbits\n"                             \
      ".globl repatch_callable_" #op "__" #variant "\n"                                      \
      ".hidden repatch_callable_" #op "__" #variant "\n"                                     \
      ".type repatch_callable_" #op "__" #variant ", @function\n"                            \
      "repatch_callable_" #op "__" #variant ":\n"                                            \
      "\t.cfi_startproc\n"                                                                   \
      "\t" insn "\n"                                                                         \
      "\tret\n"                                                                              \
      "\t.cfi_endproc\n"                                                                     \
      ".size repatch_callable_" #op "__" #variant ", . - repatch_callable_" #op "__" #variant "\n" \
      ".popsection\n");                                                                      \
  extern "C" const std::uint8_t repatch_fragment_##op##__##variant[];                        \
  extern "C" const std::uint8_t repatch_fragment_end_##op##__##variant[];                    \
  extern "C" void repatch_callable_##op##__##variant();                                      \
  extern "C" REPATCH_DETAIL_HIDDEN const ::repatch::abi::VariantDesc                          \
      repatch_variant_##op##__##variant = {                                                  \
      &repatch_op_##op,                                                                      \
      #variant,                                                                              \
      ::repatch::abi::VariantKind::kInline,                                                  \
      repatch_fragment_##op##__##variant,                                                    \
      repatch_fragment_end_##op##__##variant,                                                \
      &repatch_callable_##op##__##variant};                                                  \
  REPATCH_DETAIL_REGISTER(variants, VariantDesc, repatch_variant_##op##__##variant)

/// Variant `variant` of `op` is `call target`, where `target` is an extern "C" function that keeps
/// the op ABI (hand-written assembly, or a REPATCH_CALLEE_SAVE_THUNK).
// `target` is a name, not an expression, so it cannot be parenthesised.
// NOLINTBEGIN(bugprone-macro-parentheses)
#define REPATCH_CALL_VARIANT(op, variant, target)                                            \
  extern "C" void target();                                                                  \
  asm(".globl repatch_callable_" #op "__" #variant "\n"                                      \
      ".hidden repatch_callable_" #op "__" #variant "\n"                                     \
      ".set repatch_callable_" #op "__" #variant ", " #target "\n");                         \
  extern "C" void repatch_callable_##op##__##variant();                                      \
  extern "C" REPATCH_DETAIL_HIDDEN const ::repatch::abi::VariantDesc                          \
      repatch_variant_##op##__##variant = {                                                  \
      &repatch_op_##op, #variant, ::repatch::abi::VariantKind::kCall, nullptr, nullptr,      \
      &target};                                                                              \
  REPATCH_DETAIL_REGISTER(variants, VariantDesc, repatch_variant_##op##__##variant)
// NOLINTEND(bugprone-macro-parentheses)

// ---- callee-save thunks ----------------------------------------------------------------------

#define REPATCH_DETAIL_THUNK_SAVE_RAX_void "\tpush %rax\n"
#define REPATCH_DETAIL_THUNK_SAVE_RAX_value ""
#define REPATCH_DETAIL_THUNK_RESTORE_RAX_void "\tpop %rax\n"
#define REPATCH_DETAIL_THUNK_RESTORE_RAX_value ""
// Bytes of saved registers below the frame pointer: nine with %rax, eight without.
#define REPATCH_DETAIL_THUNK_SAVED_void "72"
#define REPATCH_DETAIL_THUNK_SAVED_value "64"

/// Defines `thunk`, an extern "C" function with the op ABI that calls the ordinary extern "C"
/// function `function` (declared before this macro) with the op's arguments (%rdi, %rsi, %rdx,
/// %rcx, %r8, %r9 pass through). `result` is `value` when the op returns its result in %rax,
/// `void` when it returns nothing (then %rax is preserved too). The thunk aligns the stack for
/// `function`, whatever %rsp was at the site, and carries unwind information. The call is direct
/// (an indirect call costs several times more under Spectre v2 mitigations), so under link-time
/// optimisation, which cannot see calls written in assembly, declare `function`
/// __attribute__((used)), or LTO may rename it and the link fails.
#define REPATCH_CALLEE_SAVE_THUNK(thunk, function, result)                                   \
  extern "C" void thunk();                                                                   \
  asm(".pushsection .text.repatch_thunks, \"ax\", @progbits\n"                               \
      ".globl " #thunk "\n"                                                                  \
      ".hidden " #thunk "\n"                                                                 \
      ".type " #thunk ", @function\n"                                                        \
      #thunk ":\n"                                                                           \
      "\t.cfi_startproc\n"                                                                   \
      "\tpush %rbp\n"                                                                        \
      "\t.cfi_def_cfa_offset 16\n"                                                           \
      "\t.cfi_offset %rbp, -16\n"                                                            \
      "\tmov %rsp, %rbp\n"                                                                   \
      "\t.cfi_def_cfa_register %rbp\n"                                                       \
      REPATCH_DETAIL_THUNK_SAVE_RAX_##result                                                 \
      "\tpush %rcx\n\tpush %rdx\n\tpush %rsi\n\tpush %rdi\n"                                 \
      "\tpush %r8\n\tpush %r9\n\tpush %r10\n\tpush %r11\n"                                   \
      "\tand $-16, %rsp\n"                                                                   \
      "\tcall " #function "@PLT\n"                                                           \
      "\tlea -" REPATCH_DETAIL_THUNK_SAVED_##result "(%rbp), %rsp\n"                         \
      "\tpop %r11\n\tpop %r10\n\tpop %r9\n\tpop %r8\n"                                       \
      "\tpop %rdi\n\tpop %rsi\n\tpop %rdx\n\tpop %rcx\n"                                     \
      REPATCH_DETAIL_THUNK_RESTORE_RAX_##result                                              \
      "\tpop %rbp\n"                                                                         \
      "\t.cfi_def_cfa %rsp, 8\n"                                                             \
      "\tret\n"                                                                              \
      "\t.cfi_endproc\n"                                                                     \
      ".size " #thunk ", . - " #thunk "\n"                                                   \
      ".popsection\n")

// ---- sites -----------------------------------------------------------------------------------

// What the op ABI does not preserve: flags, memory, and every vector and mask register that the
// System V ABI lets a called function change (the C function behind a thunk may use them all).
#if defined(__AVX512F__)
#define REPATCH_DETAIL_SITE_CLOBBERS_AVX512                                                   \
  , "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22", "xmm23", "xmm24", "xmm25", \
    "xmm26", "xmm27", "xmm28", "xmm29", "xmm30", "xmm31", "k1", "k2", "k3", "k4", "k5", "k6", "k7"
#else
#define REPATCH_DETAIL_SITE_CLOBBERS_AVX512
#endif
#define REPATCH_DETAIL_SITE_CLOBBERS                                                          \
  "memory", "cc", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8",     \
  "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15" REPATCH_DETAIL_SITE_CLOBBERS_AVX512

/// A site of `op`: emits the unpatched instruction (`call *repatch_slot_<op>(%rip)`, padded to the
/// op's length) and its record. `outputs` is a parenthesised list of asm output operands, empty or
/// not: `()`, `("=a"(result))`, `("=a"(lo), "=d"(hi))`. The rest are input operands, e.g.
/// `"D"(lock)`. Use it inside an inline function per op. The record is emitted into the current
/// function's section group ("?"), so that a function kept once out of several copies (an inline
/// function emitted out of line in many translation units) keeps exactly one record.
#define REPATCH_SITE(op, outputs, ...)                                                      \
  asm inline volatile(                                                                      \
      "661:\n\t"                                                                            \
      ".fill %c[repatch_pad], 1, 0x2e\n\t"                                                  \
      "call *%P[repatch_slot](%%rip)\n"                                                     \
      "662:\n\t"                                                                            \
      ".if (662b - 661b) - %c[repatch_len]\n\t"                                             \
      ".error \"repatch: site of " #op " is not exactly its op's length\"\n\t"              \
      ".endif\n\t"                                                                          \
      ".pushsection repatch_sites, \"a?\"\n\t"                                              \
      ".balign 4\n\t"                                                                       \
      ".long 661b - .\n\t"                                                                  \
      ".long %P[repatch_op] - .\n\t"                                                        \
      ".popsection"                                                                         \
      : REPATCH_DETAIL_UNWRAP outputs                                                       \
      : [repatch_slot] "i"(&repatch_slot_##op), [repatch_op] "i"(&repatch_op_##op),         \
        [repatch_pad] "i"(repatch_op_length_##op - 6),                                      \
        [repatch_len] "i"(repatch_op_length_##op) __VA_OPT__(, ) __VA_ARGS__                \
      : REPATCH_DETAIL_SITE_CLOBBERS)

// clang-format on
#endif  // REPATCH_OP_H_
