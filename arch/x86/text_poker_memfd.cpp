// The memfd alias backend of TextPoker.
//
// Setup moves the pages of [first, last) onto a memfd: copy their bytes into the memfd, map a
// rw- alias of it somewhere else, then map it r-x over the original range with one
// mmap(MAP_FIXED). The kernel replaces the old mapping under its mmap lock, so a thread running
// that code (even the code doing the remap) always fetches the same bytes from an executable
// page: there is no window of unmapped or non-executable text, and no mapping is ever writable
// and executable at once.
//
// After that, write() is a few stores through the alias: no system call, no lock, no allocation.
//
// Fork: the child inherits both MAP_SHARED mappings of the same memfd, so without care the
// parent's patches would land in the child's running code (unserialised, in the middle of
// whatever the child is doing) and the child's in the parent's. Every live region therefore gets
// a memfd of its own in the child before the child runs anything else. The new descriptor is
// made on the parent side, in the pthread_atfork prepare handler, because the child may have no
// descriptor number left to make one (the parent was at RLIMIT_NOFILE) and a child that cannot
// privatise has no safe way to go on. The child handler fills the spare and maps it over the
// text and the alias; the parent handler closes the parent's copy. If the prepare handler could
// not make a spare (it cannot fail fork()) or a child mapping fails, the child writes one line to
// fd 2 and _exit(127)s: sharing its parent's code is never an outcome.
// The child handler uses system calls only, and the registry it walks is a fixed array: nothing
// allocates in the child of a multi-threaded parent (another thread may have held the malloc
// lock at fork time).
// The parent copies the text into the spare in its prepare handler, so the child starts from the
// text as it was when fork() began, whatever the parent's threads write after. A write that is
// half done at that moment is copied half done: the engine keeps forks out of its switches with a
// prepare handler of its own, registered later and so run before this one.
//
// Destruction unmaps the alias only. The text stays on the memfd, r-x, because other threads may
// be executing it and mapping the file back would drop every patch written so far. Profilers
// will show the range as "/memfd:repatch-text (deleted)" for the rest of the process. A later
// poker may take the range over again.
#include <fcntl.h>
#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <string>

#include "arch/x86/code_store.h"
#include "arch/x86/proc_maps.h"
#include "arch/x86/text_poker.h"
#include "base/errno_text.h"
#include "base/fixed_line.h"
#include "base/return_if_error.h"
#include "base/test_hooks.h"
#include "base/text.h"

