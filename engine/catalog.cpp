#include "engine/catalog.h"

#include <algorithm>
#include <map>
#include <string>

#include "arch/x86/cpuid.h"
#include "arch/x86/instruction.h"
#include "base/return_if_error.h"
#include "base/text.h"

// The linker defines __start_/__stop_ symbols for every section whose name is a C identifier.
// They are weak so that a program without any op still links (they are then null).
extern "C" {
#define REPATCH_SECTION_BOUNDS(kind, type)                  \
  extern __attribute__((weak, visibility("hidden")))        \
  const repatch::abi::type* const __start_repatch_##kind[]; \
  extern __attribute__((weak, visibility("hidden")))        \
  const repatch::abi::type* const __stop_repatch_##kind[];
REPATCH_SECTION_BOUNDS(groups, GroupDesc)
REPATCH_SECTION_BOUNDS(ops, OpDesc)
REPATCH_SECTION_BOUNDS(variants, VariantDesc)
#undef REPATCH_SECTION_BOUNDS
}

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

std::string_view Catalog::variant_name(GroupIndex g, VariantIndex v) const {
  if (v == kIndirect) return "indirect";
  return groups_[g].desc->variants[v];
}

Descriptors program_descriptors() {
  return {section_span(__start_repatch_groups, __stop_repatch_groups),
          section_span(__start_repatch_ops, __stop_repatch_ops),
          section_span(__start_repatch_variants, __stop_repatch_variants)};
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
