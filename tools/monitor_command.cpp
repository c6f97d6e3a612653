#include "tools/monitor_command.h"

#include <chrono>
#include <cstdio>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>

#include "base/json.h"
#include "repatch/triggers.h"
#include "tools/command_line.h"
#include "trigger/text_fields.h"

namespace repatch::tools {
namespace {

using triggers::Decision;
using triggers::HintReading;

constexpr const char* kUsage =
    "usage: repatch monitor [--once] [--interval TIME] [--count N] [--json | --trace]\n"
    "                       [--steal ENTER:LEAVE] [--psi ENTER:LEAVE | --psi off]\n"
    "                       [--dwell TIME]\n"
    "\n"
    "Reads this machine's oversubscription hints once per interval and prints them with the\n"
    "decision the trigger policy would take (dedicated: native spinlock and tlb; oversubscribed:\n"
    "pv). It never switches anything: the policy runs as a dry run.\n"
    "\n"
    "Sources: CPUID 0x40000000/0x40000001 (hypervisor signature, KVM features, the\n"
    "KVM_HINTS_REALTIME hint, which means dedicated), the steal column of /proc/stat per CPU,\n"
    "/proc/pressure/cpu, and runnable tasks (/proc/stat procs_running) against the CPUs\n"
    "sched_getaffinity allows. Without PSI, or outside a VM, those fields are empty and a note\n"
    "says why; the policy uses what is there. The microcode revision and CPU features are shown\n"
    "at start, and again whenever the revision changes.\n"
    "\n"
    "  --once               one sample: wait one interval (steal is a share between two\n"
    "                       readings), print, exit\n"
    "  --interval TIME      time between readings: 250ms, 2s, 1.5 (seconds); default 1s\n"
    "  --count N            stop after N rows (default: run until interrupted)\n"
    "  --json               one JSON object per row instead of text\n"
    "  --trace              rows in the hint trace format (docs/hint-trace.md), to record\n"
    "                       this host and replay it later\n"
    "  --steal ENTER:LEAVE  steal thresholds in percent (default 10:3), or off\n"
    "  --psi ENTER:LEAVE    also use CPU pressure (some avg10, percent); default off\n"
    "  --dwell TIME         minimum time between two switches of the policy (default 10s)\n"
    "  -h, --help           print this help\n"
    "\n"
    "Exit status: 0 on success, 1 when a source cannot be read with --once (the reason is\n"
    "printed) or the output cannot be written, 2 on bad usage.\n";

enum class Format : std::uint8_t { kText, kJson, kTrace };

struct Options {
  bool once = false;
  std::chrono::nanoseconds interval = std::chrono::seconds(1);
  std::uint64_t count = 0;  // 0: no limit
  Format format = Format::kText;
  triggers::PolicyConfig policy;
};

// "250ms", "2s", "1.5" (seconds): a positive time of at most an hour.
std::optional<std::chrono::nanoseconds> parse_time(std::string_view s) {
  double scale = 1e9;
  if (s.ends_with("ms")) {
    scale = 1e6;
    s.remove_suffix(2);
  } else if (s.ends_with('s')) {
    s.remove_suffix(1);
  }
  const std::optional<double> v = triggers::text::parse_double(s);
  if (!v || *v <= 0 || *v * scale > 3600e9) return std::nullopt;
  return std::chrono::nanoseconds(static_cast<std::int64_t>(*v * scale));
}

std::optional<triggers::Thresholds> parse_thresholds(std::string_view s) {
  const std::size_t colon = s.find(':');
  if (colon == std::string_view::npos) return std::nullopt;
  const auto enter = triggers::text::parse_double(s.substr(0, colon));
  const auto leave = triggers::text::parse_double(s.substr(colon + 1));
  if (!enter || !leave) return std::nullopt;
  return triggers::Thresholds{.enter = *enter, .leave = *leave};
}

// Returns nothing to go on, or the exit status to stop with.
std::optional<int> parse(int argc, char** argv, Options& o) {
  o.policy.dry_run = true;
  bool json = false, trace = false;
  auto time_into = [](std::chrono::nanoseconds* out) -> ValueReader {
    return [out](std::string_view value) -> std::optional<std::string> {
      const auto t = parse_time(value);
      if (!t) {
        return "wants a time such as 250ms, 2s or 1.5 (seconds, more than 0, at most an hour), "
               "not " +
               quoted(value);
      }
      *out = *t;
      return std::nullopt;
    };
  };
  auto thresholds_into = [](std::optional<triggers::Thresholds>* out) -> ValueReader {
    return [out](std::string_view value) -> std::optional<std::string> {
      if (value == "off") {
        *out = std::nullopt;
        return std::nullopt;
      }
      *out = parse_thresholds(value);
      if (!*out) return "wants ENTER:LEAVE in percent or 'off', not " + quoted(value);
      return std::nullopt;
    };
  };
  CommandLine command_line("repatch monitor", kUsage);
  command_line.flag("--once", &o.once)
      .flag("--json", &json)
      .flag("--trace", &trace)
      .option("--interval", time_into(&o.interval))
      .option("--dwell", time_into(&o.policy.min_dwell))
      .option("--count",
              [&o](std::string_view value) -> std::optional<std::string> {
                const auto n = triggers::text::parse_u64(value);
                if (!n || *n == 0) return "wants a whole number above 0, not " + quoted(value);
                o.count = *n;
                return std::nullopt;
              })
      .option("--steal", thresholds_into(&o.policy.steal))
      .option("--psi", thresholds_into(&o.policy.psi));
  if (const std::optional<int> stop = command_line.parse(argc, argv)) return stop;
  if (json && trace) return command_line.usage_error("--json and --trace exclude each other");
  o.format = json ? Format::kJson : trace ? Format::kTrace : Format::kText;
  if (Status s = triggers::validate(o.policy); !s.ok()) {
    return command_line.usage_error(s.error().message());
  }
  if (o.once) o.count = 1;
  return std::nullopt;
}

std::string percent(const std::optional<double>& v) {
  if (!v) return "-";
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%.2f%%", *v);
  return buffer;
}

std::string words(const std::vector<std::string>& list) {
  std::string out;
  for (const std::string& w : list)
    out += (out.empty() ? "" : " ") + w;
  return out.empty() ? "(none)" : out;
}

std::string revision_text(const triggers::MicrocodeRevision& r) {
  if (r.per_cpu.empty())
    return "not reported (usual in a VM): only an explicit reload call detects updates";
  return r.per_cpu.front() + " (" + r.origin + ", " + std::to_string(r.per_cpu.size()) + " CPUs)";
}

std::string hints_text(const triggers::HypervisorHints& h) {
  if (!h.hypervisor) return "none (not a VM): no KVM hints; steal stays 0";
  std::string out = "'" + h.signature + "'";
  if (!h.kvm) return out + " (not KVM: no KVM feature bits or hints)";
  std::vector<std::string> f;
  if (h.steal_time) f.emplace_back("steal_time");
  if (h.pv_unhalt) f.emplace_back("pv_unhalt");
  if (h.pv_tlb_flush) f.emplace_back("pv_tlb_flush");
  if (h.pv_sched_yield) f.emplace_back("pv_sched_yield");
  return out + ", KVM features: " + words(f) +
         "; KVM_HINTS_REALTIME: " + (h.realtime ? "yes" : "no");
}

void json_reading(text::JsonWriter& j, const HintReading& r) {
  auto opt = [&](const char* key, const std::optional<double>& v) {
    j.key(key);
    if (v) {
      j.value(*v);
    } else {
      j.null_value();
    }
  };
  auto count = [&](const char* key, const std::optional<std::uint32_t>& v) {
    j.key(key);
    if (v) {
      j.value(static_cast<std::uint64_t>(*v));
    } else {
      j.null_value();
    }
  };
  opt("steal_percent", r.steal_percent);
  opt("max_cpu_steal_percent", r.max_cpu_steal_percent);
  opt("psi_some_avg10", r.psi_some_avg10);
  count("runnable", r.runnable);
  count("allowed_cpus", r.allowed_cpus);
  j.key("realtime_hint").value(r.realtime_hint);
  j.key("notes").begin_array();
  for (const std::string& n : r.notes)
    j.value(n);
  j.end_array();
}

void json_cpu(text::JsonWriter& j, const triggers::HypervisorHints& h,
              const triggers::MicrocodeRevision& rev, const triggers::FeatureSet& features) {
  j.key("hypervisor").begin_object();
  j.key("present").value(h.hypervisor).key("signature").value(h.signature);
  j.key("kvm").value(h.kvm).key("kvm_features").value(static_cast<std::uint64_t>(h.features));
  j.key("kvm_hints").value(static_cast<std::uint64_t>(h.hints));
  j.key("steal_time").value(h.steal_time).key("pv_unhalt").value(h.pv_unhalt);
  j.key("pv_tlb_flush").value(h.pv_tlb_flush).key("pv_sched_yield").value(h.pv_sched_yield);
  j.key("realtime").value(h.realtime);
  j.end_object();
  j.key("microcode").begin_object().key("origin").value(rev.origin).key("per_cpu").begin_array();
  for (const std::string& r : rev.per_cpu)
    j.value(r);
  j.end_array().end_object();
  j.key("features").begin_array();
  for (const std::string& f : features)
    j.value(f);
  j.end_array();
}

}  // namespace

int monitor_command(int argc, char** argv) {
  Options o;
  if (const std::optional<int> stop = parse(argc, argv, o)) return *stop;

  const triggers::HypervisorHints hints = triggers::read_hypervisor_hints();
  std::unique_ptr<triggers::CpuSource> cpu = triggers::make_real_cpu_source();
  Result<triggers::MicrocodeRevision> revision = cpu->revision();
  if (!revision.ok()) {
    // Not fatal: the hint sources do not need it.
    std::fprintf(stderr, "repatch monitor: microcode revision: %s\n",
                 revision.error().to_string().c_str());
    revision = triggers::MicrocodeRevision{};
  }
  triggers::FeatureSet features = cpu->features().value();

  triggers::TriggerConfig config;
  config.policy = o.policy;
  config.interval = o.interval;
  // A dry-run policy never calls it.
  triggers::SwitchFunction never = [](const std::vector<GroupChoice>&, const SwitchOptions&) {
    SwitchOutcome refused;
    refused.status = Error(ErrorCode::kState, "repatch monitor never switches");
    refused.reason = SwitchAbort::kRefused;
    return refused;
  };
  auto loop = triggers::TriggerLoop::create(triggers::make_real_source(), config, never);
  if (!loop.ok()) {
    std::fprintf(stderr, "repatch monitor: %s\n", loop.error().to_string().c_str());
    return 2;
  }

  if (o.format == Format::kText) {
    std::printf("hypervisor: %s\n", hints_text(hints).c_str());
    std::printf("microcode: %s\nCPU features: %s\n", revision_text(revision.value()).c_str(),
                words(features).c_str());
    auto thresholds = [](const std::optional<triggers::Thresholds>& t) {
      if (!t) return std::string("off");
      char buffer[64];
      std::snprintf(buffer, sizeof buffer, "enter %g%% leave %g%%", t->enter, t->leave);
      return std::string(buffer);
    };
    std::printf("policy (dry run): steal %s, psi %s, dwell %gs, every %gs\n\n",
                thresholds(o.policy.steal).c_str(), thresholds(o.policy.psi).c_str(),
                static_cast<double>(o.policy.min_dwell.count()) / 1e9,
                static_cast<double>(o.interval.count()) / 1e9);
    std::printf("%-9s %8s %9s %8s %9s  %-14s %s\n", "TIME", "STEAL", "MAXSTEAL", "PSI10",
                "RUN/CPUS", "MODE", "DECISION");
  } else if (o.format == Format::kTrace) {
    std::printf("# repatch hint trace, recorded by repatch monitor; hypervisor %s\n",
                hints_text(hints).c_str());
  }
  std::fflush(stdout);

  // The first reading only primes the steal share (it needs two samples).
  Result<std::optional<Decision>> primed = loop.value()->poll_once();
  if (!primed.ok() || !primed.value() || primed.value()->action == triggers::Action::kSourceError) {
    const std::string why = !primed.ok()      ? primed.error().to_string()
                            : !primed.value() ? "the source ended"
                                              : primed.value()->reason;
    std::fprintf(stderr, "repatch monitor: cannot read the hint sources: %s\n", why.c_str());
    if (o.once) return 1;
  }
  const std::chrono::nanoseconds origin =
      primed.ok() && primed.value() ? primed.value()->reading.time : triggers::steady_clock()();
  triggers::MicrocodeRevision last_revision = revision.value();
  auto next = std::chrono::steady_clock::now();
  for (std::uint64_t row = 0; o.count == 0 || row < o.count; ++row) {
    next += o.interval;
    std::this_thread::sleep_until(next);
    Result<std::optional<Decision>> d = loop.value()->poll_once();
    if (!d.ok() || !d.value()) return 1;  // the real source never ends; poll_once cannot fail here
    const Decision& decision = *d.value();
    if (decision.action == triggers::Action::kSourceError) {
      std::fprintf(stderr, "repatch monitor: %s\n", decision.reason.c_str());
      if (o.once) return 1;
      continue;
    }
    // A late microcode load shows as a new revision: report it with the features CPUID gives now.
    Result<triggers::MicrocodeRevision> now = cpu->revision();
    const bool microcode_changed = now.ok() && !(now.value() == last_revision);
    if (microcode_changed) {
      last_revision = now.value();
      features = cpu->features().value();
    }
    const HintReading& r = decision.reading;
    const double t = static_cast<double>((r.time - origin).count()) / 1e9;
    if (o.format == Format::kTrace) {
      std::printf("%s\n", triggers::format_trace_line(r, origin).c_str());
    } else if (o.format == Format::kJson) {
      text::JsonWriter j;
      j.begin_object();
      j.key("time_s").value(t);
      json_reading(j, r);
      j.key("mode").value(triggers::mode_name(decision.mode));
      j.key("wanted").value(triggers::mode_name(decision.wanted));
      j.key("decision").value(triggers::action_name(decision.action));
      j.key("reason").value(decision.reason);
      j.key("microcode_changed").value(microcode_changed);
      json_cpu(j, hints, last_revision, features);
      j.end_object();
      std::printf("%s\n", j.str().c_str());
    } else {
      const std::string run = (r.runnable ? std::to_string(*r.runnable) : "-") + "/" +
                              (r.allowed_cpus ? std::to_string(*r.allowed_cpus) : "-");
      std::printf("%-9.2f %8s %9s %8s %9s  %-14s %s: %s\n", t, percent(r.steal_percent).c_str(),
                  percent(r.max_cpu_steal_percent).c_str(), percent(r.psi_some_avg10).c_str(),
                  run.c_str(), triggers::mode_name(decision.mode),
                  triggers::action_name(decision.action), decision.reason.c_str());
      for (const std::string& note : r.notes)
        std::printf("          note: %s\n", note.c_str());
      if (microcode_changed) {
        std::printf("          microcode changed: %s; CPU features: %s\n",
                    revision_text(last_revision).c_str(), words(features).c_str());
      }
    }
    if (std::fflush(stdout) != 0 || std::ferror(stdout)) {
      std::fprintf(stderr, "repatch monitor: cannot write the output\n");
      return 1;
    }
  }
  return 0;
}

}  // namespace repatch::tools
