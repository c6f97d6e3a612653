#include "engine/modules.h"

#include <dlfcn.h>
#include <link.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>

#include "arch/x86/cpuid.h"
#include "arch/x86/sync_core.h"
#include "base/context.h"
#include "base/test_hooks.h"
#include "engine/group_phase.h"
#include "engine/object_list.h"
#include "repatch/op.h"
#include "sync/sync_cores.h"

namespace repatch::engine {
namespace {

// The names of the refused objects, for the refusal trap their sites run. Written under the switch
// mutex in normal context, read by the trap just before it aborts.
char g_refused_names[2048] = {};

}  // namespace
}  // namespace repatch::engine

// The op slots of a refused object point at this (through the callee-save thunk below): its sites
// still hold their unpatched `call *slot`, so running one lands here instead of in a variant that
// may not be its group's.
extern "C" [[noreturn]] void repatch_refused_site_c() {
  static const char kHead[] =
      "repatch: a site of an object the engine refused to load was run; refused: ";
  (void)!::write(STDERR_FILENO, kHead, sizeof kHead - 1);
  const char* names = repatch::engine::g_refused_names;
  (void)!::write(STDERR_FILENO, names, std::strlen(names));
  (void)!::write(STDERR_FILENO, "\n", 1);
  std::abort();
}
REPATCH_CALLEE_SAVE_THUNK(repatch_refused_site, repatch_refused_site_c, void);

namespace repatch::engine {
namespace {

CodeObject* find_object(Engine::Impl& impl, const abi::ObjectSections& sections)
    REPATCH_REQUIRES(impl.switch_mutex) {
  for (const auto& object : impl.objects) {
    if (object->sections == &sections) return object.get();
  }
  return nullptr;
}

// Leaves the object unusable: every op slot it declares calls the refusal trap above.
void disable_object(const abi::ObjectSections& sections) {
  for (const abi::OpDesc* const* op = sections.ops_begin; op != nullptr && op != sections.ops_end;
       ++op) {
    *(*op)->slot = reinterpret_cast<void*>(&repatch_refused_site);
  }
}

void refuse(Engine::Impl& impl, const abi::ObjectSections& sections, const Error& error)
    REPATCH_REQUIRES(impl.switch_mutex) {
  disable_object(sections);
  Engine::Impl::RefusedObject refused{&sections, nullptr, error, {}};
  refused.status.name = object_name(&sections, &refused.link_map);
  refused.status.refusal = error.to_string();
  const std::size_t used = std::strlen(g_refused_names);
  std::snprintf(g_refused_names + used, sizeof g_refused_names - used, "%s%s",
                used == 0 ? "" : ", ", refused.status.name.c_str());
  impl.refused.push_back(std::move(refused));
}

bool register_sync_cores_once() {
  static const bool registered = sync::register_sync_cores().ok();
  return registered;
}

// The variant a group takes when it first appears: its feature's, else its default.
VariantIndex first_variant(const Engine::Impl& impl, GroupIndex g)
    REPATCH_REQUIRES(impl.switch_mutex) {
  const char* feature = impl.catalog.group(g).desc->feature;
  if (feature == nullptr) return 0;
  return x86::cpu_has(impl.cpu, feature).value_or(false) ? 1 : 0;
}

Status load_locked(Engine::Impl& impl, const abi::ObjectSections& sections)
    REPATCH_REQUIRES(impl.switch_mutex) {
  // Second step, against a catalog that is put back if the object is refused.
  const Catalog catalog_before = impl.catalog;
  const std::size_t groups_before = impl.all_groups.size();
  const std::size_t ops_before = impl.all_ops.size();
  const std::size_t variants_before = impl.all_variants.size();
  const auto put_back = [&]() REPATCH_REQUIRES(impl.switch_mutex) {
    impl.catalog = catalog_before;
    impl.all_groups.resize(groups_before);
    impl.all_ops.resize(ops_before);
    impl.all_variants.resize(variants_before);
  };
  Result<std::unique_ptr<CodeObject>> built = build_code_object(
      sections, impl.catalog,
      [&](std::span<const abi::GroupDesc* const> fresh, const Descriptors& own)
          REPATCH_NO_THREAD_SAFETY_ANALYSIS { return extend_catalog(impl, fresh, own); });
  if (!built.ok()) {
    put_back();
    return built.error();
  }
  CodeObject& object = *built.value();
  std::vector<VariantIndex> variants = impl.group_variant;
  for (std::size_t g = variants.size(); g < impl.catalog.groups().size(); ++g) {
    variants.push_back(first_variant(impl, static_cast<GroupIndex>(g)));
  }
  Result<std::vector<SiteWrite>> writes = plan_object_writes(object, variants);
  if (!writes.ok()) {
    put_back();
    return writes.error();
  }

  // Third step.
  if (Status s = make_object_writer(object, impl.writer); !s.ok()) {
    put_back();
    return s;
  }
  if (Status s = write_object(object, writes.value()); !s.ok()) {
    put_back();
    return s;
  }
  // Other CPUs never ran this code, but may hold stale lines of the pages it shares with text
  // they did run; membarrier serialises them (best effort: without it, the kernel's own return
  // to user space does when they are next scheduled).
  if (register_sync_cores_once()) sync::sync_cores();

  // Fourth step.
  for (std::size_t g = impl.group_variant.size(); g < variants.size(); ++g) {
    if (g < abi::kMaxTrackedGroups) settle_group_phase(static_cast<GroupIndex>(g), variants[g]);
  }
  impl.group_variant = variants;
  impl.group_state.resize(impl.catalog.groups().size(), nullptr);
  point_object_slots(object, impl.group_variant);
  publish_tracked_indexes(object);
  impl.objects.push_back(std::move(built).value());
  publish_objects(impl);
  return {};
}

void unload_locked(Engine::Impl& impl, const abi::ObjectSections& sections)
    REPATCH_REQUIRES(impl.switch_mutex) {
  const auto refused = std::find_if(impl.refused.begin(), impl.refused.end(),
                                    [&](const auto& r) { return r.sections == &sections; });
  if (refused != impl.refused.end()) {
    impl.refused.erase(refused);
    return;
  }
  CodeObject* object = find_object(impl, sections);
  if (object == nullptr || object->name == kProgramName) return;
  // Second step: a late executor of the last attempt would write into the object's pages, and a
  // thread still holding an older one would read its plans.
  if (impl.published.touches(object)) {
    publish_attempt(nullptr);
    impl.published.drop_all();
  }
  // Third step.
  const auto it = std::find_if(impl.objects.begin(), impl.objects.end(),
                               [object](const auto& o) { return o.get() == object; });
  std::unique_ptr<CodeObject> gone = std::move(*it);
  impl.objects.erase(it);
  publish_objects(impl);  // waits for the grace period
  gone.reset();
}

}  // namespace

Result<const Catalog*> extend_catalog(Engine::Impl& impl,
                                      std::span<const abi::GroupDesc* const> fresh,
                                      const Descriptors& own) {
  if (fresh.empty()) return &impl.catalog;
  const Descriptors copies = impl.copies.copy(own, fresh);
  impl.all_groups.insert(impl.all_groups.end(), copies.groups.begin(), copies.groups.end());
  impl.all_ops.insert(impl.all_ops.end(), copies.ops.begin(), copies.ops.end());
  impl.all_variants.insert(impl.all_variants.end(), copies.variants.begin(), copies.variants.end());
  Result<Catalog> catalog = Catalog::build({impl.all_groups, impl.all_ops, impl.all_variants});
  if (!catalog.ok()) return catalog.error();
  impl.catalog = std::move(catalog).value();
  return &impl.catalog;
}

void publish_objects(const Engine::Impl& impl) {
  std::vector<const CodeObject*> objects;
  objects.reserve(impl.objects.size());
  for (const auto& object : impl.objects)
    objects.push_back(object.get());
  engine::publish_objects(objects);
}

void load_object(Engine::Impl& impl, const abi::ObjectSections& sections) {
  base::assert_normal_context();
  // First step. With the handler off (tests only), the object is patched beside a switch in
  // progress, which neither includes its sites nor leaves them the variant it commits.
  const bool wait = !test::disabled(test::Handler::kModuleWait);
  if (wait) impl.switch_mutex.lock();
  [&]() REPATCH_NO_THREAD_SAFETY_ANALYSIS {
    if (find_object(impl, sections) != nullptr) return;
    if (std::any_of(impl.refused.begin(), impl.refused.end(),
                    [&](const auto& r) { return r.sections == &sections; })) {
      return;
    }
    if (Status s = load_locked(impl, sections); !s.ok()) refuse(impl, sections, s.error());
  }();
  if (wait) impl.switch_mutex.unlock();
}

void unload_object(Engine::Impl& impl, const abi::ObjectSections& sections) {
  base::assert_normal_context();
  const base::MutexLock no_switch_meanwhile(impl.switch_mutex);
  unload_locked(impl, sections);
}

}  // namespace repatch::engine

