#include "sync/vcpu.h"

#include <gtest/gtest.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <urcu/urcu-qsbr.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

// Counts repatch::x86::sync_core() calls on each thread. The test binary is linked with
// --wrap=_ZN7repatch3x869sync_coreEv, so every call from another object file (sync/vcpu.cpp among
// them) comes here first; the real function still runs.
namespace {
thread_local std::uint64_t t_sync_cores = 0;
}  // namespace

extern "C" void __real__ZN7repatch3x869sync_coreEv();
extern "C" void __wrap__ZN7repatch3x869sync_coreEv() {
  ++t_sync_cores;
  __real__ZN7repatch3x869sync_coreEv();
}

namespace {

namespace sync = repatch::sync;
using repatch::ErrorCode;
using std::chrono::steady_clock;
using sync::VcpuId;

// Bounded waits only keep a broken build from hanging; no assertion depends on how long anything
// takes.
constexpr std::chrono::seconds kTimeout{30};

bool wait_until(const std::function<bool()>& done) {
  const auto deadline = steady_clock::now() + kTimeout;
  while (!done()) {
    if (steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
  return true;
}

// For handlers: no sleeping, only a clock read (clock_gettime through the vDSO).
bool spin_until(const std::atomic<bool>& flag) {
  const auto deadline = steady_clock::now() + kTimeout;
  while (!flag.load(std::memory_order_acquire)) {
    if (steady_clock::now() > deadline) return false;
  }
  return true;
}

pid_t this_tid() {
  return static_cast<pid_t>(syscall(SYS_gettid));
}

// Every test leaves the process-wide hooks as it found them, so the binary can run whole.
struct HookReset {
  ~HookReset() {
    sync::set_ipi_handler(nullptr);
    sync::set_nmi_handler(nullptr);
    sync::set_online_gate(nullptr);
  }
};

// The signal numbers exist after the first enter(); tests on plain threads need them too.
void ensure_signals_chosen() {
  std::thread([] { ASSERT_TRUE(sync::Vcpu::enter().ok()); }).join();
  ASSERT_NE(sync::ipi_signal(), 0);
}

// A thread that registers as a vCPU and runs `body` (by default: stays online, reporting
// quiescent states, until stop()).
class VcpuThread {
 public:
  using Body = std::function<void(sync::Vcpu&, const std::atomic<bool>& stop)>;

  explicit VcpuThread(Body body = {}) {
    thread_ = std::thread([this, body = std::move(body)] {
      auto vcpu = sync::Vcpu::enter();
      if (!vcpu.ok()) {
        failed_.store(true);
        ready_.store(true, std::memory_order_release);
        return;
      }
      tid_ = this_tid();
      id_ = vcpu.value()->id();
      ready_.store(true, std::memory_order_release);
      if (body) {
        body(*vcpu.value(), stop_);
      } else {
        while (!stop_.load(std::memory_order_acquire)) {
          vcpu.value()->quiescent_state();
          sched_yield();
        }
      }
    });
    EXPECT_TRUE(wait_until([this] { return ready_.load(std::memory_order_acquire); }));
    EXPECT_FALSE(failed_.load());
  }
  ~VcpuThread() { join(); }

  void join() {
    stop_.store(true, std::memory_order_release);
    if (thread_.joinable()) thread_.join();
  }
  VcpuId id() const { return id_; }
  pid_t tid() const { return tid_; }

 private:
  std::atomic<bool> ready_{false};
  std::atomic<bool> failed_{false};
  std::atomic<bool> stop_{false};
  VcpuId id_ = 0;
  pid_t tid_ = 0;
  std::thread thread_;
};

bool blocked_here(int sig) {
  sigset_t set;
  sigemptyset(&set);
  pthread_sigmask(SIG_BLOCK, nullptr, &set);
  return sigismember(&set, sig) == 1;
}

// Whether `sig` is pending for thread `tid` (its own queue), from /proc.
bool pending_for_thread(pid_t tid, int sig) {
  std::ifstream status("/proc/self/task/" + std::to_string(tid) + "/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("SigPnd:", 0) == 0) {
      const std::uint64_t mask = std::stoull(line.substr(7), nullptr, 16);
      return ((mask >> (sig - 1)) & 1) != 0;
    }
  }
  ADD_FAILURE() << "no SigPnd line for thread " << tid;
  return false;
}

// ---------------------------------------------------------------------------------------------
// Registration

TEST(Vcpu, EnterRegistersTheThreadAndDestructionFreesTheSlot) {
  stack_t before{};  // a sanitizer runtime may have installed one of its own
  ASSERT_EQ(sigaltstack(nullptr, &before), 0);
  auto vcpu = sync::Vcpu::enter();
  ASSERT_TRUE(vcpu.ok()) << vcpu.error().to_string();
  const VcpuId id = vcpu.value()->id();
  ASSERT_LT(id, sync::kMaxVcpus);
  EXPECT_LT(id, sync::slot_limit());
  EXPECT_EQ(sync::slot(id).tid.load(), this_tid());
  EXPECT_TRUE(sync::slot(id).online.load());
  EXPECT_EQ(sync::Vcpu::current(), vcpu.value().get());
  EXPECT_NE(urcu_qsbr_read_ongoing(), 0) << "a new vCPU is an online QSBR reader";
  stack_t during{};
  ASSERT_EQ(sigaltstack(nullptr, &during), 0);
  EXPECT_EQ(during.ss_flags & SS_DISABLE, 0) << "no alternate stack while registered";
  EXPECT_NE(during.ss_sp, before.ss_sp);
  EXPECT_NE(sync::ipi_signal(), 0);
  EXPECT_NE(sync::nmi_signal(), 0);
  EXPECT_NE(sync::ipi_signal(), sync::nmi_signal());
  EXPECT_GE(sync::ipi_signal(), SIGRTMIN);
  EXPECT_GE(sync::nmi_signal(), SIGRTMIN);

  vcpu.value().reset();
  EXPECT_EQ(sync::slot(id).tid.load(), 0);
  EXPECT_FALSE(sync::slot(id).online.load());
  EXPECT_EQ(sync::Vcpu::current(), nullptr);
  stack_t after{};
  ASSERT_EQ(sigaltstack(nullptr, &after), 0);
  EXPECT_EQ(after.ss_flags, before.ss_flags) << "the vCPU's alternate stack outlived it";
  EXPECT_EQ(after.ss_sp, before.ss_sp);
  EXPECT_EQ(after.ss_size, before.ss_size);
}

TEST(Vcpu, CurrentIsNullOnThreadsThatAreNotVcpus) {
  EXPECT_EQ(sync::Vcpu::current(), nullptr);
  VcpuThread other;
  EXPECT_EQ(sync::Vcpu::current(), nullptr) << "another thread's registration leaked into this one";
  sync::Vcpu* seen = reinterpret_cast<sync::Vcpu*>(1);
  std::thread([&] { seen = sync::Vcpu::current(); }).join();
  EXPECT_EQ(seen, nullptr);
}

TEST(Vcpu, EnteringTwiceOnOneThreadIsAStateError) {
  auto first = sync::Vcpu::enter();
  ASSERT_TRUE(first.ok());
  auto second = sync::Vcpu::enter();
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.error().code(), ErrorCode::kState);
  EXPECT_NE(second.error().message().find("already vCPU"), std::string::npos)
      << second.error().message();
  EXPECT_EQ(sync::Vcpu::current(), first.value().get()) << "the failed enter changed the thread";
}

TEST(Vcpu, FreedSlotsAreReused) {
  // Slots are claimed lowest first, so with no other registration running, the slot freed by `a`
  // is the lowest free one again (every slot below it was taken when `a` claimed it).
  auto a = std::make_unique<VcpuThread>();
  VcpuThread b;
  const VcpuId freed = a->id();
  ASSERT_NE(freed, b.id());
  const VcpuId limit = sync::slot_limit();
  a.reset();
  EXPECT_EQ(sync::slot(freed).tid.load(), 0);
  VcpuThread c;
  EXPECT_EQ(c.id(), freed) << "a free slot was passed over";
  EXPECT_EQ(sync::slot(freed).tid.load(), c.tid());
  EXPECT_EQ(sync::slot_limit(), limit) << "reusing a slot raised the high-water mark";
}

TEST(Vcpu, AllSlotsInUseIsUnsupported) {
  ensure_signals_chosen();
  std::mutex m;
  std::condition_variable cv;
  bool release = false;
  std::atomic<int> entered{0};
  std::atomic<int> failed{0};
  std::vector<std::thread> threads;
  threads.reserve(sync::kMaxVcpus);
  for (std::size_t i = 0; i < sync::kMaxVcpus; ++i) {
    threads.emplace_back([&] {
      auto vcpu = sync::Vcpu::enter();
      if (!vcpu.ok()) {
        failed.fetch_add(1);
        return;
      }
      // Blocking online would stall grace periods (DESIGN, liburcu pitfall); idle instead.
      vcpu.value()->go_offline();
      entered.fetch_add(1);
      std::unique_lock<std::mutex> lock(m);
      cv.wait(lock, [&] { return release; });
    });
  }
  ASSERT_TRUE(wait_until([&] { return entered.load() + failed.load() == int{sync::kMaxVcpus}; }));
  EXPECT_EQ(failed.load(), 0);
  EXPECT_EQ(sync::slot_limit(), sync::kMaxVcpus);

  auto extra = sync::Vcpu::enter();
  ASSERT_FALSE(extra.ok());
  EXPECT_EQ(extra.error().code(), ErrorCode::kUnsupported);
  EXPECT_EQ(sync::Vcpu::current(), nullptr);

  {
    std::lock_guard<std::mutex> lock(m);
    release = true;
  }
  cv.notify_all();
  for (auto& t : threads)
    t.join();
  auto again = sync::Vcpu::enter();
  EXPECT_TRUE(again.ok()) << "slots were not freed when their vCPUs left";
}

TEST(Vcpu, SendingToAFreeSlotOrOutOfRangeIsEsrch) {
  auto vcpu = sync::Vcpu::enter();
  ASSERT_TRUE(vcpu.ok());
  VcpuId free_slot = sync::kMaxVcpus;
  for (VcpuId id = 0; id < sync::kMaxVcpus; ++id) {
    if (sync::slot(id).tid.load() == 0) {
      free_slot = id;
      break;
    }
  }
  ASSERT_LT(free_slot, sync::kMaxVcpus);
  EXPECT_EQ(sync::send_ipi(free_slot), ESRCH);
  EXPECT_EQ(sync::send_nmi(free_slot), ESRCH);
  EXPECT_EQ(sync::send_ipi(static_cast<VcpuId>(sync::kMaxVcpus)), ESRCH);
  EXPECT_EQ(sync::send_nmi(static_cast<VcpuId>(sync::kMaxVcpus + 7)), ESRCH);
  errno = 1234;
  EXPECT_EQ(sync::send_ipi(vcpu.value()->id()), 0);
  EXPECT_EQ(errno, 1234) << "send_ipi must leave errno alone: handlers call it";
}

// ---------------------------------------------------------------------------------------------
// Online, offline and QSBR

TEST(Vcpu, GoOfflineAndOnlineFlipTheSlotAndTheQsbrReader) {
  auto vcpu = sync::Vcpu::enter();
  ASSERT_TRUE(vcpu.ok());
  sync::Vcpu& v = *vcpu.value();
  const VcpuId id = v.id();
  ASSERT_TRUE(sync::slot(id).online.load());
  ASSERT_NE(urcu_qsbr_read_ongoing(), 0);

  v.go_offline();
  EXPECT_FALSE(sync::slot(id).online.load());
  EXPECT_EQ(urcu_qsbr_read_ongoing(), 0);
  v.quiescent_state();  // must not bring the reader back online
  EXPECT_EQ(urcu_qsbr_read_ongoing(), 0);
  v.go_offline();  // idempotent
  EXPECT_FALSE(sync::slot(id).online.load());

  v.go_online();
  EXPECT_TRUE(sync::slot(id).online.load());
  EXPECT_NE(urcu_qsbr_read_ongoing(), 0);
}

// A registered vCPU that is offline and blocked does not hold up a grace period.
TEST(Vcpu, SynchronizeRcuCompletesWhileAVcpuIsOfflineAndBlocked) {
  std::mutex m;
  std::condition_variable cv;
  bool wake = false;
  std::atomic<bool> offline{false};
  std::atomic<bool> back_online{false};
  std::thread idle([&] {
    auto vcpu = sync::Vcpu::enter();
    if (!vcpu.ok()) return;
    vcpu.value()->go_offline();
    offline.store(true);
    {
      std::unique_lock<std::mutex> lock(m);
      cv.wait(lock, [&] { return wake; });
    }
    vcpu.value()->go_online();
    back_online.store(true);
  });
  ASSERT_TRUE(wait_until([&] { return offline.load(); }));

  // The caller is itself a registered, online vCPU: synchronize_rcu takes it offline for the wait.
  std::atomic<bool> synced{false};
  std::thread writer([&] {
    auto vcpu = sync::Vcpu::enter();
    if (!vcpu.ok()) return;
    urcu_qsbr_synchronize_rcu();
    synced.store(true);
  });
  const bool done = wait_until([&] { return synced.load(); });
  {
    std::lock_guard<std::mutex> lock(m);
    wake = true;
  }
  cv.notify_all();
  idle.join();
  writer.join();  // completes in any case once the idle vCPU has left
  EXPECT_TRUE(done) << "synchronize_rcu waited for an offline vCPU";
  EXPECT_TRUE(back_online.load());
}

// The converse, which shows the vCPU really is a QSBR reader: the grace period cannot end before
// the online vCPU reports a quiescent state.
TEST(Vcpu, SynchronizeRcuWaitsForAnOnlineVcpuToReport) {
  std::atomic<bool> writer_started{false};
  std::atomic<bool> reported{false};
  std::atomic<bool> synced{false};
  std::atomic<bool> early{false};
  VcpuThread reader([&](sync::Vcpu& v, const std::atomic<bool>& stop) {
    wait_until([&] { return writer_started.load(); });
    // Online and not reporting for a while: a correct grace period cannot end during this.
    const auto until = steady_clock::now() + std::chrono::milliseconds(200);
    while (steady_clock::now() < until)
      sched_yield();
    reported.store(true);
    while (!stop.load() && !synced.load()) {
      v.quiescent_state();
      sched_yield();
    }
  });
  std::thread writer([&] {
    writer_started.store(true);
    urcu_qsbr_synchronize_rcu();
    early.store(!reported.load());
    synced.store(true);
  });
  EXPECT_TRUE(wait_until([&] { return synced.load(); }));
  reader.join();
  writer.join();
  EXPECT_FALSE(early.load()) << "the grace period ended while a registered vCPU was online";
}

// The gate runs with `online` already published, and sync_core runs after it, both on enter()
// and on go_online().
std::atomic<int> g_gate_calls{0};
std::atomic<int> g_gate_id{-1};
std::atomic<bool> g_gate_saw_online{false};
std::atomic<std::uint64_t> g_gate_sync_cores{0};

void recording_gate(VcpuId self) {
  g_gate_id.store(self);
  g_gate_saw_online.store(sync::slot(self).online.load());
  g_gate_sync_cores.store(t_sync_cores);
  g_gate_calls.fetch_add(1);
}

TEST(Vcpu, OnlineGateRunsAfterOnlineIsPublishedAndBeforeSyncCore) {
  HookReset reset;
  ensure_signals_chosen();
  sync::set_online_gate(&recording_gate);
  g_gate_calls.store(0);

  std::uint64_t before = t_sync_cores;
  auto vcpu = sync::Vcpu::enter();
  ASSERT_TRUE(vcpu.ok());
  const VcpuId id = vcpu.value()->id();
  EXPECT_EQ(g_gate_calls.load(), 1);
  EXPECT_EQ(g_gate_id.load(), id);
  EXPECT_TRUE(g_gate_saw_online.load()) << "enter() reached the gate before publishing online";
  EXPECT_EQ(g_gate_sync_cores.load(), before) << "serialised before the gate";
  EXPECT_EQ(t_sync_cores, before + 1) << "enter() did not serialise after the gate";

  vcpu.value()->go_offline();
  EXPECT_EQ(g_gate_calls.load(), 1) << "going offline passed the online gate";
  before = t_sync_cores;
  vcpu.value()->go_online();
  EXPECT_EQ(g_gate_calls.load(), 2);
  EXPECT_EQ(g_gate_id.load(), id);
  EXPECT_TRUE(g_gate_saw_online.load()) << "go_online() reached the gate before publishing online";
  EXPECT_EQ(g_gate_sync_cores.load(), before);
  EXPECT_EQ(t_sync_cores, before + 1) << "go_online() did not serialise after the gate";

  vcpu.value()->go_online();  // already online: nothing to wait for, nothing to serialise
  EXPECT_EQ(g_gate_calls.load(), 2);
}

// ---------------------------------------------------------------------------------------------
// IRQ-off guards

TEST(IrqOff, BlocksOnlyTheIpiAndNestsOnAThreadThatIsNotAVcpu) {
  ensure_signals_chosen();
  const int ipi = sync::ipi_signal();
  ASSERT_EQ(sync::Vcpu::current(), nullptr);
  ASSERT_FALSE(blocked_here(ipi));
  {
    sync::IrqOffGuard outer;
    EXPECT_TRUE(blocked_here(ipi));
    EXPECT_FALSE(blocked_here(sync::nmi_signal()));
    EXPECT_FALSE(blocked_here(SIGTRAP));
    {
      sync::IrqOffGuard inner;
      EXPECT_TRUE(blocked_here(ipi));
    }
    EXPECT_TRUE(blocked_here(ipi)) << "the inner guard unblocked the IPI under the outer one";
  }
  EXPECT_FALSE(blocked_here(ipi)) << "the outermost guard did not restore the mask";
}

TEST(IrqOff, LeavesAnAlreadyBlockedIpiBlocked) {
  ensure_signals_chosen();
  const int ipi = sync::ipi_signal();
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, ipi);
  ASSERT_EQ(pthread_sigmask(SIG_BLOCK, &set, nullptr), 0);
  { sync::IrqOffGuard guard; }
  EXPECT_TRUE(blocked_here(ipi));
  pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
}

