#include "guest/simulated_source.h"

#include <algorithm>

#include "guest/hypervisor.h"

namespace repatch::triggers {
namespace {

class SimulatedSource final : public HintSource {
 public:
  SimulatedSource(std::vector<sync::VcpuId> vcpus, Clock clock)
      : vcpus_(std::move(vcpus)), clock_(std::move(clock)), steal_(vcpus_.size(), 0) {}

  std::string_view name() const override { return "simulated"; }

  Result<std::optional<HintReading>> read() override {
    if (vcpus_.empty()) {
      return Error(ErrorCode::kInvalidArgument, "the simulated source has no vCPUs to watch");
    }
    HintReading r;
    r.time = clock_();
    std::uint64_t stolen = 0, most = 0, ended = 0;
    std::uint32_t running = 0;
    for (std::size_t i = 0; i < vcpus_.size(); ++i) {
      const std::uint64_t steal = hypervisor::steal_ns(vcpus_[i]);
      const std::uint64_t delta = steal >= steal_[i] ? steal - steal_[i] : 0;  // reset_accounting
      steal_[i] = steal;
      stolen += delta;
      most = std::max(most, delta);
      ended += hypervisor::preemptions(vcpus_[i]);
      if (!hypervisor::preempting(vcpus_[i])) ++running;
    }
    const std::uint64_t previous_ended = preemptions_;
    preemptions_ = ended;
    r.runnable = running;
    r.allowed_cpus = static_cast<std::uint32_t>(vcpus_.size());
    if (last_time_) {
      const double elapsed = static_cast<double>((r.time - *last_time_).count());
      if (elapsed > 0) {
        r.steal_percent = std::min(100.0, 100.0 * static_cast<double>(stolen) /
                                              (elapsed * static_cast<double>(vcpus_.size())));
        r.max_cpu_steal_percent = std::min(100.0, 100.0 * static_cast<double>(most) / elapsed);
      }
      r.preemptions = ended >= previous_ended ? ended - previous_ended : 0;
    } else {
      r.notes.emplace_back("first sample: steal needs a second one");
    }
    last_time_ = r.time;
    return std::optional<HintReading>(std::move(r));
  }

 private:
  std::vector<sync::VcpuId> vcpus_;
  Clock clock_;
  std::vector<std::uint64_t> steal_;
  std::uint64_t preemptions_ = 0;
  std::optional<std::chrono::nanoseconds> last_time_;
};

}  // namespace

std::unique_ptr<HintSource> make_simulated_source(std::vector<sync::VcpuId> vcpus, Clock clock) {
  return std::make_unique<SimulatedSource>(std::move(vcpus), std::move(clock));
}

}  // namespace repatch::triggers
