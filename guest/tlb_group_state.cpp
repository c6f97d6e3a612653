#include "guest/tlb_group_state.h"

#include "base/fixed_line.h"
#include "base/test_hooks.h"
#include "guest/tlb.h"
#include "guest/tlb_cpu.h"
#include "sync/vcpu.h"

namespace repatch::tlb {
namespace {

using Line = text::FixedLine;

// constinit: ready before any constructor runs, so an executor may use it at any time, and no
// guard variable sits in the way of a signal handler.
constinit TlbGroupState g_state;

const char* variant_name(int variant) {
  return variant == kNativeVariant ? "native" : variant == kPvVariant ? "pv" : "?";
}

}  // namespace

bool TlbGroupState::can_convert(int from, int to, char* why, std::size_t size) noexcept {
  const sync::VcpuId limit = sync::slot_limit();
  for (sync::VcpuId id = 0; id < limit; ++id) {
    const std::uint8_t mark = resume_mark(id);
    if (mark == kNoMark || mark == kFlushOnResume) continue;
    Line(why, size)
        .text("tlb: the flush-on-resume mark of vCPU ")
        .dec(id)
        .text(" holds ")
        .dec(mark)
        .text(
            ", neither 0 (none) nor 1 (flush on resume), so what that vCPU's TLB owes is "
            "unknown and cannot be carried from '")
        .text(variant_name(from))
        .text("' to '")
        .text(variant_name(to))
        .text("'; restart the guest");
    return false;
  }
  return true;
}

void TlbGroupState::convert(int from, int to) noexcept {
  if (from != kPvVariant || to != kNativeVariant) return;
  if (test::disabled(test::Handler::kTlbDrain)) return;
  // Every slot ever used, not only online vCPUs: a vCPU parked by the hypervisor or offline may be
  // exactly the one holding a mark.
  const sync::VcpuId limit = sync::slot_limit();
  for (sync::VcpuId id = 0; id < limit; ++id) {
    if (drain_resume_mark(id)) drained_.fetch_add(1, std::memory_order_relaxed);  // statistics
  }
}

TlbGroupState& group_state() {
  return g_state;
}

}  // namespace repatch::tlb
