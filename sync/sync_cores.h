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

#include "repatch/error.h"

namespace repatch::sync {

/// Registers the process for the membarrier command, once. Normal context. Fails with
/// kUnsupported when the kernel has no membarrier SYNC_CORE (the message gives errno's text).
Status register_sync_cores();

/// Serialises every CPU running this process and the calling thread. Returns false when the
/// command is not registered or the kernel refused it; the calling thread is serialised anyway.
/// Async-signal-safe.
bool sync_cores() noexcept;

}  // namespace repatch::sync

#endif  // REPATCH_SYNC_SYNC_CORES_H_
