// Where objects that declare ops (repatch/op.h) report themselves, from their constructors and
// destructors (repatch_abi_object_loaded / repatch_abi_object_unloading).
//
// Before boot the registry only remembers them, in the order they registered; boot takes them all.
// From boot on it hands each load and unload to the engine (engine/modules.h) as it happens, on the
// thread that runs dlopen() or dlclose(). The registry is a fixed array behind a mutex that needs
// no constructor: objects register from their constructors, which may run before any of the
// engine's own.
#ifndef REPATCH_ENGINE_OBJECT_REGISTRY_H_
#define REPATCH_ENGINE_OBJECT_REGISTRY_H_

#include <vector>

#include "repatch/engine.h"
#include "repatch/op.h"

namespace repatch::engine {

/// The objects with declarations that registered and have not unregistered, in order. Normal
/// context (boot).
std::vector<const abi::ObjectSections*> objects_registered();

/// From now on, loads and unloads go to `impl` (the booted engine, which lives for ever).
void hand_objects_to(Engine::Impl* impl);

}  // namespace repatch::engine

#endif  // REPATCH_ENGINE_OBJECT_REGISTRY_H_
