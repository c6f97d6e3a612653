// Groups with in-memory state: the engine checks and converts it under the stop, after the INT3
// fence and before any new code is written, and refuses a switch whose state cannot be converted.
#include "repatch/group_state.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cstring>

#include "base/test_hooks.h"
#include "guest/demo_ops.h"
#include "guest/demo_workload.h"
#include "repatch/engine.h"

namespace repatch {
namespace {

// Records what the engine asked, and what the sites held when it asked.
class RecordingState final : public GroupState {
 public:
  bool refuse = false;
  std::atomic<int> checks{0};
  std::atomic<int> converts{0};
  std::atomic<int> last_from{-1}, last_to{-1};
  std::atomic<std::uint8_t> first_byte_at_convert{0};
  std::uintptr_t watched_site = 0;

  bool can_convert(int from, int to, char* why, std::size_t size) noexcept override {
    checks.fetch_add(1);
    last_from.store(from);
    last_to.store(to);
    if (!refuse) return true;
    std::strncpy(why, "lock 0x1234 'runqueue' is corrupt in native encoding", size);
    return false;
  }
  void convert(int from, int to) noexcept override {
    converts.fetch_add(1);
    last_from.store(from);
    last_to.store(to);
    first_byte_at_convert.store(*reinterpret_cast<const std::uint8_t*>(watched_site));
  }
};

Engine* boot_demo() {
  Result<Engine*> engine = boot({.initial = {{"demo_lock", "native"}}});
  EXPECT_TRUE(engine.ok()) << engine.error().to_string();
  return engine.ok() ? engine.value() : nullptr;
}

std::uintptr_t first_site_of(Engine* engine, const std::string& group) {
  for (const SiteStatus& site : engine->status().sites) {
    if (site.group == group) return site.address;
  }
  return 0;
}

TEST(GroupState, ConvertedUnderTheFenceBeforeAnyNewCode) {
  Engine* engine = boot_demo();
  ASSERT_NE(engine, nullptr);
  RecordingState state;
  state.watched_site = first_site_of(engine, "demo_lock");
  ASSERT_TRUE(engine->set_group_state("demo_lock", &state).ok());
  const SwitchOutcome outcome = engine->switch_groups({{"demo_lock", "pv"}});
  ASSERT_TRUE(outcome.committed()) << outcome.status.error().to_string();
  EXPECT_EQ(state.checks.load(), 1);
  EXPECT_EQ(state.converts.load(), 1);
  EXPECT_EQ(state.last_from.load(), 0);
  EXPECT_EQ(state.last_to.load(), 1);
  EXPECT_EQ(state.first_byte_at_convert.load(), 0xcc) << "converted while the site did not trap";
  ASSERT_TRUE(engine->switch_groups({{"demo_lock", "native"}}).committed());
  EXPECT_EQ(state.last_from.load(), 1);
  EXPECT_EQ(state.last_to.load(), 0);
  EXPECT_EQ(state.converts.load(), 2);
}

TEST(GroupState, AStateThatCannotBeConvertedRefusesTheSwitch) {
  Engine* engine = boot_demo();
  ASSERT_NE(engine, nullptr);
  RecordingState state;
  state.refuse = true;
  ASSERT_TRUE(engine->set_group_state("demo_lock", &state).ok());
  const EngineStatus before = engine->status();
  const SwitchOutcome outcome = engine->switch_groups({{"demo_lock", "pv"}});
  ASSERT_FALSE(outcome.committed());
  EXPECT_EQ(outcome.reason, SwitchAbort::kStateRefused);
  EXPECT_EQ(outcome.attempts, 1u) << "a state that cannot be converted is not retried";
  EXPECT_NE(outcome.status.error().message().find("'runqueue' is corrupt"), std::string::npos)
      << outcome.status.error().message();
  EXPECT_EQ(state.converts.load(), 0);
  EXPECT_EQ(engine->current_variant("demo_lock").value(), "native");
  for (std::size_t i = 0; i < before.sites.size(); ++i) {
    EXPECT_EQ(before.sites[i].bytes, engine->status().sites[i].bytes);
  }
  demo::Lock lock;
  std::uint64_t counter = 0;
  demo::locked_increment(&lock, &counter);
  EXPECT_EQ(counter, 1u);
}

TEST(GroupState, OnlyGroupsWhoseVariantsNeverRunSideBySideHaveState) {
  Engine* engine = boot_demo();
  ASSERT_NE(engine, nullptr);
  RecordingState state;
  const Status interchangeable = engine->set_group_state("demo_clock", &state);
  ASSERT_FALSE(interchangeable.ok());
  EXPECT_EQ(interchangeable.error().code(), ErrorCode::kInvalidArgument);
  const Status unknown = engine->set_group_state("demo_lok", &state);
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.error().code(), ErrorCode::kUnknownName);
  EXPECT_TRUE(engine->set_group_state("demo_lock", nullptr).ok());
}

}  // namespace
}  // namespace repatch
