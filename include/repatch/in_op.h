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
// While one is open on a thread, a stop-machine switch of that group finds the thread busy and
// retries later, and a stopless switch waits for it to close (or, past its in-op deadline, takes
// its fence back and retries). The mark is the analogue of the kernel's preempt_count: one byte
// per thread and group, written only by its own thread. Every thread has one, vCPU or not: a
// thread the program never registered (a library's worker, say) is seen by a switch as a vCPU is
// (docs/threads.md).
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

namespace detail {

/// One thread's in-op depths, a byte per tracked group (engine/op_marks.h keeps the table).
struct ThreadOpMarks {
  std::atomic<std::uint8_t> depth[abi::kMaxTrackedGroups];
};

/// The calling thread's marks, or nullptr until its first op of a tracked group.
extern __thread ThreadOpMarks* t_op_marks;

/// The slow path of a thread's first op: gives the thread marks of its own (or, with more threads
/// than the table holds, marks shared by the rest) and sets t_op_marks. Never fails, never
/// allocates; async-signal-safe.
ThreadOpMarks* claim_op_marks() noexcept;

/// Per tracked group: its variant, plus 0x80 while a switch of it runs (engine/group_phase.h).
extern std::atomic<std::uint8_t> g_group_phase[abi::kMaxTrackedGroups];

}  // namespace detail

class OpInFlight {
 public:
  /// Marks the calling thread as inside an op of `group` until destruction. Nests, up to 255 deep
  /// per group and thread (the depth is one byte). Does nothing before boot() and for groups
  /// beyond the first abi::kMaxTrackedGroups the catalog lists. Entry is a load, an increment and
  /// a load, plus a table claim on a thread's first op. Async-signal-safe; NMI handlers may use it.
  explicit OpInFlight(const abi::GroupDesc& group) noexcept {
    // Acquire: pairs with boot's release store, made once the group's phase word is settled.
    const std::uint8_t g = group.runtime->tracked_index.load(std::memory_order_acquire);
    if (g == abi::kUntrackedGroup) return;
    detail::ThreadOpMarks* marks = detail::t_op_marks;
    if (marks == nullptr) [[unlikely]] {
      marks = detail::claim_op_marks();
    }
    depth_ = &marks->depth[g];
    // seq_cst (a locked add): the op's later loads and its sites cannot be reached before the
    // mark is visible to a switch primary that scans after its fence (engine/op_marks.h), and the
    // phase word is read after it: the body's half of engine/group_phase.h's Dekker pair.
    depth_->fetch_add(1, std::memory_order_seq_cst);
    phase_ = detail::g_group_phase[g].load(std::memory_order_seq_cst);
  }
  ~OpInFlight() {
    // Release: the op's effects are visible to whoever sees the depth drop.
    if (depth_ != nullptr) depth_->fetch_sub(1, std::memory_order_release);
  }

  /// Whether `variant` (an index into the group's variants) is the group's variant with no switch
  /// of the group running, as read once, right after the mark was opened: a switch that did not
  /// see the mark had announced itself by then (engine/group_phase.h). True before boot and for
  /// untracked groups, where nothing is known (no stopless switch handles those).
  /// Async-signal-safe.
  bool variant_current(int variant) const noexcept {
    return phase_ == kPhaseUnknown || phase_ == variant;
  }
  /// Whether a switch of the group was running when the mark was opened (read once, as
  /// variant_current()). A body that runs several sites of its group, and can give way, closes
  /// its mark and tries again later when this says so: a thread inside an op that reaches a site
  /// the switch has fenced makes the switch take its fence back, so threads that keep entering
  /// ops of the group at full speed can hold a switch off until its deadline. False before boot
  /// and for untracked groups. Async-signal-safe.
  bool switch_running() const noexcept {
    return phase_ != kPhaseUnknown && (phase_ & kPhaseSwitchingBit) != 0;
  }
  OpInFlight(const OpInFlight&) = delete;
  OpInFlight& operator=(const OpInFlight&) = delete;

 private:
  // The group's phase word as read after the mark: its variant, with bit 0x80 while a switch
  // runs; kPhaseUnknown where there is none.
  static constexpr int kPhaseUnknown = -1;
  static constexpr int kPhaseSwitchingBit = 0x80;  // engine/group_phase.h, kPhaseSwitching
  std::atomic<std::uint8_t>* depth_ = nullptr;
  int phase_ = kPhaseUnknown;
};

}  // namespace repatch

#endif  // REPATCH_IN_OP_H_
