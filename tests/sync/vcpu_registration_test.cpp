// The public registration of vCPUs (repatch/vcpu.h): what a program's own threads use.
#include <gtest/gtest.h>

#include <thread>
#include <utility>

#include "repatch/vcpu.h"
#include "sync/vcpu.h"

namespace repatch {
namespace {

TEST(VcpuRegistration, RegistersTheThreadForItsLifetime) {
  std::thread([] {
    ASSERT_EQ(sync::Vcpu::current(), nullptr);
    {
      Result<VcpuRegistration> vcpu = VcpuRegistration::enter();
      ASSERT_TRUE(vcpu.ok()) << vcpu.error().to_string();
      ASSERT_NE(sync::Vcpu::current(), nullptr);
      EXPECT_EQ(sync::Vcpu::current()->id(), vcpu.value().id());
      EXPECT_TRUE(sync::slot(vcpu.value().id()).online.load());
      vcpu.value().quiescent_state();
      vcpu.value().go_offline();
      EXPECT_FALSE(sync::slot(vcpu.value().id()).online.load());
      vcpu.value().go_online();
      EXPECT_TRUE(sync::slot(vcpu.value().id()).online.load());
    }
    EXPECT_EQ(sync::Vcpu::current(), nullptr) << "still a vCPU after the registration ended";
  }).join();
}

TEST(VcpuRegistration, ASecondRegistrationOfOneThreadIsRefused) {
  std::thread([] {
    Result<VcpuRegistration> first = VcpuRegistration::enter();
    ASSERT_TRUE(first.ok()) << first.error().to_string();
    Result<VcpuRegistration> second = VcpuRegistration::enter();
    ASSERT_FALSE(second.ok());
    EXPECT_EQ(second.error().code(), ErrorCode::kState);
  }).join();
}

TEST(VcpuRegistration, MovesKeepOneRegistration) {
  std::thread([] {
    Result<VcpuRegistration> vcpu = VcpuRegistration::enter();
    ASSERT_TRUE(vcpu.ok()) << vcpu.error().to_string();
    const std::uint16_t id = vcpu.value().id();
    {
      VcpuRegistration moved = std::move(vcpu).value();
      EXPECT_EQ(moved.id(), id);
      EXPECT_NE(sync::Vcpu::current(), nullptr);
    }
    EXPECT_EQ(sync::Vcpu::current(), nullptr) << "the moved-to registration did not unregister";
  }).join();
}

}  // namespace
}  // namespace repatch
