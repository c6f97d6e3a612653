#include "tools/stress_command.h"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>

#include "repatch/triggers.h"
#include "stress/report.h"
#include "stress/run.h"
#include "stress/scenario.h"

namespace repatch::tools {
namespace {

constexpr const char* kUsage =
    "usage: repatch stress [--vcpus N] [--duration SECONDS] [--switch-rate PER_S]\n"
    "                      [--nmi-rate PER_S] [--preempt-rate PER_S] [--locks N]\n"
    "                      [--groups LIST] [--trigger manual|simulated|real|replay:FILE]\n"
    "                      [--writer auto|stop|stopless] [--microcode-every SECONDS]\n"
    "                      [--seed N] [--watchdog SECONDS]\n"
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
    "  --nmi-rate PER_S      NMIs injected per second over all vCPUs, 0-100000 (default 1000)\n"
    "  --preempt-rate PER_S  preemptions per second, 0-1000, each 50 us to 1 ms (default 100)\n"
    "  --locks N             spinlocks guarding shared counters, 1-100000 (default 64)\n"
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
    "                                    stop-machine for these groups\n"
    "                          stop      stop-machine: every other vCPU parked for the write\n"
    "                          stopless  no stop: an INT3 fence, membarrier, and quiescence\n"
    "                                    read from the vCPUs' in-op marks; only vCPUs that\n"
    "                                    reach a fenced site wait\n"
    "                        A switch of interchangeable groups only (demo_clock, demo_flush)\n"
    "                        takes the batch writer whatever this says, and the microcode\n"
    "                        watcher's switches keep their own writers (batch for the\n"
    "                        interchangeable groups, stop-machine for lock_elision).\n"
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

// Returns false (after printing why) when `text` is not a number in full.
bool parse_number(const char* option, const char* text, double* out) {
  errno = 0;
  char* end = nullptr;
  const double value = std::strtod(text, &end);
  if (end == text || *end != '\0' || errno != 0 || !std::isfinite(value)) {
    std::fprintf(stderr, "%s: %s wants a number, got '%s'\n", kCommand, option, text);
    return false;
  }
  *out = value;
  return true;
}

bool parse_whole(const char* option, const char* text, std::uint64_t* out) {
  errno = 0;
  char* end = nullptr;
  const unsigned long long value = std::strtoull(text, &end, 0);
  if (end == text || *end != '\0' || errno != 0 || text[0] == '-') {
    std::fprintf(stderr, "%s: %s wants a whole number >= 0, got '%s'\n", kCommand, option, text);
    return false;
  }
  *out = value;
  return true;
}

// A count that must fit an int; the scenario's validation checks its range.
bool parse_count(const char* option, const char* text, int* out) {
  std::uint64_t value = 0;
  if (!parse_whole(option, text, &value)) return false;
  if (value > 1000000000) {
    std::fprintf(stderr, "%s: %s %s is out of range\n", kCommand, option, text);
    return false;
  }
  *out = static_cast<int>(value);
  return true;
}

bool parse_seconds(const char* option, const char* text, std::chrono::milliseconds* out) {
  double seconds = 0;
  if (!parse_number(option, text, &seconds)) return false;
  if (seconds < 0 || seconds > 1e9) {
    std::fprintf(stderr, "%s: %s wants seconds >= 0, got '%s'\n", kCommand, option, text);
    return false;
  }
  *out = std::chrono::milliseconds(static_cast<std::int64_t>(std::llround(seconds * 1000.0)));
  return true;
}

// Returns 0 to go on, -1 after --help, or the exit status to stop with.
int parse(int argc, char** argv, stress::Scenario& s) {
  for (int i = 0; i < argc; ++i) {
    std::string_view arg = argv[i];
    std::string inline_value;
    bool has_inline = false;
    if (arg.starts_with("--")) {
      if (const std::size_t eq = arg.find('='); eq != std::string_view::npos) {
        inline_value = std::string(arg.substr(eq + 1));
        arg = arg.substr(0, eq);
        has_inline = true;
      }
    }
    const std::string name(arg);
    auto value = [&]() -> const char* {
      if (has_inline) return inline_value.c_str();
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s: %s needs a value\n", kCommand, name.c_str());
        return nullptr;
      }
      return argv[++i];
    };
    auto flag = [&]() {
      if (!has_inline) return true;
      std::fprintf(stderr, "%s: %s takes no value\n", kCommand, name.c_str());
      return false;
    };
    bool ok = true;
    const char* v = nullptr;
    if (arg == "-h" || arg == "--help") {
      std::fputs(kUsage, stdout);
      return -1;
    } else if (arg == "--json") {
      ok = flag();
      s.json = true;
    } else if (arg == "--quiet") {
      ok = flag();
      s.quiet = true;
    } else if (arg == "--vcpus") {
      ok = (v = value()) != nullptr && parse_count(name.c_str(), v, &s.vcpus);
    } else if (arg == "--locks") {
      ok = (v = value()) != nullptr && parse_count(name.c_str(), v, &s.locks);
    } else if (arg == "--duration") {
      ok = (v = value()) != nullptr && parse_seconds(name.c_str(), v, &s.duration);
    } else if (arg == "--watchdog") {
      ok = (v = value()) != nullptr && parse_seconds(name.c_str(), v, &s.watchdog);
    } else if (arg == "--switch-rate") {
      ok = (v = value()) != nullptr && parse_number(name.c_str(), v, &s.switch_rate);
    } else if (arg == "--nmi-rate") {
      ok = (v = value()) != nullptr && parse_number(name.c_str(), v, &s.nmi_rate);
    } else if (arg == "--preempt-rate") {
      ok = (v = value()) != nullptr && parse_number(name.c_str(), v, &s.preempt_rate);
    } else if (arg == "--seed") {
      ok = (v = value()) != nullptr && parse_whole(name.c_str(), v, &s.seed);
    } else if (arg == "--trigger") {
      ok = (v = value()) != nullptr;
      const std::string_view t = ok ? std::string_view(v) : std::string_view("manual");
      if (t == "manual") {
        s.trigger = stress::Trigger::kManual;
      } else if (t == "simulated") {
        s.trigger = stress::Trigger::kSimulated;
      } else if (t == "real") {
        s.trigger = stress::Trigger::kReal;
      } else if (t.starts_with("replay:") && t.size() > 7) {
        s.trigger = stress::Trigger::kReplay;
        s.replay_file = std::string(t.substr(7));
      } else {
        std::fprintf(stderr,
                     "%s: --trigger '%s' is not one of manual, simulated, real, replay:FILE\n",
                     kCommand, v);
        ok = false;
      }
    } else if (arg == "--writer") {
      ok = (v = value()) != nullptr;
      const std::string_view w = ok ? std::string_view(v) : std::string_view("auto");
      if (w == "auto") {
        s.writer = SwitchWriter::kAuto;
      } else if (w == "stop") {
        s.writer = SwitchWriter::kStopMachine;
      } else if (w == "stopless") {
        s.writer = SwitchWriter::kStopless;
      } else if (ok) {
        std::fprintf(stderr, "%s: --writer '%s' is not one of auto, stop, stopless\n", kCommand, v);
        ok = false;
      }
    } else if (arg == "--microcode-every") {
      ok = (v = value()) != nullptr && parse_number(name.c_str(), v, &s.microcode_every_s);
    } else if (arg == "--groups") {
      ok = (v = value()) != nullptr;
      if (ok) {
        s.groups.clear();
        for (std::string_view rest = v; !rest.empty();) {
          const std::size_t comma = rest.find(',');
          const std::string_view group = rest.substr(0, comma);
          if (!group.empty()) s.groups.emplace_back(group);
          rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
        }
        if (s.groups.empty()) {
          std::fprintf(stderr, "%s: --groups names no group\n", kCommand);
          ok = false;
        }
      }
    } else {
      std::fprintf(stderr, "%s: unknown argument '%s'\n\n%s", kCommand, argv[i], kUsage);
      return 2;
    }
    if (!ok) return 2;
  }
  if (const Status valid = stress::validate(s); !valid.ok()) {
    std::fprintf(stderr, "%s: %s\n", kCommand, valid.error().message().c_str());
    return 2;
  }
  return 0;
}

}  // namespace

const char* stress_usage() {
  return kUsage;
}

int stress_command(int argc, char** argv) {
  stress::Scenario scenario;
  if (const int rc = parse(argc, argv, scenario); rc != 0) return rc < 0 ? 0 : rc;
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
