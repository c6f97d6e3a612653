#include "sync/stop_machine.h"

#include <linux/futex.h>
#include <sched.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <mutex>

#include "arch/x86/sync_core.h"
#include "base/context.h"
#include "base/test_hooks.h"

namespace repatch::sync {
namespace {

// The control word packs the state (low 8 bits) with a round number (high 24 bits) that grows by
// one at every state the primary publishes, so that a waiter always sees a change, and so that an
// acknowledgement names the round it answers.
constexpr std::uint32_t kStateMask = 0xff;
constexpr std::uint32_t kRoundShift = 8;
constexpr std::uint32_t kRoundMask = 0xffffff;

StopState state_of(std::uint32_t word) {
  return static_cast<StopState>(word & kStateMask);
}
std::uint32_t round_of(std::uint32_t word) {
  return word >> kRoundShift;
}

long futex(std::atomic<std::uint32_t>* word, int op, std::uint32_t value, const timespec* timeout) {
  return syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(word), op, value, timeout, nullptr, 0);
}

void futex_wake_all(std::atomic<std::uint32_t>* word) {
  futex(word, FUTEX_WAKE_PRIVATE, INT_MAX, nullptr);
}

timespec to_timespec(std::chrono::nanoseconds ns) {
  const auto count = ns.count() < 0 ? 0 : ns.count();
  return {static_cast<time_t>(count / 1'000'000'000), static_cast<long>(count % 1'000'000'000)};
}

// Everything a stop shares between the primary and the parked vCPUs. Process-wide: one stop at a
// time (g_primary_mutex).
struct Control {
  /// State and round; the futex the parked vCPUs sleep on. Written only by the primary.
  std::atomic<std::uint32_t> word{0};
  /// Bumped by every acknowledgement; the futex the primary sleeps on while it waits for a round.
  std::atomic<std::uint32_t> ack_epoch{0};
  /// Which vCPUs this stop targets. Set before the first IPI, cleared after the last release.
  std::atomic<bool> targeted[kMaxVcpus]{};
  /// Per vCPU, the last round it acknowledged: written by the vCPU in its IPI handler, read by the
  /// primary. Indexed by VcpuId and kept across stops; a newly claimed slot's goes back to 0
  /// (forget_last_ack), a round never used, so that the previous owner's last acknowledgement
  /// cannot be taken for the new owner's.
  std::atomic<std::uint32_t> last_ack[kMaxVcpus]{};
  /// The first busy report of this stop.
  std::atomic<int> busy_reason{0};
  std::atomic<VcpuId> busy_vcpu{0};
  std::atomic<StopWork*> work{nullptr};
  std::atomic<std::uint32_t> spin_before_sleep{0};
  /// Handlers between their first look at the word and their return. The primary publishes kIdle
  /// (and lets the caller free the work) only once this is zero, so that no handler outlives the
  /// stop it saw (a late handler would otherwise read a freed work, or return without sync_core).
  std::atomic<std::uint32_t> handlers_inside{0};
  /// Primary only: what send_ipi returned for each target of this stop.
  int send_error[kMaxVcpus] = {};
  /// Primary only: the round in which the targets parked, and how long a round may take.
  std::uint32_t stopping_round = 0;
  std::chrono::nanoseconds ack_deadline{0};
};

Control g_control;

// CPUs this process may run on, read once (normal context; the affinity of a running guest is
// not expected to change under it).
std::uint32_t usable_cpus() {
  static const std::uint32_t count = [] {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) != 0) return 1u;
    return static_cast<std::uint32_t>(CPU_COUNT(&set));
  }();
  return count;
}
std::mutex g_primary_mutex;
thread_local bool t_in_stop = false;

// ---- the parked side (signal context: async-signal-safe only) ---------------------------------

void acknowledge(VcpuId self, std::uint32_t round) {
  // Release pairs with the primary's acquire load of last_ack in StopMachine::all_acknowledged:
  // what this vCPU did for the round (its sync_core, its busy report) is visible with the ack.
  g_control.last_ack[self].store(round, std::memory_order_release);
  g_control.ack_epoch.fetch_add(1, std::memory_order_release);
  futex(&g_control.ack_epoch, FUTEX_WAKE_PRIVATE, 1, nullptr);
}

