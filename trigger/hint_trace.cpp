#include "trigger/hint_trace.h"

#include <cmath>
#include <cstdio>
#include <limits>
#include <string>

#include "trigger/text_fields.h"

namespace repatch::triggers {
namespace {

// Up to ~31 years of milliseconds: far beyond any recording, and the nanoseconds fit in 63 bits.
constexpr double kMaxTimeMs = 1e12;

Error bad_line(std::size_t number, const std::string& what) {
  return Error(ErrorCode::kInvalidArgument,
               "hint trace line " + std::to_string(number) + ": " + what);
}

// Applies `key=value` to `r`; returns what is wrong, or "" when it is fine.
std::string apply_field(std::string_view key, std::string_view value, HintReading& r) {
  auto percent = [&](std::optional<double>& field) -> std::string {
    const auto v = text::parse_double(value);
    if (!v || *v < 0 || *v > 100) return std::string(key) + " is a percentage from 0 to 100";
    field = *v;
    return "";
  };
  auto count32 = [&](std::optional<std::uint32_t>& field) -> std::string {
    const auto v = text::parse_u64(value);
    if (!v || *v > std::numeric_limits<std::uint32_t>::max()) {
      return std::string(key) + " is a whole number below 2^32";
    }
    field = static_cast<std::uint32_t>(*v);
    return "";
  };
  if (key == "steal") return percent(r.steal_percent);
  if (key == "max_steal") return percent(r.max_cpu_steal_percent);
  if (key == "psi") return percent(r.psi_some_avg10);
  if (key == "runnable") return count32(r.runnable);
  if (key == "cpus") return count32(r.allowed_cpus);
  if (key == "preemptions") {
    const auto v = text::parse_u64(value);
    if (!v) return "preemptions is a whole number";
    r.preemptions = *v;
    return "";
  }
  if (key == "realtime") {
    if (value != "0" && value != "1") return "realtime is 0 or 1";
    r.realtime_hint = value == "1";
    return "";
  }
  return "unknown key '" + text::excerpt(key) +
         "' (known: steal, max_steal, psi, runnable, cpus, preemptions, realtime)";
}

}  // namespace

Result<std::vector<HintReading>> parse_hint_trace(std::string_view contents) {
  if (contents.size() > kMaxTraceBytes) {
    return Error(ErrorCode::kInvalidArgument,
                 "hint trace of " + std::to_string(contents.size()) + " bytes: more than the " +
                     std::to_string(kMaxTraceBytes) + " a trace may have");
  }
  if (contents.find('\0') != std::string_view::npos) {
    return Error(ErrorCode::kInvalidArgument,
                 "hint trace holds a NUL byte: a binary file, not a trace");
  }
  std::vector<HintReading> out;
  const std::vector<std::string_view> lines = text::lines(contents);
  for (std::size_t i = 0; i < lines.size(); ++i) {
    std::string_view line = lines[i];
    if (const std::size_t hash = line.find('#'); hash != std::string_view::npos) {
      line = line.substr(0, hash);
    }
    const std::vector<std::string_view> w = text::words(line);
    if (w.empty()) continue;
    const auto ms = text::parse_double(w[0]);
    if (!ms || *ms < 0 || *ms > kMaxTimeMs) {
      return bad_line(i + 1, "'" + text::excerpt(w[0]) +
                                 "' is not a time (milliseconds from the start, 0 to 1e12)");
    }
    HintReading r;
    r.time = std::chrono::nanoseconds(static_cast<std::int64_t>(std::llround(*ms * 1e6)));
    if (!out.empty() && r.time < out.back().time) {
      return bad_line(i + 1,
                      "time goes backwards (" + text::excerpt(w[0]) + " ms after a later one)");
    }
    std::vector<std::string_view> seen;
    for (std::size_t f = 1; f < w.size(); ++f) {
      const std::size_t eq = w[f].find('=');
      if (eq == std::string_view::npos || eq == 0) {
        return bad_line(i + 1, "'" + text::excerpt(w[f]) + "' is not key=value");
      }
      const std::string_view key = w[f].substr(0, eq);
      for (std::string_view k : seen) {
        if (k == key) return bad_line(i + 1, "key '" + std::string(key) + "' twice");
      }
      seen.push_back(key);
      if (std::string what = apply_field(key, w[f].substr(eq + 1), r); !what.empty()) {
        return bad_line(i + 1, what);
      }
    }
    out.push_back(std::move(r));
  }
  return out;
}

std::string format_trace_line(const HintReading& r, std::chrono::nanoseconds origin) {
  std::string out;
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "%.3f",
                static_cast<double>((r.time - origin).count()) / 1e6);
  out += buffer;
  auto percent = [&](const char* key, const std::optional<double>& v) {
    if (!v) return;
    std::snprintf(buffer, sizeof buffer, " %s=%.2f", key, *v);
    out += buffer;
  };
  auto count = [&](const char* key, std::optional<std::uint64_t> v) {
    if (!v) return;
    out += ' ';
    out += key;
    out += '=';
    out += std::to_string(*v);
  };
  percent("steal", r.steal_percent);
  percent("max_steal", r.max_cpu_steal_percent);
  percent("psi", r.psi_some_avg10);
  count("runnable", r.runnable);
  count("cpus", r.allowed_cpus);
  count("preemptions", r.preemptions);
  out += r.realtime_hint ? " realtime=1" : " realtime=0";
  return out;
}

}  // namespace repatch::triggers
