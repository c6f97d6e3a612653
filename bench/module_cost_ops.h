// The op that module_cost measures, declared by the program and by each of its modules (every
// object defines its own copy with MODULE_COST_DEFINE_OPS; the engine matches them by name).
//
//   group module_cost {inline, call}
//     module_cost_store(p)   inline: movb $0, (%rdi)     call: call module_cost_store_zero
//
// module_cost_store_zero is per object (hidden), within a rel32 of the object's sites.
#ifndef REPATCH_BENCH_MODULE_COST_OPS_H_
#define REPATCH_BENCH_MODULE_COST_OPS_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <utility>

#include "repatch/op.h"

REPATCH_DECLARE_GROUP(module_cost);
REPATCH_DECLARE_OP(module_cost_store, 8);

[[gnu::always_inline]] inline void module_cost_store(std::uint8_t* p) {
  REPATCH_SITE(module_cost_store, (), "D"(p));
}

// clang-format off
#define MODULE_COST_DEFINE_OPS()                                         \
  asm(".pushsection .text, \"ax\", @progbits\n"                          \
      ".p2align 4\n"                                                     \
      ".globl module_cost_store_zero\n"                                  \
      ".hidden module_cost_store_zero\n"                                 \
      ".type module_cost_store_zero, @function\n"                        \
      "module_cost_store_zero:\n"                                        \
      "\tmovb $0, (%rdi)\n"                                              \
      "\tret\n"                                                          \
      ".size module_cost_store_zero, . - module_cost_store_zero\n"       \
      ".popsection\n");                                                  \
  REPATCH_DEFINE_GROUP(module_cost, 0, "inline", "call");                \
  REPATCH_DEFINE_OP(module_cost_store, module_cost, inline);             \
  REPATCH_INLINE_VARIANT(module_cost_store, inline, "movb $0, (%rdi)");  \
  REPATCH_CALL_VARIANT(module_cost_store, call, module_cost_store_zero)

// `n` more sites of the op, one per instantiation of a function template (noinline, no_icf: each
// its own function, never merged), kept by a table.
#define MODULE_COST_SITES(n)                                                        \
  namespace {                                                                       \
  template <std::size_t I>                                                          \
  [[gnu::noinline, gnu::no_icf]] void module_cost_site(std::uint8_t* p) {           \
    module_cost_store(p);                                                           \
  }                                                                                 \
  template <std::size_t... I>                                                       \
  constexpr std::array<void (*)(std::uint8_t*), sizeof...(I)> module_cost_table(    \
      std::index_sequence<I...>) {                                                  \
    return {&module_cost_site<I>...};                                               \
  }                                                                                 \
  }                                                                                 \
  extern "C" __attribute__((used)) const std::array<void (*)(std::uint8_t*), n>     \
      module_cost_sites = module_cost_table(std::make_index_sequence<n>{})
// clang-format on

#endif  // REPATCH_BENCH_MODULE_COST_OPS_H_
