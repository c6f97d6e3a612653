#include "sync/event_queue.h"

#include <gtest/gtest.h>
#include <sched.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "sync/vcpu.h"

namespace {

namespace sync = repatch::sync;
using std::chrono::steady_clock;
using sync::Event;
using sync::EventQueue;

constexpr std::chrono::seconds kTimeout{30};

bool wait_until(const std::function<bool()>& done) {
  const auto deadline = steady_clock::now() + kTimeout;
  while (!done()) {
    if (steady_clock::now() > deadline) return false;
    std::this_thread::yield();
  }
  return true;
}

Event make(std::uint16_t kind, std::uint64_t value) {
  Event e;
  e.kind = kind;
  e.detail = static_cast<std::uint32_t>(value * 3);
  e.value = value;
  return e;
}

TEST(EventQueue, PopsInPushOrderWithEveryFieldIntact) {
  EventQueue q;
  for (std::uint64_t i = 0; i < 100; ++i) {
    Event e = make(static_cast<std::uint16_t>(i % 7), i);
    e.vcpu = static_cast<sync::VcpuId>(i + 1);
    ASSERT_TRUE(q.push(e));
  }
  for (std::uint64_t i = 0; i < 100; ++i) {
    Event e;
    ASSERT_TRUE(q.pop(e));
    EXPECT_EQ(e.kind, i % 7);
    EXPECT_EQ(e.vcpu, i + 1);
    EXPECT_EQ(e.detail, i * 3);
    EXPECT_EQ(e.value, i);
  }
  EXPECT_EQ(q.dropped(), 0u);
}

TEST(EventQueue, PopOnAnEmptyQueueReturnsFalse) {
  EventQueue q;
  Event e = make(9, 99);
  EXPECT_FALSE(q.pop(e));
  ASSERT_TRUE(q.push(make(1, 1)));
  EXPECT_TRUE(q.pop(e));
  EXPECT_FALSE(q.pop(e));
}

TEST(EventQueue, AFullQueueDropsAndCountsAndRecovers) {
  EventQueue q;
  for (std::uint64_t i = 0; i < EventQueue::kCapacity; ++i) {
    ASSERT_TRUE(q.push(make(1, i))) << "full after " << i << " of " << EventQueue::kCapacity;
  }
  EXPECT_FALSE(q.push(make(1, 1000000)));
  EXPECT_FALSE(q.push(make(1, 1000001)));
  EXPECT_EQ(q.dropped(), 2u);
  Event e;
  ASSERT_TRUE(q.pop(e));
  EXPECT_EQ(e.value, 0u);
  EXPECT_TRUE(q.push(make(1, 2000000))) << "a popped slot was not reused";
  std::uint64_t count = 1;
  std::uint64_t last = 0;
  while (q.pop(e)) {
    ++count;
    last = e.value;
  }
  EXPECT_EQ(count, EventQueue::kCapacity + 1);
  EXPECT_EQ(last, 2000000u) << "the dropped events got in after all";
  EXPECT_EQ(q.dropped(), 2u);
}

TEST(EventQueue, ManyThreadsPushAndPopEveryEventOnceInOrderPerProducer) {
  constexpr int kProducers = 4;
  constexpr int kConsumers = 2;
  constexpr std::uint64_t kPerProducer = 200000;
  EventQueue q;
  std::atomic<std::uint64_t> failed_pushes{0};
  std::atomic<int> producers_done{0};
  std::vector<std::vector<std::uint8_t>> seen(kProducers, std::vector<std::uint8_t>(kPerProducer));
  std::atomic<std::uint64_t> out_of_order{0};
  std::atomic<std::uint64_t> duplicates{0};

  std::vector<std::thread> threads;
  threads.reserve(kProducers + kConsumers);
  for (int p = 0; p < kProducers; ++p) {
    threads.emplace_back([&, p] {
      for (std::uint64_t i = 0; i < kPerProducer; ++i) {
        while (!q.push(make(static_cast<std::uint16_t>(p), i))) {
          failed_pushes.fetch_add(1, std::memory_order_relaxed);
          sched_yield();
        }
      }
      producers_done.fetch_add(1);
    });
  }
  for (int c = 0; c < kConsumers; ++c) {
    threads.emplace_back([&] {
      std::array<std::int64_t, kProducers> last;
      last.fill(-1);
      Event e;
      for (;;) {
        if (!q.pop(e)) {
          if (producers_done.load() != kProducers) {
            sched_yield();
            continue;
          }
          if (!q.pop(e)) break;  // empty after the last push: done
        }
        if (e.kind >= kProducers || e.value >= kPerProducer) {
          ADD_FAILURE() << "garbage event kind " << e.kind << " value " << e.value;
          continue;
        }
        // Events of one producer reach one consumer in the order they were pushed.
        if (static_cast<std::int64_t>(e.value) <= last[e.kind]) out_of_order.fetch_add(1);
        last[e.kind] = static_cast<std::int64_t>(e.value);
        // Distinct (producer, value) cells: no two consumers write the same one unless the queue
        // handed one event out twice.
        if (seen[e.kind][e.value]++ != 0) duplicates.fetch_add(1);
      }
    });
  }
  for (auto& t : threads)
    t.join();
  std::uint64_t missing = 0;
  for (const auto& per : seen) {
    for (std::uint8_t n : per)
      missing += n == 0 ? 1 : 0;
  }
  EXPECT_EQ(missing, 0u);
  EXPECT_EQ(duplicates.load(), 0u);
  EXPECT_EQ(out_of_order.load(), 0u);
  EXPECT_EQ(q.dropped(), failed_pushes.load());
}

// A vCPU pushes in a tight loop while IPIs, whose handler also pushes to the same queue, land on
// it, mostly in the middle of its own push: the case that rules out spsc_queue (DESIGN).
struct Stress {
  std::atomic<EventQueue*> queue{nullptr};
  std::atomic<bool> in_push{false};
  std::atomic<std::uint64_t> handler_attempts{0};
  std::atomic<std::uint64_t> handler_pushed{0};
  std::atomic<std::uint64_t> interrupted_pushes{0};
};
Stress g_stress;

constexpr std::uint16_t kThreadKind = 1;
constexpr std::uint16_t kHandlerKind = 2;

void pushing_ipi(sync::VcpuId self, void*) {
  EventQueue* q = g_stress.queue.load(std::memory_order_acquire);
  if (q == nullptr) return;
  const bool interrupted = g_stress.in_push.load(std::memory_order_relaxed);
  // Handlers on one thread never overlap, so the attempt number doubles as a sequence number.
  const std::uint64_t seq = g_stress.handler_attempts.fetch_add(1, std::memory_order_relaxed);
  Event e = make(kHandlerKind, seq);
  e.vcpu = self;
  if (q->push(e)) {
    g_stress.handler_pushed.fetch_add(1, std::memory_order_relaxed);
    // Only a push that went through, nested in one that had not finished, exercises the case.
    if (interrupted) g_stress.interrupted_pushes.fetch_add(1, std::memory_order_relaxed);
  }
}

TEST(EventQueue, HandlersPushWhileTheInterruptedThreadIsPushing) {
  EventQueue q;
  g_stress.queue.store(&q, std::memory_order_release);
  g_stress.in_push.store(false);
  g_stress.handler_attempts.store(0);
  g_stress.handler_pushed.store(0);
  g_stress.interrupted_pushes.store(0);
  sync::set_ipi_handler(&pushing_ipi);

  std::atomic<bool> stop{false};
  std::atomic<bool> ready{false};
  std::atomic<int> vcpu_id{-1};
  std::atomic<std::uint64_t> thread_attempts{0};
  std::atomic<std::uint64_t> thread_pushed{0};
  std::thread pusher([&] {
    auto vcpu = sync::Vcpu::enter();
    if (!vcpu.ok()) {
      ready.store(true);
      return;
    }
    vcpu_id.store(vcpu.value()->id());
    ready.store(true);
    std::uint64_t seq = 0;
    std::uint64_t pushed = 0;
    while (!stop.load(std::memory_order_relaxed)) {
      Event e = make(kThreadKind, seq);
      e.vcpu = vcpu.value()->id();
      // The handler reads the flag on this same thread: a signal fence is all the order it needs.
      g_stress.in_push.store(true, std::memory_order_relaxed);
      std::atomic_signal_fence(std::memory_order_seq_cst);
      const bool ok = q.push(e);
      std::atomic_signal_fence(std::memory_order_seq_cst);
      g_stress.in_push.store(false, std::memory_order_relaxed);
      ++seq;
      pushed += ok ? 1 : 0;
      if ((seq & 1023) == 0) vcpu.value()->quiescent_state();
    }
    thread_attempts.store(seq);
    thread_pushed.store(pushed);
  });

  // Drains continuously, with a pause now and then so that the queue also runs full and both push
  // paths drop.
  std::atomic<bool> drain_stop{false};
  std::atomic<std::uint64_t> popped_thread{0};
  std::atomic<std::uint64_t> popped_handler{0};
  std::atomic<std::uint64_t> out_of_order{0};
  std::atomic<std::uint64_t> garbage{0};
  std::thread drainer([&] {
    std::int64_t last_thread = -1;
    std::int64_t last_handler = -1;
    std::uint64_t n_thread = 0;
    std::uint64_t n_handler = 0;
    std::uint64_t since_pause = 0;
    Event e;
    for (;;) {
      const bool stopping = drain_stop.load(std::memory_order_acquire);
      int burst = 0;
      while (burst < 2000 && q.pop(e)) {
        ++burst;
        ++since_pause;
        std::int64_t& last = e.kind == kThreadKind ? last_thread : last_handler;
        if ((e.kind != kThreadKind && e.kind != kHandlerKind) || e.detail != e.value * 3) {
          garbage.fetch_add(1);
          continue;
        }
        if (static_cast<std::int64_t>(e.value) <= last) out_of_order.fetch_add(1);
        last = static_cast<std::int64_t>(e.value);
        (e.kind == kThreadKind ? n_thread : n_handler) += 1;
      }
      if (stopping && burst == 0) break;
      if (since_pause > 200000) {
        since_pause = 0;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
      if (burst == 0) std::this_thread::yield();
    }
    popped_thread.store(n_thread);
    popped_handler.store(n_handler);
  });

  ASSERT_TRUE(wait_until([&] { return ready.load(); }));
  ASSERT_GE(vcpu_id.load(), 0);
  const auto id = static_cast<sync::VcpuId>(vcpu_id.load());
  // One IPI in flight at a time (so the real-time signal queue never fills), until enough have
  // landed inside a push; the upper bound only stops a pathological scheduler from looping on.
  constexpr std::uint64_t kWantedInterruptions = 200;
  constexpr std::uint64_t kMaxIpis = 2000000;
  std::uint64_t sent = 0;
  bool delivered = true;
  const auto deadline = steady_clock::now() + std::chrono::seconds(60);
  while ((sent < 2000 || g_stress.interrupted_pushes.load() < kWantedInterruptions) &&
         sent < kMaxIpis && steady_clock::now() < deadline) {
    ASSERT_EQ(sync::send_ipi(id), 0);
    ++sent;
    delivered = wait_until([&] { return sync::slot(id).ipis.load() == sent; });
    if (!delivered) break;
  }
  stop.store(true);
  pusher.join();
  sync::set_ipi_handler(nullptr);
  drain_stop.store(true, std::memory_order_release);
  drainer.join();
  g_stress.queue.store(nullptr);

  EXPECT_TRUE(delivered) << "IPI " << sent << " was not delivered";
  EXPECT_EQ(g_stress.handler_attempts.load(), sent);
  EXPECT_GE(g_stress.interrupted_pushes.load(), kWantedInterruptions)
      << "too few handler pushes went through inside an unfinished push (" << sent << " IPIs)";
  EXPECT_EQ(garbage.load(), 0u);
  EXPECT_EQ(out_of_order.load(), 0u);
  EXPECT_EQ(popped_thread.load(), thread_pushed.load());
  EXPECT_EQ(popped_handler.load(), g_stress.handler_pushed.load());
  const std::uint64_t attempts = thread_attempts.load() + g_stress.handler_attempts.load();
  EXPECT_EQ(attempts, popped_thread.load() + popped_handler.load() + q.dropped())
      << "pushes neither popped nor counted as dropped";
  RecordProperty("ipis", std::to_string(sent));
  RecordProperty("interrupted_pushes", std::to_string(g_stress.interrupted_pushes.load()));
  RecordProperty("dropped", std::to_string(q.dropped()));
  RecordProperty("thread_pushed", std::to_string(thread_pushed.load()));
}

}  // namespace
