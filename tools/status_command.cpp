#include "tools/status_command.h"

#include <cstdio>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "base/json.h"
#include "base/text.h"
#include "repatch/engine.h"

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

// Returns 0 to go on, or the exit status to stop with.
int parse(int argc, char** argv, Options& options) {
  for (int i = 0; i < argc; ++i) {
    const std::string_view arg = argv[i];
    auto next = [&](const char* what) -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "repatch status: %s needs a value\n", what);
        return nullptr;
      }
      return argv[++i];
    };
    if (arg == "-h" || arg == "--help") {
      std::fputs(kUsage, stdout);
      return -1;
    } else if (arg == "--json") {
      options.json = true;
    } else if (arg == "--set") {
      const char* value = next("--set");
      if (value == nullptr) return 2;
      const char* eq = std::strchr(value, '=');
      if (eq == nullptr || eq == value || eq[1] == '\0') {
        std::fprintf(stderr, "repatch status: --set wants GROUP=VARIANT, got '%s'\n", value);
        return 2;
      }
      const std::string group(value, eq);
      for (const GroupChoice& earlier : options.boot.initial) {
        if (earlier.group == group) {
          std::fprintf(stderr, "repatch status: --set names group '%s' twice\n", group.c_str());
          return 2;
        }
      }
      options.boot.initial.push_back({group, std::string(eq + 1)});
    } else if (arg == "--cpu-features") {
      const char* value = next("--cpu-features");
      if (value == nullptr) return 2;
      std::vector<std::string> features;
      for (std::string_view rest = value; !rest.empty();) {
        const std::size_t comma = rest.find(',');
        const std::string_view name = rest.substr(0, comma);
        if (!name.empty()) features.emplace_back(name);
        rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
      }
      options.boot.features = std::move(features);
    } else if (arg == "--writer") {
      const char* value = next("--writer");
      if (value == nullptr) return 2;
      if (std::string_view(value) == "memfd") {
        options.boot.writer = TextWriter::kMemfdAlias;
      } else if (std::string_view(value) == "procmem") {
        options.boot.writer = TextWriter::kProcSelfMem;
      } else {
        std::fprintf(stderr, "repatch status: --writer is memfd or procmem, not '%s'\n", value);
        return 2;
      }
    } else {
      std::fprintf(stderr, "repatch status: unknown argument '%s'\n%s", argv[i], kUsage);
      return 2;
    }
  }
  return 0;
}

void print_text(const EngineStatus& s) {
  std::printf("text writer: %s", s.writer.c_str());
  if (s.text_end != 0) {
    std::printf(" (remapped %s-%s)", text::hex(s.text_begin).c_str(),
                text::hex(s.text_end).c_str());
  }
  std::printf("\nsync_core: %s\n", s.sync_core.c_str());
  std::printf("retained patch table: %zu bytes per site, %zu bytes for %zu sites\n\n",
              s.bytes_per_site, s.retained_bytes, s.sites.size());
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
  j.key("bytes_per_site").value(static_cast<std::uint64_t>(s.bytes_per_site));
  j.key("retained_bytes").value(static_cast<std::uint64_t>(s.retained_bytes));
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
  if (int rc = parse(argc, argv, options); rc != 0) return rc < 0 ? 0 : rc;
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
