// Triggers: what decides, in production, that groups switch.
//
// Two kinds of event switch groups without anybody asking by hand:
//
//  - The host becomes oversubscribed (or stops being so). A *hint source* (HintSource) produces
//    readings: the share of CPU time the hypervisor stole, CPU pressure, runnable tasks against
//    allowed CPUs, and KVM's REALTIME hint. A *policy* (Policy) turns readings into a mode,
//    dedicated or oversubscribed, with hysteresis, a minimum dwell time and a rate limit, and a
//    *trigger loop* (TriggerLoop) polls the source and switches the configured groups (by default
//    spinlock and tlb: native when dedicated, pv when oversubscribed) through a switch function,
//    logging every decision with the reading that caused it.
//  - A late microcode load changes the CPU's features (a real update removed TSX/RTM from running
//    machines). A *microcode watcher* (MicrocodeWatcher) notices a changed revision, or is told,
//    re-reads the features from its CpuSource, and switches the feature-keyed groups
//    (REPATCH_DEFINE_FEATURE_GROUP) of whitelisted features to the variant that matches the CPU.
//    Changes to features outside the whitelist are reported as needing a restart.
//
// Sources come in three kinds behind one interface: real (this machine's CPUID, /proc and
// /sys), simulated (the guest's simulated hypervisor; guest/simulated_source.h, in the
// repatch_guest_simulated_source object library of the source tree), and replay (a recorded trace
// in the text format of docs/hint-trace.md). Nothing here throws; errors are values
// (repatch/error.h).
#ifndef REPATCH_TRIGGERS_H_
#define REPATCH_TRIGGERS_H_

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "repatch/engine.h"
#include "repatch/error.h"

