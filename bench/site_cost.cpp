// site_cost: what one op costs at a repatch site, against the same code written by hand.
//
// The op is "store zero byte" (the native spinlock release of the design). Seven loops, one per
// case, each a separate noipa function built from one macro so that their bodies differ only in
// the op:
//
//   a  site, unpatched         cs cs call *slot(%rip)   -> site_cost_store_zero
//   b  site, call variant      cs cs cs call site_cost_store_zero
//   c  site, inline variant    cs cs cs cs cs movb $0, (%rdi)
//   d  by hand                 movb $0, (%rdi)
//   e  by hand                 call site_cost_store_zero
//   f  site, call variant      cs cs cs call site_cost_store_zero_thunk -> C function
//   g  plain C++ call          site_cost_store_zero_c(p)
//
// Targets: c within 5% of d (and the same instructions per op), b within 5% of e. a and f are
// there to show what the indirect call and the callee-save thunk cost.
//
// Google Benchmark times the loops; `--loop=<case> --iterations=N` runs one loop N times with no
// benchmark machinery, for callgrind (bench/callgrind_site_cost.sh). Both modes call the very same
// loop functions, so the instruction counts describe the code that was timed.
#include <benchmark/benchmark.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cinttypes>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "bench/stats.h"
#include "repatch/engine.h"
#include "repatch/op.h"

// ---- the op bodies -----------------------------------------------------------------------------

// The call target of b and e, and the slot target of a: keeps the op ABI by touching nothing but
// the byte, so it needs no thunk.
asm(".pushsection .text, \"ax\", @progbits\n"
    ".p2align 4\n"
    ".globl site_cost_store_zero\n"
    ".hidden site_cost_store_zero\n"
    ".type site_cost_store_zero, @function\n"
    "site_cost_store_zero:\n"
    "\tmovb $0, (%rdi)\n"
    "\tret\n"
    ".size site_cost_store_zero, . - site_cost_store_zero\n"
    ".popsection\n");
extern "C" void site_cost_store_zero();

// The ordinary C function behind f's thunk and g's call. noipa: g must pay for a real call to an
// unknown function (caller-saved registers spilled), as any C++ caller of an out-of-line op would.
extern "C" __attribute__((noipa, used)) void site_cost_store_zero_c(unsigned char* p) {
  *p = 0;
}

// ---- groups, ops, variants -------------------------------------------------------------------

// Three groups with identical ops so that a, b and c run side by side in one process, each group
// booted into a different variant. "call" comes first: an unpatched site calls the default
// variant through the slot, so a reaches the same routine as b and e.
REPATCH_DECLARE_GROUP(site_cost_a);
REPATCH_DECLARE_GROUP(site_cost_b);
REPATCH_DECLARE_GROUP(site_cost_c);
REPATCH_DECLARE_GROUP(site_cost_f);
REPATCH_DECLARE_OP(site_cost_a_store, 8);
REPATCH_DECLARE_OP(site_cost_b_store, 8);
REPATCH_DECLARE_OP(site_cost_c_store, 8);
REPATCH_DECLARE_OP(site_cost_f_store, 8);

REPATCH_DEFINE_GROUP(site_cost_a, 0, "call", "inline");
REPATCH_DEFINE_OP(site_cost_a_store, site_cost_a, call);
REPATCH_CALL_VARIANT(site_cost_a_store, call, site_cost_store_zero);
REPATCH_INLINE_VARIANT(site_cost_a_store, inline, "movb $0, (%rdi)");

REPATCH_DEFINE_GROUP(site_cost_b, 0, "call", "inline");
REPATCH_DEFINE_OP(site_cost_b_store, site_cost_b, call);
REPATCH_CALL_VARIANT(site_cost_b_store, call, site_cost_store_zero);
REPATCH_INLINE_VARIANT(site_cost_b_store, inline, "movb $0, (%rdi)");

REPATCH_DEFINE_GROUP(site_cost_c, 0, "call", "inline");
REPATCH_DEFINE_OP(site_cost_c_store, site_cost_c, call);
REPATCH_CALL_VARIANT(site_cost_c_store, call, site_cost_store_zero);
REPATCH_INLINE_VARIANT(site_cost_c_store, inline, "movb $0, (%rdi)");

