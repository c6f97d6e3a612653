// One attempt at switching groups: the planned images and the idempotent write steps that any
// executor can run (the primary, an NMI handler, a thread that hit an INT3 of the fence). The order
// in which they run is engine/switch_protocol.h's; this file says why each is safe to replay.
//
// The fence and unfence are compare-and-swaps of one byte from the value they expect to the next
// one, so a replay that comes late finds the byte already moved on and does nothing. A site's first
// byte always differs between its old and new image (planning alternates the padding prefix), so
// a late fence can never succeed on a site whose heads were written. Tails and heads are plain
// stores: they are written only going forward, and every writer stores the same new bytes. The
// direction is one compare-and-swap from undecided: the first executor to decide wins.
//
// Executors never wait for one another: an NMI may have interrupted any of them, the primary
// included. Two counts keep attempts apart:
//  - every thread in the #BP handler counts itself in and out while it holds an attempt's address
//    (with_published); an attempt is freed only once that count has been seen at zero after the
//    attempt was replaced (PublishedAttempts);
//  - an executor that is going to write counts itself in on the attempt (enter_writing()), which
//    fails once the attempt is closed and its last writer has left. The primary closes its attempt
//    when it ends and waits for its writers (close_and_drain_writers()), before it publishes
//    another (publish_attempt()): so the next attempt plans on sites nobody still changes, and a
//    late thread (one that trapped on attempt n and was descheduled before its handler ran) can
//    only work on attempt n + 1, never write n's bytes over it. That is what makes the
//    compare-and-swaps safe across attempts, whose images often swap roles (n + 1 switching back).
// A trap outside an op and an NMI handler gives way to a primary at work (primary_at_work()): it
// writes nothing and runs the site again. So the writers the next attempt waits for are the few
// that found the primary stalled, not every busy thread that happened to hit the fence and was
// then descheduled inside its handler.
#ifndef REPATCH_ENGINE_TRANSACTION_H_
#define REPATCH_ENGINE_TRANSACTION_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <vector>

#include "arch/x86/instruction.h"
#include "arch/x86/text_poker.h"
#include "base/test_hooks.h"
#include "engine/catalog.h"
#include "engine/op_marks.h"
#include "engine/site_table.h"
#include "repatch/engine.h"
#include "repatch/group_state.h"

namespace repatch::engine {

struct CodeObject;

/// One site's part in a switch.
struct SitePlan {
  std::uintptr_t address;
  SiteEntry* entry;
  const CodeObject* object;   ///< the object the site is in (engine/code_object.h)
  x86::TextPoker* poker;      ///< the object's writer
  std::intptr_t alias_delta;  ///< poker->alias_delta(), read once
  x86::Image from;            ///< what it holds now
  x86::Image to;              ///< what it will hold
  std::uint8_t held_after;    ///< SiteEntry::held once committed
};

enum class Direction : std::uint8_t { kUndecided, kForward, kBackward };

/// A switched group whose ops keep state in memory, and the encodings it goes between.
struct StateChange {
  GroupState* state;
  int from;  ///< variant index (the default variant's when the group is still unpatched)
  int to;
};

/// A switched group whose in-op depth threads track (index below abi::kMaxTrackedGroups), and the
/// variants it goes between, for its phase word (engine/group_phase.h).
struct TrackedGroup {
  GroupIndex group;
  VariantIndex from;
  VariantIndex to;
};

class Transaction {
 public:
  /// `sites` sorted by address. `tracked`: the switched groups whose in-op depth threads keep.
  /// `writer`: how the attempt establishes quiescence (kStopMachine, kBatch or kStopless).
  /// `in_op_deadline`: kStopless, how long after the fence executors may wait for threads inside
  /// an op of the groups.
  Transaction(std::vector<SitePlan> sites, std::vector<TrackedGroup> tracked, SwitchWriter writer,
              std::vector<StateChange> states, std::chrono::nanoseconds in_op_deadline);

  std::size_t size() const { return sites_.size(); }
  const std::vector<SitePlan>& sites() const { return sites_; }
  SwitchWriter writer() const { return writer_; }

  /// The site starting at `address`, or nullptr. Async-signal-safe.
  const SitePlan* site_at(std::uintptr_t address) const noexcept;
  /// Whether `rip` lies inside a site of this transaction, after its first byte (a thread stopped
  /// there would resume in the middle of a rewritten instruction). Async-signal-safe.
  bool inside_site(std::uintptr_t rip) const noexcept;

