// Whether the simulated hypervisor keeps a vCPU parked now: the guest's view of steal, as a
// paravirt guest reads it from the hypervisor's shared page (KVM's steal-time record).
//
// Written only by the hypervisor's parking handler on the vCPU itself (guest/hypervisor.cpp), set
// on entry and cleared before its resume hook runs; read by the paravirt spinlock
// (vcpu_is_preempted) and the paravirt TLB shootdown. The flag belongs to the guest's hypervisor
// model, not to the vCPU layer: sync/ knows nothing of preemption.
#ifndef REPATCH_GUEST_PREEMPTED_H_
#define REPATCH_GUEST_PREEMPTED_H_

#include <atomic>

#include "sync/vcpu.h"

namespace repatch::hypervisor {

namespace detail {
inline std::atomic<bool> g_preempted[sync::kMaxVcpus] = {};
}  // namespace detail

/// vCPU `id`'s flag (`id` below sync::kMaxVcpus). Its orderings are the callers': see the
/// hypervisor's parking handler and the TLB shootdown's Dekker pair.
inline std::atomic<bool>& preempted(sync::VcpuId id) {
  return detail::g_preempted[id];
}

}  // namespace repatch::hypervisor

#endif  // REPATCH_GUEST_PREEMPTED_H_
