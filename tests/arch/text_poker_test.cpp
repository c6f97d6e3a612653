// Patches real code of this test binary through both TextPoker backends and runs it.
//
// Every test patches its own function, alone in its own page, so remapping one test's page never
// touches code another test (or gtest) runs, and the tests also pass when the whole binary runs in
// one process.
#include "arch/x86/text_poker.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>

#include "arch/x86/proc_maps.h"
#include "arch/x86/sync_core.h"

namespace {

// `int name()` that returns 1, at the start of a page of its own (the rest of the page is int3).
// Written in assembly so that its bytes are known: b8 01 00 00 00 (mov $1,%eax), c3 (ret), and
// two int3 to make an 8-byte, 8-aligned window that the memfd poker writes with one store.
#define PAGE_FUNCTION(name)                    \
  asm(".pushsection .text.repatch_test_" #name \
      ",\"ax\",@progbits\n"                    \
      ".balign 4096\n"                         \
      ".globl " #name                          \
      "\n"                                     \
      ".hidden " #name                         \
      "\n"                                     \
      ".type " #name ", @function\n" #name     \
      ":\n"                                    \
      "  movl $1, %eax\n"                      \
      "  ret\n"                                \
      "  int3\n"                               \
      "  int3\n"                               \
      ".size " #name ", . - " #name            \
      "\n"                                     \
      ".balign 4096, 0xcc\n"                   \
      ".popsection\n");                        \
  extern "C" int name()

PAGE_FUNCTION(repatch_test_memfd_basic);
PAGE_FUNCTION(repatch_test_memfd_maps);
PAGE_FUNCTION(repatch_test_memfd_wx);
PAGE_FUNCTION(repatch_test_memfd_outside);
PAGE_FUNCTION(repatch_test_memfd_overlap);
PAGE_FUNCTION(repatch_test_memfd_destroy);
PAGE_FUNCTION(repatch_test_memfd_concurrent);
PAGE_FUNCTION(repatch_test_memfd_fork);
PAGE_FUNCTION(repatch_test_memfd_fork_no_fd);
PAGE_FUNCTION(repatch_test_procmem_basic);
PAGE_FUNCTION(repatch_test_procmem_refused);

using Code = std::array<std::uint8_t, 8>;
constexpr Code kReturns1 = {0xb8, 0x01, 0x00, 0x00, 0x00, 0xc3, 0xcc, 0xcc};

constexpr Code returns(std::uint8_t value) {
  Code c = kReturns1;
  c[1] = value;
  return c;
}

std::uintptr_t addr(int (*fn)()) {
  return reinterpret_cast<std::uintptr_t>(fn);
}

Code read_code(int (*fn)()) {
  Code c;
  std::memcpy(c.data(), reinterpret_cast<const void*>(fn), c.size());
  return c;
}

std::uintptr_t page_size() {
  return static_cast<std::uintptr_t>(sysconf(_SC_PAGESIZE));
}

std::unique_ptr<repatch::x86::TextPoker> memfd_poker_for(int (*fn)()) {
  auto poker = repatch::x86::make_memfd_poker(addr(fn), addr(fn) + sizeof(Code));
  if (!poker.ok()) {
    ADD_FAILURE() << poker.error().to_string();
    return nullptr;
  }
  return std::move(poker).value();
}

std::vector<repatch::x86::MapEntry> maps_or_fail() {
  auto maps = repatch::x86::read_proc_maps();
  if (!maps.ok()) {
    ADD_FAILURE() << maps.error().to_string();
    return {};
  }
  return maps.value();
}

int count_memfd_aliases(const std::vector<repatch::x86::MapEntry>& maps) {
  int n = 0;
  for (const auto& m : maps) {
    if (m.r && m.w && !m.x && m.shared && m.path.starts_with("/memfd:repatch-text")) {
      ++n;
    }
  }
  return n;
}

TEST(TextPoker, KindNames) {
  EXPECT_STREQ(repatch::x86::poker_kind_name(repatch::x86::PokerKind::kMemfdAlias), "memfd");
  EXPECT_STREQ(repatch::x86::poker_kind_name(repatch::x86::PokerKind::kProcSelfMem), "procmem");
}

TEST(TextPoker, MemfdWriteChangesWhatTheFunctionReturns) {
  auto* fn = &repatch_test_memfd_basic;
  ASSERT_EQ(fn(), 1);
  ASSERT_EQ(read_code(fn), kReturns1) << "the test function is not laid out as expected";
  auto poker = memfd_poker_for(fn);
  ASSERT_NE(poker, nullptr);
  EXPECT_EQ(poker->kind(), repatch::x86::PokerKind::kMemfdAlias);
  EXPECT_EQ(poker->begin(), addr(fn));  // the function starts a page
  EXPECT_EQ(poker->end(), addr(fn) + page_size());
  EXPECT_EQ(fn(), 1) << "the remap changed the code";

  constexpr Code k2 = returns(2);
  ASSERT_TRUE(poker->write(addr(fn), k2).ok());
  repatch::x86::sync_core();
  EXPECT_EQ(read_code(fn), k2);
  EXPECT_EQ(fn(), 2);

  // A write that is not 8-aligned takes the narrower-store path.
  const std::uint8_t seven = 7;
  ASSERT_TRUE(poker->write(addr(fn) + 1, {&seven, 1}).ok());
  repatch::x86::sync_core();
  EXPECT_EQ(fn(), 7);

  EXPECT_TRUE(poker->write(addr(fn), {}).ok());
  ASSERT_TRUE(poker->write(addr(fn), kReturns1).ok());
  repatch::x86::sync_core();
  EXPECT_EQ(fn(), 1);
}

TEST(TextPoker, MemfdTextShowsAsSharedMemfdMappingWithAlias) {
  auto* fn = &repatch_test_memfd_maps;
  const int aliases_before = count_memfd_aliases(maps_or_fail());
  auto poker = memfd_poker_for(fn);
  ASSERT_NE(poker, nullptr);
  const auto maps = maps_or_fail();
  const auto* m = repatch::x86::find_mapping(maps, addr(fn));
  ASSERT_NE(m, nullptr);
  EXPECT_EQ(m->path, "/memfd:repatch-text (deleted)") << repatch::x86::describe_mapping(*m);
  EXPECT_TRUE(m->r && m->x && m->shared && !m->w) << repatch::x86::describe_mapping(*m);
  EXPECT_EQ(m->begin, poker->begin());
  EXPECT_EQ(m->end, poker->end());
  EXPECT_EQ(count_memfd_aliases(maps), aliases_before + 1);
}

TEST(TextPoker, NoMappingIsEverWritableAndExecutable) {
  auto* fn = &repatch_test_memfd_wx;
  auto poker = memfd_poker_for(fn);
  ASSERT_NE(poker, nullptr);
  ASSERT_TRUE(poker->write(addr(fn), returns(3)).ok());
  repatch::x86::sync_core();
  ASSERT_EQ(fn(), 3);

  const auto maps = maps_or_fail();
  int executable = 0;
  for (const auto& m : maps) {
    executable += m.x ? 1 : 0;
    EXPECT_FALSE(m.w && m.x) << "W^X broken: " << repatch::x86::describe_mapping(m);
  }
  EXPECT_GT(executable, 0) << "the scan saw no code at all";
}

TEST(TextPoker, MemfdWriteOutsideItsRangeIsRefused) {
  auto* fn = &repatch_test_memfd_outside;
  auto poker = memfd_poker_for(fn);
  ASSERT_NE(poker, nullptr);
  const Code k9 = returns(9);
  const std::uintptr_t b = poker->begin(), e = poker->end();
  for (std::uintptr_t at : {b - 1, b - 8, e, e - 4, e + 4096, std::uintptr_t{0}, UINTPTR_MAX - 2}) {
    repatch::Status s = poker->write(at, k9);
    ASSERT_FALSE(s.ok()) << "a write at " << at << " was accepted";
    EXPECT_EQ(s.error().code(), repatch::ErrorCode::kInvalidArgument);
    EXPECT_NE(s.error().message().find("outside its text range"), std::string::npos)
        << s.error().message();
  }
  EXPECT_EQ(read_code(fn), kReturns1);
  EXPECT_EQ(fn(), 1);
  // The last byte of the range is still writable.
  const std::uint8_t int3 = 0xcc;
  EXPECT_TRUE(poker->write(e - 1, {&int3, 1}).ok());
}

TEST(TextPoker, MemfdPokerRefusesRangesThatAreNotPlainCode) {
  using repatch::ErrorCode;
  using repatch::x86::make_memfd_poker;
  const std::uintptr_t page = page_size();
  // Empty and reversed ranges.
  auto f = addr(&repatch_test_memfd_outside);
  EXPECT_EQ(make_memfd_poker(f, f).error().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(make_memfd_poker(f + 8, f).error().code(), ErrorCode::kInvalidArgument);

  // Writable data.
  static std::uint8_t data[64];
  auto r = make_memfd_poker(reinterpret_cast<std::uintptr_t>(data),
                            reinterpret_cast<std::uintptr_t>(data) + sizeof data);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(r.error().message().find("not read-execute"), std::string::npos) << r.error().message();

  // Two pages, r-x then r--: not inside one mapping.
  void* two = mmap(nullptr, 2 * page, PROT_READ | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(two, MAP_FAILED);
  const auto t = reinterpret_cast<std::uintptr_t>(two);
  ASSERT_EQ(mprotect(static_cast<char*>(two) + page, page, PROT_READ), 0);
  r = make_memfd_poker(t, t + 2 * page);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(r.error().message().find("not inside one mapping"), std::string::npos)
      << r.error().message();

  // Unmapped memory.
  ASSERT_EQ(munmap(two, 2 * page), 0);
  r = make_memfd_poker(t, t + 16);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(r.error().message().find("no mapping contains"), std::string::npos)
      << r.error().message();
}

TEST(TextPoker, OverlappingLiveMemfdPokerIsRefused) {
  auto* fn = &repatch_test_memfd_overlap;
  auto poker = memfd_poker_for(fn);
  ASSERT_NE(poker, nullptr);
  auto second = repatch::x86::make_memfd_poker(addr(fn) + 16, addr(fn) + 32);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.error().code(), repatch::ErrorCode::kInvalidArgument);
  EXPECT_NE(second.error().message().find("overlap the live memfd poker"), std::string::npos)
      << second.error().message();
  // The refusal must not have disturbed the first poker.
  ASSERT_TRUE(poker->write(addr(fn), returns(4)).ok());
  repatch::x86::sync_core();
  EXPECT_EQ(fn(), 4);
}

TEST(TextPoker, DestroyingTheMemfdPokerKeepsTheTextAndDropsTheAlias) {
  auto* fn = &repatch_test_memfd_destroy;
  const int aliases_before = count_memfd_aliases(maps_or_fail());
  {
    auto poker = memfd_poker_for(fn);
    ASSERT_NE(poker, nullptr);
    ASSERT_TRUE(poker->write(addr(fn), returns(5)).ok());
    EXPECT_EQ(count_memfd_aliases(maps_or_fail()), aliases_before + 1);
  }
  repatch::x86::sync_core();
  EXPECT_EQ(fn(), 5) << "the text must stay mapped, and patched, after the poker is gone";
  const auto maps = maps_or_fail();
  EXPECT_EQ(count_memfd_aliases(maps), aliases_before);
  const auto* m = repatch::x86::find_mapping(maps, addr(fn));
  ASSERT_NE(m, nullptr);
  EXPECT_TRUE(m->x && !m->w) << repatch::x86::describe_mapping(*m);

  // A new poker may take over the range left on our memfd.
  auto again = memfd_poker_for(fn);
  ASSERT_NE(again, nullptr);
  ASSERT_TRUE(again->write(addr(fn), returns(6)).ok());
  repatch::x86::sync_core();
  EXPECT_EQ(fn(), 6);
}

TEST(TextPoker, ThreadRunningTheCodeSurvivesRemapAndWrite) {
  auto* fn = &repatch_test_memfd_concurrent;
  std::atomic<bool> stop{false};
  std::atomic<long> calls{0};
  std::atomic<long> unexpected{0};
  std::atomic<bool> saw_new{false};
  std::thread runner([&] {
    while (!stop.load(std::memory_order_relaxed)) {
      // The patched bytes reach this CPU through cross-modifying-code coherence; serialising
      // each round is what the engine makes every vCPU do after a write.
      repatch::x86::sync_core();
      int v = fn();
      if (v == 2) {
        saw_new.store(true, std::memory_order_relaxed);
      } else if (v != 1) {
        unexpected.fetch_add(1, std::memory_order_relaxed);
      }
      calls.fetch_add(1, std::memory_order_relaxed);
    }
  });
  auto wait_calls = [&](long more) {
    const long target = calls.load() + more;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (calls.load() < target && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::yield();
    }
    return calls.load() >= target;
  };

  ASSERT_TRUE(wait_calls(1000));
  auto poker = memfd_poker_for(fn);  // remaps the page the runner is executing
  EXPECT_NE(poker, nullptr);
  EXPECT_TRUE(wait_calls(1000)) << "the runner stopped making progress after the remap";
  if (poker != nullptr) {
    EXPECT_TRUE(poker->write(addr(fn), returns(2)).ok());
    repatch::x86::sync_core();
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!saw_new.load() && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::yield();
    }
  }
  stop.store(true);
  runner.join();
  EXPECT_TRUE(saw_new.load()) << "the running thread never saw the patched code";
  EXPECT_EQ(unexpected.load(), 0);
  EXPECT_EQ(fn(), 2);
}

// Child exit codes of the fork test, one per check, so a failure says which.
enum ForkChildExit : int {
  kChildOk = 0,
  kChildWriteFailed = 10,
  kChildDidNotSeeOwnPatch = 11,
  kChildPipeFailed = 12,
  kChildSawParentPatch = 13,
  kChildMapsNotPrivate = 14,
};

TEST(TextPoker, ForkedChildPatchesItsOwnCopyOnly) {
  auto* fn = &repatch_test_memfd_fork;
  auto poker = memfd_poker_for(fn);
  ASSERT_NE(poker, nullptr);
  int to_parent[2], to_child[2];
  ASSERT_EQ(pipe2(to_parent, O_CLOEXEC), 0);
  ASSERT_EQ(pipe2(to_child, O_CLOEXEC), 0);

  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    // Child: only async-signal-safe work, then _exit with a code the parent checks.
    char c = 0;
    if (!poker->write(addr(fn), returns(2)).ok()) {
      _exit(kChildWriteFailed);
    }
    repatch::x86::sync_core();
    if (fn() != 2) {
      _exit(kChildDidNotSeeOwnPatch);
    }
    if (write(to_parent[1], "w", 1) != 1 || read(to_child[0], &c, 1) != 1) {
      _exit(kChildPipeFailed);
    }
    repatch::x86::sync_core();
    if (fn() != 2) {
      _exit(kChildSawParentPatch);
    }
    _exit(kChildOk);
  }