TEST(IrqOff, CountsDepthInTheSlotOfAVcpu) {
  auto vcpu = sync::Vcpu::enter();
  ASSERT_TRUE(vcpu.ok());
  auto& depth = sync::slot(vcpu.value()->id()).irq_off_depth;
  EXPECT_EQ(depth.load(), 0u);
  {
    sync::IrqOffGuard a;
    EXPECT_EQ(depth.load(), 1u);
    {
      sync::IrqOffGuard b;
      EXPECT_EQ(depth.load(), 2u);
    }
    EXPECT_EQ(depth.load(), 1u);
  }
  EXPECT_EQ(depth.load(), 0u);
}

std::atomic<int> g_ipi_calls{0};
std::atomic<int> g_nmi_calls{0};
void counting_ipi(VcpuId, void*) {
  g_ipi_calls.fetch_add(1);
}
void counting_nmi(VcpuId, void*) {
  g_nmi_calls.fetch_add(1);
}

TEST(IrqOff, IpiWaitsUntilTheGuardEndsWhileAnNmiGetsThrough) {
  HookReset reset;
  g_ipi_calls.store(0);
  g_nmi_calls.store(0);
  sync::set_ipi_handler(&counting_ipi);
  sync::set_nmi_handler(&counting_nmi);
  std::atomic<bool> guarded{false};
  std::atomic<bool> end_guard{false};
  std::atomic<int> ipis_inside{-1};
  std::atomic<int> ipis_right_after{-1};
  VcpuThread target([&](sync::Vcpu&, const std::atomic<bool>&) {
    {
      sync::IrqOffGuard guard;
      guarded.store(true);
      spin_until(end_guard);
      ipis_inside.store(g_ipi_calls.load());
    }
    // A pending signal that becomes unblocked is delivered before sigprocmask returns.
    ipis_right_after.store(g_ipi_calls.load());
  });
  ASSERT_TRUE(wait_until([&] { return guarded.load(); }));
  ASSERT_EQ(sync::send_ipi(target.id()), 0);
  ASSERT_TRUE(wait_until([&] { return pending_for_thread(target.tid(), sync::ipi_signal()); }));
  ASSERT_EQ(sync::send_nmi(target.id()), 0);
  EXPECT_TRUE(wait_until([&] { return g_nmi_calls.load() == 1; }))
      << "the NMI did not get through an IRQ-off guard";
  EXPECT_EQ(g_ipi_calls.load(), 0) << "an IPI ran inside an IRQ-off guard";
  EXPECT_TRUE(pending_for_thread(target.tid(), sync::ipi_signal()));
  end_guard.store(true);
  target.join();
  EXPECT_EQ(ipis_inside.load(), 0);
  EXPECT_EQ(ipis_right_after.load(), 1) << "the IPI was not delivered when the guard ended";
}

