#include "engine/group_phase.h"

namespace repatch {
namespace detail {
std::atomic<std::uint8_t> g_group_phase[abi::kMaxTrackedGroups]{};
}  // namespace detail

namespace engine {

void settle_group_phase(GroupIndex g, VariantIndex variant) noexcept {
  // seq_cst: a body that marks after this store and reads the word sees the new variant, so a
  // late old-variant body knows it is late (see the header).
  repatch::detail::g_group_phase[g].store(variant == kIndirect ? 0 : variant,
                                          std::memory_order_seq_cst);
}

void announce_group_switch(GroupIndex g) noexcept {
  // seq_cst: the primary's half of the Dekker pair, ordered before its fence and in-op scan.
  repatch::detail::g_group_phase[g].fetch_or(kPhaseSwitching, std::memory_order_seq_cst);
}

}  // namespace engine
}  // namespace repatch