  /// Whether every site still holds its old image (checked under the stop, before the fence).
  bool sites_hold_old() const noexcept;
  /// The first thread (a row of engine/op_marks.h) inside an op of a switched group, vCPU or
  /// not, or kNoOpThread. Async-signal-safe.
  OpThread thread_in_op() const noexcept;
  /// Whether the calling thread is inside an op of a switched group. Async-signal-safe.
  bool this_thread_in_op() const noexcept;
  /// kStopless: waits until no thread is inside an op of the switched groups (true), or until the
  /// attempt is decided or its in-op deadline has passed (false). Yields the CPU between looks,
  /// so that the threads it waits for can run. At the deadline, the thread still inside one is
  /// kept for in_op_culprit(). Async-signal-safe.
  bool wait_until_no_thread_in_op() noexcept;
  /// The thread that was inside an op when wait_until_no_thread_in_op() met the deadline, or
  /// kNoOpThread.
  OpThread in_op_culprit() const noexcept { return in_op_culprit_.load(std::memory_order_relaxed); }

  /// Whether every switched group's state can be converted (GroupState::can_convert). The first
  /// refusal's text is kept, for refusal(). Async-signal-safe.
  bool states_convertible() noexcept;
  /// Converts every switched group's state (GroupState::convert). Async-signal-safe.
  void convert_states() noexcept;
  /// The first refusal of states_convertible(), or "".
  const char* refusal() const noexcept {
    // Acquire pairs with the release that publishes the text.
    return refusal_ready_.load(std::memory_order_acquire) ? refusal_ : "";
  }

  /// The primary's alone, before publish_attempt(): announces the switch in every tracked
  /// group's phase word, starts the in-op deadline's clock, and marks the calling thread as the
  /// attempt's primary until release(). Async-signal-safe.
  void announce() noexcept;

  // ---- the steps (async-signal-safe, never allocate). `primary` enables injection points. ----
  void fence(bool primary) noexcept;
  /// Moves `direction` from undecided to `wish`; returns the direction that won.
  Direction decide(Direction wish) noexcept;
  Direction direction() const noexcept { return direction_.load(std::memory_order_acquire); }
  void write_tails(bool primary) noexcept;
  void write_heads(bool primary) noexcept;
  void unfence() noexcept;
  /// The ninth step, the primary's alone: settles every tracked group's phase word at the variant
  /// the attempt leaves it in, and ends announce()'s mark of the primary's thread. Call once
  /// run_switch_protocol() has returned on the primary.
  void release() noexcept;

  // ---- who writes (async-signal-safe, never allocate) ----

  /// Counts the calling executor in as one that will write the attempt's bytes or state. False
  /// once the attempt is closed and its last writer has left (a newer attempt, or an unload, may
  /// take the sites over): the caller must then write nothing. Pair every true with
  /// leave_writing().
  bool enter_writing() noexcept;
  void leave_writing() noexcept;
  /// The primary, as the attempt ends: from now on no executor starts writing this attempt unless
  /// another is still writing it; waits until none is. Bounded: writers never wait for anyone but
  /// threads inside an op, and that only up to the in-op deadline.
  void close_and_drain_writers() noexcept;

