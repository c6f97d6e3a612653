#include "repatch/in_op.h"

#include "engine/engine_impl.h"
#include "engine/group_phase.h"
#include "sync/vcpu.h"

namespace repatch {

OpInFlight::OpInFlight(const abi::GroupDesc& group) noexcept
    : depth_(nullptr), phase_(kPhaseUnknown) {
  const Engine::Impl* impl = booted_impl();
  if (impl == nullptr) return;
  const auto groups = impl->catalog.groups();
  const std::size_t tracked = std::min(groups.size(), sync::kMaxTrackedGroups);
  for (std::size_t g = 0; g < tracked; ++g) {
    if (groups[g].desc != &group) continue;
    if (const sync::Vcpu* self = sync::Vcpu::current()) {
      depth_ = &sync::slot(self->id()).in_op[g];
      // seq_cst (a locked add): the op's later loads and its sites cannot be reached before the
      // mark is visible to a switch primary that scans after its fence (Transaction::vcpu_in_op),
      // and the phase word is read after it: the body's half of group_phase.h's Dekker pair.
      depth_->fetch_add(1, std::memory_order_seq_cst);
    }
    phase_ = engine::group_phase(static_cast<engine::GroupIndex>(g));
    return;
  }
}

OpInFlight::~OpInFlight() {
  // Release: the op's effects are visible to whoever sees the depth drop.
  if (depth_ != nullptr) depth_->fetch_sub(1, std::memory_order_release);
}

}  // namespace repatch
