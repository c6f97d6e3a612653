#include "arch/x86/sync_core.h"

#include <gtest/gtest.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <thread>
#include <vector>

#include "arch/x86/cpuid.h"

namespace {

using repatch::x86::select_sync_core_method;
using repatch::x86::sync_core;
using repatch::x86::sync_core_method;
using repatch::x86::SyncCoreMethod;

// RFLAGS.ID (bit 21): freely writable in user mode and used by nothing the compiler emits, so a
// value set before sync_core() must come back exactly as it was pushed in the IRET frame.
constexpr std::uint64_t kFlagId = std::uint64_t{1} << 21;

std::uint64_t read_flags() {
  std::uint64_t f;
  asm volatile("pushfq\n\tpopq %0" : "=r"(f));
  return f;
}

void write_flags(std::uint64_t f) {
  asm volatile("pushq %0\n\tpopfq" : : "r"(f) : "cc");
}

// Restores the default method whatever a test selected, so tests may share one process.
struct MethodGuard {
  ~MethodGuard() { select_sync_core_method(false); }
};

TEST(SyncCore, IretToSelfIsTheDefaultAndPreservesFlags) {
  MethodGuard guard;
  select_sync_core_method(false);
  ASSERT_EQ(sync_core_method(), SyncCoreMethod::kIretToSelf);
  const std::uint64_t before = read_flags();
  write_flags(before ^ kFlagId);
  sync_core();
  const std::uint64_t after = read_flags();
  write_flags(before);
  EXPECT_EQ(after & kFlagId, (before ^ kFlagId) & kFlagId)
      << "IRET did not restore the RFLAGS it was given";
}

TEST(SyncCore, IretToSelfKeepsTheStackAndLocalsAcrossManyCalls) {
  MethodGuard guard;
  select_sync_core_method(false);
  volatile std::uint64_t canary[4] = {1, 2, 3, 4};
  const auto start = std::chrono::steady_clock::now();
  constexpr int kCalls = 100000;
  for (int i = 0; i < kCalls; ++i) {
    sync_core();
  }
  const auto ns =
      std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - start).count();
  RecordProperty("iret_to_self_ns", std::to_string(ns / kCalls));
  EXPECT_EQ(canary[0] + canary[1] + canary[2] + canary[3], 10u);
}

TEST(SyncCore, ManyThreadsAtOnce) {
  std::atomic<int> done{0};
  std::vector<std::thread> threads;
  threads.reserve(4);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 20000; ++i) {
        sync_core();
      }
      done.fetch_add(1);
    });
  }
  for (auto& t : threads) {
    t.join();
  }
  EXPECT_EQ(done.load(), 4);
}

std::atomic<int> g_handler_ran{0};

void handler(int) {
  sync_core();
  g_handler_ran.fetch_add(1, std::memory_order_relaxed);
}

TEST(SyncCore, RunsInsideASignalHandler) {
  struct sigaction sa = {}, old = {};
  sa.sa_handler = handler;
  sigemptyset(&sa.sa_mask);
  ASSERT_EQ(sigaction(SIGUSR1, &sa, &old), 0);
  const int before = g_handler_ran.load();
  ASSERT_EQ(raise(SIGUSR1), 0);
  EXPECT_EQ(g_handler_ran.load(), before + 1);
  sigaction(SIGUSR1, &old, nullptr);
}

TEST(SyncCore, SerializeWhereCpuidReportsIt) {
  if (!repatch::x86::read_cpu_info().serialize) {
    GTEST_SKIP() << "CPUID.(7,0):EDX[14] is clear: this CPU has no SERIALIZE instruction";
  }
  MethodGuard guard;
  select_sync_core_method(true);
  ASSERT_EQ(sync_core_method(), SyncCoreMethod::kSerialize);
  for (int i = 0; i < 1000; ++i) {
    sync_core();
  }
  select_sync_core_method(false);
  EXPECT_EQ(sync_core_method(), SyncCoreMethod::kIretToSelf);
}

}  // namespace