  char c = 0;
  ASSERT_EQ(read(to_parent[0], &c, 1), 1) << "the child died before patching";
  repatch::x86::sync_core();
  EXPECT_EQ(fn(), 1) << "the child's write reached the parent's code";
  EXPECT_EQ(read_code(fn), kReturns1);
  // Now the other direction: the parent patches while the child is alive.
  EXPECT_TRUE(poker->write(addr(fn), returns(3)).ok());
  repatch::x86::sync_core();
  EXPECT_EQ(fn(), 3);
  ASSERT_EQ(write(to_child[1], "p", 1), 1);

  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status)) << "the child crashed, status " << status;
  EXPECT_EQ(WEXITSTATUS(status), kChildOk);
  for (int fd : {to_parent[0], to_parent[1], to_child[0], to_child[1]}) {
    close(fd);
  }
  EXPECT_EQ(fn(), 3);
}

// Exit codes of the helper process of the next test, one per check, so a failure says which.
enum NoFdHelperExit : int {
  kHelperOk = 0,
  kHelperSetupFailed = 30,
  kHelperOpenFailedOtherThanEmfile = 31,
  kHelperForkFailed = 32,
  kHelperGrandchildReturnedFromFork = 33,
  kHelperGrandchildNotExit127 = 34,
  kHelperTextTouched = 35,
  kHelperOneFreeSlotForkFailed = 36,
  kHelperSawGrandchildPatch = 37,
  kHelperSpareLeaked = 38,
  kHelperWriteFailed = 39,
};