namespace repatch::triggers {

// ---- readings and sources --------------------------------------------------------------------

/// A clock: nanoseconds since an arbitrary fixed origin, never going backwards.
using Clock = std::function<std::chrono::nanoseconds()>;

/// std::chrono::steady_clock as a Clock.
Clock steady_clock();

/// One reading of how contended the host is. A field a source could not measure is empty (and
/// `notes` usually says why); the policy ignores empty fields.
struct HintReading {
  /// When the reading was taken, on the source's clock (for a replay: the trace's time).
  std::chrono::nanoseconds time{0};
  /// Share of CPU time stolen by the hypervisor since the previous reading, over all CPUs, in
  /// percent (0 to 100). Empty on a source's first reading (a share needs two samples).
  std::optional<double> steal_percent = std::nullopt;
  /// The same share for the CPU that lost the most.
  std::optional<double> max_cpu_steal_percent = std::nullopt;
  /// /proc/pressure/cpu "some avg10": percent of the last 10 s in which a task waited for a CPU.
  std::optional<double> psi_some_avg10 = std::nullopt;
  /// Runnable tasks (/proc/stat procs_running) and CPUs this process may run on
  /// (sched_getaffinity).
  std::optional<std::uint32_t> runnable = std::nullopt;
  std::optional<std::uint32_t> allowed_cpus = std::nullopt;
  /// Preemptions that ended since the previous reading (simulated source).
  std::optional<std::uint64_t> preemptions = std::nullopt;
  /// KVM_HINTS_REALTIME (CPUID 0x40000001 EDX bit 0): the host promises dedicated CPUs.
  bool realtime_hint = false;
  /// Why fields are empty or what fallback was used ("no /proc/pressure/cpu: ..."), for people.
  std::vector<std::string> notes = {};
};

/// A producer of readings. Implementations: make_real_source(), make_replay_source(), and the
/// simulated source (guest/simulated_source.h). A harness may implement its own.
class HintSource {
 public:
  virtual ~HintSource() = default;
  /// "real", "replay", "simulated", ...
  virtual std::string_view name() const = 0;
  /// The next reading. std::nullopt when the source has ended (a replay at the end of its trace);
  /// an error when a reading could not be taken (a /proc file that cannot be parsed; the message
  /// names the file and the line). A source that failed may succeed at the next call.
  virtual Result<std::optional<HintReading>> read() = 0;
};

/// What CPUID says about the hypervisor (leaves 0x40000000 and 0x40000001).
struct HypervisorHints {
  bool hypervisor = false;  ///< CPUID.1:ECX[31]: running under a hypervisor
  std::string signature;    ///< "KVMKVMKVM" on KVM, "" without a hypervisor
  bool kvm = false;
  std::uint32_t features = 0;   ///< 0x40000001 EAX (KVM only)
  std::uint32_t hints = 0;      ///< 0x40000001 EDX (KVM only)
  bool steal_time = false;      ///< EAX bit 5, KVM_FEATURE_STEAL_TIME
  bool pv_unhalt = false;       ///< EAX bit 7, KVM_FEATURE_PV_UNHALT
  bool pv_tlb_flush = false;    ///< EAX bit 9, KVM_FEATURE_PV_TLB_FLUSH
  bool pv_sched_yield = false;  ///< EAX bit 13, KVM_FEATURE_PV_SCHED_YIELD
  bool realtime = false;        ///< EDX bit 0, KVM_HINTS_REALTIME
};

/// Reads the hypervisor leaves with CPUID (slow in a VM: microseconds). Never fails: on bare
/// metal or another hypervisor the KVM fields are zero.
HypervisorHints read_hypervisor_hints();

struct RealSourceOptions {
  /// Where /proc is: "/proc" on a live system; a directory holding stat and pressure/cpu in tests.
  std::string proc_dir = "/proc";
  /// Whether to read the hypervisor hints with CPUID (else `hints` is used as given).
  bool read_cpuid = true;
  HypervisorHints hints = {};
  /// Stamps each reading.
  Clock clock = steady_clock();
};

/// The real source: steal time per CPU from <proc_dir>/stat, CPU pressure from
/// <proc_dir>/pressure/cpu, procs_running against sched_getaffinity, and KVM_HINTS_REALTIME from
/// CPUID. Fallbacks, each with a note in the reading: no pressure/cpu (kernel without PSI, or
/// booted with psi=0) leaves psi_some_avg10 empty; no steal column (a kernel older than 2.6.11)
/// leaves the steal fields empty; not a VM leaves realtime_hint false. read() fails with kSystem
/// when <proc_dir>/stat cannot be read, kInvalidArgument when it or pressure/cpu is malformed
/// (the message names file and line). Never returns std::nullopt.
std::unique_ptr<HintSource> make_real_source(RealSourceOptions options = {});

/// A replay of `trace` (the text format of docs/hint-trace.md: one reading per line, its time in
/// milliseconds first, then key=value fields). The whole trace is parsed here: fails with
/// kInvalidArgument naming the first bad line and what is wrong with it. Readings come back in
/// order, then std::nullopt.
Result<std::unique_ptr<HintSource>> make_replay_source(std::string_view trace);

/// make_replay_source() on the contents of file `path`. Also fails with kSystem when the file
/// cannot be read, and kInvalidArgument when it is larger than 64 MiB.
Result<std::unique_ptr<HintSource>> load_replay_source(const std::string& path);

/// One line of the trace format for `reading` (no newline), with `origin` subtracted from its
/// time: what `repatch monitor --trace` prints, so that a recorded day can be replayed.
std::string format_trace_line(const HintReading& reading, std::chrono::nanoseconds origin);

/// A source whose reading the caller sets: a harness driving the loop by hand, a test, a
/// benchmark. read() returns the reading last given to set(), with `time` from its clock (an
/// empty reading before the first set()). Thread-safe: set() from any thread while the loop's
/// thread reads. The loop owns the source; keep a plain pointer to it to call set().
class ManualSource final : public HintSource {
 public:
  explicit ManualSource(Clock clock = steady_clock());
  std::string_view name() const override { return "manual"; }
  /// Replaces the reading that later read() calls return.
  void set(HintReading reading);
  /// Never fails, never ends.
  Result<std::optional<HintReading>> read() override;

