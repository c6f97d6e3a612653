#include <algorithm>
#include <cstdlib>
#include <string>

#include "arch/x86/instruction.h"
#include "arch/x86/sync_core.h"
#include "base/return_if_error.h"
#include "engine/engine_impl.h"
#include "engine/site_image.h"
#include "engine/symbolizer.h"
#include "sync/vcpu.h"

namespace repatch {
namespace {

// " <thunk_name>" for a disassembled direct call, so that a person sees where a site goes.
std::string call_target_name(const std::string& instruction) {
  const auto at = instruction.find("call 0x");
  if (at == std::string::npos) return "";
  const std::uintptr_t target = std::strtoull(instruction.c_str() + at + 5, nullptr, 16);
  const std::string name = engine::symbolizer().name(target);
  return name.empty() ? "" : " <" + name + ">";
}

}  // namespace

EngineStatus Engine::status() const {
  EngineStatus out;
  out.modules = modules();
  // The switch mutex: a switch on another thread writes group_variant, the table's held bytes and
  // the sites' code; this reads all three, so it waits for the switch to end.
  const base::MutexLock no_switch(impl_->switch_mutex);
  for (std::size_t g = 0; g < impl_->catalog.groups().size(); ++g) {
    const engine::CatalogGroup& group = impl_->catalog.group(static_cast<engine::GroupIndex>(g));
    GroupStatus gs;
    gs.name = group.desc->name;
    gs.variant =
        impl_->catalog.variant_name(static_cast<engine::GroupIndex>(g), impl_->group_variant[g]);
    gs.variants.assign(group.desc->variants, group.desc->variants + group.desc->variant_count);
    gs.interchangeable = (group.desc->flags & abi::kGroupInterchangeable) != 0;
    if (group.desc->feature != nullptr) {
      gs.feature = group.desc->feature;
      gs.feature_present = x86::cpu_has(impl_->cpu, gs.feature).value_or(false);
    }
    gs.ops = group.ops.size();
    for (const auto& object : impl_->objects) {
      gs.sites += object->table.group_sites(static_cast<engine::GroupIndex>(g)).size();
    }
    out.groups.push_back(std::move(gs));
  }
  for (const auto& object : impl_->objects) {
    for (const engine::SiteEntry& entry : object->table.entries()) {
      const engine::CatalogOp& op = impl_->catalog.op(entry.op);
      const std::uintptr_t address = object->table.address(entry);
      const auto* bytes = reinterpret_cast<const std::uint8_t*>(address);
      SiteStatus ss;
      ss.address = address;
      ss.op = op.desc->name;
      ss.group = op.desc->group->name;
      ss.length = entry.length;
      ss.variant = impl_->catalog.variant_name(op.group, entry.variant());
      ss.bytes.assign(bytes, bytes + entry.length);
      ss.instruction = x86::disassemble(ss.bytes, address);
      ss.instruction += call_target_name(ss.instruction);
      ss.symbol = engine::symbolizer().name(address);
      out.sites.push_back(std::move(ss));
    }
    out.retained_bytes += object->table.retained_bytes();
  }
  std::sort(out.sites.begin(), out.sites.end(),
            [](const SiteStatus& a, const SiteStatus& b) { return a.address < b.address; });
  out.bytes_per_site = bytes_per_site();
  out.writer = x86::poker_kind_name(impl_->writer);
  if (!impl_->objects.empty() && impl_->objects.front()->poker != nullptr) {
    out.text_begin = impl_->objects.front()->poker->begin();
    out.text_end = impl_->objects.front()->poker->end();
  }
  out.sync_core = x86::sync_core_method() == x86::SyncCoreMethod::kSerialize ? "serialize" : "iret";
  out.ipi_signal = sync::ipi_signal();
  out.nmi_signal = sync::nmi_signal();
  return out;
}

Result<std::string> Engine::current_variant(std::string_view group) const {
  // As status(): group_variant is the switch's to write, and the catalog grows when a module loads.
  const base::MutexLock no_switch(impl_->switch_mutex);
  Result<engine::GroupIndex> g = impl_->catalog.find_group(group);
  if (!g.ok()) return g.error();
  return std::string(impl_->catalog.variant_name(g.value(), impl_->group_variant[g.value()]));
}

Status Engine::verify_sites() const {
  // As verify_group(): a switch in progress holds half-written sites that are not foreign writes.
  const base::MutexLock no_switch(impl_->switch_mutex);
  for (const auto& object : impl_->objects) {
    for (const engine::SiteEntry& entry : object->table.entries()) {
      REPATCH_RETURN_IF_ERROR(
          engine::check_site_holds_current(object->catalog, object->table, entry));
    }
  }
  return {};
}

Status Engine::verify_group(std::string_view group) const {
  // The switch mutex orders this scan after the last switch's writes and its table update.
  const base::MutexLock no_switch(impl_->switch_mutex);
  const Result<engine::GroupIndex> g = impl_->catalog.find_group(group);
  if (!g.ok()) return g.error();
  const engine::VariantIndex current = impl_->group_variant[g.value()];
  const std::string current_name(impl_->catalog.variant_name(g.value(), current));
  for (const auto& object : impl_->objects) {
    for (const engine::SiteEntry& entry : object->table.group_sites(g.value())) {
      if (entry.variant() != current) {
        return Error(ErrorCode::kForeignWrite,
                     engine::describe_site(object->catalog, object->table, entry) + " of group '" +
                         std::string(group) + "' is recorded in variant '" +
                         std::string(impl_->catalog.variant_name(g.value(), entry.variant())) +
                         "', not the group's variant '" + current_name + "'");
      }
      REPATCH_RETURN_IF_ERROR(
          engine::check_site_holds_current(object->catalog, object->table, entry));
    }
  }
  return {};
}

std::size_t Engine::bytes_per_site() {
  return engine::SiteTable::bytes_per_site();
}

}  // namespace repatch