namespace repatch::x86 {
namespace {

constexpr const char* kMemfdName = "repatch-text";
// What /proc/self/maps calls a mapping of our memfd.
constexpr std::string_view kMemfdMapsPrefix = "/memfd:repatch-text";

// The engine needs one region per object with sites: the program and every loaded module
// (docs/modules.md). Fixed so that the fork handler walks it without allocating; 256 regions are
// about 12 KiB.
constexpr std::size_t kMaxRegions = 256;

struct Region {
  bool live = false;
  std::uintptr_t begin = 0;  // text range, page aligned
  std::uintptr_t end = 0;
  std::uintptr_t alias = 0;  // start of the rw- mapping of the same memfd
  // Only between the fork prepare handler and the parent or child handler: the memfd the child
  // will move the region onto, or -1 with the call that failed and its errno.
  int spare_fd = -1;
  const char* spare_failed_call = nullptr;  // a string literal
  int spare_errno = 0;
};

// Guarded by g_registry_mutex. The fork prepare handler takes the mutex, so a child always sees
// a registry that no other thread was half-way through changing.
pthread_mutex_t g_registry_mutex = PTHREAD_MUTEX_INITIALIZER;
Region g_regions[kMaxRegions];

// Addresses travel as integers through the API; this is the one place they become pointers.
inline void* as_ptr(std::uintptr_t address) {
  return reinterpret_cast<void*>(address);  // NOLINT(performance-no-int-to-ptr)
}

using text::hex;

std::string range_text(std::uintptr_t begin, std::uintptr_t end) {
  return "[" + hex(begin) + ", " + hex(end) + ")";
}

// Copies [begin, begin+len) of our own memory into the start of `fd`. The source is the text
// itself, readable because it is r-x; pwrite reads it without any writable mapping of it.
// Async-signal-safe. Returns 0 or an errno value.
int copy_text_into(int fd, std::uintptr_t begin, std::size_t len) {
  std::size_t done = 0;
  while (done < len) {
    ssize_t n = ::pwrite(fd, as_ptr(begin + done), len - done, static_cast<off_t>(done));
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      return errno;
    }
    if (n == 0) {
      return EIO;  // no progress; never loop forever
    }
    done += static_cast<std::size_t>(n);
  }
  return 0;
}

// The forked child cannot get a private copy of a region: its text would keep running the
// parent's memfd, so every later patch of the parent would change the child's code with no
// serialisation. Stopping is the only safe outcome; the line on fd 2 says why, since an exit
// status of 127 alone would look like a failed exec. Async-signal-safe: write(2) and _exit only.
[[noreturn]] void die_in_child(const Region& r, const char* call, int err) {
  char line[512];  // the literals below bound the line well under this
  text::FixedLine(line, sizeof line)
      .text("repatch: fork child cannot get a private copy of the patched text [")
      .hex(r.begin)
      .text(", ")
      .hex(r.end)
      .text("): ")
      .text(call)
      .text(" failed: ")
      .text(text::errno_description(err))
      .text(" (")
      .text(text::errno_name(err))
      .text(")")
      .text("; exiting (status 127) rather than run code the parent patches\n");
  const char* p = line + std::strlen(line);
  const char* q = line;
  while (q < p) {
    ssize_t n = ::write(STDERR_FILENO, q, static_cast<std::size_t>(p - q));
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      break;  // nowhere to report; exit all the same
    }
    q += n;
  }
  ::_exit(127);
}

// Child side of fork, one region: the spare memfd, which the parent filled with the text as it was
// when fork() began, is mapped r-x over the text and rw- over the old alias. Both mmap(MAP_FIXED)
// calls replace a mapping atomically, so the text is never absent and the alias address is never
// free for something else to take.
void reprivatise_in_child(Region& r) {
  if (r.spare_fd < 0) {
    die_in_child(r, r.spare_failed_call, r.spare_errno);
  }
  const std::size_t len = r.end - r.begin;
  if (::mmap(as_ptr(r.begin), len, PROT_READ | PROT_EXEC, MAP_SHARED | MAP_FIXED, r.spare_fd, 0) ==
      MAP_FAILED) {
    die_in_child(r, "mmap(text, r-x, MAP_SHARED|MAP_FIXED)", errno);
  }
  if (::mmap(as_ptr(r.alias), len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, r.spare_fd, 0) ==
      MAP_FAILED) {
    // The text is private already, but the alias would still patch the parent's code.
    die_in_child(r, "mmap(alias, rw-, MAP_SHARED|MAP_FIXED)", errno);
  }
  ::close(r.spare_fd);  // the mappings keep the memfd alive
  r.spare_fd = -1;
}

void close_spares() {
  for (Region& r : g_regions) {
    if (r.spare_fd >= 0) {
      ::close(r.spare_fd);
    }
    r.spare_fd = -1;
    r.spare_failed_call = nullptr;
    r.spare_errno = 0;
  }
}

