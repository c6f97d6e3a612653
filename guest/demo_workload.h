// Guest code that runs the demo ops: the sites `repatch status` lists and the tests exercise.
#ifndef REPATCH_GUEST_DEMO_WORKLOAD_H_
#define REPATCH_GUEST_DEMO_WORKLOAD_H_

#include <cstdint>

#include "guest/demo_ops.h"

namespace repatch::demo {

/// Acquires `lock`, increments `*counter`, releases `lock`.
void locked_increment(Lock* lock, std::uint64_t* counter);

/// Whether vCPU `cpu` is preempted, as the current variant reports it.
bool owner_preempted(std::uint64_t cpu);

/// The demo clock, as the current variant of demo_clock reads it.
std::uint32_t read_clock();

/// Writes back and evicts the cache line that holds `line`, with the variant the CPU supports.
void flush(const void* line);

/// Releases `lock` (held by the caller) without acquiring it first.
void release(Lock* lock);

}  // namespace repatch::demo

#endif  // REPATCH_GUEST_DEMO_WORKLOAD_H_
