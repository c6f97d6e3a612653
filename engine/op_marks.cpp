#include "engine/op_marks.h"

#include <pthread.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>

#include "base/context.h"
#include "base/errno_text.h"
#include "base/test_hooks.h"
#include "sync/vcpu.h"

namespace repatch {
namespace detail {
__thread ThreadOpMarks* t_op_marks = nullptr;
}  // namespace detail

namespace engine {
namespace {

struct alignas(64) Row {
  detail::ThreadOpMarks marks;
  /// The owner's kernel thread id; 0 while free.
  std::atomic<pid_t> owner{0};
};

Row g_rows[kMaxOpThreads + 1];  // the last is the overflow row, never owned
// One past the highest row ever claimed: the scan's bound. Only grows.
std::atomic<std::uint32_t> g_row_limit{0};
pthread_key_t g_release_key;
std::atomic<bool> g_release_key_ready{false};

pid_t this_tid() noexcept {
  return static_cast<pid_t>(syscall(SYS_gettid));
}

// Whether thread `tid` of this process has exited (its row may be taken back). Async-signal-safe.
bool thread_gone(pid_t tid) noexcept {
  const int saved_errno = errno;
  const bool gone = syscall(SYS_tgkill, getpid(), tid, 0) != 0 && errno == ESRCH;
  errno = saved_errno;
  return gone;
}

// Whether `marks` has an op of a group in `group_bits` open. seq_cst for another thread's row:
// ordered after the fence's locked writes, so that an op entered before the fence was visible is
// seen (pairs with the seq_cst increment in OpInFlight); relaxed suffices for the thread's own.
bool any_open(const detail::ThreadOpMarks& marks, std::uint32_t group_bits,
              std::memory_order order) noexcept {
  for (std::uint32_t bits = group_bits; bits != 0; bits &= bits - 1) {
    if (marks.depth[__builtin_ctz(bits)].load(order) != 0) return true;
  }
  return false;
}

bool row_idle(const Row& row) noexcept {
  for (const auto& depth : row.marks.depth) {
    if (depth.load(std::memory_order_relaxed) != 0) return false;
  }
  return true;
}

// Runs on the exiting thread. An op it runs later still (another key's destructor) claims again.
void release_row(void* row) {
  detail::t_op_marks = nullptr;
  // Release: the row's last depth decrements are visible to the next owner.
  static_cast<Row*>(row)->owner.store(0, std::memory_order_release);
}

detail::ThreadOpMarks* take(std::uint32_t index) noexcept {
  Row& row = g_rows[index];
  // seq_cst, ordered before the owner's first mark (also seq_cst): a switch that sees a mark in
  // this row loaded a limit that covers it, or announced itself before the mark (the Dekker pair of
  // group_phase.h), and the body then reads the switching bit.
  std::uint32_t limit = g_row_limit.load(std::memory_order_seq_cst);
  while (limit <= index &&
         !g_row_limit.compare_exchange_weak(limit, index + 1, std::memory_order_seq_cst)) {
  }
  detail::t_op_marks = &row.marks;
  if (!base::in_signal_handler() && g_release_key_ready.load(std::memory_order_acquire)) {
    pthread_setspecific(g_release_key, &row);
  }
  return &row.marks;
}

}  // namespace

Status prepare_op_marks() {
  base::assert_normal_context();
  if (g_release_key_ready.load(std::memory_order_acquire)) return {};
  if (const int err = pthread_key_create(&g_release_key, &release_row); err != 0) {
    return Error(ErrorCode::kSystem, std::string("pthread_key_create failed: ") +
                                         text::errno_text(err) +
                                         "; threads could not give their in-op marks back");
  }
  g_release_key_ready.store(true, std::memory_order_release);
  return {};
}

OpThread find_thread_in_op(std::uint32_t group_bits) noexcept {
  if (group_bits == 0) return kNoOpThread;
  const std::uint32_t limit = g_row_limit.load(std::memory_order_seq_cst);
  for (std::uint32_t i = 0; i < limit; ++i) {
    if (any_open(g_rows[i].marks, group_bits, std::memory_order_seq_cst)) return i;
  }
  return any_open(g_rows[kOverflowOpThread].marks, group_bits, std::memory_order_seq_cst)
             ? kOverflowOpThread
             : kNoOpThread;
}

bool this_thread_in_op(std::uint32_t group_bits) noexcept {
  const detail::ThreadOpMarks* marks = detail::t_op_marks;
  return marks != nullptr && any_open(*marks, group_bits, std::memory_order_relaxed);
}

std::string describe_op_thread(OpThread row) {
  if (row == kOverflowOpThread) {
    return "one of the threads beyond the first " + std::to_string(kMaxOpThreads) +
           " with in-op marks";
  }
  if (row >= kMaxOpThreads) return "no thread";
  const pid_t tid = g_rows[row].owner.load(std::memory_order_relaxed);
  const sync::VcpuId limit = sync::slot_limit();
  for (sync::VcpuId id = 0; id < limit; ++id) {
    if (tid != 0 && sync::slot(id).tid.load(std::memory_order_relaxed) == tid) {
      return "vCPU " + std::to_string(id);
    }
  }
  return "thread " + std::to_string(tid) + " (not a vCPU)";
}

}  // namespace engine

namespace detail {

ThreadOpMarks* claim_op_marks() noexcept {
  using engine::g_rows;
  if (test::disabled(test::Handler::kThreadMarks) && sync::Vcpu::current() == nullptr) {
    // What a thread that is not a vCPU had before it had marks: depths nobody reads.
    static ThreadOpMarks unread;
    t_op_marks = &unread;
    return t_op_marks;
  }
  const pid_t tid = engine::this_tid();
  // First step: a free row.
  for (std::uint32_t i = 0; i < engine::kMaxOpThreads; ++i) {
    pid_t expected = 0;
    // Acquire: pairs with release_row's release store of the previous owner.
    if (g_rows[i].owner.compare_exchange_strong(expected, tid, std::memory_order_acquire)) {
      return engine::take(i);
    }
  }
  // Second step: a row whose owner exited without giving it back (it claimed in a handler).
  for (std::uint32_t i = 0; i < engine::kMaxOpThreads; ++i) {
    pid_t owner = g_rows[i].owner.load(std::memory_order_relaxed);
    if (owner == tid || !engine::thread_gone(owner) || !engine::row_idle(g_rows[i])) continue;
    if (g_rows[i].owner.compare_exchange_strong(owner, tid, std::memory_order_acquire)) {
      return engine::take(i);
    }
  }
  t_op_marks = &g_rows[engine::kOverflowOpThread].marks;
  return t_op_marks;
}

}  // namespace detail
}  // namespace repatch
