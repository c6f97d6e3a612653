// Booting the engine and looking at what it holds.
//
// boot() runs once per process, before any vCPU thread starts: it reads every op, variant, group
// and site the program declared (repatch/op.h), checks them, and puts every group into its
// configured initial variant. After boot the engine keeps the retained patch table for the life
// of the process.
#ifndef REPATCH_ENGINE_H_
#define REPATCH_ENGINE_H_

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "repatch/error.h"
#include "repatch/group_state.h"

namespace repatch {

/// How site bytes are written.
enum class TextWriter : std::uint8_t {
  /// Stores through a writable alias of a memfd that backs the executable pages holding sites
  /// (set up by boot). Fast (a few ns per site), no system call per write. The remapped text shows
  /// in /proc/self/maps as "/memfd:repatch-text (deleted)"; see README for debuggers and profilers.
  kMemfdAlias,
  /// pwrite() to /proc/self/mem: one system call per write; the text stays file-backed.
  kProcSelfMem,
};

/// The variant name that leaves a group's sites unpatched (`call *slot(%rip)`), running the
/// group's default variant through its op slots.
inline constexpr std::string_view kIndirectVariant = "indirect";

struct GroupChoice {
  std::string group;
  std::string variant;
};

/// The two real-time signals the vCPUs take as their IPI and NMI (docs/signals.md).
struct InterruptSignals {
  int ipi = 0;
  int nmi = 0;
};

struct BootOptions {
  /// Initial variant per group. Groups not named start in their default (first) variant, except
  /// feature-keyed groups, which start in the variant that matches the CPU.
  std::vector<GroupChoice> initial = {};
  TextWriter writer = TextWriter::kMemfdAlias;
  /// When set, the CPU features to assume instead of those CPUID reports (for tests and replays):
  /// every feature not listed is taken as absent. Names as in REPATCH_DEFINE_FEATURE_GROUP.
  std::optional<std::vector<std::string>> features = std::nullopt;
  /// The real-time signals for the vCPUs' IPI and NMI: each from SIGRTMIN to SIGRTMAX (glibc's
  /// values, read at run time, e.g. SIGRTMIN + 4), the two distinct, and neither handled nor
  /// ignored by anything in the process at boot. Unset: boot takes the first two from SIGRTMIN up
  /// that nothing handles. Either way the engine owns them from boot on and shares them with
  /// nobody (docs/signals.md).
  std::optional<InterruptSignals> interrupt_signals = std::nullopt;
};

struct GroupStatus {
  std::string name;
  std::string variant;  ///< current variant, or "indirect"
  std::vector<std::string> variants;
  bool interchangeable = false;  ///< may switch without stopping vCPUs (feature alternatives)
  std::string feature;           ///< the CPU feature a feature group is keyed on, else ""
  bool feature_present = false;  ///< whether the CPU (or BootOptions::features) has it
  std::size_t ops = 0;
  std::size_t sites = 0;
};

struct SiteStatus {
  std::uintptr_t address = 0;
  std::string op;
  std::string group;
  std::uint8_t length = 0;
  std::string variant;              ///< the variant whose image the site holds
  std::vector<std::uint8_t> bytes;  ///< the site's current bytes
  std::string instruction;          ///< the bytes disassembled (AT&T)
  std::string symbol;               ///< "function+0xoff", or "" when unknown
};

/// An object with declarations (repatch/op.h) the engine knows: the program, a shared object
/// loaded before boot, or one loaded with dlopen() after it (a module).
struct ModuleStatus {
  std::string name;        ///< its path, as the dynamic linker knows it; "(the program)" for it
  std::size_t sites = 0;   ///< its sites in the retained table (0 when refused)
  std::size_t groups = 0;  ///< groups it declares
  /// What the engine keeps for it in memory: its retained table (8 bytes per site and the index of
  /// its groups), its view of the catalog and its record; not the images of switched groups
  /// (engine/image_cache.h) nor the memfd copy of its site pages.
  std::size_t retained_bytes = 0;
  /// Empty when loaded; else why the engine refused it (its sites then abort when run).
  std::string refusal;
  std::uintptr_t text_begin = 0;  ///< the range its writer remapped (memfd writer), else 0
  std::uintptr_t text_end = 0;
};

struct EngineStatus {
  std::vector<GroupStatus> groups;
  std::vector<ModuleStatus> modules;  ///< the program first, then in load order
  std::vector<SiteStatus> sites;      ///< by address
  std::size_t bytes_per_site = 0;     ///< retained table bytes per site
  std::size_t retained_bytes = 0;     ///< the whole retained table, per-group overhead included
  std::string writer;                 ///< "memfd" or "procmem"
  std::uintptr_t text_begin = 0;      ///< the remapped range (memfd writer), else 0
  std::uintptr_t text_end = 0;
  std::string sync_core;  ///< "iret" or "serialize"
  int ipi_signal = 0;     ///< the vCPUs' IPI signal (a real-time signal)
  int nmi_signal = 0;     ///< the vCPUs' NMI signal
};

/// How a switch writes the sites. Every writer runs the same protocol (docs/switch-protocol.md):
/// fence, serialise, decide, convert, tails, serialise, heads, serialise, release. They differ in
/// how they serialise the other CPUs and how they establish that nobody is inside an op of the
/// switched groups (quiescence).
enum class SwitchWriter : std::uint8_t {
  /// kBatch when every switched group is interchangeable (abi::kGroupInterchangeable); else
  /// kStopless, which parks nobody; kStopMachine only for a group beyond the first 32, whose
  /// in-op depth vCPUs do not track.
  kAuto,
  /// Every other online vCPU parked in its IPI handler for the whole write; each checks its own
  /// context (not inside a site, no op of the groups in flight) before it parks.
  kStopMachine,
  /// No stop, for interchangeable groups only: INT3 on every site, then tails, then first bytes,
  /// with membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE) between the steps. There is no
  /// quiescence to establish: old and new variants may run side by side. Refused for others.
  kBatch,
  /// No stop, for groups with state or whose ops must pair (spinlock, tlb, user groups): the INT3
  /// fence and membarrier as kBatch, then quiescence from each vCPU's own in-op marks, read
  /// without asking the vCPU anything. A vCPU that never touches the groups is never interrupted
  /// or waited for; one that reaches a fenced site waits for the switch or completes it; one that
  /// is inside an op of the groups delays the switch until it leaves, up to `in_op_deadline`, after
  /// which the fence is taken back and the attempt retried. Refused for groups beyond the first 32
  /// (their in-op depth is not tracked).
  kStopless,
};
/// The number of SwitchWriter values: one past the last, so a new last writer must replace it here.
inline constexpr std::size_t kSwitchWriterCount =
    static_cast<std::size_t>(SwitchWriter::kStopless) + 1;

/// "auto", "stop", "batch" or "stopless".
const char* switch_writer_name(SwitchWriter writer);

struct SwitchOptions {
  SwitchWriter writer = SwitchWriter::kAuto;
  /// How long one attempt waits for the vCPUs to acknowledge each round of the stop.
  std::chrono::nanoseconds ack_deadline = std::chrono::milliseconds(100);
  /// Attempts are retried, with a growing pause between them, until this much time has passed
  /// since the first one began.
  std::chrono::nanoseconds deadline = std::chrono::seconds(2);
  /// The pause after the first aborted attempt; it doubles after each one, up to 16 times this.
  std::chrono::nanoseconds first_backoff = std::chrono::microseconds(200);
  /// kStopless: how long one attempt waits, after its fence, for vCPUs inside an op of the
  /// switched groups to leave it, before it takes the fence back (vCPUs that reach a fenced site
  /// meanwhile wait too, so keep it short).
  std::chrono::nanoseconds in_op_deadline = std::chrono::milliseconds(2);
  /// Run the call SCHED_FIFO (the lowest real-time priority), as a kernel patches with preemption
  /// off, where the process may (CAP_SYS_NICE or RLIMIT_RTPRIO); the thread's policy is restored
  /// before the call returns. With more runnable threads than CPUs, an ordinary thread loses its
  /// CPU between two steps for a scheduler round while the fence is up and vCPUs that reach it
  /// wait (docs/switching.md has the figures). Its waits for other threads sleep instead of
  /// yielding, so that they get this CPU.
  bool realtime = true;
};

/// Why an attempt (or the switch) did not commit.
enum class SwitchAbort : std::uint8_t {
  kNone,          ///< committed
  kRefused,       ///< refused before any attempt (see `status`); nothing was tried
  kAckTimeout,    ///< a vCPU did not acknowledge the stop in time (its IPIs blocked: H3)
  kBusy,          ///< a vCPU was inside an op of a switched group, or stopped inside a site (H7)
  kFenceUndone,   ///< after the INT3 fence, an executor was found inside an op of the groups (an
                  ///< NMI handler, or a thread that reached a fenced site from inside one), or an
                  ///< NMI begun before the fence outlasted the ack deadline: the fence was taken
                  ///< back
  kForeignWrite,  ///< a site changed between planning and the stop; nothing was written
  kStateRefused,  ///< a group's state cannot be converted (GroupState::can_convert names the
                  ///< object); the fence was taken back, nothing was converted
  kInOpTimeout,   ///< kStopless: a vCPU was still inside an op of the groups at in_op_deadline;
                  ///< the fence was taken back
};
/// The number of SwitchAbort values (the size of SwitchOutcome::aborts): one past the last.
inline constexpr std::size_t kSwitchAbortCount =
    static_cast<std::size_t>(SwitchAbort::kInOpTimeout) + 1;

/// "none", "refused", "ack_timeout", "busy", "fence_undone", "foreign_write", "state_refused",
/// "in_op_timeout".
const char* switch_abort_name(SwitchAbort reason);

/// What a switch did.
struct SwitchOutcome {
  /// True when every site of every named group holds its new variant.
  bool committed() const { return status.ok(); }
  /// Ok when committed; otherwise why not, for a person: the last attempt's reason, naming the
  /// vCPU, op or site involved. Planning failures (unknown names, a foreign write, an image that
  /// cannot be switched live) come back here with attempts == 0.
  Status status;
  /// kNone when committed, else the reason of the last attempt.
  SwitchAbort reason = SwitchAbort::kNone;
  /// Attempts made (1 when the first one committed).
  std::uint32_t attempts = 0;
  /// Aborted attempts, by reason (index: SwitchAbort).
  std::uint32_t aborts[kSwitchAbortCount] = {};
  SwitchWriter writer = SwitchWriter::kAuto;  ///< the writer used (never kAuto after planning)
  /// The last attempt's blackout: from the first IPI to the last vCPU released (stop-machine), or
  /// from the first write to the last membarrier (batch, stopless). Under a stopless writer only
  /// vCPUs that reach a fenced site wait, and for at most this long.
  std::chrono::nanoseconds blackout{0};
  /// The whole call, planning and retries included.
  std::chrono::nanoseconds elapsed{0};
  std::size_t sites = 0;  ///< sites rewritten
  /// Times an executor that hit an INT3 of the switch ran its steps itself rather than wait for
  /// the primary: outside NMI context (int3) and inside an NMI handler (nmi). Counted as the call
  /// returns: one still finishing its handler then is not counted.
  std::uint64_t int3_completions = 0;
  std::uint64_t nmi_completions = 0;
  /// Whether the call ran real-time (SwitchOptions::realtime, and the process was allowed to).
  bool realtime = false;
};

class Engine {
 public:
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;
  ~Engine();