// An NMI may take its own guard at any point of a guard's constructor or destructor on the
// thread it interrupts; whatever the interleaving, the IPI must be blocked exactly while the
// thread's own guard lives.
std::atomic<std::uint64_t> g_guarded_nmis{0};
void guarding_nmi(VcpuId, void*) {
  { sync::IrqOffGuard guard; }
  g_guarded_nmis.fetch_add(1);
}

TEST(IrqOff, GuardsInNmisInterleavedWithTheThreadsGuardsKeepTheMaskRight) {
  HookReset reset;
  g_guarded_nmis.store(0);
  sync::set_nmi_handler(&guarding_nmi);
  std::atomic<std::uint64_t> rounds{0};
  std::atomic<std::uint64_t> unblocked_inside{0};
  std::atomic<std::uint64_t> blocked_outside{0};
  VcpuThread target([&](sync::Vcpu&, const std::atomic<bool>& stop) {
    const int ipi = sync::ipi_signal();
    while (!stop.load(std::memory_order_relaxed)) {
      {
        sync::IrqOffGuard guard;
        if (!blocked_here(ipi)) unblocked_inside.fetch_add(1);
      }
      if (blocked_here(ipi)) {
        blocked_outside.fetch_add(1);
        sigset_t set;  // unblock, so one failure does not turn every later round into one
        sigemptyset(&set);
        sigaddset(&set, ipi);
        pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
      }
      rounds.fetch_add(1, std::memory_order_relaxed);
    }
  });
  constexpr std::uint64_t kNmis = 20000;
  for (std::uint64_t sent = 1; sent <= kNmis; ++sent) {
    ASSERT_EQ(sync::send_nmi(target.id()), 0);
    ASSERT_TRUE(wait_until([&] { return g_guarded_nmis.load() == sent; }));
  }
  target.join();
  EXPECT_GT(rounds.load(), 0u);
  EXPECT_EQ(unblocked_inside.load(), 0u) << "the IPI was deliverable inside a guard";
  EXPECT_EQ(blocked_outside.load(), 0u) << "the IPI stayed blocked after the guard ended";
}