REPATCH_DEFINE_GROUP(site_cost_f, 0, "thunk");
REPATCH_DEFINE_OP(site_cost_f_store, site_cost_f, thunk);
REPATCH_CALLEE_SAVE_THUNK(site_cost_store_zero_thunk, site_cost_store_zero_c, void);
REPATCH_CALL_VARIANT(site_cost_f_store, thunk, site_cost_store_zero_thunk);

namespace {

// ---- one op, seven ways ----------------------------------------------------------------------

[[gnu::always_inline]] inline void site_a(unsigned char* p) {
  REPATCH_SITE(site_cost_a_store, (), "D"(p));
}
[[gnu::always_inline]] inline void site_b(unsigned char* p) {
  REPATCH_SITE(site_cost_b_store, (), "D"(p));
}
[[gnu::always_inline]] inline void site_c(unsigned char* p) {
  REPATCH_SITE(site_cost_c_store, (), "D"(p));
}
// Same operand constraint and clobbers as a site: the compiler must treat the hand-written code
// exactly as it treats a site, or the comparison measures register allocation instead.
[[gnu::always_inline]] inline void hand_inline(unsigned char* p) {
  asm volatile("movb $0, (%%rdi)" : : "D"(p) : REPATCH_DETAIL_SITE_CLOBBERS);
}
[[gnu::always_inline]] inline void hand_call(unsigned char* p) {
  asm volatile("call site_cost_store_zero" : : "D"(p) : REPATCH_DETAIL_SITE_CLOBBERS);
}
[[gnu::always_inline]] inline void site_f(unsigned char* p) {
  REPATCH_SITE(site_cost_f_store, (), "D"(p));
}
[[gnu::always_inline]] inline void cxx_call(unsigned char* p) {
  site_cost_store_zero_c(p);
}

}  // namespace

// extern "C" so that callgrind's --toggle-collect can name them. noipa: no clone specialised for
// the benchmark's constant batch size, so Google Benchmark and callgrind see the same code.
#define SITE_COST_LOOP(letter, op)                                                             \
  extern "C"                                                                                   \
      __attribute__((noipa)) void site_cost_loop_##letter(unsigned char* p, std::uint64_t n) { \
    for (std::uint64_t i = 0; i < n; ++i)                                                      \
      op(p);                                                                                   \
  }

SITE_COST_LOOP(a, site_a)
SITE_COST_LOOP(b, site_b)
SITE_COST_LOOP(c, site_c)
SITE_COST_LOOP(d, hand_inline)
SITE_COST_LOOP(e, hand_call)
SITE_COST_LOOP(f, site_f)
SITE_COST_LOOP(g, cxx_call)

