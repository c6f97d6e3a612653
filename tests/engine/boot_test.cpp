// The demo guest boots in every combination of initial variants, through each text writer, and its
// sites then behave as the variant they hold.
#include <gtest/gtest.h>

#include <atomic>
#include <string>
#include <thread>
#include <tuple>

#include "guest/demo_ops.h"
#include "guest/demo_workload.h"
#include "repatch/engine.h"

namespace repatch {
namespace {

using BootCase = std::tuple<std::string, std::string, TextWriter>;

class BootInVariant : public ::testing::TestWithParam<BootCase> {};

const SiteStatus* find_site(const EngineStatus& status, const std::string& op,
                            const std::string& symbol_prefix) {
  for (const SiteStatus& s : status.sites) {
    if (s.op == op && s.symbol.rfind(symbol_prefix, 0) == 0) return &s;
  }
  return nullptr;
}

TEST_P(BootInVariant, SitesBehaveAsTheirVariant) {
  const auto& [lock_variant, clock_variant, writer] = GetParam();
  Result<Engine*> engine = boot(
      {.initial = {{"demo_lock", lock_variant}, {"demo_clock", clock_variant}}, .writer = writer});
  ASSERT_TRUE(engine.ok()) << engine.error().to_string();
  ASSERT_TRUE(engine.value()->verify_sites().ok());

  const EngineStatus status = engine.value()->status();
  for (const SiteStatus& site : status.sites) {
    if (site.group == "demo_flush") continue;  // keyed on the CPU; see the Feature tests
    EXPECT_EQ(site.variant, site.group == "demo_lock" ? lock_variant : clock_variant) << site.op;
  }
  EXPECT_EQ(engine.value()->current_variant("demo_lock").value(), lock_variant);
  EXPECT_EQ(engine.value()->current_variant("demo_clock").value(), clock_variant);

  // demo_lock: indirect runs the default variant (native) through the op slots.
  const bool pv = lock_variant == "pv";
  const std::uint64_t acquires = demo_pv_acquire_calls.load();
  const std::uint64_t releases = demo_pv_release_calls.load();
  demo::Lock lock;
  std::uint64_t counter = 0;
  for (int i = 0; i < 3; ++i)
    demo::locked_increment(&lock, &counter);
  EXPECT_EQ(counter, 3u);
  EXPECT_EQ(lock.locked.load(), 0) << "the release site did not release";
  EXPECT_EQ(demo_pv_acquire_calls.load() - acquires, pv ? 3u : 0u);
  EXPECT_EQ(demo_pv_release_calls.load() - releases, pv ? 3u : 0u);

  demo_preempted[5].store(1);
  EXPECT_EQ(demo::owner_preempted(5), pv) << "native vcpu_is_preempted is the constant false";
  demo_preempted[5].store(0);
  EXPECT_FALSE(demo::owner_preempted(5));

  // demo_clock: fixed is an immediate; shared is a RIP-relative load, relocated into the site.
  demo_clock_value = 0x1234;
  const std::uint32_t expected = clock_variant == "shared" ? 0x1234u : demo::kFixedClock;
  EXPECT_EQ(demo::read_clock(), expected);
  demo_clock_value = 0x4321;
  EXPECT_EQ(demo::read_clock(), clock_variant == "shared" ? 0x4321u : demo::kFixedClock);

  // What the sites hold, instruction by instruction.
  const SiteStatus* release = find_site(status, "demo_lock_release", "repatch::demo::release");
  ASSERT_NE(release, nullptr);
  if (lock_variant == "native") {
    EXPECT_NE(release->instruction.find("movb $0x00, (%rdi)"), std::string::npos)
        << release->instruction;
  } else if (lock_variant == "pv") {
    EXPECT_NE(release->instruction.find("call 0x"), std::string::npos) << release->instruction;
  } else {
    EXPECT_NE(release->instruction.find("call *"), std::string::npos) << release->instruction;
  }
  for (const SiteStatus& site : status.sites) {
    EXPECT_EQ(site.bytes.size(), site.length);
    EXPECT_EQ(site.bytes.front(), 0x2e) << site.op << " is not padded with CS prefixes";
  }
}

std::string case_name(const ::testing::TestParamInfo<BootCase>& info) {
  const auto& [lock, clock, writer] = info.param;
  return lock + "_" + clock + (writer == TextWriter::kMemfdAlias ? "_memfd" : "_procmem");
}

INSTANTIATE_TEST_SUITE_P(Demo, BootInVariant,
                         ::testing::Combine(::testing::Values("native", "pv", "indirect"),
                                            ::testing::Values("fixed", "shared", "indirect"),
                                            ::testing::Values(TextWriter::kMemfdAlias,
                                                              TextWriter::kProcSelfMem)),
                         case_name);

const GroupStatus& group_status(const EngineStatus& status, const std::string& name) {
  for (const GroupStatus& g : status.groups) {
    if (g.name == name) return g;
  }
  ADD_FAILURE() << "no group " << name;
  return status.groups.front();
}

std::string flush_instruction(const EngineStatus& status) {
  for (const SiteStatus& s : status.sites) {
    if (s.op == "demo_flush_line") return s.instruction;
  }
  return "";
}

TEST(Feature, GroupFollowsTheCpuByDefault) {
  Result<Engine*> engine = boot();
  ASSERT_TRUE(engine.ok()) << engine.error().to_string();
  const EngineStatus status = engine.value()->status();
  const GroupStatus& flush = group_status(status, "demo_flush");
  EXPECT_EQ(flush.feature, "clflushopt");
  EXPECT_EQ(flush.variant, flush.feature_present ? "clflushopt" : "clflush");
  static std::uint64_t line = 7;
  demo::flush(&line);  // runs whichever flush the site holds; a #UD would kill the test
  EXPECT_EQ(line, 7u);
}

TEST(Feature, AssumedFeaturesChooseTheVariant) {
  Result<Engine*> engine = boot({.initial = {}, .features = std::vector<std::string>{}});
  ASSERT_TRUE(engine.ok()) << engine.error().to_string();
  const EngineStatus status = engine.value()->status();
  EXPECT_EQ(group_status(status, "demo_flush").variant, "clflush");
  EXPECT_FALSE(group_status(status, "demo_flush").feature_present);
  EXPECT_NE(flush_instruction(status).find("clflush "), std::string::npos)
      << flush_instruction(status);
}

TEST(Feature, AssumedPresentFeatureChoosesTheWithVariant) {
  Result<Engine*> engine =
      boot({.initial = {}, .features = std::vector<std::string>{"clflushopt", "rtm"}});
  ASSERT_TRUE(engine.ok()) << engine.error().to_string();
  const EngineStatus status = engine.value()->status();
  EXPECT_EQ(group_status(status, "demo_flush").variant, "clflushopt");
  EXPECT_NE(flush_instruction(status).find("clflushopt"), std::string::npos)
      << flush_instruction(status);
}

TEST(Feature, ExplicitChoiceOverridesTheCpu) {
  Result<Engine*> engine = boot(
      {.initial = {{"demo_flush", "clflush"}}, .features = std::vector<std::string>{"clflushopt"}});
  ASSERT_TRUE(engine.ok()) << engine.error().to_string();
  EXPECT_EQ(engine.value()->current_variant("demo_flush").value(), "clflush");
}

TEST(Feature, UnknownAssumedFeatureRefused) {
  Result<Engine*> engine = boot({.initial = {}, .features = std::vector<std::string>{"avx9000"}});
  ASSERT_FALSE(engine.ok());
  EXPECT_EQ(engine.error().code(), ErrorCode::kUnknownName);
  EXPECT_NE(engine.error().message().find("'clflushopt'"), std::string::npos)
      << engine.error().message();
}

TEST(Boot, DefaultsToFirstVariantOfEachGroup) {
  Result<Engine*> engine = boot();
  ASSERT_TRUE(engine.ok()) << engine.error().to_string();
  EXPECT_EQ(engine.value()->current_variant("demo_lock").value(), "native");
  EXPECT_EQ(engine.value()->current_variant("demo_clock").value(), "fixed");
  EXPECT_EQ(Engine::get(), engine.value());
}

TEST(Boot, UnpatchedSitesWorkBeforeBoot) {
  // No boot: every site still holds `call *slot(%rip)` and the slot points at the default variant.
  EXPECT_EQ(Engine::get(), nullptr);
  demo::Lock lock;
  std::uint64_t counter = 0;
  demo::locked_increment(&lock, &counter);
  EXPECT_EQ(counter, 1u);
  EXPECT_EQ(lock.locked.load(), 0);
  EXPECT_FALSE(demo::owner_preempted(1));
  EXPECT_EQ(demo::read_clock(), demo::kFixedClock);
}

TEST(Boot, SecondBootIsRefused) {
  ASSERT_TRUE(boot().ok());
  Result<Engine*> again = boot();
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.error().code(), ErrorCode::kState);
}

TEST(Boot, RefusedWhileOtherThreadsRun) {
  std::atomic<bool> stop{false};
  std::thread other([&] {
    while (!stop.load())
      std::this_thread::yield();
  });
  Result<Engine*> engine = boot();
  stop.store(true);
  other.join();
  ASSERT_FALSE(engine.ok());
  EXPECT_EQ(engine.error().code(), ErrorCode::kState);
  EXPECT_NE(engine.error().message().find("threads"), std::string::npos);
  // Nothing was written, so boot works once the other thread is gone.
  EXPECT_TRUE(boot().ok());
}

TEST(Boot, RetainsEightBytesPerSite) {
  Result<Engine*> engine = boot();
  ASSERT_TRUE(engine.ok());
  const EngineStatus status = engine.value()->status();
  EXPECT_EQ(status.bytes_per_site, 8u);
  EXPECT_EQ(Engine::bytes_per_site(), 8u);
  ASSERT_FALSE(status.sites.empty());
  EXPECT_GE(status.retained_bytes, 8 * status.sites.size());
}

TEST(Boot, StatusNamesSitesAndFunctions) {
  Result<Engine*> engine = boot({.initial = {{"demo_lock", "pv"}}});
  ASSERT_TRUE(engine.ok());
  const EngineStatus status = engine.value()->status();
  ASSERT_EQ(status.groups.size(), 3u);
  std::size_t lock_sites = 0;
  for (const SiteStatus& s : status.sites) {
    EXPECT_FALSE(s.instruction.empty());
    EXPECT_EQ(s.instruction.find("(bad"), std::string::npos) << s.instruction;
    EXPECT_NE(s.symbol.find("repatch::demo::"), std::string::npos) << s.symbol;
    if (s.group == "demo_lock") ++lock_sites;
  }
  for (const GroupStatus& g : status.groups) {
    if (g.name == "demo_lock") {
      EXPECT_EQ(g.sites, lock_sites);
      EXPECT_EQ(g.ops, 3u);
      EXPECT_FALSE(g.interchangeable);
      EXPECT_EQ(g.feature, "");
    } else {
      EXPECT_TRUE(g.interchangeable);
    }
  }
  for (std::size_t i = 1; i < status.sites.size(); ++i) {
    EXPECT_LT(status.sites[i - 1].address + status.sites[i - 1].length,
              status.sites[i].address + 1);
  }
}

}  // namespace
}  // namespace repatch
