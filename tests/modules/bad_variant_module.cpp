// A module that declares the program's group `pair` with a variant the running group lacks: the
// engine refuses it, writing nothing.
#include "repatch/op.h"

REPATCH_DECLARE_GROUP(pair);
REPATCH_DECLARE_OP(pair_first, 8);
REPATCH_DEFINE_GROUP(pair, 0, "one", "three");
REPATCH_DEFINE_OP(pair_first, pair, one);
REPATCH_INLINE_VARIANT(pair_first, one, "movl $1, %eax");
REPATCH_INLINE_VARIANT(pair_first, three, "movl $3, %eax");

extern "C" int module_bad_first() {
  int v;
  REPATCH_SITE(pair_first, ("=a"(v)));
  return v;
}
