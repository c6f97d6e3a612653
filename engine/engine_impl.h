// What a booted engine holds. Internal: the public face is repatch/engine.h.
#ifndef REPATCH_ENGINE_ENGINE_IMPL_H_
#define REPATCH_ENGINE_ENGINE_IMPL_H_

#include <memory>
#include <string>
#include <vector>

#include "arch/x86/cpuid.h"
#include "arch/x86/text_poker.h"
#include "base/mutex.h"
#include "base/thread_annotations.h"
#include "engine/catalog.h"
#include "engine/code_object.h"
#include "engine/transaction.h"
#include "repatch/engine.h"

namespace repatch {

struct Engine::Impl {
  /// One switch at a time; objects load and unload between switches. Held in normal context only,
  /// never inside a stop. Declared before the state it guards, which names it.
  base::Mutex switch_mutex;
  /// Every group and op of every object, from copies of their descriptors (they outlive a module
  /// that declared them): names, variant lists, flags. Sites take their images from their own
  /// object's view (CodeObject::catalog), never from this. Grows when an object with a group of
  /// its own loads; indices never change.
  engine::Catalog catalog REPATCH_GUARDED_BY(switch_mutex);
  engine::DescriptorCopies copies REPATCH_GUARDED_BY(switch_mutex);
  /// What `catalog` is built from (pointers into `copies`).
  std::vector<const abi::GroupDesc*> all_groups REPATCH_GUARDED_BY(switch_mutex);
  std::vector<const abi::OpDesc*> all_ops REPATCH_GUARDED_BY(switch_mutex);
  std::vector<const abi::VariantDesc*> all_variants REPATCH_GUARDED_BY(switch_mutex);
  /// The objects with declarations, in load order: the program's first. The #BP handler reads
  /// them through engine/object_list.h, never through this vector.
  std::vector<std::unique_ptr<engine::CodeObject>> objects REPATCH_GUARDED_BY(switch_mutex);
  /// Objects loaded after boot and refused, until they unload.
  struct RefusedObject {
    const abi::ObjectSections* sections;
    const void* link_map;
    Error error;
    ModuleStatus status;
  };
  std::vector<RefusedObject> refused REPATCH_GUARDED_BY(switch_mutex);
  x86::PokerKind writer = x86::PokerKind::kMemfdAlias;
  x86::CpuInfo cpu;
  /// Current variant of each group (kIndirect: unpatched).
  std::vector<engine::VariantIndex> group_variant REPATCH_GUARDED_BY(switch_mutex);
  /// Per group: its state's converter (Engine::set_group_state), or nullptr.
  std::vector<GroupState*> group_state REPATCH_GUARDED_BY(switch_mutex);
  /// The last switch attempt, still published for #BP executors (engine/transaction.h), which
  /// reach it through the published pointer, never through this owner.
  engine::PublishedAttempts published REPATCH_GUARDED_BY(switch_mutex);
};

/// The booted engine's state, or nullptr before boot() succeeds. Async-signal-safe.
const Engine::Impl* booted_impl();

}  // namespace repatch

#endif  // REPATCH_ENGINE_ENGINE_IMPL_H_
