// What an op body reads to know whether the variant it runs is still its group's: one word per
// tracked group, holding the group's variant and a "switching" bit.
//
// A thread can pass a site before the INT3 fence and reach its op body's OpInFlight mark only
// later: the switch's in-op scan did not see it, and the body runs the old variant's code. The word
// tells it so, as a Dekker pair with the scan:
//
//   switch primary                           op body (OpInFlight)
//   announce: word |= switching  (seq_cst)   mark: depth[g] += 1         (seq_cst)
//   fence, serialise                         read the word               (seq_cst)
//   scan every thread's depth[g] (seq_cst)
//
// Either the scan sees the mark (and the switch waits for the body, or takes its fence back), or
// the body sees the switching bit. Once the switch has ended, the word holds the new variant, so a
// body that marks even later sees that its variant is gone. A body that finds its variant not
// current keeps to what is correct in both encodings, or returns to its site (repatch/in_op.h).
//
// Only the switch primary writes the words (one switch at a time, under the engine's switch
// mutex), so a late INT3 or NMI executor can never leave a stale switching bit behind.
#ifndef REPATCH_ENGINE_GROUP_PHASE_H_
#define REPATCH_ENGINE_GROUP_PHASE_H_

#include <atomic>
#include <cstdint>

#include "engine/catalog.h"
#include "repatch/in_op.h"

namespace repatch::engine {

/// The bit set in a group's phase word while a switch of it has announced itself and not ended.
inline constexpr std::uint8_t kPhaseSwitching = 0x80;

/// Group `g`'s phase word: its variant (the default variant's index 0 while unpatched), plus
/// kPhaseSwitching while a switch of it runs. `g` below abi::kMaxTrackedGroups. Async-signal-safe.
/// The words are repatch::detail::g_group_phase, which OpInFlight reads inline.
inline std::uint8_t group_phase(GroupIndex g) noexcept {
  // seq_cst: the body's half of the Dekker pair above, after its seq_cst mark.
  return repatch::detail::g_group_phase[g].load(std::memory_order_seq_cst);
}

/// Sets group `g`'s word to `variant` with no switch running (boot, and the end of a switch).
/// The switch primary and boot only.
void settle_group_phase(GroupIndex g, VariantIndex variant) noexcept;

/// Adds kPhaseSwitching to group `g`'s word. The switch primary only, before its fence.
void announce_group_switch(GroupIndex g) noexcept;

}  // namespace repatch::engine

#endif  // REPATCH_ENGINE_GROUP_PHASE_H_
