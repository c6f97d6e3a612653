// What the benchmark programs share: percentiles of a sample, and a main() that runs the
// registered benchmarks and then prints the program's own summary.
#ifndef REPATCH_BENCH_STATS_H_
#define REPATCH_BENCH_STATS_H_

#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstddef>
#include <cstdio>
#include <string_view>
#include <vector>

namespace repatch::bench {

/// The `q` quantile (0..1) of an already sorted sample, by linear interpolation between closest
/// ranks; 0 for an empty sample.
inline double percentile_of_sorted(const std::vector<double>& sorted, double q) {
  if (sorted.empty()) return 0.0;
  const double rank = q * static_cast<double>(sorted.size() - 1);
  const auto lo = static_cast<std::size_t>(rank);
  const std::size_t hi = std::min(lo + 1, sorted.size() - 1);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - static_cast<double>(lo));
}

/// The same for a sample in any order.
inline double percentile(std::vector<double> sample, double q) {
  std::sort(sample.begin(), sample.end());
  return percentile_of_sorted(sample, q);
}

inline double median(std::vector<double> sample) {
  return percentile(std::move(sample), 0.5);
}

/// Runs the benchmarks selected by the command line, then `print_summary` to stdout, or to
/// stderr when another --benchmark_format owns stdout. Returns main()'s exit status.
inline int run_benchmarks(int argc, char** argv, void (*print_summary)(std::FILE*)) {
  bool console = true;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg.starts_with("--benchmark_format=") && arg != "--benchmark_format=console") {
      console = false;
    }
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  std::fflush(stdout);
  print_summary(console ? stdout : stderr);
  benchmark::Shutdown();
  return 0;
}

}  // namespace repatch::bench

#endif  // REPATCH_BENCH_STATS_H_