// Waits until the control word differs from `seen`: a short pause loop, then futex sleeps.
std::uint32_t wait_for_change(std::uint32_t seen) {
  const std::uint32_t spins = g_control.spin_before_sleep.load(std::memory_order_relaxed);
  for (std::uint32_t i = 0; i < spins; ++i) {
    // Acquire pairs with the primary's release store of the word: what the primary wrote before
    // publishing a state (the code it patched) is visible once the state is.
    const std::uint32_t now = g_control.word.load(std::memory_order_acquire);
    if (now != seen) return now;
    __builtin_ia32_pause();
  }
  for (;;) {
    const std::uint32_t now = g_control.word.load(std::memory_order_acquire);
    if (now != seen) return now;
    futex(&g_control.word, FUTEX_WAIT_PRIVATE, seen, nullptr);
  }
}

// Counts a handler in for its whole run; the last one out wakes the primary.
class HandlerInside {
 public:
  HandlerInside() { g_control.handlers_inside.fetch_add(1, std::memory_order_seq_cst); }
  ~HandlerInside() {
    // Release: everything this handler did happens before the primary's acquire load sees zero.
    if (g_control.handlers_inside.fetch_sub(1, std::memory_order_release) == 1) {
      futex(&g_control.handlers_inside, FUTEX_WAKE_PRIVATE, 1, nullptr);
    }
  }
  HandlerInside(const HandlerInside&) = delete;
  HandlerInside& operator=(const HandlerInside&) = delete;
};

void on_ipi(VcpuId self, void* ucontext) {
  const HandlerInside inside;
  std::uint32_t word = g_control.word.load(std::memory_order_acquire);
  // A stale IPI (from an aborted stop, or for a vCPU that came online after the targets were
  // chosen and now waits at the online gate) must not join: the primary does not wait for it.
  if (state_of(word) != StopState::kStopping ||
      !g_control.targeted[self].load(std::memory_order_acquire) ||
      g_control.last_ack[self].load(std::memory_order_relaxed) == round_of(word)) {
    return;
  }
  StopWork* work = g_control.work.load(std::memory_order_acquire);
  if (const int reason = work->check_parked(self, ucontext); reason != 0) {
    int expected = 0;
    if (g_control.busy_reason.compare_exchange_strong(expected, reason,
                                                      std::memory_order_relaxed)) {
      g_control.busy_vcpu.store(self, std::memory_order_relaxed);
    }
  }
  acknowledge(self, round_of(word));
  for (;;) {
    word = wait_for_change(word);
    switch (state_of(word)) {
      case StopState::kStopped:
        break;  // the work is running; keep waiting
      case StopState::kSync:
        x86::sync_core();
        acknowledge(self, round_of(word));
        break;
      case StopState::kRelease:
      case StopState::kAbort:
      case StopState::kIdle:
      case StopState::kStopping:
        // Whatever ended our wait, the code may have changed under us: serialise before
        // returning to it. (kIdle and kStopping cannot be seen here: the primary waits for every
        // handler to leave before it publishes kIdle.)
        x86::sync_core();
        acknowledge(self, round_of(word));
        return;
    }
  }
}

// A vCPU coming online waits here, in normal context, while a stop runs, so that it never runs
// half-written code (H8). go_online() published `online` before calling this (see vcpu.h).
void online_gate(VcpuId) {
  if (test::disabled(test::Handler::kOnlineGate)) return;
  for (;;) {
    const std::uint32_t word = g_control.word.load(std::memory_order_seq_cst);
    if (state_of(word) == StopState::kIdle) return;
    futex(&g_control.word, FUTEX_WAIT_PRIVATE, word, nullptr);
  }
}

// A thread claiming a slot starts with no acknowledgement (see Control::last_ack). Relaxed, as
// the claim hook contract allows: the vCPU is published online after this.
void forget_last_ack(VcpuId self) {
  g_control.last_ack[self].store(0, std::memory_order_relaxed);
}

// Installed before main(), so before any vCPU exists (vcpu.h asks for that): a vCPU that came
// online during the first stop would otherwise miss the gate.
[[maybe_unused]] const bool g_hooks_installed = [] {
  set_ipi_handler(&on_ipi);
  set_online_gate(&online_gate);
  add_claim_hook(&forget_last_ack);
  return true;
}();

// ---- the primary side -------------------------------------------------------------------------

}  // namespace

