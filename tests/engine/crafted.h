// Hand-made descriptors and site records, for feeding the catalog and table builders inputs that
// the macros would never produce. Everything lives in static storage so that the records' 32-bit
// relative offsets reach their targets, exactly as the linker-made ones do.
#ifndef REPATCH_TESTS_ENGINE_CRAFTED_H_
#define REPATCH_TESTS_ENGINE_CRAFTED_H_

#include <cstdint>
#include <vector>

#include "engine/catalog.h"
#include "engine/site_table.h"
#include "repatch/op.h"

namespace repatch::testing {

/// Points `record` at the site `site` of op `op`.
inline void aim(abi::SiteRecord& record, std::uintptr_t site, const abi::OpDesc* op) {
  record.site = static_cast<std::int32_t>(
      static_cast<std::intptr_t>(site - reinterpret_cast<std::uintptr_t>(&record.site)));
  record.op = static_cast<std::int32_t>(static_cast<std::intptr_t>(
      reinterpret_cast<std::uintptr_t>(op) - reinterpret_cast<std::uintptr_t>(&record.op)));
}

/// A descriptor set built up by a test.
struct CraftedDescriptors {
  std::vector<const abi::GroupDesc*> groups;
  std::vector<const abi::OpDesc*> ops;
  std::vector<const abi::VariantDesc*> variants;

  engine::Descriptors view() const { return {groups, ops, variants}; }
};

}  // namespace repatch::testing

#endif  // REPATCH_TESTS_ENGINE_CRAFTED_H_
