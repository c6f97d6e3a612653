#include "sync/event_queue.h"

#include <boost/lockfree/policies.hpp>
#include <boost/lockfree/queue.hpp>
#include <cassert>
#include <type_traits>

namespace repatch::sync {

// Boost.Lockfree copies events with plain assignment and never runs their destructors.
static_assert(std::is_trivially_copyable_v<Event> && std::is_trivially_destructible_v<Event>);

// A compile-time capacity puts every node in an array inside the queue object, so bounded_push
// takes a node from a fixed free list and never calls the allocator. Nodes are found by 16-bit
// indices, hence the limit.
static_assert(EventQueue::kCapacity < 65535,
              "Boost.Lockfree array free lists index nodes in 16 bits");

struct EventQueue::Impl {
  boost::lockfree::queue<Event, boost::lockfree::capacity<EventQueue::kCapacity>> queue;
};

EventQueue::EventQueue() : impl_(new Impl) {
  // A queue that fell back to a lock would deadlock when a handler interrupts a push that holds it.
  assert(impl_->queue.is_lock_free());
}

EventQueue::~EventQueue() {
  delete impl_;
}

bool EventQueue::push(const Event& event) {
  // bounded_push, never push: push may grow the free list with the allocator when it is empty.
  if (impl_->queue.bounded_push(event)) {
    return true;
  }
  // Relaxed: a statistic, read after the fact; it orders nothing.
  dropped_.fetch_add(1, std::memory_order_relaxed);
  return false;
}

bool EventQueue::pop(Event& event) {
  return impl_->queue.pop(event);
}

}  // namespace repatch::sync
