#include "guest/tlb_cpu.h"

#include <algorithm>
#include <atomic>
#include <limits>

#include "base/test_hooks.h"

namespace repatch::tlb {
namespace {

inline constexpr std::uint64_t kNoPage = std::numeric_limits<std::uint64_t>::max();

// A mailbox's pending range [lo, hi) is one word, lo in the low half and hi in the high half, so
// that a sender merges its range into it, and the owner takes all of it, in one atomic step each.
//
// It was two words, range_lo lowered and then range_hi raised, and a serve could run between a
// sender's two merges: vCPU X posts page 3 (ticket t1, pending); vCPU Y, shooting down page 144,
// finds range_lo already at 3 and leaves it, and is interrupted (an NMI, a preemption by the
// hypervisor, the host's scheduler) before it raises range_hi; the target serves t1, taking
// range_lo = 3 and range_hi = 4 and flushing page 3 alone; Y raises range_hi to 145 and takes
// ticket t2; the target's next serve finds range_lo empty and range_hi 145, flushes nothing, and
// marks t2 served; Y's shootdown returns, page 144's flushed generation moves past what the
// target's TLB still holds, and its next translation of page 144 is stale (the report of the
// one-hour soak, docs/stress.md, has this form). Whole words cannot be split that way.
inline constexpr std::uint64_t kRangeLimit = 0xffff'ffffu;  // the largest value of a half
inline constexpr std::uint64_t kNoRange = kRangeLimit;      // lo = kRangeLimit, hi = 0: empty

constexpr std::uint64_t range_word(std::uint64_t lo, std::uint64_t hi) {
  return (hi << 32) | lo;
}
constexpr std::uint64_t range_lo(std::uint64_t word) {
  return word & kRangeLimit;
}
constexpr std::uint64_t range_hi(std::uint64_t word) {
  return word >> 32;
}

struct Entry {
  std::atomic<std::uint64_t> page{kNoPage};
  std::atomic<Pte> pte{0};
  std::atomic<std::uint64_t> epoch{0};  // valid while equal to the vCPU's epoch (which starts at 1)
};

struct alignas(64) Cpu {
  // Owner side: read on every translation.
  std::atomic<std::uint64_t> epoch{1};
  std::atomic<std::uint64_t> flushes{0};
  std::atomic<std::uint32_t> serving{0};  // serve_requests nesting on the owner's thread
  Entry entries[kTlbEntries];
  // Sender side, on its own line: shooters write it while the owner translates.
  alignas(64) std::atomic<std::uint64_t> requested{0};
  std::atomic<std::uint64_t> served{0};
  std::atomic<std::uint64_t> pending{kNoRange};  // range_word(lo, hi)
  std::atomic<std::uint8_t> mark{kNoMark};
  // Statistics.
  alignas(64) std::atomic<std::uint64_t> hits{0};
  std::atomic<std::uint64_t> misses{0};
  std::atomic<std::uint64_t> stale_reads{0};
  std::atomic<std::uint64_t> full_flushes{0};
  std::atomic<std::uint64_t> remote_flushes{0};
  std::atomic<std::uint64_t> requests_served{0};
  std::atomic<std::uint64_t> resume_flushes{0};
};

Cpu g_cpus[sync::kMaxVcpus];

Cpu& cpu(sync::VcpuId id) {
  return g_cpus[id % sync::kMaxVcpus];
}

// The owner's TLB is touched by the owner's thread and by handlers that interrupt it; a handler
// sees the interrupted code's stores in program order as long as the compiler keeps that order.
inline void compiler_order() {
  std::atomic_signal_fence(std::memory_order_seq_cst);
}

void count(std::atomic<std::uint64_t>& counter) {
  // Relaxed: statistics, ordered with nothing.
  counter.fetch_add(1, std::memory_order_relaxed);
}

// A flush of any kind is announced before it changes entries, so that a translate() it interrupts
// (or that runs concurrently, for the remote flush) sees the count move and starts again.
void announce_flush(Cpu& c) {
  // Relaxed for the owner's own flushes: only the owner's thread reads the count in a way that
  // matters, and compiler_order() keeps the program order a handler relies on. It is an RMW because
  // flush_all_remote() bumps it from other threads.
  c.flushes.fetch_add(1, std::memory_order_relaxed);
  compiler_order();
}

// Merges [first, end) into `target`'s pending range. A range that does not fit the halves becomes
// [0, kRangeLimit): wider than a TLB, so the owner flushes everything, which covers it.
void merge_range(Cpu& c, sync::VcpuId target, std::uint64_t first, std::uint64_t end) {
  const bool fits = end <= kRangeLimit;
  const std::uint64_t lo = fits ? first : 0;
  const std::uint64_t hi = fits ? end : kRangeLimit;
  std::uint64_t old = c.pending.load(std::memory_order_relaxed);
  for (;;) {
    test::inject(test::Point::kTlbRangeMerge, target);
    const std::uint64_t merged =
        range_word(std::min(range_lo(old), lo), std::max(range_hi(old), hi));
    // Release, and a write even when the range is already covered: a serve that takes the range
    // before this sender's ticket exists flushes for it too, so it must see the page-table update
    // made before (its refill reads the new entry).
    if (c.pending.compare_exchange_weak(old, merged, std::memory_order_release,
                                        std::memory_order_relaxed)) {
      return;
    }
  }
}

void raise_to(std::atomic<std::uint64_t>& value, std::uint64_t bound, std::memory_order order) {
  std::uint64_t old = value.load(std::memory_order_relaxed);
  while (old < bound &&
         !value.compare_exchange_weak(old, bound, order, std::memory_order_relaxed)) {
  }
}

}  // namespace

Translation translate(sync::VcpuId self, std::uint64_t page) {
  Cpu& c = cpu(self);
  Entry& e = c.entries[page % kTlbEntries];
  for (;;) {
    // Acquire pairs with flush_all_remote's seq_cst increments: a remote flush seen here has its
    // epoch bump seen by the epoch load below.
    const std::uint64_t before = c.flushes.load(std::memory_order_acquire);
    compiler_order();
    const std::uint64_t epoch = c.epoch.load(std::memory_order_acquire);
    Pte pte = 0;
    bool filled = false;
    // Relaxed entry accesses: only this thread (and its handlers, under compiler_order) uses them.
    if (e.page.load(std::memory_order_relaxed) == page &&
        e.epoch.load(std::memory_order_relaxed) == epoch) {
      pte = e.pte.load(std::memory_order_relaxed);
      count(c.hits);
    } else {
      pte = pte_load(page);
      // Invalidate first, then fill, then name the page: a handler that flushes this entry midway
      // leaves it invalid or refilled below, never a mix.
      e.page.store(kNoPage, std::memory_order_relaxed);
      compiler_order();
      e.pte.store(pte, std::memory_order_relaxed);
      e.epoch.store(epoch, std::memory_order_relaxed);
      compiler_order();
      e.page.store(page, std::memory_order_relaxed);
      filled = true;
      count(c.misses);
    }
    compiler_order();
    const std::uint32_t flushed = pte_flushed(page);
    // Acquire fence: the entry and page-table loads above are done before the count is read again.
    std::atomic_thread_fence(std::memory_order_acquire);
    if (c.flushes.load(std::memory_order_acquire) != before) {
      // A flush landed in the middle: what was read may be what it removed, and an entry filled
      // before it must not survive it.
      if (filled) e.page.store(kNoPage, std::memory_order_relaxed);
      compiler_order();
      continue;
    }
    // No flush of this TLB between `before` and now, so the translation is as of `before`. Any
    // shootdown that completed before `flushed` was read flushed this TLB (its request was served
    // or its mark honoured or drained) before `before`, so the entry was refilled since then.
    // Older than `flushed` therefore means a shootdown returned without this vCPU flushing.
    const bool stale = pte_generation(pte) < flushed;
    if (stale) count(c.stale_reads);
    return {pte_frame(pte), pte_generation(pte), stale};
  }
}

void flush_page_local(sync::VcpuId self, std::uint64_t page) {
  Cpu& c = cpu(self);
  announce_flush(c);
  Entry& e = c.entries[page % kTlbEntries];
  if (e.page.load(std::memory_order_relaxed) == page) {
    e.page.store(kNoPage, std::memory_order_relaxed);
  }
  compiler_order();
}

void flush_range_local(sync::VcpuId self, std::uint64_t first, std::uint64_t count_pages) {
  if (count_pages == 0) return;
  if (count_pages > kTlbEntries) {
    flush_all_local(self);
    return;
  }
  for (std::uint64_t i = 0; i < count_pages; ++i) {
    flush_page_local(self, first + i);
  }
}

void flush_all_local(sync::VcpuId self) {
  Cpu& c = cpu(self);
  announce_flush(c);
  // An RMW because the drain bumps it from other threads; relaxed as in announce_flush.
  c.epoch.fetch_add(1, std::memory_order_relaxed);
  compiler_order();
  count(c.full_flushes);
}

void flush_all_remote(sync::VcpuId target) {
  Cpu& c = cpu(target);
  // Epoch first, then the count, both seq_cst: an owner whose translate() reads the new count
  // (acquire) also reads the new epoch; one that reads the old count linearises before the flush,
  // or reads the new count on its second load and starts again.
  c.epoch.fetch_add(1, std::memory_order_seq_cst);
  c.flushes.fetch_add(1, std::memory_order_seq_cst);
  count(c.remote_flushes);
}

std::uint64_t post_flush(sync::VcpuId target, std::uint64_t first, std::uint64_t count_pages) {
  Cpu& c = cpu(target);
  const std::uint64_t end = count_pages > kNoPage - first ? kNoPage : first + count_pages;
  merge_range(c, target, first, end);
  // seq_cst: the range merge above and the page-table update before it are published to the owner
  // that reads this ticket (serve_requests, acquire or stronger); and it orders the ticket before
  // the sender's later seq_cst load of the target's `preempted` flag (the paravirt shootdown).
  return c.requested.fetch_add(1, std::memory_order_seq_cst) + 1;
}

std::uint64_t served(sync::VcpuId target) {
  // Acquire pairs with the release in serve_requests: the flush is done.
  return cpu(target).served.load(std::memory_order_acquire);
}

bool serve_requests(sync::VcpuId self) {
  Cpu& c = cpu(self);
  // seq_cst pairs with post_flush's increment (see there).
  const std::uint64_t wanted = c.requested.load(std::memory_order_seq_cst);
  if (wanted <= c.served.load(std::memory_order_relaxed)) return false;
  const bool nested = c.serving.fetch_add(1, std::memory_order_relaxed) != 0;
  compiler_order();
  // Every range posted with a ticket up to `wanted` was merged before that ticket was taken, so it
  // is in the word taken after `wanted`; a range merged later is taken whole (flushed early) or
  // left whole for the next serve, never split between the two.
  const std::uint64_t taken = c.pending.exchange(kNoRange, std::memory_order_acq_rel);
  const std::uint64_t lo = range_lo(taken);
  const std::uint64_t hi = range_hi(taken);
  if (nested) {
    // This handler interrupted a serve that has taken ranges it may not have flushed yet; the
    // served count below would vouch for them, so flush everything.
    flush_all_local(self);
  } else if (lo < hi) {
    flush_range_local(self, lo, hi - lo);
  }
  compiler_order();
  c.serving.fetch_sub(1, std::memory_order_relaxed);
  count(c.requests_served);
  // Release pairs with the sender's acquire in served(): the flush happens before the sender goes
  // on. Monotonic because a nested serve may already have published a newer ticket.
  raise_to(c.served, wanted, std::memory_order_release);
  return true;
}

void set_resume_mark(sync::VcpuId target) {
  // seq_cst: the paravirt shootdown's Dekker pair with the hypervisor's resume path (the store of
  // the mark, then a load of `preempted`, against the store of `preempted`, then a load of the
  // mark).
  cpu(target).mark.store(kFlushOnResume, std::memory_order_seq_cst);
}

std::uint8_t resume_mark(sync::VcpuId target) {
  return cpu(target).mark.load(std::memory_order_seq_cst);  // the other half of set_resume_mark
}

bool take_resume_mark(sync::VcpuId self) {
  Cpu& c = cpu(self);
  std::uint8_t expected = kFlushOnResume;
  // seq_cst: the owner's half of the Dekker pair (see set_resume_mark).
  if (!c.mark.compare_exchange_strong(expected, kNoMark, std::memory_order_seq_cst)) return false;
  flush_all_local(self);
  count(c.resume_flushes);
  return true;
}

bool drain_resume_mark(sync::VcpuId target) {
  Cpu& c = cpu(target);
  if (c.mark.load(std::memory_order_seq_cst) != kFlushOnResume) return false;
  // Flush before the mark goes: whoever sees it cleared may rely on the flush.
  flush_all_remote(target);
  std::uint8_t expected = kFlushOnResume;
  return c.mark.compare_exchange_strong(expected, kNoMark, std::memory_order_seq_cst);
}

void set_resume_mark_raw_for_test(sync::VcpuId target, std::uint8_t value) {
  cpu(target).mark.store(value, std::memory_order_seq_cst);
}

TlbCounters counters(sync::VcpuId target) {
  const Cpu& c = cpu(target);
  constexpr auto r = std::memory_order_relaxed;
  return {c.hits.load(r),          c.misses.load(r),         c.stale_reads.load(r),
          c.full_flushes.load(r),  c.remote_flushes.load(r), c.requests_served.load(r),
          c.resume_flushes.load(r)};
}

std::uint64_t total_stale_reads() {
  std::uint64_t total = 0;
  for (const Cpu& c : g_cpus)
    total += c.stale_reads.load(std::memory_order_relaxed);
  return total;
}

void tlbs_reset() {
  constexpr auto r = std::memory_order_relaxed;  // nobody translates; thread starts publish
  for (Cpu& c : g_cpus) {
    c.epoch.fetch_add(1, r);
    c.flushes.fetch_add(1, r);
    c.serving.store(0, r);
    c.requested.store(0, r);
    c.served.store(0, r);
    c.pending.store(kNoRange, r);
    c.mark.store(kNoMark, r);
    for (auto* counter : {&c.hits, &c.misses, &c.stale_reads, &c.full_flushes, &c.remote_flushes,
                          &c.requests_served, &c.resume_flushes}) {
      counter->store(0, r);
    }
  }
}

}  // namespace repatch::tlb
