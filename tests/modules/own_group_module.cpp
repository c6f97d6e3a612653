// A module with a group of its own, unknown to the program: `mod_pair`, whose two ops return the
// group's variant number.
#include "repatch/in_op.h"
#include "repatch/op.h"

REPATCH_DECLARE_GROUP(mod_pair);
REPATCH_DECLARE_OP(mod_first, 8);
REPATCH_DECLARE_OP(mod_second, 8);
REPATCH_DEFINE_GROUP(mod_pair, 0, "low", "high");
REPATCH_DEFINE_OP(mod_first, mod_pair, low);
REPATCH_DEFINE_OP(mod_second, mod_pair, low);
REPATCH_INLINE_VARIANT(mod_first, low, "movl $1, %eax");
REPATCH_INLINE_VARIANT(mod_first, high, "movl $2, %eax");
REPATCH_INLINE_VARIANT(mod_second, low, "movl $1, %eax");
REPATCH_INLINE_VARIANT(mod_second, high, "movl $2, %eax");

extern "C" int module_own_pass() {
  const repatch::OpInFlight in_op(repatch_group_mod_pair);
  int first;
  int second;
  REPATCH_SITE(mod_first, ("=a"(first)));
  REPATCH_SITE(mod_second, ("=a"(second)));
  return first == second ? first : -1;
}
