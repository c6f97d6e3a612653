#include "engine/object_registry.h"

#include <pthread.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "engine/modules.h"

namespace repatch::engine {
namespace {

// More objects with declarations than this before boot is not a program anyone writes; boot then
// fails naming the limit rather than missing an object.
constexpr std::size_t kMaxObjectsBeforeBoot = 256;

// Constant-initialised: constructors of other objects use them before ours run.
pthread_mutex_t g_mutex = PTHREAD_MUTEX_INITIALIZER;
const abi::ObjectSections* g_before_boot[kMaxObjectsBeforeBoot] = {};
std::size_t g_count = 0;
bool g_overflowed = false;
Engine::Impl* g_engine = nullptr;  // set once by boot, under g_mutex
// Set by an atexit handler registered at boot, which runs before the objects' destructors
// (glibc runs _dl_fini, registered before main, last): at exit nothing is unmapped, and other
// threads may still run every object's code, so the objects stay as they are.
bool g_exiting = false;

bool declares_anything(const abi::ObjectSections& o) {
  return o.groups_begin != o.groups_end || o.ops_begin != o.ops_end ||
         o.variants_begin != o.variants_end || o.sites_begin != o.sites_end;
}

class RegistryLock {
 public:
  RegistryLock() { pthread_mutex_lock(&g_mutex); }
  ~RegistryLock() { pthread_mutex_unlock(&g_mutex); }
  RegistryLock(const RegistryLock&) = delete;
  RegistryLock& operator=(const RegistryLock&) = delete;
};

}  // namespace

std::vector<const abi::ObjectSections*> objects_registered() {
  const RegistryLock lock;
  if (g_overflowed) {
    std::fprintf(stderr,
                 "repatch: more than %zu objects with repatch declarations loaded before boot; "
                 "the later ones are not patched\n",
                 kMaxObjectsBeforeBoot);
  }
  return {g_before_boot, g_before_boot + g_count};
}

void hand_objects_to(Engine::Impl* impl) {
  const RegistryLock lock;
  g_engine = impl;
  std::atexit([] {
    const RegistryLock exiting;
    g_exiting = true;
  });
}

namespace {

void object_loaded(const abi::ObjectSections* object) {
  if (object == nullptr || !declares_anything(*object)) return;
  if (object->abi_version != abi::kObjectAbiVersion) {
    std::fprintf(stderr,
                 "repatch: an object built with op ABI version %u loaded into a library of version "
                 "%u; its sites are not patched\n",
                 object->abi_version, abi::kObjectAbiVersion);
    return;
  }
  const RegistryLock lock;
  if (g_engine != nullptr) {
    load_object(*g_engine, *object);
    return;
  }
  const abi::ObjectSections** end = g_before_boot + g_count;
  if (std::find(g_before_boot, end, object) != end) return;  // another translation unit's call
  if (g_count == kMaxObjectsBeforeBoot) {
    g_overflowed = true;
    return;
  }
  g_before_boot[g_count++] = object;
}

void object_unloading(const abi::ObjectSections* object) {
  if (object == nullptr || !declares_anything(*object)) return;
  const RegistryLock lock;
  if (g_exiting) return;
  if (g_engine != nullptr) {
    unload_object(*g_engine, *object);
    return;
  }
  const abi::ObjectSections** end = g_before_boot + g_count;
  const abi::ObjectSections** found = std::find(g_before_boot, end, object);
  if (found == end) return;
  std::copy(found + 1, end, found);
  --g_count;
}

}  // namespace
}  // namespace repatch::engine

extern "C" void repatch_abi_object_loaded(const repatch::abi::ObjectSections* object) {
  repatch::engine::object_loaded(object);
}

extern "C" void repatch_abi_object_unloading(const repatch::abi::ObjectSections* object) {
  repatch::engine::object_unloading(object);
}