 private:
  Clock clock_;
  std::mutex mutex_;
  HintReading reading_;
};

// ---- the policy ------------------------------------------------------------------------------

enum class Mode : std::uint8_t {
  kDedicated,       ///< every vCPU has a CPU of its own: native variants win
  kOversubscribed,  ///< vCPUs wait for CPUs: paravirt variants win
};

/// "dedicated" or "oversubscribed".
const char* mode_name(Mode mode);

/// A signal's hysteresis: it calls for oversubscribed at or above `enter`, and lets the policy go
/// back to dedicated only at or below `leave` (leave <= enter).
struct Thresholds {
  double enter = 0;
  double leave = 0;
};

struct PolicyConfig {
  /// steal_percent thresholds (percent). Empty: steal is not used.
  std::optional<Thresholds> steal = Thresholds{.enter = 10.0, .leave = 3.0};
  /// psi_some_avg10 thresholds (percent). Empty by default: CPU pressure also rises when the
  /// guest itself has more runnable tasks than CPUs, which no paravirt variant helps.
  std::optional<Thresholds> psi = std::nullopt;
  /// runnable / allowed_cpus thresholds (a ratio). Empty by default, for the same reason.
  std::optional<Thresholds> runnable_per_cpu = std::nullopt;
  /// After a committed switch (or from the start), no switch for this long.
  std::chrono::nanoseconds min_dwell = std::chrono::seconds(10);
  /// At most `max_switches` switch attempts (retries included) in any `rate_window`.
  std::uint32_t max_switches = 6;
  std::chrono::nanoseconds rate_window = std::chrono::minutes(10);
  /// A switch that fails is retried, while still wanted, after `retry_backoff`, doubled after each
  /// failure, at most `max_retries` times; then the policy gives up until the wanted mode changes.
  std::uint32_t max_retries = 3;
  std::chrono::nanoseconds retry_backoff = std::chrono::seconds(1);
  /// Decide and log, but never switch (Action::kWouldSwitch instead of kSwitch).
  bool dry_run = false;
  /// The mode the groups are in when the policy starts.
  Mode initial = Mode::kDedicated;
};

/// Checks `config`: each thresholds pair has 0 <= leave <= enter, finite; max_switches >= 1;
/// durations not negative. Fails with kInvalidArgument naming the field.
Status validate(const PolicyConfig& config);

/// What a decision did.
enum class Action : std::uint8_t {
  kStay,             ///< the readings call for the current mode
  kSwitch,           ///< a switch to `wanted` was attempted (see the outcome fields)
  kWouldSwitch,      ///< dry run: a switch would have been attempted
  kHeldByDwell,      ///< a switch is wanted, but the current mode has not lasted min_dwell yet
  kHeldByRateLimit,  ///< a switch is wanted, but max_switches were attempted within rate_window
  kHeldByBackoff,    ///< a failed switch waits for its retry time
  kGaveUp,       ///< max_retries failed switches in a row: waiting for the wanted mode to change
  kSourceError,  ///< the source could not produce a reading (see `reason`)
};
/// The number of Action values: one past the last, so a new last action must replace it here.
inline constexpr std::size_t kActionCount = static_cast<std::size_t>(Action::kSourceError) + 1;

/// "stay", "switch", "would_switch", "held_by_dwell", "held_by_rate_limit", "held_by_backoff",
/// "gave_up", "source_error".
const char* action_name(Action action);

/// One decision, with the reading that caused it.
struct Decision {
  std::uint64_t sequence = 0;  ///< 0, 1, 2, ... per policy
  HintReading reading;
  Mode mode = Mode::kDedicated;    ///< the mode before the decision
  Mode wanted = Mode::kDedicated;  ///< the mode the readings call for
  Action action = Action::kStay;
  /// For a person: which signal crossed which threshold ("steal 12.4% >= enter 10%"), or why the
  /// switch is held.
  std::string reason;
  /// For kSwitch: the retry number (0 for a first attempt) and what the switch did.
  std::uint32_t retry = 0;
  bool committed = false;
  SwitchAbort abort_reason = SwitchAbort::kNone;
  std::uint32_t attempts = 0;  ///< engine attempts inside the switch
  std::chrono::nanoseconds blackout{0};
  std::string error;  ///< the switch's error message when not committed
  /// On the trigger loop's clock: when the decision was made, and when its switch returned.
  std::chrono::nanoseconds decided_at{0};
  std::chrono::nanoseconds switched_at{0};
};

/// One line for a person: "#3 switch dedicated -> oversubscribed: steal 12.4% >= enter 10%
/// [committed, 1 attempt, blackout 45us] (steal=12.4 psi=1.0 runnable=3/2)".
std::string describe(const Decision& decision);

/// Turns readings into decisions. Not thread-safe; the trigger loop serialises its use. Time is
/// the readings' own (HintReading::time), so a replay decides exactly as the live run would.
class Policy {
 public:
  /// `config` should pass validate(); an invalid one is used as given.
  explicit Policy(PolicyConfig config);

