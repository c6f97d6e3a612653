// A mutex the thread-safety analysis knows (base/thread_annotations.h), and its scoped lock.
//
// std::mutex carries no capability attributes in libstdc++, so state it guards cannot be marked
// GUARDED_BY; this wrapper can. Builds without NDEBUG also remember the owner, so that code which
// needs the lock and cannot be proven to hold it statically (through a callback, say) checks it
// at run time with assert_held(), as Abseil's AssertHeld and the kernel's lockdep_assert_held do.
// Taking it from a signal handler stops a debug build: a handler that interrupted the owner would
// wait for itself.
#ifndef REPATCH_BASE_MUTEX_H_
#define REPATCH_BASE_MUTEX_H_

#include <atomic>
#include <mutex>
#include <thread>

#include "base/context.h"
#include "base/thread_annotations.h"

namespace repatch::base {

class REPATCH_CAPABILITY("mutex") Mutex {
 public:
  Mutex() = default;
  Mutex(const Mutex&) = delete;
  Mutex& operator=(const Mutex&) = delete;

  void lock(const CodePlace& where = CodePlace::here()) REPATCH_ACQUIRE() {
    assert_normal_context(where);
    mutex_.lock();
    set_owner(std::this_thread::get_id());
  }
  void unlock() REPATCH_RELEASE() {
    set_owner(std::thread::id());
    mutex_.unlock();
  }

  /// Stops a debug build unless this thread holds the mutex; tells the analysis that it does.
  void assert_held([[maybe_unused]] const CodePlace& where = CodePlace::here()) const
      REPATCH_ASSERT_CAPABILITY(this) {
#ifndef NDEBUG
    if (owner_.load(std::memory_order_relaxed) != std::this_thread::get_id()) {
      context_violation("a mutex that must be held is not held by this thread", where);
    }
#endif
  }

 private:
  void set_owner([[maybe_unused]] std::thread::id owner) {
#ifndef NDEBUG
    // Relaxed: only the owner compares it with its own id, and it wrote it itself.
    owner_.store(owner, std::memory_order_relaxed);
#endif
  }

  std::mutex mutex_;
#ifndef NDEBUG
  std::atomic<std::thread::id> owner_{};
#endif
};

/// Holds a Mutex for its lifetime (std::lock_guard, known to the analysis).
class REPATCH_SCOPED_CAPABILITY MutexLock {
 public:
  explicit MutexLock(Mutex& mutex, const CodePlace& where = CodePlace::here())
      REPATCH_ACQUIRE(mutex)
      : mutex_(mutex) {
    mutex_.lock(where);
  }
  ~MutexLock() REPATCH_RELEASE() { mutex_.unlock(); }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

 private:
  Mutex& mutex_;
};

}  // namespace repatch::base

#endif  // REPATCH_BASE_MUTEX_H_
