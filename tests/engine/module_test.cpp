// Shared objects with sites, loaded and unloaded after boot (engine/modules.h): a module's sites
// take their groups' current variants before its code runs and follow every later switch; a
// module that does not fit is refused with nothing written, and named.
#include <dlfcn.h>
#include <gtest/gtest.h>
#include <time.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>

#include "base/test_hooks.h"
#include "engine/object_list.h"
#include "repatch/engine.h"
#include "tests/modules/pair_ops.h"

PAIR_DEFINE_OPS();

namespace repatch {
namespace {

std::string module_path(const char* name) {
  return std::string(REPATCH_TEST_MODULE_DIR) + "/lib" + name + ".so";
}

template <typename Fn>
Fn* symbol(void* handle, const char* name) {
  return reinterpret_cast<Fn*>(dlsym(handle, name));
}

Engine* boot_pair() {
  Result<Engine*> engine = boot({.initial = {{"pair", "one"}}});
  EXPECT_TRUE(engine.ok()) << engine.error().to_string();
  return engine.ok() ? engine.value() : nullptr;
}

const ModuleStatus* find_module(const std::vector<ModuleStatus>& modules, const std::string& path) {
  for (const ModuleStatus& m : modules) {
    if (m.name == path) return &m;
  }
  return nullptr;
}

TEST(Modules, TheProgramIsTheFirstObject) {
  Engine* engine = boot_pair();
  ASSERT_NE(engine, nullptr);
  const std::vector<ModuleStatus> modules = engine->modules();
  ASSERT_FALSE(modules.empty());
  EXPECT_EQ(modules.front().name, "(the program)");
  EXPECT_GE(modules.front().sites, 2u);
  EXPECT_TRUE(modules.front().refusal.empty());
}

TEST(Modules, ASiteOfTheProgramsGroupTakesItsVariantAndFollowsSwitches) {
  Engine* engine = boot_pair();
  ASSERT_NE(engine, nullptr);
  ASSERT_TRUE(engine->switch_groups({{"pair", "two"}}).committed());
  Result<void*> handle = engine->load_module(module_path("repatch_test_pair_module"));
  ASSERT_TRUE(handle.ok()) << handle.error().to_string();
  auto* pass = symbol<int()>(handle.value(), "module_pair_pass");
  ASSERT_NE(pass, nullptr);
  EXPECT_EQ(pass(), 2) << "the module's sites did not take the group's variant when it loaded";
  const std::vector<ModuleStatus> modules = engine->modules();
  const ModuleStatus* status = find_module(modules, module_path("repatch_test_pair_module"));
  ASSERT_NE(status, nullptr);
  EXPECT_EQ(status->sites, 2u);
  EXPECT_TRUE(status->refusal.empty());
  EXPECT_GT(status->retained_bytes, 2 * Engine::bytes_per_site());
  std::printf("the module's 2 sites: %zu bytes kept, in a catalog of %zu groups\n",
              status->retained_bytes, engine->status().groups.size());

  ASSERT_TRUE(engine->switch_groups({{"pair", "one"}}).committed());
  EXPECT_EQ(pass(), 1) << "a switch left the module's sites out";
  EXPECT_EQ(pair_first(), 1);
  EXPECT_TRUE(engine->verify_group("pair").ok());

  ASSERT_EQ(dlclose(handle.value()), 0);
  EXPECT_EQ(find_module(engine->modules(), module_path("repatch_test_pair_module")), nullptr);
  // The program's sites still switch, the module's are gone from the table.
  ASSERT_TRUE(engine->switch_groups({{"pair", "two"}}).committed());
  EXPECT_EQ(pair_second(), 2);
}

TEST(Modules, AModuleWithAGroupOfItsOwn) {
  Engine* engine = boot_pair();
  ASSERT_NE(engine, nullptr);
  const std::string path = module_path("repatch_test_own_group_module");
  for (int round = 0; round < 3; ++round) {
    Result<void*> handle = engine->load_module(path);
    ASSERT_TRUE(handle.ok()) << handle.error().to_string();
    auto* pass = symbol<int()>(handle.value(), "module_own_pass");
    ASSERT_NE(pass, nullptr);
    // The group keeps its variant across unloads: its name is known from the first load on.
    EXPECT_EQ(pass(), round == 0 ? 1 : 2);
    EXPECT_EQ(engine->current_variant("mod_pair").value(), round == 0 ? "low" : "high");
    ASSERT_TRUE(engine->switch_groups({{"mod_pair", "high"}}).committed());
    EXPECT_EQ(pass(), 2);
    EXPECT_TRUE(engine->verify_group("mod_pair").ok());
    ASSERT_EQ(dlclose(handle.value()), 0);
  }
  // With the module gone, its group has no sites but can still be named.
  ASSERT_TRUE(engine->switch_groups({{"mod_pair", "low"}}).committed());
}

TEST(Modules, AVariantTheRunningGroupLacksIsRefusedAndNamed) {
  Engine* engine = boot_pair();
  ASSERT_NE(engine, nullptr);
  const std::string path = module_path("repatch_test_bad_variant_module");
  Result<void*> handle = engine->load_module(path);
  ASSERT_FALSE(handle.ok());
  EXPECT_EQ(handle.error().code(), ErrorCode::kUnknownName);
  EXPECT_NE(handle.error().message().find(path), std::string::npos) << handle.error().message();
  EXPECT_NE(handle.error().message().find("'three'"), std::string::npos)
      << handle.error().message();
  // load_module closed it again.
  EXPECT_EQ(find_module(engine->modules(), path), nullptr);
  EXPECT_TRUE(engine->verify_sites().ok());
}

TEST(Modules, AnOpTheRunningGroupLacksIsRefusedAndNamed) {
  Engine* engine = boot_pair();
  ASSERT_NE(engine, nullptr);
  const std::string path = module_path("repatch_test_unknown_op_module");
  Result<void*> handle = engine->load_module(path);
  ASSERT_FALSE(handle.ok());
  EXPECT_EQ(handle.error().code(), ErrorCode::kUnknownName);
  EXPECT_NE(handle.error().message().find("'pair_third'"), std::string::npos)
      << handle.error().message();
}

TEST(ModulesDeathTest, ARefusedModuleLoadedWithDlopenAbortsWhenItsSiteRuns) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        Engine* engine = boot_pair();
        if (engine == nullptr) std::abort();
        const std::string path = module_path("repatch_test_bad_variant_module");
        void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
        if (handle == nullptr) std::abort();
        const std::vector<ModuleStatus> modules = engine->modules();
        const ModuleStatus* status = find_module(modules, path);
        if (status == nullptr || status->refusal.empty()) std::abort();
        std::fprintf(stderr, "refusal: %s\n", status->refusal.c_str());
        symbol<int()>(handle, "module_bad_first")();
      },
      "a site of an object the engine refused to load was run; refused: .*bad_variant_module");
}

