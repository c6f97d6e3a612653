// The spinlock word in its two encodings, what state a word is in, how a word maps from one
// encoding to the other (DESIGN H6), and the GroupState that converts every live lock during a
// switch of the `spinlock` group.
//
// One 64-bit word per lock. The upper half (bits 32-63, at byte offset 4) is also the pv futex
// word, so it carries everything a sleeper must wake for: the tag, the generation and `locked`.
//
//   bits 56-63  tag         0x4e ('N') native ticket encoding, 0x50 ('P') pv encoding; anything
//                           else (a zeroed or scribbled word) is corrupt
//   bits 40-55  generation  +1 on every conversion, so that a waiter that re-reads the word sees a
//                           conversion even after a round trip native -> pv -> native (ABA)
//   bits 32-39  flags       pv: bit 32 `locked`, bit 33 `kicked` (an unlock woke a sleeper that
//                           has not taken its count off yet: later unlocks need not kick again);
//                           every other bit must be 0 (native: all 0)
//   bits  0-31  native: head (bits 0-15, the ticket now served) and tail (bits 16-31, the next
//                       ticket); tail - head is the holder plus its spinning waiters
//               pv:     spinners (bits 0-15) and sleepers (bits 16-31): waiters counted in this
//                       encoding; a conversion drops them, since every waiter restarts
//
// The owner vCPU is kept beside the word (SpinLock::owner_), not in it: it is a hint for
// vcpu_is_preempted(), so it may lag, and a conversion keeps it by not touching it.
//
// A native unlock hands the lock over implicitly: its `incw` makes head the next waiter's ticket,
// and that waiter holds the lock from then on, before it has seen so. A conversion in between (the
// waiter parked by the stop after its last read of the word) maps the word to "held", and the
// waiter, seeing a new generation, must not restart as if it held nothing: nobody would ever
// release the lock. So a vCPU waiting for a ticket announces it (NativeWait, one per vCPU) before
// it takes it, and the conversion of a held native word grants the lock to the waiter whose
// announced ticket the word serves, before it writes the new word; a waiter that sees its word
// converted checks for the grant and, granted, holds the lock in the new encoding.
#ifndef REPATCH_GUEST_LOCK_STATE_H_
#define REPATCH_GUEST_LOCK_STATE_H_

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "repatch/error.h"
#include "repatch/group_state.h"