  /// Decides what to do with `reading`. When the result's action is kSwitch, the caller attempts
  /// the switch and then calls record_outcome() with the result before the next decide().
  Decision decide(const HintReading& reading);

  /// Records what the switch of `decision` (its action kSwitch) did, filling its outcome fields;
  /// the mode changes only when `outcome` committed.
  void record_outcome(Decision& decision, const SwitchOutcome& outcome,
                      std::chrono::nanoseconds switched_at);

  /// A decision of kind kSourceError for `error` (the mode does not change).
  Decision source_error(const Error& error);

  /// The mode the groups are in as far as the policy knows (changed by committed switches, and
  /// by kWouldSwitch decisions in a dry run).
  Mode mode() const { return mode_; }
  /// The configuration given to the constructor.
  const PolicyConfig& config() const { return config_; }

 private:
  Mode wanted_mode(const HintReading& reading, std::string& reason) const;
  PolicyConfig config_;
  Mode mode_;
  std::uint64_t next_sequence_ = 0;
  std::optional<std::chrono::nanoseconds> mode_since_;   // empty until the first reading
  std::vector<std::chrono::nanoseconds> attempt_times_;  // within rate_window
  std::uint32_t failures_ = 0;                           // in a row, toward the same mode
  std::chrono::nanoseconds retry_at_{0};
  std::chrono::nanoseconds last_time_{0};
};

// ---- the trigger loop ------------------------------------------------------------------------

/// Switches groups: the engine's switch_groups, or a harness's stand-in.
using SwitchFunction =
    std::function<SwitchOutcome(const std::vector<GroupChoice>&, const SwitchOptions&)>;

/// A SwitchFunction that calls engine->switch_groups (`engine` must outlive it).
SwitchFunction engine_switcher(Engine* engine);

struct TriggerConfig {
  PolicyConfig policy = {};
  /// The variants each mode puts groups in; every group should appear in both.
  std::vector<GroupChoice> dedicated = {{"spinlock", "native"}, {"tlb", "native"}};
  std::vector<GroupChoice> oversubscribed = {{"spinlock", "pv"}, {"tlb", "pv"}};
  SwitchOptions switch_options = {};
  /// Time between two readings when the loop runs on its own thread (start()).
  std::chrono::nanoseconds interval = std::chrono::milliseconds(500);
  /// Stamps Decision::decided_at and switched_at.
  Clock clock = steady_clock();
  /// Decisions kept by decisions(); the oldest are dropped first.
  std::size_t log_capacity = 10000;
  /// Called with every decision (from the polling thread), e.g. to print it. May be empty.
  std::function<void(const Decision&)> on_decision = {};
};

/// Checks `config`: validate(policy), interval > 0, both group lists non-empty, naming the same
/// groups once each. Fails with kInvalidArgument naming what is wrong.
Status validate(const TriggerConfig& config);

/// Polls a source and switches groups as the policy decides.
class TriggerLoop {
 public:
  /// Fails with what validate(config) fails with, or kInvalidArgument for a null source or an
  /// empty switch function.
  static Result<std::unique_ptr<TriggerLoop>> create(std::unique_ptr<HintSource> source,
                                                     TriggerConfig config, SwitchFunction switcher);
  ~TriggerLoop();  ///< stops the thread
  TriggerLoop(const TriggerLoop&) = delete;
  TriggerLoop& operator=(const TriggerLoop&) = delete;

  /// Takes one reading and acts on it, on the calling thread (the loop's thread must not be
  /// running). Returns the decision (also logged), or std::nullopt when the source has ended.
  /// A source error is a decision too (kSourceError). Fails with kState while start() runs.
  Result<std::optional<Decision>> poll_once();

