// The TLB group of the guest: flushing translations on one vCPU and on many (shootdown), and what a
// vCPU runs when the hypervisor resumes it.
//
//  group tlb {native, pv}
//    tlb_flush_one(page)         native: call (flush the entry)   pv: call (the same)
//    tlb_flush_many(Shootdown*)  native: call (post, NMI, wait     pv: call (as native, but a
//    target
//                                for every target's ack)          whose slot says preempted gets a
//                                                                 flush-on-resume mark instead of a
//                                                                 wait)
//    tlb_on_resume()             native: inline nop               pv: call (honour the mark and any
//                                                                 request posted meanwhile)
//
// Why paravirt wins when oversubscribed: a native shootdown waits for every target to acknowledge,
// and a target the hypervisor has preempted acknowledges only when it runs again, milliseconds
// later. The paravirt one leaves the flush to the target's resume path and returns at once.
//
// Delivery of a flush request (the IPI signal belongs to stop-machine, so it is not used): the
// sender posts the range in the target's mailbox (tlb_cpu.h) and sends an NMI. The target honours
// it at its next checkpoint() or in its NMI handler, which must call on_interrupt() (the NMI hook
// is a single process-wide slot, sync::set_nmi_handler, so this module does not take it: the
// program's NMI handler calls on_interrupt(self) among whatever else it does). A target with no
// such NMI handler still honours requests at its checkpoints.
//
// The invariant: once tlb_flush_many returns, no target uses a translation older than the
// page-table updates made before it was called. translate() checks every translation against the
// page's last completed shootdown and counts violations (tlb_cpu.h).
//
// Every function here runs on a vCPU (sync::Vcpu) unless it says otherwise; on other threads the
// TLB functions do nothing and translate() reads the page table directly.
#ifndef REPATCH_GUEST_TLB_H_
#define REPATCH_GUEST_TLB_H_

#include <cstdint>

#include "guest/tlb_cpu.h"
#include "guest/tlb_page_table.h"
#include "repatch/op.h"
#include "sync/vcpu.h"

namespace repatch::tlb {

/// Variant indices of group `tlb`, as GroupState sees them.
inline constexpr int kNativeVariant = 0;
inline constexpr int kPvVariant = 1;

/// A set of vCPUs.
struct CpuMask {
  std::uint64_t bits[sync::kMaxVcpus / 64] = {};
  void set(sync::VcpuId id) { bits[id / 64] |= std::uint64_t{1} << (id % 64); }
  bool test(sync::VcpuId id) const { return ((bits[id / 64] >> (id % 64)) & 1) != 0; }
};

/// A shootdown: its arguments, and what the op reports back.
struct Shootdown {
  const CpuMask* targets;  ///< may include the caller, which flushes locally
  std::uint64_t first;     ///< first page
  std::uint64_t count;     ///< pages
  // Written by the op:
  std::uint32_t waited = 0;  ///< targets it waited for (acknowledged before it returned)
  std::uint32_t marked = 0;  ///< preempted targets left a flush-on-resume mark (pv only)
};

}  // namespace repatch::tlb

REPATCH_DECLARE_GROUP(tlb);
REPATCH_DECLARE_OP(tlb_flush_one, 8);
REPATCH_DECLARE_OP(tlb_flush_many, 8);
REPATCH_DECLARE_OP(tlb_on_resume, 8);

namespace repatch::tlb {

// The sites. always_inline: each site then lives in the function that runs the op, at any
// optimisation level. Code that uses them must be built with repatch_site_code().

/// Flushes `page` from the calling vCPU's TLB.
[[gnu::always_inline]] inline void flush_one(std::uint64_t page) {
  REPATCH_SITE(tlb_flush_one, (), "D"(page));
}

/// Flushes `request->count` pages from `request->first` on every vCPU in `request->targets` and
/// returns when none of them can use the old translations any more (native: every target has
/// acknowledged; pv: every target has acknowledged or carries a flush-on-resume mark). Normal
/// context only: it waits (yielding the CPU) for other vCPUs.
[[gnu::always_inline]] inline void flush_many(Shootdown* request) {
  REPATCH_SITE(tlb_flush_many, (), "D"(request));
}

/// What the calling vCPU runs when the hypervisor resumes it, before guest code.
[[gnu::always_inline]] inline void on_resume() {
  REPATCH_SITE(tlb_on_resume, ());
}

// Out-of-line functions, each holding a site, for callers that need a function pointer or do not
// want sites in their own code.

/// The hypervisor's resume hook (hypervisor::set_resume_hook): runs tlb_on_resume on `self`, the
/// calling vCPU. Async-signal-safe.
void resume_hook(sync::VcpuId self);

/// Points `page` at `frame` and shoots the old translation down on `targets`; returns the new
/// generation. `report`, when not null, receives what the shootdown did. Normal context.
std::uint32_t remap(std::uint64_t page, std::uint32_t frame, const CpuMask& targets,
                    Shootdown* report = nullptr);

/// Flushes `page` on the calling vCPU (tlb_flush_one).
void flush_local(std::uint64_t page);

// Not ops: the same in both variants.

/// Starts the calling vCPU with an empty TLB and no mark. A thread calls it once after
/// sync::Vcpu::enter(), before it translates: slots are reused, TLBs with them.
void attach();

/// Translates `page` for the calling vCPU (see tlb_cpu.h: translate). On a thread that is not a
/// vCPU: the page table, uncached.
Translation translate(std::uint64_t page);

/// Honours the calling vCPU's pending flush requests: what a guest loop calls at its checkpoints
/// (where a kernel would have interrupts enabled).
void checkpoint();

/// Honours `self`'s pending flush requests from its NMI handler: call it from the function given
/// to sync::set_nmi_handler. Async-signal-safe.
void on_interrupt(sync::VcpuId self);

}  // namespace repatch::tlb

#endif  // REPATCH_GUEST_TLB_H_
