// Writing instruction bytes into the running process's own text, W^X at all times.
//
// Two backends:
//  - memfd alias (default): at boot, before any vCPU runs, the pages that hold sites are copied
//    into a memfd, the memfd is mapped r-x (shared) over the original range in one MAP_FIXED call,
//    and a second rw- mapping of the same memfd is kept elsewhere. Writes are plain stores through
//    the alias. No mapping is ever writable and executable, and the code stays executable at every
//    instant (the MAP_FIXED replacement happens under the kernel's mmap lock).
//  - /proc/self/mem: pwrite() at the code address; the kernel copies the page on write
//    (FOLL_FORCE) without ever making the mapping writable. A system call per write: for fallback
//    and comparison.
//
// Neither backend serialises instruction fetch; callers run sync_core() (and, with other threads
// running, make every thread serialise) after writing.
#ifndef REPATCH_ARCH_X86_TEXT_POKER_H_
#define REPATCH_ARCH_X86_TEXT_POKER_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

#include "repatch/error.h"

namespace repatch::x86 {

enum class PokerKind : std::uint8_t { kMemfdAlias, kProcSelfMem };

/// Returns "memfd" or "procmem".
const char* poker_kind_name(PokerKind kind);

class TextPoker {
 public:
  virtual ~TextPoker() = default;

  virtual PokerKind kind() const = 0;

  /// Writes `bytes` at code address `address`. The range must lie inside the range the poker was
  /// created for (memfd) or inside an executable mapping (procmem; not checked). Stores are done in
  /// address order, byte-wise or wider, each store single-copy atomic for its width (memfd: each
  /// naturally aligned 8-byte chunk inside the range is written by one store). A successful write
  /// never allocates, so it may run while other vCPUs are stopped; async-signal-safe for the memfd
  /// backend. A refusal builds its message, which allocates (procmem also reads /proc/self/maps
  /// to explain it): check ranges when planning, not while others are stopped.
  /// Fails with kInvalidArgument for an address outside the poker's range, kSystem when the
  /// kernel refuses the write (procmem: also when the address lies in a memfd-remapped range).
  virtual Status write(std::uintptr_t address, std::span<const std::uint8_t> bytes) = 0;

  /// Whether compare_exchange_byte() is atomic against other writers (memfd: yes; procmem: no,
  /// so live switches, whose writes race with INT3 and NMI executors, need the memfd backend).
  virtual bool can_compare_exchange() const = 0;

  /// If the code byte at `address` holds `expected`, replaces it with `desired`, in one atomic
  /// read-modify-write through the alias. Returns true when the byte now holds `desired` because
  /// of this call. Async-signal-safe, never allocates, never fails otherwise: the caller checks
  /// when planning that `address` lies inside begin()..end(). Backends that cannot
  /// (can_compare_exchange() false) return false and write nothing.
  virtual bool compare_exchange_byte(std::uintptr_t address, std::uint8_t expected,
                                     std::uint8_t desired) noexcept = 0;

  /// For the memfd backend: what to add to a code address inside begin()..end() to get its
  /// writable alias, for writers that store through arch/x86/code_store.h directly (no call per
  /// store). 0 for procmem, which has no alias: use write().
  virtual std::intptr_t alias_delta() const = 0;

  /// For the memfd backend: the first and one-past-last code addresses covered (page aligned).
  /// For procmem: both 0.
  virtual std::uintptr_t begin() const = 0;
  virtual std::uintptr_t end() const = 0;
};

/// Sets up the memfd alias for every page that intersects [first, last). Must be called while the
/// process has a single thread that runs code in that range (at boot). The range must lie inside
/// one executable, non-writable mapping of /proc/self/maps. Installs fork handlers so that a
/// child process gets a private copy of the text and never patches its parent's code, nor runs
/// code the parent patches; every fork() then costs a memfd_create per live poker in the parent.
/// A child that cannot get its copy (no descriptor was free in the parent at fork time, or an
/// mmap failed) writes one line naming the call and errno to fd 2 and exits with status 127
/// before it returns from fork().
/// Fails with kSystem (memfd_create/mmap refused; the message names the call and errno),
/// kInvalidArgument (the range is not inside one r-x mapping, or overlaps a live memfd poker) or
/// kUnsupported (256 memfd pokers are already live).
/// Destroying the poker unmaps the alias only: the text stays mapped r-x from the memfd.
Result<std::unique_ptr<TextPoker>> make_memfd_poker(std::uintptr_t first, std::uintptr_t last);

/// Opens /proc/self/mem for writing. Fails with kSystem when it cannot be opened.
Result<std::unique_ptr<TextPoker>> make_procmem_poker();

}  // namespace repatch::x86

#endif  // REPATCH_ARCH_X86_TEXT_POKER_H_
