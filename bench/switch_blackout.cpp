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
// The busy rows (BM_SwitchBusy, below) compare stop-machine with the stopless writer on two groups
// that are not interchangeable, against vCPUs that never yield and two bystanders that never touch
// the group; their method is at "the busy rows".
//
// Quick subsets (about 5 s each):
//   switch_blackout --benchmark_filter='^BM_SwitchBlackout/.*vcpus:(2|16)/sites:1000/'
//   switch_blackout --benchmark_filter='^BM_SwitchBusy/.*vcpus:(2|16)/sites:10/' --busy_switches=5
#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <unistd.h>
#include <x86intrin.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <charconv>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
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
#define SWITCH_BLACKOUT_GROUP(tag, n, flags)                                                     \
  REPATCH_DECLARE_GROUP(switch_blackout_##tag);                                                  \
  REPATCH_DECLARE_OP(switch_blackout_##tag##_read, 8);                                           \
  REPATCH_DEFINE_GROUP(switch_blackout_##tag, flags, "one", "two");                              \
  REPATCH_DEFINE_OP(switch_blackout_##tag##_read, switch_blackout_##tag, one);                   \
  REPATCH_INLINE_VARIANT(switch_blackout_##tag##_read, one, "mov $1, %eax");                     \
  REPATCH_INLINE_VARIANT(switch_blackout_##tag##_read, two, "mov $2, %eax");                     \
  namespace {                                                                                    \
  template <std::size_t I>                                                                       \
  [[gnu::noinline, gnu::no_icf]] unsigned switch_blackout_##tag##_site() {                       \
    unsigned value;                                                                              \
    REPATCH_SITE(switch_blackout_##tag##_read, ("=a"(value)));                                   \
    return value;                                                                                \
  }                                                                                              \
  template <std::size_t... I>                                                                    \
  constexpr std::array<SiteFn, sizeof...(I)> switch_blackout_##tag##_table(                      \
      std::index_sequence<I...>) {                                                               \
    return {&switch_blackout_##tag##_site<I>...};                                                \
  }                                                                                              \
  constexpr std::array<SiteFn, n> kSites_##tag =                                                 \
      switch_blackout_##tag##_table(std::make_index_sequence<n>{});                              \
  }
// clang-format on

SWITCH_BLACKOUT_GROUP(10, 10, repatch::abi::kGroupInterchangeable)
SWITCH_BLACKOUT_GROUP(1000, 1000, repatch::abi::kGroupInterchangeable)
SWITCH_BLACKOUT_GROUP(10000, 10000, repatch::abi::kGroupInterchangeable)
// The busy rows' groups: the same op, but not flagged interchangeable, so that only stop-machine
// and the stopless writer may switch them (as the spinlock and tlb groups).
SWITCH_BLACKOUT_GROUP(pair_10, 10, 0)
SWITCH_BLACKOUT_GROUP(pair_1000, 1000, 0)

namespace {

using repatch::SwitchOutcome;
using repatch::SwitchWriter;

struct SiteGroup {
  const char* name;
  const SiteFn* sites;
  std::size_t count;
  bool interchangeable;
};

constexpr SiteGroup kGroups[] = {
    {"switch_blackout_10", kSites_10.data(), kSites_10.size(), true},
    {"switch_blackout_1000", kSites_1000.data(), kSites_1000.size(), true},
    {"switch_blackout_10000", kSites_10000.data(), kSites_10000.size(), true},
    {"switch_blackout_pair_10", kSites_pair_10.data(), kSites_pair_10.size(), false},
    {"switch_blackout_pair_1000", kSites_pair_1000.data(), kSites_pair_1000.size(), false},
};

const SiteGroup* group_of_size(std::size_t sites, bool interchangeable = true) {
  for (const SiteGroup& g : kGroups) {
    if (g.count == sites && g.interchangeable == interchangeable) return &g;
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
    // "SigQ:\t<queued>/<limit>"; from_chars reports what sscanf would not (an overflow).
    std::string_view fields = std::string_view(line).substr(5);
    while (!fields.empty() && (fields.front() == ' ' || fields.front() == '\t'))
      fields.remove_prefix(1);
    const char* const end = fields.data() + fields.size();
    unsigned long queued = 0;
    unsigned long limit = 0;
    const auto parsed_queued = std::from_chars(fields.data(), end, queued);
    const bool both = parsed_queued.ec == std::errc() && parsed_queued.ptr != end &&
                      *parsed_queued.ptr == '/' &&
                      std::from_chars(parsed_queued.ptr + 1, end, limit).ec == std::errc();
    if (both && queued >= limit) {
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

// ---- the busy rows: stop-machine against the stopless writer ------------------------------------

// Non-yielding vCPUs, as a guest that computes without a break: N of them call sites of the group
// being switched, and kBystanders more run plain computation and never touch it. The groups are
// the pair_ ones (not interchangeable), switched by stop-machine or by the stopless writer. Each
// switch is timed by the bench around switch_groups() (the whole call, planning included) beside
// the engine's blackout, and the vCPUs time themselves: every site call and every gap between two
// readings of the time-stamp counter longer than kStallNs goes into a per-thread log allocated
// before the threads start. After the row the logs are matched against the switches' windows:
//  - wait: a site call of a group vCPU that overlapped a switch and took longer than kStallNs:
//    under the stopless writer, a call that hit the INT3 fence and finished or waited out the
//    switch; under stop-machine, a call that an IPI parked (rare: it parks them anywhere);
//  - stall: per switch, the longest stall of any group vCPU that overlapped it, in a call or not
//    (under stop-machine, the time parked);
//  - gap: per switch, the longest stall of a bystander that overlapped it.
// On 2 cores with 10 to 20 runnable threads, most stalls are the scheduler giving the core to
// another thread. So each stall is also given net of the run-queue wait its thread accumulated
// since its previous stall (the second field of /proc/thread-self/schedstat, read right after
// the stall): what is left is time the thread was on a core but not progressing (in a signal
// handler, spinning), or asleep (parked on a futex), or stolen by the hypervisor. Figures are net
// unless called raw.
constexpr int kBystanders = 2;
constexpr double kStallNs = 2000;
constexpr std::size_t kStallLogSize = 16384;
// Between two switches, as a trigger loop's polling interval would (shorter: rows stay short).
constexpr auto kBusyPause = std::chrono::milliseconds(2);
int g_busy_switches = 50;  // --busy_switches=N

double g_tsc_per_ns = 0;

std::uint64_t tsc() {
  return __rdtsc();
}

double tsc_us(std::uint64_t ticks) {
  return static_cast<double>(ticks) / g_tsc_per_ns / 1e3;
}

// The TSC's rate against steady_clock over 50 ms (the TSC is constant and nonstop on the x86
// machines this runs on).
void calibrate_tsc() {
  const auto c0 = std::chrono::steady_clock::now();
  const std::uint64_t t0 = tsc();
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  const std::uint64_t t1 = tsc();
  const auto c1 = std::chrono::steady_clock::now();
  g_tsc_per_ns =
      static_cast<double>(t1 - t0) /
      static_cast<double>(std::chrono::duration_cast<std::chrono::nanoseconds>(c1 - c0).count());
}

struct Stall {
  std::uint64_t begin = 0;  // TSC
  std::uint64_t end = 0;
  std::uint64_t queued_ns = 0;  // run-queue wait since the previous stall's reading
  bool in_call = false;
};

// One thread's stalls. Sized before the thread starts; written only by its thread, read after it
// has been joined. record() makes two system calls (pread of schedstat) and never allocates.
class StallLog {
 public:
  StallLog() : stalls_(kStallLogSize) {}
  ~StallLog() {
    if (fd_ >= 0) ::close(fd_);
  }
  StallLog(const StallLog&) = delete;
  StallLog& operator=(const StallLog&) = delete;

  /// On the owning thread, before its loop.
  void open() noexcept {
    fd_ = ::open("/proc/thread-self/schedstat", O_RDONLY | O_CLOEXEC);
    last_queued_ = queued_ns();
  }
  void record(std::uint64_t begin, std::uint64_t end, bool in_call) noexcept {
    const std::uint64_t queued = queued_ns();
    const std::uint64_t delta = queued >= last_queued_ ? queued - last_queued_ : 0;
    last_queued_ = queued;
    if (count_ == stalls_.size()) {
      ++dropped_;
      return;
    }
    stalls_[count_++] = {begin, end, delta, in_call};
  }
  const Stall* begin() const { return stalls_.data(); }
  const Stall* end() const { return stalls_.data() + count_; }
  std::uint64_t dropped() const { return dropped_; }
  bool has_schedstat() const { return fd_ >= 0; }

 private:
  // schedstat is "<ns on a core> <ns waiting on a run queue> <timeslices>"; 0 without it.
  std::uint64_t queued_ns() const noexcept {
    if (fd_ < 0) return 0;
    char buf[96];
    const ssize_t n = ::pread(fd_, buf, sizeof buf - 1, 0);
    if (n <= 0) return 0;
    buf[n] = '\0';
    const char* p = buf;
    while (*p != '\0' && *p != ' ')
      ++p;
    std::uint64_t value = 0;
    for (++p; *p >= '0' && *p <= '9'; ++p)
      value = value * 10 + static_cast<std::uint64_t>(*p - '0');
    return value;
  }

  std::vector<Stall> stalls_;
  std::size_t count_ = 0;
  std::uint64_t dropped_ = 0;
  int fd_ = -1;
  std::uint64_t last_queued_ = 0;
};

struct BusyData {
  std::vector<double> wall_us, commit_us, blackout_us;
  std::vector<double> wait_us, wait_raw_us;  // per fenced call
  std::vector<double> stall_us;              // per switch: group vCPUs
  std::vector<double> gap_us, gap_raw_us;    // per switch: bystanders
  std::uint64_t retries = 0;
  std::uint64_t int3 = 0;
  std::uint64_t dropped = 0;
  bool schedstat = true;
  std::uint32_t aborts[repatch::kSwitchAbortCount] = {};
};
std::map<RowKey, BusyData> g_busy;

void set_percentiles(benchmark::State& state, const std::string& name, std::vector<double> v) {
  std::sort(v.begin(), v.end());
  state.counters[name + "_med_us"] = percentile_of_sorted(v, 0.5);
  state.counters[name + "_p99_us"] = percentile_of_sorted(v, 0.99);
}

void BM_SwitchBusy(benchmark::State& state, SwitchWriter writer) {
  const int vcpus = static_cast<int>(state.range(0));
  const SiteGroup* group = group_of_size(static_cast<std::size_t>(state.range(1)), false);
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
  const auto stall_ticks = static_cast<std::uint64_t>(kStallNs * g_tsc_per_ns);

  // Everything the threads write is allocated here, before they start.
  std::vector<std::unique_ptr<StallLog>> logs;
  logs.reserve(static_cast<std::size_t>(vcpus) + kBystanders);
  for (int i = 0; i < vcpus + kBystanders; ++i)
    logs.push_back(std::make_unique<StallLog>());
  std::atomic<int> next_caller_log{0};
  std::atomic<int> next_bystander_log{vcpus};
  std::atomic<int> opened{0};
  std::atomic<std::uint64_t> violations{0};
  std::atomic<unsigned> bad_value{0};
  struct Window {
    std::uint64_t begin, end;
  };
  std::vector<Window> windows;
  windows.reserve(static_cast<std::size_t>(state.max_iterations) + 8);
  std::vector<double> wall_us, commit_us, blackout_us;
  wall_us.reserve(windows.capacity());
  commit_us.reserve(windows.capacity());
  blackout_us.reserve(windows.capacity());
  BusyData& row = g_busy[{writer, vcpus, group->count}];
  bool failed = false;
  {
    // Callers take logs 0..vcpus-1, bystanders the last kBystanders.
    auto take_log = [&logs, &opened](std::atomic<int>& next) {
      StallLog* log = logs[static_cast<std::size_t>(next.fetch_add(1))].get();
      log->open();
      opened.fetch_add(1);
      return log;
    };
    const repatch::bench::GuestVcpus callers(
        vcpus, 0, [&](repatch::sync::Vcpu& vcpu, std::uint64_t iteration) {
          thread_local StallLog* log = nullptr;
          thread_local std::uint64_t prev = 0;
          if (log == nullptr) {
            log = take_log(next_caller_log);
            prev = tsc();
          }
          std::size_t at = (std::size_t{vcpu.id()} * 104729 + iteration * kStride) % group->count;
          for (std::size_t k = 0; k < kSitesPerStep; ++k) {
            std::uint64_t t0 = tsc();
            if (t0 - prev > stall_ticks) {
              log->record(prev, t0, false);
              t0 = tsc();
            }
            const unsigned value = group->sites[at]();
            std::uint64_t t1 = tsc();
            if (t1 - t0 > stall_ticks) {
              log->record(t0, t1, true);
              t1 = tsc();
            }
            prev = t1;
            if (value != kValueOne && value != kValueTwo) {
              violations.fetch_add(1, std::memory_order_relaxed);
              bad_value.store(value, std::memory_order_relaxed);
            }
            if (++at == group->count) at = 0;
          }
          vcpu.quiescent_state();
        });
    const repatch::bench::GuestVcpus bystanders(
        kBystanders, 0, [&](repatch::sync::Vcpu& vcpu, std::uint64_t iteration) {
          thread_local StallLog* log = nullptr;
          thread_local std::uint64_t prev = 0;
          thread_local std::uint64_t x = 1;
          if (log == nullptr) {
            log = take_log(next_bystander_log);
            prev = tsc();
          }
          for (int i = 0; i < 64; ++i)
            x = x * 6364136223846793005u + iteration;
          benchmark::DoNotOptimize(x);
          std::uint64_t t = tsc();
          if (t - prev > stall_ticks) {
            log->record(prev, t, false);
            t = tsc();
          }
          prev = t;
          vcpu.quiescent_state();
        });
    if (callers.failed() != 0 || bystanders.failed() != 0) {
      state.SkipWithError("a guest thread could not register as a vCPU");
      return;
    }
    while (opened.load() < vcpus + kBystanders)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));

    const auto flip = [&](SwitchOutcome& outcome, bool timed) {
      const std::string next = current == "one" ? "two" : "one";
      std::this_thread::sleep_for(kBusyPause);
      const std::uint64_t begin = tsc();
      outcome = engine->switch_groups({{group->name, next}}, {.writer = writer});
      const std::uint64_t end = tsc();
      if (!outcome.committed()) {
        std::string message = outcome.status.error().message();
        if (outcome.reason == repatch::SwitchAbort::kAckTimeout) message += signal_queue_note();
        state.SkipWithError(message.c_str());
        return false;
      }
      current = next;
      if (timed) {
        windows.push_back({begin, end});
        wall_us.push_back(tsc_us(end - begin));
        commit_us.push_back(std::chrono::duration<double, std::micro>(outcome.elapsed).count());
      }
      return true;
    };
    SwitchOutcome outcome;
    for (int i = 0; i < kWarmupSwitches && !failed; ++i)
      failed = !flip(outcome, false);
    if (!failed) {
      for (auto _ : state) {
        if (!flip(outcome, true)) {
          failed = true;
          break;
        }
        const double blackout = std::chrono::duration<double>(outcome.blackout).count();
        state.SetIterationTime(blackout);
        blackout_us.push_back(blackout * 1e6);
        row.retries += outcome.attempts - 1;
        for (std::size_t r = 0; r < repatch::kSwitchAbortCount; ++r)
          row.aborts[r] += outcome.aborts[r];
        row.int3 += outcome.int3_completions;
      }
    }
  }  // every guest has been joined: the logs are theirs no longer

  if (failed) return;
  if (const std::uint64_t v = violations.load(); v != 0) {
    const std::string message = std::to_string(v) + " guest reads returned " +
                                std::to_string(bad_value.load()) + ", not 1 or 2";
    state.SkipWithError(message.c_str());
    return;
  }
  const unsigned expected = value_of(current);
  for (std::size_t i = 0; i < group->count; ++i) {
    if (const unsigned value = group->sites[i](); value != expected) {
      const std::string message = "after the run, site " + std::to_string(i) + " returned " +
                                  std::to_string(value) + " in variant '" + current + "'";
      state.SkipWithError(message.c_str());
      return;
    }
  }

  // Match every stall with the switches it overlapped (the windows are in time order).
  std::vector<double> wait_us, wait_raw_us;
  std::vector<double> stall_us(windows.size(), 0.0);
  std::vector<double> gap_us(windows.size(), 0.0);
  std::vector<double> gap_raw_us(windows.size(), 0.0);
  for (std::size_t l = 0; l < logs.size(); ++l) {
    const bool bystander = l >= static_cast<std::size_t>(vcpus);
    row.dropped += logs[l]->dropped();
    row.schedstat = row.schedstat && logs[l]->has_schedstat();
    for (const Stall& stall : *logs[l]) {
      const auto first =
          std::lower_bound(windows.begin(), windows.end(), stall.begin,
                           [](const Window& w, std::uint64_t at) { return w.end < at; });
      const double raw = tsc_us(stall.end - stall.begin);
      const double net = std::max(0.0, raw - static_cast<double>(stall.queued_ns) / 1e3);
      bool overlapped = false;
      for (auto w = first; w != windows.end() && w->begin <= stall.end; ++w) {
        overlapped = true;
        const auto i = static_cast<std::size_t>(w - windows.begin());
        if (bystander) {
          gap_us[i] = std::max(gap_us[i], net);
          gap_raw_us[i] = std::max(gap_raw_us[i], raw);
        } else {
          stall_us[i] = std::max(stall_us[i], net);
        }
      }
      if (overlapped && !bystander && stall.in_call) {
        wait_us.push_back(net);
        wait_raw_us.push_back(raw);
      }
    }
  }

  const auto append = [](std::vector<double>& to, const std::vector<double>& from) {
    to.insert(to.end(), from.begin(), from.end());
  };
  append(row.wall_us, wall_us);
  append(row.commit_us, commit_us);
  append(row.blackout_us, blackout_us);
  append(row.wait_us, wait_us);
  append(row.wait_raw_us, wait_raw_us);
  append(row.stall_us, stall_us);
  append(row.gap_us, gap_us);
  append(row.gap_raw_us, gap_raw_us);
  std::vector<double> sorted = blackout_us;
  std::sort(sorted.begin(), sorted.end());
  state.counters["med_us"] = percentile_of_sorted(sorted, 0.5);
  state.counters["p99_us"] = percentile_of_sorted(sorted, 0.99);
  state.counters["max_us"] = sorted.empty() ? 0.0 : sorted.back();
  set_percentiles(state, "wall", wall_us);
  set_percentiles(state, "commit", commit_us);
  set_percentiles(state, "wait", wait_us);
  set_percentiles(state, "wait_raw", wait_raw_us);
  set_percentiles(state, "stall", stall_us);
  set_percentiles(state, "gap", gap_us);
  set_percentiles(state, "gap_raw", gap_raw_us);
  state.counters["waits"] = static_cast<double>(wait_us.size());
  state.counters["retries"] = static_cast<double>(row.retries);
  state.counters["int3"] = static_cast<double>(row.int3);
}

void busy_rows(benchmark::internal::Benchmark* b) {
  b->ArgNames({"vcpus", "sites"})
      ->ArgsProduct({{2, 4, 8, 16}, {10, 1000}})
      ->Iterations(g_busy_switches)
      ->UseManualTime()
      ->Unit(benchmark::kMicrosecond);
}

// After the option is read: the number of switches of a busy row is a registration property.
void register_busy_rows() {
  busy_rows(benchmark::RegisterBenchmark("BM_SwitchBusy/stop", &BM_SwitchBusy,
                                         SwitchWriter::kStopMachine));
  busy_rows(benchmark::RegisterBenchmark("BM_SwitchBusy/stopless", &BM_SwitchBusy,
                                         SwitchWriter::kStopless));
}

// ---- the summary --------------------------------------------------------------------------------

const char* writer_label(SwitchWriter writer) {
  return writer == SwitchWriter::kBatch      ? "batch"
         : writer == SwitchWriter::kStopless ? "stopless"
                                             : "stop";
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

void print_busy_summary(std::FILE* out);

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
  print_busy_summary(out);
}

struct Quantiles {
  double p50 = 0, p99 = 0;
  std::size_t n = 0;
};
Quantiles quantiles(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return {percentile_of_sorted(v, 0.5), percentile_of_sorted(v, 0.99), v.size()};
}

std::string ratio_text(double a, double b) {
  if (b <= 0) return "-";
  char text[32];
  std::snprintf(text, sizeof text, "%.3g", a / b);
  return text;
}

void print_busy_summary(std::FILE* out) {
  if (g_busy.empty()) return;
  std::fprintf(out,
               "\nswitch_blackout, busy vCPUs (no yield) + %d bystanders on the cores, groups not "
               "interchangeable: p50 / p99 in us\n"
               "  wall: switch_groups() timed around the call; commit: from the call to the commit "
               "(SwitchOutcome::elapsed: without the caller's wait for its CPU once the call "
               "drops real-time priority); blackout: the engine's; wait: a "
               "site call of the group that overlapped a switch (n calls); stall: per switch, "
               "the longest stall of a vCPU calling the group; gap: per switch, the longest "
               "stall of a bystander (raw: with its run-queue wait)\n",
               kBystanders);
  std::fprintf(out, "%-8s %5s %5s %4s %17s %17s %15s %5s %15s %17s %17s %15s  %s\n", "writer",
               "vcpus", "sites", "n", "wall", "commit", "blackout", "waits", "wait", "stall", "gap",
               "gap raw", "target");
  for (const auto& [key, d] : g_busy) {
    if (d.wall_us.empty()) {
      std::fprintf(out, "%-8s %5d %5zu  failed (see its error above)\n", writer_label(key.writer),
                   key.vcpus, key.sites);
      continue;
    }
    const Quantiles wall = quantiles(d.wall_us), commit = quantiles(d.commit_us),
                    blackout = quantiles(d.blackout_us), wait = quantiles(d.wait_us),
                    stall = quantiles(d.stall_us), gap = quantiles(d.gap_us),
                    gap_raw = quantiles(d.gap_raw_us);
    std::string target;
    if (key.writer == SwitchWriter::kStopless && key.vcpus == 16) {
      target = std::string("wall p99 <= 1 ms: ") + verdict(wall.p99 <= 1000.0) +
               " (commit p99: " + verdict(commit.p99 <= 1000.0) +
               "), wait p99 <= 200 us: " + verdict(wait.p99 <= 200.0);
    }
    std::fprintf(out,
                 "%-8s %5d %5zu %4zu %8.1f/%8.1f %8.1f/%8.1f %7.1f/%7.1f %5zu %7.1f/%7.1f "
                 "%8.1f/%8.1f %8.1f/%8.1f %7.0f/%7.0f  %s\n",
                 writer_label(key.writer), key.vcpus, key.sites, wall.n, wall.p50, wall.p99,
                 commit.p50, commit.p99, blackout.p50, blackout.p99, wait.n, wait.p50, wait.p99,
                 stall.p50, stall.p99, gap.p50, gap.p99, gap_raw.p50, gap_raw.p99, target.c_str());
    if (d.retries != 0) {
      std::fprintf(out, "%26s retries %llu:", "", static_cast<unsigned long long>(d.retries));
      for (std::size_t r = 1; r < repatch::kSwitchAbortCount; ++r) {
        if (d.aborts[r] != 0) {
          std::fprintf(out, " %s %u",
                       repatch::switch_abort_name(static_cast<repatch::SwitchAbort>(r)),
                       d.aborts[r]);
        }
      }
      std::fprintf(out, "\n");
    }
    if (d.dropped != 0) {
      std::fprintf(out, "%26s %llu stalls not logged (a log was full)\n", "",
                   static_cast<unsigned long long>(d.dropped));
    }
    if (!d.schedstat) {
      std::fprintf(out, "%26s no /proc/thread-self/schedstat: net figures are raw\n", "");
    }
  }
  std::fprintf(out, "\nstopless / stop, same vcpus and sites (p99; p50 in brackets)\n");
  std::fprintf(out, "%5s %5s %17s %17s %17s\n", "vcpus", "sites", "wall", "stall", "gap");
  for (const auto& [key, stopless] : g_busy) {
    if (key.writer != SwitchWriter::kStopless || stopless.wall_us.empty()) continue;
    const auto stop = g_busy.find({SwitchWriter::kStopMachine, key.vcpus, key.sites});
    if (stop == g_busy.end() || stop->second.wall_us.empty()) continue;
    const auto cell = [](const std::vector<double>& a, const std::vector<double>& b) {
      const Quantiles qa = quantiles(a), qb = quantiles(b);
      return ratio_text(qa.p99, qb.p99) + " (" + ratio_text(qa.p50, qb.p50) + ")";
    };
    std::fprintf(out, "%5d %5zu %17s %17s %17s\n", key.vcpus, key.sites,
                 cell(stopless.wall_us, stop->second.wall_us).c_str(),
                 cell(stopless.stall_us, stop->second.stall_us).c_str(),
                 cell(stopless.gap_us, stop->second.gap_us).c_str());
  }
  std::fprintf(out, "TSC: %.4f ticks per ns\n", g_tsc_per_ns);
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
    if (it == status.groups.end() || it->sites != g.count ||
        it->interchangeable != g.interchangeable) {
      const char* flag = g.interchangeable ? "interchangeable" : "not interchangeable";
      std::fprintf(stderr, "switch_blackout: group %s has %zu sites%s, expected %zu, %s\n", g.name,
                   it == status.groups.end() ? 0 : it->sites,
                   it != status.groups.end() && it->interchangeable == g.interchangeable
                       ? ""
                       : " (the flag differs)",
                   g.count, flag);
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
  int kept = 1;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg.starts_with("--busy_switches=")) {
      const std::string value(arg.substr(arg.find('=') + 1));
      char* end = nullptr;
      const long n = std::strtol(value.c_str(), &end, 10);
      if (value.empty() || *end != '\0' || n < 1 || n > 100000) {
        std::fprintf(stderr, "switch_blackout: --busy_switches must be 1 to 100000, got '%s'\n",
                     value.c_str());
        return 1;
      }
      g_busy_switches = static_cast<int>(n);
      continue;
    }
    argv[kept++] = argv[i];
  }
  argc = kept;
  calibrate_tsc();
  register_busy_rows();
  return repatch::bench::run_benchmarks(argc, argv, &print_summary);
}
