// A module of the consumer: a shared object with a group of its own, `pair`, whose two ops return
// the number of the group's variant. The consumer loads it with dlopen() after boot; the engine
// patches its sites as it loads (docs/modules.md). Built against the package's headers only: the
// engine it registers with is the program's.
#include <repatch/in_op.h>
#include <repatch/op.h>

REPATCH_DECLARE_GROUP(pair);
REPATCH_DECLARE_OP(pair_first, 8);
REPATCH_DECLARE_OP(pair_second, 8);
REPATCH_DEFINE_GROUP(pair, 0, "one", "two");
REPATCH_DEFINE_OP(pair_first, pair, one);
REPATCH_DEFINE_OP(pair_second, pair, one);
REPATCH_INLINE_VARIANT(pair_first, one, "movl $1, %eax");
REPATCH_INLINE_VARIANT(pair_first, two, "movl $2, %eax");
REPATCH_INLINE_VARIANT(pair_second, one, "movl $1, %eax");
REPATCH_INLINE_VARIANT(pair_second, two, "movl $2, %eax");

// One pass: both ops of the group, inside one op mark (a switch never commits between them).
// Returns the variant both ran (1 or 2), -1 when they ran different ones, or 0 when a switch of the
// group was running as the pass began: it gave way, without running either op, and the caller
// tries again later.
extern "C" int consumer_module_pass() {
  const repatch::OpInFlight in_op(repatch_group_pair);
  if (in_op.switch_running()) return 0;
  int first;
  int second;
  REPATCH_SITE(pair_first, ("=a"(first)));
  REPATCH_SITE(pair_second, ("=a"(second)));
  return first == second ? first : -1;
}