namespace {

using LoopFn = void (*)(unsigned char*, std::uint64_t);

struct Case {
  char letter;
  const char* name;
  LoopFn loop;
  char baseline;  ///< the hand-written code this case is compared with
};

constexpr Case kCases[] = {
    {'a', "a_site_indirect", site_cost_loop_a, 'e'}, {'b', "b_site_call", site_cost_loop_b, 'e'},
    {'c', "c_site_inline", site_cost_loop_c, 'd'},   {'d', "d_hand_inline", site_cost_loop_d, 'd'},
    {'e', "e_hand_call", site_cost_loop_e, 'e'},     {'f', "f_site_thunk", site_cost_loop_f, 'g'},
    {'g', "g_cxx_call", site_cost_loop_g, 'g'},
};

const Case* find_case(std::string_view what) {
  for (const Case& c : kCases) {
    if ((what.size() == 1 && what[0] == c.letter) || what == c.name) return &c;
  }
  return nullptr;
}

const Case& case_of(char letter) {
  return *find_case(std::string_view(&letter, 1));
}

// Its own cache line, so nothing else the benchmark touches shares it.
alignas(64) unsigned char g_byte[64];

// ---- boot and the check that the sites hold what we mean to measure ------------------------

repatch::BootOptions boot_options() {
  repatch::BootOptions options;
  options.initial = {{"site_cost_a", std::string(repatch::kIndirectVariant)},
                     {"site_cost_b", "call"},
                     {"site_cost_c", "inline"},
                     {"site_cost_f", "thunk"}};
  return options;
}

std::int32_t rel32(const std::vector<std::uint8_t>& bytes, std::size_t at) {
  std::int32_t v;
  std::memcpy(&v, bytes.data() + at, sizeof v);
  return v;
}

struct Expected {
  char letter;
  const char* op;
  const char* group;
  std::string_view variant;
};

// Checks the bytes themselves, not only the engine's bookkeeping: a benchmark of the wrong code is
// worse than none.
bool site_holds(const repatch::SiteStatus& s, const Expected& e, std::string& why) {
  const auto& b = s.bytes;
  const std::uintptr_t end = s.address + b.size();
  if (b.size() != 8) {
    why = "site is " + std::to_string(b.size()) + " bytes, expected 8";
    return false;
  }
  if (e.variant == repatch::kIndirectVariant) {
    // cs cs call *disp32(%rip), to the op's slot, and the slot at the same routine as b and e.
    const bool shape = b[0] == 0x2e && b[1] == 0x2e && b[2] == 0xff && b[3] == 0x15;
    if (!shape ||
        end + rel32(b, 4) != reinterpret_cast<std::uintptr_t>(&repatch_slot_site_cost_a_store)) {
      why = "not the indirect call through repatch_slot_site_cost_a_store";
      return false;
    }
    if (repatch_slot_site_cost_a_store != reinterpret_cast<void*>(&site_cost_store_zero)) {
      why = "the slot does not point at site_cost_store_zero";
      return false;
    }
    return true;
  }
  if (e.variant == "call" || e.variant == "thunk") {
    const auto target = reinterpret_cast<std::uintptr_t>(
        e.variant == "call" ? &site_cost_store_zero : &site_cost_store_zero_thunk);
    const bool shape = b[0] == 0x2e && b[1] == 0x2e && b[2] == 0x2e && b[3] == 0xe8;
    if (!shape || end + rel32(b, 4) != target) {
      why = std::string("not cs cs cs call ") +
            (e.variant == "call" ? "site_cost_store_zero" : "site_cost_store_zero_thunk");
      return false;
    }
    return true;
  }
  static constexpr std::uint8_t kInline[8] = {0x2e, 0x2e, 0x2e, 0x2e, 0x2e, 0xc6, 0x07, 0x00};
  if (!std::equal(b.begin(), b.end(), kInline)) {
    why = "not cs x5 movb $0, (%rdi)";
    return false;
  }
  return true;
}

bool verify_sites(const repatch::Engine& engine) {
  static constexpr Expected kExpected[] = {
      {'a', "site_cost_a_store", "site_cost_a", repatch::kIndirectVariant},
      {'b', "site_cost_b_store", "site_cost_b", "call"},
      {'c', "site_cost_c_store", "site_cost_c", "inline"},
      {'f', "site_cost_f_store", "site_cost_f", "thunk"},
  };
  const repatch::EngineStatus status = engine.status();
  bool ok = true;
  for (const Expected& e : kExpected) {
    for (const repatch::GroupStatus& g : status.groups) {
      if (g.name == e.group && g.variant != e.variant) {
        std::fprintf(stderr, "site_cost: group %s is in variant '%s', expected '%.*s'\n", e.group,
                     g.variant.c_str(), static_cast<int>(e.variant.size()), e.variant.data());
        ok = false;
      }
    }
    int found = 0;
    for (const repatch::SiteStatus& s : status.sites) {
      if (s.op != e.op) continue;
      ++found;
      std::string why;
      bool holds = s.variant == e.variant;
      if (!holds) {
        why = "the engine records variant '" + s.variant + "', expected '" +
              std::string(e.variant) + "'";
      } else {
        holds = site_holds(s, e, why);
      }
      std::fprintf(stderr, "site_cost: case %c site %#" PRIxPTR " (%s): %s [%s]%s%s\n", e.letter,
                   s.address, s.symbol.c_str(), s.instruction.c_str(), s.variant.c_str(),
                   holds ? "" : "  WRONG: ", holds ? "" : why.c_str());
      ok = ok && holds;
    }
    // One loop per case, so exactly one site per op: anything else means the compiler duplicated
    // or dropped the site and the timed code is not what the table says.
    if (found != 1) {
      std::fprintf(stderr, "site_cost: op %s has %d sites, expected 1\n", e.op, found);
      ok = false;
    }
  }
  return ok;
}

// ---- Google Benchmark ------------------------------------------------------------------------

// Amortises KeepRunningBatch over many ops: its cost per op is a few instructions / kBatch.
constexpr std::uint64_t kBatch = 1024;

void run_case(benchmark::State& state, LoopFn loop) {
  g_byte[0] = 1;
  while (state.KeepRunningBatch(kBatch))
    loop(g_byte, kBatch);
  if (g_byte[0] != 0) state.SkipWithError("the op did not store zero");
}

// Linear interpolation between closest ranks. Over R repetitions this is a percentile of
// per-repetition means, not of single ops (a sub-nanosecond op cannot be timed alone).
double p99(const std::vector<double>& v) {
  return repatch::bench::percentile(v, 0.99);
}

// The smallest per-repetition mean: the repetition that shared the core least. On a shared
// machine it estimates what the code costs by itself better than the median does.
double min_of(const std::vector<double>& v) {
  return v.empty() ? 0.0 : *std::min_element(v.begin(), v.end());
}

// The console output plus, at the end, each case against its hand-written baseline, so that the
// ratios come from one run (the machine is shared and drifts between runs).
class RatioReporter : public benchmark::ConsoleReporter {
 public:
  using benchmark::ConsoleReporter::ConsoleReporter;

