// The retained patch table: layout, lookups, and refusal of malformed site records.
#include "engine/site_table.h"

#include <gtest/gtest.h>

#include "engine/catalog.h"
#include "tests/engine/crafted.h"

namespace repatch {
namespace {

using engine::Catalog;
using engine::SiteTable;
using testing::aim;
using testing::CraftedDescriptors;

// Two groups with one op each. The "code" the records point at is a plain buffer: building a
// table never reads or writes site bytes.
extern "C" void crafted_callable() {}
const char* const kVariants[] = {"one", "two"};
const std::uint8_t kXorEax[] = {0x31, 0xc0};
const std::uint8_t kMovEax1[] = {0xb8, 0x01, 0x00, 0x00, 0x00};
abi::GroupRuntime g_runtime_a;
abi::GroupRuntime g_runtime_b;
const abi::GroupDesc kGroupA{"group_a", kVariants, 2, 0, nullptr, &g_runtime_a};
const abi::GroupDesc kGroupB{"group_b", kVariants, 2, 0, nullptr, &g_runtime_b};
void* g_slot_a = reinterpret_cast<void*>(&crafted_callable);
void* g_slot_b = reinterpret_cast<void*>(&crafted_callable);
const abi::OpDesc kOpA{"op_a", &kGroupA, &g_slot_a, 8};
const abi::OpDesc kOpB{"op_b", &kGroupB, &g_slot_b, 10};
const abi::OpDesc kStranger{"stranger", &kGroupA, &g_slot_a, 8};
const abi::VariantDesc kA1{&kOpA,   "one",       abi::VariantKind::kInline,
                           kXorEax, kXorEax + 2, &crafted_callable};
const abi::VariantDesc kA2{&kOpA,   "two",   abi::VariantKind::kCall,
                           nullptr, nullptr, &crafted_callable};
const abi::VariantDesc kB1{&kOpB,    "one",        abi::VariantKind::kInline,
                           kMovEax1, kMovEax1 + 5, &crafted_callable};
const abi::VariantDesc kB2{&kOpB,   "two",   abi::VariantKind::kCall,
                           nullptr, nullptr, &crafted_callable};

alignas(64) std::uint8_t g_code[256];
abi::SiteRecord g_records[8];

std::uintptr_t code(std::size_t offset) {
  return reinterpret_cast<std::uintptr_t>(g_code) + offset;
}

Catalog crafted_catalog() {
  static const CraftedDescriptors d{{&kGroupA, &kGroupB}, {&kOpA, &kOpB}, {&kA1, &kA2, &kB1, &kB2}};
  Result<Catalog> catalog = Catalog::build(d.view());
  EXPECT_TRUE(catalog.ok()) << catalog.error().to_string();
  return std::move(catalog).value();
}

TEST(SiteTable, SortedByGroupThenAddress) {
  const Catalog catalog = crafted_catalog();
  aim(g_records[0], code(100), &kOpB);
  aim(g_records[1], code(40), &kOpA);
  aim(g_records[2], code(10), &kOpB);
  aim(g_records[3], code(20), &kOpA);
  Result<SiteTable> table = SiteTable::build({g_records, 4}, catalog);
  ASSERT_TRUE(table.ok()) << table.error().to_string();
  const SiteTable& t = table.value();
  EXPECT_EQ(t.base(), code(10));
  EXPECT_EQ(t.limit(), code(110));
  ASSERT_EQ(t.group_sites(0).size(), 2u);
  ASSERT_EQ(t.group_sites(1).size(), 2u);
  EXPECT_EQ(t.address(t.group_sites(0)[0]), code(20));
  EXPECT_EQ(t.address(t.group_sites(0)[1]), code(40));
  EXPECT_EQ(t.address(t.group_sites(1)[0]), code(10));
  EXPECT_EQ(t.address(t.group_sites(1)[1]), code(100));
  EXPECT_EQ(t.group_sites(1)[0].length, 10);
  for (const engine::SiteEntry& e : t.entries()) {
    EXPECT_EQ(e.variant(), engine::kIndirect);
    EXPECT_FALSE(e.alt_pad());
  }
}

TEST(SiteTable, FindsTheSiteContainingAnAddress) {
  const Catalog catalog = crafted_catalog();
  aim(g_records[0], code(10), &kOpB);  // [10, 20)
  aim(g_records[1], code(20), &kOpA);  // [20, 28)
  aim(g_records[2], code(60), &kOpA);  // [60, 68)
  Result<SiteTable> table = SiteTable::build({g_records, 3}, catalog);
  ASSERT_TRUE(table.ok());
  const SiteTable& t = table.value();
  EXPECT_EQ(t.find(code(9)), nullptr);
  ASSERT_NE(t.find(code(10)), nullptr);
  EXPECT_EQ(t.address(*t.find(code(19))), code(10));
  EXPECT_EQ(t.address(*t.find(code(20))), code(20));
  EXPECT_EQ(t.address(*t.find(code(27))), code(20));
  EXPECT_EQ(t.find(code(28)), nullptr);
  EXPECT_EQ(t.find(code(59)), nullptr);
  EXPECT_EQ(t.address(*t.find(code(67))), code(60));
  EXPECT_EQ(t.find(code(68)), nullptr);
  EXPECT_EQ(t.find(0), nullptr);
}

TEST(SiteTable, KeepsEightBytesPerSite) {
  EXPECT_EQ(SiteTable::bytes_per_site(), 8u);
  const Catalog catalog = crafted_catalog();
  aim(g_records[0], code(0), &kOpA);
  aim(g_records[1], code(8), &kOpA);
  Result<SiteTable> table = SiteTable::build({g_records, 2}, catalog);
  ASSERT_TRUE(table.ok());
  EXPECT_GE(table.value().retained_bytes(), 16u);
  EXPECT_LT(table.value().retained_bytes(), 16u + 128u) << "per-group overhead should be small";
}

TEST(SiteTable, DuplicateRecordsRefused) {
  const Catalog catalog = crafted_catalog();
  aim(g_records[0], code(30), &kOpA);
  aim(g_records[1], code(30), &kOpA);
  Result<SiteTable> table = SiteTable::build({g_records, 2}, catalog);
  ASSERT_FALSE(table.ok());
  EXPECT_EQ(table.error().code(), ErrorCode::kBadSiteRecord);
  EXPECT_NE(table.error().message().find("two site records"), std::string::npos);
}

TEST(SiteTable, OverlappingSitesRefused) {
  const Catalog catalog = crafted_catalog();
  aim(g_records[0], code(30), &kOpB);  // [30, 40)
  aim(g_records[1], code(39), &kOpA);
  Result<SiteTable> table = SiteTable::build({g_records, 2}, catalog);
  ASSERT_FALSE(table.ok());
  EXPECT_EQ(table.error().code(), ErrorCode::kBadSiteRecord);
  EXPECT_NE(table.error().message().find("overlaps"), std::string::npos) << table.error().message();
  EXPECT_NE(table.error().message().find("op_b"), std::string::npos);
}

TEST(SiteTable, AdjacentSitesAccepted) {
  const Catalog catalog = crafted_catalog();
  aim(g_records[0], code(30), &kOpB);  // [30, 40)
  aim(g_records[1], code(40), &kOpA);
  EXPECT_TRUE(SiteTable::build({g_records, 2}, catalog).ok());
}

TEST(SiteTable, RecordOfUnknownOpRefused) {
  const Catalog catalog = crafted_catalog();
  aim(g_records[0], code(30), &kStranger);
  Result<SiteTable> table = SiteTable::build({g_records, 1}, catalog);
  ASSERT_FALSE(table.ok());
  EXPECT_EQ(table.error().code(), ErrorCode::kBadSiteRecord);
  EXPECT_NE(table.error().message().find("not an op this program defines"), std::string::npos);
}

TEST(SiteTable, EmptyTable) {
  const Catalog catalog = crafted_catalog();
  Result<SiteTable> table = SiteTable::build({}, catalog);
  ASSERT_TRUE(table.ok());
  EXPECT_TRUE(table.value().entries().empty());
  EXPECT_EQ(table.value().find(code(0)), nullptr);
}

TEST(SiteTable, ProgramRecordsBuildAndEverySiteIsFound) {
  Result<Catalog> catalog = Catalog::build(engine::program_descriptors());
  ASSERT_TRUE(catalog.ok()) << catalog.error().to_string();
  const auto records = engine::program_site_records();
  ASSERT_FALSE(records.empty());
  Result<SiteTable> table = SiteTable::build(records, catalog.value());
  ASSERT_TRUE(table.ok()) << table.error().to_string();
  EXPECT_EQ(table.value().entries().size(), records.size());
  for (const abi::SiteRecord& r : records) {
    const std::uintptr_t site = engine::record_site_address(r);
    const engine::SiteEntry* e = table.value().find(site);
    ASSERT_NE(e, nullptr);
    EXPECT_EQ(table.value().address(*e), site);
    EXPECT_EQ(catalog.value().op(e->op).desc, engine::record_op(r));
    // Every byte of the site maps to it.
    EXPECT_EQ(table.value().find(site + e->length - 1), e);
  }
}

}  // namespace
}  // namespace repatch
