// Hint traces: parse_hint_trace never crashes on truncated or garbage text, and every reading it
// accepts, formatted as a trace line, parses again.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "trigger/hint_trace.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const auto readings = repatch::triggers::parse_hint_trace(text);
  if (!readings.ok()) {
    if (readings.error().message().empty()) std::abort();
    return 0;
  }
  std::string formatted;
  for (const repatch::triggers::HintReading& r : readings.value()) {
    formatted += repatch::triggers::format_trace_line(r, std::chrono::nanoseconds(0));
    formatted += '\n';
  }
  const auto again = repatch::triggers::parse_hint_trace(formatted);
  if (!again.ok() || again.value().size() != readings.value().size()) std::abort();
  return 0;
}
