#include "guest/tlb.h"

#include <sched.h>

#include <atomic>

#include "guest/preempted.h"
#include "guest/tlb_group_state.h"
#include "repatch/in_op.h"

namespace repatch::tlb {
namespace {

// Spins (with PAUSE) before a waiting shooter starts yielding the CPU. A target that is running
// answers an NMI within microseconds; one that is not (preempted, or sharing our core) needs the
// CPU we would spin on, so past this we give it away on every round (H9).
inline constexpr int kSpinRounds = 64;

sync::VcpuId current_id_or(sync::VcpuId fallback, bool* is_vcpu) {
  const sync::Vcpu* self = sync::Vcpu::current();
  *is_vcpu = self != nullptr;
  return self != nullptr ? self->id() : fallback;
}

// The paravirt test of one target: if its slot says preempted, leave a flush-on-resume mark and
// do not wait. The mark is stored before `preempted` is read again, and the hypervisor's resume
// path clears `preempted` before its on-resume hook reads the mark (all seq_cst): so either this
// sees the target running again (and waits for it as native does) or the target's resume hook
// sees the mark (and flushes before guest code runs).
bool leave_mark_if_preempted(sync::VcpuId target) {
  if (!hypervisor::preempted(target).load(std::memory_order_seq_cst)) return false;
  set_resume_mark(target);
  return hypervisor::preempted(target).load(std::memory_order_seq_cst);
}

void shootdown(Shootdown* request, bool paravirt) {
  // A shootdown waits for other vCPUs for as long as they take: a switch of the group must not
  // rewrite its sites (or drain its marks) under it (H7).
  const OpInFlight in_op(repatch_group_tlb);
  // A thread that passed the site before a switch fenced it opens its mark only now, unseen by the
  // switch (repatch/in_op.h): the group may be switching to native, or have switched, draining
  // every flush-on-resume mark. A mark left now could outlive the drain with nobody to honour it
  // (the native resume hook knows no marks), so a pv body that is not current waits as native
  // does, which is correct in both variants.
  if (paravirt && !in_op.variant_current(kPvVariant)) paravirt = false;
  bool is_vcpu = false;
  const sync::VcpuId self = current_id_or(0, &is_vcpu);
  request->waited = 0;
  request->marked = 0;
  // Tickets to wait for, by vCPU; 0 = nothing to wait for. 2 KiB of stack in normal context.
  std::uint64_t tickets[sync::kMaxVcpus] = {};
  const sync::VcpuId limit = sync::slot_limit();
  bool any = false;
  for (sync::VcpuId id = 0; id < limit; ++id) {
    if (!request->targets->test(id)) continue;
    if (is_vcpu && id == self) {
      flush_range_local(self, request->first, request->count);
      continue;
    }
    // Relaxed: a free slot's TLB is nobody's; emptying it needs no ordering with its owner.
    if (sync::slot(id).tid.load(std::memory_order_relaxed) == 0) {
      flush_all_remote(id);  // for whoever takes the slot next (attach() flushes too)
      continue;
    }
    tickets[id] = post_flush(id, request->first, request->count);
    if (paravirt && leave_mark_if_preempted(id)) {
      tickets[id] = 0;
      ++request->marked;
      continue;
    }
    // A failed send is not fatal: the target also polls its mailbox at its checkpoints.
    (void)sync::send_nmi(id);
    any = true;
  }
  if (!any) return;
  for (sync::VcpuId id = 0; id < limit; ++id) {
    if (tickets[id] == 0) continue;
    for (int round = 0; served(id) < tickets[id]; ++round) {
      // Two vCPUs shooting at each other would otherwise wait for ever: serve our own mailbox
      // while we wait, as a kernel waits with interrupts enabled.
      if (is_vcpu) serve_requests(self);
      if (paravirt && leave_mark_if_preempted(id)) {
        ++request->marked;
        break;
      }
      // A vCPU that left holds no translations any more.
      if (sync::slot(id).tid.load(std::memory_order_relaxed) == 0) {
        flush_all_remote(id);
        break;
      }
      if (round < kSpinRounds) {
        __builtin_ia32_pause();
      } else {
        sched_yield();
      }
    }
    if (served(id) >= tickets[id]) ++request->waited;
  }
}

}  // namespace
}  // namespace repatch::tlb

