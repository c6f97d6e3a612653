// The software TLB of each vCPU and the mailbox through which other vCPUs ask it to flush.
//
// Layout, per vCPU (indexed by sync::VcpuId, fixed for the life of the process):
//   entries   kTlbEntries direct-mapped entries (page % kTlbEntries), each {page, Pte, epoch}.
//             Only the owner vCPU reads and fills them, in guest code or in its own handlers.
//   epoch     an entry counts only while its epoch equals this. Bumping it flushes the whole TLB
//             in one step, which is the one flush another thread may do (GroupState's drain).
//   flushes   bumped by every flush of any kind. translate() reads it before and after it looks an
//             entry up and starts again when it moved, so a translation is atomic with respect to
//             flushes, as a real TLB lookup is atomic with respect to interrupts (it happens inside
//             one instruction): a vCPU parked or interrupted halfway through a lookup never
//             returns a translation that a flush in between removed.
//   mailbox   shootdown requests: `requested` (a ticket counter bumped by senders), `served` (the
//             newest ticket the owner has honoured) and the smallest range covering the pending
//             ones, in one word that a sender merges into and the owner takes in one step each.
//             The owner serves it at its checkpoints, in its NMI hook and on resume.
//   mark      flush-on-resume: set by the paravirt shootdown instead of waiting for a preempted
//             target; consumed by the paravirt on-resume hook or by the drain (H10).
//
// Every function here takes the vCPU explicitly and says who may call it.
#ifndef REPATCH_GUEST_TLB_CPU_H_
#define REPATCH_GUEST_TLB_CPU_H_

#include <cstdint>

#include "guest/tlb_page_table.h"
#include "sync/vcpu.h"

namespace repatch::tlb {

/// Entries per vCPU TLB. A range flush wider than this flushes everything (the kernel's
/// tlb_single_page_flush_ceiling, in miniature).
inline constexpr std::uint64_t kTlbEntries = 16;

/// Values of a vCPU's flush-on-resume mark. Anything else is corrupt (GroupState refuses it).
inline constexpr std::uint8_t kNoMark = 0;
inline constexpr std::uint8_t kFlushOnResume = 1;

/// What a translation returned.
struct Translation {
  std::uint32_t frame;
  std::uint32_t generation;  ///< the page-table generation the translation was read at
  bool stale;                ///< older than the page's last completed shootdown (counted)
};

/// Per-vCPU counters, for tests and reports. Relaxed reads of relaxed counters.
struct TlbCounters {
  std::uint64_t hits;
  std::uint64_t misses;
  std::uint64_t stale_reads;     ///< translations older than a completed shootdown: must stay 0
  std::uint64_t full_flushes;    ///< whole-TLB flushes by the owner
  std::uint64_t remote_flushes;  ///< whole-TLB flushes done for it by another thread (the drain)
  std::uint64_t requests_served;
  std::uint64_t resume_flushes;  ///< flush-on-resume marks honoured by the owner
};

/// Translates `page` on vCPU `self` through its TLB, filling the entry from the page table on a
/// miss, and checks the result against the page's last completed shootdown. Owner only (guest
/// code or the owner's handlers). Async-signal-safe.
Translation translate(sync::VcpuId self, std::uint64_t page);

/// Flushes `page` from vCPU `self`'s TLB. Owner only. Async-signal-safe.
void flush_page_local(sync::VcpuId self, std::uint64_t page);

/// Flushes pages [first, first + count) from `self`'s TLB (everything when the range is wider
/// than the TLB). Owner only. Async-signal-safe.
void flush_range_local(sync::VcpuId self, std::uint64_t first, std::uint64_t count);

/// Flushes all of `self`'s TLB. Owner only. Async-signal-safe.
void flush_all_local(sync::VcpuId self);

/// Flushes all of `target`'s TLB from any thread, without the owner's help: bumps its epoch.
/// Safe while the owner runs, is interrupted or is parked anywhere, because translate() starts
/// again when a flush lands in the middle of it. Async-signal-safe.
void flush_all_remote(sync::VcpuId target);

/// Posts a request that `target` flush [first, first + count) and returns its ticket: the request
/// is honoured once served(target) >= the ticket. Any thread. Async-signal-safe.
std::uint64_t post_flush(sync::VcpuId target, std::uint64_t first, std::uint64_t count);

/// The newest ticket `target` has honoured. Acquire: a sender that sees its ticket served knows
/// the flush is done. Async-signal-safe.
std::uint64_t served(sync::VcpuId target);

/// Honours every request posted to `self` so far (the request word is what a vCPU polls at its
/// checkpoints; the NMI hook calls this too). Owner only; may nest (a handler that interrupts a
/// serve flushes everything instead). Returns whether there was anything to do.
/// Async-signal-safe.
bool serve_requests(sync::VcpuId self);

/// Sets `target`'s flush-on-resume mark (seq_cst). Any thread. Async-signal-safe.
void set_resume_mark(sync::VcpuId target);

/// `target`'s mark, as stored (kNoMark, kFlushOnResume, or corrupt). Async-signal-safe.
std::uint8_t resume_mark(sync::VcpuId target);

/// Honours and clears `self`'s flush-on-resume mark, if set: a full local flush. Owner only.
/// Returns whether it was set. Async-signal-safe.
bool take_resume_mark(sync::VcpuId self);

/// Clears `target`'s mark after flushing its TLB remotely, if it is set: the drain of one vCPU.
/// Any thread; idempotent (a compare-and-swap from kFlushOnResume). Returns whether it drained.
/// Async-signal-safe.
bool drain_resume_mark(sync::VcpuId target);

/// Stores a raw mark value, to test that corrupt marks are refused. Tests only.
void set_resume_mark_raw_for_test(sync::VcpuId target, std::uint8_t value);

/// `target`'s counters.
TlbCounters counters(sync::VcpuId target);

/// Stale reads on every vCPU since the last reset.
std::uint64_t total_stale_reads();

/// Empties every TLB, mailbox, mark and counter. Only while no vCPU translates.
void tlbs_reset();

}  // namespace repatch::tlb

#endif  // REPATCH_GUEST_TLB_CPU_H_
