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
// retries later. The mark is the analogue of the kernel's preempt_count: one byte per vCPU and
// group, written only by its own vCPU.
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
  OpInFlight(const OpInFlight&) = delete;
  OpInFlight& operator=(const OpInFlight&) = delete;

 private:
  std::atomic<std::uint8_t>* depth_;
};

}  // namespace repatch

#endif  // REPATCH_IN_OP_H_
