// A module that adds an op to the program's group `pair`, which the running group does not have:
// the engine refuses it, writing nothing.
#include "tests/modules/pair_ops.h"

REPATCH_DECLARE_OP(pair_third, 8);
PAIR_DEFINE_OPS();
REPATCH_DEFINE_OP(pair_third, pair, one);
REPATCH_INLINE_VARIANT(pair_third, one, "movl $1, %eax");
REPATCH_INLINE_VARIANT(pair_third, two, "movl $2, %eax");

extern "C" int module_third() {
  int v;
  REPATCH_SITE(pair_third, ("=a"(v)));
  return v;
}