// The grandchild's exit code if it ever gets to run test code after fork().
constexpr int kGrandchildReturned = 99;

// The fork handler needs a descriptor per region. With none free in the parent, a child must not
// go on running text that is shared with its parent; it must stop at once and say why. Runs in a
// helper process so that the descriptor limit and the open descriptors do not outlive the test.
TEST(TextPoker, ForkWithNoFreeDescriptorStopsTheChildLoudly) {
  auto* fn = &repatch_test_memfd_fork_no_fd;
  auto poker = memfd_poker_for(fn);
  ASSERT_NE(poker, nullptr);
  int messages[2];
  ASSERT_EQ(pipe2(messages, O_CLOEXEC), 0);

  const pid_t helper = fork();
  ASSERT_GE(helper, 0);
  if (helper == 0) {
    // The grandchildren inherit this fd 2, so the test reads what the fork handler writes.
    if (dup2(messages[1], STDERR_FILENO) != STDERR_FILENO) {
      _exit(kHelperSetupFailed);
    }
    close(messages[0]);
    close(messages[1]);
    rlimit limit{};
    if (getrlimit(RLIMIT_NOFILE, &limit) != 0) {
      _exit(kHelperSetupFailed);
    }
    limit.rlim_cur = std::min<rlim_t>(limit.rlim_cur, 64);
    if (setrlimit(RLIMIT_NOFILE, &limit) != 0) {
      _exit(kHelperSetupFailed);
    }
    int last_fd = -1;
    for (;;) {
      const int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
      if (fd < 0) {
        if (errno != EMFILE) {
          _exit(kHelperOpenFailedOtherThanEmfile);
        }
        break;
      }
      last_fd = fd;
    }
    if (last_fd < 0) {
      _exit(kHelperSetupFailed);  // nothing to free for the second half
    }

    // No descriptor left: the prepare handler cannot make the spare memfd.
    pid_t grandchild = fork();
    if (grandchild < 0) {
      _exit(kHelperForkFailed);
    }
    if (grandchild == 0) {
      _exit(kGrandchildReturned);
    }
    int status = 0;
    if (waitpid(grandchild, &status, 0) != grandchild) {
      _exit(kHelperSetupFailed);
    }
    if (WIFEXITED(status) && WEXITSTATUS(status) == kGrandchildReturned) {
      _exit(kHelperGrandchildReturnedFromFork);
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 127) {
      _exit(kHelperGrandchildNotExit127);
    }
    repatch::x86::sync_core();
    if (read_code(fn) != kReturns1 || fn() != 1) {
      _exit(kHelperTextTouched);
    }

    // Exactly one descriptor free: enough, because the child needs none of its own.
    close(last_fd);
    grandchild = fork();
    if (grandchild < 0) {
      _exit(kHelperForkFailed);
    }
    if (grandchild == 0) {
      if (!poker->write(addr(fn), returns(2)).ok()) {
        _exit(1);
      }
      repatch::x86::sync_core();
      _exit(fn() == 2 ? 0 : 2);
    }
    if (waitpid(grandchild, &status, 0) != grandchild || !WIFEXITED(status) ||
        WEXITSTATUS(status) != 0) {
      _exit(kHelperOneFreeSlotForkFailed);
    }
    repatch::x86::sync_core();
    if (fn() != 1) {
      _exit(kHelperSawGrandchildPatch);
    }
    // The parent handler must have closed the spare, or this process would be one fd short.
    if (open("/dev/null", O_RDONLY | O_CLOEXEC) < 0) {
      _exit(kHelperSpareLeaked);
    }
    if (!poker->write(addr(fn), returns(3)).ok()) {
      _exit(kHelperWriteFailed);
    }
    repatch::x86::sync_core();
    _exit(fn() == 3 ? kHelperOk : kHelperWriteFailed);
  }

  close(messages[1]);
  std::string stderr_text;
  char buf[512];
  for (;;) {
    const ssize_t n = read(messages[0], buf, sizeof buf);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      break;
    }
    stderr_text.append(buf, static_cast<std::size_t>(n));
  }
  close(messages[0]);
  int status = 0;
  ASSERT_EQ(waitpid(helper, &status, 0), helper);
  ASSERT_TRUE(WIFEXITED(status)) << "the helper crashed, status " << status;
  EXPECT_EQ(WEXITSTATUS(status), kHelperOk) << "fd 2 of the helper: " << stderr_text;

  EXPECT_TRUE(stderr_text.starts_with("repatch: fork child")) << stderr_text;
  EXPECT_NE(stderr_text.find("memfd_create"), std::string::npos) << stderr_text;
  EXPECT_NE(stderr_text.find("failed: Too many open files (EMFILE)"), std::string::npos)
      << stderr_text;
  EXPECT_EQ(std::count(stderr_text.begin(), stderr_text.end(), '\n'), 1)
      << "expected one line, from the first grandchild only: " << stderr_text;
  EXPECT_TRUE(stderr_text.ends_with("\n")) << stderr_text;

  // Nothing the helper or its children did reached this process's copy.
  repatch::x86::sync_core();
  EXPECT_EQ(read_code(fn), kReturns1);
  EXPECT_EQ(fn(), 1);
}

