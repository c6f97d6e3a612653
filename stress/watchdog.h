// The watchdog: notices a vCPU, or the switcher, that makes no progress, and says which one and
// where it is.
//
// Every 100 ms it reads each vCPU's iteration count plus its NMI handler's runs; one whose sum
// has not moved for the scenario's watchdog time is stuck, and so is a switch_groups call that has
// lasted that long. The watchdog then sends the stuck thread its probe signal (a real-time signal
// of its own, chosen at start as the first one still SIG_DFL; guest code never blocks it, and the
// hypervisor's parking handler does not either): the handler records the interrupted RIP and RSP.
// The watchdog names the code there (engine/symbolizer.h, in its own normal context) and the vCPU's
// state from its slot (online, preempted, inside an NMI, irq-off depth), records a kStuck violation
// and raises its flag; the run then ends.
#ifndef REPATCH_STRESS_WATCHDOG_H_
#define REPATCH_STRESS_WATCHDOG_H_

#include <atomic>
#include <chrono>
#include <string>
#include <thread>

#include "repatch/error.h"
#include "stress/switcher.h"
#include "stress/violations.h"
#include "stress/workload.h"

namespace repatch::stress {

class Watchdog {
 public:
  Watchdog(const Workload& workload, const Switcher& switcher, ViolationLog& violations,
           std::chrono::milliseconds limit);
  ~Watchdog();
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  /// Installs the probe signal's handler (once per process) and starts watching. Fails with
  /// kSystem when no real-time signal is free.
  Status start();
  /// Stops watching and joins. Idempotent.
  void stop();
  /// Whether it found a stuck thread.
  bool fired() const { return fired_.load(std::memory_order_acquire); }

  /// "0x55d2a1e2e260 repatch::guest::...+0x1c" for the RIP of thread `tid`, probed now, or a
  /// sentence saying why it could not be probed. Normal context; one probe at a time.
  static std::string where(pid_t tid);

 private:
  void run();
  void report_vcpu(std::size_t index, std::chrono::milliseconds quiet_for);
  void report_switcher(std::chrono::milliseconds busy_for);
  const Workload& workload_;
  const Switcher& switcher_;
  ViolationLog& violations_;
  std::chrono::milliseconds limit_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> fired_{false};
  std::thread thread_;
};

}  // namespace repatch::stress

#endif  // REPATCH_STRESS_WATCHDOG_H_
