#include "sync/sync_cores.h"

#include <linux/membarrier.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <mutex>
#include <string>

#include "arch/x86/sync_core.h"
#include "base/errno_text.h"
#include "sync/realtime.h"
#include "sync/vcpu.h"

namespace repatch::sync {
namespace {

long membarrier(int command) {
  return syscall(SYS_membarrier, command, 0, 0);
}

std::atomic<bool> g_registered{false};

// Pause-loop iterations wait_for_nmis_in_flight spends on one handler before it relaxes (about
// 10-40 us): an NMI handler is short, unless its thread waits for this CPU.
constexpr std::uint32_t kSpinsBeforeRelax = 256;

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
                     text::errno_text(err) +
                     "; this kernel cannot serialise other CPUs without IPIs");
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

bool wait_for_nmis_in_flight(std::chrono::nanoseconds deadline) noexcept {
  const auto until = std::chrono::steady_clock::now() + deadline;
  for (VcpuId id = 0; id < slot_limit(); ++id) {
    VcpuSlot& s = slot(id);
    // An NMI raises `nmis`, then sets in_nmi (seq_cst, sync/signals.cpp); either a changed count
    // or in_nmi false means the NMI seen here has returned.
    const std::uint64_t began = s.nmis.load(std::memory_order_seq_cst);
    for (std::uint32_t spins = 0; s.in_nmi.load(std::memory_order_seq_cst) &&
                                  s.nmis.load(std::memory_order_seq_cst) == began;
         ++spins) {
      if (std::chrono::steady_clock::now() >= until) return false;
      // A short spin, then let the handler's thread have this CPU: it may be queued on it.
      if (spins < kSpinsBeforeRelax) {
        __builtin_ia32_pause();
      } else {
        relax();
      }
    }
  }
  return true;
}

}  // namespace repatch::sync