// ---------------------------------------------------------------------------------------------
// IPIs

std::atomic<pid_t> g_handler_tid{0};
std::atomic<int> g_handler_id{-1};
std::atomic<bool> g_handler_ctx{false};

void recording_ipi(VcpuId self, void* ucontext) {
  g_handler_tid.store(static_cast<pid_t>(syscall(SYS_gettid)));
  g_handler_id.store(self);
  g_handler_ctx.store(ucontext != nullptr);
  g_ipi_calls.fetch_add(1);
}

TEST(Ipi, RunsTheHandlerOnTheTargetThreadWithItsId) {
  HookReset reset;
  g_ipi_calls.store(0);
  sync::set_ipi_handler(&recording_ipi);
  VcpuThread bystander;
  VcpuThread target;
  ASSERT_NE(target.id(), bystander.id());
  ASSERT_EQ(sync::send_ipi(target.id()), 0);
  ASSERT_TRUE(wait_until([] { return g_ipi_calls.load() == 1; }));
  EXPECT_EQ(g_handler_tid.load(), target.tid());
  EXPECT_EQ(g_handler_id.load(), target.id());
  EXPECT_TRUE(g_handler_ctx.load()) << "the handler did not get the interrupted context";
  EXPECT_EQ(sync::slot(target.id()).ipis.load(), 1u);
  EXPECT_EQ(sync::slot(bystander.id()).ipis.load(), 0u);
}

