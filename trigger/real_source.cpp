// The real hint source: this machine's /proc/stat, /proc/pressure/cpu, sched_getaffinity and
// CPUID.
#include <sched.h>

#include "arch/x86/cpuid.h"
#include "repatch/triggers.h"
#include "trigger/file_text.h"
#include "trigger/pressure.h"
#include "trigger/proc_stat.h"

namespace repatch::triggers {

Clock steady_clock() {
  return [] {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
        std::chrono::steady_clock::now().time_since_epoch());
  };
}

HypervisorHints read_hypervisor_hints() {
  const x86::CpuInfo info = x86::read_cpu_info();
  HypervisorHints h;
  h.hypervisor = info.hypervisor;
  h.signature = info.hypervisor_signature;
  h.kvm = info.hypervisor_signature == "KVMKVMKVM";
  h.features = info.kvm_features;
  h.hints = info.kvm_hints;
  h.steal_time = (info.kvm_features & x86::kKvmFeatureStealTime) != 0;
  h.pv_unhalt = (info.kvm_features & x86::kKvmFeaturePvUnhalt) != 0;
  h.pv_tlb_flush = (info.kvm_features & x86::kKvmFeaturePvTlbFlush) != 0;
  h.pv_sched_yield = (info.kvm_features & x86::kKvmFeaturePvSchedYield) != 0;
  h.realtime = (info.kvm_hints & x86::kKvmHintRealtime) != 0;
  return h;
}

namespace {

class RealSource final : public HintSource {
 public:
  explicit RealSource(RealSourceOptions options) : options_(std::move(options)) {
    if (options_.read_cpuid) options_.hints = read_hypervisor_hints();
  }

  std::string_view name() const override { return "real"; }

  Result<std::optional<HintReading>> read() override {
    HintReading r;
    r.time = options_.clock();
    r.realtime_hint = options_.hints.realtime;
    if (!options_.hints.hypervisor) {
      r.notes.emplace_back("not running under a hypervisor: no KVM hints, steal stays 0");
    } else if (!options_.hints.kvm) {
      r.notes.push_back("hypervisor '" + options_.hints.signature +
                        "' is not KVM: no KVM_HINTS_REALTIME");
    }

    const std::string stat_path = options_.proc_dir + "/stat";
    Result<std::optional<std::string>> stat_text = read_file_text(stat_path);
    if (!stat_text.ok()) return stat_text.error();
    if (!stat_text.value()) {
      return Error(ErrorCode::kSystem, stat_path + " does not exist: is /proc mounted?");
    }
    Result<ProcStat> stat = parse_proc_stat(*stat_text.value());
    if (!stat.ok()) return stat.error();
    if (!stat.value().all.steal) {
      r.notes.emplace_back("/proc/stat has no steal column: steal not measured");
    } else if (!previous_) {
      r.notes.emplace_back("first sample: steal needs a second one");
    } else if (const std::optional<StealShare> s = steal_between(*previous_, stat.value())) {
      r.steal_percent = s->all_percent;
      r.max_cpu_steal_percent = s->max_cpu_percent;
    } else {
      r.notes.emplace_back("no CPU time passed since the previous sample");
    }
    r.runnable = stat.value().procs_running;
    previous_ = std::move(stat.value());

    cpu_set_t allowed;
    CPU_ZERO(&allowed);
    if (sched_getaffinity(0, sizeof allowed, &allowed) == 0) {
      r.allowed_cpus = static_cast<std::uint32_t>(CPU_COUNT(&allowed));
    } else {
      r.notes.emplace_back("sched_getaffinity failed: allowed CPUs unknown");
    }

    const std::string psi_path = options_.proc_dir + "/pressure/cpu";
    Result<std::optional<std::string>> psi_text = read_file_text(psi_path);
    if (!psi_text.ok() && psi_text.error().code() != ErrorCode::kSystem) return psi_text.error();
    if (!psi_text.ok() || !psi_text.value()) {
      // EOPNOTSUPP from a kernel booted with psi=0 arrives as kSystem: the same fallback.
      r.notes.push_back("no " + psi_path + " (kernel without PSI, or booted with psi=0): " +
                        "CPU pressure not measured");
    } else {
      Result<CpuPressure> psi = parse_cpu_pressure(*psi_text.value());
      if (!psi.ok()) return psi.error();
      r.psi_some_avg10 = psi.value().some.avg10;
    }
    return std::optional<HintReading>(std::move(r));
  }

 private:
  RealSourceOptions options_;
  std::optional<ProcStat> previous_;
};

}  // namespace

std::unique_ptr<HintSource> make_real_source(RealSourceOptions options) {
  return std::make_unique<RealSource>(std::move(options));
}

}  // namespace repatch::triggers
