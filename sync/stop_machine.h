// stop_machine(): run work on one thread while every other online vCPU is parked.
//
// The protocol, as a state machine with named states (see docs/switch-protocol.md for why):
//
//   kIdle -> kStopping -> kStopped -> (kSync)* -> kRelease -> kIdle
//                 \-> kAbort -> kIdle          (a vCPU did not acknowledge in time, or was busy)
//
//   kStopping: the primary (the calling thread) publishes it for a new generation, reads the set
//              of online vCPUs and sends each an IPI; each vCPU, in its IPI handler, asks the work
//              whether it is quiescent (its interrupted context), acknowledges, and waits: a short
//              spin, then a futex sleep (no spin at all when there are more vCPUs than CPUs), so
//              that oversubscription costs no scheduler ticks (H9);
//   kStopped:  every target acknowledged quiescent; the primary runs the work (for a switch, the
//              steps of engine/switch_protocol.h), which may call sync_all(): every parked vCPU
//              runs sync_core and acknowledges (kSync);
//   kRelease:  every parked vCPU serialises and returns to what it was doing.
//
// These are the states of the stop, not steps of the switch protocol, which has its own numbering.
// A target that has not acknowledged by the deadline (its IPI blocked: H3) or that reports busy
// (an op in flight: H7) turns the attempt into kAbort before the work runs, so nothing is written.
// vCPUs that come online meanwhile wait at the online gate until kIdle, then serialise (H8).
#ifndef REPATCH_SYNC_STOP_MACHINE_H_
#define REPATCH_SYNC_STOP_MACHINE_H_

#include <chrono>
#include <cstdint>

#include "sync/vcpu.h"

namespace repatch::sync {

enum class StopState : std::uint8_t {
  kIdle,
  kStopping,  ///< IPIs sent; waiting for every target to acknowledge
  kStopped,   ///< every target parked and quiescent; the work runs
  kSync,      ///< the work asked every parked vCPU to serialise
  kRelease,   ///< done; parked vCPUs serialise and return
  kAbort,     ///< gave up before the work ran; parked vCPUs return
};

/// "idle", "stopping", ...
const char* stop_state_name(StopState state);

class StopContext;
struct StopOptions;
struct StopResult;

/// What a stop runs. Implemented by the layer above (the engine's transaction).
class StopWork {
 public:
  virtual ~StopWork() = default;
  /// On each target vCPU, in its IPI handler, before it acknowledges: 0 when the vCPU may stay
  /// parked while the work runs, or a nonzero reason code (the work's own numbering) when it may
  /// not. `ucontext` is the interrupted context. Must be async-signal-safe.
  virtual int check_parked(VcpuId self, const void* ucontext) noexcept = 0;
  /// On the primary, with every target parked: 0, or a nonzero reason to report. Must not
  /// allocate (the parked vCPUs may hold the allocator's locks). noexcept: nothing could unwind
  /// the protocol, and parked vCPUs would wait for ever.
  virtual int run(StopContext& context) noexcept = 0;
};

/// Handed to StopWork::run.
class StopContext {
 public:
  /// Makes every parked vCPU run sync_core and waits until each has (the primary serialises too).
  /// Returns false if a parked vCPU did not acknowledge within the deadline.
  bool sync_all();

 private:
  friend StopResult stop_machine(class StopWork& work, const StopOptions& options);
  StopContext() = default;
};

struct StopOptions {
  /// How long the primary waits for any one round of acknowledgements.
  std::chrono::nanoseconds ack_deadline = std::chrono::milliseconds(100);
  /// Pause-loop iterations a parked vCPU spins before it sleeps on the futex, when every target
  /// and the primary have a CPU each; with more of them than usable CPUs they sleep at once.
  std::uint32_t spin_before_sleep = 2000;
  /// False: spin for spin_before_sleep even when oversubscribed (only to measure what the
  /// back-off saves, as bench/stop_blackout does).
  bool sleep_when_oversubscribed = true;
};

enum class StopOutcome : std::uint8_t {
  kDone,        ///< the work ran; its result is in `work_result`
  kAckTimeout,  ///< a target did not acknowledge in time; the work did not run
  kBusy,        ///< a target reported busy; the work did not run
  kNotAllowed,  ///< called from a signal handler, or while another stop runs on this thread
};

struct StopResult {
  StopOutcome outcome = StopOutcome::kDone;
  int work_result = 0;         ///< StopWork::run's return (kDone), or the busy reason (kBusy)
  VcpuId culprit = kMaxVcpus;  ///< the vCPU that timed out or was busy; kMaxVcpus if none
  /// kAckTimeout: the errno with which the IPI to the culprit could not be sent (EAGAIN: the
  /// user's queue of real-time signals is full), or 0 when it was sent.
  int culprit_send_error = 0;
  std::uint32_t targets = 0;  ///< vCPUs stopped (or asked to stop)
  /// From the first IPI to the last vCPU released (or aborted).
  std::chrono::nanoseconds blackout{0};
};

/// Runs `work` with every other online vCPU parked. One stop at a time in the process: a second
/// caller waits for the first (in normal context: a mutex). The caller may be a vCPU or not; the
/// IPI signal is blocked on it while it runs the stop, NMIs are not. Must not be called from a
/// signal handler.
StopResult stop_machine(StopWork& work, const StopOptions& options = {});

/// The current state (for the online gate, tests and the #BP handler). Async-signal-safe.
StopState stop_state();

}  // namespace repatch::sync

#endif  // REPATCH_SYNC_STOP_MACHINE_H_