namespace repatch::guest {

class SpinLock;

/// Variant indices of the `spinlock` group (its order in REPATCH_DEFINE_GROUP).
inline constexpr int kNativeVariant = 0;
inline constexpr int kPvVariant = 1;

namespace word {

inline constexpr std::uint64_t kTagShift = 56;
inline constexpr std::uint64_t kTagNative = 0x4e;
inline constexpr std::uint64_t kTagPv = 0x50;
inline constexpr std::uint64_t kGenShift = 40;
inline constexpr std::uint64_t kGenMask = 0xffffull << kGenShift;
inline constexpr std::uint64_t kFlagsMask = 0xffull << 32;
inline constexpr std::uint64_t kPvLocked = 1ull << 32;
inline constexpr std::uint64_t kPvKicked = 1ull << 33;
inline constexpr std::uint64_t kLow16 = 0xffff;
inline constexpr std::uint64_t kTailShift = 16;  // native
inline constexpr std::uint64_t kTailOne = 1ull << kTailShift;
inline constexpr std::uint64_t kSpinnerOne = 1;  // pv
inline constexpr std::uint64_t kSleeperShift = 16;
inline constexpr std::uint64_t kSleeperOne = 1ull << kSleeperShift;

/// The tag of variant `variant` (kNativeVariant or kPvVariant).
constexpr std::uint64_t tag_of_variant(int variant) {
  return variant == kPvVariant ? kTagPv : kTagNative;
}
constexpr std::uint64_t tag(std::uint64_t w) {
  return w >> kTagShift;
}
constexpr std::uint64_t generation(std::uint64_t w) {
  return (w & kGenMask) >> kGenShift;
}
/// The part of a word that a conversion always changes: a waiter that saw `epoch(w)` when it
/// started waiting and sees another one now knows its count or ticket is gone.
constexpr std::uint64_t epoch(std::uint64_t w) {
  return w & ~((1ull << kGenShift) - 1);
}
constexpr std::uint64_t head(std::uint64_t w) {
  return w & kLow16;
}
constexpr std::uint64_t tail(std::uint64_t w) {
  return (w >> kTailShift) & kLow16;
}
constexpr std::uint64_t spinners(std::uint64_t w) {
  return w & kLow16;
}
constexpr std::uint64_t sleepers(std::uint64_t w) {
  return (w >> kSleeperShift) & kLow16;
}
constexpr std::uint64_t make(std::uint64_t tag_value, std::uint64_t gen, std::uint64_t rest) {
  return (tag_value << kTagShift) | ((gen << kGenShift) & kGenMask) | rest;
}
/// A native word: ticket `head` served, next ticket `tail`.
constexpr std::uint64_t native(std::uint64_t gen, std::uint64_t head_value,
                               std::uint64_t tail_value) {
  return make(kTagNative, gen, (head_value & kLow16) | ((tail_value & kLow16) << kTailShift));
}
/// A pv word.
constexpr std::uint64_t pv(std::uint64_t gen, bool locked, std::uint64_t spinner_count,
                           std::uint64_t sleeper_count) {
  return make(kTagPv, gen,
              (locked ? kPvLocked : 0) | (spinner_count & kLow16) |
                  ((sleeper_count & kLow16) << kSleeperShift));
}
/// An unlocked word of `variant`'s encoding.
constexpr std::uint64_t unlocked(int variant, std::uint64_t gen) {
  return variant == kPvVariant ? pv(gen, false, 0, 0) : native(gen, 0, 0);
}

}  // namespace word

/// A vCPU's announcement of the native ticket it waits for (see the top of this file). Written by
/// the vCPU (guest/spinlock.cpp) before each ticket compare-and-swap of a contended lock, cleared
/// when its native lock op returns; read, and granted, by convert_lock. Two per vCPU: one for its
/// normal context and one for its NMI handler, which may interrupt a wait of the first (NMIs do
/// not nest). An NMI handler may take a lock of the group that its own vCPU's normal context never
/// holds; one its vCPU may hold would deadlock, as it would in a kernel.
struct alignas(64) NativeWait {
  /// The lock waited for, or null.
  std::atomic<const SpinLock*> lock{nullptr};
  /// native_wait_value() of the word's epoch and the ticket, plus kNativeWaitGranted once a
  /// conversion has made this ticket the holder of the converted word.
  std::atomic<std::uint64_t> ticket{0};
};

inline constexpr std::uint64_t kNativeWaitGranted = 1ull << 32;

/// The announcement of ticket `ticket` in a native word whose epoch (word::epoch) is `epoch`.
constexpr std::uint64_t native_wait_value(std::uint64_t epoch, std::uint64_t ticket) {
  return epoch | (ticket & word::kLow16);
}

/// vCPU `id`'s announcement (id below sync::kMaxVcpus) for its normal context or, with `in_nmi`,
/// its NMI handler. Async-signal-safe.
NativeWait& native_wait(std::size_t id, bool in_nmi);

/// What a lock word says, in the encoding its tag names.
enum class LockState : std::uint8_t {
  kUnlocked,
  kHeld,
  kHeldWithSpinningWaiters,
  kHeldWithSleepingWaiters,  ///< pv only: some waiters sleep on the futex and need a kick
  kCorrupt,                  ///< no encoding gives it a meaning; never converted
};

/// "unlocked", "held", "held with spinning waiters", "held with sleeping waiters", "corrupt".
const char* lock_state_name(LockState state);

/// "native", "pv", or "unknown" for a tag that is neither.
const char* encoding_name(std::uint64_t word);

/// Classifies `w`. When the result is kCorrupt and `why` is not null, *why is set to a static
/// sentence saying what is impossible about it. Async-signal-safe.
LockState classify(std::uint64_t w, const char** why = nullptr);

/// Maps `w` to the encoding of variant `to`: unlocked stays unlocked, every held state becomes
/// held (waiters restart when they see the new tag and generation, so their tickets and counts
/// are dropped). A word already in `to`'s encoding maps to itself. Returns false, leaving *out
/// alone, for a corrupt word. Pure; async-signal-safe.
bool convert_word(std::uint64_t w, int to, std::uint64_t* out);

/// Converts one lock from variant `from`'s encoding to `to`'s: one compare-and-swap from the word
/// it read to the converted word, repeated only when a waiter changed the word in between (never
/// under a stop, where nobody runs). Before the compare-and-swap of a held native word, grants the
/// lock to the vCPU whose announced ticket (NativeWait) the word serves, if one still waits for it.
/// A lock already in `to`'s encoding, or corrupt, is left as it is. Wakes the lock's sleepers when
/// the old word had any (a native unlock never kicks: H6). Returns whether this call changed the
/// word. Async-signal-safe.
bool convert_lock(SpinLock& lock, int from, int to) noexcept;

/// The variant whose encoding new locks start in: the one the last conversion went to.
int current_encoding();

/// The spinlock group's GroupState: walks the lock registry (guest/lock_registry.h) under the
/// context rules of repatch::GroupState. One instance exists: spinlock_group_state().
class SpinlockGroupState final : public GroupState {
 public:
  /// Fails for the first live lock whose word is corrupt, with
  /// "lock 0x... 'name' is corrupt in native encoding (word 0x...): <why>". Every other state has
  /// an equivalent in both encodings. Indices other than 0 and 1 are refused too.
  bool can_convert(int from, int to, char* why, std::size_t size) noexcept override;

  /// Publishes `to` as the encoding for new locks, then converts every live lock (convert_lock).
  /// Does nothing when from == to or either index is out of range.
  void convert(int from, int to) noexcept override;
};

/// The one SpinlockGroupState (adopt_engine_variant registers it with the engine).
SpinlockGroupState& spinlock_group_state();

/// Makes the locks follow the `spinlock` group's variant, now and on every switch: registers
/// spinlock_group_state() with the booted engine (Engine::set_group_state), then reads the group's
/// current variant ("indirect" counts as native, its default) and converts every live lock, and
/// the encoding of new locks, to it. Call once after boot(), before vCPU threads take locks and
/// before any switch of the group. Fails with kState when the engine is not booted, or what
/// set_group_state() or current_variant() fail with. Allocates; normal context only.
Status adopt_engine_variant();

}  // namespace repatch::guest

#endif  // REPATCH_GUEST_LOCK_STATE_H_
