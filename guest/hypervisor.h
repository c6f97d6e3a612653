// The simulated hypervisor: preempts vCPUs at any instruction, accounts their steal time, and
// resumes them.
//
// Preempting vCPU n sends it the *preempt signal*; its handler parks the thread right there,
// whatever instruction it was at (guest code, an op body, even the stop-machine IPI handler or an
// NMI handler, which it may interrupt as a hypervisor interrupts a guest at any time). While parked
// the vCPU's slot says `preempted` (what the paravirt ops read, like KVM's steal-time record), and
// it runs nothing: the handler blocks the IPI and the NMI, so interrupts sent to it stay pending
// until it runs again, as they stay pending in a real hypervisor. On resume the handler adds the
// time parked to the vCPU's steal time, clears `preempted`, runs the resume hook (the tlb group's
// on-resume op: tlb::resume_hook) and returns to the guest.
//
// The preempt signal is its own real-time signal, chosen at install() from SIGRTMIN upwards as the
// first one still SIG_DFL (after the vCPU IPI and NMI signals are chosen, so it never takes
// theirs), not the NMI path: a vCPU parked inside the NMI handler would look to the engine like an
// NMI in flight for the whole preemption (the switch waits out NMIs begun before its fence), the
// NMI hook is one process-wide slot that tests need for their own NMI handlers, and a separate
// signal lets a preemption land inside an NMI or IPI handler, as a real one can.
//
// A parked vCPU is still online: a preempted CPU is not idle, and it keeps its QSBR reader and its
// place in the stop-machine target set. So a stop-machine that starts during a preemption waits
// for that vCPU to be resumed (its IPI is blocked until then), and aborts and retries if that
// takes longer than the ack deadline (H3). That wait is the real cost of oversubscription that the
// paravirt variants avoid in their own ops (they never wait for a preempted vCPU), and that the
// stop-machine backoff (H9) bounds for switches.
//
// Random preemption is deterministic from a seed: which vCPU, after what gap and for how long is a
// pure function of the seed (schedule()); where in the guest code each preemption lands depends on
// real timing and is not.
#ifndef REPATCH_GUEST_HYPERVISOR_H_
#define REPATCH_GUEST_HYPERVISOR_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <thread>
#include <vector>

#include "repatch/error.h"
#include "sync/vcpu.h"

