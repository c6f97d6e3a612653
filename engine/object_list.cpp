#include "engine/object_list.h"

// liburcu's exported read side, a call per lookup (lookups happen only on traps). Its inline one
// (_LGPL_SOURCE) reads the reader record through a type aligned to 128 bytes that liburcu's own
// arena does not align so, which UBSan reports in this code.
#include <urcu/urcu-bp.h>

#include <memory>

#include "base/context.h"
#include "base/test_hooks.h"

namespace repatch::engine {
namespace {

// Never changed once published; replaced whole.
struct ObjectList {
  std::vector<const CodeObject*> objects;
};

ObjectList* g_list = nullptr;  // RCU-protected: rcu_dereference / rcu_xchg_pointer
std::atomic<std::uint64_t> g_freed_object_reads{0};

}  // namespace

bool is_site_start(std::uintptr_t address) noexcept {
  urcu_bp_read_lock();
  // rcu_dereference: a consume load that orders the reads of the list and its objects after the
  // load of the pointer; pairs with rcu_assign_pointer in publish_objects().
  const ObjectList* list = rcu_dereference(g_list);
  bool found = false;
  for (std::size_t i = 0; list != nullptr && i < list->objects.size() && !found; ++i) {
    const CodeObject* object = list->objects[i];
    if (address < object->table.base() || address >= object->table.limit()) continue;
    // With a test hook, the thread waits here while another unloads the object.
    test::inject(test::Point::kObjectLookup, 0);
    if (object->alive.load(std::memory_order_relaxed) != CodeObject::kAlive) {
      g_freed_object_reads.fetch_add(1, std::memory_order_relaxed);
    }
    const SiteEntry* entry = object->table.find(address);
    found = entry != nullptr && object->table.address(*entry) == address;
  }
  urcu_bp_read_unlock();
  return found;
}

void publish_objects(const std::vector<const CodeObject*>& objects) {
  base::assert_normal_context();
  auto* fresh = new ObjectList{objects};  // NOLINT(cppcoreguidelines-owning-memory)
  // rcu_xchg_pointer: a full barrier before the store, so a reader that loads `fresh` sees it
  // filled in (pairs with rcu_dereference in is_site_start).
  ObjectList* old = rcu_xchg_pointer(&g_list, fresh);
  // The grace period: every lookup that may still read `old`, or an object missing from `fresh`,
  // has left its read-side section when this returns.
  if (!test::disabled(test::Handler::kModuleGrace)) urcu_bp_synchronize_rcu();
  delete old;  // NOLINT(cppcoreguidelines-owning-memory)
}

std::uint64_t freed_object_reads() noexcept {
  return g_freed_object_reads.load(std::memory_order_relaxed);
}

}  // namespace repatch::engine