extern "C" {
// The C bodies behind the call variants. `used`: only the thunks' assembly calls them.

__attribute__((used)) void tlb_flush_one_body(std::uint64_t page) {
  if (const repatch::sync::Vcpu* self = repatch::sync::Vcpu::current()) {
    repatch::tlb::flush_page_local(self->id(), page);
  }
}

__attribute__((used)) void tlb_native_flush_many_body(repatch::tlb::Shootdown* request) {
  repatch::tlb::shootdown(request, /*paravirt=*/false);
}

__attribute__((used)) void tlb_pv_flush_many_body(repatch::tlb::Shootdown* request) {
  repatch::tlb::shootdown(request, /*paravirt=*/true);
}

__attribute__((used)) void tlb_pv_on_resume_body() {
  if (const repatch::sync::Vcpu* self = repatch::sync::Vcpu::current()) {
    repatch::tlb::take_resume_mark(self->id());
    repatch::tlb::serve_requests(self->id());
  }
}
}

REPATCH_DEFINE_GROUP(tlb, 0, "native", "pv");

// Flushing one local entry is the same work in both variants (a guest's INVLPG needs no
// hypervisor); the op is in the group so that the whole set switches together.
REPATCH_DEFINE_OP(tlb_flush_one, tlb, native);
REPATCH_CALLEE_SAVE_THUNK(tlb_native_flush_one_thunk, tlb_flush_one_body, void);
REPATCH_CALLEE_SAVE_THUNK(tlb_pv_flush_one_thunk, tlb_flush_one_body, void);
REPATCH_CALL_VARIANT(tlb_flush_one, native, tlb_native_flush_one_thunk);
REPATCH_CALL_VARIANT(tlb_flush_one, pv, tlb_pv_flush_one_thunk);

REPATCH_DEFINE_OP(tlb_flush_many, tlb, native);
REPATCH_CALLEE_SAVE_THUNK(tlb_native_flush_many_thunk, tlb_native_flush_many_body, void);
REPATCH_CALLEE_SAVE_THUNK(tlb_pv_flush_many_thunk, tlb_pv_flush_many_body, void);
REPATCH_CALL_VARIANT(tlb_flush_many, native, tlb_native_flush_many_thunk);
REPATCH_CALL_VARIANT(tlb_flush_many, pv, tlb_pv_flush_many_thunk);

// Native has nothing to do on resume: it leaves no marks. A 4-byte NOP, padded to the site.
REPATCH_DEFINE_OP(tlb_on_resume, tlb, native);
REPATCH_INLINE_VARIANT(tlb_on_resume, native, "nopl 0(%rax)");
REPATCH_CALLEE_SAVE_THUNK(tlb_pv_on_resume_thunk, tlb_pv_on_resume_body, void);
REPATCH_CALL_VARIANT(tlb_on_resume, pv, tlb_pv_on_resume_thunk);

namespace repatch::tlb {

void resume_hook(sync::VcpuId /*self*/) {
  on_resume();
}

std::uint32_t remap(std::uint64_t page, std::uint32_t frame, const CpuMask& targets,
                    Shootdown* report) {
  const std::uint32_t generation = pte_update(page, frame);
  Shootdown request{&targets, page, 1};
  flush_many(&request);
  // Only now: every target has flushed or will before it runs again.
  pte_mark_flushed(page, generation);
  if (report != nullptr) *report = request;
  return generation;
}

void flush_local(std::uint64_t page) {
  flush_one(page);
}

void attach() {
  if (const sync::Vcpu* self = sync::Vcpu::current()) {
    flush_all_local(self->id());
    take_resume_mark(self->id());
  }
}

Translation translate(std::uint64_t page) {
  if (const sync::Vcpu* self = sync::Vcpu::current()) return translate(self->id(), page);
  const Pte pte = pte_load(page);
  return {pte_frame(pte), pte_generation(pte), false};
}

void checkpoint() {
  if (const sync::Vcpu* self = sync::Vcpu::current()) serve_requests(self->id());
}

void on_interrupt(sync::VcpuId self) {
  serve_requests(self);
}

}  // namespace repatch::tlb
