// Every bad input gets a clear error, and nothing is written.
#include <gtest/gtest.h>
#include <sys/mman.h>

#include <cstring>
#include <optional>

#include "arch/x86/proc_maps.h"
#include "arch/x86/text_poker.h"
#include "engine/catalog.h"
#include "engine/site_image.h"
#include "engine/site_table.h"
#include "repatch/engine.h"
#include "tests/engine/crafted.h"

namespace repatch {
namespace {

using engine::Catalog;
using engine::SiteTable;
using testing::aim;
using testing::CraftedDescriptors;

extern "C" void bad_input_callable() {}
const char* const kVariants[] = {"one", "two"};
void* g_slot = reinterpret_cast<void*>(&bad_input_callable);

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// A catalog of one group {one, two} with one op whose variants are the given fragments.
struct OneOp {
  abi::GroupRuntime runtime;
  abi::GroupDesc group{"g", kVariants, 2, 0, nullptr, &runtime};
  abi::OpDesc op;
  abi::VariantDesc one;
  abi::VariantDesc two;
  CraftedDescriptors descriptors;

  OneOp(std::uint8_t site_length, std::span<const std::uint8_t> fragment_one)
      : op{"the_op", &group, &g_slot, site_length},
        one{&op,
            "one",
            abi::VariantKind::kInline,
            fragment_one.data(),
            fragment_one.data() + fragment_one.size(),
            &bad_input_callable},
        two{&op, "two", abi::VariantKind::kCall, nullptr, nullptr, &bad_input_callable},
        descriptors{{&group}, {&op}, {&one, &two}} {}
};

alignas(64) std::uint8_t g_code[64];
abi::SiteRecord g_records[2];

TEST(BadInput, SiteShorterThanVariant) {
  // movl $1, 0x10(%rdi): 7 bytes, for 6-byte sites.
  static const std::uint8_t kLong[] = {0xc7, 0x47, 0x10, 0x01, 0x00, 0x00, 0x00};
  OneOp d(6, kLong);
  Result<Catalog> catalog = Catalog::build(d.descriptors.view());
  ASSERT_FALSE(catalog.ok());
  EXPECT_EQ(catalog.error().code(), ErrorCode::kBadImage);
  EXPECT_TRUE(contains(catalog.error().message(), "the_op")) << catalog.error().message();
  EXPECT_TRUE(contains(catalog.error().message(), "7 bytes long"));
}

TEST(BadInput, InlineVariantThatUsesTheStack) {
  static const std::uint8_t kLoad[] = {0x48, 0x8b, 0x04, 0x24};  // mov (%rsp), %rax
  OneOp d(8, kLoad);
  Result<Catalog> catalog = Catalog::build(d.descriptors.view());
  ASSERT_FALSE(catalog.ok());
  EXPECT_EQ(catalog.error().code(), ErrorCode::kBadImage);
  EXPECT_TRUE(contains(catalog.error().message(), "the_op")) << catalog.error().message();
}

Result<x86::Image> image_of_variant_one(std::span<const std::uint8_t> fragment,
                                        std::uintptr_t site) {
  // Static, so that the record's 32-bit offset reaches the op descriptor.
  static std::optional<OneOp> d;
  d.emplace(8, fragment);
  Result<Catalog> catalog = Catalog::build(d->descriptors.view());
  if (!catalog.ok()) return catalog.error();
  aim(g_records[0], site, &d->op);
  Result<SiteTable> table = SiteTable::build({g_records, 1}, catalog.value());
  if (!table.ok()) return table.error();
  return engine::site_image(catalog.value(), table.value(), table.value().entries()[0], 0);
}

TEST(BadInput, VariantThatIsTwoInstructions) {
  static const std::uint8_t kTwo[] = {0x31, 0xc0, 0x90};  // xor %eax,%eax; nop
  Result<x86::Image> image = image_of_variant_one(kTwo, reinterpret_cast<std::uintptr_t>(g_code));
  ASSERT_FALSE(image.ok());
  EXPECT_EQ(image.error().code(), ErrorCode::kBadImage);
  EXPECT_TRUE(contains(image.error().message(), "variant 'one'")) << image.error().message();
  EXPECT_TRUE(contains(image.error().message(), "the_op"));
}

TEST(BadInput, VariantThatIsAForbiddenInstruction) {
  static const std::uint8_t kRet[] = {0xc3};
  Result<x86::Image> image = image_of_variant_one(kRet, reinterpret_cast<std::uintptr_t>(g_code));
  ASSERT_FALSE(image.ok());
  EXPECT_EQ(image.error().code(), ErrorCode::kBadImage);
}

TEST(BadInput, UnrelocatableFragment) {
  // mov 0(%rip), %eax, assembled here; the site sits more than 2 GiB away.
  static const std::uint8_t kRipLoad[] = {0x8b, 0x05, 0x00, 0x00, 0x00, 0x00};
  const auto here = reinterpret_cast<std::uintptr_t>(kRipLoad);
  void* far = MAP_FAILED;
  for (std::uintptr_t hint = (here + (std::uintptr_t{8} << 30)) & ~std::uintptr_t{0xfff};
       far == MAP_FAILED && hint < here + (std::uintptr_t{64} << 30);
       hint += std::uintptr_t{1} << 30) {
    far = mmap(reinterpret_cast<void*>(hint), 4096, PROT_READ,
               MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
  }
  ASSERT_NE(far, MAP_FAILED);
  // The record must reach its site with a 32-bit offset too, so build the image directly.
  Result<x86::Image> image =
      x86::relocate_to_site(kRipLoad, here, reinterpret_cast<std::uintptr_t>(far), 8);
  ASSERT_FALSE(image.ok());
  EXPECT_EQ(image.error().code(), ErrorCode::kUnrelocatable);
  munmap(far, 4096);
}

TEST(BadInput, VariantNameTheGroupDoesNotList) {
  static const std::uint8_t kXor[] = {0x31, 0xc0};
  OneOp d(8, kXor);
  d.two.name = "three";
  Result<Catalog> catalog = Catalog::build(d.descriptors.view());
  ASSERT_FALSE(catalog.ok());
  EXPECT_EQ(catalog.error().code(), ErrorCode::kUnknownName);
  EXPECT_TRUE(contains(catalog.error().message(), "'three'")) << catalog.error().message();
  EXPECT_TRUE(contains(catalog.error().message(), "'one', 'two'"));
}

TEST(BadInput, OpMissingAVariantOfItsGroup) {
  static const std::uint8_t kXor[] = {0x31, 0xc0};
  OneOp d(8, kXor);
  d.descriptors.variants.pop_back();
  Result<Catalog> catalog = Catalog::build(d.descriptors.view());
  ASSERT_FALSE(catalog.ok());
  EXPECT_EQ(catalog.error().code(), ErrorCode::kUnknownName);
  EXPECT_TRUE(contains(catalog.error().message(), "has no variant 'two'"));
}

TEST(BadInput, OpOfAnUndeclaredGroup) {
  static const std::uint8_t kXor[] = {0x31, 0xc0};
  OneOp d(8, kXor);
  d.descriptors.groups.clear();
  Result<Catalog> catalog = Catalog::build(d.descriptors.view());
  ASSERT_FALSE(catalog.ok());
  EXPECT_EQ(catalog.error().code(), ErrorCode::kUnknownName);
}

TEST(BadInput, DuplicateOpAndGroupNames) {
  static const std::uint8_t kXor[] = {0x31, 0xc0};
  OneOp d(8, kXor);
  d.descriptors.groups.push_back(&d.group);
  Result<Catalog> catalog = Catalog::build(d.descriptors.view());
  ASSERT_FALSE(catalog.ok());
  EXPECT_EQ(catalog.error().code(), ErrorCode::kInvalidArgument);
  EXPECT_TRUE(contains(catalog.error().message(), "defined twice"));
}

TEST(BadInput, FeatureGroupOnUnknownFeature) {
  static const std::uint8_t kXor[] = {0x31, 0xc0};
  OneOp d(8, kXor);
  d.group.feature = "warp_drive";
  Result<Catalog> catalog = Catalog::build(d.descriptors.view());
  ASSERT_FALSE(catalog.ok());
  EXPECT_EQ(catalog.error().code(), ErrorCode::kUnknownName);
  EXPECT_TRUE(contains(catalog.error().message(), "warp_drive"));
  d.group.feature = "rtm";
  EXPECT_TRUE(Catalog::build(d.descriptors.view()).ok());
}

TEST(BadInput, GroupWithoutRuntimeRecord) {
  static const std::uint8_t kXor[] = {0x31, 0xc0};
  OneOp d(8, kXor);
  d.group.runtime = nullptr;
  Result<Catalog> catalog = Catalog::build(d.descriptors.view());
  ASSERT_FALSE(catalog.ok());
  EXPECT_EQ(catalog.error().code(), ErrorCode::kInvalidArgument);
  EXPECT_TRUE(contains(catalog.error().message(), "no runtime record"));
}

TEST(BadInput, FeatureGroupWithThreeVariants) {
  static const std::uint8_t kXor[] = {0x31, 0xc0};
  static const char* const kThree[] = {"one", "two", "three"};
  OneOp d(8, kXor);
  d.group = {"g", kThree, 3, 0, "rtm", &d.runtime};
  Result<Catalog> catalog = Catalog::build(d.descriptors.view());
  ASSERT_FALSE(catalog.ok());
  EXPECT_EQ(catalog.error().code(), ErrorCode::kInvalidArgument);
}

TEST(BadInput, UnknownGroupAtBoot) {
  Result<Engine*> engine = boot({.initial = {{"no_such_group", "pv"}}});
  ASSERT_FALSE(engine.ok());
  EXPECT_EQ(engine.error().code(), ErrorCode::kUnknownName);
  EXPECT_TRUE(contains(engine.error().message(), "'demo_lock'")) << "should list the groups";
  EXPECT_TRUE(boot().ok()) << "a refused boot must leave the engine bootable";
}

TEST(BadInput, UnknownVariantAtBoot) {
  Result<Engine*> engine = boot({.initial = {{"demo_lock", "fast"}}});
  ASSERT_FALSE(engine.ok());
  EXPECT_EQ(engine.error().code(), ErrorCode::kUnknownName);
  EXPECT_TRUE(contains(engine.error().message(), "'native', 'pv'")) << engine.error().message();
}

TEST(BadInput, GroupNamedTwiceAtBoot) {
  Result<Engine*> engine = boot({.initial = {{"demo_lock", "pv"}, {"demo_lock", "native"}}});
  ASSERT_FALSE(engine.ok());
  EXPECT_EQ(engine.error().code(), ErrorCode::kInvalidArgument);
}

std::vector<std::vector<std::uint8_t>> snapshot_sites() {
  std::vector<std::vector<std::uint8_t>> out;
  for (const abi::SiteRecord& r : engine::program_site_records()) {
    const auto* p = reinterpret_cast<const std::uint8_t*>(engine::record_site_address(r));
    out.emplace_back(p, p + engine::record_op(r)->site_length);
  }
  return out;
}

const abi::SiteRecord& a_release_site() {
  for (const abi::SiteRecord& r : engine::program_site_records()) {
    if (std::strcmp(engine::record_op(r)->name, "demo_lock_release") == 0) return r;
  }
  ADD_FAILURE() << "no demo_lock_release site";
  return engine::program_site_records()[0];
}

TEST(BadInput, ForeignWriteBeforeBootRefusedAndNothingWritten) {
  const std::uintptr_t site = engine::record_site_address(a_release_site());
  Result<std::unique_ptr<x86::TextPoker>> poker = x86::make_procmem_poker();
  ASSERT_TRUE(poker.ok()) << poker.error().to_string();
  const std::uint8_t original = *reinterpret_cast<const std::uint8_t*>(site + 2);
  const std::uint8_t int3 = 0xcc;
  ASSERT_TRUE(poker.value()->write(site + 2, {&int3, 1}).ok());
  const auto before = snapshot_sites();

  Result<Engine*> engine = boot({.initial = {{"demo_lock", "pv"}}});
  ASSERT_FALSE(engine.ok());
  EXPECT_EQ(engine.error().code(), ErrorCode::kForeignWrite);
  const std::string& message = engine.error().message();
  EXPECT_TRUE(contains(message, "demo_lock_release")) << message;
  EXPECT_TRUE(contains(message, "(in repatch::demo::")) << message;
  EXPECT_TRUE(contains(message, "nothing was written")) << message;
  EXPECT_EQ(snapshot_sites(), before) << "a refused boot wrote a site";
  Result<std::vector<x86::MapEntry>> maps = x86::read_proc_maps();
  ASSERT_TRUE(maps.ok());
  for (const x86::MapEntry& m : maps.value()) {
    EXPECT_EQ(m.path.find("repatch-text"), std::string::npos) << "a refused boot remapped text";
  }

  // Undo the foreign write: now boot goes through.
  ASSERT_TRUE(poker.value()->write(site + 2, {&original, 1}).ok());
  ASSERT_EQ(*reinterpret_cast<const std::uint8_t*>(site + 2), original);
  Result<Engine*> retried = boot({.initial = {{"demo_lock", "pv"}}});
  EXPECT_TRUE(retried.ok()) << retried.error().to_string();
}

TEST(BadInput, ForeignWriteAfterBootDetected) {
  Result<Engine*> engine = boot({.initial = {}, .writer = TextWriter::kProcSelfMem});
  ASSERT_TRUE(engine.ok()) << engine.error().to_string();
  ASSERT_TRUE(engine.value()->verify_sites().ok());
  const std::uintptr_t site = engine::record_site_address(a_release_site());
  Result<std::unique_ptr<x86::TextPoker>> poker = x86::make_procmem_poker();
  ASSERT_TRUE(poker.ok());
  const std::uint8_t int3 = 0xcc;
  ASSERT_TRUE(poker.value()->write(site, {&int3, 1}).ok());
  Status s = engine.value()->verify_sites();
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code(), ErrorCode::kForeignWrite);
  EXPECT_TRUE(contains(s.error().message(), "int3")) << s.error().message();
}

// verify_group scans one group's sites: a foreign write in demo_lock fails that group, names the
// site's bytes, and leaves the other groups whole.
TEST(BadInput, ForeignWriteFailsOnlyItsGroup) {
  Result<Engine*> engine = boot({.initial = {}, .writer = TextWriter::kProcSelfMem});
  ASSERT_TRUE(engine.ok()) << engine.error().to_string();
  ASSERT_TRUE(engine.value()->verify_group("demo_lock").ok());
  const std::uintptr_t site = engine::record_site_address(a_release_site());
  Result<std::unique_ptr<x86::TextPoker>> poker = x86::make_procmem_poker();
  ASSERT_TRUE(poker.ok());
  const std::uint8_t int3 = 0xcc;
  ASSERT_TRUE(poker.value()->write(site, {&int3, 1}).ok());
  Status s = engine.value()->verify_group("demo_lock");
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code(), ErrorCode::kForeignWrite);
  EXPECT_TRUE(contains(s.error().message(), "int3")) << s.error().message();
  EXPECT_TRUE(engine.value()->verify_group("demo_clock").ok());
  Status unknown = engine.value()->verify_group("no_such_group");
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.error().code(), ErrorCode::kUnknownName);
}

}  // namespace
}  // namespace repatch
