#include "guest/lock_state.h"

#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <climits>
#include <cstdint>
#include <string>

#include "base/fixed_line.h"
#include "base/test_hooks.h"
#include "guest/lock_registry.h"
#include "guest/spinlock.h"
#include "repatch/engine.h"
#include "sync/vcpu.h"

namespace repatch::guest {
namespace {

// The encoding new locks start in. seq_cst: SpinLock's constructor stores its node into the
// registry and then loads this; convert() stores this and then walks the registry. With both
// sides sequentially consistent, the constructor sees the new encoding or the walk sees the lock
// (or both; each conversion step is idempotent).
std::atomic<int> g_encoding{kNativeVariant};

// One per vCPU slot (guest/lock_state.h, NativeWait).
NativeWait g_native_waits[sync::kMaxVcpus][2];

// `old` is a held native word of `lock`: its head ticket holds the lock. When that ticket's owner
// is a vCPU still waiting for it (an unlock handed the lock over, and the waiter has not read the
// word since), mark its announcement granted, so that it takes the converted word as held by
// itself instead of restarting. Before the word's compare-and-swap, which releases the grant to
// the waiter's acquire load of the new word. Idempotent. A grant whose compare-and-swap then fails
// stays right: while the granted vCPU waits, nobody else can move head past its ticket, so the
// word converted in the end serves it too.
void grant_served_waiter(const SpinLock& lock, std::uint64_t old) {
  const std::uint64_t waiting = native_wait_value(word::epoch(old), word::head(old));
  const sync::VcpuId limit = sync::slot_limit();
  for (sync::VcpuId id = 0; id < limit; ++id) {
    for (NativeWait& wait : g_native_waits[id]) {
      if (wait.lock.load(std::memory_order_acquire) != &lock) continue;
      std::uint64_t expected = waiting;
      // Only the announcement of this very ticket and epoch: another one is not served, and a
      // granted one is done.
      wait.ticket.compare_exchange_strong(expected, waiting | kNativeWaitGranted,
                                          std::memory_order_acq_rel, std::memory_order_relaxed);
    }
  }
}

using Line = text::FixedLine;

bool valid_variant(int v) {
  return v == kNativeVariant || v == kPvVariant;
}

void futex_wake_all(std::atomic<std::uint64_t>& w) {
  // The pv futex is the word's upper half (guest/lock_state.h). A raw system call: async-signal-
  // safe, allocation-free.
  auto* upper = reinterpret_cast<std::uint32_t*>(&w) + 1;
  syscall(SYS_futex, upper, FUTEX_WAKE_PRIVATE, INT_MAX, nullptr, nullptr, 0);
}

struct Refusal {
  int to;
  char* why;
  std::size_t size;
};

bool check_one(SpinLock& lock, void* context) {
  auto* refusal = static_cast<Refusal*>(context);
  const std::uint64_t w = lock.load_word();
  // Already in the target encoding: a second executor's check after a first one converted.
  if (word::tag(w) == word::tag_of_variant(refusal->to)) return true;
  const char* reason = nullptr;
  const LockState state = classify(w, &reason);
  if (state != LockState::kCorrupt) return true;
  Line(refusal->why, refusal->size)
      .text("lock ")
      .hex(reinterpret_cast<std::uintptr_t>(&lock))
      .text(" '")
      .text(lock.name() != nullptr ? lock.name() : "(unnamed)")
      .text("' is ")
      .text(lock_state_name(state))
      .text(" in ")
      .text(encoding_name(w))
      .text(" encoding (word ")
      .hex(w)
      .text("): ")
      .text(reason);
  return false;
}

struct Direction {
  int from;
  int to;
};

bool convert_one(SpinLock& lock, void* context) {
  const auto* d = static_cast<const Direction*>(context);
  convert_lock(lock, d->from, d->to);
  return true;
}

}  // namespace

NativeWait& native_wait(std::size_t id, bool in_nmi) {
  return g_native_waits[id][in_nmi ? 1 : 0];
}

const char* lock_state_name(LockState state) {
  switch (state) {
    case LockState::kUnlocked:
      return "unlocked";
    case LockState::kHeld:
      return "held";
    case LockState::kHeldWithSpinningWaiters:
      return "held with spinning waiters";
    case LockState::kHeldWithSleepingWaiters:
      return "held with sleeping waiters";
    case LockState::kCorrupt:
      return "corrupt";
  }
  return "corrupt";
}

const char* encoding_name(std::uint64_t w) {
  switch (word::tag(w)) {
    case word::kTagNative:
      return "native";
    case word::kTagPv:
      return "pv";
    default:
      return "unknown";
  }
}

LockState classify(std::uint64_t w, const char** why) {
  const char* unused = nullptr;
  const char*& reason = why != nullptr ? *why : unused;
  // kMaxVcpus, not the vCPUs registered now: a non-vCPU thread may hold a ticket too, and a word
  // crafted before any vCPU exists must still classify the same way.
  constexpr std::uint64_t kMaxWaiters = sync::kMaxVcpus;
  switch (word::tag(w)) {
    case word::kTagNative: {
      if ((w & word::kFlagsMask) != 0) {
        reason = "a ticket word has no flag bits (bits 32-39 are set)";
        return LockState::kCorrupt;
      }
      const std::uint64_t queued = (word::tail(w) - word::head(w)) & word::kLow16;
      if (queued == 0) return LockState::kUnlocked;
      if (queued == 1) return LockState::kHeld;
      if (queued <= kMaxWaiters) return LockState::kHeldWithSpinningWaiters;
      reason = "tail - head counts more ticket holders than there can be vCPUs";
      return LockState::kCorrupt;
    }
    case word::kTagPv: {
      if ((w & word::kFlagsMask & ~(word::kPvLocked | word::kPvKicked)) != 0) {
        reason = "a pv word has flag bits other than locked and kicked (bits 32, 33) set";
        return LockState::kCorrupt;
      }
      if (word::spinners(w) + word::sleepers(w) > kMaxWaiters) {
        reason = "it counts more pv waiters than there can be vCPUs";
        return LockState::kCorrupt;
      }
      // Unlocked with waiters still counted is a transient every release passes through (a
      // kicked sleeper or a spinner has not taken the lock yet): it is unlocked.
      if ((w & word::kPvLocked) == 0) return LockState::kUnlocked;
      if (word::sleepers(w) != 0) return LockState::kHeldWithSleepingWaiters;
      if (word::spinners(w) != 0) return LockState::kHeldWithSpinningWaiters;
      return LockState::kHeld;
    }
    default:
      reason =
          "its tag (bits 56-63) names no encoding; the lock was never constructed, or was "
          "overwritten";
      return LockState::kCorrupt;
  }
}

bool convert_word(std::uint64_t w, int to, std::uint64_t* out) {
  const LockState state = classify(w);
  if (state == LockState::kCorrupt || !valid_variant(to)) return false;
  if (word::tag(w) == word::tag_of_variant(to)) {
    *out = w;
    return true;
  }
  const std::uint64_t gen = word::generation(w) + 1;
  if (state == LockState::kUnlocked) {
    *out = word::unlocked(to, gen);
  } else if (to == kPvVariant) {
    *out = word::pv(gen, /*locked=*/true, 0, 0);
  } else {
    // Ticket 0 is the holder's; its native unlock (head + 1) makes head == tail.
    *out = word::native(gen, 0, 1);
  }
  return true;
}

bool convert_lock(SpinLock& lock, int from, int to) noexcept {
  if (!valid_variant(from) || !valid_variant(to) || from == to) return false;
  std::atomic<std::uint64_t>& w = lock.word();
  std::uint64_t old = w.load(std::memory_order_acquire);
  std::uint64_t next = 0;
  for (;;) {
    if (word::tag(old) != word::tag_of_variant(from)) return false;  // done already, or corrupt
    if (!convert_word(old, to, &next)) return false;
    if (word::tag(old) == word::kTagNative && word::head(old) != word::tail(old)) {
      grant_served_waiter(lock, old);
    }
    // acq_rel: pairs with the acquire loads of waiters, which see the new generation and restart,
    // and with the release of a holder or waiter whose write this CAS replaces. A failure means a
    // waiter changed the word (never under a stop, where nobody runs): convert what it left.
    if (w.compare_exchange_strong(old, next, std::memory_order_acq_rel,
                                  std::memory_order_acquire)) {
      break;
    }
  }
  // Sleepers of the old pv word wait for a kick that a native unlock would never send (H6), and
  // their sleeper count is gone with the old encoding: wake them all, and they restart.
  if (word::tag(old) == word::kTagPv && word::sleepers(old) != 0 &&
      !test::disabled(test::Handler::kSleeperWake)) {
    futex_wake_all(w);
  }
  return true;
}

int current_encoding() {
  return g_encoding.load(std::memory_order_seq_cst);
}

bool SpinlockGroupState::can_convert(int from, int to, char* why, std::size_t size) noexcept {
  if (!valid_variant(from) || !valid_variant(to)) {
    Line(why, size).text("the spinlock group has variants 0 (native) and 1 (pv) only");
    return false;
  }
  if (from == to || test::disabled(test::Handler::kStateCheck)) return true;
  Refusal refusal{to, why, size};
  return lock_registry::for_each(check_one, &refusal);
}

void SpinlockGroupState::convert(int from, int to) noexcept {
  if (!valid_variant(from) || !valid_variant(to) || from == to) return;
  if (test::disabled(test::Handler::kLockConvert)) return;
  // Before the walk: see g_encoding.
  g_encoding.store(to, std::memory_order_seq_cst);
  Direction direction{from, to};
  lock_registry::for_each(convert_one, &direction);
}

SpinlockGroupState& spinlock_group_state() {
  static SpinlockGroupState state;
  return state;
}

Status adopt_engine_variant() {
  Engine* engine = Engine::get();
  if (engine == nullptr) {
    return Error(ErrorCode::kState,
                 "the engine is not booted, so the spinlock group has no variant yet; call "
                 "repatch::boot() first");
  }
  // The converter is registered here, with the adoption, and not left to a second call: a program
  // that adopted the booted encoding and never registered it had its sites switched and its words
  // left alone. Switched to pv, the word stayed native (generation 0 for good), so every pv lock
  // and pv unlock found a word of the other encoding and returned "restart" to its site
  // (spinlock.cpp, restart()) until the group was switched back: a holder could not release, and
  // its waiters spun in the native wait (spinlock.cpp, `while (word::head(cur) != ticket)`) until
  // then. With a switch every 200 us, four vCPUs on one lock made about 200 acquisitions a second
  // (tests/guest/spinlock_contention_test.cpp); a snapshot showed every vCPU in that wait, head
  // served and nobody inside, because the next ticket's vCPU had not yet been scheduled to see it.
  if (Status s = engine->set_group_state("spinlock", &spinlock_group_state()); !s.ok()) return s;
  Result<std::string> variant = engine->current_variant("spinlock");
  if (!variant.ok()) return variant.error();
  // "indirect" sites call the default variant, native.
  const int to = variant.value() == "pv" ? kPvVariant : kNativeVariant;
  spinlock_group_state().convert(to == kPvVariant ? kNativeVariant : kPvVariant, to);
  return Status();
}

}  // namespace repatch::guest