namespace repatch {

Result<void*> Engine::load_module(const std::string& path, int extra_flags) {
  base::assert_normal_context();
  void* handle = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | extra_flags);
  if (handle == nullptr) {
    const char* why = ::dlerror();
    return Error(ErrorCode::kSystem,
                 "dlopen(\"" + path + "\") failed: " + (why != nullptr ? why : "no reason given"));
  }
  struct link_map* map = nullptr;
  ::dlinfo(handle, RTLD_DI_LINKMAP, &map);
  std::optional<Error> refusal;
  {
    const base::MutexLock no_switch(impl_->switch_mutex);
    for (const Impl::RefusedObject& refused : impl_->refused) {
      if (refused.link_map == map) refusal = refused.error;
    }
  }
  if (refusal.has_value()) {
    ::dlclose(handle);
    return *refusal;
  }
  return handle;
}

std::vector<ModuleStatus> Engine::modules() const {
  const base::MutexLock no_switch(impl_->switch_mutex);
  std::vector<ModuleStatus> out;
  for (const auto& object : impl_->objects) {
    ModuleStatus status;
    status.name = object->name;
    status.sites = object->table.entries().size();
    status.groups = object->own_groups.size();
    status.retained_bytes = sizeof(engine::CodeObject) + object->table.retained_bytes() +
                            object->catalog.retained_bytes() +
                            object->own_groups.capacity() * sizeof(engine::GroupIndex) +
                            object->own_ops.capacity() * sizeof(engine::OpIndex);
    if (object->poker != nullptr) {
      status.text_begin = object->poker->begin();
      status.text_end = object->poker->end();
    }
    out.push_back(std::move(status));
  }
  for (const Impl::RefusedObject& refused : impl_->refused)
    out.push_back(refused.status);
  return out;
}

}  // namespace repatch
