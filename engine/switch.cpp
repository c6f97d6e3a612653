// Engine::switch_groups(): plan, then attempts until one commits or the deadline passes.
//
// Every attempt runs the one step sequence of engine/switch_protocol.h; the three writers differ
// in what surrounds it and in how they establish quiescence:
//   stop-machine: every other online vCPU parks in its IPI handler after checking its interrupted
//                 context (not inside a site of the switch, no op of the groups in flight: H7);
//                 the primary then runs the steps, waiting out NMIs begun before its fence and
//                 reading every thread's in-op marks before it decides; release lets them go;
//   batch:        nobody stops and nothing is checked (interchangeable groups);
//   stopless:     nobody stops; after the fence, the primary reads every thread's in-op marks until
//                 none is set, up to a deadline, then decides (backward at the deadline).
// An NMI or #BP executor may run any of the steps instead of the primary; the primary's own
// compare-and-swaps then find them done (H4, H5).
#include <pthread.h>
#include <ucontext.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>

#include "base/errno_text.h"
#include "base/test_hooks.h"
#include "base/text.h"
#include "base/thread_annotations.h"
#include "engine/engine_impl.h"
#include "engine/group_phase.h"
#include "engine/int3_handler.h"
#include "engine/site_image.h"
#include "engine/switch_protocol.h"
#include "engine/transaction.h"
#include "sync/realtime.h"
#include "sync/stop_machine.h"
#include "sync/sync_cores.h"
#include "sync/vcpu.h"

namespace repatch {
namespace {

using Clock = std::chrono::steady_clock;

// Reasons the stop work reports (StopWork's own numbering; 0 is success).
enum WorkReason : int {
  kReasonInOp = 1,        // check_parked: an op of a switched group in flight on that vCPU
  kReasonMidSite,         // check_parked: stopped inside a site of the switch
  kReasonForeign,         // run: a site no longer held its old image
  kReasonNmiTimeout,      // run: an NMI begun before the fence still ran at the ack deadline
  kReasonInOpAfterFence,  // run: an executor was inside an op of the groups after the fence
  kReasonStateRefused     // run: a group's state cannot be converted (GroupState::can_convert)
};

class SwitchWork final : public sync::StopWork, public engine::Executor {
 public:
  SwitchWork(engine::Transaction& transaction, std::chrono::nanoseconds nmi_deadline)
      : transaction_(transaction), nmi_deadline_(nmi_deadline) {}

  int check_parked(sync::VcpuId /*self*/, const void* ucontext) noexcept override {
    if (test::disabled(test::Handler::kQuiescenceCheck)) return 0;
    const auto* context = static_cast<const ucontext_t*>(ucontext);
    if (transaction_.inside_site(
            static_cast<std::uintptr_t>(context->uc_mcontext.gregs[REG_RIP]))) {
      return kReasonMidSite;
    }
    if (transaction_.this_thread_in_op()) return kReasonInOp;
    return 0;
  }

  // membarrier serialises every CPU running the process, parked vCPUs and threads the stop does
  // not hold alike, as the kernel's text_poke_bp syncs every CPU; it wakes nobody, unlike a sync
  // round of the stop.
  int run(sync::StopContext& /*context*/) noexcept override {
    if (!transaction_.sites_hold_old()) return kReasonForeign;
    transaction_.announce();
    engine::publish_attempt(&transaction_);
    published_ = true;
    test::inject(test::Point::kStopped, 0);
    const engine::Direction direction = engine::run_switch_protocol(transaction_, *this);
    transaction_.release();
    if (direction == engine::Direction::kForward) return 0;
    if (transaction_.refusal()[0] != '\0') return kReasonStateRefused;
    return nmis_returned_ ? kReasonInOpAfterFence : kReasonNmiTimeout;
  }

  // The third step's question, with every target parked and checked: an NMI handler begun before
  // the fence may have entered an op (old code) before its mark became visible, so it must be
  // gone; then nobody, NMI handlers included, may be inside an op of the groups.
  bool quiescent(engine::Transaction& attempt) noexcept override {
    nmis_returned_ = sync::wait_for_nmis_in_flight(nmi_deadline_);
    in_op_after_fence_ = attempt.thread_in_op();
    return nmis_returned_ && in_op_after_fence_ == engine::kNoOpThread;
  }
  bool primary() const noexcept override { return true; }

