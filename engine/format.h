// Small text helpers for messages and reports (std::format is not in the Debian 12 compiler).
#ifndef REPATCH_ENGINE_FORMAT_H_
#define REPATCH_ENGINE_FORMAT_H_

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace repatch::engine {

/// "0x7f12ab00".
std::string hex(std::uintptr_t value);

/// "2e 2e ff 15 10 00 00 00".
std::string hex_bytes(std::span<const std::uint8_t> bytes);

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

}  // namespace repatch::engine

#endif  // REPATCH_ENGINE_FORMAT_H_