  /// The primary's, as it works through the steps (each site, each serialise, each look at the
  /// in-op marks): a sign of life that lets trapped threads give way to it (primary_at_work()).
  /// Not a read-modify-write (it runs for every site written): two threads beating at once may
  /// leave the count where one of them found it, which only makes a trapped thread finish the
  /// attempt itself sooner.
  void beat() noexcept {
    beats_.store(beats_.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  }
  /// Whether the primary is at work on this attempt: its beat has moved within the last
  /// kPrimaryStall as seen from the calling thread, which is not the primary's. Uses a
  /// thread-local record of the last beat seen; false on the primary's own thread (an NMI or a
  /// trap on top of the primary must finish the attempt itself). Async-signal-safe.
  bool primary_at_work() const noexcept;
  /// How long a trapped thread gives way to a primary whose beat does not move before it
  /// finishes the attempt itself (forward progress when the primary is descheduled).
  static constexpr std::chrono::microseconds kPrimaryStall{100};

  /// Counts one completion by an executor other than the primary: inside an NMI handler or not.
  void count_completion(bool in_nmi) noexcept {
    (in_nmi ? nmi_completions_ : int3_completions_).fetch_add(1, std::memory_order_relaxed);
  }
  std::uint64_t int3_completions() const { return int3_completions_.load(); }
  std::uint64_t nmi_completions() const { return nmi_completions_.load(); }

 private:
  // After each site the primary writes: a beat, and the test injection point.
  void primary_wrote(test::Point point, std::uint32_t sites_done) noexcept;
  // One byte, compare-and-swap, through the site's alias.
  bool swap_byte(const SitePlan& site, std::uint8_t expected, std::uint8_t desired) noexcept;

  std::vector<SitePlan> sites_;
  std::vector<TrackedGroup> tracked_;
  std::uint32_t tracked_bits_ = 0;  // bit g for each tracked group g
  SwitchWriter writer_;
  std::vector<StateChange> states_;
  std::chrono::nanoseconds in_op_deadline_;
  // When the primary announced the attempt (steady clock), for the in-op deadline; 0 before.
  std::atomic<std::int64_t> fenced_at_ns_{0};
  std::atomic<OpThread> in_op_culprit_{kNoOpThread};
  std::atomic<Direction> direction_{Direction::kUndecided};
  // The first executor whose can_convert refused claims the buffer, writes its text, then sets
  // refusal_ready_.
  std::atomic<bool> refusal_claimed_{false};
  std::atomic<bool> refusal_ready_{false};
  char refusal_[320] = {};
  std::atomic<std::uint64_t> int3_completions_{0};
  std::atomic<std::uint64_t> nmi_completions_{0};
  // Executors writing (enter_writing()), and kClosed once close_and_drain_writers() has begun.
  static constexpr std::uint32_t kClosed = 1u << 31;
  std::atomic<std::uint32_t> writers_{0};
  std::atomic<std::uint64_t> beats_{0};
};

/// Makes `transaction` the attempt executors find through the #BP handler (nullptr: none). The one
/// it replaces must have been closed, with no writer left (Transaction::close_and_drain_writers());
/// threads may still hold it without writing, and PublishedAttempts frees it once none does. An
/// attempt stays published after it ends, so that a thread that trapped on its fence finds it even
/// then. Never allocates; may run inside a stop.
void publish_attempt(Transaction* transaction) noexcept;

/// Whether `transaction` (which may be nullptr) is still the published attempt. Async-signal-safe.
bool still_published(const Transaction* transaction) noexcept;

/// Whether no thread is inside with_published() now. Once true, every attempt replaced before the
/// call is unreachable. Async-signal-safe.
bool no_executor_inside() noexcept;

/// Waits until no_executor_inside(). Never allocates.
void drain_executors() noexcept;

/// The owner of the published attempt and of those it replaced, which threads in the #BP handler
/// may still hold (with_published) though none will write them. Only the switch mutex's holder
/// uses it, in normal context (it allocates and frees).
class PublishedAttempts {
 public:
  /// Whether any attempt kept here has a site in `object`.
  bool touches(const CodeObject* object) const;
  /// Takes `attempt`, which publish_attempt() has just published, and retires the one before.
  /// Frees the retired ones when no thread is inside the handler.
  void keep(std::unique_ptr<Transaction> attempt);
  /// After publish_attempt(nullptr): waits until no thread is inside the handler, then frees
  /// every attempt (an object unloading must not be referenced by any).
  void drop_all();

 private:
  std::unique_ptr<Transaction> current_;
  std::vector<std::unique_ptr<Transaction>> retired_;
};

/// Runs `fn(transaction)` for the published attempt (nullptr when none), counted as an executor
/// for the call's duration. Async-signal-safe when `fn` is.
template <typename Fn>
auto with_published(Fn&& fn) noexcept;

namespace detail {
extern std::atomic<Transaction*> g_published;
extern std::atomic<std::uint32_t> g_executors_inside;
}  // namespace detail

template <typename Fn>
auto with_published(Fn&& fn) noexcept {
  struct Inside {
    // seq_cst, paired with publish_attempt's seq_cst store of the pointer and load of the count:
    // an executor either counted itself in before the primary's check (which then waits for it),
    // or loads the newer pointer.
    Inside() { detail::g_executors_inside.fetch_add(1, std::memory_order_seq_cst); }
    ~Inside() { detail::g_executors_inside.fetch_sub(1, std::memory_order_release); }
  } inside;
  return fn(detail::g_published.load(std::memory_order_seq_cst));
}

}  // namespace repatch::engine

#endif  // REPATCH_ENGINE_TRANSACTION_H_
