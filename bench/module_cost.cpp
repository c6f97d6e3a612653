// module_cost: what sites in shared objects cost. Three measurements (bench/README.md):
//
//   BM_Site/object:{0,1}/variant:{0,1}  one op at a site of the program (0) or of a module (1),
//                                       inline (0) or call (1) variant: ns per op;
//   BM_Load/sites:{10,1000}             Engine::load_module() of a module with that many sites
//                                       (dlopen, checking and patching them): the difference
//                                       over 990 sites is the patching cost per site;
//   BM_Switch/modules:{0,10}            a stopless switch of the op's group with no module or
//                                       ten modules of 100 sites each loaded: its time from call
//                                       to commit, and the writing (blackout).
//
// The modules are built from module_cost_module.cpp; the program exports the engine's symbols
// for them (ENABLE_EXPORTS).
#include <dlfcn.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "bench/module_cost_ops.h"
#include "bench/stats.h"
#include "repatch/engine.h"

MODULE_COST_DEFINE_OPS();

extern "C" __attribute__((noipa)) void module_cost_program_loop(std::uint8_t* p, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) {
    module_cost_store(p);
    asm volatile("" ::: "memory");
  }
}

namespace repatch::bench {
namespace {

using Clock = std::chrono::steady_clock;
using Loop = void (*)(std::uint8_t*, std::int64_t);

std::string module_path(const std::string& name) {
  return std::string(MODULE_COST_MODULE_DIR) + "/libmodule_cost_" + name + ".so";
}

void* load_or_die(const std::string& name) {
  Result<void*> handle = Engine::get()->load_module(module_path(name));
  if (!handle.ok()) {
    std::fprintf(stderr, "module_cost: %s\n", handle.error().to_string().c_str());
    std::exit(1);
  }
  return handle.value();
}

bool switch_to(const char* variant, SwitchOutcome* outcome = nullptr) {
  const SwitchOutcome r =
      Engine::get()->switch_groups({{"module_cost", variant}}, {.writer = SwitchWriter::kStopless});
  if (outcome != nullptr) *outcome = r;
  return r.committed();
}

void BM_Site(benchmark::State& state) {
  static void* site_module = load_or_die("site");
  const bool in_module = state.range(0) == 1;
  const Loop loop = in_module
                        ? reinterpret_cast<Loop>(dlsym(site_module, "module_cost_module_loop"))
                        : &module_cost_program_loop;
  if (!switch_to(state.range(1) == 0 ? "inline" : "call")) {
    state.SkipWithError("the switch did not commit");
    return;
  }
  std::uint8_t byte = 1;
  constexpr std::int64_t kOps = 1000;
  for (auto _ : state) {
    loop(&byte, kOps);
  }
  state.counters["ns_per_op"] =
      benchmark::Counter(static_cast<double>(state.iterations()) * static_cast<double>(kOps),
                         benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}
BENCHMARK(BM_Site)->ArgNames({"object", "variant"})->ArgsProduct({{0, 1}, {0, 1}});

void report_sample(benchmark::State& state, const std::string& name, std::vector<double> us) {
  state.counters[name + "_p50_us"] = median(us);
  state.counters[name + "_p99_us"] = percentile(std::move(us), 0.99);
}

void BM_Load(benchmark::State& state) {
  const std::string name = "load_" + std::to_string(state.range(0));
  std::vector<double> us;
  us.reserve(static_cast<std::size_t>(state.max_iterations));
  for (auto _ : state) {
    const auto start = Clock::now();
    void* handle = load_or_die(name);
    const auto loaded = Clock::now();
    dlclose(handle);
    const double seconds = std::chrono::duration<double>(loaded - start).count();
    state.SetIterationTime(seconds);
    us.push_back(seconds * 1e6);
  }
  report_sample(state, "load", std::move(us));
}
BENCHMARK(BM_Load)->ArgName("sites")->Arg(10)->Arg(1000)->UseManualTime()->Iterations(200);

void BM_Switch(benchmark::State& state) {
  std::vector<void*> modules;
  modules.reserve(static_cast<std::size_t>(state.range(0)));
  for (int m = 0; m < state.range(0); ++m)
    modules.push_back(load_or_die("m" + std::to_string(m)));
  std::vector<double> elapsed_us;
  std::vector<double> blackout_us;
  elapsed_us.reserve(static_cast<std::size_t>(state.max_iterations));
  blackout_us.reserve(static_cast<std::size_t>(state.max_iterations));
  std::size_t sites = 0;
  bool forward = true;
  for (auto _ : state) {
    SwitchOutcome r;
    if (!switch_to(forward ? "call" : "inline", &r)) {
      state.SkipWithError("the switch did not commit");
      break;
    }
    forward = !forward;
    const double seconds = std::chrono::duration<double>(r.elapsed).count();
    state.SetIterationTime(seconds);
    elapsed_us.push_back(seconds * 1e6);
    blackout_us.push_back(std::chrono::duration<double, std::micro>(r.blackout).count());
    sites = r.sites;
  }
  for (void* handle : modules)
    dlclose(handle);
  state.counters["sites"] = static_cast<double>(sites);
  report_sample(state, "switch", std::move(elapsed_us));
  report_sample(state, "blackout", std::move(blackout_us));
}
BENCHMARK(BM_Switch)->ArgName("modules")->Arg(0)->Arg(10)->UseManualTime()->Iterations(400);

void print_summary(std::FILE* /*out*/) {}

}  // namespace
}  // namespace repatch::bench

int main(int argc, char** argv) {
  // Before any thread: boot rewrites code other threads could be running.
  repatch::Result<repatch::Engine*> engine =
      repatch::boot({.initial = {{"module_cost", "inline"}}});
  if (!engine.ok()) {
    std::fprintf(stderr, "module_cost: %s\n", engine.error().to_string().c_str());
    return 1;
  }
  return repatch::bench::run_benchmarks(argc, argv, &repatch::bench::print_summary);
}
