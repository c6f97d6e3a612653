#include "engine/code_object.h"

#include <dlfcn.h>
#include <link.h>

#include "arch/x86/sync_core.h"
#include "base/return_if_error.h"
#include "base/text.h"
#include "engine/site_image.h"

namespace repatch::engine {
namespace {

Error in_object(const Error& error, const std::string& name) {
  if (name == kProgramName) return error;
  return Error(error.code(), error.message() + " (in " + name + ")");
}

}  // namespace

std::string object_name(const void* address, const void** link_map) {
  Dl_info info{};
  struct link_map* map = nullptr;
  if (dladdr1(address, &info, reinterpret_cast<void**>(&map), RTLD_DL_LINKMAP) == 0 ||
      map == nullptr) {
    if (link_map != nullptr) *link_map = nullptr;
    return "the object at " + text::hex(reinterpret_cast<std::uintptr_t>(address));
  }
  if (link_map != nullptr) *link_map = map;
  // The main program's link map has an empty name.
  if (map->l_name == nullptr || map->l_name[0] == '\0') return kProgramName;
  return map->l_name;
}

Result<std::unique_ptr<CodeObject>> build_code_object(const abi::ObjectSections& sections,
                                                      const Catalog& running,
                                                      const ExtendCatalog& extend) {
  auto object = std::make_unique<CodeObject>();
  object->sections = &sections;
  object->name = object_name(&sections, &object->link_map);
  const Descriptors descriptors = object_descriptors(sections);
  Result<Catalog> own = Catalog::build(descriptors);
  if (!own.ok()) return in_object(own.error(), object->name);
  Result<std::vector<const abi::GroupDesc*>> fresh = fit_object(running, own.value(), object->name);
  if (!fresh.ok()) return fresh.error();
  Result<const Catalog*> extending = extend(fresh.value(), descriptors);
  if (!extending.ok()) return in_object(extending.error(), object->name);
  const Catalog& extended = *extending.value();
  object->catalog = object_view(extended, own.value());
  for (const CatalogGroup& group : own.value().groups()) {
    object->own_groups.push_back(extended.find_group(group.desc->name).value());
  }
  for (const GroupIndex g : object->own_groups) {
    for (const OpIndex o : extended.group(g).ops) {
      if (object->catalog.op(o).desc != extended.op(o).desc) object->own_ops.push_back(o);
    }
  }
  Result<SiteTable> table = SiteTable::build(object_site_records(sections), object->catalog);
  if (!table.ok()) return in_object(table.error(), object->name);
  object->table = std::move(table).value();
  return object;
}

Result<std::vector<SiteWrite>> plan_object_writes(CodeObject& object,
                                                  const std::vector<VariantIndex>& target) {
  const Catalog& catalog = object.catalog;
  SiteTable& table = object.table;
  std::vector<SiteWrite> writes;
  for (SiteEntry& entry : table.entries()) {
    REPATCH_RETURN_IF_ERROR(check_site_holds_current(catalog, table, entry));
    const VariantIndex v = target[catalog.op(entry.op).group];
    const std::size_t variants = catalog.op(entry.op).variants.size();
    for (std::size_t other = 0; other < variants; ++other) {
      Result<x86::Image> image =
          site_image(catalog, table, entry, static_cast<VariantIndex>(other));
      if (!image.ok()) return in_object(image.error(), object.name);
      // Sites that stay indirect already hold their image.
      if (other == v) writes.push_back({&entry, image.value(), v});
    }
  }
  return writes;
}

Status make_object_writer(CodeObject& object, x86::PokerKind kind) {
  const SiteTable& table = object.table;
  if (table.entries().empty()) return {};
  if (kind == x86::PokerKind::kProcSelfMem) {
    Result<std::unique_ptr<x86::TextPoker>> poker = x86::make_procmem_poker();
    if (!poker.ok()) return poker.error();
    object.poker = std::move(poker).value();
    return {};
  }
  Result<std::unique_ptr<x86::TextPoker>> poker =
      x86::make_memfd_poker(table.base(), table.limit());
  if (poker.ok()) {
    object.poker = std::move(poker).value();
    return {};
  }
  if (poker.error().code() == ErrorCode::kSystem) return in_object(poker.error(), object.name);
  // The range is the span of the object's sites; the memfd writer remaps it as one mapping.
  return in_object(
      Error(ErrorCode::kUnsupported, "the memfd text writer cannot remap the sites' range " +
                                         text::hex(table.base()) + "-" + text::hex(table.limit()) +
                                         " (" + poker.error().message() +
                                         "); boot with TextWriter::kProcSelfMem instead"),
      object.name);
}

Status undo_object_writes(CodeObject& object) {
  std::size_t undone = 0;
  std::size_t stuck = 0;
  for (SiteEntry& entry : object.table.entries()) {
    if (entry.variant() == kIndirect && !entry.alt_pad()) continue;
    Result<x86::Image> indirect = site_image(object.catalog, object.table, entry, kIndirect);
    if (indirect.ok() &&
        object.poker->write(object.table.address(entry), indirect.value().view()).ok()) {
      entry.set_held(kIndirect, false);
      ++undone;
    } else {
      ++stuck;
    }
  }
  x86::sync_core();
  if (stuck == 0) return {};
  return in_object(Error(ErrorCode::kSystem,
                         std::to_string(stuck) + " of " + std::to_string(undone + stuck) +
                             " sites written could not be put back and hold their new image: "
                             "do not boot again in this process"),
                   object.name);
}

Status write_object(CodeObject& object, const std::vector<SiteWrite>& writes) {
  for (const SiteWrite& w : writes) {
    const std::uintptr_t address = object.table.address(*w.entry);
    if (Status s = object.poker->write(address, w.image.view()); !s.ok()) {
      // Put back every site written so far, so that no group is left half-switched.
      const Status undone = undo_object_writes(object);
      return in_object(
          Error(s.error().code(),
                "could not write " + describe_site(object.catalog, object.table, *w.entry) + ": " +
                    s.error().message() + "; " +
                    (undone.ok() ? "the sites written before it were put back to their "
                                   "unpatched image"
                                 : undone.error().message())),
          object.name);
    }
    w.entry->set_held(w.variant, false);
  }
  x86::sync_core();
  return {};
}

void point_object_slots(const CodeObject& object, const std::vector<VariantIndex>& variants) {
  for (const OpIndex o : object.own_ops) {
    const CatalogOp& op = object.catalog.op(o);
    const VariantIndex v = variants[op.group];
    *op.desc->slot = reinterpret_cast<void*>(op.variants[v == kIndirect ? 0 : v]->callable);
  }
}

void publish_tracked_indexes(const CodeObject& object) {
  for (const GroupIndex g : object.own_groups) {
    if (g >= abi::kMaxTrackedGroups) continue;
    // Release: pairs with OpInFlight's acquire, which then reads a settled phase word.
    object.catalog.group(g).desc->runtime->tracked_index.store(static_cast<std::uint8_t>(g),
                                                               std::memory_order_release);
  }
}

}  // namespace repatch::engine