  /// Boots the engine: checks every declaration and site, then writes each site's initial image.
  /// Call once, while this process has a single thread. Planning happens before anything is
  /// written, so a failure in planning leaves the text exactly as it was (a later failure may
  /// leave it remapped to the memfd, with every site still unpatched).
  /// Fails with kState (already booted, or other threads are running), kUnknownName (a group or
  /// variant in `options` does not exist, or a feature in `options.features` is unknown; the
  /// message lists the ones that do), kForeignWrite (a
  /// site does not hold its unpatched instruction; the message names the site), kBadImage or
  /// kUnrelocatable (a variant's image cannot fill its sites), kBadSiteRecord, kInvalidArgument
  /// (a declaration is inconsistent, a group is named twice in `options`, or
  /// `options.interrupt_signals` is out of range or names one signal twice), kSystem (the text
  /// writer could not be set up or a write failed, sites written before the failure are put back;
  /// or no two real-time signals are free) or kUnsupported (the memfd writer cannot cover the
  /// sites, e.g. they lie in more than one executable mapping: use TextWriter::kProcSelfMem).
  /// Signals: boot installs the vCPUs' IPI and NMI handlers and the #BP (SIGTRAP) handler. It
  /// fails with kState, naming the signal, when a signal in `options.interrupt_signals` already has
  /// a handler or is ignored, or when the vCPU signals were installed before boot (by
  /// sync::Vcpu::enter()) with numbers other than those asked for. A SIGTRAP handler in place at
  /// boot is kept: every trap that is not at a repatch site goes on to it (docs/signals.md).
  static Result<Engine*> boot(const BootOptions& options = {});

