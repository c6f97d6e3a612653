// A module with sites of the program's group `pair` (its own copy of the declarations).
#include "repatch/in_op.h"
#include "tests/modules/pair_ops.h"

PAIR_DEFINE_OPS();

// Both sites, inside one op of the group: a switch never commits between them, so a pass that sees
// two variants means the module's sites were left out of a switch (or patched out of turn).
extern "C" int module_pair_pass() {
  const repatch::OpInFlight in_op(repatch_group_pair);
  const int first = pair_first();
  const int second = pair_second();
  return first == second ? first : -1;
}
