#include "engine/switch_protocol.h"

#include "base/test_hooks.h"
#include "sync/sync_cores.h"

namespace repatch::engine {

void Executor::serialise() noexcept {
  sync::sync_cores();
}

namespace {
void serialise_and_beat(Transaction& attempt, Executor& executor) noexcept {
  executor.serialise();
  if (executor.primary()) attempt.beat();
}
}  // namespace

Direction run_switch_protocol(Transaction& attempt, Executor& executor) noexcept {
  const bool primary = executor.primary();
  Direction direction = attempt.direction();
  if (direction == Direction::kUndecided) {
    // First step. An executor that finds the attempt undecided fences every site itself before it
    // decides: tails must never be written to a site another executor could still run. The
    // primary may be anywhere in its own fence (this may be an NMI on top of it); the
    // compare-and-swaps make the overlap harmless.
    attempt.fence(primary);
    // Second step: after it, a thread that reaches any site of the attempt traps, and an op body
    // entered before the fence has its in-op mark visible to the scan below (the fence's locked
    // writes and the membarrier order it), or reads the announced phase (group_phase.h).
    serialise_and_beat(attempt, executor);
    if (primary) test::inject(test::Point::kFenced, static_cast<std::uint32_t>(attempt.size()));
    // Third step. The state check comes last: it walks every live object of the groups.
    const bool quiescent =
        test::disabled(test::Handler::kQuiescenceCheck) || executor.quiescent(attempt);
    bool forward = false;
    if (attempt.direction() == Direction::kUndecided) {
      forward = quiescent && attempt.states_convertible();
    }
    direction = attempt.decide(forward ? Direction::kForward : Direction::kBackward);
  }
  if (direction == Direction::kForward) {
    // Fourth step: the state first, while every site still traps. Whoever decided may not have
    // converted yet (it may be the primary, interrupted by this NMI): converting is idempotent.
    attempt.convert_states();
    // Fifth to eighth steps: the bytes after the first, then the first bytes.
    attempt.write_tails(primary);
    serialise_and_beat(attempt, executor);
    attempt.write_heads(primary);
    serialise_and_beat(attempt, executor);
    if (primary) test::inject(test::Point::kWritten, static_cast<std::uint32_t>(attempt.size()));
  } else {
    // Backward fourth and fifth steps. An executor that fenced above while another was taking the
    // fence back may have left an INT3 behind; this pass removes its own, as every executor's
    // does.
    attempt.unfence();
    serialise_and_beat(attempt, executor);
  }
  return direction;
}

}  // namespace repatch::engine
