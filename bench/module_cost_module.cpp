// A module for module_cost: the op's loop, and MODULE_COST_SITE_COUNT more sites.
#include <cstdint>

#include "bench/module_cost_ops.h"

MODULE_COST_DEFINE_OPS();
MODULE_COST_SITES(MODULE_COST_SITE_COUNT);

// The loop module_cost times: the same body as the program's own (module_cost.cpp).
extern "C" __attribute__((noipa)) void module_cost_module_loop(std::uint8_t* p, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) {
    module_cost_store(p);
    asm volatile("" ::: "memory");
  }
}
