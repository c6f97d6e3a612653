// A shared object with sites that the program links, loaded before main: boot takes it with the
// program, in boot's one pass.
#include <gtest/gtest.h>

#include <string>

#include "repatch/engine.h"

extern "C" int preloaded_read();

namespace repatch {
namespace {

TEST(PreloadedModule, BootFindsItsSitesAndSwitchesThem) {
  EXPECT_EQ(preloaded_read(), 1) << "before boot, the site runs its default variant";
  Result<Engine*> engine = boot({.initial = {{"preloaded", "second"}}});
  ASSERT_TRUE(engine.ok()) << engine.error().to_string();
  EXPECT_EQ(preloaded_read(), 2);
  bool listed = false;
  for (const ModuleStatus& m : engine.value()->modules()) {
    if (m.name.find("librepatch_test_preloaded_module.so") != std::string::npos) {
      listed = true;
      EXPECT_EQ(m.sites, 1u);
      EXPECT_EQ(m.groups, 1u);
    }
  }
  EXPECT_TRUE(listed) << "the preloaded object is not among the engine's objects";
  ASSERT_TRUE(engine.value()->switch_groups({{"preloaded", "first"}}).committed());
  EXPECT_EQ(preloaded_read(), 1);
  EXPECT_TRUE(engine.value()->verify_sites().ok());
}

}  // namespace
}  // namespace repatch