  /// The booted engine, or nullptr before boot() succeeds.
  static Engine* get();

  /// A snapshot of every group and site. Waits for a switch in progress (so never from the
  /// thread that is switching). Allocates; not for signal handlers.
  EngineStatus status() const;

  /// The current variant of `group`. Waits for a switch in progress. Fails with kUnknownName.
  Result<std::string> current_variant(std::string_view group) const;

  /// Compares every site's bytes with the image of its current variant. Fails with kForeignWrite
  /// naming the first site that differs (something else wrote there). Waits for a switch in
  /// progress, so it never sees one half done. Normal context. Allocates.
  Status verify_sites() const;

  /// Checks that `group` is wholly in its current variant: the table says every site of the group
  /// is in it, and every site's bytes are, byte for byte, that variant's image (what a committed
  /// switch leaves behind). Waits for a switch in progress, so it never sees one half done. Normal
  /// context. Fails with kUnknownName, or kForeignWrite naming the first site that holds anything
  /// else (its bytes, and the image it should hold). Allocates.
  Status verify_group(std::string_view group) const;

  /// Switches every group named in `choices` to its variant, all at once: no vCPU ever runs a mix
  /// of old and new variants of these groups. Switching a group to the variant it is in already
  /// does nothing for it. Normal context only, from a vCPU or any other thread, one switch at a
  /// time (a second caller waits). Allocates before the stop, never during it.
  /// Refusals (attempts == 0): kUnknownName, kInvalidArgument (a group named twice, the
  /// "indirect" target), kForeignWrite, kBadImage (an image pair cannot be switched live: same
  /// first byte and no padding), kUnsupported (TextWriter::kProcSelfMem cannot switch live;
  /// kBatch for a group that is not interchangeable; kStopless for a group beyond the first 32),
  /// kState (not booted, or called from a signal handler or during a stop, or one of the engine's
  /// signals, the vCPUs' IPI or NMI or SIGTRAP, no longer runs the engine's handler because the
  /// program installed its own after boot: the message names the signal; docs/signals.md).
  SwitchOutcome switch_groups(const std::vector<GroupChoice>& choices,
                              const SwitchOptions& options = {});

