// Late microcode load with a simulated CPU: an update switches exactly the groups keyed on the
// whitelisted features it changed (batch for interchangeable groups, stop-machine otherwise),
// leaves every other group alone, and reports the rest as needing a restart.
//
// Each test is its own process: boot() first, with the features this CPU really has, so that no
// variant whose instruction the CPU lacks ever runs; updates only remove features, or add back
// features the CPU has.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <thread>

#include "guest/feature_ops.h"
#include "repatch/engine.h"
#include "repatch/triggers.h"
#include "sync/vcpu.h"

namespace repatch::triggers {
namespace {

FeatureSet real_features() {
  Result<FeatureSet> f = make_real_cpu_source()->features();
  EXPECT_TRUE(f.ok());
  return f.ok() ? f.value() : FeatureSet{};
}

bool has(const FeatureSet& set, const std::string& f) {
  return std::find(set.begin(), set.end(), f) != set.end();
}

std::map<std::string, GroupStatus> groups(const Engine& engine) {
  std::map<std::string, GroupStatus> out;
  for (GroupStatus& g : engine.status().groups)
    out[g.name] = std::move(g);
  return out;
}

// Two vCPUs running every feature op while the update is applied; `increments` counts the
// critical sections, which the elided lock must keep exclusive across the switch.
class FeatureWorkers {
 public:
  FeatureWorkers() {
    for (int i = 0; i < 2; ++i) {
      threads_.emplace_back([this] {
        std::unique_ptr<sync::Vcpu> self = sync::Vcpu::enter().value();
        started_.fetch_add(1);
        alignas(64) char line[64] = {};
        while (!stop_.load(std::memory_order_relaxed)) {
          features::elided_lock(&lock_);
          counter_ = counter_ + 1;  // the critical section
          features::elided_unlock(&lock_);
          increments_.fetch_add(1, std::memory_order_relaxed);
          cpu_sum_.fetch_add(features::current_cpu(), std::memory_order_relaxed);
          line[0] = static_cast<char>(counter_);
          features::flush_cache_line(line);
          self->quiescent_state();
        }
      });
    }
    while (started_.load() < 2)
      std::this_thread::yield();
    while (increments_.load() < 1000)
      std::this_thread::yield();
  }
  ~FeatureWorkers() { stop(); }
  void stop() {
    stop_.store(true);
    for (std::thread& t : threads_) {
      if (t.joinable()) t.join();
    }
  }
  std::uint64_t counter() const { return counter_; }
  std::uint64_t increments() const { return increments_.load(); }