struct StopMachine {
  // Publishes `state` for a new round and returns the round.
  static std::uint32_t publish(StopState state) {
    std::uint32_t round =
        (round_of(g_control.word.load(std::memory_order_relaxed)) + 1) & kRoundMask;
    // Round 0 is never used: it is what a newly claimed vCPU slot holds as its last ack.
    if (round == 0) round = 1;
    // seq_cst: a release for the parked vCPUs (their acquire loads in wait_for_change see the code
    // written before this point once they see the round), and for kStopping also ordered before
    // the primary reads the online flags (pairs with go_online(): store `online`, then load the
    // word, both seq_cst, so that a vCPU coming online is either targeted or waits at the gate).
    const std::uint32_t word = (round << kRoundShift) | static_cast<std::uint32_t>(state);
    g_control.word.store(word, std::memory_order_seq_cst);
    futex_wake_all(&g_control.word);
    return round;
  }

  // Whether every vCPU expected in `round` acknowledged it. In the stopping round that is every
  // target; later, every target that parked (acknowledged the stopping round or later). A target
  // still on its way in when the primary gave up is not waited for: it finds the stop over.
  static bool all_acknowledged(std::uint32_t round) {
    const std::uint32_t first = g_control.stopping_round;
    const bool stopping = round == first;
    for (VcpuId id = 0; id < slot_limit(); ++id) {
      if (!g_control.targeted[id].load(std::memory_order_relaxed)) continue;
      const std::uint32_t ack = g_control.last_ack[id].load(std::memory_order_acquire);
      // Rounds are 24-bit and wrap: compare distances from the stopping round, not values.
      const bool parked = ((ack - first) & kRoundMask) <= ((round - first) & kRoundMask);
      if (stopping && ack != round) {
        // A target that went offline or left since it was chosen runs no guest code: to come
        // back it must pass the online gate, which holds it until the stop is over.
        const bool gone = slot(id).tid.load(std::memory_order_seq_cst) == 0 ||
                          !slot(id).online.load(std::memory_order_seq_cst);
        if (!gone) return false;
      } else if (!stopping && parked && ack != round) {
        return false;
      }
    }
    return true;
  }

  // Waits until all_acknowledged(round), or the deadline passed.
  static bool wait_acks(std::uint32_t round, std::chrono::nanoseconds deadline) {
    // With the handler off (tests only) the primary waits as a naive rendezvous would: for ever.
    if (test::disabled(test::Handler::kAckTimeout)) deadline = std::chrono::hours(24 * 365);
    const auto until = std::chrono::steady_clock::now() + deadline;
    for (;;) {
      // Read the epoch first: an acknowledgement after the scan changes it, so the futex wait
      // below returns at once instead of sleeping through it.
      const std::uint32_t epoch = g_control.ack_epoch.load(std::memory_order_acquire);
      if (all_acknowledged(round)) return true;
      const auto left = until - std::chrono::steady_clock::now();
      if (left <= std::chrono::nanoseconds::zero()) return false;
      const timespec timeout = to_timespec(left);
      futex(&g_control.ack_epoch, FUTEX_WAIT_PRIVATE, epoch, &timeout);
    }
  }

  // The first target that has not acknowledged `round`, or kMaxVcpus.
  static VcpuId laggard(std::uint32_t round) {
    for (VcpuId id = 0; id < slot_limit(); ++id) {
      if (g_control.targeted[id].load(std::memory_order_relaxed) &&
          g_control.last_ack[id].load(std::memory_order_relaxed) != round) {
        return id;
      }
    }
    return kMaxVcpus;
  }

  // Waits until no handler of this stop is still running (see Control::handlers_inside).
  static void wait_handlers_out() {
    for (;;) {
      // Acquire pairs with the release in ~HandlerInside.
      const std::uint32_t inside = g_control.handlers_inside.load(std::memory_order_acquire);
      if (inside == 0) return;
      futex(&g_control.handlers_inside, FUTEX_WAIT_PRIVATE, inside, nullptr);
    }
  }
};

bool StopContext::sync_all() {
  const std::uint32_t round = StopMachine::publish(StopState::kSync);
  x86::sync_core();
  return StopMachine::wait_acks(round, g_control.ack_deadline);
}

