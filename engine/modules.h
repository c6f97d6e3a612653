// Objects that load and unload after boot: shared objects with sites (modules), as a kernel
// applies alternatives to a module when it loads.
//
// Loading, on the thread that runs dlopen(), from the object's first constructor:
//   first step:  wait for a switch in progress (the switch mutex): the object's sites then take
//                the variants the groups have once it commits, never the ones it is leaving;
//   second step: check the object's declarations against the running catalog, table its sites,
//                check each holds its unpatched image and compute every image (nothing written);
//   third step:  set up its text writer, write every site's image of its group's variant with
//                plain stores (no thread runs its code yet), serialise every CPU;
//   fourth step: point its op slots, publish its groups' tracked indexes, then publish it to the
//                #BP handler's lookups.
// A refusal at any step leaves nothing written, and the object's op slots pointing at a refusal
// trap that names it and aborts: its sites, still unpatched, call through them. It is never
// half-patched.
//
// Unloading, from the object's last destructor, before the dynamic linker unmaps it:
//   first step:  wait for a switch in progress;
//   second step: if the last attempt (still published for late #BP executors) has sites in it,
//                publish none and wait until no executor holds that attempt;
//   third step:  publish the object list without it and wait for an RCU grace period: no lookup
//                reads its table after that; then free it and unmap its writer's alias.
#ifndef REPATCH_ENGINE_MODULES_H_
#define REPATCH_ENGINE_MODULES_H_

#include <span>

#include "base/thread_annotations.h"
#include "engine/engine_impl.h"

namespace repatch::engine {

/// Adds copies of `fresh` (groups of `own` the catalog lacks, with their ops and variants) to the
/// engine's catalog and returns it. Fails as Catalog::build does.
Result<const Catalog*> extend_catalog(Engine::Impl& impl,
                                      std::span<const abi::GroupDesc* const> fresh,
                                      const Descriptors& own) REPATCH_REQUIRES(impl.switch_mutex);

/// Publishes impl.objects to the #BP handler's lookups (engine/object_list.h) and waits for a
/// grace period.
void publish_objects(const Engine::Impl& impl) REPATCH_REQUIRES(impl.switch_mutex);

/// Brings an object loaded after boot into the groups' variants, or refuses it (see the top).
void load_object(Engine::Impl& impl, const abi::ObjectSections& sections)
    REPATCH_EXCLUDES(impl.switch_mutex);

/// Takes an object out of the engine before it is unmapped (see the top).
void unload_object(Engine::Impl& impl, const abi::ObjectSections& sections)
    REPATCH_EXCLUDES(impl.switch_mutex);

}  // namespace repatch::engine

#endif  // REPATCH_ENGINE_MODULES_H_
