// Small text helpers for messages and reports, shared by every layer (std::format is not in the
// Debian 12 compiler).
#ifndef REPATCH_BASE_TEXT_H_
#define REPATCH_BASE_TEXT_H_

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace repatch::text {

/// "0x7f12ab00".
std::string hex(std::uintptr_t value);

/// "2e 2e ff 15 10 00 00 00"; after `max_shown` bytes, " ..." stands for the rest.
std::string hex_bytes(std::span<const std::uint8_t> bytes, std::size_t max_shown = SIZE_MAX);

/// The items, each in single quotes, separated by ", ": "'native', 'pv'".
template <typename Range>
std::string quoted_list(const Range& items) {
  std::string out;
  for (const auto& item : items) {
    if (!out.empty()) out += ", ";
    out += '\'';
    out += std::string_view(item);
    out += '\'';
  }
  return out;
}

}  // namespace repatch::text

#endif  // REPATCH_BASE_TEXT_H_