  /// Starts a thread that polls once per interval until stop(), destruction, or the end of the
  /// source (start() may then be called again). Fails with kState while the thread polls,
  /// kSystem when the thread cannot start.
  Status start();
  /// Stops and joins the thread; idempotent. A switch in progress finishes first.
  void stop();
  /// Whether the thread is polling (false once the source has ended).
  bool running() const;

  /// A copy of the decision log, oldest first.
  std::vector<Decision> decisions() const;
  /// The mode the groups are in, as far as the policy knows.
  Mode mode() const;

 private:
  TriggerLoop(std::unique_ptr<HintSource> source, TriggerConfig config, SwitchFunction switcher);
  std::optional<Decision> step();
  void run(const std::stop_token& stop);

  std::unique_ptr<HintSource> source_;
  TriggerConfig config_;
  SwitchFunction switcher_;
  Policy policy_;  // used only by the thread that steps (poll_once's caller or the loop's)
  mutable std::mutex mutex_;  // guards log_
  std::vector<Decision> log_;
  std::atomic<Mode> mode_;  // policy_.mode() after the last step, for any thread
  std::mutex wake_mutex_;
  std::condition_variable_any wake_;  // the thread's sleep between polls; stop() ends it
  std::jthread thread_;
  std::atomic<bool> running_{false};
};

// ---- late microcode load ---------------------------------------------------------------------

/// The microcode revision of each CPU, as text (e.g. "0xf0"), indexed by CPU number; an empty
/// vector when nothing reports it.
struct MicrocodeRevision {
  std::vector<std::string> per_cpu;
  std::string origin;  ///< where it came from ("/proc/cpuinfo", "sysfs", "simulated"), or ""
  bool operator==(const MicrocodeRevision& other) const { return per_cpu == other.per_cpu; }
};

/// The present CPU features among those feature-keyed groups may use ("clflushopt", "hle",
/// "rdpid", "rdtscp", "rtm", "serialize"), sorted.
using FeatureSet = std::vector<std::string>;

/// The names a FeatureSet may hold, sorted.
std::vector<std::string> known_features();

/// Parses a comma-separated feature list ("rtm,clflushopt"; blanks around names are ignored; ""
/// is the empty set) into a sorted FeatureSet. Fails with kUnknownName naming an unknown feature
/// and listing the known ones.
Result<FeatureSet> parse_feature_list(std::string_view list);

/// Where the microcode revision and the CPU features come from.
class CpuSource {
 public:
  virtual ~CpuSource() = default;
  virtual std::string_view name() const = 0;
  /// The current revision. An empty per_cpu when unknown (the watcher then only reloads when told).
  virtual Result<MicrocodeRevision> revision() = 0;
  /// The current features (CPUID re-read for the real source).
  virtual Result<FeatureSet> features() = 0;
};

struct RealCpuSourceOptions {
  std::string proc_dir = "/proc";
  std::string sysfs_cpu_dir = "/sys/devices/system/cpu";
};

/// This machine: revisions from <sysfs_cpu_dir>/cpuN/microcode/version where present, else from
/// the `microcode` lines of <proc_dir>/cpuinfo (none in many VMs: an empty revision); features by
/// CPUID. revision() fails with kInvalidArgument when a file is malformed (naming it and the line),
/// kSystem when <proc_dir>/cpuinfo cannot be read.
std::unique_ptr<CpuSource> make_real_cpu_source(RealCpuSourceOptions options = {});

/// A CPU whose microcode updates a test injects. Thread-safe.
class SimulatedCpu final : public CpuSource {
 public:
  /// Starts at revision `revision` on `cpus` CPUs with `features`. Fails with kUnknownName for a
  /// feature that is not in known_features(), kInvalidArgument for zero CPUs.
  static Result<std::unique_ptr<SimulatedCpu>> create(FeatureSet features,
                                                      std::string revision = "0x1",
                                                      std::size_t cpus = 2);
  /// A late load: every CPU gets `revision`, `add` features appear and `remove` disappear. Fails
  /// with kUnknownName (nothing changes) for an unknown feature, kInvalidArgument for a feature in
  /// both lists.
  Status load_update(std::string revision, const FeatureSet& add, const FeatureSet& remove);

