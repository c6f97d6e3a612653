#include "guest/demo_workload.h"

namespace repatch::demo {

// noinline keeps each site in one known function, so that status and tests find them by name;
// used keeps the functions (and their sites) when link-time optimisation sees no caller.
__attribute__((noinline, used)) void locked_increment(Lock* lock, std::uint64_t* counter) {
  lock_acquire(lock);
  ++*counter;
  lock_release(lock);
}

__attribute__((noinline, used)) bool owner_preempted(std::uint64_t cpu) {
  return vcpu_is_preempted(cpu);
}

__attribute__((noinline, used)) std::uint32_t read_clock() {
  return clock_read();
}

__attribute__((noinline, used)) void flush(const void* line) {
  flush_line(line);
}

__attribute__((noinline, used)) void release(Lock* lock) {
  lock_release(lock);
}

}  // namespace repatch::demo
