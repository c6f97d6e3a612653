#include "trigger/pressure.h"

#include <string>

#include "trigger/text_fields.h"

namespace repatch::triggers {
namespace {

Error bad_line(std::size_t number, std::string_view line, const std::string& what) {
  return Error(ErrorCode::kInvalidArgument, "/proc/pressure/cpu line " + std::to_string(number) +
                                                " ('" + text::excerpt(line) + "'): " + what);
}

Result<PressureLine> parse_line(std::size_t number, std::string_view line,
                                const std::vector<std::string_view>& w) {
  PressureLine out;
  bool seen[4] = {};
  constexpr std::string_view kKeys[4] = {"avg10", "avg60", "avg300", "total"};
  for (std::size_t i = 1; i < w.size(); ++i) {
    const std::size_t eq = w[i].find('=');
    if (eq == std::string_view::npos) return bad_line(number, line, "a field without '='");
    const std::string_view key = w[i].substr(0, eq);
    const std::string_view value = w[i].substr(eq + 1);
    std::size_t k = 0;
    while (k < 4 && kKeys[k] != key)
      ++k;
    if (k == 4) return bad_line(number, line, "unknown field '" + text::excerpt(key) + "'");
    if (seen[k]) return bad_line(number, line, "field '" + std::string(key) + "' twice");
    seen[k] = true;
    if (k == 3) {
      const auto total = text::parse_u64(value);
      if (!total) return bad_line(number, line, "total is not a whole number");
      out.total_us = *total;
      continue;
    }
    const auto share = text::parse_double(value);
    if (!share || *share < 0 || *share > 100) {
      return bad_line(number, line, std::string(key) + " is not a share between 0 and 100");
    }
    (k == 0 ? out.avg10 : k == 1 ? out.avg60 : out.avg300) = *share;
  }
  for (std::size_t k = 0; k < 4; ++k) {
    if (!seen[k]) return bad_line(number, line, "field '" + std::string(kKeys[k]) + "' missing");
  }
  return out;
}

}  // namespace

Result<CpuPressure> parse_cpu_pressure(std::string_view contents) {
  CpuPressure out;
  bool have_some = false;
  const std::vector<std::string_view> lines = text::lines(contents);
  for (std::size_t i = 0; i < lines.size(); ++i) {
    const std::vector<std::string_view> w = text::words(lines[i]);
    if (w.empty()) continue;
    const bool some = w[0] == "some";
    if (!some && w[0] != "full") return bad_line(i + 1, lines[i], "not a 'some' or 'full' line");
    if (some ? have_some : out.full.has_value()) {
      return bad_line(i + 1, lines[i], "a second '" + std::string(w[0]) + "' line");
    }
    Result<PressureLine> line = parse_line(i + 1, lines[i], w);
    if (!line.ok()) return line.error();
    if (some) {
      out.some = line.value();
      have_some = true;
    } else {
      out.full = line.value();
    }
  }
  if (!have_some) {
    return Error(ErrorCode::kInvalidArgument, "/proc/pressure/cpu has no 'some' line");
  }
  return out;
}

}  // namespace repatch::triggers