StopResult stop_machine(StopWork& work, const StopOptions& options) {
  StopResult result;
  // A handler that interrupted this thread (an NMI on the primary, say) would wait for a mutex or
  // for acknowledgements that the thread it interrupted cannot give.
  if (t_in_stop || base::in_signal_handler()) {
    result.outcome = StopOutcome::kNotAllowed;
    return result;
  }
  // Set before the mutex: an NMI on this thread that tried to start a stop must be refused here,
  // not block on a mutex its own thread holds.
  t_in_stop = true;
  std::lock_guard<std::mutex> one_stop_at_a_time(g_primary_mutex);
  // The IPI stays blocked on the primary: it is the one thread that must not park. NMIs still
  // arrive, and may finish the work themselves (the work's steps are idempotent).
  IrqOffGuard irqs_off;
  g_control.work.store(&work, std::memory_order_release);
  g_control.busy_reason.store(0, std::memory_order_relaxed);
  g_control.ack_deadline = options.ack_deadline;

  // kStopping: publish it, then choose the targets among the online vCPUs, then
  // interrupt them. Publishing first pairs with go_online(), which stores `online` and then
  // reads the word (both seq_cst): either this loop sees the vCPU online and targets it, or the
  // vCPU sees kStopping and waits at the gate. Choosing first would let a vCPU come online
  // unseen and run guest code through the whole stop.
  const auto start = std::chrono::steady_clock::now();
  const std::uint32_t stopping = StopMachine::publish(StopState::kStopping);
  g_control.stopping_round = stopping;
  std::atomic_thread_fence(std::memory_order_seq_cst);
  const Vcpu* self = Vcpu::current();
  std::uint32_t targets = 0;
  const VcpuId limit = slot_limit();
  for (VcpuId id = 0; id < limit; ++id) {
    const bool target = (self == nullptr || id != self->id()) &&
                        slot(id).online.load(std::memory_order_seq_cst) &&
                        slot(id).tid.load(std::memory_order_seq_cst) != 0;
    // Release pairs with the handler's acquire load of `targeted`.
    g_control.targeted[id].store(target, std::memory_order_release);
    targets += target ? 1 : 0;
  }
  // Spinning pays only while the primary and every parked vCPU have a CPU each. Beyond that, a
  // vCPU spinning in its handler holds a CPU that a vCPU still on its way to acknowledge needs,
  // and every spin becomes scheduler latency (H9): then they sleep at once. Stored before the
  // first IPI; tgkill orders it before any handler's load.
  const bool oversubscribed = options.sleep_when_oversubscribed && targets + 1 > usable_cpus();
  g_control.spin_before_sleep.store(oversubscribed ? 0 : options.spin_before_sleep,
                                    std::memory_order_relaxed);
  for (VcpuId id = 0; id < limit; ++id) {
    if (!g_control.targeted[id].load(std::memory_order_relaxed)) continue;
    // A failed send (the thread left, or too many signals are queued) is not an excuse to stop
    // without this vCPU: it stays a target, and unless it left or went offline, the attempt
    // times out and aborts, reporting the send's error.
    g_control.send_error[id] = send_ipi(id);
  }
  result.targets = targets;

  // The targets acknowledge in their IPI handlers; here we wait for them.
  if (!StopMachine::wait_acks(stopping, options.ack_deadline)) {
    result.outcome = StopOutcome::kAckTimeout;
    result.culprit = StopMachine::laggard(stopping);
    if (result.culprit < kMaxVcpus)
      result.culprit_send_error = g_control.send_error[result.culprit];
  } else if (const int reason = g_control.busy_reason.load(std::memory_order_relaxed)) {
    result.outcome = StopOutcome::kBusy;
    result.work_result = reason;
    result.culprit = g_control.busy_vcpu.load(std::memory_order_relaxed);
  } else {
    // kStopped.
    StopMachine::publish(StopState::kStopped);
    StopContext context;
    result.work_result = work.run(context);
  }

  // kRelease (or the abort): every vCPU that parked acknowledges once more and returns. The
  // stop is over only when every handler that saw it has left, however long an NMI on top of one
  // keeps it.
  const std::uint32_t last = StopMachine::publish(
      result.outcome == StopOutcome::kDone ? StopState::kRelease : StopState::kAbort);
  StopMachine::wait_acks(last, options.ack_deadline);
  StopMachine::wait_handlers_out();
  result.blackout = std::chrono::steady_clock::now() - start;
  x86::sync_core();
  for (VcpuId id = 0; id < limit; ++id) {
    g_control.targeted[id].store(false, std::memory_order_relaxed);
  }
  StopMachine::publish(StopState::kIdle);
  g_control.work.store(nullptr, std::memory_order_release);
  t_in_stop = false;
  return result;
}

const char* stop_state_name(StopState state) {
  switch (state) {
    case StopState::kIdle:
      return "idle";
    case StopState::kStopping:
      return "stopping";
    case StopState::kStopped:
      return "stopped";
    case StopState::kSync:
      return "sync";
    case StopState::kRelease:
      return "release";
    case StopState::kAbort:
      return "abort";
  }
  return "unknown";
}

StopState stop_state() {
  return state_of(g_control.word.load(std::memory_order_acquire));
}

}  // namespace repatch::sync
