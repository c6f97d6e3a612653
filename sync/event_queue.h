// Events that signal handlers report to ordinary threads.
//
// A handler (IPI, NMI, #BP) may not allocate, lock or print, so it pushes a small fixed-size
// record into a bounded lock-free queue and an ordinary thread drains it later. Boost.Lockfree's
// `queue` with a fixed capacity and bounded_push is safe here even when a handler interrupts
// another push on the same thread (spsc_queue is not).
#ifndef REPATCH_SYNC_EVENT_QUEUE_H_
#define REPATCH_SYNC_EVENT_QUEUE_H_

#include <atomic>
#include <cstdint>

#include "sync/vcpu.h"

namespace repatch::sync {

struct Event {
  std::uint16_t kind = 0;  ///< meaning defined by the layer that pushes it
  VcpuId vcpu = 0;         ///< who pushed it
  std::uint32_t detail = 0;
  std::uint64_t value = 0;
};

class EventQueue {
 public:
  static constexpr std::size_t kCapacity = 4096;

  EventQueue();
  ~EventQueue();
  EventQueue(const EventQueue&) = delete;
  EventQueue& operator=(const EventQueue&) = delete;

  /// Async-signal-safe, lock-free, never allocates. Returns false (and counts a drop) when full.
  bool push(const Event& event);
  /// For ordinary threads. Returns false when empty.
  bool pop(Event& event);
  /// Events lost because the queue was full.
  std::uint64_t dropped() const { return dropped_.load(std::memory_order_relaxed); }

 private:
  struct Impl;
  Impl* impl_;  // the Boost queue, kept out of this header
  std::atomic<std::uint64_t> dropped_{0};
};

}  // namespace repatch::sync

#endif  // REPATCH_SYNC_EVENT_QUEUE_H_
