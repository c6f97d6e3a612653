// The stress harness's trigger decider: the triggers' policy deciding the switcher's requests,
// with the outcomes fed back to it.
#include "stress/trigger_decider.h"

#include <gtest/gtest.h>

#include <atomic>
#include <memory>

namespace repatch::stress {
namespace {

using std::chrono::milliseconds;
using std::chrono::nanoseconds;

std::vector<SwitchableGroup> mode_groups() {
  return {{"spinlock", {"native", "pv"}, "native"}, {"tlb", {"native", "pv"}, "native"}};
}

TriggerSettings settings() {
  Scenario s;
  s.trigger = Trigger::kSimulated;
  return trigger_settings(s);
}

// A ManualSource on a clock the test moves; the decider's own polling time moves with it.
struct Rig {
  std::shared_ptr<std::atomic<std::int64_t>> now_ns =
      std::make_shared<std::atomic<std::int64_t>>(0);
  triggers::ManualSource* source = nullptr;
  std::unique_ptr<TriggerDecider> decider;
  Clock::time_point origin = Clock::now();

  Rig() {
    auto clock = [now = now_ns] { return nanoseconds(now->load()); };
    auto owned = std::make_unique<triggers::ManualSource>(clock);
    source = owned.get();
    decider = std::make_unique<TriggerDecider>(mode_groups(), std::move(owned), settings());
  }
  // Advances time by `step` and asks for the next request.
  std::optional<SwitchRequest> poll(milliseconds step) {
    now_ns->fetch_add(nanoseconds(step).count());
    Clock::time_point wake;
    return decider->next(origin + nanoseconds(now_ns->load()), &wake);
  }
  void steal(double percent) {
    triggers::HintReading r;
    r.steal_percent = percent;
    source->set(r);
  }
};

SwitchOutcome committed() {
  SwitchOutcome o;
  o.attempts = 1;
  return o;
}

SwitchOutcome refused() {
  SwitchOutcome o;
  o.status = Error(ErrorCode::kState, "the switch was refused in this test");
  o.reason = SwitchAbort::kBusy;
  o.attempts = 1;
  return o;
}

TEST(TriggerDecider, SimulatedThresholdsFollowThePreemptionRate) {
  Scenario s;
  s.trigger = Trigger::kSimulated;
  s.preempt_rate = 100;
  s.vcpus = 4;
  const TriggerSettings simulated = trigger_settings(s);
  ASSERT_TRUE(simulated.policy.steal.has_value());
  EXPECT_DOUBLE_EQ(simulated.policy.steal->enter, 100 * 525e-6 / 4 * 100);
  EXPECT_DOUBLE_EQ(simulated.policy.steal->leave, simulated.policy.steal->enter / 2);
  EXPECT_TRUE(triggers::validate(simulated.policy).ok());
  s.trigger = Trigger::kReal;
  const TriggerSettings real = trigger_settings(s);
  EXPECT_DOUBLE_EQ(real.policy.steal->enter, triggers::PolicyConfig{}.steal->enter);
  EXPECT_DOUBLE_EQ(real.policy.steal->leave, triggers::PolicyConfig{}.steal->leave);
}

TEST(TriggerDecider, HighStealSwitchesBothGroupsToPvAfterTheDwell) {
  Rig rig;
  const double enter = settings().policy.steal->enter;
  rig.steal(enter * 3);
  // Within the first second the dwell holds the switch.
  EXPECT_FALSE(rig.poll(milliseconds(300)).has_value());
  std::optional<SwitchRequest> request;
  for (int i = 0; i < 8 && !request; ++i)
    request = rig.poll(milliseconds(300));
  ASSERT_TRUE(request.has_value());
  ASSERT_EQ(request->choices.size(), 2u);
  EXPECT_EQ(request->choices[0].group, "spinlock");
  EXPECT_EQ(request->choices[0].variant, "pv");
  EXPECT_EQ(request->choices[1].group, "tlb");
  EXPECT_EQ(request->choices[1].variant, "pv");
  const SwitchOutcome outcome = committed();
  rig.decider->observe({DeciderEvent::Kind::kSwitchDone, &*request, &outcome});
  EXPECT_EQ(rig.decider->groups()[0].current, "pv");
  EXPECT_EQ(rig.decider->groups()[1].current, "pv");
  const TriggerTotals& t = rig.decider->totals();
  EXPECT_EQ(t.by_action[static_cast<std::size_t>(triggers::Action::kSwitch)], 1u);
  EXPECT_GE(t.by_action[static_cast<std::size_t>(triggers::Action::kHeldByDwell)], 1u);
  ASSERT_EQ(t.switches.size(), 1u);
  EXPECT_NE(t.switches[0].find("committed"), std::string::npos) << t.switches[0];
  // Still high: the policy stays in oversubscribed.
  EXPECT_FALSE(rig.poll(milliseconds(300)).has_value());
  EXPECT_EQ(t.by_action[static_cast<std::size_t>(triggers::Action::kStay)], 1u);
}

TEST(TriggerDecider, AFailedSwitchLeavesTheGroupsAndIsRetried) {
  Rig rig;
  rig.steal(settings().policy.steal->enter * 3);
  std::optional<SwitchRequest> request;
  for (int i = 0; i < 10 && !request; ++i)
    request = rig.poll(milliseconds(300));
  ASSERT_TRUE(request.has_value());
  const SwitchOutcome failed = refused();
  rig.decider->observe({DeciderEvent::Kind::kSwitchDone, &*request, &failed});
  EXPECT_EQ(rig.decider->groups()[0].current, "native");
  std::optional<SwitchRequest> retry;
  for (int i = 0; i < 10 && !retry; ++i)
    retry = rig.poll(milliseconds(300));
  ASSERT_TRUE(retry.has_value());
  EXPECT_EQ(retry->choices[0].variant, "pv");
  const TriggerTotals& t = rig.decider->totals();
  ASSERT_EQ(t.switches.size(), 1u);
  EXPECT_NE(t.switches[0].find("refused in this test"), std::string::npos) << t.switches[0];
}

TEST(TriggerDecider, AReplayThatEndsStopsDeciding) {
  Result<std::unique_ptr<triggers::HintSource>> replay =
      triggers::make_replay_source("0 steal=0.5\n1000 steal=0.6\n");
  ASSERT_TRUE(replay.ok()) << replay.error().to_string();
  TriggerDecider decider(mode_groups(), std::move(replay.value()), settings());
  Clock::time_point now = Clock::now();
  Clock::time_point wake;
  for (int i = 0; i < 4; ++i) {
    EXPECT_FALSE(decider.next(now, &wake).has_value());
    now += milliseconds(300);
  }
  EXPECT_EQ(decider.totals().source_ended, 1u);
  EXPECT_EQ(decider.totals().source, "replay");
  EXPECT_EQ(
      decider.totals().by_action[static_cast<std::size_t>(triggers::Action::kStay)] +
          decider.totals().by_action[static_cast<std::size_t>(triggers::Action::kHeldByDwell)],
      2u);
}

}  // namespace
}  // namespace repatch::stress
