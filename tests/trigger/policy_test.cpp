// The policy and the trigger loop on replayed traces: exactly the expected switches, with
// hysteresis, minimum dwell, rate limit, KVM_HINTS_REALTIME, retries and dry run. The switch
// function is a recorder, so these tests need no engine.
#include <gtest/gtest.h>

#include <string>
#include <thread>
#include <vector>

#include "repatch/triggers.h"

namespace repatch::triggers {
namespace {

using namespace std::chrono_literals;

// Records every switch asked for; fails the first `failures` of them with kBusy.
struct Recorder {
  std::vector<std::vector<GroupChoice>> calls;
  int failures = 0;

  SwitchFunction function() {
    return [this](const std::vector<GroupChoice>& choices, const SwitchOptions&) {
      calls.push_back(choices);
      SwitchOutcome outcome;
      outcome.attempts = 1;
      if (failures > 0) {
        --failures;
        outcome.status = Error(ErrorCode::kState, "vCPU 1 busy");
        outcome.reason = SwitchAbort::kBusy;
      }
      return outcome;
    };
  }
  // "pv" or "native" per call, from the spinlock choice.
  std::vector<std::string> variants() const {
    std::vector<std::string> out;
    for (const auto& c : calls)
      out.push_back(c.at(0).variant);
    return out;
  }
};

// Replays `trace` through a loop with `policy` and returns the actions, in order.
std::vector<std::string> replay(const std::string& trace, const PolicyConfig& policy,
                                Recorder& recorder, std::vector<Decision>* log = nullptr) {
  Result<std::unique_ptr<HintSource>> source = make_replay_source(trace);
  EXPECT_TRUE(source.ok()) << source.error().to_string();
  if (!source.ok()) return {};
  TriggerConfig config;
  config.policy = policy;
  Result<std::unique_ptr<TriggerLoop>> loop =
      TriggerLoop::create(std::move(source.value()), config, recorder.function());
  EXPECT_TRUE(loop.ok()) << loop.error().to_string();
  if (!loop.ok()) return {};
  std::vector<std::string> actions;
  for (;;) {
    Result<std::optional<Decision>> d = loop.value()->poll_once();
    EXPECT_TRUE(d.ok());
    if (!d.ok() || !d.value()) break;
    actions.push_back(action_name(d.value()->action));
  }
  if (log != nullptr) *log = loop.value()->decisions();
  return actions;
}

PolicyConfig base_policy() {
  PolicyConfig p;
  p.steal = Thresholds{.enter = 10, .leave = 3};
  p.min_dwell = 2s;
  p.max_switches = 3;
  p.rate_window = 20s;
  p.max_retries = 3;
  p.retry_backoff = 1s;
  return p;
}

constexpr const char* kDay = R"(# time_ms fields
0      steal=1            # dedicated, calm
1000   steal=12           # crosses enter, but dedicated only since 0: dwell holds
2000   steal=15           # switch to oversubscribed
3000   steal=5            # between leave and enter: hysteresis keeps oversubscribed
3500   steal=2            # below leave, but oversubscribed only since 2000: dwell holds
4000   steal=2            # switch to dedicated
5000   steal=9            # below enter: stays dedicated
6000   steal=11           # switch to oversubscribed (third switch in the window)
8000   steal=0            # wanted dedicated, but 3 switches within 20 s: rate limit
22000  steal=0            # the 2000 switch left the window: switch to dedicated
23000  steal=50 realtime=1  # KVM_HINTS_REALTIME: dedicated whatever the steal
30000  steal=50           # switch to oversubscribed
)";

TEST(TriggerPolicy, ReplayedDaySwitchesExactly) {
  Recorder recorder;
  std::vector<Decision> log;
  const std::vector<std::string> actions = replay(kDay, base_policy(), recorder, &log);
  const std::vector<std::string> expected = {
      "stay",   "held_by_dwell",      "switch", "stay", "held_by_dwell", "switch", "stay",
      "switch", "held_by_rate_limit", "switch", "stay", "switch"};
  EXPECT_EQ(actions, expected);
  EXPECT_EQ(recorder.variants(), (std::vector<std::string>{"pv", "native", "pv", "native", "pv"}));
  ASSERT_EQ(recorder.calls.at(0).size(), 2u);
  EXPECT_EQ(recorder.calls[0][0].group, "spinlock");
  EXPECT_EQ(recorder.calls[0][1].group, "tlb");
  EXPECT_EQ(recorder.calls[0][1].variant, "pv");
  // Each decision carries its reading and says why.
  ASSERT_EQ(log.size(), expected.size());
  EXPECT_EQ(log[2].reading.steal_percent, 15.0);
  EXPECT_NE(log[2].reason.find("steal 15% >= enter 10%"), std::string::npos) << log[2].reason;
  EXPECT_TRUE(log[2].committed);
  EXPECT_NE(log[3].reason.find("> leave 3%"), std::string::npos) << log[3].reason;
  EXPECT_NE(log[10].reason.find("KVM_HINTS_REALTIME"), std::string::npos) << log[10].reason;
  EXPECT_EQ(log[11].mode, Mode::kDedicated);
  EXPECT_EQ(log[11].wanted, Mode::kOversubscribed);
}

TEST(TriggerPolicy, DryRunDecidesTheSameAndNeverSwitches) {
  Recorder recorder;
  PolicyConfig policy = base_policy();
  policy.dry_run = true;
  const std::vector<std::string> actions = replay(kDay, policy, recorder);
  const std::vector<std::string> expected = {"stay",         "held_by_dwell", "would_switch",
                                             "stay",         "held_by_dwell", "would_switch",
                                             "stay",         "would_switch",  "held_by_rate_limit",
                                             "would_switch", "stay",          "would_switch"};
  EXPECT_EQ(actions, expected);
  EXPECT_TRUE(recorder.calls.empty());
}

TEST(TriggerPolicy, FailedSwitchIsRetriedWithBackoffAndReported) {
  Recorder recorder;
  recorder.failures = 2;
  PolicyConfig policy = base_policy();
  policy.min_dwell = 0s;
  std::vector<Decision> log;
  const std::vector<std::string> actions = replay(R"(
0     steal=1
1000  steal=20   # fails (1): retry at 2000
1500  steal=20   # backoff
2000  steal=20   # retry 1 fails (2): retry at 4000
3000  steal=20   # backoff
4000  steal=20   # retry 2 commits
5000  steal=20
)",
                                                  policy, recorder, &log);
  EXPECT_EQ(actions, (std::vector<std::string>{"stay", "switch", "held_by_backoff", "switch",
                                               "held_by_backoff", "switch", "stay"}));
  EXPECT_EQ(recorder.calls.size(), 3u);
  ASSERT_EQ(log.size(), 7u);
  EXPECT_FALSE(log[1].committed);
  EXPECT_EQ(log[1].abort_reason, SwitchAbort::kBusy);
  EXPECT_NE(log[1].error.find("vCPU 1 busy"), std::string::npos);
  EXPECT_NE(describe(log[1]).find("failed (busy)"), std::string::npos) << describe(log[1]);
  EXPECT_EQ(log[3].retry, 1u);
  EXPECT_EQ(log[5].retry, 2u);
  EXPECT_TRUE(log[5].committed);
}

