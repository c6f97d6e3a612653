// Guest code that runs the feature-keyed ops (guest/feature_ops.h): the sites of lock_elision,
// cpu_number and cache_flush that `repatch status` lists and that a late microcode load rewrites.
#ifndef REPATCH_GUEST_FEATURE_WORKLOAD_H_
#define REPATCH_GUEST_FEATURE_WORKLOAD_H_

#include <cstdint>

#include "guest/feature_ops.h"

namespace repatch::features {

/// Acquires `lock` (elided under the rtm variant), increments `*counter`, releases `lock`.
void elided_increment(ElidedLock* lock, std::uint64_t* counter);

/// The CPU the caller runs on, as the current variant of cpu_number reads it.
std::uint32_t caller_cpu();

/// Writes back and evicts the cache line holding `line`, with the current cache_flush variant.
void flush_line(const void* line);

}  // namespace repatch::features

#endif  // REPATCH_GUEST_FEATURE_WORKLOAD_H_