namespace repatch::hypervisor {

/// Chooses the preempt signal and installs its handler, once per process (later calls return the
/// first outcome). Also chooses the vCPU IPI and NMI signals if nobody has yet. Normal context.
/// Fails with kSystem when no real-time signal is free.
Status install();

/// The preempt signal, or 0 before install().
int preempt_signal();

/// What a resumed vCPU runs before it returns to guest code, with its own id, in signal context
/// (async-signal-safe, on the vCPU's alternate stack, IPI and NMI blocked). Set before the first
/// preemption; nullptr = nothing.
using ResumeHook = void (*)(sync::VcpuId self);
void set_resume_hook(ResumeHook hook);

/// Preempts vCPU `id`: it parks at whatever instruction the signal finds it, for `duration`, or
/// until resume(id) when `duration` is zero (resume(id) also ends a timed preemption early).
/// Returns once the signal is sent, not once the vCPU is parked (see wait_parked). Any thread but
/// `id` itself. 0 on success; EBUSY when `id` is already preempted or about to be; ESRCH when the
/// slot is free; EINVAL before install(); otherwise tgkill's errno. Async-signal-safe.
int preempt(sync::VcpuId id, std::chrono::nanoseconds duration = std::chrono::nanoseconds(0));

/// Ends `id`'s preemption (or the one about to start). Any thread. Async-signal-safe.
void resume(sync::VcpuId id);

/// Whether `id` is parked now. Async-signal-safe.
bool parked(sync::VcpuId id);

/// Whether `id` is parked, about to be, or running its resume hook. Async-signal-safe.
bool preempting(sync::VcpuId id);

/// Waits until `id` is parked, or `timeout` passes; returns whether it is parked. Normal context.
bool wait_parked(sync::VcpuId id, std::chrono::nanoseconds timeout);

/// Waits until `id` is running guest code again (its resume hook done), or `timeout` passes;
/// returns whether it is. Normal context.
bool wait_running(sync::VcpuId id, std::chrono::nanoseconds timeout);

/// Nanoseconds `id` has spent parked, over all its preemptions (the steal time a guest reads from
/// its steal-time record). Async-signal-safe.
std::uint64_t steal_ns(sync::VcpuId id);

/// Preemptions of `id` that have ended.
std::uint64_t preemptions(sync::VcpuId id);

/// Zeroes steal time and counts (not the state of a preemption in progress). Normal context.
void reset_accounting();

/// One preemption of a random schedule.
struct Preemption {
  sync::VcpuId vcpu;
  std::chrono::nanoseconds gap;       ///< wait before it, after the previous one ended
  std::chrono::nanoseconds duration;  ///< time parked
  bool operator==(const Preemption&) const = default;
};

struct ScheduleOptions {
  std::chrono::nanoseconds min_gap = std::chrono::microseconds(100);
  std::chrono::nanoseconds max_gap = std::chrono::milliseconds(2);
  std::chrono::nanoseconds min_duration = std::chrono::microseconds(200);
  std::chrono::nanoseconds max_duration = std::chrono::milliseconds(5);
};

/// The first `count` preemptions of the schedule of `seed` over `vcpus` (std::mt19937_64; vCPUs
/// drawn uniformly, gap and duration uniformly in their ranges). The same arguments always give
/// the same schedule. `vcpus` must not be empty.
std::vector<Preemption> schedule(std::uint64_t seed, const std::vector<sync::VcpuId>& vcpus,
                                 std::size_t count, const ScheduleOptions& options = {});

/// How the Preemptor's thread is scheduled against the vCPU threads.
enum class HostPriority : std::uint8_t {
  /// Like every thread of the process: when more vCPU threads run than there are CPUs, the
  /// Preemptor waits for its turn like they do, so it preempts less often than its schedule says.
  kNormal,
  /// SCHED_FIFO, above every normal thread: a host's scheduler does not wait for its guests to
  /// yield a CPU before it preempts one. Needs CAP_SYS_NICE or an RLIMIT_RTPRIO of at least 1;
  /// without them the thread stays normal (see Preemptor::realtime()).
  kRealtime,
};

/// Plays a schedule on a thread of its own (not a vCPU): for each entry, sleeps the gap, preempts
/// the vCPU for the duration and waits for it to run again. Stops at the end of the schedule or
/// at stop() / destruction, resuming a vCPU it has parked.
class Preemptor {
 public:
  explicit Preemptor(std::vector<Preemption> plan, HostPriority priority = HostPriority::kNormal);
  ~Preemptor();
  Preemptor(const Preemptor&) = delete;
  Preemptor& operator=(const Preemptor&) = delete;

  /// Stops playing and waits for the thread. Idempotent.
  void stop();
  /// Preemptions played so far (sent and ended).
  std::size_t played() const { return played_.load(std::memory_order_acquire); }
  /// Whether the whole schedule has been played.
  bool done() const { return done_.load(std::memory_order_acquire); }
  /// Whether the thread runs SCHED_FIFO: HostPriority::kRealtime was asked for and granted.
  bool realtime() const { return realtime_; }

 private:
  void run();
  std::vector<Preemption> plan_;
  std::atomic<bool> stop_{false};
  std::atomic<std::size_t> played_{0};
  std::atomic<bool> done_{false};
  bool realtime_ = false;
  std::thread thread_;
};

}  // namespace repatch::hypervisor

#endif  // REPATCH_GUEST_HYPERVISOR_H_