TEST(TextPoker, ProcMemWriteChangesWhatTheFunctionReturns) {
  auto* fn = &repatch_test_procmem_basic;
  auto made = repatch::x86::make_procmem_poker();
  ASSERT_TRUE(made.ok()) << made.error().to_string();
  auto poker = std::move(made).value();
  EXPECT_EQ(poker->kind(), repatch::x86::PokerKind::kProcSelfMem);
  EXPECT_EQ(poker->begin(), 0u);
  EXPECT_EQ(poker->end(), 0u);
  ASSERT_EQ(fn(), 1);
  ASSERT_TRUE(poker->write(addr(fn), returns(2)).ok());
  repatch::x86::sync_core();
  EXPECT_EQ(read_code(fn), returns(2));
  EXPECT_EQ(fn(), 2);

  // The kernel wrote through its own mapping: ours stayed private and non-writable.
  const auto maps = maps_or_fail();
  const auto* m = repatch::x86::find_mapping(maps, addr(fn));
  ASSERT_NE(m, nullptr);
  EXPECT_TRUE(m->x && !m->w && !m->shared) << repatch::x86::describe_mapping(*m);

  ASSERT_TRUE(poker->write(addr(fn), kReturns1).ok());
  repatch::x86::sync_core();
  EXPECT_EQ(fn(), 1);
}

