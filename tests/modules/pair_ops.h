// A group of two ops that tests declare in the program and again in shared objects: each object
// defines its own copy (PAIR_DEFINE_OPS, once per object), and the engine matches them by name.
// `pair_first` and `pair_second` return the group's variant number, so a caller sees whether the
// two ran the same variant.
#ifndef REPATCH_TESTS_MODULES_PAIR_OPS_H_
#define REPATCH_TESTS_MODULES_PAIR_OPS_H_

#include "repatch/op.h"

REPATCH_DECLARE_GROUP(pair);
REPATCH_DECLARE_OP(pair_first, 8);
REPATCH_DECLARE_OP(pair_second, 8);

inline int pair_first() {
  int v;
  REPATCH_SITE(pair_first, ("=a"(v)));
  return v;
}
inline int pair_second() {
  int v;
  REPATCH_SITE(pair_second, ("=a"(v)));
  return v;
}

// clang-format off
#define PAIR_DEFINE_OPS()                                     \
  REPATCH_DEFINE_GROUP(pair, 0, "one", "two");                \
  REPATCH_DEFINE_OP(pair_first, pair, one);                   \
  REPATCH_DEFINE_OP(pair_second, pair, one);                  \
  REPATCH_INLINE_VARIANT(pair_first, one, "movl $1, %eax");   \
  REPATCH_INLINE_VARIANT(pair_first, two, "movl $2, %eax");   \
  REPATCH_INLINE_VARIANT(pair_second, one, "movl $1, %eax");  \
  REPATCH_INLINE_VARIANT(pair_second, two, "movl $2, %eax")
// clang-format on

#endif  // REPATCH_TESTS_MODULES_PAIR_OPS_H_
