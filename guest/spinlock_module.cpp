// A module with sites of the guest's spinlock group, built as a shared object of its own (CMake:
// repatch_spinlock_module) for the tests and `repatch stress --modules`: its own copy of the
// group's definitions, whose call variants reach the guest's lock bodies in the program through
// the module's thunks. The program must export them (and the engine's entry points) to it.
#include <atomic>
#include <cstdint>

#include "guest/spinlock.h"
#include "guest/spinlock_ops.h"

REPATCH_GUEST_DEFINE_SPINLOCK_OPS();

// Adds `times` to `*counter` one at a time under `lock`, taken and released by the module's own
// sites; `*inside` counts holders, and `*overlap` is set if there are ever two.
extern "C" void module_spin_add(repatch::guest::SpinLock* lock, std::uint64_t* counter, int times,
                                std::atomic<int>* inside, std::atomic<bool>* overlap) {
  for (int i = 0; i < times; ++i) {
    repatch::guest::spin_lock(lock);
    if (inside->fetch_add(1, std::memory_order_relaxed) != 0) overlap->store(true);
    const std::uint64_t seen = *counter;
    *counter = seen + 1;  // a lost update shows if two holders are ever inside
    inside->fetch_sub(1, std::memory_order_relaxed);
    repatch::guest::spin_unlock(lock);
  }
}
