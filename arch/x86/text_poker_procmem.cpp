// The /proc/self/mem backend of TextPoker.
//
// pwrite() at the code address: the kernel writes through its own mapping of the page
// (FOLL_FORCE), copying a private page on write, and the process's mapping never becomes
// writable. One system call per write (1.5-2 us measured, against 2-6 ns for a store through the
// memfd alias): a fallback and a point of comparison.
//
// The kernel copies with its own memcpy, so unlike the memfd backend a write is not made of
// aligned single-copy-atomic stores; and the success path does not check that the address is
// code (that would mean reading /proc/self/maps on every write). A refused write reads
// /proc/self/maps to say why; that allocates, as does any error message.
//
// The kernel refuses FOLL_FORCE writes into a shared mapping that is not writable, which is what
// the memfd backend turns the text into: this backend cannot write to a range the memfd backend
// has remapped, and says so.
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <string>

#include "arch/x86/proc_maps.h"
#include "arch/x86/text_poker.h"
#include "base/errno_text.h"
#include "base/text.h"

namespace repatch::x86 {
namespace {

constexpr const char* kProcSelfMem = "/proc/self/mem";

using text::hex;

// Builds the error for a pwrite that failed with `err` after `done` of `size` bytes at `address`.
Error refused_write(std::uintptr_t address, std::size_t size, std::size_t done, int err) {
  std::string what =
      "pwrite(/proc/self/mem) of " + std::to_string(size) + " bytes at " + hex(address) + " failed";
  if (done > 0) {
    what += " after " + std::to_string(done) + " bytes (the range now holds a mix of old and new)";
  }
  what += ": " + text::errno_text(err);

  auto maps = read_proc_maps();
  if (!maps.ok()) {
    return Error(ErrorCode::kSystem, what + " (could not read the mappings to say why: " +
                                         maps.error().message() + ")");
  }
  const std::uintptr_t failed_at = address + done;
  const MapEntry* m = find_mapping(maps.value(), failed_at);
  if (m == nullptr) {
    return Error(ErrorCode::kSystem, what + "; no mapping contains " + hex(failed_at));
  }
  if (m->shared && !m->w) {
    const bool ours = m->path.find("memfd:") != std::string::npos;
    return Error(ErrorCode::kSystem,
                 what + "; the address lies in a shared " + (ours ? "(memfd) " : "") +
                     "read-only mapping (" + describe_mapping(*m) +
                     "), into which the kernel refuses /proc/self/mem writes" +
                     (ours ? "; the memfd poker owns this range: write through it instead" : ""));
  }
  return Error(ErrorCode::kSystem, what + "; the address lies in " + describe_mapping(*m));
}

class ProcMemPoker final : public TextPoker {
 public:
  explicit ProcMemPoker(int fd) : fd_(fd) {}
  ~ProcMemPoker() override { ::close(fd_); }

  ProcMemPoker(const ProcMemPoker&) = delete;
  ProcMemPoker& operator=(const ProcMemPoker&) = delete;

  PokerKind kind() const override { return PokerKind::kProcSelfMem; }
  std::uintptr_t begin() const override { return 0; }
  std::uintptr_t end() const override { return 0; }
  // A pread and a pwrite are two system calls: another executor can write in between.
  bool can_compare_exchange() const override { return false; }
  std::intptr_t alias_delta() const override { return 0; }
  bool compare_exchange_byte(std::uintptr_t, std::uint8_t, std::uint8_t) noexcept override {
    return false;
  }

  Status write(std::uintptr_t address, std::span<const std::uint8_t> bytes) override {
    if (bytes.empty()) {
      return {};
    }
    if (bytes.size() > UINTPTR_MAX - address) {
      return Error(ErrorCode::kInvalidArgument,
                   "procmem poker: write of " + std::to_string(bytes.size()) + " bytes at " +
                       hex(address) + " wraps around the address space");
    }
    std::size_t done = 0;
    while (done < bytes.size()) {
      // The file offset is the virtual address.
      ssize_t n = ::pwrite(fd_, bytes.data() + done, bytes.size() - done,
                           static_cast<off_t>(address + done));
      if (n < 0) {
        if (errno == EINTR) {
          continue;
        }
        return refused_write(address, bytes.size(), done, errno);
      }
      if (n == 0) {
        return refused_write(address, bytes.size(), done, EIO);  // no progress: never spin
      }
      done += static_cast<std::size_t>(n);
    }
    return {};
  }

 private:
  int fd_;
};

}  // namespace

Result<std::unique_ptr<TextPoker>> make_procmem_poker() {
  int fd = ::open(kProcSelfMem, O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    return Error(ErrorCode::kSystem, std::string("open(\"") + kProcSelfMem +
                                         "\", O_RDWR) failed: " + text::errno_text(err) +
                                         "; is /proc mounted, and does the process have "
                                         "ptrace access to itself?");
  }
  return std::unique_ptr<TextPoker>(new ProcMemPoker(fd));
}

}  // namespace repatch::x86