  void ReportRuns(const std::vector<Run>& runs) override {
    benchmark::ConsoleReporter::ReportRuns(runs);
    for (const Run& r : runs) {
      if (r.error_occurred) continue;
      Times& t = times_[r.run_name.function_name];
      if (r.run_type == Run::RT_Aggregate) {
        if (r.aggregate_name == "median") {
          t.median = r.GetAdjustedRealTime();
          t.cpu_median = r.GetAdjustedCPUTime();
        }
        if (r.aggregate_name == "p99") t.p99 = r.GetAdjustedRealTime();
        if (r.aggregate_name == "min") t.min = r.GetAdjustedRealTime();
        t.aggregated = true;
      } else if (!t.aggregated) {
        // No repetitions: the single run stands for every statistic.
        t.median = t.p99 = t.min = r.GetAdjustedRealTime();
        t.cpu_median = r.GetAdjustedCPUTime();
      }
    }
  }

  void Finalize() override {
    std::ostream& out = GetOutputStream();
    char line[200];
    out << "\nsite_cost: ns per op (real time) over repetitions; each ratio is this case's "
           "statistic / the baseline's\n";
    std::snprintf(line, sizeof line, "%-16s %9s %9s %9s  %-14s %7s %7s %7s\n", "case", "median",
                  "p99", "min", "baseline", "median", "cpu med", "min");
    out << line;
    for (const Case& c : kCases) {
      const Times& t = times_[c.name];
      const Times& b = times_[case_of(c.baseline).name];
      std::snprintf(line, sizeof line, "%-16s %9.3f %9.3f %9.3f  %-14s %7.3f %7.3f %7.3f\n", c.name,
                    t.median, t.p99, t.min, case_of(c.baseline).name, t.median / b.median,
                    t.cpu_median / b.cpu_median, t.min / b.min);
      out << line;
    }
    target(out, 'c', 'd');
    target(out, 'b', 'e');
    benchmark::ConsoleReporter::Finalize();
  }

 private:
  struct Times {
    double median = NAN;
    double p99 = NAN;
    double min = NAN;
    double cpu_median = NAN;
    bool aggregated = false;
  };

