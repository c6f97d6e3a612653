#include "trigger/microcode_text.h"

#include <cstdio>

#include "trigger/text_fields.h"

namespace repatch::triggers {
namespace {

std::string revision_text(std::uint64_t value) {
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "0x%llx", static_cast<unsigned long long>(value));
  return buffer;
}

Error bad_line(std::size_t number, std::string_view line, const std::string& what) {
  return Error(ErrorCode::kInvalidArgument, "/proc/cpuinfo line " + std::to_string(number) + " ('" +
                                                text::excerpt(line) + "'): " + what);
}

}  // namespace

Result<std::vector<std::string>> parse_cpuinfo_microcode(std::string_view contents) {
  // Per block: its revision, or "" when it has no microcode line.
  std::vector<std::string> blocks;
  bool in_block = false;
  const std::vector<std::string_view> lines = text::lines(contents);
  for (std::size_t i = 0; i < lines.size(); ++i) {
    const std::string_view line = lines[i];
    if (text::trim(line).empty()) {
      in_block = false;  // a blank line ends a processor block
      continue;
    }
    const std::size_t colon = line.find(':');
    if (colon == std::string_view::npos) continue;
    const std::string_view key = text::trim(line.substr(0, colon));
    const std::string_view value = text::trim(line.substr(colon + 1));
    if (key == "processor") {
      blocks.emplace_back();
      in_block = true;
      continue;
    }
    if (key != "microcode") continue;
    if (!in_block) return bad_line(i + 1, line, "a microcode line outside a processor block");
    if (!blocks.back().empty()) return bad_line(i + 1, line, "a second microcode line");
    const auto revision = text::parse_hex_u64(value);
    if (!revision) return bad_line(i + 1, line, "the microcode revision is not a hex number");
    blocks.back() = revision_text(*revision);
  }
  std::size_t with = 0;
  for (const std::string& b : blocks)
    with += b.empty() ? 0 : 1;
  if (with == 0) return std::vector<std::string>{};
  if (with != blocks.size()) {
    return Error(ErrorCode::kInvalidArgument,
                 "/proc/cpuinfo: " + std::to_string(blocks.size() - with) + " of " +
                     std::to_string(blocks.size()) + " processors have no microcode line");
  }
  return blocks;
}

Result<std::string> parse_microcode_version(std::string_view contents) {
  const auto revision = text::parse_hex_u64(
      text::trim(contents.ends_with('\n') ? contents.substr(0, contents.size() - 1) : contents));
  if (!revision) {
    return Error(
        ErrorCode::kInvalidArgument,
        "microcode/version holds '" + text::excerpt(contents) + "', not one hexadecimal revision");
  }
  return revision_text(*revision);
}

}  // namespace repatch::triggers
