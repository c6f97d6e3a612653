// Registering the threads that are the guest kernel's CPUs.
//
// A vCPU is a thread the program registers for its lifetime. Being one gives it what a CPU of a
// kernel has: a stop-machine switch parks it (an IPI, a real-time signal), NMIs reach it, and
// `repatch stress` and the guest's TLB and spinlock models count it. In return it is a liburcu
// QSBR reader: it reports quiescent states from its loops, and goes offline before it blocks for
// long, as urcu-qsbr asks of every reader.
//
//   void vcpu_main() {
//     repatch::Result<repatch::VcpuRegistration> vcpu = repatch::VcpuRegistration::enter();
//     if (!vcpu.ok()) return report(vcpu.error());
//     while (running) {
//       run_guest_work();
//       vcpu.value().quiescent_state();
//     }
//   }  // unregistered here
//
// Threads the program does not register (a thread pool's workers, a logging thread a library
// starts behind the program's back) may run sites too, with nothing to do: their op bodies are
// counted in the engine's in-op marks as a vCPU's are, and one that reaches a site while a switch
// has fenced it completes or waits for the switch in its #BP handler. docs/threads.md says what
// each kind of thread gets.
#ifndef REPATCH_VCPU_H_
#define REPATCH_VCPU_H_

#include <cstdint>
#include <memory>

#include "repatch/error.h"

namespace repatch {

namespace sync {
class Vcpu;
}  // namespace sync

/// The calling thread's registration as a vCPU, for the object's lifetime. Move-only.
class VcpuRegistration {
 public:
  /// Registers the calling thread and brings it online. Fails with kState when the thread is a
  /// vCPU already, kUnsupported when 256 vCPUs are registered, kSystem when its signals or its
  /// signal stack cannot be set up. The thread must not be a liburcu QSBR reader already (liburcu
  /// aborts on a second registration). Normal context.
  static Result<VcpuRegistration> enter();

  /// Unregisters (offline, out of the QSBR readers, slot freed). Must run on the thread that
  /// registered.
  ~VcpuRegistration();
  VcpuRegistration(VcpuRegistration&&) noexcept;
  VcpuRegistration& operator=(VcpuRegistration&&) noexcept;
  VcpuRegistration(const VcpuRegistration&) = delete;
  VcpuRegistration& operator=(const VcpuRegistration&) = delete;

  /// The vCPU's number, below 256; numbers are reused once freed.
  std::uint16_t id() const;

  /// Reports a quiescent state: the thread holds no RCU-protected reference. Call it from loops
  /// that do not block. Does nothing while offline.
  void quiescent_state();
  /// Goes idle before blocking (an extended quiescent state): a stop-machine switch no longer
  /// waits for this vCPU, and grace periods do not wait for it.
  void go_offline();
  /// Back from idle, before running guest code again: waits while a stop-machine switch is in
  /// progress and serialises, so that the thread never runs a half-written site.
  void go_online();

 private:
  explicit VcpuRegistration(std::unique_ptr<sync::Vcpu> vcpu);
  std::unique_ptr<sync::Vcpu> vcpu_;
};

}  // namespace repatch

#endif  // REPATCH_VCPU_H_
