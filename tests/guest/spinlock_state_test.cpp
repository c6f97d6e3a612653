// The spinlock word: classification, conversion in both directions for every representable state,
// refusal of corrupt words with the lock named, idempotence, and the registry the converter walks.
// No vCPU runs lock ops here (tests/guest/spinlock_test.cpp does).
#include <gtest/gtest.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "guest/lock_registry.h"
#include "guest/lock_state.h"
#include "guest/spinlock.h"
#include "repatch/engine.h"

namespace repatch::guest {
namespace {

using namespace std::chrono_literals;

void boot_once() {
  if (Engine::get() != nullptr) return;
  Result<Engine*> engine = boot({.initial = {{"spinlock", "native"}}});
  ASSERT_TRUE(engine.ok()) << engine.error().to_string();
  ASSERT_TRUE(adopt_engine_variant().ok());
}

struct Case {
  const char* what;
  std::uint64_t word;
  LockState state;
  std::uint64_t converted;  // in the other encoding; unused for kCorrupt
  const char* reason;       // part of the refusal; unused unless kCorrupt
};

// Every representable state of each encoding, with its image in the other one, and every kind of
// corrupt word.
const Case kCases[] = {
    {"native unlocked", word::native(3, 5, 5), LockState::kUnlocked, word::pv(4, false, 0, 0), ""},
    {"native unlocked, tickets wrapped", word::native(0, 0xffff, 0xffff), LockState::kUnlocked,
     word::pv(1, false, 0, 0), ""},
    {"native held", word::native(0, 7, 8), LockState::kHeld, word::pv(1, true, 0, 0), ""},
    {"native held across the wrap", word::native(9, 0xffff, 0), LockState::kHeld,
     word::pv(10, true, 0, 0), ""},
    {"native held, 2 spinners", word::native(0, 7, 10), LockState::kHeldWithSpinningWaiters,
     word::pv(1, true, 0, 0), ""},
    {"native held, spinners across the wrap", word::native(0, 0xfffe, 3),
     LockState::kHeldWithSpinningWaiters, word::pv(1, true, 0, 0), ""},
    {"native held, every vCPU queued", word::native(0, 0, 256), LockState::kHeldWithSpinningWaiters,
     word::pv(1, true, 0, 0), ""},
    {"native generation wraps", word::native(0xffff, 1, 2), LockState::kHeld,
     word::pv(0, true, 0, 0), ""},
    {"pv unlocked", word::pv(2, false, 0, 0), LockState::kUnlocked, word::native(3, 0, 0), ""},
    {"pv unlocked, kicked sleeper and spinner not in yet", word::pv(2, false, 1, 1),
     LockState::kUnlocked, word::native(3, 0, 0), ""},
    {"pv held", word::pv(0, true, 0, 0), LockState::kHeld, word::native(1, 0, 1), ""},
    {"pv held, spinners", word::pv(0, true, 3, 0), LockState::kHeldWithSpinningWaiters,
     word::native(1, 0, 1), ""},
    {"pv held, sleepers", word::pv(5, true, 0, 2), LockState::kHeldWithSleepingWaiters,
     word::native(6, 0, 1), ""},
    {"pv held, spinners and sleepers", word::pv(5, true, 1, 2), LockState::kHeldWithSleepingWaiters,
     word::native(6, 0, 1), ""},
    {"zeroed memory", 0, LockState::kCorrupt, 0, "names no encoding"},
    {"unknown tag", word::make(0x4f, 0, 0), LockState::kCorrupt, 0, "names no encoding"},
    {"native with flag bits", word::native(0, 0, 1) | (1ull << 33), LockState::kCorrupt, 0,
     "ticket word has no flag bits"},
    {"native tail - head beyond the vCPUs", word::native(0, 0, 300), LockState::kCorrupt, 0,
     "more ticket holders than there can be vCPUs"},
    {"native head past tail", word::native(0, 5, 4), LockState::kCorrupt, 0,
     "more ticket holders than there can be vCPUs"},
    {"pv held, a kicked sleeper on its way", word::pv(5, true, 0, 2) | word::kPvKicked,
     LockState::kHeldWithSleepingWaiters, word::native(6, 0, 1), ""},
    {"pv with flag bits", word::pv(0, true, 0, 0) | (1ull << 34), LockState::kCorrupt, 0,
     "flag bits other than locked"},
    {"pv with more waiters than vCPUs", word::pv(0, true, 200, 100), LockState::kCorrupt, 0,
     "more pv waiters than there can be vCPUs"},
};

int variant_of(std::uint64_t w) {
  return word::tag(w) == word::kTagPv ? kPvVariant : kNativeVariant;
}

TEST(SpinlockState, ClassifiesAndConvertsEveryCraftedWord) {
  for (const Case& c : kCases) {
    SCOPED_TRACE(c.what);
    const char* reason = nullptr;
    EXPECT_EQ(classify(c.word, &reason), c.state);
    const int from = variant_of(c.word);
    const int to = 1 - from;
    std::uint64_t out = 0x1234;
    if (c.state == LockState::kCorrupt) {
      ASSERT_NE(reason, nullptr);
      EXPECT_NE(std::string(reason).find(c.reason), std::string::npos) << reason;
      EXPECT_FALSE(convert_word(c.word, to, &out));
      EXPECT_EQ(out, 0x1234u) << "a refused conversion must not write its output";
      continue;
    }
    ASSERT_TRUE(convert_word(c.word, to, &out));
    EXPECT_EQ(out, c.converted) << std::hex << out << " != " << c.converted;
    // Already in the target encoding: maps to itself.
    std::uint64_t again = 0;
    ASSERT_TRUE(convert_word(out, to, &again));
    EXPECT_EQ(again, out);
    // Held stays held, unlocked stays unlocked; waiters are dropped (they restart).
    const LockState converted_state = classify(out);
    EXPECT_EQ(converted_state,
              c.state == LockState::kUnlocked ? LockState::kUnlocked : LockState::kHeld);
    EXPECT_NE(word::generation(out), word::generation(c.word)) << "waiters must see a conversion";
  }
}

TEST(SpinlockState, GroupStateConvertsOrRefusesEveryCraftedLock) {
  boot_once();
  SpinlockGroupState& state = spinlock_group_state();
  for (const Case& c : kCases) {
    SCOPED_TRACE(c.what);
    SpinLock lock("crafted");
    lock.owner().store(7);
    const int from = variant_of(c.word);
    const int to = 1 - from;
    lock.word().store(c.word);
    char why[256];
    std::memset(why, 'x', sizeof why);
    const bool ok = state.can_convert(from, to, why, sizeof why);
    if (c.state == LockState::kCorrupt) {
      ASSERT_FALSE(ok);
      const std::string message(why);
      char address[32];
      std::snprintf(address, sizeof address, "lock %p 'crafted' is corrupt in ",
                    static_cast<void*>(&lock));
      EXPECT_EQ(message.find(address), 0u) << message;
      char word_text[40];
      std::snprintf(word_text, sizeof word_text,
                    "(word 0x%llx): ", static_cast<unsigned long long>(c.word));
      EXPECT_NE(message.find(word_text), std::string::npos) << message;
      EXPECT_NE(message.find(c.reason), std::string::npos) << message;
      // convert() after a refusal (which the engine never does) still leaves the word alone.
      state.convert(from, to);
      EXPECT_EQ(lock.load_word(), c.word);
    } else {
      ASSERT_TRUE(ok) << why;
      state.convert(from, to);
      EXPECT_EQ(lock.load_word(), c.converted);
      EXPECT_EQ(lock.owner().load(), 7u) << "a conversion keeps the owner";
      // Idempotent: the same conversion again finds the lock converted and leaves it.
      ASSERT_TRUE(state.can_convert(from, to, why, sizeof why)) << why;
      state.convert(from, to);
      EXPECT_EQ(lock.load_word(), c.converted);
    }
    lock.word().store(word::unlocked(current_encoding(), 0));  // the destructor's precondition
  }
}

TEST(SpinlockState, RefusalIsCutToTheBufferAndTerminated) {
  boot_once();
  SpinLock lock("a-lock-with-a-rather-long-name");
  lock.word().store(0);
  char why[24];
  std::memset(why, 'x', sizeof why);
  EXPECT_FALSE(spinlock_group_state().can_convert(0, 1, why, sizeof why));
  EXPECT_EQ(std::strlen(why), sizeof why - 1);
  EXPECT_EQ(std::string(why).rfind("lock 0x", 0), 0u);
  EXPECT_FALSE(spinlock_group_state().can_convert(0, 1, why, 0)) << "a zero-size buffer is fine";
  EXPECT_FALSE(spinlock_group_state().can_convert(0, 7, why, sizeof why));
  lock.word().store(word::unlocked(kNativeVariant, 0));
}

// The sleepers of a pv word are woken by its conversion: a native unlock never kicks (H6).
TEST(SpinlockState, ConvertingPvSleepersWakesThem) {
  boot_once();
  SpinLock lock("sleepy");
  const std::uint64_t held = word::pv(0, true, 0, 1);
  lock.word().store(held);
  std::atomic<pid_t> tid{0};
  std::atomic<int> result{-2};
  std::thread sleeper([&] {
    tid.store(gettid());
    auto* upper = reinterpret_cast<std::uint32_t*>(&lock.word()) + 1;
    // Generous timeout: only reached when the conversion does not wake.
    const timespec timeout{60, 0};
    long r;
    do {
      r = syscall(SYS_futex, upper, FUTEX_WAIT_PRIVATE, static_cast<std::uint32_t>(held >> 32),
                  &timeout, nullptr, 0);
    } while (r != 0 && errno == EINTR);
    result.store(r == 0 ? 0 : errno);
  });
  // Wait until the thread sleeps in the kernel (state S), so that the wake is what ends it.
  const auto deadline = std::chrono::steady_clock::now() + 60s;
  bool asleep = false;
  while (!asleep && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(1ms);
    if (tid.load() == 0) continue;
    std::ifstream stat("/proc/self/task/" + std::to_string(tid.load()) + "/stat");
    std::string line;
    std::getline(stat, line);
    const std::size_t paren = line.rfind(')');
    asleep = paren != std::string::npos && line.size() > paren + 2 && line[paren + 2] == 'S';
  }
  ASSERT_TRUE(asleep);
  std::this_thread::sleep_for(20ms);  // settle into futex_wait (S could be an earlier page fault)
  spinlock_group_state().convert(kPvVariant, kNativeVariant);
  sleeper.join();
  EXPECT_EQ(result.load(), 0) << "the sleeper timed out (" << result.load()
                              << ") instead of being woken by the conversion";
  EXPECT_EQ(lock.load_word(), word::native(1, 0, 1));
  lock.word().store(word::unlocked(kNativeVariant, 0));
}

std::uint64_t state_word(int variant, int i) {
  // A spread of representable states in `variant`'s encoding.
  if (variant == kNativeVariant) {
    const std::uint64_t head = static_cast<std::uint64_t>(i) * 7;
    return word::native(0, head, head + static_cast<std::uint64_t>(i % 4));
  }
  return word::pv(0, i % 3 != 0, static_cast<std::uint64_t>(i % 2), 0);
}

TEST(SpinlockState, ConvertingFromTwoThreadsEqualsConvertingOnce) {
  boot_once();
  constexpr int kLocks = 200;
  std::vector<std::unique_ptr<SpinLock>> locks;
  locks.reserve(kLocks);
  for (int i = 0; i < kLocks; ++i)
    locks.push_back(std::make_unique<SpinLock>("many"));
  for (int round = 0; round < 40; ++round) {
    const int from = round % 2 == 0 ? kNativeVariant : kPvVariant;
    const int to = 1 - from;
    std::vector<std::uint64_t> expected(kLocks);
    for (int i = 0; i < kLocks; ++i) {
      const std::uint64_t w = state_word(from, i + round);
      locks[i]->word().store(w);
      ASSERT_TRUE(convert_word(w, to, &expected[i]));
    }
    std::atomic<int> ready{0};
    auto executor = [&] {
      ready.fetch_add(1);
      while (ready.load() < 2) {
      }
      char why[128];
      EXPECT_TRUE(spinlock_group_state().can_convert(from, to, why, sizeof why)) << why;
      spinlock_group_state().convert(from, to);
    };
    std::thread a(executor);
    std::thread b(executor);
    a.join();
    b.join();
    for (int i = 0; i < kLocks; ++i) {
      ASSERT_EQ(locks[i]->load_word(), expected[i]) << "lock " << i << " round " << round;
    }
    EXPECT_EQ(current_encoding(), to);
  }
  for (auto& lock : locks)
    lock->word().store(word::unlocked(current_encoding(), 0));
}

TEST(SpinlockState, RegistryKeepsLiveLocksOnly) {
  boot_once();
  const std::size_t before = lock_registry::size();
  {
    SpinLock a("a");
    auto b = std::make_unique<SpinLock>("b");
    EXPECT_EQ(lock_registry::size(), before + 2);
    b.reset();
    EXPECT_EQ(lock_registry::size(), before + 1);
    std::vector<SpinLock*> seen;
    lock_registry::for_each(
        [](SpinLock& lock, void* out) {
          static_cast<std::vector<SpinLock*>*>(out)->push_back(&lock);
          return true;
        },
        &seen);
    EXPECT_NE(std::find(seen.begin(), seen.end(), &a), seen.end());
  }
  EXPECT_EQ(lock_registry::size(), before);
}

// Locks constructed and destroyed while conversions run: every lock alive at the end is in the
// encoding of the last conversion (a constructor never misses one), and nothing is read after it
// is freed (run under ASan/valgrind to see the latter).
TEST(SpinlockState, LocksBornDuringConversionsEndInTheCurrentEncoding) {
  boot_once();
  std::atomic<bool> stop{false};
  std::vector<std::unique_ptr<SpinLock>> survivors;
  std::thread churn([&] {
    std::vector<std::unique_ptr<SpinLock>> live;
    for (int i = 0; !stop.load() || i < 2000; ++i) {
      live.push_back(std::make_unique<SpinLock>("churn"));
      if (live.size() > 64) live.erase(live.begin());
    }
    survivors = std::move(live);
  });
  for (int i = 0; i < 2000; ++i) {
    const int to = i % 2 == 0 ? kPvVariant : kNativeVariant;
    spinlock_group_state().convert(1 - to, to);
  }
  stop.store(true);
  churn.join();
  for (const auto& lock : survivors) {
    EXPECT_EQ(word::tag(lock->load_word()), word::tag_of_variant(current_encoding()));
    EXPECT_EQ(classify(lock->load_word()), LockState::kUnlocked);
  }
}

}  // namespace
}  // namespace repatch::guest
