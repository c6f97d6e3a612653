#include "engine/transaction.h"

#include <algorithm>
#include <cstring>

#include "arch/x86/code_store.h"
#include "base/test_hooks.h"
#include "engine/group_phase.h"
#include "sync/realtime.h"
#include "sync/vcpu.h"

namespace repatch::engine {

namespace detail {
std::atomic<Transaction*> g_published{nullptr};
std::atomic<std::uint32_t> g_executors_inside{0};
}  // namespace detail

Transaction::Transaction(std::vector<SitePlan> sites, std::vector<TrackedGroup> tracked,
                         SwitchWriter writer, std::vector<StateChange> states,
                         std::chrono::nanoseconds in_op_deadline)
    : sites_(std::move(sites)),
      tracked_(std::move(tracked)),
      writer_(writer),
      states_(std::move(states)),
      in_op_deadline_(in_op_deadline) {
  for (const TrackedGroup& t : tracked_)
    tracked_bits_ |= 1u << t.group;
}

const SitePlan* Transaction::site_at(std::uintptr_t address) const noexcept {
  const auto it =
      std::lower_bound(sites_.begin(), sites_.end(), address,
                       [](const SitePlan& site, std::uintptr_t a) { return site.address < a; });
  return it != sites_.end() && it->address == address ? &*it : nullptr;
}

bool Transaction::inside_site(std::uintptr_t rip) const noexcept {
  // The last site starting at or below rip.
  const auto it =
      std::upper_bound(sites_.begin(), sites_.end(), rip,
                       [](std::uintptr_t a, const SitePlan& site) { return a < site.address; });
  if (it == sites_.begin()) return false;
  const SitePlan& site = *(it - 1);
  return rip > site.address && rip < site.address + site.to.length;
}

namespace {

// Whether the `n` bytes at `code` equal `image`, for 4 <= n <= 16, without a call: two loads that
// overlap in the middle, neither of which reaches outside the site (a site may end its page).
template <typename Word>
bool same_ends(const std::uint8_t* code, const std::uint8_t* image, std::size_t n) {
  Word a, b, c, d;
  __builtin_memcpy(&a, code, sizeof a);
  __builtin_memcpy(&b, image, sizeof b);
  __builtin_memcpy(&c, code + n - sizeof c, sizeof c);
  __builtin_memcpy(&d, image + n - sizeof d, sizeof d);
  return a == b && c == d;
}

bool same_bytes(std::uintptr_t address, const x86::Image& image) {
  const auto* code = reinterpret_cast<const std::uint8_t*>(address);  // NOLINT
  return image.length >= 8 ? same_ends<std::uint64_t>(code, image.bytes.data(), image.length)
                           : same_ends<std::uint32_t>(code, image.bytes.data(), image.length);
}

}  // namespace

bool Transaction::sites_hold_old() const noexcept {
  // Sites are 6 to 15 bytes long (Catalog::build checks it).
  for (const SitePlan& site : sites_) {
    if (!same_bytes(site.address, site.from)) return false;
  }
  return true;
}

OpThread Transaction::thread_in_op() const noexcept {
  return find_thread_in_op(tracked_bits_);
}

bool Transaction::this_thread_in_op() const noexcept {
  return engine::this_thread_in_op(tracked_bits_);
}

namespace {

// The attempt the calling thread announced and has not yet released: it is that attempt's
// primary. Initial-exec, for the #BP handler (primary_at_work()).
[[gnu::tls_model("initial-exec")]] thread_local const Transaction* t_announced = nullptr;

std::int64_t steady_ns() noexcept {
  // steady_clock reads CLOCK_MONOTONIC through the vDSO: no lock, async-signal-safe.
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

bool Transaction::wait_until_no_thread_in_op() noexcept {
  for (;;) {
    const OpThread busy = thread_in_op();
    if (busy == kNoOpThread) return true;
    if (direction() != Direction::kUndecided) return false;
    // Relaxed: the primary stores it before it publishes the attempt (seq_cst), and an executor
    // found the attempt through the published pointer.
    const std::int64_t fenced_at = fenced_at_ns_.load(std::memory_order_relaxed);
    if (fenced_at != 0 && steady_ns() - fenced_at >= in_op_deadline_.count() &&
        !test::disabled(test::Handler::kInOpDeadline)) {
      in_op_culprit_.store(busy, std::memory_order_relaxed);
      return false;
    }
    // The thread inside the op needs a CPU to leave it; with more threads than CPUs it may be ours.
    // Waiting is work on the attempt: threads that trap meanwhile give way to it.
    beat();
    sync::relax();
  }
}

bool Transaction::swap_byte(const SitePlan& site, std::uint8_t expected,
                            std::uint8_t desired) noexcept {
  // The W^X hazard test's naive writer sits behind the poker's virtual call; everything else goes
  // straight through the alias, with no call per site.
  if (test::disabled(test::Handler::kWxAlias)) {
    return site.poker->compare_exchange_byte(site.address, expected, desired);
  }
  return x86::compare_exchange_code_byte(site.address + site.alias_delta, expected, desired);
}

void Transaction::announce() noexcept {
  fenced_at_ns_.store(steady_ns(), std::memory_order_relaxed);
  t_announced = this;
  // Before the attempt is published: an executor can find it only after this (a thread whose
  // trap on the previous attempt is handled late included), so every executor's in-op scan comes
  // after the announcement (group_phase.h has the Dekker pair).
  for (const TrackedGroup& t : tracked_)
    announce_group_switch(t.group);
}

void Transaction::primary_wrote(test::Point point, std::uint32_t sites_done) noexcept {
  beat();
  test::inject(point, sites_done);
}

void Transaction::fence(bool primary) noexcept {
  std::uint32_t done = 0;
  for (const SitePlan& site : sites_) {
    swap_byte(site, site.from.bytes[0], x86::kInt3);
    if (primary) primary_wrote(test::Point::kFenceWrite, ++done);
  }
}

Direction Transaction::decide(Direction wish) noexcept {
  Direction expected = Direction::kUndecided;
  // acq_rel: the winner's fence writes happen before anyone acts on the direction; a loser
  // acquires the winner's.
  if (direction_.compare_exchange_strong(expected, wish, std::memory_order_acq_rel)) return wish;
  return expected;
}

// Tails and heads are plain stores (a few per site, no locked instruction): they only run once the
// direction is forward, after the writer's own fence pass, and every writer of the attempt stores
// the same new bytes, so a late store repeats a value already there.
void Transaction::write_tails(bool primary) noexcept {
  std::uint32_t done = 0;
  for (const SitePlan& site : sites_) {
    x86::store_code_bytes(site.address + 1 + site.alias_delta, site.to.bytes.data() + 1,
                          site.to.length - 1u);
    if (primary) primary_wrote(test::Point::kTailWrite, ++done);
  }
}

void Transaction::write_heads(bool primary) noexcept {
  std::uint32_t done = 0;
  for (const SitePlan& site : sites_) {
    x86::store_code_bytes(site.address + site.alias_delta, site.to.bytes.data(), 1);
    if (primary) primary_wrote(test::Point::kHeadWrite, ++done);
  }
}

void Transaction::unfence() noexcept {
  for (const SitePlan& site : sites_) {
    swap_byte(site, x86::kInt3, site.from.bytes[0]);
  }
}

void Transaction::release() noexcept {
  if (t_announced == this) t_announced = nullptr;
  const bool forward = direction() == Direction::kForward;
  for (const TrackedGroup& t : tracked_)
    settle_group_phase(t.group, forward ? t.to : t.from);
}

bool Transaction::states_convertible() noexcept {
  for (const StateChange& change : states_) {
    char why[sizeof refusal_];
    why[0] = '\0';
    if (change.state->can_convert(change.from, change.to, why, sizeof why)) continue;
    if (!refusal_claimed_.exchange(true, std::memory_order_relaxed)) {
      why[sizeof why - 1] = '\0';
      __builtin_memcpy(refusal_, why, sizeof why);
      refusal_ready_.store(true, std::memory_order_release);  // pairs with refusal()
    }
    return false;
  }
  return true;
}

void Transaction::convert_states() noexcept {
  for (const StateChange& change : states_)
    change.state->convert(change.from, change.to);
}

bool Transaction::enter_writing() noexcept {
  // A closed attempt still takes writers while some remain: the closer is waiting for them anyway,
  // and the one still writing may be the very code this trap interrupted on the same thread (a
  // signal handler that ran a site while its thread was between two steps), which can go on only
  // once someone finishes those steps. Once the count has been seen at zero after the close,
  // nobody enters again.
  //
  // seq_cst compare-and-swap on the one word close_and_drain_writers() closes: either this comes
  // first in the word's order (and the closer waits for our leave_writing()), or the closer's
  // zero does (and we see it and write nothing).
  std::uint32_t seen = writers_.load(std::memory_order_seq_cst);
  do {
    if (seen == kClosed) return false;
  } while (!writers_.compare_exchange_weak(seen, seen + 1, std::memory_order_seq_cst));
  return true;
}

void Transaction::leave_writing() noexcept {
  // Release: every byte and state word this executor wrote happens before the closer's acquire
  // load that sees it gone, and so before the next attempt's first write.
  writers_.fetch_sub(1, std::memory_order_release);
}

void Transaction::close_and_drain_writers() noexcept {
  writers_.fetch_or(kClosed, std::memory_order_seq_cst);
  // Acquire pairs with leave_writing()'s release.
  while ((writers_.load(std::memory_order_acquire) & ~kClosed) != 0)
    sync::relax();
}

namespace {
// The last beat a thread saw of an attempt, and when it first saw that beat. Initial-exec: read
// in the #BP handler, where a TLS access must neither allocate nor take a lock.
struct SeenBeat {
  const Transaction* attempt;
  std::uint64_t beats;
  std::int64_t since_ns;
};
[[gnu::tls_model("initial-exec")]] thread_local SeenBeat t_seen_beat = {nullptr, 0, 0};
}  // namespace

bool Transaction::primary_at_work() const noexcept {
  if (t_announced == this) return false;  // the primary's own thread
  const std::uint64_t beats = beats_.load(std::memory_order_relaxed);
  const std::int64_t now = steady_ns();
  SeenBeat& seen = t_seen_beat;
  if (seen.attempt != this || seen.beats != beats) {
    // A new attempt (an address reused by a later one only makes us finish it sooner), or the
    // primary has moved on since we last looked.
    seen = {this, beats, now};
    return true;
  }
  return now - seen.since_ns < std::chrono::nanoseconds(kPrimaryStall).count();
}

void publish_attempt(Transaction* transaction) noexcept {
  // seq_cst: pairs with with_published (see there), for no_executor_inside().
  detail::g_published.store(transaction, std::memory_order_seq_cst);
}

bool still_published(const Transaction* transaction) noexcept {
  // seq_cst: after the caller's read of a site's first byte (see handle_site_trap).
  return detail::g_published.load(std::memory_order_seq_cst) == transaction;
}

bool no_executor_inside() noexcept {
  return detail::g_executors_inside.load(std::memory_order_seq_cst) == 0;
}

void drain_executors() noexcept {
  while (!no_executor_inside())
    sync::relax();
}

void PublishedAttempts::keep(std::unique_ptr<Transaction> attempt) {
  if (current_ != nullptr) retired_.push_back(std::move(current_));
  current_ = std::move(attempt);
  // Everything in retired_ was replaced in g_published before this load (publish_attempt ran
  // before keep): a thread counted out now cannot hold one, and a thread counting in later loads
  // a newer pointer.
  if (no_executor_inside()) retired_.clear();
}

bool PublishedAttempts::touches(const CodeObject* object) const {
  const auto in_object = [object](const std::unique_ptr<Transaction>& attempt) {
    return attempt != nullptr &&
           std::any_of(attempt->sites().begin(), attempt->sites().end(),
                       [object](const SitePlan& site) { return site.object == object; });
  };
  return in_object(current_) || std::any_of(retired_.begin(), retired_.end(), in_object);
}

void PublishedAttempts::drop_all() {
  drain_executors();
  retired_.clear();
  current_.reset();
}

}  // namespace repatch::engine
