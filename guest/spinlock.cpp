// The spinlock group's ops. Lock and unlock bodies are ordinary C functions behind callee-save
// thunks; they never hold an OpInFlight mark (see spinlock.h): every wait restarts when the word
// is converted under it, and no body has a stretch that a conversion could break:
//  - native lock: the ticket is taken by a compare-and-swap that checks the tag in the same step;
//    after that the waiter only reads. A holder keeps the lock through a conversion (held maps to
//    held), and the owner hint it writes lies beside the word. So does a waiter whose ticket an
//    unlock served before the conversion, though it has not read the word since: the conversion
//    grants it the lock through the ticket it announced (NativeWait, guest/lock_state.h), and it
//    holds the converted word instead of restarting.
//  - pv lock: every write is a compare-and-swap from a word of the waiter's own generation, so a
//    waiter stopped between two steps finds the new generation and restarts.
//  - pv unlock: between its release and its kick, a conversion of the now unlocked word with
//    sleepers wakes them itself, and the late kick of the old body wakes nobody it should not.
#include "guest/spinlock.h"

#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>

#include "guest/preempted.h"
#include "guest/spinlock_ops.h"
#include "sync/vcpu.h"

namespace repatch::guest {
namespace {

using std::memory_order_acquire;
using std::memory_order_relaxed;

// Pause iterations a pv waiter spins before it sleeps (about 4-14 µs at 2.5 GHz: one pause is
// 40-140 cycles depending on the core). Longer than a critical section should be, and short, so
// that waiters on a host with more runnable vCPUs than CPUs soon give their CPU to the holder:
// bench/run-all, lock_throughput, 16 vCPUs on 2 CPUs with preemption, saturated lock: pv at 0.89x
// std::mutex with 2^12 pauses, 1.04x with 2^8. The price is paid where adaptive runs native: 2
// dedicated vCPUs on a saturated lock sleep more often, pv 0.99x native there before, 0.91x after.
constexpr unsigned kPvSpinBudget = 1u << 8;
// How often a pv spinner asks whether the owner is preempted: each check is a site call.
constexpr unsigned kPreemptCheckEvery = 64;

SpinlockStats g_stats;

std::uint32_t* futex_word(SpinLock* lock) {
  // The upper half of the little-endian word (tag, generation, locked): guest/lock_state.h.
  return reinterpret_cast<std::uint32_t*>(&lock->word()) + 1;
}

void record_owner(SpinLock* lock, const sync::Vcpu* self) {
  // Relaxed: a hint (see SpinLock::owner()).
  lock->owner().store(self != nullptr ? self->id() + 1u : 0u, memory_order_relaxed);
}

[[noreturn]] void die_corrupt(SpinLock* lock, std::uint64_t w, const char* op) {
  // A word no encoding explains: nothing sensible can follow. write(2), not stdio: this may run
  // with any lock held.
  char line[256];
  char* p = line;
  char* const end = line + sizeof line - 1;
  auto put = [&](const char* s) {
    while (*s != '\0' && p < end)
      *p++ = *s++;
  };
  auto put_hex = [&](std::uint64_t v) {
    put("0x");
    for (int shift = 60; shift >= 0; shift -= 4) {
      if (p < end) *p++ = "0123456789abcdef"[(v >> shift) & 0xf];
    }
  };
  put("repatch: ");
  put(op);
  put(" found lock ");
  put_hex(reinterpret_cast<std::uintptr_t>(lock));
  put(" '");
  put(lock->name() != nullptr ? lock->name() : "(unnamed)");
  put("' with a corrupt word ");
  put_hex(w);
  put("\n");
  [[maybe_unused]] ssize_t ignored = write(STDERR_FILENO, line, static_cast<std::size_t>(p - line));
  std::abort();
}

// The word is in the other encoding: the caller's site is stale (a switch converted the lock and
// will have rewritten the site by the time it runs again). Give up without writing the word.
std::uint32_t restart(SpinLock* lock, std::uint64_t w, const char* op) {
  if (word::tag(w) != word::kTagNative && word::tag(w) != word::kTagPv) die_corrupt(lock, w, op);
  g_stats.restarts.fetch_add(1, memory_order_relaxed);
  __builtin_ia32_pause();
  return 1;
}

bool owner_preempted(SpinLock* lock) {
  const std::uint32_t owner = lock->owner().load(memory_order_relaxed);
  return owner != 0 && vcpu_is_preempted(owner - 1);
}

// Sleeps until the pv futex word no longer holds the upper half of `expected` (an unlock or a
// conversion changed it) or a kick arrives. A vCPU goes offline meanwhile, so that stop-machine
// does not wait for it and QSBR grace periods go on; back online it passes the online gate and
// serialises before it runs guest code again.
void pv_sleep(SpinLock* lock, std::uint64_t expected) {
  sync::Vcpu* self = sync::Vcpu::current();
  if (self != nullptr) self->go_offline();
  syscall(SYS_futex, futex_word(lock), FUTEX_WAIT_PRIVATE,
          static_cast<std::uint32_t>(expected >> 32), nullptr, nullptr, 0);
  if (self != nullptr) self->go_online();
}

}  // namespace

SpinlockStats& spinlock_stats() {
  return g_stats;
}

SpinLock::SpinLock(const char* name) : name_(name) {
  int encoding = current_encoding();
  word_.store(word::unlocked(encoding, 0), memory_order_relaxed);
  lock_registry::add(this, &registry_node_);
  // Pairs with SpinlockGroupState::convert, which publishes the new encoding and then walks: a
  // conversion whose walk missed this lock has published its encoding before this load.
  for (;;) {
    encoding = current_encoding();
    const std::uint64_t w = word_.load(memory_order_acquire);
    if (word::tag(w) == word::tag_of_variant(encoding)) break;
    convert_lock(*this, encoding == kPvVariant ? kNativeVariant : kPvVariant, encoding);
  }
}

SpinLock::~SpinLock() {
  lock_registry::remove(&registry_node_);
}

}  // namespace repatch::guest