 private:
  features::ElidedLock lock_;
  std::uint64_t counter_ = 0;  // guarded by lock_
  std::atomic<std::uint64_t> increments_{0};
  std::atomic<std::uint64_t> cpu_sum_{0};
  std::atomic<int> started_{0};
  std::atomic<bool> stop_{false};
  std::vector<std::thread> threads_;
};

TEST(TriggerMicrocode, UpdateSwitchesExactlyTheAffectedGroups) {
  Result<Engine*> engine = boot();
  ASSERT_TRUE(engine.ok()) << engine.error().to_string();
  const FeatureSet real = real_features();
  FeatureSet removed;
  for (const std::string& f : default_microcode_whitelist()) {
    if (has(real, f)) removed.push_back(f);
  }
  if (removed.empty()) GTEST_SKIP() << "this CPU has none of clflushopt, rdpid, rtm to remove";
  const bool hle = has(real, "hle");
  FeatureSet remove = removed;
  if (hle) remove.push_back("hle");

  Result<std::unique_ptr<SimulatedCpu>> cpu = SimulatedCpu::create(real, "0x1");
  ASSERT_TRUE(cpu.ok());
  SimulatedCpu* simulated = cpu.value().get();
  Result<std::unique_ptr<MicrocodeWatcher>> watcher =
      MicrocodeWatcher::create(std::move(cpu.value()), engine.value());
  ASSERT_TRUE(watcher.ok()) << watcher.error().to_string();

  const std::map<std::string, GroupStatus> before = groups(*engine.value());
  // Boot followed the CPU: every feature group is in the variant that needs its feature when the
  // CPU has it.
  for (const auto& [name, g] : before) {
    if (g.feature.empty()) continue;
    EXPECT_EQ(g.variant, g.variants[has(real, g.feature) ? 1 : 0]) << name;
  }

  FeatureWorkers workers;
  Result<std::optional<MicrocodeReport>> unchanged = watcher.value()->poll();
  ASSERT_TRUE(unchanged.ok());
  EXPECT_FALSE(unchanged.value().has_value());

  ASSERT_TRUE(simulated->load_update("0x2", {}, remove).ok());
  Result<std::optional<MicrocodeReport>> report = watcher.value()->poll();
  ASSERT_TRUE(report.ok()) << report.error().to_string();
  ASSERT_TRUE(report.value().has_value());
  const MicrocodeReport& r = *report.value();
  workers.stop();
  EXPECT_TRUE(r.ok()) << describe(r);
  EXPECT_EQ(workers.counter(), workers.increments());
  EXPECT_EQ(r.after.per_cpu.at(0), "0x2");
  EXPECT_EQ(r.changes.size(), remove.size());

  // Exactly the groups keyed on a removed whitelisted feature switched, to their default variant;
  // every other group is where it was.
  const std::map<std::string, GroupStatus> after = groups(*engine.value());
  std::vector<std::string> expected_switched, switched;
  for (const auto& [name, g] : before) {
    const bool affected = has(removed, g.feature);
    if (affected) expected_switched.push_back(name);
    EXPECT_EQ(after.at(name).variant, affected ? g.variants[0] : g.variant) << name;
  }
  for (const MicrocodeSwitch& s : r.switches) {
    for (const GroupChoice& c : s.choices) {
      switched.push_back(c.group);
      EXPECT_EQ(s.writer,
                before.at(c.group).interchangeable ? SwitchWriter::kBatch : SwitchWriter::kStopless)
          << c.group;
    }
  }
  std::sort(switched.begin(), switched.end());
  EXPECT_EQ(switched, expected_switched);
  if (has(removed, "rtm")) {
    EXPECT_EQ(after.at("lock_elision").variant, "plain");
  }
  // HLE is outside the whitelist: reported, not patched.
  EXPECT_EQ(r.needs_restart.size(), hle ? 1u : 0u);
  if (hle) {
    EXPECT_NE(r.needs_restart[0].find("hle removed"), std::string::npos);
  }
  EXPECT_NE(describe(r).find("microcode 0x1 -> 0x2"), std::string::npos) << describe(r);
  EXPECT_TRUE(engine.value()->verify_sites().ok());

  // Told again with nothing new: no change, no switch.
  Result<MicrocodeReport> again = watcher.value()->reloaded();
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again.value().changes.empty());
  EXPECT_TRUE(again.value().switches.empty());
}

TEST(TriggerMicrocode, UpdateAddingAFeatureSwitchesToItsVariant) {
  const FeatureSet real = real_features();
  if (!has(real, "clflushopt")) GTEST_SKIP() << "this CPU has no CLFLUSHOPT to add back";
  FeatureSet start = real;
  std::erase(start, std::string("clflushopt"));
  // Boot as if the CPU lacked CLFLUSHOPT: the flush groups start in clflush.
  Result<Engine*> engine = boot({.features = start});
  ASSERT_TRUE(engine.ok()) << engine.error().to_string();
  EXPECT_EQ(engine.value()->current_variant("cache_flush").value(), "clflush");
  Result<std::unique_ptr<SimulatedCpu>> cpu = SimulatedCpu::create(start);
  ASSERT_TRUE(cpu.ok());
  SimulatedCpu* simulated = cpu.value().get();
  auto watcher = MicrocodeWatcher::create(std::move(cpu.value()), engine.value());
  ASSERT_TRUE(watcher.ok());
  ASSERT_TRUE(simulated->load_update("0x2", {"clflushopt"}, {}).ok());
  // The explicit call, as a kernel's late-load notifier would make it.
  Result<MicrocodeReport> r = watcher.value()->reloaded();
  ASSERT_TRUE(r.ok());
  ASSERT_TRUE(r.value().ok()) << describe(r.value());
  ASSERT_EQ(r.value().switches.size(), 1u);  // every clflushopt group is interchangeable
  EXPECT_EQ(r.value().switches[0].writer, SwitchWriter::kBatch);
  EXPECT_EQ(engine.value()->current_variant("cache_flush").value(), "clflushopt");
  EXPECT_EQ(engine.value()->current_variant("demo_flush").value(), "clflushopt");
  EXPECT_EQ(engine.value()->current_variant("lock_elision").value(),
            has(real, "rtm") ? "rtm" : "plain");
  alignas(64) char line[64] = {1};
  features::flush_cache_line(line);  // runs clflushopt, which this CPU has
  EXPECT_EQ(line[0], 1);
}

TEST(TriggerMicrocode, FailedSwitchIsReportedAndUnknownNamesRefused) {
  Result<Engine*> engine = boot();
  ASSERT_TRUE(engine.ok());
  MicrocodeConfig bad;
  bad.whitelist = {"rtm", "tsx2"};
  auto cpu = SimulatedCpu::create(real_features());
  ASSERT_TRUE(cpu.ok());
  auto refused = MicrocodeWatcher::create(std::move(cpu.value()), engine.value(), bad);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.error().message().find("unknown feature 'tsx2'"), std::string::npos);
  EXPECT_EQ(MicrocodeWatcher::create(SimulatedCpu::create({}).value(), nullptr).error().code(),
            ErrorCode::kState);

