#include "stress/watchdog.h"

#include <signal.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#include <cstdint>
#include <vector>

#include "base/return_if_error.h"
#include "base/text.h"
#include "engine/symbolizer.h"
#include "guest/preempted.h"
#include "sync/vcpu.h"

namespace repatch::stress {
namespace {

int g_probe_signal = 0;
// One probe at a time: the watchdog writes the target, then signals it; the handler, on the
// target's thread, writes RIP and RSP and then `g_probe_done` (release), which the watchdog reads
// (acquire) before it reads them.
std::atomic<pid_t> g_probe_target{0};
std::atomic<std::uintptr_t> g_probe_rip{0};
std::atomic<std::uintptr_t> g_probe_rsp{0};
std::atomic<bool> g_probe_done{false};

void probe_handler(int, siginfo_t*, void* context) {
  if (static_cast<pid_t>(syscall(SYS_gettid)) != g_probe_target.load(std::memory_order_acquire)) {
    return;
  }
  const auto* uc = static_cast<const ucontext_t*>(context);
  g_probe_rip.store(static_cast<std::uintptr_t>(uc->uc_mcontext.gregs[REG_RIP]),
                    std::memory_order_relaxed);
  g_probe_rsp.store(static_cast<std::uintptr_t>(uc->uc_mcontext.gregs[REG_RSP]),
                    std::memory_order_relaxed);
  g_probe_done.store(true, std::memory_order_release);
}

Status install_probe() {
  if (g_probe_signal != 0) return {};
  for (int sig = SIGRTMIN; sig <= SIGRTMAX; ++sig) {
    struct sigaction old = {};
    if (sigaction(sig, nullptr, &old) != 0 || old.sa_handler != SIG_DFL) continue;
    struct sigaction action = {};
    action.sa_sigaction = &probe_handler;
    action.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
    sigemptyset(&action.sa_mask);
    if (sigaction(sig, &action, nullptr) != 0) continue;
    g_probe_signal = sig;
    return {};
  }
  return Error(ErrorCode::kSystem,
               "no free real-time signal for the watchdog's probe (every one from SIGRTMIN to "
               "SIGRTMAX has a handler)");
}

}  // namespace

Watchdog::Watchdog(const Workload& workload, const Switcher& switcher, ViolationLog& violations,
                   std::chrono::milliseconds limit)
    : workload_(workload), switcher_(switcher), violations_(violations), limit_(limit) {}

Watchdog::~Watchdog() {
  stop();
}

Status Watchdog::start() {
  REPATCH_RETURN_IF_ERROR(install_probe());
  thread_ = std::thread([this] { run(); });
  return {};
}

void Watchdog::stop() {
  stop_.store(true, std::memory_order_relaxed);
  if (thread_.joinable()) thread_.join();
}

std::string Watchdog::where(pid_t tid) {
  if (g_probe_signal == 0 || tid == 0) return "(not probed: no probe signal)";
  g_probe_done.store(false, std::memory_order_relaxed);
  g_probe_target.store(tid, std::memory_order_release);
  if (syscall(SYS_tgkill, getpid(), tid, g_probe_signal) != 0) return "(the thread is gone)";
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(500);
  while (!g_probe_done.load(std::memory_order_acquire)) {
    if (std::chrono::steady_clock::now() > deadline) {
      return "(did not answer the probe signal within 500 ms: blocked in the kernel with it "
             "masked, or not scheduled at all: real-time threads of this or another process "
             "holding every CPU keep the switch primary, SCHED_FIFO at the lowest priority, off "
             "them)";
    }
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  const std::uintptr_t rip = g_probe_rip.load(std::memory_order_relaxed);
  const std::string name = engine::symbolizer().name(rip);
  return "RIP " + text::hex(rip) + " (" + (name.empty() ? "no symbol" : name) + "), RSP " +
         text::hex(g_probe_rsp.load(std::memory_order_relaxed));
}

void Watchdog::report_vcpu(std::size_t index, std::chrono::milliseconds quiet_for) {
  const sync::VcpuId id = workload_.ids()[index];
  const sync::VcpuSlot& slot = sync::slot(id);
  std::string line = "vCPU " + std::to_string(id) + " (thread " +
                     std::to_string(workload_.tid(index)) + ") made no progress for " +
                     std::to_string(quiet_for.count()) + " ms; at " + where(workload_.tid(index)) +
                     "; " + (slot.online.load() ? "online" : "offline") +
                     (hypervisor::preempted(id).load() ? ", preempted" : "") +
                     (slot.in_nmi.load() ? ", inside its NMI handler" : "") + ", irq-off depth " +
                     std::to_string(slot.irq_off_depth.load());
  violations_.record(Violation::kStuck, line.c_str());
}

void Watchdog::report_switcher(std::chrono::milliseconds busy_for) {
  // The switch may be a microcode update's, made on the injector's thread (Switcher::make).
  const pid_t inside = switcher_.in_switch_tid();
  const std::string line = "the switcher has been inside one switch_groups call for " +
                           std::to_string(busy_for.count()) + " ms; at " +
                           where(inside != 0 ? inside : switcher_.tid());
  violations_.record(Violation::kStuck, line.c_str());
}

void Watchdog::run() {
  const std::size_t n = workload_.ids().size();
  std::vector<std::uint64_t> last(n, 0);
  std::vector<Clock::time_point> moved(n, Clock::now());
  std::vector<bool> reported(n, false);
  bool switcher_reported = false;
  while (!stop_.load(std::memory_order_relaxed)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    const Clock::time_point now = Clock::now();
    for (std::size_t i = 0; i < n; ++i) {
      // An NMI handler that finished is progress too: with a ticket lock on an oversubscribed
      // host, NMIs can come faster than their handlers get the NMI lock, and a vCPU then runs one
      // handler after another for a while (an NMI storm, not a hang; a vCPU whose own code hangs
      // meanwhile is still caught at the end, when it cannot finish its iteration).
      const std::uint64_t it = workload_.tally(i).iterations.load(std::memory_order_relaxed) +
                               workload_.nmi_runs_of(workload_.ids()[i]);
      if (it != last[i]) {
        last[i] = it;
        moved[i] = now;
        continue;
      }
      const auto quiet = std::chrono::duration_cast<std::chrono::milliseconds>(now - moved[i]);
      if (quiet >= limit_ && !reported[i]) {
        reported[i] = true;
        report_vcpu(i, quiet);
        fired_.store(true, std::memory_order_release);
      }
    }
    const std::int64_t since = switcher_.in_switch_since();
    if (since != 0 && !switcher_reported) {
      const auto busy = std::chrono::duration_cast<std::chrono::milliseconds>(
          now.time_since_epoch() - std::chrono::nanoseconds(since));
      if (busy >= limit_) {
        switcher_reported = true;
        report_switcher(busy);
        fired_.store(true, std::memory_order_release);
      }
    }
  }
}

}  // namespace repatch::stress