  // Faster than hand-written code by more than the tolerance is not a win: the same instructions
  // cannot be, so it says the run was too noisy to judge.
  static const char* verdict(double r) {
    if (std::isnan(r)) return "not measured";
    if (r > 1.05) return "MISSED";
    if (r < 0.95) return "met, but faster than its baseline by over 5%: noise, judge with care";
    return "met";
  }

  // The target is judged on the median real-time ratio; the CPU-time and min ratios are printed
  // beside it because when they disagree, the machine, not the code, moved the median.
  void target(std::ostream& out, char letter, char base_letter) {
    const Times& t = times_[case_of(letter).name];
    const Times& b = times_[case_of(base_letter).name];
    const double r = t.median / b.median;
    char line[240];
    std::snprintf(line, sizeof line,
                  "target: (%c) within 5%% of (%c): median ratio %.3f (cpu %.3f, min %.3f), %s\n",
                  letter, base_letter, r, t.cpu_median / b.cpu_median, t.min / b.min, verdict(r));
    out << line;
  }

  std::map<std::string, Times> times_;
};

// ---- the callgrind mode ----------------------------------------------------------------------

int run_loop_mode(std::string_view which, std::string_view iterations) {
  const Case* c = find_case(which);
  std::uint64_t n = 0;
  const auto [end, ec] =
      std::from_chars(iterations.data(), iterations.data() + iterations.size(), n);
  if (c == nullptr || ec != std::errc() || end != iterations.data() + iterations.size()) {
    std::fprintf(stderr,
                 "site_cost: --loop=<a..g or case name> needs --iterations=<count>; cases:");
    for (const Case& k : kCases)
      std::fprintf(stderr, " %s", k.name);
    std::fputc('\n', stderr);
    return 2;
  }
  g_byte[0] = 1;
  c->loop(g_byte, n);
  if (n > 0 && g_byte[0] != 0) {
    std::fprintf(stderr, "site_cost: %s did not store zero\n", c->name);
    return 1;
  }
  std::fprintf(stderr, "site_cost: ran %s %" PRIu64 " times\n", c->name, n);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // Our own flags come out before Google Benchmark sees the rest.
  std::string_view loop;
  std::string_view iterations;
  bool loop_mode = false;
  bool console = true;
  std::vector<char*> args{argv[0]};
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg.starts_with("--loop=")) {
      loop = arg.substr(7);
      loop_mode = true;
    } else if (arg.starts_with("--iterations=")) {
      iterations = arg.substr(13);
    } else {
      if (arg.starts_with("--benchmark_format=") && arg != "--benchmark_format=console") {
        console = false;
      }
      args.push_back(argv[i]);
    }
  }

  // Before benchmark::Initialize and before any thread exists: boot refuses to patch code that
  // another thread may be running.
  const repatch::Result<repatch::Engine*> engine = repatch::boot(boot_options());
  if (!engine.ok()) {
    std::fprintf(stderr, "site_cost: boot failed: %s\n", engine.error().to_string().c_str());
    return 1;
  }
  if (!verify_sites(*engine.value())) {
    std::fprintf(stderr,
                 "site_cost: the sites do not hold the code this benchmark measures; "
                 "refusing to run\n");
    return 1;
  }

  if (loop_mode) return run_loop_mode(loop, iterations);

  int bench_argc = static_cast<int>(args.size());
  args.push_back(nullptr);
  benchmark::Initialize(&bench_argc, args.data());
  if (benchmark::ReportUnrecognizedArguments(bench_argc, args.data())) return 1;
  for (const Case& c : kCases) {
    benchmark::RegisterBenchmark(
        c.name, [loop_fn = c.loop](benchmark::State& state) { run_case(state, loop_fn); })
        ->ComputeStatistics("p99", p99)
        ->ComputeStatistics("min", min_of);
  }
  if (console) {
    RatioReporter reporter(isatty(STDOUT_FILENO) ? benchmark::ConsoleReporter::OO_ColorTabular
                                                 : benchmark::ConsoleReporter::OO_Tabular);
    benchmark::RunSpecifiedBenchmarks(&reporter);
  } else {
    benchmark::RunSpecifiedBenchmarks();
  }
  benchmark::Shutdown();
  return 0;
}
