// The parsers of trigger/: this machine's files parse; bad input gets an error that names the
// file, the line and what is wrong, never a crash.
#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <string>

#include "repatch/triggers.h"
#include "trigger/file_text.h"
#include "trigger/hint_trace.h"
#include "trigger/microcode_text.h"
#include "trigger/pressure.h"
#include "trigger/proc_stat.h"

namespace repatch::triggers {
namespace {

std::string slurp(const std::string& path) {
  Result<std::optional<std::string>> text = read_file_text(path);
  EXPECT_TRUE(text.ok()) << text.error().to_string();
  return text.ok() && text.value() ? *text.value() : std::string();
}

template <typename T>
std::string error_of(const Result<T>& r) {
  return r.ok() ? std::string("(no error)") : r.error().to_string();
}

#define EXPECT_ERROR(result, fragment) \
  EXPECT_NE(error_of(result).find(fragment), std::string::npos) << error_of(result)

TEST(TriggerParsers, ThisMachinesProcStat) {
  Result<ProcStat> stat = parse_proc_stat(slurp("/proc/stat"));
  ASSERT_TRUE(stat.ok()) << stat.error().to_string();
  EXPECT_GT(stat.value().all.total, 0u);
  EXPECT_TRUE(stat.value().all.steal.has_value()) << "Linux has reported steal since 2.6.11";
  EXPECT_GE(stat.value().cpus.size(), 1u);
  EXPECT_TRUE(stat.value().procs_running.has_value());
  EXPECT_GE(*stat.value().procs_running, 1u);  // this thread
}

TEST(TriggerParsers, ProcStatSteal) {
  const char* before =
      "cpu  100 0 100 700 0 0 0 100 0 0\n"
      "cpu0 50 0 50 350 0 0 0 50 0 0\n"
      "cpu1 50 0 50 350 0 0 0 50 0 0\n"
      "intr 1 2 3\nprocs_running 3\n";
  const char* after =
      "cpu  200 0 200 1300 0 0 0 300 50 0\n"  // guest (50) is inside user: not added again
      "cpu0 100 0 100 600 0 0 0 200 0 0\n"
      "cpu1 100 0 100 700 0 0 0 100 0 0\n"
      "procs_running 5\n";
  Result<ProcStat> a = parse_proc_stat(before), b = parse_proc_stat(after);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(b.value().all.total, 2000u);
  EXPECT_EQ(*b.value().procs_running, 5u);
  const std::optional<StealShare> s = steal_between(a.value(), b.value());
  ASSERT_TRUE(s.has_value());
  EXPECT_DOUBLE_EQ(s->all_percent, 20.0);      // 200 of 1000 ticks
  EXPECT_DOUBLE_EQ(s->max_cpu_percent, 30.0);  // cpu0: 150 of 500
  // Old kernels without the steal column: no share, not an error.
  Result<ProcStat> old = parse_proc_stat("cpu 1 2 3 4\n");
  ASSERT_TRUE(old.ok());
  EXPECT_FALSE(old.value().all.steal.has_value());
  EXPECT_FALSE(steal_between(old.value(), old.value()).has_value());
}

TEST(TriggerParsers, ProcStatRejectsGarbage) {
  EXPECT_ERROR(parse_proc_stat(""), "no 'cpu' line");
  EXPECT_ERROR(parse_proc_stat("intr 1\n"), "no 'cpu' line");
  EXPECT_ERROR(parse_proc_stat("cpu 1 2 x 4\n"), "line 1 ('cpu 1 2 x 4'): column 3 is not");
  EXPECT_ERROR(parse_proc_stat("cpu 1 2\n"), "at least 4 columns");
  EXPECT_ERROR(parse_proc_stat("cpu 1 2 3 4\ncpu 1 2 3 4\n"), "a second 'cpu' line");
  EXPECT_ERROR(parse_proc_stat("cpu 1 2 3 4\ncpu0 1 2 3 4\ncpu0 1 2 3 4\n"), "twice");
  EXPECT_ERROR(parse_proc_stat("cpu 18446744073709551615 1 2 3\n"), "past 2^64");
  EXPECT_ERROR(parse_proc_stat("cpu 99999999999999999999 1 2 3\n"), "not a whole number");
  EXPECT_ERROR(parse_proc_stat("cpu 1 2 3 -4\n"), "column 4");
  EXPECT_ERROR(parse_proc_stat("cpu 1 2 3 4\nprocs_running many\n"), "procs_running");
  EXPECT_ERROR(parse_proc_stat("cpuX 1 2 3 4\n"), "not a CPU name");
}

TEST(TriggerParsers, ThisMachinesPressure) {
  Result<std::optional<std::string>> text = read_file_text("/proc/pressure/cpu");
  if (text.ok() && !text.value()) GTEST_SKIP() << "no /proc/pressure/cpu on this kernel";
  ASSERT_TRUE(text.ok()) << text.error().to_string();
  Result<CpuPressure> psi = parse_cpu_pressure(*text.value());
  ASSERT_TRUE(psi.ok()) << psi.error().to_string();
  EXPECT_LE(psi.value().some.avg10, 100.0);
}

TEST(TriggerParsers, Pressure) {
  Result<CpuPressure> p = parse_cpu_pressure(
      "some avg10=1.03 avg60=3.76 avg300=6.09 total=6628980152\n"
      "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n");
  ASSERT_TRUE(p.ok()) << p.error().to_string();
  EXPECT_DOUBLE_EQ(p.value().some.avg10, 1.03);
  EXPECT_EQ(p.value().some.total_us, 6628980152u);
  EXPECT_TRUE(p.value().full.has_value());
  // Before Linux 5.13 the CPU file had no "full" line.
  ASSERT_TRUE(parse_cpu_pressure("some avg10=0 avg60=0 avg300=0 total=0").ok());
  EXPECT_ERROR(parse_cpu_pressure(""), "no 'some' line");
  EXPECT_ERROR(parse_cpu_pressure("some avg10=1 avg60=1 avg300=1\n"), "'total' missing");
  EXPECT_ERROR(parse_cpu_pressure("some avg10=x avg60=1 avg300=1 total=1"), "avg10 is not");
  EXPECT_ERROR(parse_cpu_pressure("some avg10=101 avg60=1 avg300=1 total=1"), "between 0 and 100");
  EXPECT_ERROR(parse_cpu_pressure("some avg10=nan avg60=1 avg300=1 total=1"), "avg10");
  EXPECT_ERROR(parse_cpu_pressure("some avg10=1 avg10=1 avg300=1 total=1"), "twice");
  EXPECT_ERROR(parse_cpu_pressure("some avg10=1 avg60=1 avg300=1 total=1 foo=2"), "unknown field");
  EXPECT_ERROR(parse_cpu_pressure("most avg10=1"), "line 1");
  EXPECT_ERROR(parse_cpu_pressure("some avg10"), "without '='");
}

TEST(TriggerParsers, ThisMachinesCpuinfo) {
  Result<std::vector<std::string>> revs = parse_cpuinfo_microcode(slurp("/proc/cpuinfo"));
  ASSERT_TRUE(revs.ok()) << revs.error().to_string();
  // A VM may hide the revision; when it shows one, it shows it for every CPU.
  if (!revs.value().empty()) {
    EXPECT_EQ(revs.value().size(), static_cast<std::size_t>(sysconf(_SC_NPROCESSORS_CONF)));
    EXPECT_TRUE(revs.value()[0].starts_with("0x"));
  }
}

TEST(TriggerParsers, Microcode) {
  Result<std::vector<std::string>> r = parse_cpuinfo_microcode(
      "processor\t: 0\nmicrocode\t: 0x000000F0\n\nprocessor\t: 1\nmicrocode\t: 0xf0\n");
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_EQ(r.value(), (std::vector<std::string>{"0xf0", "0xf0"}));
  r = parse_cpuinfo_microcode("processor : 0\nflags : fpu\n");
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r.value().empty());
  EXPECT_ERROR(parse_cpuinfo_microcode("processor : 0\nmicrocode : zz\n"), "line 2");
  EXPECT_ERROR(parse_cpuinfo_microcode("processor : 0\nmicrocode : 0x1\nmicrocode : 0x1\n"),
               "a second microcode line");
  EXPECT_ERROR(parse_cpuinfo_microcode("microcode : 0x1\n"), "outside a processor block");
  EXPECT_ERROR(parse_cpuinfo_microcode("processor : 0\nmicrocode : 0x1\n\nprocessor : 1\n"),
               "1 of 2 processors have no microcode line");
  Result<std::string> v = parse_microcode_version("0x2006e05\n");
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(v.value(), "0x2006e05");
  EXPECT_ERROR(parse_microcode_version(""), "not one hexadecimal revision");
  EXPECT_ERROR(parse_microcode_version("0x1 0x2\n"), "not one hexadecimal revision");
  EXPECT_ERROR(parse_microcode_version("-1"), "not one hexadecimal revision");
}

TEST(TriggerParsers, HintTrace) {
  Result<std::vector<HintReading>> t = parse_hint_trace(
      "# a comment\n\n0 steal=1.5 max_steal=3 psi=2 runnable=3 cpus=2 preemptions=4 realtime=1\n"
      "  12.5   # nothing measured\n");
  ASSERT_TRUE(t.ok()) << t.error().to_string();
  ASSERT_EQ(t.value().size(), 2u);
  EXPECT_EQ(*t.value()[0].steal_percent, 1.5);
  EXPECT_EQ(*t.value()[0].max_cpu_steal_percent, 3);
  EXPECT_EQ(*t.value()[0].runnable, 3u);
  EXPECT_EQ(*t.value()[0].preemptions, 4u);
  EXPECT_TRUE(t.value()[0].realtime_hint);
  EXPECT_EQ(t.value()[1].time, std::chrono::microseconds(12500));
  EXPECT_FALSE(t.value()[1].steal_percent.has_value());
  // A formatted line reads back as the same reading.
  Result<std::vector<HintReading>> again =
      parse_hint_trace(format_trace_line(t.value()[0], std::chrono::nanoseconds(0)));
  ASSERT_TRUE(again.ok()) << again.error().to_string();
  EXPECT_EQ(*again.value()[0].psi_some_avg10, 2.0);
  EXPECT_TRUE(again.value()[0].realtime_hint);
}

TEST(TriggerParsers, HintTraceRejectsGarbage) {
  EXPECT_ERROR(parse_hint_trace("0 steal=1\nx steal=1\n"), "line 2: 'x' is not a time");
  EXPECT_ERROR(parse_hint_trace("10 steal=1\n5 steal=1\n"), "line 2: time goes backwards");
  EXPECT_ERROR(parse_hint_trace("0 steal\n"), "'steal' is not key=value");
  EXPECT_ERROR(parse_hint_trace("0 =1\n"), "not key=value");
  EXPECT_ERROR(parse_hint_trace("0 stole=1\n"), "unknown key 'stole'");
  EXPECT_ERROR(parse_hint_trace("0 steal=1 steal=2\n"), "twice");
  EXPECT_ERROR(parse_hint_trace("0 steal=101\n"), "percentage from 0 to 100");
  EXPECT_ERROR(parse_hint_trace("0 steal=-1\n"), "percentage");
  EXPECT_ERROR(parse_hint_trace("0 realtime=yes\n"), "realtime is 0 or 1");
  EXPECT_ERROR(parse_hint_trace("0 runnable=4294967296\n"), "below 2^32");
  EXPECT_ERROR(parse_hint_trace("-1 steal=1\n"), "not a time");
  EXPECT_ERROR(parse_hint_trace("1e13 steal=1\n"), "not a time");
  EXPECT_ERROR(parse_hint_trace(std::string("0 steal=1\n\0\x7f", 12)), "NUL byte");
  // Truncated in the middle of a line: the partial line is judged as it is.
  EXPECT_ERROR(parse_hint_trace("0 steal=1\n100 ste"), "line 2: 'ste' is not key=value");
  EXPECT_TRUE(parse_hint_trace("0 steal=1\n100 steal=1").ok());
  EXPECT_ERROR(make_replay_source("zzz"), "line 1");
  EXPECT_ERROR(load_replay_source("/nonexistent/trace"), "does not exist");
}

TEST(TriggerParsers, FeatureLists) {
  Result<FeatureSet> f = parse_feature_list(" rtm , clflushopt,,rtm");
  ASSERT_TRUE(f.ok()) << f.error().to_string();
  EXPECT_EQ(f.value(), (FeatureSet{"clflushopt", "rtm"}));
  ASSERT_TRUE(parse_feature_list("").ok());
  EXPECT_ERROR(parse_feature_list("rtm,avx9000"),
               "unknown CPU feature 'avx9000'; known: 'clflushopt', 'hle'");
}

TEST(TriggerParsers, MissingFilesAreNotErrors) {
  Result<std::optional<std::string>> text = read_file_text("/proc/no/such/file");
  ASSERT_TRUE(text.ok());
  EXPECT_FALSE(text.value().has_value());
  text = read_file_text("/proc/self/stat", 4);
  EXPECT_ERROR(text, "longer than 4 bytes");
}

}  // namespace
}  // namespace repatch::triggers
