// A stretch of code that the scheduler should not interrupt: the analogue of a kernel patching its
// text with preemption disabled.
//
// A live switch holds an INT3 fence up from its first write to its last serialise, and every vCPU
// that reaches a fenced site waits for it meanwhile. On a host with more runnable threads than
// CPUs, an ordinary thread that writes the switch loses its CPU to a vCPU every few milliseconds,
// and the fence then stays up for a whole scheduler round (tens of ms with 16 busy vCPUs on 2
// CPUs). Run SCHED_FIFO instead, the writer keeps its CPU until it blocks.
//
// A real-time thread must never spin waiting for an ordinary one: sched_yield() hands the CPU only
// to other real-time threads, so the thread it waits for could be left on the run queue of the
// very CPU it spins on. relax() is the wait step that stays correct either way.
#ifndef REPATCH_SYNC_REALTIME_H_
#define REPATCH_SYNC_REALTIME_H_

namespace repatch::sync {

/// Makes the calling thread SCHED_FIFO (lowest real-time priority) for the section's lifetime,
/// when asked and when the process may (CAP_SYS_NICE, or an RLIMIT_RTPRIO of at least 1), and
/// restores its policy and priority when it ends. Without permission the thread keeps its policy
/// and granted() says so; a thread that is real-time already keeps its policy and priority.
/// Normal context; sections on one thread may nest (the inner one then changes nothing).
class RealtimeSection {
 public:
  explicit RealtimeSection(bool wanted) noexcept;
  ~RealtimeSection();
  RealtimeSection(const RealtimeSection&) = delete;
  RealtimeSection& operator=(const RealtimeSection&) = delete;

  /// Whether the thread runs real-time in this section (also when an outer section made it so).
  bool granted() const noexcept { return granted_; }

 private:
  bool granted_ = false;
  bool owns_flag_ = false;       // this section set relax()'s flag and clears it
  bool changed_policy_ = false;  // this section changed the policy and restores it
  int old_policy_ = 0;
  int old_priority_ = 0;
};

/// One step of a wait for other threads: sched_yield() in an ordinary thread; a 10 us sleep in a
/// RealtimeSection, which frees the CPU for ordinary threads too. Async-signal-safe.
void relax() noexcept;

}  // namespace repatch::sync

#endif  // REPATCH_SYNC_REALTIME_H_