// The C bodies behind the call variants: ordinary functions behind callee-save thunks, `used`
// because only the thunks' assembly calls them. Each returns 0 when done and 1 for "restart".
extern "C" {

__attribute__((used)) std::uint32_t spinlock_native_lock(repatch::guest::SpinLock* lock) {
  namespace word = repatch::guest::word;
  using repatch::guest::NativeWait;
  std::atomic<std::uint64_t>& w = lock->word();
  const repatch::sync::Vcpu* self = repatch::sync::Vcpu::current();
  // Where this vCPU announces the ticket it waits for, looked up only once the lock is seen
  // contended, so that an uncontended acquisition makes no further call. Non-vCPU threads take
  // locks only while no switch can run (spinlock.h), so they need none.
  NativeWait* wait = nullptr;
  // Clears the announcement whichever way this returns.
  struct Withdraw {
    NativeWait* wait;
    ~Withdraw() {
      if (wait != nullptr) wait->lock.store(nullptr, std::memory_order_relaxed);
    }
  } withdraw{nullptr};
  std::uint64_t cur = w.load(std::memory_order_relaxed);
  std::uint64_t next = 0;
  // Take a ticket: tail + 1 (wrapping in its 16 bits), only on a native word.
  do {
    if (word::tag(cur) != word::kTagNative)
      return repatch::guest::restart(lock, cur, "native lock");
    if (self != nullptr && word::head(cur) != word::tail(cur)) {
      if (wait == nullptr) {
        wait = &repatch::guest::native_wait(
            self->id(), repatch::sync::slot(self->id()).in_nmi.load(std::memory_order_relaxed));
      }
      // Contended: the ticket will be served by an unlock, possibly while this vCPU is stopped.
      // Announced before it is taken, so that a conversion of any word that holds the ticket finds
      // the announcement (the compare-and-swap below releases it). An announcement whose
      // compare-and-swap fails is harmless: it is granted only if the word serves its ticket, and
      // a grant is read only after a ticket of that epoch was taken.
      wait->ticket.store(repatch::guest::native_wait_value(word::epoch(cur), word::tail(cur)),
                         std::memory_order_relaxed);
      wait->lock.store(lock, std::memory_order_release);
      withdraw.wait = wait;
    }
    next = word::native(word::generation(cur), word::head(cur), word::tail(cur) + 1);
  } while (
      !w.compare_exchange_weak(cur, next, std::memory_order_acq_rel, std::memory_order_relaxed));
  const std::uint64_t ticket = word::tail(cur);
  const std::uint64_t epoch = word::epoch(cur);
  // Acquire: pairs with the previous holder's unlock (a locked RMW, so a release, on its head),
  // making its critical section visible to ours.
  while (word::head(cur) != ticket) {
    __builtin_ia32_pause();
    cur = w.load(std::memory_order_acquire);
    if (word::epoch(cur) != epoch) {
      // Converted (tag or generation changed): the ticket belongs to a word that no longer
      // exists. Unless an unlock had served it first: then the conversion granted this vCPU the
      // lock, held in the new word (acquire: pairs with the conversion's compare-and-swap, which
      // follows its grant).
      if (wait != nullptr && wait->ticket.load(std::memory_order_acquire) ==
                                 (repatch::guest::native_wait_value(epoch, ticket) |
                                  repatch::guest::kNativeWaitGranted)) {
        break;
      }
      return repatch::guest::restart(lock, cur, "native lock");
    }
  }
  // No owner hint: only pv waiters read it, and writing it here would move the word's line once
  // more on every handoff (the waiter took the lock by reading). A conversion to pv leaves the
  // hint stale, which costs a pv waiter only a wrong spin-or-sleep guess.
  return 0;
}

__attribute__((used)) std::uint32_t spinlock_pv_lock(repatch::guest::SpinLock* lock) {
  namespace word = repatch::guest::word;
  using repatch::guest::g_stats;
  std::atomic<std::uint64_t>& w = lock->word();
  std::uint64_t cur = w.load(std::memory_order_relaxed);
  if (word::tag(cur) != word::kTagPv) return repatch::guest::restart(lock, cur, "pv lock");
  const std::uint64_t epoch = word::epoch(cur);
  // What this waiter has added to the word: nothing, one spinner or one sleeper. It is taken back
  // by the compare-and-swap that acquires, or dropped with the encoding by a conversion.
  std::uint64_t counted = 0;
  // After a sleep: the `kicked` flag to clear with the first write, since the kick (if there was
  // one) has arrived. Clearing it when another sleeper was the one kicked costs one extra kick.
  std::uint64_t kicked_off = 0;
  // An NMI handler never sleeps: it cannot go offline or block in a futex on top of whatever its
  // vCPU was doing. It spins until the lock is free, as an NMI-context waiter must.
  const repatch::sync::Vcpu* self = repatch::sync::Vcpu::current();
  const bool may_sleep =
      self == nullptr || !repatch::sync::slot(self->id()).in_nmi.load(std::memory_order_relaxed);
  for (;;) {
    // Spin: take the lock when it is free, else count in as a spinner and watch it.
    bool owner_preempted = false;
    for (unsigned spins = 0;; ++spins) {
      if (word::epoch(cur) != epoch) return repatch::guest::restart(lock, cur, "pv lock");
      if ((cur & word::kPvLocked) == 0) {
        // Acquire: pairs with the release of the unlock that cleared `locked`.
        if (w.compare_exchange_weak(cur, ((cur - counted) & ~kicked_off) | word::kPvLocked,
                                    std::memory_order_acquire, std::memory_order_relaxed)) {
          repatch::guest::record_owner(lock, self);
          return 0;
        }
        continue;
      }
      if (counted != word::kSpinnerOne) {
        const std::uint64_t as_spinner = ((cur - counted) & ~kicked_off) + word::kSpinnerOne;
        if (!w.compare_exchange_weak(cur, as_spinner, std::memory_order_relaxed,
                                     std::memory_order_relaxed)) {
          continue;
        }
        cur = as_spinner;
        counted = word::kSpinnerOne;
        kicked_off = 0;
      }
      if (may_sleep && spins >= repatch::guest::kPvSpinBudget) break;
      if (may_sleep && spins % repatch::guest::kPreemptCheckEvery == 0 &&
          repatch::guest::owner_preempted(lock)) {
        owner_preempted = true;  // spinning cannot end before the owner runs again
        break;
      }
      __builtin_ia32_pause();
      cur = w.load(std::memory_order_relaxed);
    }
    // Sleep: trade the spinner count for a sleeper count, so that unlock kicks.
    for (;;) {
      if (word::epoch(cur) != epoch) return repatch::guest::restart(lock, cur, "pv lock");
      if ((cur & word::kPvLocked) == 0) break;  // released meanwhile: back to the spin loop
      const std::uint64_t as_sleeper = cur - counted + word::kSleeperOne;
      // Relaxed: the count publishes nothing but itself; the unlock that reads it is an RMW on
      // the same word, so it sees this count or a later value.
      if (w.compare_exchange_weak(cur, as_sleeper, std::memory_order_relaxed,
                                  std::memory_order_relaxed)) {
        counted = word::kSleeperOne;
        g_stats.sleeps.fetch_add(1, std::memory_order_relaxed);
        if (owner_preempted) g_stats.preempted_owner_sleeps.fetch_add(1, std::memory_order_relaxed);
        repatch::guest::pv_sleep(lock, as_sleeper);
        kicked_off = word::kPvKicked;
        cur = w.load(std::memory_order_relaxed);
        break;
      }
    }
  }
}

__attribute__((used)) std::uint32_t spinlock_pv_unlock(repatch::guest::SpinLock* lock) {
  namespace word = repatch::guest::word;
  std::atomic<std::uint64_t>& w = lock->word();
  std::uint64_t cur = w.load(std::memory_order_relaxed);
  std::uint64_t next = 0;
  // Release: the critical section happens before the next owner's acquire of `locked`.
  do {
    // Converted to native while this holder was stopped inside this body: the held lock is now a
    // ticket word, which the (native, by now) site releases when it runs again.
    if (word::tag(cur) != word::kTagPv) return repatch::guest::restart(lock, cur, "pv unlock");
    if ((cur & word::kPvLocked) == 0)
      repatch::guest::die_corrupt(lock, cur, "pv unlock (not held)");
    next = cur & ~word::kPvLocked;
    // Kick when someone sleeps and no kicked sleeper is still on its way: that one takes the
    // lock, or sleeps again, and then a later unlock kicks.
    if (word::sleepers(cur) != 0 && (cur & word::kPvKicked) == 0) next |= word::kPvKicked;
  } while (
      !w.compare_exchange_weak(cur, next, std::memory_order_release, std::memory_order_relaxed));
  if ((next & word::kPvKicked) != 0 && (cur & word::kPvKicked) == 0) {
    // Kick one sleeper (the analogue of kvm_kick_cpu). It takes its count and the flag off when
    // it wakes. A sleeper not yet in the futex finds the upper half changed and does not sleep.
    repatch::guest::g_stats.kicks.fetch_add(1, std::memory_order_relaxed);
    syscall(SYS_futex, repatch::guest::futex_word(lock), FUTEX_WAKE_PRIVATE, 1, nullptr, nullptr,
            0);
  }
  return 0;
}

__attribute__((used)) std::uint32_t spinlock_pv_vcpu_is_preempted(std::uint64_t cpu) {
  if (cpu >= repatch::sync::kMaxVcpus) return 0;
  // Relaxed: a hint that is stale as soon as it is read.
  return repatch::hypervisor::preempted(static_cast<repatch::sync::VcpuId>(cpu))
      .load(std::memory_order_relaxed);
}

}  // extern "C"

REPATCH_GUEST_DEFINE_SPINLOCK_OPS();
