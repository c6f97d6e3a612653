// switch_blackout: how long one group switch keeps the other vCPUs from running the group's code,
// against the number of vCPU threads on this machine's cores, the number of sites in the group,
// and the writer (stop-machine, or the stopless batch writer of interchangeable groups).
//
// Three groups with 10, 1000 and 10000 sites, each flagged interchangeable, each with one op whose
// two inline variants load a different constant (1 or 2). Every benchmark iteration is one switch
// that flips a group to its other variant while vCPU threads call a few of its sites in a loop;
// the engine's own clock (SwitchOutcome::blackout) is the manual time, and the median, p99 and
// maximum over the timed switches are reported as counters. After the run, a summary prints every
// row and the write cost per site derived from the 10- and 10000-site rows.
//
// Quick subset (4 rows, about 5 s):
//   switch_blackout --benchmark_filter='vcpus:(2|16)/sites:1000/'
#include <benchmark/benchmark.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <map>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include "bench/guest_threads.h"
#include "bench/stats.h"
#include "repatch/engine.h"
#include "repatch/op.h"
#include "sync/vcpu.h"

// ---- the three groups ---------------------------------------------------------------------------

// The immediates of the two variants below. Both are correct answers, which is what makes the
// group interchangeable; that they differ lets a reader tell which variant it ran, and anything
// else is a torn or half-written site.
constexpr unsigned kValueOne = 1;
constexpr unsigned kValueTwo = 2;

namespace {

using repatch::bench::percentile_of_sorted;
using SiteFn = unsigned (*)();
}  // namespace