// Costs a memfd_create, an ftruncate and a copy of the text per live region on every fork(), even
// one followed by exec: the price of never needing a descriptor in the child, and of a child that
// starts from the text as it was at fork() rather than as the parent's threads have changed it
// since (the copy is made here, before fork, not in the child).
void atfork_prepare() {
  const int saved_errno = errno;  // fork()'s caller must not see our errors
  pthread_mutex_lock(&g_registry_mutex);
  for (Region& r : g_regions) {
    if (!r.live) {
      continue;
    }
    // CLOEXEC: until the parent handler closes it, another thread may posix_spawn (which runs no
    // fork handlers), and the spawned program must not inherit it.
    r.spare_fd = ::memfd_create(kMemfdName, MFD_CLOEXEC);
    if (r.spare_fd < 0) {
      r.spare_failed_call = "memfd_create (in the parent, before fork)";
      r.spare_errno = errno;
    } else if (::ftruncate(r.spare_fd, static_cast<off_t>(r.end - r.begin)) != 0) {
      r.spare_failed_call = "ftruncate(spare memfd) (in the parent, before fork)";
      r.spare_errno = errno;
      ::close(r.spare_fd);
      r.spare_fd = -1;
    } else if (const int err = copy_text_into(r.spare_fd, r.begin, r.end - r.begin); err != 0) {
      r.spare_failed_call = "pwrite(spare memfd) (in the parent, before fork)";
      r.spare_errno = err;
      ::close(r.spare_fd);
      r.spare_fd = -1;
    }
  }
  errno = saved_errno;
}

void atfork_parent() {
  const int saved_errno = errno;
  close_spares();
  pthread_mutex_unlock(&g_registry_mutex);
  errno = saved_errno;
}

void atfork_child() {
  const int saved_errno = errno;
  for (Region& r : g_regions) {
    if (r.live) {
      reprivatise_in_child(r);
    }
  }
  // The forking thread locked this in prepare and is the child's only thread, so it may unlock.
  pthread_mutex_unlock(&g_registry_mutex);
  errno = saved_errno;
}

// Registers the fork handlers once per process (a forked child inherits them). Not called with
// g_registry_mutex held: a concurrent fork() holds glibc's handler lock while it runs our prepare
// handler, which takes g_registry_mutex, so taking them in the other order could deadlock.
int install_fork_handlers() {
  static const int result = pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
  return result;
}

class MemfdPoker final : public TextPoker {
 public:
  MemfdPoker(std::size_t slot, std::uintptr_t begin, std::uintptr_t end, std::uintptr_t alias)
      : slot_(slot), begin_(begin), end_(end), alias_(alias) {}

  ~MemfdPoker() override {
    pthread_mutex_lock(&g_registry_mutex);
    // The text stays mapped from the memfd (see the top of the file); only the alias goes. Under
    // the mutex so that a concurrent fork never sees a live region with its alias unmapped.
    ::munmap(as_ptr(alias_), end_ - begin_);
    g_regions[slot_] = Region{};
    pthread_mutex_unlock(&g_registry_mutex);
  }

  MemfdPoker(const MemfdPoker&) = delete;
  MemfdPoker& operator=(const MemfdPoker&) = delete;

  PokerKind kind() const override { return PokerKind::kMemfdAlias; }
  std::uintptr_t begin() const override { return begin_; }
  std::uintptr_t end() const override { return end_; }

  bool can_compare_exchange() const override { return true; }
  std::intptr_t alias_delta() const override { return static_cast<std::intptr_t>(alias_ - begin_); }

  bool compare_exchange_byte(std::uintptr_t address, std::uint8_t expected,
                             std::uint8_t desired) noexcept override {
    if (test::disabled(test::Handler::kWxAlias)) {
      return compare_exchange_through_rwx(address, expected, desired);
    }
    return compare_exchange_code_byte(alias_ + (address - begin_), expected, desired);
  }

  Status write(std::uintptr_t address, std::span<const std::uint8_t> bytes) override {
    if (bytes.empty()) {
      return {};
    }
    if (address < begin_ || address >= end_ || bytes.size() > end_ - address) {
      return outside_range(address, bytes.size());
    }
    store_code_bytes(alias_ + (address - begin_), bytes.data(), bytes.size());
    return {};
  }