  // A switch function that refuses: the report says so, and the groups stay.
  FeatureSet real = real_features();
  FeatureSet removed;
  for (const std::string& f : default_microcode_whitelist()) {
    if (has(real, f)) removed.push_back(f);
  }
  if (removed.empty()) GTEST_SKIP() << "nothing to remove on this CPU";
  auto sim = SimulatedCpu::create(real);
  ASSERT_TRUE(sim.ok());
  SimulatedCpu* simulated = sim.value().get();
  int calls = 0;
  bool refuse = true;
  auto watcher = MicrocodeWatcher::create(
      std::move(sim.value()), engine.value(), MicrocodeConfig{},
      [&](const std::vector<GroupChoice>& choices, const SwitchOptions& options) {
        ++calls;
        if (!refuse) return engine.value()->switch_groups(choices, options);
        SwitchOutcome o;
        o.status = Error(ErrorCode::kState, "refused for the test");
        o.reason = SwitchAbort::kRefused;
        return o;
      });
  ASSERT_TRUE(watcher.ok());
  const std::string before = engine.value()->current_variant("cache_flush").value();
  ASSERT_TRUE(simulated->load_update("0x9", {}, removed).ok());
  Result<MicrocodeReport> r = watcher.value()->reloaded();
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(r.value().ok());
  EXPECT_GE(calls, 1);
  EXPECT_NE(describe(r.value()).find("FAILED: state: refused for the test"), std::string::npos)
      << describe(r.value());
  EXPECT_EQ(engine.value()->current_variant("cache_flush").value(), before);

  // The next poll retries, although the revision has not changed again; once it commits, polls
  // are quiet.
  refuse = false;
  Result<std::optional<MicrocodeReport>> retried = watcher.value()->poll();
  ASSERT_TRUE(retried.ok());
  ASSERT_TRUE(retried.value().has_value()) << "a failed switch was not retried";
  EXPECT_TRUE(retried.value()->ok()) << describe(*retried.value());
  EXPECT_TRUE(retried.value()->changes.empty());
  if (has(removed, "clflushopt")) {
    EXPECT_EQ(engine.value()->current_variant("cache_flush").value(), "clflush");
  }
  Result<std::optional<MicrocodeReport>> quiet = watcher.value()->poll();
  ASSERT_TRUE(quiet.ok());
  EXPECT_FALSE(quiet.value().has_value());
}

}  // namespace
}  // namespace repatch::triggers
