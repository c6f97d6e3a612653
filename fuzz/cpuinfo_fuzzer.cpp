// /proc/cpuinfo text: parse_cpuinfo_microcode never crashes; every revision it returns is
// "0x" followed by lower-case hex digits.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "trigger/microcode_text.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const auto revisions = repatch::triggers::parse_cpuinfo_microcode(text);
  if (!revisions.ok()) {
    if (revisions.error().message().empty()) std::abort();
    return 0;
  }
  for (const std::string& r : revisions.value()) {
    if (r.size() < 3 || r.compare(0, 2, "0x") != 0) std::abort();
    if (r.find_first_not_of("0123456789abcdef", 2) != std::string::npos) std::abort();
  }
  return 0;
}
