#include "guest/tlb_page_table.h"

namespace repatch::tlb {
namespace {

struct PageEntry {
  std::atomic<Pte> pte;
  std::atomic<std::uint32_t> flushed;
};

// Zero-initialised (static storage): every page starts at frame 0, generation 0, until
// page_table_reset() gives it frame = page number.
PageEntry g_table[kPages];

PageEntry& entry(std::uint64_t page) {
  return g_table[page % kPages];
}

}  // namespace

Pte pte_load(std::uint64_t page) {
  // Acquire pairs with the release of pte_update: a TLB that caches this entry and is later
  // checked against `flushed` compares like with like.
  return entry(page).pte.load(std::memory_order_acquire);
}

std::uint32_t pte_update(std::uint64_t page, std::uint32_t frame) {
  std::atomic<Pte>& pte = entry(page).pte;
  Pte old = pte.load(std::memory_order_relaxed);
  Pte next = 0;
  do {
    next = (static_cast<Pte>(pte_generation(old) + 1) << 32) | frame;
    // seq_cst: the update must be globally visible before the shootdown that follows it posts any
    // request (tlb_cpu.cpp's post is seq_cst too), so a vCPU that serves the request and refills
    // its TLB reads this entry or a newer one.
  } while (
      !pte.compare_exchange_weak(old, next, std::memory_order_seq_cst, std::memory_order_relaxed));
  return pte_generation(next);
}

void pte_mark_flushed(std::uint64_t page, std::uint32_t generation) {
  std::atomic<std::uint32_t>& flushed = entry(page).flushed;
  std::uint32_t old = flushed.load(std::memory_order_relaxed);
  // Release pairs with the acquire in pte_flushed: a checker that sees the mark also sees the
  // update it covers. Monotonic, so concurrent shootdowns of one page finishing out of order
  // never move it back.
  while (old < generation &&
         !flushed.compare_exchange_weak(old, generation, std::memory_order_release,
                                        std::memory_order_relaxed)) {
  }
}

std::uint32_t pte_flushed(std::uint64_t page) {
  return entry(page).flushed.load(std::memory_order_acquire);
}

void page_table_reset() {
  for (std::uint64_t page = 0; page < kPages; ++page) {
    // Relaxed: nobody translates yet; the thread start that follows publishes these stores.
    g_table[page].pte.store(static_cast<std::uint32_t>(page), std::memory_order_relaxed);
    g_table[page].flushed.store(0, std::memory_order_relaxed);
  }
}

}  // namespace repatch::tlb
