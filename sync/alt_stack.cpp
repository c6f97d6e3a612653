#include "sync/alt_stack.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <string>

#include "base/errno_text.h"

namespace repatch::sync::detail {
namespace {

// Handler code is kept small (no allocation, no stdio), so the frames dominate: the kernel's
// signal frame carries the XSAVE area (about 2.7 KiB with AVX-512, more with AMX), and up to three
// nest (IPI -> NMI -> SIGTRAP). 128 KiB leaves most of it to the handlers of the layers above.
constexpr std::size_t kMinimumStack = std::size_t{128} * 1024;
// Headroom for the handlers' own frames on top of three kernel frames.
constexpr std::size_t kHandlerBudget = std::size_t{64} * 1024;
constexpr int kNestedFrames = 3;

std::size_t page_size() {
  return static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
}

}  // namespace

std::size_t alt_stack_size() {
  // The kernel reports the frame size it needs (AT_MINSIGSTKSZ, through _SC_MINSIGSTKSZ); on a CPU
  // with a large XSAVE area that can exceed what the fixed figure assumed.
  const long frame = sysconf(_SC_MINSIGSTKSZ);
  std::size_t size = kMinimumStack;
  if (frame > 0) {
    const std::size_t needed = kNestedFrames * static_cast<std::size_t>(frame) + kHandlerBudget;
    size = needed > size ? needed : size;
  }
  const std::size_t page = page_size();
  return (size + page - 1) / page * page;
}

Status AltStack::install() {
  if (mapping_ != nullptr) {
    return {};
  }
  const std::size_t page = page_size();
  const std::size_t size = alt_stack_size();
  const std::size_t total = size + page;
  void* mapping = mmap(nullptr, total, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK | MAP_NORESERVE, -1, 0);
  if (mapping == MAP_FAILED) {
    const int err = errno;
    return Error(ErrorCode::kSystem,
                 "mmap of a " + std::to_string(total) +
                     "-byte alternate signal stack for a vCPU failed: " + text::errno_text(err));
  }
  // Stacks grow down, so the guard goes at the lowest address.
  if (mprotect(mapping, page, PROT_NONE) != 0) {
    const int err = errno;
    munmap(mapping, total);
    return Error(
        ErrorCode::kSystem,
        "mprotect of the alternate signal stack's guard page failed: " + text::errno_text(err));
  }
  stack_t ss{};
  ss.ss_sp = static_cast<char*>(mapping) + page;
  ss.ss_size = size;
  ss.ss_flags = 0;
  stack_t previous{};
  if (sigaltstack(&ss, &previous) != 0) {
    const int err = errno;
    munmap(mapping, total);
    return Error(ErrorCode::kSystem,
                 "sigaltstack for a vCPU failed (EPERM: called from a handler running on an "
                 "alternate stack): " +
                     text::errno_text(err));
  }
  mapping_ = mapping;
  mapping_size_ = total;
  previous_ = previous;
  return {};
}

void AltStack::release() {
  if (mapping_ == nullptr) {
    return;
  }
  // Disabled before the unmap: a signal arriving in between must not be delivered onto unmapped
  // memory. Until the previous stack is back it runs on the thread's own stack, which is fine.
  stack_t off{};
  off.ss_flags = SS_DISABLE;
  sigaltstack(&off, nullptr);
  if ((previous_.ss_flags & SS_DISABLE) == 0 && previous_.ss_sp != nullptr) {
    stack_t back = previous_;
    back.ss_flags = 0;
    sigaltstack(&back, nullptr);
  }
  munmap(mapping_, mapping_size_);
  mapping_ = nullptr;
  mapping_size_ = 0;
}

}  // namespace repatch::sync::detail