TEST(Ipi, WithoutAHandlerItIsCountedAndIgnored) {
  HookReset reset;
  VcpuThread target;
  ASSERT_EQ(sync::send_ipi(target.id()), 0);
  ASSERT_EQ(sync::send_nmi(target.id()), 0);
  EXPECT_TRUE(wait_until([&] { return sync::slot(target.id()).ipis.load() == 1; }));
  EXPECT_TRUE(wait_until([&] { return sync::slot(target.id()).nmis.load() == 1; }));
}

TEST(Ipi, SignalsToThreadsThatAreNotVcpusOrFromOutsideAreIgnored) {
  HookReset reset;
  g_ipi_calls.store(0);
  g_nmi_calls.store(0);
  sync::set_ipi_handler(&counting_ipi);
  sync::set_nmi_handler(&counting_nmi);
  ensure_signals_chosen();
  ASSERT_EQ(sync::Vcpu::current(), nullptr);
  // To this thread, unblocked: delivered before tgkill returns.
  ASSERT_EQ(syscall(SYS_tgkill, getpid(), this_tid(), sync::ipi_signal()), 0);
  ASSERT_EQ(syscall(SYS_tgkill, getpid(), this_tid(), sync::nmi_signal()), 0);
  EXPECT_EQ(g_ipi_calls.load(), 0);
  EXPECT_EQ(g_nmi_calls.load(), 0);

  // Queued with sigqueue-style info to a vCPU: not an IPI of ours, so ignored too. The vCPU then
  // gets a real IPI, which runs after the queued one (same signal, queued in order).
  VcpuThread target;
  siginfo_t info{};
  info.si_signo = sync::ipi_signal();
  info.si_code = SI_QUEUE;
  info.si_pid = getpid();
  info.si_uid = getuid();
  ASSERT_EQ(syscall(SYS_rt_tgsigqueueinfo, getpid(), target.tid(), sync::ipi_signal(), &info), 0);
  ASSERT_EQ(sync::send_ipi(target.id()), 0);
  ASSERT_TRUE(wait_until([] { return g_ipi_calls.load() == 1; }));
  EXPECT_EQ(sync::slot(target.id()).ipis.load(), 1u) << "a queued signal counted as an IPI";
}

