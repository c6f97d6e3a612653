// The catalog: every group, op and variant a program declared, cross-checked and indexed.
//
// Built once at boot from the descriptor sections (or, in tests, from any descriptor set), before
// any site is looked at. Everything the macros of repatch/op.h could not check at compile time is
// checked here, and each failure names the op, group or variant so that a person can fix the
// declaration.
#ifndef REPATCH_ENGINE_CATALOG_H_
#define REPATCH_ENGINE_CATALOG_H_

#include <cstdint>
#include <deque>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "repatch/engine.h"
#include "repatch/error.h"
#include "repatch/op.h"

namespace repatch::engine {

using GroupIndex = std::uint16_t;
using OpIndex = std::uint16_t;
using VariantIndex = std::uint8_t;

/// The per-site variant value of a site that still holds its unpatched indirect call.
inline constexpr VariantIndex kIndirect = 0x7f;
/// The largest number of variants a group may have: seven bits of a site's state byte, kIndirect
/// reserved (the eighth bit is the site's padding parity; see SiteEntry).
inline constexpr std::size_t kMaxVariants = 126;

struct CatalogGroup {
  const abi::GroupDesc* desc;
  std::vector<OpIndex> ops;
};

struct CatalogOp {
  const abi::OpDesc* desc;
  GroupIndex group;
  /// variants[v] implements the group's variant v.
  std::vector<const abi::VariantDesc*> variants;
};

/// The descriptor sets a catalog is built from.
struct Descriptors {
  std::span<const abi::GroupDesc* const> groups;
  std::span<const abi::OpDesc* const> ops;
  std::span<const abi::VariantDesc* const> variants;
};

class Catalog {
 public:
  /// Checks and indexes `descriptors`. Fails with kInvalidArgument (a duplicate or empty name, a
  /// group with no variants, a site length outside 6..15, an op slot that does not start at its
  /// group's default variant), kUnknownName (an op of a group that is not declared, a variant
  /// name its group does not list, a variant of an op that is not declared) or kBadImage (an
  /// inline variant whose fragment is empty or longer than the op's sites).
  static Result<Catalog> build(const Descriptors& descriptors);

  std::span<const CatalogGroup> groups() const { return groups_; }
  std::span<const CatalogOp> ops() const { return ops_; }
  const CatalogGroup& group(GroupIndex g) const { return groups_[g]; }
  const CatalogOp& op(OpIndex o) const { return ops_[o]; }

  /// The op whose descriptor is `desc`, or an error naming the address when none is.
  Result<OpIndex> find_op(const abi::OpDesc* desc) const;
  /// The group named `name`; kUnknownName lists the groups there are.
  Result<GroupIndex> find_group(std::string_view name) const;
  /// Variant `name` of group `g`; kUnknownName lists the group's variants.
  Result<VariantIndex> find_variant(GroupIndex g, std::string_view name) const;

  /// Bytes the catalog keeps in memory (its vectors; not the descriptors it points at).
  std::size_t retained_bytes() const;

  /// "native" for a variant index, "indirect" for kIndirect.
  std::string_view variant_name(GroupIndex g, VariantIndex v) const;

 private:
  friend Catalog object_view(const Catalog& running, const Catalog& object);
  std::vector<CatalogGroup> groups_;
  std::vector<CatalogOp> ops_;
};

/// A group and the variant chosen for it.
struct Choice {
  GroupIndex group;
  VariantIndex variant;
};

/// Resolves (group name, variant name) pairs. Fails with kUnknownName (the message lists the
/// groups or variants there are), or kInvalidArgument when a group is named twice: "group 'g' "
/// followed by `named_twice`.
Result<std::vector<Choice>> resolve_choices(const Catalog& catalog,
                                            std::span<const GroupChoice> choices,
                                            std::string_view named_twice);

/// The descriptors this program registered through the macros of repatch/op.h.
Descriptors program_descriptors();
/// The descriptors an object registered (repatch_abi_object_loaded).
Descriptors object_descriptors(const abi::ObjectSections& object);

/// Copies of descriptors that outlive the object that declared them (a shared object unloaded
/// with dlclose()). The engine's own catalog is built from copies: names, variant lists, flags
/// and shapes are the declarer's, but the copies' slots and runtime records are their own, and
/// their fragments and callables are addresses to compare, never to run or copy from.
class DescriptorCopies {
 public:
  /// Copies `groups` with every op of theirs in `from` and every variant of those ops, and
  /// returns the copies (in the order of `from`).
  Descriptors copy(const Descriptors& from, std::span<const abi::GroupDesc* const> groups);

 private:
  struct Group {
    std::string name;
    std::deque<std::string> variant_names;
    std::vector<const char*> variants;
    std::string feature;
    abi::GroupRuntime runtime;
    abi::GroupDesc desc{};
  };
  struct Op {
    std::string name;
    void* slot = nullptr;
    abi::OpDesc desc{};
  };
  struct Variant {
    std::string name;
    abi::VariantDesc desc{};
  };
  std::deque<Group> groups_;
  std::deque<Op> ops_;
  std::deque<Variant> variants_;
  // What copy() returns points into these.
  std::deque<std::vector<const abi::GroupDesc*>> group_lists_;
  std::deque<std::vector<const abi::OpDesc*>> op_lists_;
  std::deque<std::vector<const abi::VariantDesc*>> variant_lists_;
};

/// How an object's catalog (`object`, built from its own descriptors) fits the running one: each
/// of its groups the running catalog has must list the same variants in the same order, with the
/// same flags and feature; each of its ops of such a group must be an op of the running group,
/// with the same site length. Fails with kUnknownName (an op the running group does not have; a
/// variant the running group lacks) or kInvalidArgument (another mismatch), the message naming
/// `object_name`. On success returns the object's groups the running catalog lacks.
Result<std::vector<const abi::GroupDesc*>> fit_object(const Catalog& running, const Catalog& object,
                                                      std::string_view object_name);

/// The object's view of the running catalog: the running catalog's groups and ops, in its order,
/// with the object's own descriptors in place of the copies for every group and op the object
/// declares. Its sites' images and slots come from it. `object` must fit (fit_object).
Catalog object_view(const Catalog& running, const Catalog& object);

}  // namespace repatch::engine

#endif  // REPATCH_ENGINE_CATALOG_H_
