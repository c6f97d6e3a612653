#include "guest/lock_registry.h"

// The QSBR flavour must come before the hash table header: cds_lfht_new binds to it.
#include <sched.h>
#include <unistd.h>
#include <urcu-qsbr.h>
#include <urcu/rculfhash.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>

namespace repatch::guest::lock_registry {
namespace {

static_assert(sizeof(cds_lfht_node) == 2 * sizeof(void*));
static_assert(alignof(RegistryNode) >= alignof(cds_lfht_node));
static_assert(offsetof(RegistryNode, lfht_next) == offsetof(cds_lfht_node, next));
static_assert(offsetof(RegistryNode, lfht_reverse_hash) == offsetof(cds_lfht_node, reverse_hash));

constexpr unsigned long kBuckets = 4096;

// Written once, under g_update_mutex, with release; walkers load it with acquire so that they see
// the table liburcu initialised before the pointer.
std::atomic<cds_lfht*> g_table{nullptr};

// Serialises every add and remove: see the header for why this replaces QSBR registration of
// updaters.
std::mutex g_update_mutex;

// Walks in progress. seq_cst on both sides (walker: increment, then read the table; remover:
// cds_lfht_del's full barrier, then read this count): either the remover sees the walk and waits
// for it, or the walk starts after the unlink and cannot reach the node.
std::atomic<unsigned> g_walkers{0};

cds_lfht_node* as_lfht(RegistryNode* node) {
  return reinterpret_cast<cds_lfht_node*>(node);
}

// Addresses of locks are 8-aligned and often close together: mix the bits so that buckets fill
// evenly (split-ordered lists hash by the reversed low bits).
unsigned long hash_address(const void* address) {
  std::uint64_t x = reinterpret_cast<std::uintptr_t>(address);
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  return static_cast<unsigned long>(x);
}

[[noreturn]] void die(const char* message) {
  [[maybe_unused]] ssize_t ignored = write(STDERR_FILENO, message, std::strlen(message));
  std::abort();
}

cds_lfht* table_for_update() {
  cds_lfht* table = g_table.load(std::memory_order_relaxed);  // the mutex orders updaters
  if (table == nullptr) {
    // Fixed size: see the header. Calling threads need not be registered (liburcu says so).
    table = cds_lfht_new(kBuckets, kBuckets, kBuckets, 0, nullptr);
    if (table == nullptr) {
      die("repatch: cannot allocate the spinlock registry (cds_lfht_new failed)\n");
    }
    g_table.store(table, std::memory_order_release);
  }
  return table;
}

}  // namespace

void add(SpinLock* lock, RegistryNode* node) {
  node->lock = lock;
  std::lock_guard<std::mutex> guard(g_update_mutex);
  cds_lfht* table = table_for_update();
  // cds_lfht_add has a full barrier before its commit: a walker that finds the node sees the
  // lock's word as its constructor initialised it.
  cds_lfht_node_init(as_lfht(node));
  cds_lfht_add(table, hash_address(lock), as_lfht(node));
}

void remove(RegistryNode* node) {
  {
    std::lock_guard<std::mutex> guard(g_update_mutex);
    cds_lfht* table = g_table.load(std::memory_order_relaxed);
    if (table == nullptr || cds_lfht_del(table, as_lfht(node)) != 0) return;
  }
  // The full barrier after cds_lfht_del's commit orders this load after the unlink.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  while (g_walkers.load(std::memory_order_seq_cst) != 0) {
    // A walk is a few loads and compare-and-swaps per lock; it may run on a thread stopped by
    // the hypervisor model, so give the CPU away rather than burn it.
    sched_yield();
  }
}

bool for_each(bool (*visit)(SpinLock& lock, void* context), void* context) noexcept {
  g_walkers.fetch_add(1, std::memory_order_seq_cst);  // pairs with remove()'s load
  cds_lfht* table = g_table.load(std::memory_order_acquire);
  bool complete = true;
  if (table != nullptr) {
    cds_lfht_iter iter;
    // Iteration reads nodes only: no allocation, no lock, nothing a signal handler may not do.
    for (cds_lfht_first(table, &iter); cds_lfht_iter_get_node(&iter) != nullptr;
         cds_lfht_next(table, &iter)) {
      RegistryNode* node = reinterpret_cast<RegistryNode*>(cds_lfht_iter_get_node(&iter));
      if (!visit(*node->lock, context)) {
        complete = false;
        break;
      }
    }
  }
  // Release: the walk's reads of nodes happen before a remover sees the count drop.
  g_walkers.fetch_sub(1, std::memory_order_release);
  return complete;
}

std::size_t size() noexcept {
  std::size_t n = 0;
  for_each(
      [](SpinLock&, void* count) {
        ++*static_cast<std::size_t*>(count);
        return true;
      },
      &n);
  return n;
}

}  // namespace repatch::guest::lock_registry
