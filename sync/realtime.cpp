#include "sync/realtime.h"

#include <pthread.h>
#include <sched.h>
#include <time.h>

namespace repatch::sync {
namespace {

// Whether this thread is inside a RealtimeSection that was granted. Read by relax(), which may
// run in a signal handler on the same thread: initial-exec, so that its access neither allocates
// nor locks (as sync/vcpu.cpp's thread-locals).
[[gnu::tls_model("initial-exec")]] thread_local bool t_realtime = false;

// The sleep of relax() in a real-time section: long enough for the kernel to run another thread
// on this CPU, short against the waits it serves (an in-op deadline of milliseconds).
constexpr long kRealtimeRelaxNs = 10'000;

}  // namespace

RealtimeSection::RealtimeSection(bool wanted) noexcept {
  if (!wanted) return;
  if (t_realtime) {
    granted_ = true;
    return;
  }
  sched_param old{};
  if (pthread_getschedparam(pthread_self(), &old_policy_, &old) != 0) return;
  old_priority_ = old.sched_priority;
  // Already real-time (the program's own choice, maybe at a higher priority): its policy stays,
  // but its waits must relax as a section's do, or it would spin on a thread queued behind it.
  if (old_policy_ != SCHED_FIFO && old_policy_ != SCHED_RR) {
    const sched_param fifo{.sched_priority = sched_get_priority_min(SCHED_FIFO)};
    // EPERM without the capability or the rlimit: the section runs as an ordinary thread.
    if (pthread_setschedparam(pthread_self(), SCHED_FIFO, &fifo) != 0) return;
    changed_policy_ = true;
  }
  granted_ = true;
  owns_flag_ = true;
  t_realtime = true;
}

RealtimeSection::~RealtimeSection() {
  if (owns_flag_) t_realtime = false;
  if (!changed_policy_) return;
  const sched_param old{.sched_priority = old_priority_};
  pthread_setschedparam(pthread_self(), old_policy_, &old);
}

void relax() noexcept {
  if (!t_realtime) {
    sched_yield();
    return;
  }
  const timespec pause{0, kRealtimeRelaxNs};
  nanosleep(&pause, nullptr);
}

}  // namespace repatch::sync
