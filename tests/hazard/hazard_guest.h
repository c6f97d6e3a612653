// The guest the hazard tests switch: small groups whose variants say which one ran.
//
//  group hz_pair {a, b}          two ops that must agree, as lock and unlock must
//    hz_first, hz_second         a: mov $1, %eax     b: mov $2, %eax   (8-byte sites)
//  group hz_wide {a, b}          one op whose "a" image has no padding
//    hz_wide_load                a: movabs $kWideA, %rax (10 bytes)   b: mov $2, %eax
//    Resuming one byte into the "a" image runs `mov $0x11111111, %eax` and garbage: a thread
//    resumed mid-site reads a wrong value (or crashes).
//  group hz_alt {a, b}           interchangeable: the batch writer may switch it
//    hz_alt_load                 a: mov $1, %eax     b: mov $2, %eax
#ifndef REPATCH_TESTS_HAZARD_HAZARD_GUEST_H_
#define REPATCH_TESTS_HAZARD_HAZARD_GUEST_H_

#include <cstdint>

#include "repatch/op.h"

REPATCH_DECLARE_GROUP(hz_pair);
REPATCH_DECLARE_GROUP(hz_wide);
REPATCH_DECLARE_GROUP(hz_alt);
REPATCH_DECLARE_OP(hz_first, 8);
REPATCH_DECLARE_OP(hz_second, 8);
REPATCH_DECLARE_OP(hz_wide_load, 10);
REPATCH_DECLARE_OP(hz_alt_load, 8);

namespace repatch::hazard {

inline constexpr std::uint64_t kWideA = 0x1111111111111111;

/// Each runs its op's one site and returns what the variant put in %eax / %rax.
std::uint32_t first();
std::uint32_t second();
std::uint64_t wide();
std::uint32_t alt();

}  // namespace repatch::hazard

#endif  // REPATCH_TESTS_HAZARD_HAZARD_GUEST_H_
