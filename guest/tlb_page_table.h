// The guest's shared page table: page number -> frame, with a generation per entry.
//
// One table for the whole guest (one address space). Every update of an entry bumps its
// generation; the translation a TLB caches carries the generation it was read at, so a translation
// can be compared with the table to tell how old it is. A second generation per entry, `flushed`,
// records the newest update whose shootdown has returned: from then on every vCPU must translate
// the page with that generation or a newer one, and a translation older than `flushed` is a stale
// read (the bug the TLB group exists to prevent; tlb_cpu.h counts them).
#ifndef REPATCH_GUEST_TLB_PAGE_TABLE_H_
#define REPATCH_GUEST_TLB_PAGE_TABLE_H_

#include <atomic>
#include <cstdint>

namespace repatch::tlb {

/// Pages the guest page table maps: page numbers 0 .. kPages-1.
inline constexpr std::uint64_t kPages = 1024;

/// A page-table entry as one word, so that a reader never sees the frame of one update with the
/// generation of another: generation in the high 32 bits, frame in the low 32.
using Pte = std::uint64_t;

/// The generation of `pte`.
constexpr std::uint32_t pte_generation(Pte pte) {
  return static_cast<std::uint32_t>(pte >> 32);
}

/// The frame of `pte`.
constexpr std::uint32_t pte_frame(Pte pte) {
  return static_cast<std::uint32_t>(pte);
}

/// Reads the entry of `page` (below kPages). Async-signal-safe.
Pte pte_load(std::uint64_t page);

/// Points `page` at `frame` and returns the entry's new generation. Translations cached before the
/// call stay usable until a shootdown of the page returns; the caller runs one and then calls
/// pte_mark_flushed(). Concurrent updates of one page are serialised by the entry itself.
/// Async-signal-safe.
std::uint32_t pte_update(std::uint64_t page, std::uint32_t frame);

/// Records that every vCPU has dropped translations of `page` older than `generation`: the
/// shootdown that followed the update to `generation` has returned. Never lowers the mark.
/// Async-signal-safe.
void pte_mark_flushed(std::uint64_t page, std::uint32_t generation);

/// The newest generation of `page` whose shootdown has returned (0: none yet).
/// Async-signal-safe.
std::uint32_t pte_flushed(std::uint64_t page);

/// Resets every entry to frame = page number, generation 0, nothing flushed. Only while no vCPU
/// translates (before a test's vCPUs start).
void page_table_reset();

}  // namespace repatch::tlb

#endif  // REPATCH_GUEST_TLB_PAGE_TABLE_H_
