#include "repatch/vcpu.h"
#include "sync/vcpu.h"

namespace repatch {

Result<VcpuRegistration> VcpuRegistration::enter() {
  Result<std::unique_ptr<sync::Vcpu>> vcpu = sync::Vcpu::enter();
  if (!vcpu.ok()) return vcpu.error();
  return VcpuRegistration(std::move(vcpu).value());
}

VcpuRegistration::VcpuRegistration(std::unique_ptr<sync::Vcpu> vcpu) : vcpu_(std::move(vcpu)) {}
VcpuRegistration::~VcpuRegistration() = default;
VcpuRegistration::VcpuRegistration(VcpuRegistration&&) noexcept = default;
VcpuRegistration& VcpuRegistration::operator=(VcpuRegistration&&) noexcept = default;

std::uint16_t VcpuRegistration::id() const {
  return vcpu_->id();
}

void VcpuRegistration::quiescent_state() {
  vcpu_->quiescent_state();
}

void VcpuRegistration::go_offline() {
  vcpu_->go_offline();
}

void VcpuRegistration::go_online() {
  vcpu_->go_online();
}

}  // namespace repatch