void errno_clobbering(VcpuId, void*) {
  errno = EIO;
}

// A handler may run between a failing call and the caller's read of errno.
TEST(Ipi, HandlersLeaveTheInterruptedErrnoAlone) {
  HookReset reset;
  sync::set_ipi_handler(&errno_clobbering);
  sync::set_nmi_handler(&errno_clobbering);
  auto vcpu = sync::Vcpu::enter();
  ASSERT_TRUE(vcpu.ok());
  auto& s = sync::slot(vcpu.value()->id());
  // Raw tgkill to this thread: the handler runs on the way back from the system call, and a
  // successful syscall() leaves errno as it was.
  errno = ENOENT;
  ASSERT_EQ(syscall(SYS_tgkill, getpid(), this_tid(), sync::ipi_signal()), 0);
  const int after_ipi = errno;
  errno = ENOENT;
  ASSERT_EQ(syscall(SYS_tgkill, getpid(), this_tid(), sync::nmi_signal()), 0);
  const int after_nmi = errno;
  EXPECT_EQ(s.ipis.load(), 1u);
  EXPECT_EQ(s.nmis.load(), 1u);
  EXPECT_EQ(after_ipi, ENOENT) << "the IPI handler changed errno under the interrupted code";
  EXPECT_EQ(after_nmi, ENOENT) << "the NMI handler changed errno under the interrupted code";
}

