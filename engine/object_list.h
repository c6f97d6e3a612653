// The objects a #BP handler searches for the site it trapped on, published with RCU.
//
// The list changes when an object with sites loads or unloads after boot; the #BP handler reads it
// on any thread, vCPU or not, inside a signal handler. Readers use liburcu's bulletproof flavour
// (urcu-bp), which needs no registration from the program: a thread's first read-side section
// registers it, even inside a signal handler (liburcu blocks every signal while it maps its reader
// record with mmap, never malloc, under a mutex that is only ever held with signals blocked, so no
// thread it interrupted can hold it). Writers publish a new
// list and wait for a grace period before the old list, and any object left out of it, may be
// freed: a lookup never reads a freed entry.
#ifndef REPATCH_ENGINE_OBJECT_LIST_H_
#define REPATCH_ENGINE_OBJECT_LIST_H_

#include <cstdint>
#include <vector>

#include "engine/code_object.h"

namespace repatch::engine {

/// Whether `address` is the first byte of a site of a published object. Async-signal-safe, lock-
/// free (an RCU read-side section).
bool is_site_start(std::uintptr_t address) noexcept;

/// Publishes `objects` as the list lookups search, then waits until no lookup still reads the
/// previous one (an RCU grace period), so that an object missing from `objects` may be freed on
/// return. Normal context; callers serialise (the engine's switch mutex). Never call it from inside
/// a lookup's read-side section.
void publish_objects(const std::vector<const CodeObject*>& objects);

/// How many lookups found an object that had been destroyed (read through a list whose grace
/// period was skipped): 0 unless something is wrong. For the tests.
std::uint64_t freed_object_reads() noexcept;

}  // namespace repatch::engine

#endif  // REPATCH_ENGINE_OBJECT_LIST_H_
