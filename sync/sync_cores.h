// Serialising every CPU that runs this process, without stopping anyone: the stopless writer's
// replacement for sync IPIs, and what an INT3 or NMI executor uses between its write steps.
//
// membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE) makes the kernel interrupt every CPU that
// currently runs a thread of this process and return each one to user space through a serialising
// instruction; threads not running serialise when they are next scheduled in. No user-space code
// runs on the other threads, so calling it never waits for a thread that may be stuck, even from a
// signal handler on top of that thread's own work.
#ifndef REPATCH_SYNC_SYNC_CORES_H_
#define REPATCH_SYNC_SYNC_CORES_H_

#include <chrono>

#include "repatch/error.h"

namespace repatch::sync {

/// Registers the process for the membarrier command, once. Normal context. Fails with
/// kUnsupported when the kernel has no membarrier SYNC_CORE (the message gives errno's text).
Status register_sync_cores();

/// Serialises every CPU running this process and the calling thread. Returns false when the
/// command is not registered or the kernel refused it; the calling thread is serialised anyway.
/// Async-signal-safe.
bool sync_cores() noexcept;

/// Waits until every NMI handler that is running on a vCPU now has returned (NMIs that begin
/// later are not waited for), or until `deadline` has passed. Returns whether they all returned.
/// With sync_cores() just before, an NMI handler still running afterwards began before the
/// caller's last write, and one that begins later sees it. Async-signal-safe; spins, so keep
/// the deadline short.
bool wait_for_nmis_in_flight(std::chrono::nanoseconds deadline) noexcept;

}  // namespace repatch::sync

#endif  // REPATCH_SYNC_SYNC_CORES_H_
