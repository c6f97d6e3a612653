// Engine::boot(): from declarations to every group in its initial variant.
//
// The protocol, all on the one thread the process has:
//   first step:  read and check every declaration and site record of every object registered so
//                far (the program, shared objects loaded before boot; engine/object_registry.h),
//                each fitted to the catalog of those before it (engine/code_object.h);
//   second step: resolve the requested initial variants;
//   third step:  plan: compute every site's current and target image and compare each site's
//                bytes with its current image. Any failure so far returns with nothing written
//                and the text untouched;
//   fourth step: take the vCPUs' IPI and NMI signals (refused, with nothing written, when one
//                the options ask for is handled by something else) and set up the text writer
//                (for memfd: remap the pages that hold sites);
//   fifth step:  write each site that changes, point each op slot at its variant, sync_core;
//                publish the objects to the #BP handler's lookups (engine/object_list.h), then
//                install the handler, last. Once boot() has returned, objects that load or unload
//                go to the engine as they do (engine/modules.h).
#include <dirent.h>

#include <atomic>
#include <cstring>

#include "arch/x86/cpuid.h"
#include "arch/x86/sync_core.h"
#include "arch/x86/text_poker.h"
#include "base/return_if_error.h"
#include "base/text.h"
#include "engine/engine_impl.h"
#include "engine/group_phase.h"
#include "engine/int3_handler.h"
#include "engine/modules.h"
#include "engine/object_registry.h"
#include "engine/op_marks.h"
#include "engine/site_image.h"
#include "sync/vcpu.h"

