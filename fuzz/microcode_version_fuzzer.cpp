// sysfs microcode/version text: parse_microcode_version never crashes, and what it accepts reads
// back to the same revision.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "trigger/microcode_text.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const auto revision = repatch::triggers::parse_microcode_version(text);
  if (!revision.ok()) return 0;
  const auto again = repatch::triggers::parse_microcode_version(revision.value());
  if (!again.ok() || again.value() != revision.value()) std::abort();
  return 0;
}
