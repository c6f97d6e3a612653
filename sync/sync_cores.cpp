#include "sync/sync_cores.h"

#include <linux/membarrier.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <string>

#include "arch/x86/sync_core.h"

namespace repatch::sync {
namespace {

long membarrier(int command) {
  return syscall(SYS_membarrier, command, 0, 0);
}

std::atomic<bool> g_registered{false};

}  // namespace

Status register_sync_cores() {
  static std::mutex once;
  std::lock_guard<std::mutex> lock(once);
  if (g_registered.load(std::memory_order_relaxed)) return {};
  if (membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE) != 0) {
    const int err = errno;
    return Error(ErrorCode::kUnsupported,
                 std::string("membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE) "
                             "failed: ") +
                     std::strerror(err) + "; this kernel cannot serialise other CPUs without IPIs");
  }
  // Release pairs with the acquire in sync_cores(): a thread that sees the flag may issue the
  // command.
  g_registered.store(true, std::memory_order_release);
  return {};
}

bool sync_cores() noexcept {
  bool everyone = false;
  if (g_registered.load(std::memory_order_acquire)) {
    everyone = membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE) == 0;
  }
  // membarrier does not promise to serialise the caller itself.
  x86::sync_core();
  return everyone;
}

}  // namespace repatch::sync
