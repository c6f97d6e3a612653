#include "stress/violations.h"

#include "base/fixed_line.h"

namespace repatch::stress {

const char* violation_name(Violation kind) {
  switch (kind) {
    case Violation::kMutualExclusion:
      return "mutual_exclusion";
    case Violation::kLostUpdate:
      return "lost_update";
    case Violation::kStaleTlbRead:
      return "stale_tlb_read";
    case Violation::kMixedVariant:
      return "mixed_variant";
    case Violation::kStateEncoding:
      return "state_encoding";
    case Violation::kWrongResult:
      return "wrong_result";
    case Violation::kLeftoverState:
      return "leftover_state";
    case Violation::kStuck:
      return "stuck";
    case Violation::kModuleLoad:
      return "module_load";
    case Violation::kCount:
      break;
  }
  return "?";
}

void ViolationLog::record(Violation kind, const char* what) noexcept {
  counts_[static_cast<std::size_t>(kind)].fetch_add(1, std::memory_order_relaxed);
  const std::size_t line = claimed_.fetch_add(1, std::memory_order_relaxed);
  if (line >= kKeptLines) return;
  kinds_[line] = kind;
  text::FixedLine(text_[line], kLineSize).text(what);
  // Pairs with the acquire in lines(): the text is complete before the line counts as written.
  ready_[line].store(true, std::memory_order_release);
}

std::uint64_t ViolationLog::count(Violation kind) const {
  return counts_[static_cast<std::size_t>(kind)].load(std::memory_order_relaxed);
}

std::uint64_t ViolationLog::total() const {
  std::uint64_t sum = 0;
  for (const auto& c : counts_)
    sum += c.load(std::memory_order_relaxed);
  return sum;
}

std::vector<std::string> ViolationLog::lines() const {
  std::vector<std::string> out;
  for (std::size_t i = 0; i < kKeptLines; ++i) {
    if (!ready_[i].load(std::memory_order_acquire)) continue;
    out.push_back(std::string(violation_name(kinds_[i])) + ": " + text_[i]);
  }
  return out;
}

}  // namespace repatch::stress
