// The signals the engine takes (the vCPUs' IPI and NMI, two real-time signals, and SIGTRAP): boot
// takes the ones the program chooses or finds free ones, refuses a signal the program already
// handles, and a switch refuses to run once the program has replaced one of the engine's handlers.
#include <gtest/gtest.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <thread>

#include "base/signal_name.h"
#include "guest/demo_ops.h"
#include "repatch/engine.h"
#include "sync/vcpu.h"

namespace repatch {
namespace {

std::atomic<int> g_program_calls{0};

void program_handler(int, siginfo_t*, void*) {
  g_program_calls.fetch_add(1);
}

// Installs program_handler on `sig`, as a program with a use of its own for the signal would.
struct sigaction install_program_handler(int sig) {
  struct sigaction action {};
  struct sigaction old {};
  action.sa_sigaction = &program_handler;
  action.sa_flags = SA_SIGINFO;
  sigemptyset(&action.sa_mask);
  EXPECT_EQ(sigaction(sig, &action, &old), 0);
  return old;
}

bool runs_program_handler(int sig) {
  struct sigaction current {};
  return sigaction(sig, nullptr, &current) == 0 && current.sa_sigaction == &program_handler;
}

BootOptions with_signals(int ipi, int nmi) {
  return {.initial = {{"demo_lock", "native"}}, .interrupt_signals = InterruptSignals{ipi, nmi}};
}

std::string error_text(const Result<Engine*>& engine) {
  return engine.ok() ? "booted" : engine.error().to_string();
}

TEST(Signals, BootTakesTheSignalsTheProgramChooses) {
  const int ipi = SIGRTMIN + 6;
  const int nmi = SIGRTMIN + 3;
  Result<Engine*> engine = boot(with_signals(ipi, nmi));
  ASSERT_TRUE(engine.ok()) << error_text(engine);
  EXPECT_EQ(sync::ipi_signal(), ipi);
  EXPECT_EQ(sync::nmi_signal(), nmi);
  const EngineStatus status = engine.value()->status();
  EXPECT_EQ(status.ipi_signal, ipi);
  EXPECT_EQ(status.nmi_signal, nmi);
  // The engine's handlers are in place from boot on, before any vCPU.
  for (const int sig : {ipi, nmi, SIGTRAP}) {
    struct sigaction current {};
    ASSERT_EQ(sigaction(sig, nullptr, &current), 0);
    EXPECT_NE(current.sa_flags & SA_SIGINFO, 0) << text::signal_name(sig);
  }
}

TEST(Signals, BootRefusesAnIpiSignalTheProgramHandles) {
  const int taken = SIGRTMIN + 4;
  install_program_handler(taken);
  Result<Engine*> engine = boot(with_signals(taken, SIGRTMIN + 5));
  ASSERT_FALSE(engine.ok()) << "boot took " << text::signal_name(taken) << " over";
  EXPECT_EQ(engine.error().code(), ErrorCode::kState);
  EXPECT_NE(engine.error().message().find(text::signal_name(taken)), std::string::npos)
      << error_text(engine);
  EXPECT_NE(engine.error().message().find("IPI"), std::string::npos) << error_text(engine);
  EXPECT_TRUE(runs_program_handler(taken)) << "the program's handler was replaced";
  EXPECT_EQ(sync::ipi_signal(), 0) << "a refused boot installed the vCPU signals";
  EXPECT_EQ(Engine::get(), nullptr);
}

TEST(Signals, BootRefusesAnNmiSignalTheProgramIgnores) {
  const int ignored = SIGRTMIN + 2;
  signal(ignored, SIG_IGN);
  Result<Engine*> engine = boot(with_signals(SIGRTMIN + 1, ignored));
  ASSERT_FALSE(engine.ok()) << "boot took the ignored " << text::signal_name(ignored) << " over";
  EXPECT_EQ(engine.error().code(), ErrorCode::kState);
  EXPECT_NE(engine.error().message().find(text::signal_name(ignored)), std::string::npos)
      << error_text(engine);
  EXPECT_NE(engine.error().message().find("SIG_IGN"), std::string::npos) << error_text(engine);
  EXPECT_EQ(sync::nmi_signal(), 0);
}

TEST(Signals, BootRefusesSignalsOutsideTheRealTimeRangeOrEqual) {
  const std::string range = text::realtime_signal_range();
  struct Case {
    int ipi;
    int nmi;
    std::string named;  // what the message must name
  };
  const Case cases[] = {
      {SIGRTMIN - 1, SIGRTMIN + 1, std::to_string(SIGRTMIN - 1)},
      {SIGRTMIN, SIGRTMAX + 1, std::to_string(SIGRTMAX + 1)},
      {SIGUSR1, SIGRTMIN + 1, std::to_string(SIGUSR1)},
      {0, SIGRTMIN + 1, "signal 0"},
      {SIGRTMIN + 1, SIGRTMIN + 1, text::signal_name(SIGRTMIN + 1)},
  };
  for (const Case& c : cases) {
    Result<Engine*> engine = boot(with_signals(c.ipi, c.nmi));
    ASSERT_FALSE(engine.ok()) << "booted with IPI " << c.ipi << ", NMI " << c.nmi;
    EXPECT_EQ(engine.error().code(), ErrorCode::kInvalidArgument) << error_text(engine);
    EXPECT_NE(engine.error().message().find(c.named), std::string::npos) << error_text(engine);
    EXPECT_NE(engine.error().message().find(range), std::string::npos) << error_text(engine);
    EXPECT_NE(engine.error().message().find("BootOptions::interrupt_signals"), std::string::npos)
        << error_text(engine);
  }
  EXPECT_EQ(sync::ipi_signal(), 0) << "a refused boot installed the vCPU signals";
  // Refusals leave nothing behind: a valid choice then boots.
  Result<Engine*> engine = boot(with_signals(SIGRTMAX, SIGRTMAX - 1));
  ASSERT_TRUE(engine.ok()) << error_text(engine);
  EXPECT_EQ(sync::ipi_signal(), SIGRTMAX);
}

TEST(Signals, BootFindsFreeSignalsPastOnesTheProgramHandles) {
  install_program_handler(SIGRTMIN);
  install_program_handler(SIGRTMIN + 2);
  Result<Engine*> engine = boot({.initial = {{"demo_lock", "native"}}});
  ASSERT_TRUE(engine.ok()) << error_text(engine);
  EXPECT_EQ(sync::ipi_signal(), SIGRTMIN + 1);
  EXPECT_EQ(sync::nmi_signal(), SIGRTMIN + 3);
  EXPECT_TRUE(runs_program_handler(SIGRTMIN));
  EXPECT_TRUE(runs_program_handler(SIGRTMIN + 2));
}

TEST(Signals, BootRefusesOtherSignalsThanTheOnesVcpusTookBeforeIt) {
  ASSERT_TRUE(sync::choose_interrupt_signals().ok());
  const int ipi = sync::ipi_signal();
  const int nmi = sync::nmi_signal();
  Result<Engine*> engine = boot(with_signals(SIGRTMIN + 8, SIGRTMIN + 9));
  ASSERT_FALSE(engine.ok());
  EXPECT_EQ(engine.error().code(), ErrorCode::kState);
  EXPECT_NE(engine.error().message().find(text::signal_name(ipi)), std::string::npos)
      << error_text(engine);
  engine = boot(with_signals(ipi, nmi));
  EXPECT_TRUE(engine.ok()) << error_text(engine);
}

// A vCPU that keeps reporting quiescent states until told to stop.
class RunningVcpu {
 public:
  RunningVcpu()
      : thread_([this] {
          std::unique_ptr<sync::Vcpu> self = sync::Vcpu::enter().value();
          started_.store(true);
          while (!stop_.load(std::memory_order_relaxed))
            self->quiescent_state();
        }) {
    while (!started_.load())
      std::this_thread::yield();
  }
  ~RunningVcpu() {
    stop_.store(true);
    thread_.join();
  }
  RunningVcpu(const RunningVcpu&) = delete;
  RunningVcpu& operator=(const RunningVcpu&) = delete;

