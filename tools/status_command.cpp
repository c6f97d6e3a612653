#include "tools/status_command.h"

#include <signal.h>

#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/json.h"
#include "base/signal_name.h"
#include "base/text.h"
#include "repatch/engine.h"
#include "tools/command_line.h"

namespace repatch::tools {
namespace {

constexpr const char* kUsage =
    "usage: repatch status [--json] [--set GROUP=VARIANT]... [--writer memfd|procmem]\n"
    "                      [--cpu-features LIST]\n"
    "\n"
    "Boots the demo guest built into this command and lists every group with its current\n"
    "variant, and every site with its address, op, length, current variant and instruction\n"
    "(disassembled from the bytes the site holds now).\n"
    "\n"
    "  --set GROUP=VARIANT  boot GROUP in VARIANT instead of its default (repeatable);\n"
    "                       VARIANT 'indirect' leaves the group's sites unpatched\n"
    "  --writer KIND        how site bytes are written: memfd (default: stores through a\n"
    "                       writable alias of the remapped text) or procmem (/proc/self/mem)\n"
    "  --cpu-features LIST  pretend the CPU has exactly these features (comma-separated,\n"
    "                       may be empty) when feature-keyed groups choose their variant;\n"
    "                       known: clflushopt, hle, rdpid, rdtscp, rtm, serialize\n"
    "  --json               print one JSON object instead of text\n"
    "  -h, --help           print this help\n"
    "\n"
    "Exit status: 0 on success, 1 when boot fails (the reason is printed) or the output cannot\n"
    "be written, 2 on bad usage.\n";

struct Options {
  BootOptions boot;
  bool json = false;
};

// Returns nothing to go on, or the exit status to stop with.
std::optional<int> parse(int argc, char** argv, Options& options) {
  CommandLine command_line("repatch status", kUsage);
  command_line.flag("--json", &options.json)
      .option("--set",
              [&options](std::string_view value) -> std::optional<std::string> {
                const std::size_t eq = value.find('=');
                if (eq == std::string_view::npos || eq == 0 || eq + 1 == value.size()) {
                  return "wants GROUP=VARIANT, got " + quoted(value);
                }
                const std::string group(value.substr(0, eq));
                for (const GroupChoice& earlier : options.boot.initial) {
                  if (earlier.group == group) return "names group " + quoted(group) + " twice";
                }
                options.boot.initial.push_back({group, std::string(value.substr(eq + 1))});
                return std::nullopt;
              })
      .option("--cpu-features",
              [&options](std::string_view value) {
                options.boot.features = comma_list(value);
                return std::optional<std::string>();
              })
      .option("--writer",
              choice_into(&options.boot.writer, {std::pair{"memfd", TextWriter::kMemfdAlias},
                                                 std::pair{"procmem", TextWriter::kProcSelfMem}}));
  return command_line.parse(argc, argv);
}

void print_text(const EngineStatus& s) {
  std::printf("text writer: %s", s.writer.c_str());
  if (s.text_end != 0) {
    std::printf(" (remapped %s-%s)", text::hex(s.text_begin).c_str(),
                text::hex(s.text_end).c_str());
  }
  std::printf("\nsync_core: %s\n", s.sync_core.c_str());
  std::printf("signals: IPI %s, NMI %s, #BP %s\n", text::signal_name(s.ipi_signal).c_str(),
              text::signal_name(s.nmi_signal).c_str(), text::signal_name(SIGTRAP).c_str());
  std::printf("retained patch table: %zu bytes per site, %zu bytes for %zu sites\n",
              s.bytes_per_site, s.retained_bytes, s.sites.size());
  for (const ModuleStatus& m : s.modules) {
    std::printf("object: %s, %zu sites, %zu groups of its own, %zu bytes kept%s%s\n",
                m.name.c_str(), m.sites, m.groups, m.retained_bytes,
                m.refusal.empty() ? "" : "; refused: ", m.refusal.c_str());
  }
  std::printf("\n");
  std::printf("%-16s %-11s %-22s %4s %6s  %s\n", "GROUP", "VARIANT", "VARIANTS", "OPS", "SITES",
              "NOTES");
  for (const GroupStatus& g : s.groups) {
    std::string variants;
    for (const std::string& v : g.variants)
      variants += (variants.empty() ? "" : ",") + v;
    std::string notes;
    if (g.interchangeable) notes += "switchable any time";
    if (!g.feature.empty()) {
      notes += std::string(notes.empty() ? "" : "; ") + "keyed on " + g.feature +
               (g.feature_present ? " (present)" : " (absent)");
    }
    std::printf("%-16s %-11s %-22s %4zu %6zu  %s\n", g.name.c_str(), g.variant.c_str(),
                variants.c_str(), g.ops, g.sites, notes.c_str());
  }
  std::printf("\n%-18s %-24s %3s %-10s %-60s %s\n", "ADDRESS", "OP", "LEN", "VARIANT",
              "INSTRUCTION", "IN");
  for (const SiteStatus& site : s.sites) {
    std::printf("%-18s %-24s %3u %-10s %-60s %s\n", text::hex(site.address).c_str(),
                site.op.c_str(), static_cast<unsigned>(site.length), site.variant.c_str(),
                site.instruction.c_str(), site.symbol.empty() ? "?" : site.symbol.c_str());
  }
}

void print_json(const EngineStatus& s) {
  text::JsonWriter j;
  j.begin_object();
  j.key("writer").value(s.writer);
  j.key("text_begin").value(text::hex(s.text_begin));
  j.key("text_end").value(text::hex(s.text_end));
  j.key("sync_core").value(s.sync_core);
  j.key("ipi_signal").value(static_cast<std::uint64_t>(s.ipi_signal));
  j.key("nmi_signal").value(static_cast<std::uint64_t>(s.nmi_signal));
  j.key("bytes_per_site").value(static_cast<std::uint64_t>(s.bytes_per_site));
  j.key("retained_bytes").value(static_cast<std::uint64_t>(s.retained_bytes));
  j.key("modules").begin_array();
  for (const ModuleStatus& m : s.modules) {
    j.begin_object();
    j.key("name").value(m.name);
    j.key("sites").value(static_cast<std::uint64_t>(m.sites));
    j.key("groups").value(static_cast<std::uint64_t>(m.groups));
    j.key("retained_bytes").value(static_cast<std::uint64_t>(m.retained_bytes));
    j.key("refusal").value(m.refusal);
    j.key("text_begin").value(text::hex(m.text_begin));
    j.key("text_end").value(text::hex(m.text_end));
    j.end_object();
  }
  j.end_array();
  j.key("groups").begin_array();
  for (const GroupStatus& g : s.groups) {
    j.begin_object();
    j.key("name").value(g.name);
    j.key("variant").value(g.variant);
    j.key("variants").begin_array();
    for (const std::string& v : g.variants)
      j.value(v);
    j.end_array();
    j.key("interchangeable").value(g.interchangeable);
    j.key("feature").value(g.feature);
    j.key("feature_present").value(g.feature_present);
    j.key("ops").value(static_cast<std::uint64_t>(g.ops));
    j.key("sites").value(static_cast<std::uint64_t>(g.sites));
    j.end_object();
  }
  j.end_array();
  j.key("sites").begin_array();
  for (const SiteStatus& site : s.sites) {
    j.begin_object();
    j.key("address").value(text::hex(site.address));
    j.key("op").value(site.op);
    j.key("group").value(site.group);
    j.key("length").value(static_cast<std::uint64_t>(site.length));
    j.key("variant").value(site.variant);
    j.key("bytes").value(text::hex_bytes(site.bytes));
    j.key("instruction").value(site.instruction);
    j.key("symbol").value(site.symbol);
    j.end_object();
  }
  j.end_array();
  j.end_object();
  std::printf("%s\n", j.str().c_str());
}

}  // namespace

const char* status_usage() {
  return kUsage;
}

int status_command(int argc, char** argv) {
  Options options;
  if (const std::optional<int> stop = parse(argc, argv, options)) return *stop;
  Result<Engine*> engine = Engine::boot(options.boot);
  if (!engine.ok()) {
    std::fprintf(stderr, "repatch status: boot failed: %s\n", engine.error().to_string().c_str());
    return 1;
  }
  const EngineStatus status = engine.value()->status();
  if (options.json) {
    print_json(status);
  } else {
    print_text(status);
  }
  if (std::fflush(stdout) != 0 || std::ferror(stdout)) {
    std::fprintf(stderr, "repatch status: could not write the output\n");
    return 1;
  }
  return 0;
}

}  // namespace repatch::tools