  /// Whether run() published the attempt (it then stays reachable until the next one is).
  bool published() const { return published_; }
  /// The thread the primary found inside an op after the fence; kNoOpThread when it found none (and
  /// an executor took the fence back instead).
  engine::OpThread in_op_after_fence() const { return in_op_after_fence_; }

 private:
  engine::Transaction& transaction_;
  std::chrono::nanoseconds nmi_deadline_;
  bool published_ = false;
  bool nmis_returned_ = true;
  engine::OpThread in_op_after_fence_ = engine::kNoOpThread;
};

// The primary of a writer that stops nobody: batch (interchangeable groups, so no quiescence to
// establish) and stopless (quiescence from every thread's in-op marks, waited for up to the
// attempt's in-op deadline).
class StoplessPrimary final : public engine::Executor {
 public:
  bool quiescent(engine::Transaction& attempt) noexcept override {
    return attempt.writer() == SwitchWriter::kBatch || attempt.wait_until_no_thread_in_op();
  }
  bool primary() const noexcept override { return true; }
};

// Runs one attempt without a stop. Returns its direction; `written` gets the time from the first
// write to the last serialise.
engine::Direction write_without_stop(engine::Transaction& attempt,
                                     std::chrono::nanoseconds* written) {
  attempt.announce();
  engine::publish_attempt(&attempt);
  const auto start = Clock::now();
  test::inject(test::Point::kStopped, 0);
  StoplessPrimary primary;
  const engine::Direction direction = engine::run_switch_protocol(attempt, primary);
  attempt.release();
  *written = Clock::now() - start;
  return direction;
}

std::string vcpu_name(sync::VcpuId id) {
  const pid_t tid = id < sync::kMaxVcpus ? sync::slot(id).tid.load() : 0;
  return "vCPU " + std::to_string(id) + (tid != 0 ? " (thread " + std::to_string(tid) + ")" : "");
}

struct Plan {
  std::vector<engine::SitePlan> sites;
  std::vector<engine::StateChange> states;
  std::vector<engine::TrackedGroup> tracked;
  std::string untracked_text;  // the first switched group beyond abi::kMaxTrackedGroups
  std::vector<engine::VariantIndex> target;  // per group; the current variant when not switched
  std::string groups_text;                   // "'demo_lock' to 'pv'", for messages
};

// Why the sites no longer hold the images planned for them: the first site's own message.
std::string foreign_write_text(const Plan& plan) {
  for (const engine::SitePlan& site : plan.sites) {
    if (Status s =
            engine::check_site_holds_current(site.object->catalog, site.object->table, *site.entry);
        !s.ok()) {
      return s.error().message();
    }
  }
  return "a site changed after planning";
}

// The image a site switches to: the new variant, padded so that its first byte differs from the
// one the site holds now (docs/switch-protocol.md, "the first byte must change"). Images come from
// the engine's cache (engine/image_cache.h).
// `object` is the site's object; its view of the catalog, table and images are under the mutex.
Result<engine::SitePlan> plan_site(engine::CodeObject& object, engine::SiteEntry& entry,
                                   engine::VariantIndex to) {
  const engine::Catalog& catalog = object.catalog;
  const engine::SiteTable& table = object.table;
  const std::uintptr_t address = table.address(entry);
  // An unpatched site's image (kIndirect) is not cached: it is needed once, at its first switch.
  Result<x86::Image> from =
      entry.variant() == engine::kIndirect
          ? engine::site_image(catalog, table, entry, entry.variant(), entry.alt_pad())
          : object.images.image(catalog, table, entry, entry.variant(), entry.alt_pad());
  if (!from.ok()) return from.error();
  // Compare-before-write (DESIGN): the site must hold its current image. The message is built by
  // check_site_holds_current only when it does not.
  if (std::memcmp(reinterpret_cast<const void*>(address),  // NOLINT(performance-no-int-to-ptr)
                  from.value().bytes.data(), from.value().length) != 0) {
    return engine::check_site_holds_current(catalog, table, entry).error();
  }
  for (const bool alt : {!entry.alt_pad(), entry.alt_pad()}) {
    Result<x86::Image> image = object.images.image(catalog, table, entry, to, alt);
    if (!image.ok()) return image.error();
    if (image.value().bytes[0] == from.value().bytes[0]) continue;
    return engine::SitePlan{
        address,
        &entry,
        &object,
        object.poker.get(),
        object.poker->alias_delta(),
        from.value(),
        image.value(),
        static_cast<std::uint8_t>(to | (alt ? engine::SiteEntry::kAltPadBit : 0))};
  }
  const engine::GroupIndex g = catalog.op(entry.op).group;
  return Error(ErrorCode::kBadImage,
               engine::describe_site(catalog, table, entry) + " cannot switch live from '" +
                   std::string(catalog.variant_name(g, entry.variant())) + "' to '" +
                   std::string(catalog.variant_name(g, to)) +
                   "': both images start with the same byte and have no padding to vary, so a "
                   "late INT3 could not be told from the new instruction; lengthen the op's sites "
                   "so that one image is padded");
}

Result<Plan> plan_switch(Engine::Impl& impl, const std::vector<GroupChoice>& choices)
    REPATCH_REQUIRES(impl.switch_mutex) {
  Plan plan;
  plan.target = impl.group_variant;
  Result<std::vector<engine::Choice>> chosen =
      engine::resolve_choices(impl.catalog, choices, "is named twice in one switch");
  if (!chosen.ok()) return chosen.error();
  std::vector<engine::GroupIndex> switched;
  for (std::size_t i = 0; i < choices.size(); ++i) {
    const auto [g, v] = chosen.value()[i];
    if (v == engine::kIndirect) {
      return Error(ErrorCode::kInvalidArgument,
                   "group '" + choices[i].group +
                       "' cannot be switched back to 'indirect': that is "
                       "the unpatched state before boot; name one of its variants");
    }
    if (!plan.groups_text.empty()) plan.groups_text += ", ";
    plan.groups_text += "'" + choices[i].group + "' to '" + choices[i].variant + "'";
    if (v == impl.group_variant[g]) continue;
    plan.target[g] = v;
    switched.push_back(g);
  }
  for (const engine::GroupIndex g : switched) {
    if (g < abi::kMaxTrackedGroups) {
      const engine::VariantIndex from = impl.group_variant[g];
      plan.tracked.push_back(
          {g, from == engine::kIndirect ? engine::VariantIndex{0} : from, plan.target[g]});
    } else {
      if (plan.untracked_text.empty())
        plan.untracked_text = std::string(impl.catalog.group(g).desc->name);
    }
    if (GroupState* state = impl.group_state[g]) {
      // An unpatched group runs its default variant, so its state is in that encoding.
      const engine::VariantIndex from = impl.group_variant[g];
      plan.states.push_back(
          {state, from == engine::kIndirect ? 0 : from, static_cast<int>(plan.target[g])});
    }
    for (const auto& object : impl.objects) {
      for (engine::SiteEntry& entry : object->table.group_sites(g)) {
        Result<engine::SitePlan> site = plan_site(*object, entry, plan.target[g]);
        if (!site.ok()) return site.error();
        plan.sites.push_back(site.value());
      }
    }
  }
  std::sort(
      plan.sites.begin(), plan.sites.end(),
      [](const engine::SitePlan& a, const engine::SitePlan& b) { return a.address < b.address; });
  return plan;
}

Result<SwitchWriter> choose_writer(const Engine::Impl& impl,
                                   const std::vector<GroupChoice>& choices, const Plan& plan,
                                   SwitchWriter requested) REPATCH_REQUIRES(impl.switch_mutex) {
  bool interchangeable = true;
  std::string not_interchangeable;
  for (const GroupChoice& choice : choices) {
    const engine::GroupIndex g = impl.catalog.find_group(choice.group).value();
    if ((impl.catalog.group(g).desc->flags & abi::kGroupInterchangeable) == 0) {
      interchangeable = false;
      not_interchangeable = choice.group;
    }
  }
  if (requested == SwitchWriter::kAuto) {
    if (interchangeable) return SwitchWriter::kBatch;
    // Stop-machine parks every vCPU, and on an oversubscribed host (when the pv groups are wanted)
    // waits for descheduled ones: the stopless writer waits only for vCPUs inside an op of the
    // groups, which it can see only for the tracked ones.
    return plan.untracked_text.empty() ? SwitchWriter::kStopless : SwitchWriter::kStopMachine;
  }
  if (requested == SwitchWriter::kBatch && !interchangeable) {
    return Error(
        ErrorCode::kUnsupported,
        "group '" + not_interchangeable +
            "' is not interchangeable (abi::kGroupInterchangeable), so "
            "its variants may not run side by side: switch it with SwitchWriter::kStopless or "
            "SwitchWriter::kStopMachine");
  }
  if (requested == SwitchWriter::kStopless && !plan.untracked_text.empty()) {
    return Error(ErrorCode::kUnsupported,
                 "group '" + plan.untracked_text + "' is beyond the first " +
                     std::to_string(abi::kMaxTrackedGroups) +
                     " groups of the catalog, whose in-op depth threads track, so the stopless "
                     "writer could not tell whether a thread is inside one of its ops: switch it "
                     "with SwitchWriter::kStopMachine");
  }
  return requested;
}

// A fork while a switch writes would give the child half-written sites (the memfd poker copies the
// text as it finds it). So fork waits for the switch: its prepare handler takes the switch mutex,
// and both sides release it after. A vCPU blocked here still takes IPIs, so a stop in progress is
// not held up by it.
// (The analysis cannot pair a lock in one handler with the unlock in another.)
base::Mutex* g_fork_blocks_on = nullptr;

void keep_forks_out_of_switches(base::Mutex& switch_mutex) {
  static std::once_flag once;
  std::call_once(once, [&switch_mutex] {
    g_fork_blocks_on = &switch_mutex;
    pthread_atfork([]() REPATCH_NO_THREAD_SAFETY_ANALYSIS { g_fork_blocks_on->lock(); },
                   []() REPATCH_NO_THREAD_SAFETY_ANALYSIS { g_fork_blocks_on->unlock(); },
                   []() REPATCH_NO_THREAD_SAFETY_ANALYSIS { g_fork_blocks_on->unlock(); });
  });
}

// Every site holds its new image: the table, the op slots and the group variants say so.
void commit(Engine::Impl& impl, const Plan& plan) REPATCH_REQUIRES(impl.switch_mutex) {
  impl.switch_mutex.assert_held();
  for (const engine::SitePlan& site : plan.sites) {
    site.entry->held.store(site.held_after, std::memory_order_relaxed);
  }
  // The op slots follow their group, as after boot (no site of a switched group calls through
  // them any more, so nobody reads the ones that change).
  impl.group_variant = plan.target;
  for (const auto& object : impl.objects)
    engine::point_object_slots(*object, impl.group_variant);
  // An attempt's release settled these already; a switch with nothing to write has none.
  for (const engine::TrackedGroup& tracked : plan.tracked) {
    engine::settle_group_phase(tracked.group, tracked.to);
  }
}

}  // namespace

const char* switch_writer_name(SwitchWriter writer) {
  switch (writer) {
    case SwitchWriter::kAuto:
      return "auto";
    case SwitchWriter::kStopMachine:
      return "stop";
    case SwitchWriter::kBatch:
      return "batch";
    case SwitchWriter::kStopless:
      return "stopless";
  }
  return "unknown";
}

const char* switch_abort_name(SwitchAbort reason) {
  switch (reason) {
    case SwitchAbort::kNone:
      return "none";
    case SwitchAbort::kRefused:
      return "refused";
    case SwitchAbort::kAckTimeout:
      return "ack_timeout";
    case SwitchAbort::kBusy:
      return "busy";
    case SwitchAbort::kFenceUndone:
      return "fence_undone";
    case SwitchAbort::kForeignWrite:
      return "foreign_write";
    case SwitchAbort::kInOpTimeout:
      return "in_op_timeout";
    case SwitchAbort::kStateRefused:
      return "state_refused";
  }
  return "unknown";
}

Status Engine::set_group_state(std::string_view group, GroupState* state) {
  Impl& impl = *impl_;
  const base::MutexLock no_switch_meanwhile(impl.switch_mutex);
  Result<engine::GroupIndex> g = impl.catalog.find_group(group);
  if (!g.ok()) return g.error();
  if (state != nullptr &&
      (impl.catalog.group(g.value()).desc->flags & abi::kGroupInterchangeable) != 0) {
    return Error(ErrorCode::kInvalidArgument,
                 "group '" + std::string(group) +
                     "' is interchangeable: its variants run side by side during a batch switch, "
                     "so no state of it can depend on the variant; drop abi::kGroupInterchangeable "
                     "to give it state");
  }
  impl.group_state[g.value()] = state;
  return {};
}

SwitchOutcome Engine::switch_groups(const std::vector<GroupChoice>& choices,
                                    const SwitchOptions& options) {
  const auto start = Clock::now();
  SwitchOutcome outcome;
  const auto refuse = [&](Error error) {
    outcome.status = std::move(error);
    outcome.reason = SwitchAbort::kRefused;
    outcome.elapsed = Clock::now() - start;
    return outcome;
  };
  Impl& impl = *impl_;
  keep_forks_out_of_switches(impl.switch_mutex);
  const base::MutexLock one_switch_at_a_time(impl.switch_mutex);
  // After the mutex: a thread waiting for another switch to end waits as an ordinary one.
  const sync::RealtimeSection keep_the_cpu(options.realtime);
  outcome.realtime = keep_the_cpu.granted();

  Result<Plan> planned = plan_switch(impl, choices);
  if (!planned.ok()) return refuse(planned.error());
  Plan plan = std::move(planned).value();
  Result<SwitchWriter> writer = choose_writer(impl, choices, plan, options.writer);
  if (!writer.ok()) return refuse(writer.error());
  outcome.writer = writer.value();
  if (plan.sites.empty()) {
    // Every group is in its variant already (or has no sites): nothing to write, nothing to stop.
    commit(impl, plan);
    outcome.elapsed = Clock::now() - start;
    return outcome;
  }
  if (impl.writer != x86::PokerKind::kMemfdAlias) {
    return refuse(Error(ErrorCode::kUnsupported,
                        "live switches need the memfd text writer (its writes are atomic against "
                        "the INT3 and NMI executors); this engine was booted with " +
                            std::string(x86::poker_kind_name(impl.writer))));
  }
  // Boot installed both; these check that the program has not replaced them since (a stop whose
  // IPIs reach another handler would wait out its deadline on every vCPU, and fail).
  if (Status s = engine::install_int3_handler(); !s.ok()) return refuse(s.error());
  if (Status s = sync::check_interrupt_signals(); !s.ok()) return refuse(s.error());
  if (Status s = sync::register_sync_cores(); !s.ok()) return refuse(s.error());
  outcome.sites = plan.sites.size();
  // With the "stop" handler off (tests only), a stop-machine switch writes as the batch writer
  // does, without parking anyone: the half-switch hazard test must then see a mixed group.
  const bool stop =
      outcome.writer == SwitchWriter::kStopMachine && !test::disabled(test::Handler::kStop);

  auto backoff = options.first_backoff;
  std::string last_reason;
  for (;;) {
    ++outcome.attempts;
    // With the stop switched off, a stop-machine switch is written as the batch writer writes,
    // unchecked, for the hazard tests that must then see what the stop prevents.
    const SwitchWriter attempt_writer =
        stop ? SwitchWriter::kStopMachine
             : (outcome.writer == SwitchWriter::kStopMachine ? SwitchWriter::kBatch
                                                             : outcome.writer);
    auto attempt = std::make_unique<engine::Transaction>(plan.sites, plan.tracked, attempt_writer,
                                                         plan.states, options.in_op_deadline);
    SwitchAbort reason = SwitchAbort::kNone;
    bool published = true;
    if (stop) {
      SwitchWork work(*attempt, options.ack_deadline);
      const sync::StopResult result =
          sync::stop_machine(work, {.ack_deadline = options.ack_deadline});
      outcome.blackout = result.blackout;
      published = work.published();
      switch (result.outcome) {
        case sync::StopOutcome::kDone:
          if (result.work_result == kReasonForeign) {
            reason = SwitchAbort::kForeignWrite;
            last_reason = foreign_write_text(plan);
          } else if (result.work_result != 0) {
            reason = SwitchAbort::kFenceUndone;
            last_reason = result.work_result == kReasonNmiTimeout
                              ? "an NMI handler begun before the INT3 fence was still running at "
                                "the ack deadline; the fence was taken back"
                          : work.in_op_after_fence() != engine::kNoOpThread
                              ? engine::describe_op_thread(work.in_op_after_fence()) +
                                    " was inside an op of a switched group after the INT3 fence "
                                    "(in an NMI handler, or a thread the stop does not park); the "
                                    "fence was taken back"
                              : "an NMI or #BP handler inside an op of a switched group reached "
                                "the INT3 fence and took it back";
            if (result.work_result == kReasonStateRefused) {
              reason = SwitchAbort::kStateRefused;
              last_reason = std::string(attempt->refusal()) +
                            "; the fence was taken back and nothing was converted";
            }
          }
          break;
        case sync::StopOutcome::kAckTimeout:
          reason = SwitchAbort::kAckTimeout;
          last_reason =
              vcpu_name(result.culprit) + " did not acknowledge the stop within " +
              std::to_string(options.ack_deadline.count() / 1000) + " us " +
              (result.culprit_send_error != 0
                   ? "(its IPI could not be sent: " + text::errno_text(result.culprit_send_error) +
                         (result.culprit_send_error == EAGAIN
                              ? "; the user's queue of real-time signals is full, see ulimit -i"
                              : "") +
                         ")"
                   : "(its IPIs blocked for that long?)") +
              "; nothing was written";
          break;
        case sync::StopOutcome::kBusy:
          reason = SwitchAbort::kBusy;
          last_reason =
              vcpu_name(result.culprit) +
              (result.work_result == kReasonMidSite ? " was stopped inside a site being rewritten"
                                                    : " was inside an op of a switched group") +
              "; nothing was written";
          break;
        case sync::StopOutcome::kNotAllowed:
          return refuse(Error(ErrorCode::kState,
                              "switch_groups() was called from the work of another "
                              "stop_machine(); switch from normal context"));
      }
    } else if (!attempt->sites_hold_old()) {
      // Checked here, before the fence, as the stop's work checks it; nothing is published.
      published = false;
      reason = SwitchAbort::kForeignWrite;
      last_reason = foreign_write_text(plan);
    } else {
      std::chrono::nanoseconds written{0};
      const engine::Direction direction = write_without_stop(*attempt, &written);
      outcome.blackout = written;
      if (direction != engine::Direction::kForward) {
        if (attempt->refusal()[0] != '\0') {
          reason = SwitchAbort::kStateRefused;
          last_reason = std::string(attempt->refusal()) +
                        "; the fence was taken back and nothing was converted";
        } else if (attempt->in_op_culprit() != engine::kNoOpThread) {
          reason = SwitchAbort::kInOpTimeout;
          last_reason = engine::describe_op_thread(attempt->in_op_culprit()) +
                        " was still inside an op of a switched group " +
                        std::to_string(options.in_op_deadline.count() / 1000) +
                        " us after the INT3 fence; the fence was taken back";
        } else {
          reason = SwitchAbort::kFenceUndone;
          last_reason =
              "an NMI or #BP handler inside an op of a switched group reached the INT3 fence and "
              "took it back";
        }
      }
    }
    if (published) {
      // Nobody writes the attempt from now on: the next attempt plans on the sites as they are
      // (sites_hold_old), and an executor that re-fenced a site after a backward decision has
      // taken its INT3 back once this returns. Only executors that were writing are waited for;
      // threads that trapped on the attempt and gave way to the primary are not.
      attempt->close_and_drain_writers();
      // Counted without waiting for threads still in the handler: one that trapped on the attempt
      // and was descheduled before it counted itself goes uncounted rather than holding up the
      // call. The attempt stays published for threads that trapped on it.
      outcome.int3_completions += attempt->int3_completions();
      outcome.nmi_completions += attempt->nmi_completions();
      impl.published.keep(std::move(attempt));
    }
    if (reason == SwitchAbort::kNone) break;

    ++outcome.aborts[static_cast<std::size_t>(reason)];
    outcome.reason = reason;
    const auto now = Clock::now();
    // A foreign write or a state that cannot be converted will not go away by waiting.
    const bool final = reason == SwitchAbort::kForeignWrite || reason == SwitchAbort::kStateRefused;
    if (final || now - start + backoff > options.deadline) {
      outcome.status =
          Error(reason == SwitchAbort::kForeignWrite ? ErrorCode::kForeignWrite : ErrorCode::kState,
                "switch of " + plan.groups_text + " aborted after " +
                    std::to_string(outcome.attempts) + " attempt(s): " + last_reason);
      outcome.elapsed = now - start;
      return outcome;
    }
    std::this_thread::sleep_for(backoff);
    backoff = std::min(backoff * 2, options.first_backoff * 16);
  }

  outcome.reason = SwitchAbort::kNone;
  commit(impl, plan);
  outcome.elapsed = Clock::now() - start;
  return outcome;
}

}  // namespace repatch