  /// Registers `state` (not owned; it must outlive the engine's use of it, nullptr removes it) as
  /// the converter of `group`'s in-memory state: every later switch of the group checks and
  /// converts it under the stop (repatch/group_state.h). Normal context; waits for a switch in
  /// progress. Fails with kUnknownName, or kInvalidArgument for an interchangeable group (its
  /// variants may run side by side, so its state cannot depend on the variant).
  Status set_group_state(std::string_view group, GroupState* state);

  /// Loads the shared object at `path` with dlopen(path, RTLD_NOW | RTLD_LOCAL | `extra_flags`)
  /// and returns its handle, for dlsym() and, in the end, dlclose(). While it loads, its sites
  /// are brought into their groups' current variants before any of its code runs, after a
  /// switch in progress ends. The same happens to an object loaded with a plain dlopen(), which
  /// cannot report a refusal: the object then stays loaded with every site aborting the process
  /// when run, and modules() says why. Here a refused object is closed again and the refusal
  /// returned. Fails with kSystem (dlopen's own message: no such file, a missing symbol), or the
  /// refusal, naming the object: kUnknownName (an op the running group lacks, a variant the
  /// running group lacks), kInvalidArgument (the group's variants differ in order, its flags or
  /// feature differ, a declaration is inconsistent), kForeignWrite (a site does not hold its
  /// unpatched instruction), kBadImage or kUnrelocatable (a variant cannot fill its sites),
  /// kBadSiteRecord, or kSystem/kUnsupported (its text writer could not be set up). Normal
  /// context; waits for a switch in progress.
  Result<void*> load_module(const std::string& path, int extra_flags = 0);

  /// Every object the engine knows, the program first, then modules in load order, then those it
  /// refused. Waits for a switch in progress.
  std::vector<ModuleStatus> modules() const;

  /// Retained patch table bytes per site.
  static std::size_t bytes_per_site();

  struct Impl;

 private:
  friend const Impl* booted_impl();
  explicit Engine(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

/// Same as Engine::boot().
inline Result<Engine*> boot(const BootOptions& options = {}) {
  return Engine::boot(options);
}

}  // namespace repatch

#endif  // REPATCH_ENGINE_H_