 private:
  std::atomic<bool> started_{false};
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

enum class EngineSignal { kIpi, kNmi, kTrap };

// The program replaces the engine's handler of `which` after boot: a switch with `writer` is
// refused, naming the signal; with the engine's handler put back, the same switch commits.
void expect_switch_refused_while_replaced(EngineSignal which, SwitchWriter writer) {
  Result<Engine*> engine = boot({.initial = {{"demo_lock", "native"}}});
  ASSERT_TRUE(engine.ok()) << error_text(engine);
  const int sig = which == EngineSignal::kIpi   ? sync::ipi_signal()
                  : which == EngineSignal::kNmi ? sync::nmi_signal()
                                                : SIGTRAP;
  RunningVcpu vcpu;
  const struct sigaction engine_action = install_program_handler(sig);
  // Short deadlines: without the check, a stop would wait them out on the vCPU.
  const SwitchOptions options{.writer = writer,
                              .ack_deadline = std::chrono::milliseconds(20),
                              .deadline = std::chrono::milliseconds(100)};
  const SwitchOutcome refused = engine.value()->switch_groups({{"demo_lock", "pv"}}, options);
  ASSERT_FALSE(refused.committed())
      << "switched while the program handles " << text::signal_name(sig);
  EXPECT_EQ(refused.reason, SwitchAbort::kRefused) << refused.status.error().to_string();
  EXPECT_EQ(refused.attempts, 0u);
  EXPECT_EQ(refused.status.error().code(), ErrorCode::kState);
  EXPECT_NE(refused.status.error().message().find(text::signal_name(sig)), std::string::npos)
      << refused.status.error().to_string();
  EXPECT_EQ(engine.value()->current_variant("demo_lock").value(), "native");
  EXPECT_TRUE(engine.value()->verify_sites().ok());
  EXPECT_EQ(g_program_calls.load(), 0) << "the program's handler ran: was an interrupt sent?";

  ASSERT_EQ(sigaction(sig, &engine_action, nullptr), 0);
  // Stopless: the running vCPU never touches demo_lock, so nothing waits for it, and a loaded
  // machine that keeps it off a CPU for longer than an ack deadline cannot fail this switch.
  const SwitchOutcome committed =
      engine.value()->switch_groups({{"demo_lock", "pv"}}, {.writer = SwitchWriter::kStopless});
  EXPECT_TRUE(committed.committed()) << committed.status.error().to_string();
}

TEST(Signals, SwitchRefusedAfterTheProgramReplacesTheIpiHandler) {
  expect_switch_refused_while_replaced(EngineSignal::kIpi, SwitchWriter::kStopMachine);
}

TEST(Signals, SwitchRefusedAfterTheProgramReplacesTheNmiHandler) {
  expect_switch_refused_while_replaced(EngineSignal::kNmi, SwitchWriter::kStopless);
}

TEST(Signals, SwitchRefusedAfterTheProgramReplacesTheSigtrapHandler) {
  expect_switch_refused_while_replaced(EngineSignal::kTrap, SwitchWriter::kStopless);
}

}  // namespace
}  // namespace repatch
