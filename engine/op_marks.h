// Every thread's in-op marks: the table a switch reads to know who is inside an op of a group.
//
// OpInFlight (repatch/in_op.h) counts an op body in the calling thread's marks: a byte per tracked
// group. A thread gets its marks on its first op, from a fixed table of kMaxOpThreads rows, and
// gives them back when it exits. vCPUs and threads the program never registered are alike here: a
// switch's quiescence scan (find_thread_in_op) walks every row that was ever claimed, so an op body
// on any thread holds the switch, as it must (a worker thread running a lock's slow path in the
// old encoding is as dangerous as a vCPU doing it).
//
// Rows are claimed by compare-and-swap of the owner's kernel thread id and never move, so the scan
// needs no lock and may run in a signal handler. A thread that claims in normal context gives its
// row back at exit (a pthread key's destructor). One that claims inside a signal handler cannot
// register that destructor (pthread_setspecific is not async-signal-safe); its row is taken back by
// a later claim once its thread is gone. With every row held by a live thread, further threads
// share one overflow row: still correct (its depths count all of them), though a report can then
// not name which of them held a switch.
#ifndef REPATCH_ENGINE_OP_MARKS_H_
#define REPATCH_ENGINE_OP_MARKS_H_

#include <cstdint>
#include <string>

#include "repatch/error.h"
#include "repatch/in_op.h"

namespace repatch::engine {

/// Rows of the marks table, the overflow row aside.
inline constexpr std::uint32_t kMaxOpThreads = 1024;

/// A row of the table: an index below kMaxOpThreads, kOverflowOpThread, or kNoOpThread.
using OpThread = std::uint32_t;
inline constexpr OpThread kOverflowOpThread = kMaxOpThreads;
inline constexpr OpThread kNoOpThread = 0xffffffffu;

/// Prepares thread exit to give rows back. Boot calls it, in normal context, before any op is
/// tracked. Fails with kSystem when no pthread key is left.
Status prepare_op_marks();

/// The first row with an op of a group in `group_bits` (bit g for tracked group g) open, or
/// kNoOpThread. seq_cst loads: the switch's half of group_phase.h's Dekker pair, after its fence.
/// Async-signal-safe.
OpThread find_thread_in_op(std::uint32_t group_bits) noexcept;

/// Whether the calling thread has an op of a group in `group_bits` open. Async-signal-safe.
bool this_thread_in_op(std::uint32_t group_bits) noexcept;

/// "vCPU 3", "thread 1234 (not a vCPU)" or the overflow row's description, for messages. Normal
/// context.
std::string describe_op_thread(OpThread row);

}  // namespace repatch::engine

#endif  // REPATCH_ENGINE_OP_MARKS_H_
