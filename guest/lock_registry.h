// The registry of live spinlocks: what a switch of the `spinlock` group walks to check and convert
// every lock's word (DESIGN H6). A liburcu lock-free hash table (cds_lfht, QSBR flavour) keyed by
// lock address, kept by SpinLock's constructor and destructor.
//
// Rules:
//  - Adding and removing (SpinLock's constructor and destructor) happen in normal context, never
//    in a signal handler, on any thread. They are serialised by one mutex: lfht itself asks its
//    updaters to be QSBR-registered readers, so that a node they traverse is not freed under them;
//    with one updater at a time and removal waiting for walkers (below), no other updater or
//    walker can hold a removed node, so updaters need not be vCPUs. (A test's main thread, which is
//    not a vCPU, may therefore own locks.)
//  - Walking (for_each) is lock-free, allocation-free and async-signal-safe: it is what
//    GroupState::can_convert and convert run under stop-machine on the switch primary, or in an NMI
//    or #BP handler finishing a switch. It does not take the mutex (the thread it interrupted may
//    hold it). The walker need not be QSBR-registered: instead of a grace period, a walk is
//    counted while it runs, and remove() does not return (so the lock's memory cannot be reused)
//    until every walk that may have seen the node has ended. A walk started after remove()'s
//    commit never finds the node: cds_lfht_del unlinks it physically before it returns.
//  - Consequently a lock's destructor may wait for a walk in progress, which is short (one word
//    read and at most a few compare-and-swaps per lock), and a walk must never wait for an updater.
//  - The table does not resize (no CDS_LFHT_AUTO_RESIZE): resizing runs in liburcu worker threads
//    that stop-machine does not stop and that free bucket arrays after grace periods an
//    unregistered walker is not part of. Its fixed 4096 buckets hold any number of locks, with
//    longer chains past a few thousand.
#ifndef REPATCH_GUEST_LOCK_REGISTRY_H_
#define REPATCH_GUEST_LOCK_REGISTRY_H_

#include <cstddef>

namespace repatch::guest {

class SpinLock;

/// The storage the registry keeps inside each lock: the lfht node (laid out as cds_lfht_node,
/// which lock_registry.cpp checks) and the way back to the lock.
struct RegistryNode {
  alignas(8) void* lfht_next = nullptr;
  unsigned long lfht_reverse_hash = 0;
  SpinLock* lock = nullptr;
};

namespace lock_registry {

/// Adds `lock` (whose `node` is `node`) to the registry. Normal context. Creates the table on
/// first use, and aborts the process with a message if liburcu cannot allocate it (a lock that is
/// not registered could never be converted, which is worse than stopping).
void add(SpinLock* lock, RegistryNode* node);

/// Removes `node` from the registry and returns once no walker can still read it or its lock.
/// Normal context. A node that is not in the registry is ignored.
void remove(RegistryNode* node);

/// Calls `visit(lock, context)` for every registered lock until it returns false; returns false
/// when a visit did, true otherwise. Locks added or removed during the walk may or may not be
/// visited. Lock-free, allocation-free, async-signal-safe.
bool for_each(bool (*visit)(SpinLock& lock, void* context), void* context) noexcept;

/// Registered locks (walks the table; for tests and reports). Async-signal-safe.
std::size_t size() noexcept;

}  // namespace lock_registry
}  // namespace repatch::guest

#endif  // REPATCH_GUEST_LOCK_REGISTRY_H_
