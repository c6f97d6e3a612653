// A shared object the test program links (loaded before main, so before boot): boot finds its group
// and sites with the program's.
#include "repatch/op.h"

REPATCH_DECLARE_GROUP(preloaded);
REPATCH_DECLARE_OP(preloaded_read, 8);
REPATCH_DEFINE_GROUP(preloaded, 0, "first", "second");
REPATCH_DEFINE_OP(preloaded_read, preloaded, first);
REPATCH_INLINE_VARIANT(preloaded_read, first, "movl $1, %eax");
REPATCH_INLINE_VARIANT(preloaded_read, second, "movl $2, %eax");

extern "C" int preloaded_read() {
  int v;
  REPATCH_SITE(preloaded_read, ("=a"(v)));
  return v;
}