// One group of `n` sites: op switch_blackout_<n>_read (8-byte sites: `mov $imm32, %eax` is 5 bytes,
// so every site has padding, which the batch writer needs to make the first byte change), and a
// function template whose every instantiation holds one site.
//
// no_icf: the instantiations are identical code, and identical code folding would merge them into
// one function, leaving one site where the table promises n. noinline: each one must be emitted as
// a function of its own, however it is reached.
// clang-format off
#define SWITCH_BLACKOUT_GROUP(n)                                                                 \
  REPATCH_DECLARE_GROUP(switch_blackout_##n);                                                    \
  REPATCH_DECLARE_OP(switch_blackout_##n##_read, 8);                                             \
  REPATCH_DEFINE_GROUP(switch_blackout_##n, repatch::abi::kGroupInterchangeable, "one", "two");  \
  REPATCH_DEFINE_OP(switch_blackout_##n##_read, switch_blackout_##n, one);                       \
  REPATCH_INLINE_VARIANT(switch_blackout_##n##_read, one, "mov $1, %eax");                       \
  REPATCH_INLINE_VARIANT(switch_blackout_##n##_read, two, "mov $2, %eax");                       \
  namespace {                                                                                    \
  template <std::size_t I>                                                                       \
  [[gnu::noinline, gnu::no_icf]] unsigned switch_blackout_##n##_site() {                         \
    unsigned value;                                                                              \
    REPATCH_SITE(switch_blackout_##n##_read, ("=a"(value)));                                     \
    return value;                                                                                \
  }                                                                                              \
  template <std::size_t... I>                                                                    \
  constexpr std::array<SiteFn, sizeof...(I)> switch_blackout_##n##_table(                        \
      std::index_sequence<I...>) {                                                               \
    return {&switch_blackout_##n##_site<I>...};                                                  \
  }                                                                                              \
  constexpr std::array<SiteFn, n> kSites##n =                                                    \
      switch_blackout_##n##_table(std::make_index_sequence<n>{});                                \
  }
// clang-format on

SWITCH_BLACKOUT_GROUP(10)
SWITCH_BLACKOUT_GROUP(1000)
SWITCH_BLACKOUT_GROUP(10000)

namespace {

using repatch::SwitchOutcome;
using repatch::SwitchWriter;

struct SiteGroup {
  const char* name;
  const SiteFn* sites;
  std::size_t count;
};

constexpr SiteGroup kGroups[] = {
    {"switch_blackout_10", kSites10.data(), kSites10.size()},
    {"switch_blackout_1000", kSites1000.data(), kSites1000.size()},
    {"switch_blackout_10000", kSites10000.data(), kSites10000.size()},
};

const SiteGroup* group_of_size(std::size_t sites) {
  for (const SiteGroup& g : kGroups) {
    if (g.count == sites) return &g;
  }
  return nullptr;
}

unsigned value_of(std::string_view variant) {
  return variant == "one" ? kValueOne : kValueTwo;
}

// ---- statistics ---------------------------------------------------------------------------------

// Every timed switch of every row, kept for the summary at the end (Google Benchmark's own
// aggregates are over repetitions, and here one repetition holds all the switches of a row).
struct RowKey {
  SwitchWriter writer;
  int vcpus;
  std::size_t sites;
  bool operator<(const RowKey& o) const {
    return std::tie(writer, vcpus, sites) < std::tie(o.writer, o.vcpus, o.sites);
  }
};
struct RowData {
  std::vector<double> blackout_us;
  std::uint64_t retries = 0;
  std::uint32_t aborts[repatch::kSwitchAbortCount] = {};
};
std::map<RowKey, RowData> g_rows;

// IPIs are real-time signals, which the kernel queues against a per-user limit (RLIMIT_SIGPENDING,
// the SigQ line of /proc/self/status). Another process of the same user that leaves IPIs blocked
// while they keep coming can fill that queue; every tgkill of this process then fails with EAGAIN
// and the switch times out waiting for vCPUs that were never interrupted. On this shared machine
// that happened while a hazard test ran beside the benchmark, so the error says so when it is the
// case.
std::string signal_queue_note() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (!line.starts_with("SigQ:")) continue;
    unsigned long queued = 0;
    unsigned long limit = 0;
    if (std::sscanf(line.c_str(), "SigQ: %lu/%lu", &queued, &limit) == 2 && queued >= limit) {
      return " [this user's queued-signal limit is full (" + line +
             "): IPIs cannot be sent; another process is holding them]";
    }
  }
  return "";
}

// ---- the benchmark ------------------------------------------------------------------------------

// Switches per row, and untimed switches before them, which keep a row's first-touch costs (the
// guests' first calls, the engine's first writes to the group's pages) out of its figures.
constexpr int kSwitches = 200;
constexpr int kWarmupSwitches = 2;

// Sites a guest calls per loop iteration. Consecutive sites from a cursor that each vCPU starts at
// a different place and moves by a prime stride, so that over a row the guests run all over the
// group, and in a 10000-site group meet sites that are being written, not only the first few.
constexpr std::size_t kSitesPerStep = 4;
constexpr std::uint64_t kStride = 7919;
// Iterations between sched_yield(), standing in for a guest kernel's scheduling points. One
// iteration took about 100 ns here (four indirect calls and a QSBR quiescent state), so this is
// about 1 us of guest work between yields, the pace of stop_blackout's yielding guests.
constexpr std::uint32_t kYieldEvery = 8;

void BM_SwitchBlackout(benchmark::State& state, SwitchWriter writer) {
  const int vcpus = static_cast<int>(state.range(0));
  const SiteGroup* group = group_of_size(static_cast<std::size_t>(state.range(1)));
  repatch::Engine* engine = repatch::Engine::get();
  if (group == nullptr || engine == nullptr) {
    state.SkipWithError("no such site group, or the engine is not booted");
    return;
  }
  const repatch::Result<std::string> initial = engine->current_variant(group->name);
  if (!initial.ok()) {
    state.SkipWithError(initial.error().message().c_str());
    return;
  }
  std::string current = initial.value();

  std::atomic<std::uint64_t> violations{0};
  std::atomic<unsigned> bad_value{0};
  RowData& row = g_rows[{writer, vcpus, group->count}];
  std::vector<double> blackout_us;
  std::vector<double> elapsed_us;
  blackout_us.reserve(kSwitches);
  elapsed_us.reserve(kSwitches);
  std::uint64_t retries = 0;
  std::uint64_t int3 = 0;
  std::uint64_t nmi = 0;
  bool failed = false;
  {
    const repatch::bench::GuestVcpus guests(
        vcpus, kYieldEvery,
        [group, &violations, &bad_value](repatch::sync::Vcpu& vcpu, std::uint64_t iteration) {
          std::size_t at = (std::size_t{vcpu.id()} * 104729 + iteration * kStride) % group->count;
          for (std::size_t k = 0; k < kSitesPerStep; ++k) {
            const unsigned value = group->sites[at]();
            if (value != kValueOne && value != kValueTwo) {
              violations.fetch_add(1, std::memory_order_relaxed);
              bad_value.store(value, std::memory_order_relaxed);
            }
            if (++at == group->count) at = 0;
          }
          vcpu.quiescent_state();
        });
    if (guests.failed() != 0) {
      state.SkipWithError("a guest thread could not register as a vCPU");
      return;
    }

    // One switch to the other variant; false (and the benchmark skipped) when it did not commit.
    const auto flip = [&](SwitchOutcome& outcome) {
      const std::string next = current == "one" ? "two" : "one";
      outcome = engine->switch_groups({{group->name, next}}, {.writer = writer});
      if (!outcome.committed()) {
        std::string message = outcome.status.error().message();
        if (outcome.reason == repatch::SwitchAbort::kAckTimeout) message += signal_queue_note();
        state.SkipWithError(message.c_str());
        return false;
      }
      current = next;
      return true;
    };

    SwitchOutcome outcome;
    for (int i = 0; i < kWarmupSwitches && !failed; ++i)
      failed = !flip(outcome);
    if (!failed) {
      for (auto _ : state) {
        if (!flip(outcome)) {
          failed = true;
          break;
        }
        const double blackout = std::chrono::duration<double>(outcome.blackout).count();
        state.SetIterationTime(blackout);
        blackout_us.push_back(blackout * 1e6);
        elapsed_us.push_back(std::chrono::duration<double, std::micro>(outcome.elapsed).count());
        retries += outcome.attempts - 1;
        for (std::size_t r = 0; r < repatch::kSwitchAbortCount; ++r)
          row.aborts[r] += outcome.aborts[r];
        int3 += outcome.int3_completions;
        nmi += outcome.nmi_completions;
      }
    }
  }  // the guests stop here: nothing runs the sites while they are checked below

  if (failed) return;
  if (const std::uint64_t v = violations.load(); v != 0) {
    const std::string message = std::to_string(v) + " guest reads returned " +
                                std::to_string(bad_value.load()) + ", not " +
                                std::to_string(kValueOne) + " or " + std::to_string(kValueTwo);
    state.SkipWithError(message.c_str());
    return;
  }
  // Every site must now run the variant the engine says the group is in.
  const unsigned expected = value_of(current);
  for (std::size_t i = 0; i < group->count; ++i) {
    if (const unsigned value = group->sites[i](); value != expected) {
      const std::string message = "after the run, site " + std::to_string(i) + " returned " +
                                  std::to_string(value) + " in variant '" + current + "'";
      state.SkipWithError(message.c_str());
      return;
    }
  }

  row.blackout_us.insert(row.blackout_us.end(), blackout_us.begin(), blackout_us.end());
  row.retries += retries;
  std::sort(blackout_us.begin(), blackout_us.end());
  std::sort(elapsed_us.begin(), elapsed_us.end());
  state.counters["med_us"] = percentile_of_sorted(blackout_us, 0.5);
  state.counters["p99_us"] = percentile_of_sorted(blackout_us, 0.99);
  state.counters["max_us"] = blackout_us.empty() ? 0.0 : blackout_us.back();
  state.counters["call_med_us"] = percentile_of_sorted(elapsed_us, 0.5);
  state.counters["retries"] = static_cast<double>(retries);
  state.counters["int3"] = static_cast<double>(int3);
  state.counters["nmi"] = static_cast<double>(nmi);
}

void rows(benchmark::internal::Benchmark* b) {
  b->ArgNames({"vcpus", "sites"})
      ->ArgsProduct({{1, 2, 4, 8, 16}, {10, 1000, 10000}})
      ->Iterations(kSwitches)
      ->UseManualTime()
      ->Unit(benchmark::kMicrosecond);
}

BENCHMARK_CAPTURE(BM_SwitchBlackout, stop, SwitchWriter::kStopMachine)->Apply(rows);
BENCHMARK_CAPTURE(BM_SwitchBlackout, batch, SwitchWriter::kBatch)->Apply(rows);

// ---- the summary --------------------------------------------------------------------------------

const char* writer_label(SwitchWriter writer) {
  return writer == SwitchWriter::kBatch ? "batch" : "stop";
}

const char* verdict(bool met) {
  return met ? "met" : "MISSED";
}

// The targets for the rows they concern, or "".
std::string targets(const RowKey& key, double median_us, double p99_us) {
  std::string out;
  if (key.vcpus == 2 && key.sites == 1000) {
    out += std::string("median <= 100 us: ") + verdict(median_us <= 100.0);
  }
  if (key.vcpus == 16) {
    out += std::string("median <= 500 us: ") + verdict(median_us <= 500.0) +
           ", p99 <= 5 ms: " + verdict(p99_us <= 5000.0);
  }
  return out;
}

void print_summary(std::FILE* out) {
  std::fprintf(out,
               "\nswitch_blackout: blackout per switch in us over every timed switch of a row\n");
  std::fprintf(out, "%-6s %6s %6s %6s %10s %10s %10s %8s  %s\n", "writer", "vcpus", "sites", "n",
               "median", "p99", "max", "retries", "target");
  std::map<std::pair<SwitchWriter, int>, std::map<std::size_t, double>> medians;
  for (auto& [key, data] : g_rows) {
    if (data.blackout_us.empty()) {
      std::fprintf(out, "%-6s %6d %6zu  failed (see its error above)\n", writer_label(key.writer),
                   key.vcpus, key.sites);
      continue;
    }
    std::vector<double> sorted = data.blackout_us;
    std::sort(sorted.begin(), sorted.end());
    const double median = percentile_of_sorted(sorted, 0.5);
    const double p99 = percentile_of_sorted(sorted, 0.99);
    medians[{key.writer, key.vcpus}][key.sites] = median;
    std::fprintf(out, "%-6s %6d %6zu %6zu %10.1f %10.1f %10.1f %8llu  %s\n",
                 writer_label(key.writer), key.vcpus, key.sites, sorted.size(), median, p99,
                 sorted.back(), static_cast<unsigned long long>(data.retries),
                 targets(key, median, p99).c_str());
    for (std::size_t r = 1; r < repatch::kSwitchAbortCount; ++r) {
      if (data.aborts[r] != 0) {
        std::fprintf(out, "%28s aborted attempts, %s: %u\n", "",
                     repatch::switch_abort_name(static_cast<repatch::SwitchAbort>(r)),
                     data.aborts[r]);
      }
    }
  }
  std::fprintf(out,
               "\nwrite cost, ns per site = (median at 10000 sites - median at 10 sites) / 9990 "
               "(target <= 20)\n");
  std::fprintf(out, "%-6s %6s %10s  %s\n", "writer", "vcpus", "ns/site", "target");
  for (const auto& [key, by_sites] : medians) {
    const auto small = by_sites.find(10);
    const auto large = by_sites.find(10000);
    if (small == by_sites.end() || large == by_sites.end()) continue;
    const double ns = (large->second - small->second) * 1e3 / 9990.0;
    std::fprintf(out, "%-6s %6d %10.1f  %s\n", writer_label(key.first), key.second, ns,
                 verdict(ns <= 20.0));
  }
}

// Boot needs a single-threaded process, and every site must be where the tables say it is: a
// site that the compiler merged or dropped would make the row measure fewer sites than it names.
bool boot_and_check() {
  const repatch::Result<repatch::Engine*> engine = repatch::boot();
  if (!engine.ok()) {
    std::fprintf(stderr, "switch_blackout: boot failed: %s\n", engine.error().to_string().c_str());
    return false;
  }
  bool ok = true;
  const repatch::EngineStatus status = engine.value()->status();
  for (const SiteGroup& g : kGroups) {
    const auto it = std::find_if(status.groups.begin(), status.groups.end(),
                                 [&g](const repatch::GroupStatus& s) { return s.name == g.name; });
    if (it == status.groups.end() || it->sites != g.count || !it->interchangeable) {
      std::fprintf(stderr,
                   "switch_blackout: group %s has %zu sites%s, expected %zu, interchangeable\n",
                   g.name, it == status.groups.end() ? 0 : it->sites,
                   it != status.groups.end() && it->interchangeable ? "" : " (not interchangeable)",
                   g.count);
      ok = false;
      continue;
    }
    for (std::size_t i = 0; i < g.count; ++i) {
      if (const unsigned value = g.sites[i](); value != value_of(it->variant)) {
        std::fprintf(stderr, "switch_blackout: site %zu of %s returned %u in variant '%s'\n", i,
                     g.name, value, it->variant.c_str());
        ok = false;
        break;
      }
    }
  }
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  // Before benchmark::Initialize and before any thread exists.
  if (!boot_and_check()) return 1;
  return repatch::bench::run_benchmarks(argc, argv, &print_summary);
}