TEST(TriggerPolicy, GivesUpAfterMaxRetriesUntilTheWantedModeChanges) {
  Recorder recorder;
  recorder.failures = 100;
  PolicyConfig policy = base_policy();
  policy.min_dwell = 0s;
  policy.max_retries = 1;
  policy.max_switches = 100;
  const std::vector<std::string> actions = replay(R"(
0     steal=20   # fails (1)
1000  steal=20   # retry 1 fails (2)
5000  steal=20   # gave up
6000  steal=1    # dedicated wanted again: failures forgotten
7000  steal=20   # a fresh first attempt
)",
                                                  policy, recorder);
  EXPECT_EQ(actions, (std::vector<std::string>{"switch", "switch", "gave_up", "stay", "switch"}));
}

TEST(TriggerPolicy, PsiAndRunnableSignalsWhenConfigured) {
  Recorder recorder;
  PolicyConfig policy;
  policy.steal = std::nullopt;
  policy.psi = Thresholds{.enter = 40, .leave = 10};
  policy.runnable_per_cpu = Thresholds{.enter = 2, .leave = 1};
  policy.min_dwell = 0s;
  const std::vector<std::string> actions = replay(R"(
0    steal=90 psi=5 runnable=1 cpus=2   # steal is not configured
1    psi=45 runnable=1 cpus=2           # psi enters
2    psi=5 runnable=3 cpus=2            # psi leaves, but 1.5 runnable per CPU > leave 1
3    psi=5 runnable=2 cpus=2            # both at or below leave
4                                        # nothing measured: keep the mode
)",
                                                  policy, recorder);
  EXPECT_EQ(actions, (std::vector<std::string>{"stay", "switch", "stay", "switch", "stay"}));
}

