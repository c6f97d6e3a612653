#include "tools/stress_command.h"

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "repatch/triggers.h"
#include "stress/report.h"
#include "stress/run.h"
#include "stress/scenario.h"
#include "tools/command_line.h"

namespace repatch::tools {
namespace {

constexpr const char* kUsage =
    "usage: repatch stress [--vcpus N] [--duration SECONDS] [--switch-rate PER_S]\n"
    "                      [--nmi-rate PER_S] [--preempt-rate PER_S] [--locks N]\n"
    "                      [--groups LIST] [--trigger manual|simulated|real|replay:FILE]\n"
    "                      [--writer auto|stop|stopless] [--microcode-every SECONDS]\n"
    "                      [--modules N] [--seed N] [--watchdog SECONDS]\n"
    "                      [--json] [--quiet]\n"
    "\n"
    "Boots the guest built into this command and runs its workload on N vCPU threads (locks\n"
    "guarding shared counters, TLB lookups and shootdowns, the demo guest's op sites) while a\n"
    "switcher flips groups between their variants, NMIs arrive whose handler takes a spinlock,\n"
    "and the simulated hypervisor preempts vCPUs. It checks, all along and at the end: mutual\n"
    "exclusion, no lost update, no stale TLB read, each switched group wholly in one variant\n"
    "after every commit (site bytes and lock and TLB state), and no stuck vCPU (a watchdog names\n"
    "it and where it is). Then it prints a report.\n"
    "\n"
    "  --vcpus N             vCPU threads, 1-64 (default 4)\n"
    "  --duration SECONDS    how long to run, 0.1-604800 (default 20)\n"
    "  --switch-rate PER_S   switch requests per second, 0-10000; 0 switches nothing\n"
    "                        (default 200)\n"
    "  --nmi-rate PER_S      NMIs injected per second over all vCPUs, 0-100000 (default 1000);\n"
    "                        a vCPU whose NMI handlers took over a quarter of its time since\n"
    "                        its last NMI is skipped (throttled, as perf throttles its NMIs)\n"
    "  --preempt-rate PER_S  preemptions per second, 0-1000, each 50 us to 1 ms (default 100)\n"
    "  --locks N             spinlocks guarding shared counters, 1-100000 (default 64)\n"
    "  --modules N           shared objects with sites of the spinlock group, 0-8 (default 0):\n"
    "                        a vCPU of its own loads them in turn, adds to the counters under\n"
    "                        their locks through each module's own sites, and unloads it\n"
    "  --groups LIST         groups to switch, comma-separated (default: spinlock, tlb,\n"
    "                        demo_lock, demo_clock, and demo_flush where the CPU has\n"
    "                        clflushopt); each request names a random subset of them\n"
    "  --trigger WHAT        what decides the switches (default manual):\n"
    "                          manual       the switcher flips --groups at --switch-rate\n"
    "                          simulated    the trigger policy switches spinlock and tlb\n"
    "                                       (native when dedicated, pv when oversubscribed)\n"
    "                                       from the steal time of the simulated hypervisor,\n"
    "                                       whose preemptions then come in 2 s phases of the\n"
    "                                       full --preempt-rate and a quarter of it; it\n"
    "                                       enters oversubscribed at the mean steal of the\n"
    "                                       full rate and leaves at half of it\n"
    "                          real         the same over this machine's /proc/stat steal\n"
    "                                       time and CPUID hints (steal enter 10%, leave 3%)\n"
    "                          replay:FILE  the same over a recorded hint trace\n"
    "                                       (docs/hint-trace.md), one line per poll\n"
    "                        The policy polls every 250 ms, dwells at least 1 s and makes at\n"
    "                        most 20 switches in 10 s; --switch-rate and --groups do not\n"
    "                        apply.\n"
    "  --writer WHICH        how a switch naming a group that is not interchangeable\n"
    "                        (spinlock, tlb, demo_lock) is written (default auto):\n"
    "                          auto      the engine's choice (SwitchWriter::kAuto),\n"
    "                                    stopless for these groups\n"
    "                          stop      stop-machine: every other vCPU parked for the write\n"
    "                          stopless  no stop: an INT3 fence, membarrier, and quiescence\n"
    "                                    read from the vCPUs' in-op marks; only vCPUs that\n"
    "                                    reach a fenced site wait\n"
    "                        A switch of interchangeable groups only (demo_clock, demo_flush)\n"
    "                        takes the batch writer whatever this says, and the microcode\n"
    "                        watcher's switches keep the engine's choice (batch for the\n"
    "                        interchangeable groups, stopless for lock_elision).\n"
    "  --microcode-every SECONDS\n"
    "                        load a simulated microcode update this often, 0 (off, the\n"
    "                        default) or 0.1-3600: updates alternately remove and add back the\n"
    "                        whitelisted features this CPU has (rtm, clflushopt, rdpid), and\n"
    "                        the microcode watcher switches the groups keyed on them\n"
    "  --seed N              seeds the schedule of switches, NMIs, preemptions and the\n"
    "                        vCPUs' choices (default 1)\n"
    "  --watchdog SECONDS    a vCPU or switch without progress this long is stuck, >= 1\n"
    "                        (default 10)\n"
    "  --json                print the report as one JSON object\n"
    "  --quiet               no progress line; the text report is one summary line\n"
    "  -h, --help            print this help\n"
    "\n"
    "While it runs on a terminal, one progress line is updated in place (not with --json or\n"
    "--quiet). Exit status: 0 when every check passed, 1 on any violation or stuck thread (or\n"
    "when the guest cannot boot), 2 on bad usage.\n";

constexpr const char* kCommand = "repatch stress";

// Returns nothing to go on, or the exit status to stop with.
std::optional<int> parse(int argc, char** argv, stress::Scenario& s) {
  CommandLine command_line(kCommand, kUsage);
  command_line.flag("--json", &s.json)
      .flag("--quiet", &s.quiet)
      .option("--vcpus", count_into(&s.vcpus))
      .option("--locks", count_into(&s.locks))
      .option("--modules", count_into(&s.modules))
      .option("--duration", seconds_into(&s.duration))
      .option("--watchdog", seconds_into(&s.watchdog))
      .option("--switch-rate", number_into(&s.switch_rate))
      .option("--nmi-rate", number_into(&s.nmi_rate))
      .option("--preempt-rate", number_into(&s.preempt_rate))
      .option("--microcode-every", number_into(&s.microcode_every_s))
      .option("--seed", whole_into(&s.seed))
      .option("--trigger",
              [&s](std::string_view value) -> std::optional<std::string> {
                constexpr std::string_view kReplay = "replay:";
                if (value == "manual") {
                  s.trigger = stress::Trigger::kManual;
                } else if (value == "simulated") {
                  s.trigger = stress::Trigger::kSimulated;
                } else if (value == "real") {
                  s.trigger = stress::Trigger::kReal;
                } else if (value.starts_with(kReplay) && value.size() > kReplay.size()) {
                  s.trigger = stress::Trigger::kReplay;
                  s.replay_file = std::string(value.substr(kReplay.size()));
                } else {
                  return "is one of manual, simulated, real, replay:FILE, not " + quoted(value);
                }
                return std::nullopt;
              })
      .option("--writer", choice_into(&s.writer, {std::pair{"auto", SwitchWriter::kAuto},
                                                  std::pair{"stop", SwitchWriter::kStopMachine},
                                                  std::pair{"stopless", SwitchWriter::kStopless}}))
      .option("--groups", [&s](std::string_view value) -> std::optional<std::string> {
        s.groups = comma_list(value);
        if (s.groups.empty()) return "names no group";
        return std::nullopt;
      });
  if (const std::optional<int> stop = command_line.parse(argc, argv)) return stop;
  if (const Status valid = stress::validate(s); !valid.ok()) {
    return command_line.usage_error(valid.error().message());
  }
  return std::nullopt;
}

}  // namespace

const char* stress_usage() {
  return kUsage;
}

int stress_command(int argc, char** argv) {
  stress::Scenario scenario;
  if (const std::optional<int> stop = parse(argc, argv, scenario)) return *stop;
  std::unique_ptr<triggers::HintSource> replay;
  if (scenario.trigger == stress::Trigger::kReplay) {
    Result<std::unique_ptr<triggers::HintSource>> loaded =
        triggers::load_replay_source(scenario.replay_file);
    if (!loaded.ok()) {
      std::fprintf(stderr, "%s: --trigger replay:%s: %s\n", kCommand, scenario.replay_file.c_str(),
                   loaded.error().message().c_str());
      return 2;
    }
    replay = std::move(loaded.value());
  }
  // Boot before any thread exists.
  Result<Engine*> engine = stress::boot_for_stress();
  if (!engine.ok()) {
    std::fprintf(stderr, "%s: boot failed: %s\n", kCommand, engine.error().to_string().c_str());
    return 1;
  }
  Result<std::vector<stress::SwitchableGroup>> groups =
      stress::resolve_groups(engine.value(), scenario);
  if (!groups.ok()) {
    std::fprintf(stderr, "%s: %s\n", kCommand, groups.error().message().c_str());
    return 2;
  }
  const stress::Report report =
      stress::run(engine.value(), scenario, std::move(groups).value(), std::move(replay));
  std::string out;
  if (scenario.json) {
    out = stress::render_json(report) + "\n";
  } else if (scenario.quiet) {
    out = stress::render_summary(report);
    for (const std::string& line : report.violation_lines)
      out += "  " + line + "\n";
  } else {
    out = stress::render_text(report);
  }
  const bool written = std::fputs(out.c_str(), stdout) >= 0 && std::fflush(stdout) == 0;
  if (!written) std::fprintf(stderr, "%s: could not write the report\n", kCommand);
  const int status = report.exit_status() != 0 || !written ? 1 : 0;
  // Stuck threads cannot be joined, and destructors would pull what they use from under them.
  if (report.unfinished) std::_Exit(status);
  return status;
}

}  // namespace repatch::tools
