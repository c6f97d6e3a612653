#include "guest/hypervisor.h"

#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <mutex>
#include <random>
#include <string>

#include "base/errno_text.h"
#include "base/return_if_error.h"
#include "guest/preempted.h"

namespace repatch::hypervisor {
namespace {

// A vCPU's preemption, as a small state machine:
//   kRunning -> kClaimed (preempt() fills the request) -> kRequested (signal sent)
//            -> kParked (handler parked, `preempted` set) -> kResuming (steal time added,
//            `preempted` clear, resume hook running) -> kRunning
enum State : std::uint32_t { kRunning, kClaimed, kRequested, kParked, kResuming };

struct alignas(64) Record {
  std::atomic<std::uint32_t> state{kRunning};
  // The futex word the parked handler sleeps on; resume() bumps it.
  std::atomic<std::uint32_t> resume_seq{0};
  // resume_seq when the preemption was requested: the handler parks until it moves, so a resume()
  // that comes before the signal is handled still ends this preemption and no later one.
  std::atomic<std::uint32_t> park_seq{0};
  std::atomic<std::int64_t> duration_ns{0};  // 0: until resume()
  std::atomic<std::uint64_t> steal_ns{0};
  std::atomic<std::uint64_t> preemptions{0};
};

Record g_records[sync::kMaxVcpus];

// Zero until installed; release after the handler is in place, acquire by readers (see
// sync/signals.cpp for the same pattern).
std::atomic<int> g_signal{0};
// Release/acquire: whatever the hook's owner prepared before setting it is visible to a handler
// that loads it.
std::atomic<ResumeHook> g_resume_hook{nullptr};

std::int64_t monotonic_ns() {
  timespec now{};
  clock_gettime(CLOCK_MONOTONIC, &now);  // async-signal-safe (a vDSO call)
  return static_cast<std::int64_t>(now.tv_sec) * 1'000'000'000 + now.tv_nsec;
}

// FUTEX_WAIT on `word` while it holds `expected`, for at most `timeout_ns` (< 0: no limit).
void futex_wait(std::atomic<std::uint32_t>* word, std::uint32_t expected, std::int64_t timeout_ns) {
  timespec relative{};
  timespec* timeout = nullptr;
  if (timeout_ns >= 0) {
    relative.tv_sec = static_cast<time_t>(timeout_ns / 1'000'000'000);
    relative.tv_nsec = static_cast<long>(timeout_ns % 1'000'000'000);
    timeout = &relative;
  }
  // std::atomic<std::uint32_t> is a plain 32-bit word with no padding on this ABI.
  syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(word), FUTEX_WAIT_PRIVATE, expected, timeout,
          nullptr, 0);
}

void futex_wake_all(std::atomic<std::uint32_t>* word) {
  syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(word), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr,
          nullptr, 0);
}

bool sent_by_this_process(const siginfo_t* info) {
  return info != nullptr && info->si_code == SI_TKILL && info->si_pid == getpid();
}

// The preemption itself: the interrupted vCPU parks here. Runs with the IPI, the NMI and the
// preempt signal blocked, on the vCPU's alternate stack. No allocation, no locks, no stdio.
void on_preempt(int /*sig*/, siginfo_t* info, void* /*ucontext*/) {
  const int saved_errno = errno;
  const sync::Vcpu* self = sync::Vcpu::current();
  if (self == nullptr || !sent_by_this_process(info)) {
    errno = saved_errno;
    return;
  }
  const sync::VcpuId id = self->id();
  Record& r = g_records[id];
  // Acquire pairs with preempt()'s release store of kRequested: park_seq and duration are set.
  if (r.state.load(std::memory_order_acquire) != kRequested) {  // not ours, or stale
    errno = saved_errno;
    return;
  }
  const std::uint32_t park_seq = r.park_seq.load(std::memory_order_relaxed);
  const std::int64_t duration = r.duration_ns.load(std::memory_order_relaxed);
  const std::int64_t start = monotonic_ns();
  std::atomic<bool>& preempted = hypervisor::preempted(id);
  // seq_cst: a paravirt op that reads `preempted` (seq_cst) after this store treats the vCPU as
  // preempted; the release part publishes nothing else.
  preempted.store(true, std::memory_order_seq_cst);
  r.state.store(kParked, std::memory_order_release);  // for wait_parked()
  // Acquire pairs with resume()'s release increment.
  while (r.resume_seq.load(std::memory_order_acquire) == park_seq) {
    std::int64_t timeout = -1;
    if (duration > 0) {
      timeout = start + duration - monotonic_ns();
      if (timeout <= 0) break;
    }
    futex_wait(&r.resume_seq, park_seq, timeout);
  }
  const std::int64_t end = monotonic_ns();
  // Relaxed: statistics, read with relaxed loads; no decision depends on their order.
  r.steal_ns.fetch_add(static_cast<std::uint64_t>(end - start), std::memory_order_relaxed);
  r.preemptions.fetch_add(1, std::memory_order_relaxed);
  r.state.store(kResuming, std::memory_order_relaxed);
  // seq_cst, before the hook: the other half of the paravirt shootdown's Dekker pair. The hook
  // then reads the flush-on-resume mark (seq_cst): either it sees a mark stored by a shooter, or
  // that shooter's later load of `preempted` sees this store and it waits for us instead.
  preempted.store(false, std::memory_order_seq_cst);
  if (ResumeHook hook = g_resume_hook.load(std::memory_order_acquire)) {
    hook(id);
  }
  // Release: everything the hook did is visible to whoever sees kRunning (wait_running).
  r.state.store(kRunning, std::memory_order_release);
  errno = saved_errno;
}

bool signal_is_free(int sig) {
  struct sigaction current {};
  if (sigaction(sig, nullptr, &current) != 0) return false;
  return (current.sa_flags & SA_SIGINFO) == 0 && current.sa_handler == SIG_DFL;
}

Status install_once() {
  // The vCPU signals first, so that this one is chosen among what they leave.
  REPATCH_RETURN_IF_ERROR(sync::choose_interrupt_signals());
  const int ipi = sync::ipi_signal();
  const int nmi = sync::nmi_signal();
  int chosen = 0;
  for (int sig = SIGRTMIN; sig <= SIGRTMAX && chosen == 0; ++sig) {
    if (sig != ipi && sig != nmi && signal_is_free(sig)) chosen = sig;
  }
  if (chosen == 0) {
    return Error(ErrorCode::kSystem,
                 "no real-time signal from SIGRTMIN (" + std::to_string(SIGRTMIN) +
                     ") to SIGRTMAX (" + std::to_string(SIGRTMAX) +
                     ") is free (SIG_DFL) for the simulated hypervisor's preempt signal besides "
                     "the vCPU IPI and NMI; release one before hypervisor::install()");
  }
  struct sigaction action {};
  action.sa_sigaction = &on_preempt;
  // A parked vCPU runs nothing: IPIs and NMIs wait until it is resumed. SIGTRAP stays open (the
  // resume hook runs a site, which may hold the engine's INT3).
  sigemptyset(&action.sa_mask);
  sigaddset(&action.sa_mask, ipi);
  sigaddset(&action.sa_mask, nmi);
  action.sa_flags = SA_SIGINFO | SA_RESTART | SA_ONSTACK;
  if (sigaction(chosen, &action, nullptr) != 0) {
    const int err = errno;
    return Error(ErrorCode::kSystem,
                 "sigaction(" + std::to_string(chosen) +
                     ") for the hypervisor's preempt signal failed: " + text::errno_text(err));
  }
  g_signal.store(chosen, std::memory_order_release);
  return {};
}

}  // namespace

Status install() {
  static std::mutex mutex;  // normal context only
  static Status outcome;
  static bool done = false;
  const std::lock_guard<std::mutex> lock(mutex);
  if (!done) {
    outcome = install_once();
    done = true;
  }
  return outcome;
}

int preempt_signal() {
  return g_signal.load(std::memory_order_acquire);
}

void set_resume_hook(ResumeHook hook) {
  g_resume_hook.store(hook, std::memory_order_release);
}

int preempt(sync::VcpuId id, std::chrono::nanoseconds duration) {
  const int sig = preempt_signal();
  if (sig == 0) return EINVAL;
  if (id >= sync::kMaxVcpus) return ESRCH;
  const sync::Vcpu* caller = sync::Vcpu::current();
  if (caller != nullptr && caller->id() == id) return EINVAL;  // it would park itself for ever
  // Relaxed: only the value is used; tgkill with our pid makes a stale one harmless (the handler
  // ignores threads that are not vCPUs, and checks the state).
  const pid_t tid = sync::slot(id).tid.load(std::memory_order_relaxed);
  if (tid == 0) return ESRCH;
  Record& r = g_records[id];
  std::uint32_t expected = kRunning;
  if (!r.state.compare_exchange_strong(expected, kClaimed, std::memory_order_acquire,
                                       std::memory_order_relaxed)) {
    return EBUSY;
  }
  r.park_seq.store(r.resume_seq.load(std::memory_order_relaxed), std::memory_order_relaxed);
  r.duration_ns.store(duration.count() > 0 ? duration.count() : 0, std::memory_order_relaxed);
  // Release pairs with the handler's acquire load: the request is complete when it is seen.
  r.state.store(kRequested, std::memory_order_release);
  const int saved_errno = errno;
  int result = 0;
  if (syscall(SYS_tgkill, getpid(), tid, sig) != 0) {
    result = errno;
    r.state.store(kRunning, std::memory_order_release);
  }
  errno = saved_errno;
  return result;
}

void resume(sync::VcpuId id) {
  if (id >= sync::kMaxVcpus) return;
  Record& r = g_records[id];
  // Release pairs with the parked handler's acquire load.
  r.resume_seq.fetch_add(1, std::memory_order_release);
  futex_wake_all(&r.resume_seq);
}

bool parked(sync::VcpuId id) {
  return id < sync::kMaxVcpus && g_records[id].state.load(std::memory_order_acquire) == kParked;
}

bool preempting(sync::VcpuId id) {
  return id < sync::kMaxVcpus && g_records[id].state.load(std::memory_order_acquire) != kRunning;
}

namespace {

template <typename Done>
bool poll_until(Done done, std::chrono::nanoseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!done()) {
    if (std::chrono::steady_clock::now() >= deadline) return done();
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
  return true;
}

}  // namespace

bool wait_parked(sync::VcpuId id, std::chrono::nanoseconds timeout) {
  return poll_until([id] { return parked(id); }, timeout);
}

bool wait_running(sync::VcpuId id, std::chrono::nanoseconds timeout) {
  return poll_until([id] { return !preempting(id); }, timeout);
}

std::uint64_t steal_ns(sync::VcpuId id) {
  return id < sync::kMaxVcpus ? g_records[id].steal_ns.load(std::memory_order_relaxed) : 0;
}

std::uint64_t preemptions(sync::VcpuId id) {
  return id < sync::kMaxVcpus ? g_records[id].preemptions.load(std::memory_order_relaxed) : 0;
}

void reset_accounting() {
  for (Record& r : g_records) {
    r.steal_ns.store(0, std::memory_order_relaxed);
    r.preemptions.store(0, std::memory_order_relaxed);
  }
}

std::vector<Preemption> schedule(std::uint64_t seed, const std::vector<sync::VcpuId>& vcpus,
                                 std::size_t count, const ScheduleOptions& options) {
  std::vector<Preemption> plan;
  if (vcpus.empty()) return plan;
  plan.reserve(count);
  std::mt19937_64 random(seed);
  // Drawn by hand from the raw 64-bit output, not with std::uniform_int_distribution, whose
  // algorithm the standard leaves to the library: the same seed must give the same schedule with
  // any standard library.
  const auto uniform = [&random](std::int64_t lo, std::int64_t hi) {
    if (hi <= lo) return lo;
    const std::uint64_t span = static_cast<std::uint64_t>(hi - lo) + 1;
    return lo + static_cast<std::int64_t>(random() % span);
  };
  for (std::size_t i = 0; i < count; ++i) {
    Preemption p{};
    p.vcpu =
        vcpus[static_cast<std::size_t>(uniform(0, static_cast<std::int64_t>(vcpus.size()) - 1))];
    p.gap = std::chrono::nanoseconds(uniform(options.min_gap.count(), options.max_gap.count()));
    p.duration = std::chrono::nanoseconds(
        uniform(options.min_duration.count(), options.max_duration.count()));
    plan.push_back(p);
  }
  return plan;
}

Preemptor::Preemptor(std::vector<Preemption> plan, HostPriority priority)
    : plan_(std::move(plan)), thread_([this] { run(); }) {
  if (priority == HostPriority::kRealtime) {
    // The lowest real-time priority is enough to run before every SCHED_OTHER thread. The thread
    // may already be playing its first gap at normal priority; it sleeps most of its time, so the
    // change takes effect at its next wake-up at the latest.
    sched_param param{};
    param.sched_priority = sched_get_priority_min(SCHED_FIFO);
    realtime_ = pthread_setschedparam(thread_.native_handle(), SCHED_FIFO, &param) == 0;
  }
}

Preemptor::~Preemptor() {
  stop();
}

void Preemptor::stop() {
  stop_.store(true, std::memory_order_release);
  if (thread_.joinable()) thread_.join();
}

void Preemptor::run() {
  using std::chrono::steady_clock;
  const auto stopping = [this] { return stop_.load(std::memory_order_acquire); };
  for (const Preemption& p : plan_) {
    // Sleep the gap in slices, so that stop() is prompt.
    const auto wake = steady_clock::now() + p.gap;
    while (!stopping() && steady_clock::now() < wake) {
      std::this_thread::sleep_for(std::min<std::chrono::nanoseconds>(wake - steady_clock::now(),
                                                                     std::chrono::milliseconds(1)));
    }
    if (stopping()) break;
    // A vCPU that left, or one somebody else is preempting, just skips its turn.
    if (preempt(p.vcpu, p.duration) == 0) {
      while (preempting(p.vcpu)) {
        if (stopping()) resume(p.vcpu);
        // A vCPU that left before its handler ran never parks: take the request back.
        if (sync::slot(p.vcpu).tid.load(std::memory_order_relaxed) == 0) {
          std::uint32_t requested = kRequested;
          g_records[p.vcpu].state.compare_exchange_strong(requested, kRunning,
                                                          std::memory_order_relaxed);
        }
        std::this_thread::sleep_for(std::chrono::microseconds(100));
      }
    }
    played_.fetch_add(1, std::memory_order_release);
  }
  done_.store(!stopping(), std::memory_order_release);
}

}  // namespace repatch::hypervisor
