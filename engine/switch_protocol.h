// The switch protocol: the one step sequence that every executor of an attempt runs.
//
// An attempt (engine/transaction.h) is planned in normal context, then published for the #BP
// handler. From then on, whoever executes it runs these steps, in this order:
//
//   first step:   fence     - each site's first byte goes from its old value to INT3 (the primary
//                             announced the switch to op bodies before it published the attempt:
//                             group_phase.h);
//   second step:  serialise - every CPU that may run a site stops running its old bytes;
//   third step:   decide    - one compare-and-swap of the attempt's direction: forward when nobody
//                             is inside an op of the groups (quiescence, established the executor's
//                             way) and every group's state can be converted, else backward. The
//                             first executor to decide wins; everyone follows;
//   forward:
//   fourth step:  convert   - every group's state goes to the new encoding (GroupState::convert);
//   fifth step:   tails     - every byte after the first gets its new value;
//   sixth step:   serialise;
//   seventh step: heads     - every first byte goes from INT3 to its new value;
//   eighth step:  serialise;
//   backward:
//   fourth step:  unfence   - each first byte goes from INT3 back to its old value;
//   fifth step:   serialise;
//   ninth step:   release   - the primary settles the groups' phase words and, under stop-machine,
//                             lets the parked vCPUs go (they serialise on the way out).
//
// Steps one to eight are run_switch_protocol(); the ninth is the writer's (only the primary
// releases). Every write is idempotent and safe to replay late (engine/transaction.h says why), so
// any executor can run any step at any time: the primary, an NMI handler that interrupted it
// between two writes, a vCPU that hit the fence. None of them ever waits for another CPU that may
// be the one it interrupted. The writers and executors differ only in the two questions an
// Executor answers: how to serialise, and how to know nobody is inside an op of the groups.
//
//   executor            serialise     quiescence
//   stop-machine        membarrier    every target parked and checked itself; NMIs begun before
//                                     the fence waited out; then every thread's in-op marks
//   batch               membarrier    none needed: the variants are interchangeable
//   stopless primary    membarrier    every thread's in-op marks, waited for up to a deadline
//   #BP executor        membarrier    as its attempt's writer, but never waits from inside an op
//                                     or an NMI handler (it decides at once instead)
//
// A thread that traps outside an op and an NMI handler runs the steps only when the primary has
// stalled (Transaction::primary_at_work()); while the primary is at work it runs its site again.
//
// docs/switch-protocol.md has the reasoning and the model (model/switch.pml) that checks it.
#ifndef REPATCH_ENGINE_SWITCH_PROTOCOL_H_
#define REPATCH_ENGINE_SWITCH_PROTOCOL_H_

#include "engine/transaction.h"

namespace repatch::engine {

/// One executor's answers to the protocol's two questions. Implementations must be
/// async-signal-safe and must not allocate: they run inside a stop and in signal handlers.
class Executor {
 public:
  virtual ~Executor() = default;
  /// The second, sixth, eighth and (backward) fifth steps. Membarrier SYNC_CORE by default.
  virtual void serialise() noexcept;
  /// The question of the third step, asked after the fence and its serialise: whether nobody is
  /// inside an op of the attempt's groups. May wait, but returns once the attempt is decided by
  /// someone else (its answer is then not used).
  virtual bool quiescent(Transaction& attempt) noexcept = 0;
  /// Whether this is the attempt's primary: its writes reach the test injection points.
  virtual bool primary() const noexcept { return false; }
};

/// Runs steps one to eight of `attempt` for `executor`, from wherever the attempt stands (an
/// executor that finds the direction decided skips to the steps of that direction). Returns the
/// direction. Async-signal-safe when the executor is.
Direction run_switch_protocol(Transaction& attempt, Executor& executor) noexcept;

}  // namespace repatch::engine

#endif  // REPATCH_ENGINE_SWITCH_PROTOCOL_H_
