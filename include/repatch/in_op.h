// Marking an op body as in flight, so that a switch never rewrites a group under it (DESIGN H7).
//
// A vCPU interrupted inside the body of a call variant (spinning in a lock's slow path, say)
// would return to old code after its group switched. Op bodies that can run for a while, or that
// keep state in the group's encoding, open an `OpInFlight` first thing:
//
//   void pv_lock_slowpath(Lock* lock) {
//     repatch::OpInFlight in_op(repatch_group_spinlock);
//     ...
//   }
//
// While one is open on a vCPU, a stop-machine switch of that group finds the vCPU busy and
// retries later, and a stopless switch waits for it to close (or, past its in-op deadline, takes
// its fence back and retries). The mark is the analogue of the kernel's preempt_count: one byte
// per vCPU and group, written only by its own vCPU.
//
// A thread can pass a site just before a switch fences it and open the mark only once the switch
// has looked: its body then runs the old variant's code while the group switches, or after. A
// body whose variant keeps state outside the group's GroupState (or reads state a conversion
// changes) asks variant_current() right after opening the mark, and where it says no, does only
// what is correct in both encodings, or returns to its site to be dispatched again:
//
//   void pv_shootdown(Request* request) {
//     repatch::OpInFlight in_op(repatch_group_tlb);
//     if (!in_op.variant_current(kPvVariant)) return native_shootdown(request);
//     ...
//   }
//
// Bodies whose every step is checked against the state's encoding (the spinlock's compare-and-
// swaps of a tagged word) need no such question.
#ifndef REPATCH_IN_OP_H_
#define REPATCH_IN_OP_H_

#include <atomic>
#include <cstdint>

#include "repatch/op.h"

namespace repatch {

class OpInFlight {
 public:
  /// Marks the calling vCPU as inside an op of `group` until destruction. Nests, up to 255 deep
  /// per group and vCPU (the depth is one byte). Does nothing on
  /// a thread that is not a vCPU, before boot(), and for groups beyond the first 32 the catalog
  /// lists (the depth table is that wide). Async-signal-safe; NMI handlers may use it.
  explicit OpInFlight(const abi::GroupDesc& group) noexcept;
  ~OpInFlight();

  /// Whether `variant` (an index into the group's variants) is the group's variant with no switch
  /// of the group running, as read once, right after the mark was opened: a switch that did not
  /// see the mark had announced itself by then (engine/group_phase.h). True before boot and for
  /// groups beyond the first 32, where nothing is known (no stopless switch handles those).
  /// Async-signal-safe.
  bool variant_current(int variant) const noexcept {
    return phase_ == kPhaseUnknown || phase_ == variant;
  }
  OpInFlight(const OpInFlight&) = delete;
  OpInFlight& operator=(const OpInFlight&) = delete;

 private:
  // The group's phase word as read after the mark: its variant, with bit 0x80 while a switch
  // runs; kPhaseUnknown where there is none.
  static constexpr int kPhaseUnknown = -1;
  std::atomic<std::uint8_t>* depth_;
  int phase_;
};

}  // namespace repatch

#endif  // REPATCH_IN_OP_H_
