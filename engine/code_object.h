// One loaded object with sites: the executable, or a shared object (a module).
//
// Each object keeps its own view of the catalog (its own op slots, variants and fragments: a
// module's call variants target its own thunks, within a rel32 of its sites), its own retained
// table (offsets from its own base: objects may lie far apart), the images of its sites that have
// switched, and its own text writer (the memfd alias of its own pages). The engine's catalog is
// shared: group and op indices mean the same in every object.
#ifndef REPATCH_ENGINE_CODE_OBJECT_H_
#define REPATCH_ENGINE_CODE_OBJECT_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "arch/x86/text_poker.h"
#include "engine/catalog.h"
#include "engine/image_cache.h"
#include "engine/site_table.h"
#include "repatch/op.h"

namespace repatch::engine {

/// What messages and ModuleStatus call the main program.
inline constexpr const char* kProgramName = "(the program)";

struct CodeObject {
  /// What a live object's `alive` holds; anything else means it was freed (tests read it).
  static constexpr std::uint64_t kAlive = 0x6f626a6563746976;  // "objectiv"

  CodeObject() = default;
  CodeObject(const CodeObject&) = delete;
  CodeObject& operator=(const CodeObject&) = delete;
  ~CodeObject() { alive.store(0, std::memory_order_relaxed); }

  /// The object's path as the dynamic linker knows it (kProgramName for the main program).
  std::string name;
  const abi::ObjectSections* sections = nullptr;
  /// The dynamic linker's link map of the object (dlinfo's RTLD_DI_LINKMAP), or null.
  const void* link_map = nullptr;
  /// The object's view of the engine's catalog (engine/catalog.h, object_view).
  Catalog catalog;
  /// The groups and ops the object declares itself (indices of the engine's catalog): their
  /// runtime records and slots are the object's to keep up to date.
  std::vector<GroupIndex> own_groups;
  std::vector<OpIndex> own_ops;
  SiteTable table;
  /// Images of its sites, from their group's first switch on. Under the engine's switch mutex.
  ImageCache images;
  /// Writes its sites; null when it has none.
  std::unique_ptr<x86::TextPoker> poker;
  std::atomic<std::uint64_t> alive{kAlive};
};

/// What the dynamic linker calls the object holding `address` (kProgramName for the main
/// program); the link map it belongs to, through `link_map` when not null.
std::string object_name(const void* address, const void** link_map = nullptr);

/// Builds an object from its declarations against the engine's catalog `running`, which it first
/// extends, through `extend`, with the groups the object declares and `running` lacks: its own
/// catalog is checked (Catalog::build), fitted (fit_object), viewed and its sites tabled. Nothing
/// is written. Errors name the object unless it is the program. `extend(new_groups,
/// own_descriptors)` returns the extended catalog (`running` when there are no new groups).
using ExtendCatalog = std::function<Result<const Catalog*>(
    std::span<const abi::GroupDesc* const> fresh, const Descriptors& own)>;
Result<std::unique_ptr<CodeObject>> build_code_object(const abi::ObjectSections& sections,
                                                      const Catalog& running,
                                                      const ExtendCatalog& extend);

/// One write of an object's site: its image of `variant`.
struct SiteWrite {
  SiteEntry* entry;
  x86::Image image;
  VariantIndex variant;
};

/// Checks that every site holds its unpatched image and computes the image of every variant of
/// it (a variant that cannot fill a site is refused now, not at its first switch); returns the
/// writes that bring each site into `target[group]`. Nothing is written.
Result<std::vector<SiteWrite>> plan_object_writes(CodeObject& object,
                                                  const std::vector<VariantIndex>& target);

/// Sets up the object's writer (memfd: remaps its sites' pages; must run before any thread runs
/// code there). Null when the object has no sites.
Status make_object_writer(CodeObject& object, x86::PokerKind kind);

/// Puts every site of the object that holds a variant back to its unpatched image. Fails with
/// kSystem, counting the sites it could not put back.
Status undo_object_writes(CodeObject& object);

/// Writes `writes` with plain stores (no thread runs the object's sites yet, or none at all), then
/// serialises this CPU. On a failed write puts back what it wrote and says so in the error.
Status write_object(CodeObject& object, const std::vector<SiteWrite>& writes);

/// Points every op slot the object owns at the callable of its group's variant in `variants`.
void point_object_slots(const CodeObject& object, const std::vector<VariantIndex>& variants);

/// Stores each of the object's own groups' tracked index (below abi::kMaxTrackedGroups) in its
/// runtime record, so that its OpInFlight marks count. Release: call once the phase word is set.
void publish_tracked_indexes(const CodeObject& object);

}  // namespace repatch::engine

#endif  // REPATCH_ENGINE_CODE_OBJECT_H_
