#include "engine/format.h"

namespace repatch::engine {

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

std::string hex_bytes(std::span<const std::uint8_t> bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  for (std::uint8_t b : bytes) {
    if (!out.empty()) out += ' ';
    out += kDigits[b >> 4];
    out += kDigits[b & 0xf];
  }
  return out;
}

}  // namespace repatch::engine