// Where each handler ran and what it had blocked.
struct HandlerView {
  std::atomic<bool> ran{false};
  std::atomic<bool> on_alt_stack{false};
  std::atomic<bool> local_inside_alt_stack{false};
  std::atomic<std::size_t> alt_stack_size{0};
  std::atomic<bool> sigtrap_blocked{true};
  std::atomic<bool> ipi_blocked{false};
  std::atomic<bool> nmi_blocked{false};
  std::atomic<bool> in_nmi{false};
};

void look_around(HandlerView& view, VcpuId self) {
  volatile char local = 0;
  stack_t ss{};
  sigaltstack(nullptr, &ss);
  const auto* lo = static_cast<const char*>(ss.ss_sp);
  const auto* at = const_cast<const char*>(&local);
  view.on_alt_stack.store((ss.ss_flags & SS_ONSTACK) != 0);
  view.local_inside_alt_stack.store(at >= lo && at < lo + ss.ss_size);
  view.alt_stack_size.store(ss.ss_size);
  sigset_t mask;
  sigemptyset(&mask);
  pthread_sigmask(SIG_BLOCK, nullptr, &mask);
  view.sigtrap_blocked.store(sigismember(&mask, SIGTRAP) == 1);
  view.ipi_blocked.store(sigismember(&mask, sync::ipi_signal()) == 1);
  view.nmi_blocked.store(sigismember(&mask, sync::nmi_signal()) == 1);
  view.in_nmi.store(sync::slot(self).in_nmi.load());
  view.ran.store(true);
}

HandlerView g_ipi_view;
HandlerView g_nmi_view;
HandlerView g_trap_view;
std::atomic<int> g_traps{0};
std::atomic<bool> g_nest{false};  // the IPI handler sends an NMI to itself, which runs an int3

void viewing_ipi(VcpuId self, void*) {
  look_around(g_ipi_view, self);
  if (g_nest.load()) {
    sync::send_nmi(self);  // unblocked here, so it runs before send_nmi returns
  }
}

void viewing_nmi(VcpuId self, void*) {
  look_around(g_nmi_view, self);
  if (g_nest.load()) {
    asm volatile("int3");
  }
}

void on_sigtrap(int, siginfo_t*, void*) {
  if (sync::Vcpu* v = sync::Vcpu::current()) look_around(g_trap_view, v->id());
  g_traps.fetch_add(1);
}

void reset_views() {
  for (HandlerView* v : {&g_ipi_view, &g_nmi_view, &g_trap_view}) {
    v->ran.store(false);
    v->on_alt_stack.store(false);
    v->local_inside_alt_stack.store(false);
    v->alt_stack_size.store(0);
    v->sigtrap_blocked.store(true);
    v->ipi_blocked.store(false);
    v->nmi_blocked.store(false);
    v->in_nmi.store(false);
  }
  g_traps.store(0);
}

TEST(Ipi, HandlersRunOnTheAlternateStackWithSigtrapAndNmiUnblocked) {
  HookReset reset;
  reset_views();
  g_nest.store(false);
  sync::set_ipi_handler(&viewing_ipi);
  sync::set_nmi_handler(&viewing_nmi);
  VcpuThread target;
  ASSERT_EQ(sync::send_ipi(target.id()), 0);
  ASSERT_TRUE(wait_until([] { return g_ipi_view.ran.load(); }));
  ASSERT_EQ(sync::send_nmi(target.id()), 0);
  ASSERT_TRUE(wait_until([] { return g_nmi_view.ran.load(); }));

  EXPECT_TRUE(g_ipi_view.on_alt_stack.load());
  EXPECT_TRUE(g_ipi_view.local_inside_alt_stack.load());
  EXPECT_GE(g_ipi_view.alt_stack_size.load(), 64u * 1024);
  EXPECT_FALSE(g_ipi_view.sigtrap_blocked.load()) << "SIGTRAP blocked in the IPI handler";
  EXPECT_FALSE(g_ipi_view.nmi_blocked.load()) << "the NMI blocked in the IPI handler";
  EXPECT_TRUE(g_ipi_view.ipi_blocked.load()) << "IPIs nest";
  EXPECT_FALSE(g_ipi_view.in_nmi.load());

  EXPECT_TRUE(g_nmi_view.on_alt_stack.load());
  EXPECT_TRUE(g_nmi_view.local_inside_alt_stack.load());
  EXPECT_FALSE(g_nmi_view.sigtrap_blocked.load()) << "SIGTRAP blocked in the NMI handler";
  EXPECT_TRUE(g_nmi_view.nmi_blocked.load()) << "NMIs nest";
  EXPECT_TRUE(g_nmi_view.ipi_blocked.load()) << "an IPI can interrupt an NMI";
  EXPECT_TRUE(g_nmi_view.in_nmi.load());
  EXPECT_FALSE(sync::slot(target.id()).in_nmi.load());
}

