// What a booted engine holds. Internal: the public face is repatch/engine.h.
#ifndef REPATCH_ENGINE_ENGINE_IMPL_H_
#define REPATCH_ENGINE_ENGINE_IMPL_H_

#include <memory>
#include <vector>

#include "arch/x86/cpuid.h"
#include "arch/x86/text_poker.h"
#include "base/mutex.h"
#include "base/thread_annotations.h"
#include "engine/catalog.h"
#include "engine/image_cache.h"
#include "engine/site_table.h"
#include "engine/transaction.h"
#include "repatch/engine.h"

namespace repatch {

struct Engine::Impl {
  engine::Catalog catalog;
  engine::SiteTable table;
  /// Null when the program has no sites.
  std::unique_ptr<x86::TextPoker> poker;
  x86::PokerKind writer = x86::PokerKind::kMemfdAlias;
  x86::CpuInfo cpu;
  /// One switch at a time. Held in normal context only, never inside a stop. Declared before the
  /// state it guards, which names it.
  base::Mutex switch_mutex;
  /// Current variant of each group (kIndirect: unpatched).
  std::vector<engine::VariantIndex> group_variant REPATCH_GUARDED_BY(switch_mutex);
  /// Per group: its state's converter (Engine::set_group_state), or nullptr.
  std::vector<GroupState*> group_state REPATCH_GUARDED_BY(switch_mutex);
  /// The last switch attempt, still published for #BP executors (engine/transaction.h), which
  /// reach it through the published pointer, never through this owner.
  std::unique_ptr<engine::Transaction> published REPATCH_GUARDED_BY(switch_mutex);
  /// The images of every site of the groups that have switched (engine/image_cache.h).
  engine::ImageCache images REPATCH_GUARDED_BY(switch_mutex);
};

/// The booted engine's state, or nullptr before boot() succeeds. Async-signal-safe.
const Engine::Impl* booted_impl();

}  // namespace repatch

#endif  // REPATCH_ENGINE_ENGINE_IMPL_H_