 private:
  // The refusals build strings, so they live out of line: the path that succeeds makes no call.
  [[gnu::noinline, gnu::cold]] Status outside_range(std::uintptr_t address,
                                                    std::size_t size) const {
    return Error(ErrorCode::kInvalidArgument,
                 "memfd poker: write of " + std::to_string(size) + " bytes at " + hex(address) +
                     " is outside its text range " + range_text(begin_, end_) +
                     "; create the poker over every page that holds sites");
  }
  // What a naive patcher does, for the W^X hazard test only (REPATCH_TEST_DISABLE=wx_alias): make
  // the text page writable and executable, store into it, make it r-x again. The test that
  // watches for rwx mappings must catch this.
  static bool compare_exchange_through_rwx(std::uintptr_t address, std::uint8_t expected,
                                           std::uint8_t desired) noexcept {
    const std::uintptr_t page = address & ~std::uintptr_t{4095};
    if (::mprotect(as_ptr(page), 4096, PROT_READ | PROT_WRITE | PROT_EXEC) != 0) return false;
    auto* byte = reinterpret_cast<std::uint8_t*>(address);  // NOLINT
    const bool swapped = __atomic_compare_exchange_n(byte, &expected, desired, false,
                                                     __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    ::mprotect(as_ptr(page), 4096, PROT_READ | PROT_EXEC);
    return swapped;
  }

  std::size_t slot_;
  std::uintptr_t begin_, end_, alias_;
};

// Checks the page range against /proc/self/maps: it must be plain code, i.e. inside one
// readable, executable, non-writable mapping. A shared mapping is accepted only if it is one of
// ours (left behind by a destroyed poker); remapping anybody else's shared file would cut it off
// from that file.
Status check_text_mapping(std::uintptr_t begin, std::uintptr_t end) {
  auto maps = read_proc_maps();
  if (!maps.ok()) {
    return maps.status();
  }
  const MapEntry* m = find_mapping(maps.value(), begin);
  if (m == nullptr) {
    return Error(ErrorCode::kInvalidArgument,
                 "memfd poker: no mapping contains " + hex(begin) + " (pages " +
                     range_text(begin, end) + "); pass an address range inside the program text");
  }
  if (end > m->end) {
    return Error(ErrorCode::kInvalidArgument, "memfd poker: pages " + range_text(begin, end) +
                                                  " are not inside one mapping: the one at " +
                                                  hex(begin) + " is " + describe_mapping(*m) +
                                                  "; create one poker per mapping");
  }
  if (!m->r || !m->x || m->w) {
    return Error(ErrorCode::kInvalidArgument,
                 "memfd poker: pages " + range_text(begin, end) + " lie in " +
                     describe_mapping(*m) + ", which is not read-execute and non-writable code");
  }
  if (m->shared &&
      std::string_view(m->path).substr(0, kMemfdMapsPrefix.size()) != kMemfdMapsPrefix) {
    return Error(ErrorCode::kInvalidArgument,
                 "memfd poker: pages " + range_text(begin, end) + " lie in the shared mapping " +
                     describe_mapping(*m) + "; only private code mappings can be moved");
  }
  return {};
}

Error system_error(const std::string& call, int err, std::uintptr_t begin, std::uintptr_t end) {
  return Error(ErrorCode::kSystem, "memfd poker for text " + range_text(begin, end) + ": " + call +
                                       " failed: " + text::errno_text(err));
}

}  // namespace

const char* poker_kind_name(PokerKind kind) {
  switch (kind) {
    case PokerKind::kMemfdAlias:
      return "memfd";
    case PokerKind::kProcSelfMem:
      return "procmem";
  }
  return "unknown";
}

