// /proc/pressure/cpu text: parse_cpu_pressure never crashes and never accepts a share outside
// 0-100.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "trigger/pressure.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const auto psi = repatch::triggers::parse_cpu_pressure(text);
  if (!psi.ok()) {
    if (psi.error().message().empty()) std::abort();
    return 0;
  }
  const double avg10 = psi.value().some.avg10;
  if (!(avg10 >= 0 && avg10 <= 100)) std::abort();
  return 0;
}
