#include "arch/x86/cpuid.h"

#include <cstring>

namespace repatch::x86 {
namespace {

constexpr std::uint32_t kHypervisorLeafBase = 0x40000000;
constexpr std::uint32_t kKvmFeaturesLeaf = 0x40000001;
constexpr std::uint32_t kExtendedLeafBase = 0x80000000;
constexpr std::uint32_t kExtendedFeaturesLeaf = 0x80000001;

bool bit(std::uint32_t reg, unsigned n) {
  return ((reg >> n) & 1u) != 0;
}

// Twelve bytes of register text in the order given, trailing NULs dropped (a signature shorter
// than twelve characters, such as "KVMKVMKVM", is NUL padded).
std::string register_text(std::uint32_t a, std::uint32_t b, std::uint32_t c) {
  char text[12];
  std::memcpy(text + 0, &a, 4);
  std::memcpy(text + 4, &b, 4);
  std::memcpy(text + 8, &c, 4);
  std::size_t n = sizeof text;
  while (n > 0 && text[n - 1] == '\0') {
    --n;
  }
  return std::string(text, n);
}

}  // namespace

CpuidRegs cpuid(std::uint32_t leaf, std::uint32_t subleaf) {
  CpuidRegs r;
  // ECX carries the subleaf in: leaves without subleaves ignore it, leaf 7 needs it.
  asm volatile("cpuid"
               : "=a"(r.eax), "=b"(r.ebx), "=c"(r.ecx), "=d"(r.edx)
               : "a"(leaf), "c"(subleaf));
  return r;
}

CpuInfo read_cpu_info() {
  CpuInfo info;
  CpuidRegs l0 = cpuid(0);
  // The vendor string is EBX, EDX, ECX in that order ("Genu" "ineI" "ntel").
  info.vendor = register_text(l0.ebx, l0.edx, l0.ecx);
  const std::uint32_t max_leaf = l0.eax;

  if (max_leaf >= 1) {
    info.hypervisor = bit(cpuid(1).ecx, 31);
  }
  if (max_leaf >= 7) {
    CpuidRegs l7 = cpuid(7, 0);
    info.serialize = bit(l7.edx, 14);
    info.rdpid = bit(l7.ecx, 22);
    info.rtm = bit(l7.ebx, 11);
    info.hle = bit(l7.ebx, 4);
    info.clflushopt = bit(l7.ebx, 23);
  }
  if (cpuid(kExtendedLeafBase).eax >= kExtendedFeaturesLeaf) {
    info.rdtscp = bit(cpuid(kExtendedFeaturesLeaf).edx, 27);
  }
  // The leaves from 0x40000000 up are only defined when CPUID.1:ECX[31] says a hypervisor is
  // present; on bare metal they alias the highest basic leaf and would yield garbage.
  if (info.hypervisor) {
    CpuidRegs h = cpuid(kHypervisorLeafBase);
    info.hypervisor_max_leaf = h.eax;
    info.hypervisor_signature = register_text(h.ebx, h.ecx, h.edx);
    // Old KVM hosts reported 0 as the maximum leaf while implementing 0x40000001.
    const bool kvm = info.hypervisor_signature == "KVMKVMKVM";
    if (kvm && (h.eax == 0 || h.eax >= kKvmFeaturesLeaf)) {
      CpuidRegs k = cpuid(kKvmFeaturesLeaf);
      info.kvm_features = k.eax;
      info.kvm_hints = k.edx;
    }
  }
  return info;
}

namespace {

struct FeatureField {
  std::string_view name;
  bool CpuInfo::*field;
};

// Sorted by name, as cpu_feature_names() promises.
constexpr FeatureField kFeatures[] = {
    {"clflushopt", &CpuInfo::clflushopt},
    {"hle", &CpuInfo::hle},
    {"rdpid", &CpuInfo::rdpid},
    {"rdtscp", &CpuInfo::rdtscp},
    {"rtm", &CpuInfo::rtm},
    {"serialize", &CpuInfo::serialize},
};

const FeatureField* find_feature(std::string_view name) {
  for (const FeatureField& f : kFeatures) {
    if (f.name == name) return &f;
  }
  return nullptr;
}

}  // namespace

std::span<const std::string_view> cpu_feature_names() {
  static constexpr std::string_view kNames[] = {"clflushopt", "hle", "rdpid",
                                                "rdtscp",     "rtm", "serialize"};
  static_assert(std::size(kNames) == std::size(kFeatures));
  return kNames;
}

std::optional<bool> cpu_has(const CpuInfo& info, std::string_view name) {
  const FeatureField* f = find_feature(name);
  if (f == nullptr) return std::nullopt;
  return info.*(f->field);
}

bool set_cpu_feature(CpuInfo& info, std::string_view name, bool present) {
  const FeatureField* f = find_feature(name);
  if (f == nullptr) return false;
  info.*(f->field) = present;
  return true;
}

}  // namespace repatch::x86
