#include "base/text.h"

#include <algorithm>

namespace repatch::text {

std::string hex(std::uintptr_t value) {
  static constexpr char kDigits[] = "0123456789abcdef";
  char buffer[2 + 16];
  int n = 0;
  do {
    buffer[sizeof(buffer) - 1 - n++] = kDigits[value & 0xf];
    value >>= 4;
  } while (value != 0);
  return "0x" + std::string(buffer + sizeof(buffer) - n, n);
}

std::string hex_bytes(std::span<const std::uint8_t> bytes, std::size_t max_shown) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  const std::size_t shown = std::min(bytes.size(), max_shown);
  for (std::size_t i = 0; i < shown; ++i) {
    if (!out.empty()) out += ' ';
    out += kDigits[bytes[i] >> 4];
    out += kDigits[bytes[i] & 0xf];
  }
  if (shown < bytes.size()) out += " ...";
  return out;
}

}  // namespace repatch::text