namespace repatch {
namespace {

enum class BootState : int { kNone, kBooting, kBooted };
std::atomic<BootState> g_boot_state{BootState::kNone};
// Published once with release after the fifth step; readers acquire (Engine::get()).
std::atomic<Engine*> g_engine{nullptr};

// Threads of this process, from /proc/self/task; 0 if it cannot be read.
int thread_count() {
  DIR* dir = opendir("/proc/self/task");
  if (dir == nullptr) return 0;
  int n = 0;
  while (dirent* e = readdir(dir)) {
    if (e->d_name[0] != '.') ++n;
  }
  closedir(dir);
  return n;
}

// The CPU as boot sees it: `cpu` as CPUID read it, or with exactly the features the options list.
Result<x86::CpuInfo> boot_cpu(x86::CpuInfo cpu, const BootOptions& options) {
  if (!options.features.has_value()) return cpu;
  for (std::string_view name : x86::cpu_feature_names())
    x86::set_cpu_feature(cpu, name, false);
  for (const std::string& name : *options.features) {
    if (!x86::set_cpu_feature(cpu, name, true)) {
      return Error(ErrorCode::kUnknownName, "unknown CPU feature '" + name +
                                                "' in the boot options; the features are " +
                                                text::quoted_list(x86::cpu_feature_names()));
    }
  }
  return cpu;
}

Result<std::vector<engine::VariantIndex>> resolve_initial(const engine::Catalog& catalog,
                                                          const BootOptions& options,
                                                          const x86::CpuInfo& cpu) {
  std::vector<engine::VariantIndex> variants(catalog.groups().size(), 0);
  for (std::size_t g = 0; g < variants.size(); ++g) {
    if (const char* feature = catalog.group(static_cast<engine::GroupIndex>(g)).desc->feature) {
      variants[g] = x86::cpu_has(cpu, feature).value_or(false) ? 1 : 0;
    }
  }
  Result<std::vector<engine::Choice>> chosen =
      engine::resolve_choices(catalog, options.initial, "is given an initial variant twice");
  if (!chosen.ok()) return chosen.error();
  for (const engine::Choice& choice : chosen.value())
    variants[choice.group] = choice.variant;
  return variants;
}

// The vCPUs' IPI and NMI: the program's choice, or the first two free real-time signals. Either
// way a signal something else handles is refused rather than taken over.
Status take_interrupt_signals(const BootOptions& options) {
  if (!options.interrupt_signals.has_value()) return sync::choose_interrupt_signals();
  const InterruptSignals& asked = *options.interrupt_signals;
  if (Status s = sync::use_interrupt_signals(asked.ipi, asked.nmi); !s.ok()) {
    return Error(s.error().code(), "BootOptions::interrupt_signals: " + s.error().message());
  }
  return {};
}

// After a failed boot: puts the sites of objects [0, count) back to their unpatched images.
std::string undo_objects(Engine::Impl& impl, std::size_t count)
    REPATCH_REQUIRES(impl.switch_mutex) {
  std::string out;
  for (std::size_t i = 0; i < count; ++i) {
    if (Status s = engine::undo_object_writes(*impl.objects[i]); !s.ok()) {
      out += "; " + s.error().message();
    }
  }
  return out;
}

Result<std::unique_ptr<Engine::Impl>> boot_impl(const BootOptions& options) {
  if (const int threads = thread_count(); threads > 1) {
    return Error(ErrorCode::kState,
                 "boot() must run before other threads start (it rewrites code they may be "
                 "running); this process has " +
                     std::to_string(threads) + " threads");
  }
  if (Status s = engine::prepare_op_marks(); !s.ok()) return s.error();
  auto impl = std::make_unique<Engine::Impl>();
  const x86::CpuInfo real_cpu = x86::read_cpu_info();
  // sync_core follows the real CPU, whatever features the options pretend.
  x86::select_sync_core_method(real_cpu.serialize);
  Result<x86::CpuInfo> cpu = boot_cpu(real_cpu, options);
  if (!cpu.ok()) return cpu.error();
  impl->cpu = cpu.value();

  // First step: every object that registered (the program, shared objects loaded before boot),
  // each fitted to the catalog of those before it. The registry's lock is taken and dropped before
  // the switch mutex, the order in which a module's load takes them.
  const std::vector<const abi::ObjectSections*> registered = engine::objects_registered();
  // Nobody else knows impl yet; the lock costs nothing and lets the analysis check every access.
  const base::MutexLock not_yet_shared(impl->switch_mutex);
  for (const abi::ObjectSections* sections : registered) {
    Result<std::unique_ptr<engine::CodeObject>> object = engine::build_code_object(
        *sections, impl->catalog,
        [&](std::span<const abi::GroupDesc* const> fresh, const engine::Descriptors& own)
            REPATCH_NO_THREAD_SAFETY_ANALYSIS {
              return engine::extend_catalog(*impl, fresh, own);
            });
    if (!object.ok()) return object.error();
    impl->objects.push_back(std::move(object).value());
  }

  // Second and third steps.
  Result<std::vector<engine::VariantIndex>> target =
      resolve_initial(impl->catalog, options, impl->cpu);
  if (!target.ok()) return target.error();
  std::vector<std::vector<engine::SiteWrite>> writes;
  for (const auto& object : impl->objects) {
    Result<std::vector<engine::SiteWrite>> planned =
        engine::plan_object_writes(*object, target.value());
    if (!planned.ok()) return planned.error();
    writes.push_back(std::move(planned).value());
  }

  // Fourth step.
  REPATCH_RETURN_IF_ERROR(take_interrupt_signals(options));
  impl->writer = options.writer == TextWriter::kProcSelfMem ? x86::PokerKind::kProcSelfMem
                                                            : x86::PokerKind::kMemfdAlias;
  for (const auto& object : impl->objects) {
    REPATCH_RETURN_IF_ERROR(engine::make_object_writer(*object, impl->writer));
  }

  // Fifth step. Only this thread runs, so plain writes followed by one sync_core suffice.
  for (std::size_t i = 0; i < impl->objects.size(); ++i) {
    if (Status s = engine::write_object(*impl->objects[i], writes[i]); !s.ok()) {
      return Error(s.error().code(), "boot " + s.error().message() + undo_objects(*impl, i));
    }
  }
  impl->group_variant = target.value();
  for (engine::GroupIndex g = 0; g < impl->group_variant.size() && g < abi::kMaxTrackedGroups;
       ++g) {
    engine::settle_group_phase(g, impl->group_variant[g]);
  }
  impl->group_state.assign(impl->catalog.groups().size(), nullptr);
  for (const auto& object : impl->objects) {
    engine::point_object_slots(*object, impl->group_variant);
  }
  x86::sync_core();
  engine::publish_objects(*impl);
  // The SIGTRAP disposition in place now is kept and receives every trap that is not the engine's.
  if (Status s = engine::install_int3_handler(); !s.ok()) {
    return Error(s.error().code(), s.error().message() + undo_objects(*impl, impl->objects.size()));
  }
  return impl;
}

}  // namespace

Engine::Engine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Engine::~Engine() = default;

Result<Engine*> Engine::boot(const BootOptions& options) {
  BootState expected = BootState::kNone;
  if (!g_boot_state.compare_exchange_strong(expected, BootState::kBooting)) {
    return Error(ErrorCode::kState, "boot() was already called in this process");
  }
  Result<std::unique_ptr<Impl>> impl = boot_impl(options);
  if (!impl.ok()) {
    g_boot_state.store(BootState::kNone);
    return impl.error();
  }
  // The engine lives as long as the process: the text it patched does.
  auto* engine = new Engine(std::move(impl).value());
  g_engine.store(engine, std::memory_order_release);  // pairs with the acquire in get()
  {
    Impl& booted = *engine->impl_;
    const base::MutexLock no_switch_yet(booted.switch_mutex);
    // From here, OpInFlight counts ops of the tracked groups (their phase words are settled).
    for (const auto& object : booted.objects)
      engine::publish_tracked_indexes(*object);
  }
  // Objects loaded from now on are brought into the groups' variants as they load.
  engine::hand_objects_to(engine->impl_.get());
  g_boot_state.store(BootState::kBooted);
  return engine;
}

Engine* Engine::get() {
  return g_engine.load(std::memory_order_acquire);
}

const Engine::Impl* booted_impl() {
  const Engine* engine = g_engine.load(std::memory_order_acquire);
  return engine != nullptr ? engine->impl_.get() : nullptr;
}

}  // namespace repatch
