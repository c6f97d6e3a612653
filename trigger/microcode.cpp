// Late microcode load: diff the CPU features and re-apply the feature-keyed alternatives of the
// whitelisted features.
#include <algorithm>

#include "repatch/triggers.h"

namespace repatch::triggers {

std::vector<std::string> default_microcode_whitelist() {
  // Features whose groups are all switchable live here: RTM (lock elision, stop-machine), RDPID
  // and CLFLUSHOPT (interchangeable, batch). HLE, RDTSCP and SERIALIZE are outside it: code
  // outside the engine (sync_core's SERIALIZE, the rdpid group's fallback to RDTSCP) reads them
  // once at start, so a change needs a restart.
  return {"clflushopt", "rdpid", "rtm"};
}

bool MicrocodeReport::ok() const {
  return std::all_of(switches.begin(), switches.end(),
                     [](const MicrocodeSwitch& s) { return s.committed; });
}

namespace {

std::string revision_text(const MicrocodeRevision& r) {
  if (r.per_cpu.empty()) return "unknown";
  bool same = std::all_of(r.per_cpu.begin(), r.per_cpu.end(),
                          [&](const std::string& v) { return v == r.per_cpu.front(); });
  if (same) return r.per_cpu.front();
  std::string out;
  for (std::size_t i = 0; i < r.per_cpu.size(); ++i) {
    out += (i ? " " : "") + std::string("cpu") + std::to_string(i) + "=" + r.per_cpu[i];
  }
  return out;
}

bool contains(const FeatureSet& set, const std::string& f) {
  return std::binary_search(set.begin(), set.end(), f);
}

}  // namespace

std::string describe(const MicrocodeReport& report) {
  std::string out =
      "microcode " + revision_text(report.before) + " -> " + revision_text(report.after) + "\n";
  if (report.changes.empty()) out += "  no feature changed\n";
  for (const FeatureChange& c : report.changes) {
    out += "  " + c.feature + (c.present ? " added" : " removed");
    out += c.whitelisted ? " (whitelisted" : " (not whitelisted";
    if (!c.groups.empty()) {
      out += "; groups:";
      for (const std::string& g : c.groups)
        out += " " + g;
    }
    out += ")\n";
  }
  for (const MicrocodeSwitch& s : report.switches) {
    out += std::string("  switch (") + switch_writer_name(s.writer) + ")";
    for (const GroupChoice& c : s.choices)
      out += " " + c.group + "=" + c.variant;
    out += s.committed ? ": committed\n" : ": FAILED: " + s.error + "\n";
  }
  for (const std::string& n : report.needs_restart)
    out += "  needs restart: " + n + "\n";
  return out;
}

Result<std::unique_ptr<MicrocodeWatcher>> MicrocodeWatcher::create(std::unique_ptr<CpuSource> cpu,
                                                                   Engine* engine,
                                                                   MicrocodeConfig config,
                                                                   SwitchFunction switcher) {
  if (engine == nullptr) {
    return Error(ErrorCode::kState, "the microcode watcher needs a booted engine");
  }
  if (cpu == nullptr) return Error(ErrorCode::kInvalidArgument, "the CPU source is null");
  const std::vector<std::string> known = known_features();
  for (const std::string& f : config.whitelist) {
    if (std::find(known.begin(), known.end(), f) == known.end()) {
      return Error(ErrorCode::kUnknownName, "microcode whitelist names unknown feature '" + f +
                                                "'; known: clflushopt, hle, rdpid, rdtscp, rtm, "
                                                "serialize");
    }
  }
  if (!switcher) switcher = engine_switcher(engine);
  std::unique_ptr<MicrocodeWatcher> w(
      new MicrocodeWatcher(std::move(cpu), engine, std::move(config), std::move(switcher)));
  Result<MicrocodeRevision> revision = w->cpu_->revision();
  if (!revision.ok()) return revision.error();
  Result<FeatureSet> features = w->cpu_->features();
  if (!features.ok()) return features.error();
  w->revision_ = std::move(revision.value());
  w->features_ = std::move(features.value());
  return w;
}

MicrocodeWatcher::MicrocodeWatcher(std::unique_ptr<CpuSource> cpu, Engine* engine,
                                   MicrocodeConfig config, SwitchFunction switcher)
    : cpu_(std::move(cpu)),
      engine_(engine),
      config_(std::move(config)),
      switcher_(std::move(switcher)) {}

Result<std::optional<MicrocodeReport>> MicrocodeWatcher::poll() {
  Result<MicrocodeRevision> revision = cpu_->revision();
  if (!revision.ok()) return revision.error();
  // Unchanged, and every group matched its feature after the last reload: nothing to do. A switch
  // that failed is tried again at each poll, whatever the revision.
  if (revision.value() == revision_ && !unsettled_) return std::optional<MicrocodeReport>();
  Result<MicrocodeReport> report = reloaded();
  if (!report.ok()) return report.error();
  return std::optional<MicrocodeReport>(std::move(report.value()));
}

Result<MicrocodeReport> MicrocodeWatcher::reloaded() {
  Result<MicrocodeRevision> revision = cpu_->revision();
  if (!revision.ok()) return revision.error();
  Result<FeatureSet> features = cpu_->features();
  if (!features.ok()) return features.error();

  MicrocodeReport report;
  report.before = revision_;
  report.after = revision.value();
  const EngineStatus status = engine_->status();
  std::vector<GroupChoice> batch, stop;
  for (const std::string& f : known_features()) {
    const bool was = contains(features_, f);
    const bool is = contains(features.value(), f);
    if (was == is) continue;
    FeatureChange change{
        .feature = f,
        .present = is,
        .whitelisted = std::find(config_.whitelist.begin(), config_.whitelist.end(), f) !=
                       config_.whitelist.end(),
        .groups = {}};
    for (const GroupStatus& g : status.groups) {
      if (g.feature == f && g.variants.size() == 2) change.groups.push_back(g.name);
    }
    if (!change.whitelisted) {
      std::string what = f + (is ? " added" : " removed");
      if (!change.groups.empty()) {
        what += " (groups left as they are:";
        for (const std::string& g : change.groups)
          what += " " + g;
        what += ")";
      }
      report.needs_restart.push_back(std::move(what));
    }
    report.changes.push_back(std::move(change));
  }
  // Every whitelisted feature-keyed group goes to the variant its feature calls for: the groups of
  // the features that changed now, and any group a failed switch of an earlier reload left behind.
  for (const GroupStatus& g : status.groups) {
    if (g.feature.empty() || g.variants.size() != 2 ||
        std::find(config_.whitelist.begin(), config_.whitelist.end(), g.feature) ==
            config_.whitelist.end()) {
      continue;
    }
    const std::string& target = g.variants[contains(features.value(), g.feature) ? 1 : 0];
    // An unpatched group ("indirect") runs its default variant through its slots.
    const std::string& current = g.variant == kIndirectVariant ? g.variants[0] : g.variant;
    if (current != target) (g.interchangeable ? batch : stop).push_back({g.name, target});
  }
  auto run = [&](std::vector<GroupChoice>& choices, SwitchWriter writer) {
    if (choices.empty()) return;
    SwitchOptions options = config_.switch_options;
    options.writer = writer;
    const SwitchOutcome outcome = switcher_(choices, options);
    report.switches.push_back(
        {.choices = std::move(choices),
         .writer = writer,
         .committed = outcome.committed(),
         .error = outcome.committed() ? "" : outcome.status.error().to_string()});
  };
  run(batch, SwitchWriter::kBatch);
  run(stop, SwitchWriter::kStopMachine);
  revision_ = std::move(revision.value());
  features_ = std::move(features.value());
  unsettled_ = !report.ok();
  return report;
}

}  // namespace repatch::triggers
