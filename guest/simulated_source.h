// The simulated hint source: the guest's simulated hypervisor (guest/hypervisor.h) as the host.
//
// It lives with the guest, above the triggers, since it reads the guest's hypervisor: built in the
// repatch_guest_simulated_source object library, not in the installed library.
#ifndef REPATCH_GUEST_SIMULATED_SOURCE_H_
#define REPATCH_GUEST_SIMULATED_SOURCE_H_

#include <memory>
#include <vector>

#include "repatch/triggers.h"
#include "sync/vcpu.h"

namespace repatch::triggers {

/// A source whose readings come from hypervisor::steal_ns() and hypervisor::preemptions() of
/// `vcpus`: steal_percent is the steal time accounted since the previous reading over the wall
/// time elapsed times the number of vCPUs (max_cpu_steal_percent: the vCPU that lost the most),
/// preemptions those that ended since the previous reading, runnable the vCPUs not parked now and
/// allowed_cpus the number of vCPUs. A preemption's steal is accounted when it ends, as a guest
/// reads it from its steal-time record after it runs again. The first reading has no steal.
/// `clock` stamps readings and measures the elapsed time. `vcpus` must not be empty.
std::unique_ptr<HintSource> make_simulated_source(std::vector<sync::VcpuId> vcpus,
                                                  Clock clock = steady_clock());

}  // namespace repatch::triggers

#endif  // REPATCH_GUEST_SIMULATED_SOURCE_H_
