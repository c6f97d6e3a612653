#include "arch/x86/cpuid.h"

#include <gtest/gtest.h>

#include <fstream>
#include <set>
#include <sstream>
#include <string>

namespace {

// The first value of `key` in /proc/cpuinfo: the kernel's own reading of CPUID, to check ours.
std::string cpuinfo_field(const std::string& key) {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key, 0) == 0) {
      auto colon = line.find(':');
      if (colon != std::string::npos) {
        auto value = line.find_first_not_of(' ', colon + 1);
        return value == std::string::npos ? "" : line.substr(value);
      }
    }
  }
  return "";
}

std::set<std::string> cpuinfo_flags() {
  std::istringstream in(cpuinfo_field("flags"));
  std::set<std::string> out;
  for (std::string w; in >> w;) {
    out.insert(w);
  }
  return out;
}

TEST(Cpuid, VendorMatchesTheKernel) {
  const auto info = repatch::x86::read_cpu_info();
  EXPECT_EQ(info.vendor.size(), 12u) << info.vendor;
  const std::string kernel = cpuinfo_field("vendor_id");
  if (kernel.empty()) {
    GTEST_SKIP() << "/proc/cpuinfo has no vendor_id line";
  }
  EXPECT_EQ(info.vendor, kernel);
}

TEST(Cpuid, FeatureBitsMatchTheKernelFlags) {
  const auto flags = cpuinfo_flags();
  if (flags.empty()) {
    GTEST_SKIP() << "/proc/cpuinfo has no flags line";
  }
  const auto info = repatch::x86::read_cpu_info();
  // Flags the kernel reports straight from CPUID and has no reason to clear.
  EXPECT_EQ(info.hypervisor, flags.count("hypervisor") == 1);
  EXPECT_EQ(info.serialize, flags.count("serialize") == 1);
  EXPECT_EQ(info.clflushopt, flags.count("clflushopt") == 1);
}

TEST(Cpuid, SubleafReachesTheCpu) {
  // Leaf 0xB echoes the subleaf in ECX[7:0]; a cpuid() that dropped it would return 0 twice.
  if (repatch::x86::cpuid(0).eax < 0xb || repatch::x86::cpuid(0xb, 0).ebx == 0) {
    GTEST_SKIP() << "no CPUID leaf 0xB on this CPU";
  }
  EXPECT_EQ(repatch::x86::cpuid(0xb, 0).ecx & 0xff, 0u);
  EXPECT_EQ(repatch::x86::cpuid(0xb, 1).ecx & 0xff, 1u);
}

TEST(Cpuid, HypervisorSignatureAndKvmLeaves) {
  const auto info = repatch::x86::read_cpu_info();
  if (!info.hypervisor) {
    EXPECT_TRUE(info.hypervisor_signature.empty());
    EXPECT_EQ(info.kvm_features, 0u);
    GTEST_SKIP() << "CPUID.1:ECX[31] is clear: not running under a hypervisor";
  }
  ASSERT_FALSE(info.hypervisor_signature.empty());
  EXPECT_LE(info.hypervisor_signature.size(), 12u);
  for (char c : info.hypervisor_signature) {
    EXPECT_TRUE(c >= 0x20 && c < 0x7f) << "unprintable signature " << info.hypervisor_signature;
  }
  RecordProperty("hypervisor_signature", info.hypervisor_signature);
  if (info.hypervisor_signature == "KVMKVMKVM") {
    const auto raw = repatch::x86::cpuid(0x40000001);
    EXPECT_EQ(info.kvm_features, raw.eax);
    EXPECT_EQ(info.kvm_hints, raw.edx);
    // Every KVM since 2.6.25 has the clocksource bits (0 and 3); zero means the leaf was missed.
    EXPECT_NE(info.kvm_features, 0u);
    RecordProperty("kvm_features", std::to_string(info.kvm_features));
    RecordProperty("kvm_hints", std::to_string(info.kvm_hints));
  } else {
    EXPECT_EQ(info.kvm_features, 0u) << "KVM leaves read on " << info.hypervisor_signature;
  }
}

}  // namespace
