#include "tests/hazard/hazard_guest.h"

REPATCH_DEFINE_GROUP(hz_pair, 0, "a", "b");
REPATCH_DEFINE_GROUP(hz_wide, 0, "a", "b");
REPATCH_DEFINE_GROUP(hz_alt, repatch::abi::kGroupInterchangeable, "a", "b");

REPATCH_DEFINE_OP(hz_first, hz_pair, a);
REPATCH_INLINE_VARIANT(hz_first, a, "mov $1, %eax");
REPATCH_INLINE_VARIANT(hz_first, b, "mov $2, %eax");
REPATCH_DEFINE_OP(hz_second, hz_pair, a);
REPATCH_INLINE_VARIANT(hz_second, a, "mov $1, %eax");
REPATCH_INLINE_VARIANT(hz_second, b, "mov $2, %eax");

REPATCH_DEFINE_OP(hz_wide_load, hz_wide, a);
REPATCH_INLINE_VARIANT(hz_wide_load, a, "movabs $0x1111111111111111, %rax");
REPATCH_INLINE_VARIANT(hz_wide_load, b, "mov $2, %eax");

REPATCH_DEFINE_OP(hz_alt_load, hz_alt, a);
REPATCH_INLINE_VARIANT(hz_alt_load, a, "mov $1, %eax");
REPATCH_INLINE_VARIANT(hz_alt_load, b, "mov $2, %eax");

namespace repatch::hazard {

// noinline: one site per op, in a function of its own, whatever the optimiser does.
[[gnu::noinline]] std::uint32_t first() {
  std::uint32_t value;
  REPATCH_SITE(hz_first, ("=a"(value)));
  return value;
}

[[gnu::noinline]] std::uint32_t second() {
  std::uint32_t value;
  REPATCH_SITE(hz_second, ("=a"(value)));
  return value;
}

[[gnu::noinline]] std::uint64_t wide() {
  std::uint64_t value;
  REPATCH_SITE(hz_wide_load, ("=a"(value)));
  return value;
}

[[gnu::noinline]] std::uint32_t alt() {
  std::uint32_t value;
  REPATCH_SITE(hz_alt_load, ("=a"(value)));
  return value;
}

}  // namespace repatch::hazard
