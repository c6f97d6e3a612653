// Where the microcode revision and the CPU features come from: this machine, or a simulated CPU
// whose updates a test injects.
#include <algorithm>
#include <filesystem>

#include "arch/x86/cpuid.h"
#include "base/text.h"
#include "repatch/triggers.h"
#include "trigger/file_text.h"
#include "trigger/microcode_text.h"
#include "trigger/text_fields.h"

namespace repatch::triggers {

std::vector<std::string> known_features() {
  std::vector<std::string> out;
  for (std::string_view name : x86::cpu_feature_names())
    out.emplace_back(name);
  std::sort(out.begin(), out.end());
  return out;
}

namespace {

bool known(std::string_view name) {
  for (std::string_view k : x86::cpu_feature_names()) {
    if (k == name) return true;
  }
  return false;
}

Error unknown_feature(std::string_view name) {
  return Error(ErrorCode::kUnknownName,
               "unknown CPU feature '" + text::excerpt(name) +
                   "'; known: " + repatch::text::quoted_list(known_features()));
}

}  // namespace

Result<FeatureSet> parse_feature_list(std::string_view list) {
  FeatureSet out;
  while (true) {
    const std::size_t comma = list.find(',');
    const std::string_view name = text::trim(list.substr(0, comma));
    if (!name.empty()) {
      if (!known(name)) return unknown_feature(name);
      out.emplace_back(name);
    }
    if (comma == std::string_view::npos) break;
    list.remove_prefix(comma + 1);
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

namespace {

class RealCpuSource final : public CpuSource {
 public:
  explicit RealCpuSource(RealCpuSourceOptions options) : options_(std::move(options)) {}
  std::string_view name() const override { return "real"; }

  Result<MicrocodeRevision> revision() override {
    // sysfs first: one file per CPU, present where the microcode driver is loaded.
    MicrocodeRevision out;
    std::error_code ec;
    std::vector<std::pair<std::uint64_t, std::string>> per_cpu;
    for (std::filesystem::directory_iterator it(options_.sysfs_cpu_dir, ec), end; !ec && it != end;
         it.increment(ec)) {
      const std::string name = it->path().filename().string();
      if (!name.starts_with("cpu")) continue;
      const auto n = text::parse_u64(std::string_view(name).substr(3));
      if (!n) continue;  // cpufreq, cpuidle, ...
      const std::string path = it->path().string() + "/microcode/version";
      Result<std::optional<std::string>> contents = read_file_text(path, 4096);
      if (!contents.ok()) return contents.error();
      if (!contents.value()) continue;
      Result<std::string> rev = parse_microcode_version(*contents.value());
      if (!rev.ok()) return Error(rev.error().code(), path + ": " + rev.error().message());
      per_cpu.emplace_back(*n, std::move(rev.value()));
    }
    if (!per_cpu.empty()) {
      std::sort(per_cpu.begin(), per_cpu.end());
      for (auto& [cpu, rev] : per_cpu)
        out.per_cpu.push_back(std::move(rev));
      out.origin = "sysfs";
      return out;
    }
    const std::string path = options_.proc_dir + "/cpuinfo";
    Result<std::optional<std::string>> contents = read_file_text(path);
    if (!contents.ok()) return contents.error();
    if (!contents.value()) return Error(ErrorCode::kSystem, path + " does not exist");
    Result<std::vector<std::string>> revs = parse_cpuinfo_microcode(*contents.value());
    if (!revs.ok()) return revs.error();
    out.per_cpu = std::move(revs.value());
    if (!out.per_cpu.empty()) out.origin = "/proc/cpuinfo";
    return out;
  }

  Result<FeatureSet> features() override {
    const x86::CpuInfo info = x86::read_cpu_info();
    FeatureSet out;
    for (std::string_view name : x86::cpu_feature_names()) {
      if (x86::cpu_has(info, name).value_or(false)) out.emplace_back(name);
    }
    std::sort(out.begin(), out.end());
    return out;
  }

 private:
  RealCpuSourceOptions options_;
};

}  // namespace

std::unique_ptr<CpuSource> make_real_cpu_source(RealCpuSourceOptions options) {
  return std::make_unique<RealCpuSource>(std::move(options));
}

Result<std::unique_ptr<SimulatedCpu>> SimulatedCpu::create(FeatureSet features,
                                                           std::string revision, std::size_t cpus) {
  if (cpus == 0) return Error(ErrorCode::kInvalidArgument, "a simulated CPU needs 1 CPU or more");
  for (const std::string& f : features) {
    if (!known(f)) return unknown_feature(f);
  }
  std::sort(features.begin(), features.end());
  features.erase(std::unique(features.begin(), features.end()), features.end());
  return std::unique_ptr<SimulatedCpu>(
      new SimulatedCpu(std::move(features), std::move(revision), cpus));
}

SimulatedCpu::SimulatedCpu(FeatureSet features, std::string revision, std::size_t cpus)
    : features_(std::move(features)), revision_(std::move(revision)), cpus_(cpus) {}

Status SimulatedCpu::load_update(std::string revision, const FeatureSet& add,
                                 const FeatureSet& remove) {
  for (const std::string& f : add) {
    if (!known(f)) return unknown_feature(f);
    if (std::find(remove.begin(), remove.end(), f) != remove.end()) {
      return Error(ErrorCode::kInvalidArgument,
                   "a microcode update both adds and removes '" + f + "'");
    }
  }
  for (const std::string& f : remove) {
    if (!known(f)) return unknown_feature(f);
  }
  std::lock_guard lock(mutex_);
  revision_ = std::move(revision);
  for (const std::string& f : add)
    features_.push_back(f);
  std::erase_if(features_, [&](const std::string& f) {
    return std::find(remove.begin(), remove.end(), f) != remove.end();
  });
  std::sort(features_.begin(), features_.end());
  features_.erase(std::unique(features_.begin(), features_.end()), features_.end());
  return {};
}

Result<MicrocodeRevision> SimulatedCpu::revision() {
  std::lock_guard lock(mutex_);
  return MicrocodeRevision{.per_cpu = std::vector<std::string>(cpus_, revision_),
                           .origin = "simulated"};
}

Result<FeatureSet> SimulatedCpu::features() {
  std::lock_guard lock(mutex_);
  return features_;
}

}  // namespace repatch::triggers