TEST(Modules, LoadedAndUnloaded1000TimesWhileItsGroupSwitches) {
  Engine* engine = boot_pair();
  ASSERT_NE(engine, nullptr);
  std::atomic<bool> stop{false};
  std::atomic<int> switches{0};
  std::thread switcher([&] {
    for (int i = 0; !stop.load(); ++i) {
      const SwitchOutcome r = engine->switch_groups({{"pair", i % 2 == 0 ? "two" : "one"}});
      if (r.committed()) switches.fetch_add(1);
    }
  });
  const std::string path = module_path("repatch_test_pair_module");
  int mixed = 0;
  for (int i = 0; i < 1000; ++i) {
    Result<void*> handle = engine->load_module(path);
    ASSERT_TRUE(handle.ok()) << handle.error().to_string();
    auto* pass = symbol<int()>(handle.value(), "module_pair_pass");
    for (int j = 0; j < 10; ++j) {
      if (pass() < 0) ++mixed;
    }
    const Status s = engine->verify_group("pair");
    EXPECT_TRUE(s.ok()) << s.error().to_string();
    ASSERT_EQ(dlclose(handle.value()), 0);
  }
  stop.store(true);
  switcher.join();
  std::printf("1000 loads and unloads, %d switches committed meanwhile, %d mixed passes\n",
              switches.load(), mixed);
  EXPECT_EQ(mixed, 0) << "a pass saw the two ops in different variants";
  EXPECT_GT(switches.load(), 0);
  EXPECT_TRUE(engine->verify_sites().ok());
}

// Sleeps about a millisecond; async-signal-safe (the hooks below run inside a switch or a lookup).
void nap() noexcept {
  const timespec ms{0, 1000L * 1000L};
  nanosleep(&ms, nullptr);
}

