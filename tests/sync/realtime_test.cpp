// sync::RealtimeSection: the switch primary's real-time stretch (sync/realtime.h).
#include "sync/realtime.h"

#include <gtest/gtest.h>
#include <pthread.h>
#include <sched.h>

#include <thread>

namespace repatch::sync {
namespace {

struct Policy {
  int policy = -1;
  int priority = -1;
};

Policy current_policy() {
  Policy p;
  sched_param param{};
  if (pthread_getschedparam(pthread_self(), &p.policy, &param) == 0)
    p.priority = param.sched_priority;
  return p;
}

// Whether this process may make a thread SCHED_FIFO: tried on a thread of its own.
bool realtime_allowed() {
  bool allowed = false;
  std::thread probe([&] {
    const sched_param fifo{.sched_priority = sched_get_priority_min(SCHED_FIFO)};
    allowed = pthread_setschedparam(pthread_self(), SCHED_FIFO, &fifo) == 0;
  });
  probe.join();
  return allowed;
}

TEST(RealtimeSection, RunsFifoInsideAndRestoresThePolicyAfter) {
  if (!realtime_allowed()) GTEST_SKIP() << "this process may not use SCHED_FIFO";
  std::thread t([] {
    const Policy before = current_policy();
    ASSERT_EQ(before.policy, SCHED_OTHER);
    {
      const RealtimeSection section(true);
      EXPECT_TRUE(section.granted());
      EXPECT_EQ(current_policy().policy, SCHED_FIFO);
      {
        const RealtimeSection nested(true);
        EXPECT_TRUE(nested.granted());
      }
      EXPECT_EQ(current_policy().policy, SCHED_FIFO) << "the inner section ended the outer one";
      relax();  // sleeps rather than yields; must return
    }
    EXPECT_EQ(current_policy().policy, before.policy);
    EXPECT_EQ(current_policy().priority, before.priority);
  });
  t.join();
}

TEST(RealtimeSection, NotWantedChangesNothing) {
  std::thread t([] {
    const Policy before = current_policy();
    {
      const RealtimeSection section(false);
      EXPECT_FALSE(section.granted());
      EXPECT_EQ(current_policy().policy, before.policy);
    }
    EXPECT_EQ(current_policy().policy, before.policy);
  });
  t.join();
}

TEST(RealtimeSection, AThreadAlreadyRealTimeKeepsItsPriority) {
  if (!realtime_allowed()) GTEST_SKIP() << "this process may not use SCHED_FIFO";
  std::thread t([] {
    const int high = sched_get_priority_min(SCHED_FIFO) + 4;
    const sched_param param{.sched_priority = high};
    ASSERT_EQ(pthread_setschedparam(pthread_self(), SCHED_FIFO, &param), 0);
    {
      const RealtimeSection section(true);
      EXPECT_TRUE(section.granted());
      EXPECT_EQ(current_policy().priority, high) << "the section lowered a real-time thread";
    }
    EXPECT_EQ(current_policy().policy, SCHED_FIFO);
    EXPECT_EQ(current_policy().priority, high);
  });
  t.join();
}

}  // namespace
}  // namespace repatch::sync
