// The real hint and CPU sources on this machine, and on crafted /proc and /sys directories:
// missing files fall back with a note, malformed ones fail with a clear error.
#include <gtest/gtest.h>
#include <sched.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

#include "arch/x86/cpuid.h"
#include "repatch/triggers.h"

namespace repatch::triggers {
namespace {

using namespace std::chrono_literals;
namespace fs = std::filesystem;

// A fresh directory under /tmp, removed at the end of the test.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "repatch-trigger-XXXXXX").string();
    path_ = ::mkdtemp(pattern.data());
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  void write(const std::string& relative, const std::string& contents) const {
    const fs::path p = fs::path(path_) / relative;
    fs::create_directories(p.parent_path());
    std::ofstream(p) << contents;
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

bool has_note(const HintReading& r, const std::string& fragment) {
  for (const std::string& n : r.notes) {
    if (n.find(fragment) != std::string::npos) return true;
  }
  return false;
}

TEST(TriggerSources, RealSourceReadsThisMachine) {
  std::unique_ptr<HintSource> source = make_real_source();
  EXPECT_EQ(source->name(), "real");
  Result<std::optional<HintReading>> first = source->read();
  ASSERT_TRUE(first.ok()) << first.error().to_string();
  ASSERT_TRUE(first.value().has_value());
  EXPECT_FALSE(first.value()->steal_percent.has_value());  // a share needs two samples
  EXPECT_TRUE(has_note(*first.value(), "first sample"));
  // Let the tick counters move (USER_HZ is 100: 10 ms a tick per CPU).
  std::this_thread::sleep_for(100ms);
  Result<std::optional<HintReading>> second = source->read();
  ASSERT_TRUE(second.ok()) << second.error().to_string();
  const HintReading& r = *second.value();
  ASSERT_TRUE(r.steal_percent.has_value());
  EXPECT_GE(*r.steal_percent, 0.0);
  EXPECT_LE(*r.steal_percent, 100.0);
  EXPECT_GE(*r.max_cpu_steal_percent, *r.steal_percent);
  cpu_set_t allowed;
  ASSERT_EQ(sched_getaffinity(0, sizeof allowed, &allowed), 0);
  EXPECT_EQ(r.allowed_cpus, static_cast<std::uint32_t>(CPU_COUNT(&allowed)));
  ASSERT_TRUE(r.runnable.has_value());
  EXPECT_GE(*r.runnable, 1u);
  EXPECT_EQ(fs::exists("/proc/pressure/cpu"), r.psi_some_avg10.has_value());
  EXPECT_EQ(r.realtime_hint, read_hypervisor_hints().realtime);
  EXPECT_GT(r.time, first.value()->time);
}

TEST(TriggerSources, HypervisorHintsMatchCpuid) {
  const x86::CpuInfo info = x86::read_cpu_info();
  const HypervisorHints h = read_hypervisor_hints();
  EXPECT_EQ(h.hypervisor, info.hypervisor);
  EXPECT_EQ(h.signature, info.hypervisor_signature);
  if (!h.kvm) GTEST_SKIP() << "not KVM ('" << h.signature << "'): no KVM feature bits to check";
  EXPECT_EQ(h.steal_time, (info.kvm_features >> 5 & 1) != 0);
  EXPECT_EQ(h.pv_unhalt, (info.kvm_features >> 7 & 1) != 0);
  EXPECT_EQ(h.pv_tlb_flush, (info.kvm_features >> 9 & 1) != 0);
  EXPECT_EQ(h.pv_sched_yield, (info.kvm_features >> 13 & 1) != 0);
  EXPECT_EQ(h.realtime, (info.kvm_hints & 1) != 0);
}

RealSourceOptions crafted(const TempDir& dir, bool realtime = false) {
  RealSourceOptions o;
  o.proc_dir = dir.path();
  o.read_cpuid = false;
  o.hints.hypervisor = true;
  o.hints.kvm = true;
  o.hints.signature = "KVMKVMKVM";
  o.hints.realtime = realtime;
  return o;
}

TEST(TriggerSources, NoPsiFallsBackWithANote) {
  TempDir dir;
  dir.write("stat", "cpu 100 0 0 900 0 0 0 0\nprocs_running 2\n");
  std::unique_ptr<HintSource> source = make_real_source(crafted(dir, true));
  ASSERT_TRUE(source->read().ok());
  dir.write("stat", "cpu 200 0 0 1700 0 0 0 100\nprocs_running 2\n");
  Result<std::optional<HintReading>> r = source->read();
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_FALSE(r.value()->psi_some_avg10.has_value());
  EXPECT_TRUE(has_note(*r.value(), "kernel without PSI"));
  EXPECT_DOUBLE_EQ(*r.value()->steal_percent, 10.0);
  EXPECT_TRUE(r.value()->realtime_hint);
}

TEST(TriggerSources, NotAVmIsANote) {
  TempDir dir;
  dir.write("stat", "cpu 1 0 0 9 0 0 0 0\n");
  dir.write("pressure/cpu", "some avg10=12.50 avg60=0 avg300=0 total=5\n");
  RealSourceOptions o = crafted(dir);
  o.hints = HypervisorHints{};
  Result<std::optional<HintReading>> r = make_real_source(o)->read();
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_TRUE(has_note(*r.value(), "not running under a hypervisor"));
  EXPECT_EQ(*r.value()->psi_some_avg10, 12.5);
}

TEST(TriggerSources, MalformedOrMissingProcFilesAreClearErrors) {
  TempDir dir;
  Result<std::optional<HintReading>> r = make_real_source(crafted(dir))->read();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), ErrorCode::kSystem);
  EXPECT_NE(r.error().message().find("/stat does not exist"), std::string::npos);
  dir.write("stat", "cpu one two three four\n");
  r = make_real_source(crafted(dir))->read();
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message().find("/proc/stat line 1"), std::string::npos);
  dir.write("stat", "cpu 1 2 3 4 5 6 7 8\n");
  dir.write("pressure/cpu", "some avg10=\n");
  r = make_real_source(crafted(dir))->read();
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message().find("/proc/pressure/cpu line 1"), std::string::npos);
}