// ---- Hazard: a module that loads while a switch of its group is in progress -------------------
// The loader must wait for the switch and take the variant it commits. Without the wait
// (module_wait off), the module is patched to the variant the group is leaving, and the switch,
// planned before it loaded, leaves its sites there.
struct LoadDuringSwitch {
  std::atomic<bool> armed{false};
  std::atomic<bool> load_started{false};
  std::atomic<bool> load_done{false};
};
LoadDuringSwitch g_load;

void load_while_stopped(test::Point point, std::uint32_t, void*) noexcept {
  if (point != test::Point::kStopped || !g_load.armed.exchange(false)) return;
  g_load.load_started.store(true);
  // Give the loader every chance to run beside the switch (it should be blocked instead).
  for (int i = 0; i < 300 && !g_load.load_done.load(); ++i)
    nap();
}

TEST(Hazard, ModuleLoadedDuringASwitch_TakesTheVariantItCommits) {
  Engine* engine = boot_pair();
  ASSERT_NE(engine, nullptr);
  test::set_injection(&load_while_stopped, nullptr);
  g_load.armed.store(true);
  void* handle = nullptr;
  std::thread loader([&] {
    while (!g_load.load_started.load())
      std::this_thread::yield();
    Result<void*> loaded = engine->load_module(module_path("repatch_test_pair_module"));
    if (loaded.ok()) handle = loaded.value();
    g_load.load_done.store(true);
  });
  const SwitchOutcome r =
      engine->switch_groups({{"pair", "two"}}, {.writer = SwitchWriter::kStopless});
  loader.join();
  test::set_injection(nullptr, nullptr);
  ASSERT_TRUE(r.committed()) << r.status.error().to_string();
  ASSERT_NE(handle, nullptr);
  const Status s = engine->verify_group("pair");
  EXPECT_TRUE(s.ok()) << s.error().to_string();
  EXPECT_EQ(symbol<int()>(handle, "module_pair_pass")(), 2)
      << "the module's sites hold the variant the switch left";
}

// ---- Hazard: a module unloaded while a lookup reads its table ---------------------------------
// The lookup the #BP handler makes (engine::is_site_start) is held inside its read-side section
// while another thread unloads the module. The unload must wait for the grace period before it
// frees the module's table; without it (module_grace off) the lookup reads a freed object.
struct LookupDuringUnload {
  std::atomic<pid_t> reader{0};
  std::atomic<bool> inside{false};
  std::atomic<bool> release{false};
};
LookupDuringUnload g_lookup;

void hold_lookup(test::Point point, std::uint32_t, void*) noexcept {
  if (point != test::Point::kObjectLookup || gettid() != g_lookup.reader.load()) return;
  g_lookup.inside.store(true);
  while (!g_lookup.release.load())
    nap();
}

TEST(Hazard, ModuleUnloadedUnderALookup_IsFreedOnlyAfterIt) {
  Engine* engine = boot_pair();
  ASSERT_NE(engine, nullptr);
  Result<void*> handle = engine->load_module(module_path("repatch_test_pair_module"));
  ASSERT_TRUE(handle.ok()) << handle.error().to_string();
  // A site of the module: one inside the range its writer remapped.
  const EngineStatus status = engine->status();
  const ModuleStatus* module = find_module(status.modules, module_path("repatch_test_pair_module"));
  ASSERT_NE(module, nullptr);
  std::uintptr_t site = 0;
  for (const SiteStatus& s : status.sites) {
    if (s.address >= module->text_begin && s.address < module->text_end) site = s.address;
  }
  ASSERT_NE(site, 0u) << "no site of the module in the status";
  test::set_injection(&hold_lookup, nullptr);
  bool found = false;
  std::thread reader([&] {
    g_lookup.reader.store(gettid());
    found = engine::is_site_start(site);
  });
  while (!g_lookup.inside.load())
    std::this_thread::yield();
  std::atomic<bool> closed{false};
  std::thread closer([&] {
    dlclose(handle.value());
    closed.store(true);
  });
  // The unload waits for the reader's grace period; give it time to go wrong if it does not.
  for (int i = 0; i < 300 && !closed.load(); ++i)
    nap();
  const bool closed_under_reader = closed.load();
  g_lookup.release.store(true);
  reader.join();
  closer.join();
  test::set_injection(nullptr, nullptr);
  EXPECT_FALSE(closed_under_reader) << "the module was unloaded while a lookup read its table";
  EXPECT_EQ(engine::freed_object_reads(), 0u) << "a lookup read a freed object";
  EXPECT_TRUE(found);
}

}  // namespace
}  // namespace repatch