  std::string_view name() const override { return "simulated"; }
  Result<MicrocodeRevision> revision() override;
  Result<FeatureSet> features() override;

 private:
  SimulatedCpu(FeatureSet features, std::string revision, std::size_t cpus);
  mutable std::mutex mutex_;
  FeatureSet features_;
  std::string revision_;
  std::size_t cpus_;
};

/// Features safe to re-apply live: every group keyed on them is switched when they change.
/// Default: clflushopt, rdpid, rtm.
std::vector<std::string> default_microcode_whitelist();

struct MicrocodeConfig {
  std::vector<std::string> whitelist = default_microcode_whitelist();
  /// Base options of the switches; the writer is chosen per group (batch for interchangeable
  /// groups, stop-machine for the others).
  SwitchOptions switch_options = {};
};

/// One feature that changed.
struct FeatureChange {
  std::string feature;
  bool present = false;  ///< after the update
  bool whitelisted = false;
  std::vector<std::string> groups;  ///< feature-keyed groups keyed on it
};

/// One switch made for a reload.
struct MicrocodeSwitch {
  std::vector<GroupChoice> choices;
  SwitchWriter writer = SwitchWriter::kAuto;  ///< as asked (kBatch or kStopMachine)
  bool committed = false;
  std::string error;  ///< when not committed
};

/// What a reload did.
struct MicrocodeReport {
  MicrocodeRevision before, after;
  std::vector<FeatureChange> changes;
  /// The switches made, interchangeable groups (batch) first; empty when nothing was to switch.
  std::vector<MicrocodeSwitch> switches;
  /// Changed features outside the whitelist, e.g. "hle removed": needs a restart, not patched.
  std::vector<std::string> needs_restart;
  /// Whether every switch committed.
  bool ok() const;
};

/// Readable lines: the revision change, each feature change, each switch, each "needs restart".
std::string describe(const MicrocodeReport& report);

/// Watches for late microcode loads and re-applies feature-keyed alternatives.
class MicrocodeWatcher {
 public:
  /// Reads the baseline revision and features from `cpu`. `switcher` empty means
  /// engine_switcher(engine). Fails with kState when `engine` is null, kUnknownName for an
  /// unknown whitelisted feature, or what the source's first reads fail with.
  static Result<std::unique_ptr<MicrocodeWatcher>> create(std::unique_ptr<CpuSource> cpu,
                                                          Engine* engine,
                                                          MicrocodeConfig config = {},
                                                          SwitchFunction switcher = {});

  /// Reads the revision; when it differs from the last one seen, or when a switch of the last
  /// reload failed, reloads (as reloaded()) and returns the report; std::nullopt otherwise. Call it
  /// periodically: it is how a late load is noticed, and how a failed switch is retried. Fails with
  /// what the source fails with.
  Result<std::optional<MicrocodeReport>> poll();

  /// "Microcode was reloaded": re-reads revision and features, diffs the features against the
  /// last ones seen (the report's changes), switches every group keyed on a whitelisted feature
  /// to the variant that matches (the one needing the feature when present, the default
  /// otherwise; groups already there are left alone), and reports changed features outside the
  /// whitelist as needing a restart. A failed switch is in the report (ok() false) and is tried
  /// again by the next poll() or reloaded(). Fails only when the source fails (nothing is switched
  /// then).
  Result<MicrocodeReport> reloaded();

  /// The features as last read from the CPU source (at create(), then at each reload).
  const FeatureSet& features() const { return features_; }

 private:
  MicrocodeWatcher(std::unique_ptr<CpuSource> cpu, Engine* engine, MicrocodeConfig config,
                   SwitchFunction switcher);
  std::unique_ptr<CpuSource> cpu_;
  Engine* engine_;
  MicrocodeConfig config_;
  SwitchFunction switcher_;
  MicrocodeRevision revision_;
  FeatureSet features_;
  bool unsettled_ = false;  // a switch of the last reload failed: poll() retries
};

}  // namespace repatch::triggers

#endif  // REPATCH_TRIGGERS_H_
