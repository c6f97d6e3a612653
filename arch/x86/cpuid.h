// CPUID, read once: the CPU features the engine cares about and the hypervisor leaves.
//
// CPUID exits to the hypervisor in a VM (4.9 us measured against 43 ns native), so it is never
// executed on a hot path: callers read a `CpuInfo` snapshot taken at boot or on an explicit
// re-read (late microcode load).
#ifndef REPATCH_ARCH_X86_CPUID_H_
#define REPATCH_ARCH_X86_CPUID_H_

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace repatch::x86 {

/// The raw registers of one CPUID leaf/subleaf.
struct CpuidRegs {
  std::uint32_t eax = 0, ebx = 0, ecx = 0, edx = 0;
};

/// Executes CPUID. Slow in a VM: never call on a hot path.
CpuidRegs cpuid(std::uint32_t leaf, std::uint32_t subleaf = 0);

/// The KVM paravirt feature bits of CPUID 0x40000001 EAX.
inline constexpr std::uint32_t kKvmFeatureStealTime = 1u << 5;
inline constexpr std::uint32_t kKvmFeaturePvUnhalt = 1u << 7;
inline constexpr std::uint32_t kKvmFeaturePvTlbFlush = 1u << 9;
inline constexpr std::uint32_t kKvmFeaturePvSchedYield = 1u << 13;
/// The KVM hint bit of CPUID 0x40000001 EDX.
inline constexpr std::uint32_t kKvmHintRealtime = 1u << 0;

struct CpuInfo {
  std::string vendor;       ///< "GenuineIntel", "AuthenticAMD", ...
  bool serialize = false;   ///< CPUID.(7,0):EDX[14]: the SERIALIZE instruction.
  bool rdpid = false;       ///< CPUID.(7,0):ECX[22]
  bool rtm = false;         ///< CPUID.(7,0):EBX[11]
  bool hle = false;         ///< CPUID.(7,0):EBX[4]
  bool clflushopt = false;  ///< CPUID.(7,0):EBX[23]
  bool rdtscp = false;      ///< CPUID.80000001H:EDX[27]
  bool hypervisor = false;  ///< CPUID.1:ECX[31]
  /// CPUID 0x40000000 EBX,ECX,EDX as text ("KVMKVMKVM" on KVM); empty without a hypervisor.
  std::string hypervisor_signature;
  std::uint32_t hypervisor_max_leaf = 0;  ///< CPUID 0x40000000 EAX
  std::uint32_t kvm_features = 0;         ///< CPUID 0x40000001 EAX, 0 when not KVM
  std::uint32_t kvm_hints = 0;            ///< CPUID 0x40000001 EDX, 0 when not KVM
};

/// Reads every field of `CpuInfo` with CPUID (slow; see above).
CpuInfo read_cpu_info();

/// The names of the features above that feature-keyed alternatives may be keyed on, as used in
/// declarations and options: "clflushopt", "hle", "rdpid", "rdtscp", "rtm", "serialize".
std::span<const std::string_view> cpu_feature_names();

/// Whether `info` reports feature `name`; std::nullopt when `name` is not one of
/// cpu_feature_names().
std::optional<bool> cpu_has(const CpuInfo& info, std::string_view name);

/// Sets feature `name` in `info`. Returns false, changing nothing, for an unknown name.
bool set_cpu_feature(CpuInfo& info, std::string_view name, bool present);

}  // namespace repatch::x86

#endif  // REPATCH_ARCH_X86_CPUID_H_