TEST(TriggerPolicy, ConfigIsChecked) {
  PolicyConfig p;
  p.steal = Thresholds{.enter = 3, .leave = 10};
  Status s = validate(p);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error().message().find("leave <= enter"), std::string::npos);
  TriggerConfig t;
  t.dedicated = {{"spinlock", "native"}};
  s = validate(t);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error().message().find("same groups"), std::string::npos);
  t = TriggerConfig{};
  t.interval = 0s;
  EXPECT_FALSE(validate(t).ok());
  Recorder recorder;
  EXPECT_FALSE(TriggerLoop::create(nullptr, TriggerConfig{}, recorder.function()).ok());
}

TEST(TriggerPolicy, SourceErrorIsADecision) {
  class Broken final : public HintSource {
   public:
    std::string_view name() const override { return "broken"; }
    Result<std::optional<HintReading>> read() override {
      return Error(ErrorCode::kInvalidArgument, "/proc/stat line 1: garbage");
    }
  };
  Recorder recorder;
  auto loop = TriggerLoop::create(std::make_unique<Broken>(), TriggerConfig{}, recorder.function());
  ASSERT_TRUE(loop.ok());
  Result<std::optional<Decision>> d = loop.value()->poll_once();
  ASSERT_TRUE(d.ok());
  ASSERT_TRUE(d.value().has_value());
  EXPECT_EQ(d.value()->action, Action::kSourceError);
  EXPECT_NE(d.value()->reason.find("garbage"), std::string::npos);
  EXPECT_TRUE(recorder.calls.empty());
}

}  // namespace
}  // namespace repatch::triggers

namespace repatch::triggers {
namespace {

TEST(TriggerLoopThread, PlaysAReplayToItsEndAndCanStartAgain) {
  Recorder recorder;
  Result<std::unique_ptr<HintSource>> source =
      make_replay_source("0 steal=1\n1 steal=50\n2 steal=50\n");
  ASSERT_TRUE(source.ok());
  TriggerConfig config;
  config.policy.min_dwell = std::chrono::nanoseconds(0);
  config.interval = std::chrono::milliseconds(1);
  auto loop = TriggerLoop::create(std::move(source.value()), config, recorder.function());
  ASSERT_TRUE(loop.ok());
  ASSERT_TRUE(loop.value()->start().ok());
  for (int i = 0; i < 60000 && loop.value()->running(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ASSERT_FALSE(loop.value()->running());
  EXPECT_EQ(loop.value()->decisions().size(), 3u);
  EXPECT_EQ(loop.value()->mode(), Mode::kOversubscribed);
  EXPECT_EQ(recorder.calls.size(), 1u);
  // The source has ended: a new start() is allowed and ends at once.
  EXPECT_TRUE(loop.value()->start().ok());
  loop.value()->stop();
  EXPECT_EQ(loop.value()->decisions().size(), 3u);
}

}  // namespace
}  // namespace repatch::triggers
