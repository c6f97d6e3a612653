// What the benchmark programs share: percentiles of a sample, the reading of their own options,
// and a main() that runs the registered benchmarks and then prints the program's own summary.
#ifndef REPATCH_BENCH_STATS_H_
#define REPATCH_BENCH_STATS_H_

#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstddef>
#include <cstdio>
#include <optional>
#include <string_view>
#include <vector>

#include "trigger/text_fields.h"

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

/// The value of `program`'s option `--<name>=<value>` (`option` is `--<name>=<value>` whole):
/// a positive number of seconds. nullopt, after saying why on stderr, for anything else.
inline std::optional<double> positive_seconds(const char* program, std::string_view option) {
  const std::size_t eq = option.find('=');
  const std::string_view name = option.substr(0, eq);
  const std::string_view value = eq == std::string_view::npos ? "" : option.substr(eq + 1);
  const std::optional<double> seconds = triggers::text::parse_double(value);
  if (!seconds || !(*seconds > 0)) {
    std::fprintf(stderr, "%s: %.*s must be a positive number of seconds, got '%.*s'\n", program,
                 static_cast<int>(name.size()), name.data(), static_cast<int>(value.size()),
                 value.data());
    return std::nullopt;
  }
  return seconds;
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