TEST(TextPoker, ProcMemWriteIntoMemfdRangeIsRefusedClearly) {
  auto* fn = &repatch_test_procmem_refused;
  auto memfd = memfd_poker_for(fn);
  ASSERT_NE(memfd, nullptr);
  auto made = repatch::x86::make_procmem_poker();
  ASSERT_TRUE(made.ok()) << made.error().to_string();
  repatch::Status s = made.value()->write(addr(fn), returns(2));
  ASSERT_FALSE(s.ok()) << "the kernel accepted a /proc/self/mem write into a shared mapping";
  EXPECT_EQ(s.error().code(), repatch::ErrorCode::kSystem);
  const std::string& msg = s.error().message();
  EXPECT_NE(msg.find("shared (memfd)"), std::string::npos) << msg;
  char at[32];
  std::snprintf(at, sizeof at, "0x%lx", static_cast<unsigned long>(addr(fn)));
  EXPECT_NE(msg.find(at), std::string::npos) << msg;
  EXPECT_EQ(fn(), 1);

  // An unmapped address gets its own explanation.
  const std::uintptr_t page = page_size();
  void* p = mmap(nullptr, page, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(p, MAP_FAILED);
  ASSERT_EQ(munmap(p, page), 0);
  s = made.value()->write(reinterpret_cast<std::uintptr_t>(p), returns(2));
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code(), repatch::ErrorCode::kSystem);
  EXPECT_NE(s.error().message().find("no mapping contains"), std::string::npos)
      << s.error().message();
}

}  // namespace
