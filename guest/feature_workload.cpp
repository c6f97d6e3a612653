#include "guest/feature_workload.h"

namespace repatch::features {

void elided_increment(ElidedLock* lock, std::uint64_t* counter) {
  elided_lock(lock);
  *counter = *counter + 1;
  elided_unlock(lock);
}

std::uint32_t caller_cpu() {
  return current_cpu();
}

void flush_line(const void* line) {
  flush_cache_line(line);
}

}  // namespace repatch::features
