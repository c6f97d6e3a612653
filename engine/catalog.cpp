#include "engine/catalog.h"

#include <algorithm>
#include <map>
#include <string>

#include "arch/x86/cpuid.h"
#include "arch/x86/instruction.h"
#include "base/return_if_error.h"
#include "base/text.h"

namespace repatch::engine {
namespace {

template <typename T>
std::span<const T* const> section_span(const T* const* begin, const T* const* end) {
  if (begin == nullptr || end == nullptr || end <= begin) return {};
  return {begin, static_cast<std::size_t>(end - begin)};
}

Error invalid(std::string message) {
  return Error(ErrorCode::kInvalidArgument, std::move(message));
}
Error unknown(std::string message) {
  return Error(ErrorCode::kUnknownName, std::move(message));
}

std::vector<std::string_view> variant_names(const abi::GroupDesc& group) {
  return {group.variants, group.variants + group.variant_count};
}

Status check_group(const abi::GroupDesc& group) {
  if (group.name == nullptr || *group.name == '\0') return invalid("a group has no name");
  const std::string name = group.name;
  if (group.variant_count == 0) return invalid("group '" + name + "' declares no variants");
  if (group.runtime == nullptr) {
    return invalid("group '" + name +
                   "' has no runtime record; define groups with REPATCH_DEFINE_GROUP "
                   "(repatch/op.h), which gives each one");
  }
  if (group.variant_count > kMaxVariants) {
    return invalid("group '" + name + "' declares " + std::to_string(group.variant_count) +
                   " variants; at most " + std::to_string(kMaxVariants) + " are supported");
  }
  if (group.feature != nullptr) {
    if (!x86::cpu_has(x86::CpuInfo{}, group.feature).has_value()) {
      return unknown("group '" + name + "' is keyed on CPU feature '" + group.feature +
                     "', which repatch does not know; the features are " +
                     text::quoted_list(x86::cpu_feature_names()));
    }
    if (group.variant_count != 2) {
      return invalid("feature group '" + name + "' declares " +
                     std::to_string(group.variant_count) +
                     " variants; a feature group has two: without the feature, then with it");
    }
  }
  auto names = variant_names(group);
  for (std::size_t i = 0; i < names.size(); ++i) {
    if (names[i].empty()) return invalid("group '" + name + "' has a variant with no name");
    if (names[i] == "indirect") {
      return invalid("group '" + name +
                     "' declares a variant named 'indirect', a name reserved for unpatched sites");
    }
    const auto earlier = std::next(names.begin(), static_cast<std::ptrdiff_t>(i));
    if (std::find(names.begin(), earlier, names[i]) != earlier) {
      return invalid("group '" + name + "' lists variant '" + std::string(names[i]) + "' twice");
    }
  }
  return {};
}

Status check_variant_shape(const abi::OpDesc& op, const abi::VariantDesc& variant) {
  const std::string what =
      "variant '" + std::string(variant.name) + "' of op '" + std::string(op.name) + "'";
  if (variant.callable == nullptr) return invalid(what + " has no callable form");
  if (variant.kind == abi::VariantKind::kCall) return {};
  if (variant.kind != abi::VariantKind::kInline) return invalid(what + " has an unknown kind");
  const auto length = variant.fragment_end - variant.fragment;
  if (variant.fragment == nullptr || length <= 0) {
    return Error(ErrorCode::kBadImage, what + " has an empty instruction");
  }
  const std::span<const std::uint8_t> fragment(variant.fragment, static_cast<std::size_t>(length));
  if (Status s =
          x86::verify_stack_neutral(fragment, reinterpret_cast<std::uintptr_t>(fragment.data()));
      !s.ok()) {
    return Error(s.error().code(), what + ": " + s.error().message());
  }
  if (length > op.site_length) {
    return Error(ErrorCode::kBadImage, what + " is " + std::to_string(length) +
                                           " bytes long but the op's sites are only " +
                                           std::to_string(op.site_length) +
                                           "; declare the op with longer sites");
  }
  return {};
}

}  // namespace

Result<Catalog> Catalog::build(const Descriptors& descriptors) {
  Catalog catalog;
  std::map<const abi::GroupDesc*, GroupIndex> group_index;
  std::map<std::string_view, const abi::GroupDesc*> group_by_name;
  for (const abi::GroupDesc* desc : descriptors.groups) {
    REPATCH_RETURN_IF_ERROR(check_group(*desc));
    if (!group_by_name.emplace(desc->name, desc).second) {
      return invalid("group '" + std::string(desc->name) + "' is defined twice");
    }
    group_index.emplace(desc, static_cast<GroupIndex>(catalog.groups_.size()));
    catalog.groups_.push_back({desc, {}});
  }
  if (catalog.groups_.size() > 0xffff) return invalid("more than 65535 groups");

  std::map<const abi::OpDesc*, OpIndex> op_index;
  std::map<std::string_view, const abi::OpDesc*> op_by_name;
  for (const abi::OpDesc* desc : descriptors.ops) {
    if (desc->name == nullptr || *desc->name == '\0') return invalid("an op has no name");
    const std::string name = desc->name;
    if (!op_by_name.emplace(desc->name, desc).second) {
      return invalid("op '" + name + "' is defined twice");
    }
    auto group = group_index.find(desc->group);
    if (group == group_index.end()) {
      return unknown("op '" + name + "' belongs to a group that is not defined in this program");
    }
    if (desc->site_length < 6 || desc->site_length > 15) {
      return invalid("op '" + name + "' has " + std::to_string(desc->site_length) +
                     "-byte sites; sites are 6 to 15 bytes");
    }
    if (desc->slot == nullptr) return invalid("op '" + name + "' has no slot");
    const auto index = static_cast<OpIndex>(catalog.ops_.size());
    op_index.emplace(desc, index);
    catalog.groups_[group->second].ops.push_back(index);
    catalog.ops_.push_back(
        {desc, group->second,
         std::vector<const abi::VariantDesc*>(desc->group->variant_count, nullptr)});
  }
  if (catalog.ops_.size() > 0xffff) return invalid("more than 65535 ops");

  for (const abi::VariantDesc* desc : descriptors.variants) {
    auto op = op_index.find(desc->op);
    if (op == op_index.end()) {
      return unknown("variant '" + std::string(desc->name ? desc->name : "") +
                     "' belongs to an op that is not defined in this program");
    }
    CatalogOp& entry = catalog.ops_[op->second];
    const abi::GroupDesc& group = *entry.desc->group;
    auto names = variant_names(group);
    auto found = std::find(names.begin(), names.end(), std::string_view(desc->name));
    if (found == names.end()) {
      return unknown("op '" + std::string(entry.desc->name) + "' defines variant '" + desc->name +
                     "', which its group '" + group.name + "' does not list (it lists " +
                     text::quoted_list(names) + ")");
    }
    const auto v = static_cast<std::size_t>(found - names.begin());
    if (entry.variants[v] != nullptr) {
      return invalid("op '" + std::string(entry.desc->name) + "' defines variant '" + desc->name +
                     "' twice");
    }
    REPATCH_RETURN_IF_ERROR(check_variant_shape(*entry.desc, *desc));
    entry.variants[v] = desc;
  }

  for (const CatalogOp& op : catalog.ops_) {
    const abi::GroupDesc& group = *op.desc->group;
    for (std::size_t v = 0; v < op.variants.size(); ++v) {
      if (op.variants[v] == nullptr) {
        return unknown("op '" + std::string(op.desc->name) + "' of group '" + group.name +
                       "' has no variant '" + group.variants[v] +
                       "': every op of a group needs every variant of the group");
      }
    }
    if (*op.desc->slot != reinterpret_cast<void*>(op.variants[0]->callable)) {
      return invalid("op '" + std::string(op.desc->name) + "' starts at a variant other than '" +
                     group.variants[0] + "', the default of group '" + group.name +
                     "' (or its slot was changed before boot)");
    }
  }
  return catalog;
}

Result<OpIndex> Catalog::find_op(const abi::OpDesc* desc) const {
  for (std::size_t i = 0; i < ops_.size(); ++i) {
    if (ops_[i].desc == desc) return static_cast<OpIndex>(i);
  }
  return Error(ErrorCode::kBadSiteRecord, "a site record names an op at " +
                                              text::hex(reinterpret_cast<std::uintptr_t>(desc)) +
                                              ", which is not an op this program defines");
}

Result<GroupIndex> Catalog::find_group(std::string_view name) const {
  std::vector<std::string_view> names;
  for (std::size_t i = 0; i < groups_.size(); ++i) {
    if (name == groups_[i].desc->name) return static_cast<GroupIndex>(i);
    names.push_back(groups_[i].desc->name);
  }
  return unknown("no group is named '" + std::string(name) + "'; the groups are " +
                 (names.empty() ? std::string("(none)") : text::quoted_list(names)));
}

Result<VariantIndex> Catalog::find_variant(GroupIndex g, std::string_view name) const {
  const abi::GroupDesc& group = *groups_[g].desc;
  if (name == "indirect") return kIndirect;
  auto names = variant_names(group);
  auto found = std::find(names.begin(), names.end(), name);
  if (found == names.end()) {
    return unknown("group '" + std::string(group.name) + "' has no variant '" + std::string(name) +
                   "'; its variants are " + text::quoted_list(names) +
                   " (and 'indirect', unpatched)");
  }
  return static_cast<VariantIndex>(found - names.begin());
}

std::size_t Catalog::retained_bytes() const {
  std::size_t bytes = sizeof(*this) + groups_.capacity() * sizeof(CatalogGroup) +
                      ops_.capacity() * sizeof(CatalogOp);
  for (const CatalogGroup& g : groups_)
    bytes += g.ops.capacity() * sizeof(OpIndex);
  for (const CatalogOp& o : ops_)
    bytes += o.variants.capacity() * sizeof(const abi::VariantDesc*);
  return bytes;
}

std::string_view Catalog::variant_name(GroupIndex g, VariantIndex v) const {
  if (v == kIndirect) return "indirect";
  return groups_[g].desc->variants[v];
}

Descriptors program_descriptors() {
  return object_descriptors(abi::detail::kThisObject);
}

Descriptors object_descriptors(const abi::ObjectSections& object) {
  return {section_span(object.groups_begin, object.groups_end),
          section_span(object.ops_begin, object.ops_end),
          section_span(object.variants_begin, object.variants_end)};
}

Descriptors DescriptorCopies::copy(const Descriptors& from,
                                   std::span<const abi::GroupDesc* const> groups) {
  std::vector<const abi::GroupDesc*>& group_list = group_lists_.emplace_back();
  std::vector<const abi::OpDesc*>& op_list = op_lists_.emplace_back();
  std::vector<const abi::VariantDesc*>& variant_list = variant_lists_.emplace_back();
  std::map<const abi::GroupDesc*, const abi::GroupDesc*> group_copy;
  for (const abi::GroupDesc* original : groups) {
    Group& g = groups_.emplace_back();
    g.name = original->name;
    for (std::uint32_t v = 0; v < original->variant_count; ++v) {
      g.variants.push_back(g.variant_names.emplace_back(original->variants[v]).c_str());
    }
    if (original->feature != nullptr) g.feature = original->feature;
    g.desc = {g.name.c_str(),
              g.variants.data(),
              original->variant_count,
              original->flags,
              original->feature != nullptr ? g.feature.c_str() : nullptr,
              &g.runtime};
    group_copy.emplace(original, &g.desc);
    group_list.push_back(&g.desc);
  }
  std::map<const abi::OpDesc*, const abi::OpDesc*> op_copy;
  for (const abi::OpDesc* original : from.ops) {
    const auto group = group_copy.find(original->group);
    if (group == group_copy.end()) continue;
    Op& o = ops_.emplace_back();
    o.name = original->name;
    o.desc = {o.name.c_str(), group->second, &o.slot, original->site_length};
    op_copy.emplace(original, &o.desc);
    op_list.push_back(&o.desc);
  }
  for (const abi::VariantDesc* original : from.variants) {
    const auto op = op_copy.find(original->op);
    if (op == op_copy.end()) continue;
    Variant& v = variants_.emplace_back();
    v.name = original->name;
    // A call variant whose callable is the original's address: the shape the catalog checks
    // without reading the original's bytes, which may be gone when the catalog is built again.
    v.desc = {op->second, v.name.c_str(), abi::VariantKind::kCall,
              nullptr,    nullptr,        original->callable};
    variant_list.push_back(&v.desc);
  }
  // Each copied op starts at its default variant, as Catalog::build checks.
  for (Op& o : ops_) {
    if (o.slot != nullptr) continue;
    for (const abi::VariantDesc* v : variant_list) {
      if (v->op == &o.desc && std::string_view(v->name) == o.desc.group->variants[0]) {
        o.slot = reinterpret_cast<void*>(v->callable);
      }
    }
  }
  return {group_list, op_list, variant_list};
}

namespace {

std::string variants_text(const abi::GroupDesc& group) {
  return text::quoted_list(variant_names(group));
}

}  // namespace

Result<std::vector<const abi::GroupDesc*>> fit_object(const Catalog& running, const Catalog& object,
                                                      std::string_view object_name) {
  const std::string where = " in " + std::string(object_name);
  std::vector<const abi::GroupDesc*> new_groups;
  for (const CatalogGroup& group : object.groups()) {
    const abi::GroupDesc& mine = *group.desc;
    Result<GroupIndex> g = running.find_group(mine.name);
    if (!g.ok()) {
      new_groups.push_back(&mine);
      continue;
    }
    const abi::GroupDesc& theirs = *running.group(g.value()).desc;
    const std::string name = "group '" + std::string(mine.name) + "'" + where;
    for (std::uint32_t v = 0; v < mine.variant_count; ++v) {
      if (!running.find_variant(g.value(), mine.variants[v]).ok()) {
        return unknown(name + " declares variant '" + mine.variants[v] +
                       "', which the running group lacks (it has " + variants_text(theirs) + ")");
      }
    }
    if (mine.variant_count != theirs.variant_count ||
        !std::equal(mine.variants, mine.variants + mine.variant_count, theirs.variants,
                    [](const char* a, const char* b) { return std::string_view(a) == b; })) {
      return invalid(name + " lists the variants " + variants_text(mine) +
                     ", but the running group lists " + variants_text(theirs) +
                     " (the same, in the same order, are needed)");
    }
    if (mine.flags != theirs.flags || std::string_view(mine.feature ? mine.feature : "") !=
                                          (theirs.feature ? theirs.feature : "")) {
      return invalid(name +
                     " is declared with other flags or another CPU feature than the "
                     "running group");
    }
  }
  for (const CatalogOp& op : object.ops()) {
    const abi::OpDesc& mine = *op.desc;
    const std::string group_name = mine.group->name;
    if (std::find(new_groups.begin(), new_groups.end(), mine.group) != new_groups.end()) continue;
    const CatalogGroup& theirs = running.group(running.find_group(group_name).value());
    const auto found = std::find_if(theirs.ops.begin(), theirs.ops.end(), [&](OpIndex o) {
      return std::string_view(running.op(o).desc->name) == mine.name;
    });
    if (found == theirs.ops.end()) {
      return unknown("op '" + std::string(mine.name) + "'" + where +
                     " is not an op of the running group '" + group_name +
                     "': a loaded object may add groups, not ops to a running group");
    }
    if (running.op(*found).desc->site_length != mine.site_length) {
      return invalid("op '" + std::string(mine.name) + "'" + where + " has " +
                     std::to_string(mine.site_length) + "-byte sites, the running op " +
                     std::to_string(running.op(*found).desc->site_length) + "-byte ones");
    }
  }
  return new_groups;
}

Catalog object_view(const Catalog& running, const Catalog& object) {
  Catalog view = running;
  for (const CatalogGroup& group : object.groups()) {
    view.groups_[running.find_group(group.desc->name).value()].desc = group.desc;
  }
  for (const CatalogOp& op : object.ops()) {
    const CatalogGroup& theirs = running.group(running.find_group(op.desc->group->name).value());
    for (const OpIndex o : theirs.ops) {
      if (std::string_view(running.op(o).desc->name) != op.desc->name) continue;
      view.ops_[o].desc = op.desc;
      view.ops_[o].variants = op.variants;
    }
  }
  return view;
}

Result<std::vector<Choice>> resolve_choices(const Catalog& catalog,
                                            std::span<const GroupChoice> choices,
                                            std::string_view named_twice) {
  std::vector<Choice> out;
  std::vector<bool> named(catalog.groups().size(), false);
  for (const GroupChoice& choice : choices) {
    Result<GroupIndex> g = catalog.find_group(choice.group);
    if (!g.ok()) return g.error();
    if (named[g.value()]) {
      return Error(ErrorCode::kInvalidArgument,
                   "group '" + choice.group + "' " + std::string(named_twice));
    }
    named[g.value()] = true;
    Result<VariantIndex> v = catalog.find_variant(g.value(), choice.variant);
    if (!v.ok()) return v.error();
    out.push_back({g.value(), v.value()});
  }
  return out;
}

}  // namespace repatch::engine
