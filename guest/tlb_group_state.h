// The tlb group's state across a switch: the flush-on-resume marks (DESIGN H10).
//
// The paravirt shootdown does not wait for a preempted target; it leaves a mark that the paravirt
// on-resume hook honours. The native on-resume hook knows nothing of marks (a native kernel has no
// such protocol), so a switch from pv to native that left a mark behind would let that vCPU resume
// and translate with the TLB the shootdown was meant to empty. convert() drains every mark before
// the new code is written: it empties each marked vCPU's TLB from the executor's thread (bumping
// the vCPU's TLB epoch, which needs nothing from the vCPU) and clears the mark. From native to pv
// there is nothing to convert: native leaves no marks.
//
// Register it before the first switch of the group:
//   engine->set_group_state("tlb", &repatch::tlb::group_state());
#ifndef REPATCH_GUEST_TLB_GROUP_STATE_H_
#define REPATCH_GUEST_TLB_GROUP_STATE_H_

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "repatch/group_state.h"

namespace repatch::tlb {

class TlbGroupState final : public GroupState {
 public:
  /// True unless a vCPU's mark holds a value that is neither "none" nor "flush on resume" (memory
  /// corruption: nothing can say what it owes); `why` then names the vCPU and the value.
  /// Async-signal-safe.
  bool can_convert(int from, int to, char* why, std::size_t size) noexcept override;

  /// pv -> native: drains every flush-on-resume mark (flushes that vCPU's TLB, then clears the
  /// mark, by compare-and-swap, so a second executor finds nothing to do). Otherwise nothing.
  /// Async-signal-safe.
  void convert(int from, int to) noexcept override;

  /// Marks drained since the process started (statistics).
  std::uint64_t drained() const { return drained_.load(std::memory_order_relaxed); }

 private:
  std::atomic<std::uint64_t> drained_{0};
};

/// The one instance, for Engine::set_group_state.
TlbGroupState& group_state();

}  // namespace repatch::tlb

#endif  // REPATCH_GUEST_TLB_GROUP_STATE_H_