Result<std::unique_ptr<TextPoker>> make_memfd_poker(std::uintptr_t first, std::uintptr_t last) {
  const long page_size = ::sysconf(_SC_PAGESIZE);
  const std::uintptr_t page = page_size > 0 ? static_cast<std::uintptr_t>(page_size) : 4096;
  if (first >= last || last > UINTPTR_MAX - page) {
    return Error(ErrorCode::kInvalidArgument,
                 "memfd poker: " + range_text(first, last) + " is not a non-empty address range");
  }
  const std::uintptr_t begin = first & ~(page - 1);
  const std::uintptr_t end = (last + page - 1) & ~(page - 1);
  const std::size_t len = end - begin;

  if (int err = install_fork_handlers(); err != 0) {
    return system_error("pthread_atfork", err, begin, end);
  }

  // Held across the whole setup: a fork from another thread waits, so the child never sees a
  // region that is registered but not yet remapped, or remapped but not yet registered.
  pthread_mutex_lock(&g_registry_mutex);
  struct Unlock {
    ~Unlock() { pthread_mutex_unlock(&g_registry_mutex); }
  } unlock;

  std::size_t slot = kMaxRegions;
  for (std::size_t i = 0; i < kMaxRegions; ++i) {
    const Region& r = g_regions[i];
    if (r.live && r.begin < end && begin < r.end) {
      return Error(ErrorCode::kInvalidArgument, "memfd poker: pages " + range_text(begin, end) +
                                                    " overlap the live memfd poker over " +
                                                    range_text(r.begin, r.end) +
                                                    "; write through that poker instead");
    }
    if (!r.live && slot == kMaxRegions) {
      slot = i;
    }
  }
  if (slot == kMaxRegions) {
    return Error(ErrorCode::kUnsupported,
                 "memfd poker: " + std::to_string(kMaxRegions) +
                     " memfd pokers are already live (one per object with sites: the program and "
                     "each loaded module); unload a module, or cover adjacent pages with one "
                     "poker");
  }
  REPATCH_RETURN_IF_ERROR(check_text_mapping(begin, end));

  int fd = ::memfd_create(kMemfdName, MFD_CLOEXEC);
  if (fd < 0) {
    return system_error("memfd_create(\"repatch-text\", MFD_CLOEXEC)", errno, begin, end);
  }
  struct Close {
    int fd;
    // The mappings keep the memfd alive; the descriptor itself is not needed after setup.
    ~Close() { ::close(fd); }
  } close_fd{fd};

  if (::ftruncate(fd, static_cast<off_t>(len)) != 0) {
    return system_error("ftruncate(memfd, " + std::to_string(len) + ")", errno, begin, end);
  }
  if (int err = copy_text_into(fd, begin, len); err != 0) {
    return system_error("pwrite(memfd) copying the text", err, begin, end);
  }
  // The alias first: if it cannot be made, the text has not been touched yet.
  void* alias = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (alias == MAP_FAILED) {
    return system_error("mmap(rw-, MAP_SHARED) of the alias", errno, begin, end);
  }
  if (std::memcmp(alias, as_ptr(begin), len) != 0) {
    ::munmap(alias, len);
    return Error(ErrorCode::kSystem, "memfd poker for text " + range_text(begin, end) +
                                         ": the memfd copy differs from the text; was the text "
                                         "written while the poker was being set up?");
  }
  // The one step that touches live text. Replacing r-x file pages by r-x memfd pages holding the
  // same bytes, in one call, so the code is executable at every instant.
  if (::mmap(as_ptr(begin), len, PROT_READ | PROT_EXEC, MAP_SHARED | MAP_FIXED, fd, 0) ==
      MAP_FAILED) {
    int err = errno;
    ::munmap(alias, len);
    return system_error("mmap(r-x, MAP_SHARED|MAP_FIXED) over the text", err, begin, end);
  }

  const auto alias_addr = reinterpret_cast<std::uintptr_t>(alias);
  g_regions[slot] = Region{.live = true, .begin = begin, .end = end, .alias = alias_addr};
  return std::unique_ptr<TextPoker>(new MemfdPoker(slot, begin, end, alias_addr));
}

}  // namespace repatch::x86
