// Test hooks: switching a hazard handler off, and deterministic injection points.
//
// Every hazard handler of the switch (DESIGN H1-H11) has a name here. A hazard test proves its
// handler only if the same test fails with the handler off, so builds with REPATCH_TEST_HOOKS
// read REPATCH_TEST_DISABLE=<name>[,<name>...] once, before main(), and the engine asks
// `disabled()` at each handler. Builds without REPATCH_TEST_HOOKS compile every check to false and
// have no injection points. Only the library and command built for the tests (repatch_hooked,
// repatch-hooked) define it; what is installed never does (tests/no_test_hooks.sh checks).
//
// Injection points let a test act at an exact step of the protocol (stop the primary after the
// fence, send an NMI to the primary between two writes), so that each hazard is reproducible.
#ifndef REPATCH_BASE_TEST_HOOKS_H_
#define REPATCH_BASE_TEST_HOOKS_H_

#include <cstdint>

namespace repatch::test {

enum class Handler : std::uint8_t {
  kStop,             ///< "stop": stop-machine parks the other vCPUs while sites are written (H1)
  kInt3Completion,   ///< "int3_completion": a trap at a fenced site finishes the writes (H5)
  kInt3Rewind,       ///< "int3_rewind": the trap resumes at the site start, not after the int3 (H2)
  kNmiCompletion,    ///< "nmi_completion": the same, inside an NMI handler (H4)
  kQuiescenceCheck,  ///< "quiescence_check": vCPUs inside an op of the groups abort the attempt
                     ///< (H7)
  kAckTimeout,       ///< "ack_timeout": the primary stops waiting for acknowledgements (H3)
  kOnlineGate,       ///< "online_gate": a vCPU coming online waits for the stop to end (H8)
  kWxAlias,          ///< "wx_alias": writes go through the rw- alias, never an rwx mapping (H11)
  kTlbDrain,         ///< "tlb_drain": pv to native drains flush-on-resume marks (H10)
  kLockConvert,      ///< "lock_convert": live locks are converted to the new encoding (H6)
  kSleeperWake,      ///< "sleeper_wake": converting a pv lock wakes its sleeping waiters (H6)
  kStateCheck,       ///< "state_check": a lock that cannot be converted refuses the switch (H6)
  kInOpDeadline,     ///< "in_op_deadline": the stopless writer stops waiting for a vCPU inside
                     ///< an op after SwitchOptions::in_op_deadline (H3)
  kThreadMarks,      ///< "thread_marks": threads that are not vCPUs keep in-op marks too, which
                     ///< the switch reads (H7 for threads the program never registered)
  kModuleWait,       ///< "module_wait": an object loaded after boot waits for a switch in
                     ///< progress before it takes its groups' variants (H1 for modules)
  kModuleGrace,      ///< "module_grace": an object unloaded waits for an RCU grace period before
                     ///< its table is freed (a #BP lookup never reads a freed entry)
  kCount,
};

#ifdef REPATCH_TEST_HOOKS
/// "stop", "int3_completion", ... as REPATCH_TEST_DISABLE spells them.
const char* handler_name(Handler handler);

/// Whether REPATCH_TEST_DISABLE named `handler`. Async-signal-safe (one relaxed load).
bool disabled(Handler handler) noexcept;
#else
constexpr bool disabled(Handler) noexcept {
  return false;
}
#endif

/// Points at which a test may act. In a switch, the primary calls the hook with the point and the
/// number of sites it has written in the current step so far; at the guest's points the second
/// argument says what the point's comment says.
enum class Point : std::uint8_t {
  kStopped,     ///< every vCPU parked (stop-machine) or writing begins (batch); nothing written yet
  kFenceWrite,  ///< after each INT3 written by the primary
  kFenced,      ///< every first byte is INT3, before the direction is decided
  kTailWrite,   ///< after the tail of each site
  kHeadWrite,   ///< after each first byte
  kWritten,     ///< every site holds its new image, vCPUs not yet released
  kObjectLookup,  ///< any thread, inside an object lookup's RCU read-side section (sites_done: 0)
  /// The guest's TLB (guest/tlb_cpu.cpp): a thread posting a flush request is midway through
  /// merging its range into the target's mailbox, before it takes its ticket; the argument is the
  /// target vCPU. Called by the posting thread, in normal context.
  kTlbRangeMerge,
};

/// Runs on the primary (inside the stop) or, at kObjectLookup and the guest's points, on the
/// thread the point names (kObjectLookup: any thread looking up, maybe in a signal handler): must
/// be async-signal-safe and must not allocate.
using InjectionHook = void (*)(Point point, std::uint32_t sites_done, void* arg) noexcept;

#ifdef REPATCH_TEST_HOOKS
/// Installs `hook` (nullptr removes it). Call while no switch runs.
void set_injection(InjectionHook hook, void* arg);
/// Called by the engine at each point.
void inject(Point point, std::uint32_t sites_done) noexcept;
#else
inline void inject(Point, std::uint32_t) noexcept {}
#endif

}  // namespace repatch::test

#endif  // REPATCH_BASE_TEST_HOOKS_H_
