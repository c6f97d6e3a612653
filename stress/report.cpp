#include "stress/report.h"

#include <algorithm>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <string>
#include <string_view>

#include "base/json.h"

namespace repatch::stress {
namespace {

[[gnu::format(printf, 1, 2)]] std::string format(const char* fmt, ...) {
  char buffer[512];
  va_list args;
  va_start(args, fmt);
  std::vsnprintf(buffer, sizeof buffer, fmt, args);
  va_end(args);
  return buffer;
}

std::string us(std::uint64_t ns) {
  return format("%.1f us", static_cast<double>(ns) / 1000.0);
}

std::string joined(const std::vector<std::string>& names) {
  std::string out;
  for (const std::string& n : names)
    out += (out.empty() ? "" : ",") + n;
  return out;
}

unsigned long long ull(std::uint64_t n) {
  return static_cast<unsigned long long>(n);
}

// "refused 0, ack_timeout 2, ...": every reason but kNone, in SwitchAbort's order.
std::string by_reason(const std::uint64_t (&counts)[kSwitchAbortCount]) {
  std::string out;
  for (std::size_t i = 0; i < kSwitchAbortCount; ++i) {
    if (i == static_cast<std::size_t>(SwitchAbort::kNone)) continue;
    out += format("%s%s %llu", out.empty() ? "" : ", ",
                  switch_abort_name(static_cast<SwitchAbort>(i)), ull(counts[i]));
  }
  return out;
}

// Every reason but kNone as JSON members, in SwitchAbort's order.
void reasons_json(text::JsonWriter& j, const std::uint64_t (&counts)[kSwitchAbortCount]) {
  j.begin_object();
  for (std::size_t i = 0; i < kSwitchAbortCount; ++i) {
    if (i == static_cast<std::size_t>(SwitchAbort::kNone)) continue;
    j.key(switch_abort_name(static_cast<SwitchAbort>(i))).value(counts[i]);
  }
  j.end_object();
}

const char* writer_label(SwitchWriter writer) {
  switch (writer) {
    case SwitchWriter::kStopMachine:
      return "stop-machine";
    case SwitchWriter::kBatch:
      return "batch";
    case SwitchWriter::kStopless:
      return "stopless";
    case SwitchWriter::kAuto:
      return "refused before a writer was chosen";
  }
  return "?";
}

}  // namespace

int Report::exit_status() const {
  return violations != 0 || stuck || unfinished || !error.empty() ? 1 : 0;
}

namespace {

// Nearest rank: the smallest value with at least p of the samples at or below it.
Report::Blackouts blackout_figures(std::vector<std::uint64_t> sorted) {
  if (sorted.empty()) return {};
  std::sort(sorted.begin(), sorted.end());
  auto rank = [&](double p) {
    const auto n = static_cast<double>(sorted.size());
    const auto index = static_cast<std::size_t>(std::max(1.0, std::ceil(p * n))) - 1;
    return sorted[std::min(index, sorted.size() - 1)];
  };
  return {.p50_ns = rank(0.50), .p99_ns = rank(0.99), .max_ns = sorted.back()};
}

// The writers a report lists, in this order: the ones a run can use, then kAuto, which only
// requests refused before the engine chose a writer are counted under.
constexpr SwitchWriter kReportedWriters[] = {SwitchWriter::kStopMachine, SwitchWriter::kBatch,
                                             SwitchWriter::kStopless, SwitchWriter::kAuto};

const WriterTotals& writer_totals(const SwitchTotals& totals, SwitchWriter writer) {
  return totals.by_writer[static_cast<std::size_t>(writer)];
}

}  // namespace

void summarise_blackouts(Report& report) {
  const Report::Blackouts all = blackout_figures(report.switches.blackouts_ns);
  report.blackout_p50_ns = all.p50_ns;
  report.blackout_p99_ns = all.p99_ns;
  report.blackout_max_ns = all.max_ns;
  for (std::size_t w = 0; w < kSwitchWriterCount; ++w)
    report.writer_blackouts[w] = blackout_figures(report.switches.by_writer[w].blackouts_ns);
}

std::string render_summary(const Report& r) {
  return format(
      "%s: %.1f s, %d vCPUs, %llu switches committed, %llu attempts aborted, "
      "%llu violations%s\n",
      r.exit_status() == 0 ? "PASS" : "FAIL", r.elapsed_s, r.scenario.vcpus,
      ull(r.switches.committed),
      [&] {
        std::uint64_t a = 0;
        for (const std::uint64_t n : r.switches.aborted_attempts)
          a += n;
        return ull(a);
      }(),
      ull(r.violations), r.stuck ? ", a thread stuck" : "");
}

std::string render_text(const Report& r) {
  const Scenario& s = r.scenario;
  std::string out;
  const std::string switching = s.trigger == Trigger::kManual
                                    ? format("switch rate %g/s (trigger manual)", s.switch_rate)
                                    : format("switches by trigger %s", trigger_name(s.trigger));
  const std::string microcode = s.microcode_every_s > 0
                                    ? format("microcode update every %g s", s.microcode_every_s)
                                    : std::string("no microcode updates");
  out += format(
      "scenario: %d vCPUs, %.1f s, %s, writer %s, NMI rate %g/s, preempt rate %g/s, %d locks, "
      "%d modules, %s, seed %llu\n",
      s.vcpus, static_cast<double>(s.duration.count()) / 1000.0, switching.c_str(),
      switch_writer_name(s.writer), s.nmi_rate, s.preempt_rate, s.locks, s.modules,
      microcode.c_str(), ull(s.seed));
  out += "groups switched: " + joined(r.groups) + "\n";
  out += format("elapsed: %.2f s\n", r.elapsed_s);
  out += "\n";
  const SwitchTotals& w = r.switches;
  out += format(
      "switches: %llu requested, %llu committed (%llu stop-machine, %llu batch, %llu stopless), "
      "%llu not committed\n",
      ull(w.requested), ull(w.committed), ull(w.stop_machine), ull(w.batch), ull(w.stopless),
      ull(w.requested - w.committed));
  out += "  not committed, by reason: " + by_reason(w.failed) + "\n";
  out += "  attempts aborted, by reason: " + by_reason(w.aborted_attempts) + "\n";
  if (!w.first_failure.empty()) out += "  first not committed: " + w.first_failure + "\n";
  out += "  blackout: p50 " + us(r.blackout_p50_ns) + ", p99 " + us(r.blackout_p99_ns) + ", max " +
         us(r.blackout_max_ns) + "\n";
  out += format(
      "  by writer (--writer %s for requests naming a group that is not interchangeable, "
      "batch for the others):\n",
      switch_writer_name(s.writer));
  for (const SwitchWriter writer : kReportedWriters) {
    const WriterTotals& t = writer_totals(w, writer);
    // kAuto only ever holds refusals, so it is listed only when there were some.
    if (t.requested == 0 && writer == SwitchWriter::kAuto) continue;
    const Report::Blackouts& b = r.writer_blackouts[static_cast<std::size_t>(writer)];
    out +=
        format("    %s: %llu requested, %llu committed, %llu not committed", writer_label(writer),
               ull(t.requested), ull(t.committed), ull(t.requested - t.committed));
    if (t.requested == 0) {
      out += "\n";
      continue;
    }
    out +=
        "; blackout p50 " + us(b.p50_ns) + ", p99 " + us(b.p99_ns) + ", max " + us(b.max_ns) + "\n";
    out += "      not committed, by reason: " + by_reason(t.failed) + "\n";
    out += "      attempts aborted, by reason: " + by_reason(t.aborted_attempts) + "\n";
  }
  out += format("  sites rewritten: %llu\n", ull(w.sites));
  out += format("  INT3 completions: %llu, NMI completions: %llu\n", ull(w.int3_completions),
                ull(w.nmi_completions));
  out += format("  commits checked (site bytes and group state): %llu\n", ull(r.commits_checked));
  out += "\n";
  out += format(
      "NMIs: %llu injected (%llu failed to send, %llu throttled), %llu delivered (handler runs, "
      "TLB shootdowns' included)\n",
      ull(r.nmis_injected), ull(r.nmis_injected_failed), ull(r.nmis_throttled),
      ull(r.nmis_delivered));
  out += format("preemptions: %llu, steal time %.1f ms\n", ull(r.preemptions),
                static_cast<double>(r.steal_ns) / 1e6);
  if (r.modules) {
    out += format("modules: %d, %llu loads, %llu unloads, %llu passes through their sites\n",
                  r.modules->modules, ull(r.modules->loads), ull(r.modules->unloads),
                  ull(r.modules->passes));
  }
  if (r.trigger) {
    const TriggerTotals& t = *r.trigger;
    out += format("trigger %s: steal enter %.3f%%, leave %.3f%%; decisions:", t.source.c_str(),
                  r.trigger_steal_enter, r.trigger_steal_leave);
    for (std::size_t i = 0; i < triggers::kActionCount; ++i) {
      out += format("%s %s %llu", i == 0 ? "" : ",",
                    triggers::action_name(static_cast<triggers::Action>(i)), ull(t.by_action[i]));
    }
    out += t.source_ended != 0 ? "; the source ended\n" : "\n";
    if (!t.first_source_error.empty())
      out += "  first source error: " + t.first_source_error + "\n";
    for (const std::string& line : t.switches)
      out += "  " + line + "\n";
  }
  if (r.microcode_events) {
    const MicrocodeTotals& m = *r.microcode_events;
    out += format(
        "microcode events: %llu updates, %llu reloads, %llu feature changes, %llu switches "
        "committed, %llu failed, %llu needs restart, %llu errors (toggling: %s; groups: %s)\n",
        ull(m.updates), ull(m.reloads), ull(m.feature_changes), ull(m.switches_committed),
        ull(m.switches_failed), ull(m.needs_restart), ull(m.errors),
        m.toggled.empty() ? "none" : joined(m.toggled).c_str(),
        m.groups.empty() ? "none" : joined(m.groups).c_str());
    for (const std::string& line : m.lines) {
      std::size_t from = 0;
      while (from < line.size()) {
        const std::size_t nl = std::min(line.find('\n', from), line.size());
        out += "  " + line.substr(from, nl - from) + "\n";
        from = nl + 1;
      }
    }
  } else {
    out += "microcode events: off (--microcode-every 0)\n";
  }
  out += "\n";
  for (const CounterSpec& c : workload_counters()) {
    const std::uint64_t value = r.workload[c.counter];
    out += c.text_before + std::to_string(value);
    if (c.per_second) {
      out += format(" (%.0f per second)",
                    r.elapsed_s > 0 ? static_cast<double>(value) / r.elapsed_s : 0.0);
    }
    out += c.text_after;
  }
  out += "\n";
  std::string kinds;
  for (std::size_t i = 0; i < static_cast<std::size_t>(Violation::kCount); ++i) {
    kinds += format("%s%s %llu", kinds.empty() ? "" : ", ",
                    violation_name(static_cast<Violation>(i)), ull(r.violations_by_kind[i]));
  }
  out += format("invariant violations: %llu (%s)\n", ull(r.violations), kinds.c_str());
  for (const std::string& line : r.violation_lines)
    out += "  " + line + "\n";
  if (r.unfinished) out += "some vCPU threads could not be stopped (stuck): exiting without them\n";
  if (!r.error.empty()) out += "error: " + r.error + "\n";
  out += render_summary(r);
  return out;
}

std::string render_json(const Report& r) {
  const Scenario& s = r.scenario;
  text::JsonWriter j;
  j.begin_object();
  j.key("result").value(r.exit_status() == 0 ? "pass" : "fail");
  j.key("scenario").begin_object();
  j.key("vcpus").value(static_cast<std::uint64_t>(s.vcpus));
  j.key("duration_s").value(static_cast<double>(s.duration.count()) / 1000.0);
  j.key("switch_rate").value(s.switch_rate);
  j.key("nmi_rate").value(s.nmi_rate);
  j.key("preempt_rate").value(s.preempt_rate);
  j.key("locks").value(static_cast<std::uint64_t>(s.locks));
  j.key("modules").value(static_cast<std::uint64_t>(s.modules));
  j.key("trigger").value(trigger_name(s.trigger));
  if (s.trigger == Trigger::kReplay) j.key("replay_file").value(s.replay_file);
  j.key("writer").value(switch_writer_name(s.writer));
  j.key("microcode_every_s").value(s.microcode_every_s);
  j.key("seed").value(s.seed);
  j.key("watchdog_s").value(static_cast<double>(s.watchdog.count()) / 1000.0);
  j.key("groups").begin_array();
  for (const std::string& g : r.groups)
    j.value(g);
  j.end_array();
  j.end_object();
  j.key("elapsed_s").value(r.elapsed_s);
  j.key("vcpus").value(static_cast<std::uint64_t>(s.vcpus));
  const SwitchTotals& w = r.switches;
  j.key("switches").begin_object();
  j.key("requested").value(w.requested);
  j.key("committed").value(w.committed);
  j.key("stop_machine").value(w.stop_machine);
  j.key("batch").value(w.batch);
  j.key("stopless").value(w.stopless);
  j.key("not_committed");
  reasons_json(j, w.failed);
  j.key("aborted_attempts");
  reasons_json(j, w.aborted_attempts);
  j.key("first_not_committed").value(w.first_failure);
  j.key("blackout_ns").begin_object();
  j.key("p50").value(r.blackout_p50_ns);
  j.key("p99").value(r.blackout_p99_ns);
  j.key("max").value(r.blackout_max_ns);
  j.end_object();
  // Keyed by switch_writer_name: "stop", "batch", "stopless" always, "auto" (refusals before a
  // writer was chosen) only when there were some.
  j.key("by_writer").begin_object();
  for (const SwitchWriter writer : kReportedWriters) {
    const WriterTotals& t = writer_totals(w, writer);
    if (t.requested == 0 && writer == SwitchWriter::kAuto) continue;
    const Report::Blackouts& b = r.writer_blackouts[static_cast<std::size_t>(writer)];
    j.key(switch_writer_name(writer)).begin_object();
    j.key("requested").value(t.requested);
    j.key("committed").value(t.committed);
    j.key("not_committed");
    reasons_json(j, t.failed);
    j.key("aborted_attempts");
    reasons_json(j, t.aborted_attempts);
    j.key("blackout_ns").begin_object();
    j.key("p50").value(b.p50_ns);
    j.key("p99").value(b.p99_ns);
    j.key("max").value(b.max_ns);
    j.end_object();
    j.end_object();
  }
  j.end_object();
  j.key("sites_rewritten").value(w.sites);
  j.key("int3_completions").value(w.int3_completions);
  j.key("nmi_completions").value(w.nmi_completions);
  j.key("commits_checked").value(r.commits_checked);
  j.end_object();
  j.key("nmis").begin_object();
  j.key("injected").value(r.nmis_injected);
  j.key("injected_failed").value(r.nmis_injected_failed);
  j.key("throttled").value(r.nmis_throttled);
  j.key("delivered").value(r.nmis_delivered);
  j.end_object();
  j.key("preemptions").value(r.preemptions);
  j.key("steal_ns").value(r.steal_ns);
  j.key("modules");
  if (r.modules) {
    j.begin_object();
    j.key("count").value(static_cast<std::uint64_t>(r.modules->modules));
    j.key("loads").value(r.modules->loads);
    j.key("unloads").value(r.modules->unloads);
    j.key("passes").value(r.modules->passes);
    j.end_object();
  } else {
    j.null_value();
  }
  j.key("trigger_decisions");
  if (r.trigger) {
    const TriggerTotals& t = *r.trigger;
    j.begin_object();
    j.key("source").value(t.source);
    j.key("steal_enter_percent").value(r.trigger_steal_enter);
    j.key("steal_leave_percent").value(r.trigger_steal_leave);
    j.key("by_action").begin_object();
    for (std::size_t i = 0; i < triggers::kActionCount; ++i)
      j.key(triggers::action_name(static_cast<triggers::Action>(i))).value(t.by_action[i]);
    j.end_object();
    j.key("source_ended").value(t.source_ended != 0);
    j.key("first_source_error").value(t.first_source_error);
    j.key("switches").begin_array();
    for (const std::string& line : t.switches)
      j.value(line);
    j.end_array();
    j.end_object();
  } else {
    j.null_value();
  }
  j.key("microcode_events");
  if (r.microcode_events) {
    const MicrocodeTotals& m = *r.microcode_events;
    j.begin_object();
    j.key("toggled").begin_array();
    for (const std::string& f : m.toggled)
      j.value(f);
    j.end_array();
    j.key("groups").begin_array();
    for (const std::string& g : m.groups)
      j.value(g);
    j.end_array();
    j.key("updates").value(m.updates);
    j.key("reloads").value(m.reloads);
    j.key("feature_changes").value(m.feature_changes);
    j.key("switches_committed").value(m.switches_committed);
    j.key("switches_failed").value(m.switches_failed);
    j.key("needs_restart").value(m.needs_restart);
    j.key("errors").value(m.errors);
    j.key("reports").begin_array();
    for (const std::string& line : m.lines)
      j.value(line);
    j.end_array();
    j.end_object();
  } else {
    j.null_value();
  }
  const char* open_object = nullptr;
  for (const CounterSpec& c : workload_counters()) {
    if (open_object != nullptr &&
        (c.json_object == nullptr || std::string_view(c.json_object) != open_object)) {
      j.end_object();
      open_object = nullptr;
    }
    if (c.json_object != nullptr && open_object == nullptr) {
      j.key(c.json_object).begin_object();
      open_object = c.json_object;
    }
    j.key(c.json_key).value(r.workload[c.counter]);
  }
  if (open_object != nullptr) j.end_object();
  j.key("violations").begin_object();
  j.key("total").value(r.violations);
  for (std::size_t i = 0; i < static_cast<std::size_t>(Violation::kCount); ++i) {
    j.key(violation_name(static_cast<Violation>(i))).value(r.violations_by_kind[i]);
  }
  j.key("details").begin_array();
  for (const std::string& line : r.violation_lines)
    j.value(line);
  j.end_array();
  j.end_object();
  j.key("stuck").value(r.stuck);
  j.key("unfinished").value(r.unfinished);
  j.key("error").value(r.error);
  j.end_object();
  return j.str();
}

}  // namespace repatch::stress