// IPI, then an NMI inside it, then an int3 inside that: the nesting DESIGN warns of. With SIGTRAP
// blocked anywhere on the way, the int3 would kill the process.
TEST(Ipi, IpiThenNmiThenInt3NestOnTheAlternateStack) {
  HookReset reset;
  reset_views();
  struct sigaction trap {};
  struct sigaction old_trap {};
  trap.sa_sigaction = &on_sigtrap;
  trap.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigemptyset(&trap.sa_mask);
  ASSERT_EQ(sigaction(SIGTRAP, &trap, &old_trap), 0);
  g_nest.store(true);
  sync::set_ipi_handler(&viewing_ipi);
  sync::set_nmi_handler(&viewing_nmi);
  {
    VcpuThread target;
    ASSERT_EQ(sync::send_ipi(target.id()), 0);
    EXPECT_TRUE(wait_until([] { return g_traps.load() == 1; }));
    EXPECT_EQ(sync::slot(target.id()).nmis.load(), 1u);
  }
  g_nest.store(false);
  sigaction(SIGTRAP, &old_trap, nullptr);
  EXPECT_TRUE(g_ipi_view.ran.load());
  EXPECT_TRUE(g_nmi_view.ran.load());
  EXPECT_TRUE(g_trap_view.ran.load());
  EXPECT_TRUE(g_trap_view.on_alt_stack.load());
  EXPECT_TRUE(g_trap_view.local_inside_alt_stack.load());
  EXPECT_TRUE(g_trap_view.in_nmi.load()) << "the int3 did not run inside the NMI";
}

// ---------------------------------------------------------------------------------------------
// NMIs

std::atomic<int> g_nmi_entries{0};
std::atomic<int> g_nmi_depth{0};
std::atomic<bool> g_nmi_nested{false};
std::atomic<bool> g_nmi_first_entered{false};
std::atomic<bool> g_nmi_release{false};

void spinning_nmi(VcpuId, void*) {
  if (g_nmi_depth.fetch_add(1) != 0) g_nmi_nested.store(true);
  if (g_nmi_entries.fetch_add(1) == 0) {
    g_nmi_first_entered.store(true);
    spin_until(g_nmi_release);
  }
  g_nmi_depth.fetch_sub(1);
}

TEST(Nmi, DoesNotNestAndHoldsOffIpisUntilItReturns) {
  HookReset reset;
  g_nmi_entries.store(0);
  g_nmi_depth.store(0);
  g_nmi_nested.store(false);
  g_nmi_first_entered.store(false);
  g_nmi_release.store(false);
  g_ipi_calls.store(0);
  sync::set_nmi_handler(&spinning_nmi);
  sync::set_ipi_handler(&counting_ipi);
  VcpuThread target;
  const VcpuId id = target.id();

  ASSERT_EQ(sync::send_nmi(id), 0);
  ASSERT_TRUE(wait_until([] { return g_nmi_first_entered.load(); }));
  EXPECT_TRUE(sync::slot(id).in_nmi.load());
  ASSERT_EQ(sync::send_nmi(id), 0);
  ASSERT_EQ(sync::send_ipi(id), 0);
  // Both are queued for the thread and blocked, which /proc shows: no waiting on luck.
  EXPECT_TRUE(wait_until([&] { return pending_for_thread(target.tid(), sync::nmi_signal()); }));
  EXPECT_TRUE(wait_until([&] { return pending_for_thread(target.tid(), sync::ipi_signal()); }));
  EXPECT_EQ(g_nmi_entries.load(), 1);
  EXPECT_EQ(g_ipi_calls.load(), 0) << "an IPI interrupted an NMI";
  EXPECT_EQ(sync::slot(id).nmis.load(), 1u);

  g_nmi_release.store(true);
  EXPECT_TRUE(wait_until([] { return g_nmi_entries.load() == 2; }))
      << "the second NMI was lost instead of queued";
  EXPECT_TRUE(wait_until([] { return g_ipi_calls.load() == 1; }));
  EXPECT_FALSE(g_nmi_nested.load()) << "the NMI handler was re-entered";
  EXPECT_TRUE(wait_until([&] { return !sync::slot(id).in_nmi.load(); }));
  EXPECT_EQ(sync::slot(id).nmis.load(), 2u);
}

}  // namespace
