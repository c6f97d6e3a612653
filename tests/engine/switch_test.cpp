// Engine::switch_groups() on the demo guest: what it commits, what it refuses, and what it reports.
// The hazards of a switch under fire are in tests/hazard/.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "engine/engine_impl.h"
#include "guest/demo_ops.h"
#include "guest/demo_workload.h"
#include "repatch/engine.h"
#include "sync/vcpu.h"

// A group whose two images start with the same byte and fill the site with no padding to vary.
REPATCH_DECLARE_GROUP(sw_tight);
REPATCH_DECLARE_OP(sw_tight_load, 10);
REPATCH_DEFINE_GROUP(sw_tight, 0, "x", "y");
REPATCH_DEFINE_OP(sw_tight_load, sw_tight, x);
REPATCH_INLINE_VARIANT(sw_tight_load, x, "movabs $0x1111111111111111, %rax");
REPATCH_INLINE_VARIANT(sw_tight_load, y, "movabs $0x2222222222222222, %rax");

namespace repatch {
namespace {

[[gnu::noinline]] std::uint64_t tight_load() {
  std::uint64_t value;
  REPATCH_SITE(sw_tight_load, ("=a"(value)));
  return value;
}

Engine* boot_demo(TextWriter writer = TextWriter::kMemfdAlias) {
  Result<Engine*> engine =
      boot({.initial = {{"demo_lock", "native"}, {"demo_clock", "fixed"}}, .writer = writer});
  EXPECT_TRUE(engine.ok()) << engine.error().to_string();
  return engine.ok() ? engine.value() : nullptr;
}

std::string message(const SwitchOutcome& outcome) {
  return outcome.committed() ? "committed" : outcome.status.error().to_string();
}

TEST(Switch, GroupsChangeVariantWhileVcpusRunThem) {
  Engine* engine = boot_demo();
  ASSERT_NE(engine, nullptr);
  std::atomic<bool> stop{false};
  demo::Lock lock;
  std::uint64_t counter = 0;
  std::atomic<std::uint64_t> increments{0};
  std::vector<std::thread> vcpus;
  vcpus.reserve(2);
  for (int i = 0; i < 2; ++i) {
    vcpus.emplace_back([&] {
      std::unique_ptr<sync::Vcpu> self = sync::Vcpu::enter().value();
      while (!stop.load(std::memory_order_relaxed)) {
        demo::locked_increment(&lock, &counter);
        increments.fetch_add(1, std::memory_order_relaxed);
        self->quiescent_state();
      }
    });
  }
  const std::uint64_t pv_before = demo_pv_acquire_calls.load();
  for (int i = 0; i < 50; ++i) {
    const char* lock_variant = i % 2 == 0 ? "pv" : "native";
    const char* clock_variant = i % 2 == 0 ? "shared" : "fixed";
    const SwitchOutcome outcome =
        engine->switch_groups({{"demo_lock", lock_variant}, {"demo_clock", clock_variant}});
    ASSERT_TRUE(outcome.committed()) << message(outcome);
    EXPECT_EQ(outcome.writer, SwitchWriter::kStopless) << "demo_lock is not interchangeable";
    EXPECT_GE(outcome.attempts, 1u);
    EXPECT_GT(outcome.blackout.count(), 0);
    EXPECT_GT(outcome.sites, 0u);
    ASSERT_TRUE(engine->verify_sites().ok()) << engine->verify_sites().error().to_string();
    EXPECT_EQ(engine->current_variant("demo_lock").value(), lock_variant);
    EXPECT_EQ(engine->current_variant("demo_clock").value(), clock_variant);
    // The vCPUs run the new variants before the next switch: a stopless switch takes
    // microseconds, and 50 of them could otherwise end before a vCPU thread is scheduled.
    const std::uint64_t seen = increments.load();
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (increments.load() < seen + 2 && std::chrono::steady_clock::now() < give_up)
      std::this_thread::yield();
  }
  stop.store(true);
  for (std::thread& t : vcpus)
    t.join();
  EXPECT_EQ(counter, increments.load()) << "an increment was lost across the switches";
  EXPECT_GT(demo_pv_acquire_calls.load(), pv_before) << "the pv variant never ran";
  EXPECT_EQ(demo::read_clock(), demo::kFixedClock);
}

TEST(Switch, EveryLiveSwitchChangesEverySiteFirstByte) {
  Engine* engine = boot_demo();
  ASSERT_NE(engine, nullptr);
  for (const char* variant : {"pv", "native", "pv"}) {
    const EngineStatus before = engine->status();
    ASSERT_TRUE(engine->switch_groups({{"demo_lock", variant}}).committed());
    const EngineStatus after = engine->status();
    ASSERT_EQ(before.sites.size(), after.sites.size());
    for (std::size_t i = 0; i < after.sites.size(); ++i) {
      if (after.sites[i].group != "demo_lock") continue;
      EXPECT_NE(before.sites[i].bytes[0], after.sites[i].bytes[0])
          << after.sites[i].op << " at " << after.sites[i].symbol << ": "
          << after.sites[i].instruction;
      EXPECT_EQ(after.sites[i].variant, variant);
    }
  }
  EXPECT_TRUE(engine->verify_sites().ok());
}

TEST(Switch, BatchWriterSwitchesInterchangeableGroupsWithoutStopping) {
  Engine* engine = boot_demo();
  ASSERT_NE(engine, nullptr);
  demo_clock_value = 0x77;
  SwitchOutcome outcome = engine->switch_groups({{"demo_clock", "shared"}});
  ASSERT_TRUE(outcome.committed()) << message(outcome);
  EXPECT_EQ(outcome.writer, SwitchWriter::kBatch);
  EXPECT_EQ(demo::read_clock(), 0x77u);
  outcome =
      engine->switch_groups({{"demo_clock", "fixed"}}, {.writer = SwitchWriter::kStopMachine});
  ASSERT_TRUE(outcome.committed()) << message(outcome);
  EXPECT_EQ(outcome.writer, SwitchWriter::kStopMachine);
  EXPECT_EQ(demo::read_clock(), demo::kFixedClock);
}

TEST(Switch, SwitchingToTheCurrentVariantWritesNothing) {
  Engine* engine = boot_demo();
  ASSERT_NE(engine, nullptr);
  const EngineStatus before = engine->status();
  const SwitchOutcome outcome = engine->switch_groups({{"demo_lock", "native"}});
  EXPECT_TRUE(outcome.committed());
  EXPECT_EQ(outcome.sites, 0u);
  EXPECT_EQ(outcome.attempts, 0u);
  for (std::size_t i = 0; i < before.sites.size(); ++i) {
    EXPECT_EQ(before.sites[i].bytes, engine->status().sites[i].bytes);
  }
}

void expect_refused(const SwitchOutcome& outcome, ErrorCode code, const std::string& part) {
  ASSERT_FALSE(outcome.committed());
  EXPECT_EQ(outcome.reason, SwitchAbort::kRefused);
  EXPECT_EQ(outcome.attempts, 0u);
  EXPECT_EQ(outcome.status.error().code(), code) << outcome.status.error().to_string();
  EXPECT_NE(outcome.status.error().message().find(part), std::string::npos)
      << outcome.status.error().message();
}

TEST(Switch, RefusesWhatItCannotDoAndWritesNothing) {
  Engine* engine = boot_demo();
  ASSERT_NE(engine, nullptr);
  const EngineStatus before = engine->status();
  expect_refused(engine->switch_groups({{"demo_lok", "pv"}}), ErrorCode::kUnknownName, "demo_lock");
  expect_refused(engine->switch_groups({{"demo_lock", "pvv"}}), ErrorCode::kUnknownName, "native");
  expect_refused(engine->switch_groups({{"demo_lock", "pv"}, {"demo_lock", "native"}}),
                 ErrorCode::kInvalidArgument, "twice");
  expect_refused(engine->switch_groups({{"demo_lock", "indirect"}}), ErrorCode::kInvalidArgument,
                 "indirect");
  expect_refused(engine->switch_groups({{"demo_lock", "pv"}}, {.writer = SwitchWriter::kBatch}),
                 ErrorCode::kUnsupported, "kStopMachine");
  expect_refused(engine->switch_groups({{"sw_tight", "y"}}), ErrorCode::kBadImage, "same byte");
  EXPECT_EQ(tight_load(), 0x1111111111111111u);
  for (std::size_t i = 0; i < before.sites.size(); ++i) {
    EXPECT_EQ(before.sites[i].bytes, engine->status().sites[i].bytes) << before.sites[i].op;
  }
  EXPECT_EQ(engine->current_variant("demo_lock").value(), "native");
}

TEST(Switch, RefusesASiteSomebodyElseWrote) {
  Engine* engine = boot_demo();
  ASSERT_NE(engine, nullptr);
  SiteStatus site;
  for (const SiteStatus& s : engine->status().sites) {
    if (s.group == "demo_lock") site = s;
  }
  // Another patcher's breakpoint on the site, written through the engine's own writer.
  const std::uint8_t int3 = 0xcc;
  const Engine::Impl* impl = booted_impl();
  // The program's own object, whose writer covers the demo guest's sites (read outside the
  // mutex: no module loads in this test).
  x86::TextPoker* poker = [impl]() REPATCH_NO_THREAD_SAFETY_ANALYSIS {
    return impl->objects.front()->poker.get();
  }();
  ASSERT_TRUE(poker->write(site.address, {&int3, 1}).ok());
  expect_refused(
      engine->switch_groups({{site.group, site.group == "demo_clock" ? "shared" : "pv"}}),
      ErrorCode::kForeignWrite, "something else wrote there");
  ASSERT_TRUE(poker->write(site.address, {site.bytes.data(), 1}).ok());
  EXPECT_TRUE(engine->verify_sites().ok());
}

// A child forked while a switch writes would get half-written sites: fork waits for the switch.
TEST(Switch, ForkNeverCopiesAHalfWrittenGroup) {
  Engine* engine = boot_demo();
  ASSERT_NE(engine, nullptr);
  std::atomic<bool> stop{false};
  std::atomic<int> forks{0};
  std::atomic<int> torn{0};
  std::thread forker([&] {  // not a vCPU: the stop does not hold it
    while (!stop.load()) {
      const pid_t child = fork();
      if (child == 0) {
        const Status s = engine->verify_sites();
        if (!s.ok()) fprintf(stderr, "%s\n", s.error().to_string().c_str());
        _exit(s.ok() ? 0 : 1);
      }
      int status = 0;
      waitpid(child, &status, 0);
      if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) torn.fetch_add(1);
      forks.fetch_add(1);
    }
  });
  for (int i = 0; i < 200 || forks.load() < 20; ++i) {
    ASSERT_TRUE(engine->switch_groups({{"demo_lock", i % 2 == 0 ? "pv" : "native"}}).committed());
  }
  stop.store(true);
  forker.join();
  EXPECT_EQ(torn.load(), 0) << "of " << forks.load() << " children";
}

TEST(Switch, ProcSelfMemWriterCannotSwitchLive) {
  Engine* engine = boot_demo(TextWriter::kProcSelfMem);
  ASSERT_NE(engine, nullptr);
  expect_refused(engine->switch_groups({{"demo_lock", "pv"}}), ErrorCode::kUnsupported, "memfd");
}

}  // namespace
}  // namespace repatch
