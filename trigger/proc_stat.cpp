#include "trigger/proc_stat.h"

#include <algorithm>
#include <limits>
#include <string>

#include "trigger/text_fields.h"

namespace repatch::triggers {
namespace {

constexpr std::size_t kStealColumn = 7;   // user nice system idle iowait irq softirq *steal*
constexpr std::size_t kTotalColumns = 8;  // guest and guest_nice are already in user and nice

Error bad_line(std::size_t number, std::string_view line, const std::string& what) {
  return Error(ErrorCode::kInvalidArgument, "/proc/stat line " + std::to_string(number) + " ('" +
                                                text::excerpt(line) + "'): " + what);
}

}  // namespace

Result<ProcStat> parse_proc_stat(std::string_view contents) {
  ProcStat stat;
  bool have_all = false;
  const std::vector<std::string_view> lines = text::lines(contents);
  for (std::size_t i = 0; i < lines.size(); ++i) {
    const std::vector<std::string_view> w = text::words(lines[i]);
    if (w.empty()) continue;
    if (w[0] == "procs_running") {
      if (w.size() != 2) return bad_line(i + 1, lines[i], "procs_running wants one number");
      const auto n = text::parse_u64(w[1]);
      if (!n || *n > std::numeric_limits<std::uint32_t>::max()) {
        return bad_line(i + 1, lines[i], "procs_running is not a whole number");
      }
      stat.procs_running = static_cast<std::uint32_t>(*n);
      continue;
    }
    if (!w[0].starts_with("cpu")) continue;
    CpuTimes times;
    const std::string_view suffix = w[0].substr(3);
    if (!suffix.empty()) {
      const auto n = text::parse_u64(suffix);
      if (!n || *n > 1u << 20) return bad_line(i + 1, lines[i], "not a CPU name");
      times.cpu = static_cast<int>(*n);
    }
    if (w.size() < 5) return bad_line(i + 1, lines[i], "a cpu line has at least 4 columns");
    for (std::size_t column = 0; column + 1 < w.size(); ++column) {
      const auto value = text::parse_u64(w[column + 1]);
      if (!value) {
        return bad_line(i + 1, lines[i],
                        "column " + std::to_string(column + 1) + " is not a whole number");
      }
      if (column < kTotalColumns) {
        if (times.total > std::numeric_limits<std::uint64_t>::max() - *value) {
          return bad_line(i + 1, lines[i], "the columns add up past 2^64");
        }
        times.total += *value;
      }
      if (column == kStealColumn) times.steal = *value;
    }
    if (times.cpu < 0) {
      if (have_all) return bad_line(i + 1, lines[i], "a second 'cpu' line");
      stat.all = times;
      have_all = true;
    } else {
      for (const CpuTimes& earlier : stat.cpus) {
        if (earlier.cpu == times.cpu) return bad_line(i + 1, lines[i], "this CPU appears twice");
      }
      stat.cpus.push_back(times);
    }
  }
  if (!have_all) {
    return Error(ErrorCode::kInvalidArgument,
                 "/proc/stat has no 'cpu' line (is this the file of a Linux kernel?)");
  }
  return stat;
}

namespace {

std::optional<double> share(const CpuTimes& before, const CpuTimes& after) {
  if (!before.steal || !after.steal) return std::nullopt;
  if (after.total <= before.total || *after.steal < *before.steal) return std::nullopt;
  const double elapsed = static_cast<double>(after.total - before.total);
  const double stolen = static_cast<double>(*after.steal - *before.steal);
  return std::min(100.0, 100.0 * stolen / elapsed);
}

}  // namespace

std::optional<StealShare> steal_between(const ProcStat& before, const ProcStat& after) {
  const std::optional<double> all = share(before.all, after.all);
  if (!all) return std::nullopt;
  // Starts at the average: the kernel rounds each line to ticks on its own, so the per-CPU
  // shares may all come out a little below the average they must bound.
  StealShare out{.all_percent = *all, .max_cpu_percent = *all};
  for (const CpuTimes& now : after.cpus) {
    for (const CpuTimes& then : before.cpus) {
      if (then.cpu != now.cpu) continue;
      if (const std::optional<double> s = share(then, now)) {
        out.max_cpu_percent = std::max(out.max_cpu_percent, *s);
      }
    }
  }
  return out;
}

}  // namespace repatch::triggers