TEST(TriggerSources, RealCpuSourceOnThisMachine) {
  std::unique_ptr<CpuSource> cpu = make_real_cpu_source();
  Result<MicrocodeRevision> rev = cpu->revision();
  ASSERT_TRUE(rev.ok()) << rev.error().to_string();
  if (!rev.value().per_cpu.empty()) {
    EXPECT_TRUE(rev.value().origin == "sysfs" || rev.value().origin == "/proc/cpuinfo");
  }
  Result<FeatureSet> features = cpu->features();
  ASSERT_TRUE(features.ok());
  const x86::CpuInfo info = x86::read_cpu_info();
  for (const std::string& f : known_features()) {
    const bool listed =
        std::find(features.value().begin(), features.value().end(), f) != features.value().end();
    EXPECT_EQ(listed, x86::cpu_has(info, f).value()) << f;
  }
}

TEST(TriggerSources, CpuSourcePrefersSysfsAndRejectsGarbage) {
  TempDir proc, sys;
  proc.write("cpuinfo", "processor : 0\nmicrocode : 0x1\n\nprocessor : 1\nmicrocode : 0x1\n");
  RealCpuSourceOptions o{.proc_dir = proc.path(), .sysfs_cpu_dir = sys.path()};
  Result<MicrocodeRevision> rev = make_real_cpu_source(o)->revision();
  ASSERT_TRUE(rev.ok()) << rev.error().to_string();
  EXPECT_EQ(rev.value().origin, "/proc/cpuinfo");
  EXPECT_EQ(rev.value().per_cpu, (std::vector<std::string>{"0x1", "0x1"}));
  sys.write("cpu1/microcode/version", "0xb4\n");
  sys.write("cpu0/microcode/version", "0xb3\n");
  sys.write("cpufreq/boost", "1\n");
  rev = make_real_cpu_source(o)->revision();
  ASSERT_TRUE(rev.ok()) << rev.error().to_string();
  EXPECT_EQ(rev.value().origin, "sysfs");
  EXPECT_EQ(rev.value().per_cpu, (std::vector<std::string>{"0xb3", "0xb4"}));
  sys.write("cpu0/microcode/version", "garbage\n");
  rev = make_real_cpu_source(o)->revision();
  ASSERT_FALSE(rev.ok());
  EXPECT_NE(rev.error().message().find("cpu0/microcode/version"), std::string::npos);
  EXPECT_NE(rev.error().message().find("not one hexadecimal revision"), std::string::npos);
  TempDir empty_proc;
  RealCpuSourceOptions missing{.proc_dir = empty_proc.path(), .sysfs_cpu_dir = empty_proc.path()};
  rev = make_real_cpu_source(missing)->revision();
  ASSERT_FALSE(rev.ok());
  EXPECT_NE(rev.error().message().find("cpuinfo does not exist"), std::string::npos);
}

TEST(TriggerSources, SimulatedCpuRejectsUnknownFeatures) {
  EXPECT_EQ(SimulatedCpu::create({"rtm", "warp_drive"}).error().code(), ErrorCode::kUnknownName);
  auto cpu = SimulatedCpu::create({"rtm"});
  ASSERT_TRUE(cpu.ok());
  Status s = cpu.value()->load_update("0x2", {"flux"}, {});
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error().message().find("unknown CPU feature 'flux'"), std::string::npos);
  EXPECT_FALSE(cpu.value()->load_update("0x2", {"rtm"}, {"rtm"}).ok());
  EXPECT_EQ(cpu.value()->revision().value().per_cpu.at(0), "0x1");  // nothing changed
  ASSERT_TRUE(cpu.value()->load_update("0x2", {"rdpid"}, {"rtm"}).ok());
  EXPECT_EQ(cpu.value()->features().value(), (FeatureSet{"rdpid"}));
}

}  // namespace
}  // namespace repatch::triggers
