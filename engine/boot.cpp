// Engine::boot(): from declarations to every group in its initial variant.
//
// The protocol, all on the one thread the process has:
//   first step:  read and check every declaration and site record (catalog, table);
//   second step: resolve the requested initial variants;
//   third step:  plan: compute every site's current and target image and compare each site's
//                bytes with its current image. Any failure so far returns with nothing written
//                and the text untouched;
//   fourth step: take the vCPUs' IPI and NMI signals (refused, with nothing written, when one
//                the options ask for is handled by something else) and set up the text writer
//                (for memfd: remap the pages that hold sites);
//   fifth step:  write each site that changes, point each op slot at its variant, sync_core;
//                then install the #BP (SIGTRAP) handler, last, because it keeps a pointer to this
//                boot's site table, which a failed boot frees.
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

struct SiteWrite {
  engine::SiteEntry* entry;
  x86::Image image;
  engine::VariantIndex variant;
};

Result<std::vector<SiteWrite>> plan_boot(const engine::Catalog& catalog, engine::SiteTable& table,
                                         const std::vector<engine::VariantIndex>& target) {
  std::vector<SiteWrite> writes;
  for (engine::SiteEntry& entry : table.entries()) {
    REPATCH_RETURN_IF_ERROR(engine::check_site_holds_current(catalog, table, entry));
    const engine::VariantIndex v = target[catalog.op(entry.op).group];
    // Every image is computed even when it will not be written now, so that a variant that cannot
    // fill some site is refused at boot rather than at the first switch to it.
    const std::size_t variants = catalog.op(entry.op).variants.size();
    for (std::size_t other = 0; other < variants; ++other) {
      Result<x86::Image> image =
          engine::site_image(catalog, table, entry, static_cast<engine::VariantIndex>(other));
      if (!image.ok()) return image.error();
      // Sites that stay indirect already hold their image.
      if (other == v) writes.push_back({&entry, image.value(), v});
    }
  }
  return writes;
}

// After a failed write: puts every site already written back to its unpatched image, so that no
// group is left half-switched (the op slots are not touched until every write succeeded). Returns
// what happened, for the error message.
std::string undo_boot_writes(Engine::Impl& impl) {
  std::size_t undone = 0;
  std::size_t stuck = 0;
  for (engine::SiteEntry& entry : impl.table.entries()) {
    if (entry.variant() == engine::kIndirect && !entry.alt_pad()) continue;
    Result<x86::Image> indirect =
        engine::site_image(impl.catalog, impl.table, entry, engine::kIndirect);
    if (indirect.ok() &&
        impl.poker->write(impl.table.address(entry), indirect.value().view()).ok()) {
      entry.set_held(engine::kIndirect, false);
      ++undone;
    } else {
      ++stuck;
    }
  }
  x86::sync_core();
  if (stuck == 0) {
    return "the " + std::to_string(undone) +
           " sites written before it were put back to their unpatched image";
  }
  return std::to_string(stuck) +
         " sites written before it could not be put back and hold their new image: do not "
         "boot again in this process";
}

Result<std::unique_ptr<x86::TextPoker>> make_writer(TextWriter writer,
                                                    const engine::SiteTable& table) {
  if (table.entries().empty()) return std::unique_ptr<x86::TextPoker>();
  if (writer == TextWriter::kProcSelfMem) return x86::make_procmem_poker();
  Result<std::unique_ptr<x86::TextPoker>> poker =
      x86::make_memfd_poker(table.base(), table.limit());
  if (poker.ok() || poker.error().code() == ErrorCode::kSystem) return poker;
  // The range is the span of every site; the memfd writer remaps it as one executable mapping.
  return Error(ErrorCode::kUnsupported,
               "the memfd text writer cannot remap the sites' range " + text::hex(table.base()) +
                   "-" + text::hex(table.limit()) + " (" + poker.error().message() +
                   "); boot with TextWriter::kProcSelfMem instead");
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

  // First step.
  Result<engine::Catalog> catalog = engine::Catalog::build(engine::program_descriptors());
  if (!catalog.ok()) return catalog.error();
  impl->catalog = std::move(catalog).value();
  Result<engine::SiteTable> table =
      engine::SiteTable::build(engine::program_site_records(), impl->catalog);
  if (!table.ok()) return table.error();
  impl->table = std::move(table).value();

  // Second and third steps.
  Result<std::vector<engine::VariantIndex>> target =
      resolve_initial(impl->catalog, options, impl->cpu);
  if (!target.ok()) return target.error();
  Result<std::vector<SiteWrite>> writes = plan_boot(impl->catalog, impl->table, target.value());
  if (!writes.ok()) return writes.error();

  // Fourth step.
  REPATCH_RETURN_IF_ERROR(take_interrupt_signals(options));
  Result<std::unique_ptr<x86::TextPoker>> poker = make_writer(options.writer, impl->table);
  if (!poker.ok()) return poker.error();
  impl->poker = std::move(poker).value();
  impl->writer = options.writer == TextWriter::kProcSelfMem ? x86::PokerKind::kProcSelfMem
                                                            : x86::PokerKind::kMemfdAlias;

  // Fifth step. Only this thread runs, so plain writes followed by one sync_core suffice.
  for (const SiteWrite& w : writes.value()) {
    const std::uintptr_t address = impl->table.address(*w.entry);
    if (Status s = impl->poker->write(address, w.image.view()); !s.ok()) {
      return Error(s.error().code(),
                   "boot could not write " +
                       engine::describe_site(impl->catalog, impl->table, *w.entry) + ": " +
                       s.error().message() + "; " + undo_boot_writes(*impl));
    }
    w.entry->set_held(w.variant, false);
  }
  // Nobody else knows impl yet; the lock costs nothing and lets the analysis check every access.
  const base::MutexLock not_yet_shared(impl->switch_mutex);
  impl->group_variant = target.value();
  for (engine::GroupIndex g = 0; g < impl->group_variant.size() && g < abi::kMaxTrackedGroups;
       ++g) {
    engine::settle_group_phase(g, impl->group_variant[g]);
  }
  impl->group_state.assign(impl->catalog.groups().size(), nullptr);
  for (const engine::CatalogOp& op : impl->catalog.ops()) {
    const engine::VariantIndex v = impl->group_variant[op.group];
    *op.desc->slot = reinterpret_cast<void*>(op.variants[v == engine::kIndirect ? 0 : v]->callable);
  }
  x86::sync_core();
  // The SIGTRAP disposition in place now is kept and receives every trap that is not the engine's.
  if (Status s = engine::install_int3_handler(impl->table); !s.ok()) {
    return Error(s.error().code(), s.error().message() + "; " + undo_boot_writes(*impl));
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
  // From here, OpInFlight counts ops of the tracked groups (their phase words are settled).
  const auto groups = engine->impl_->catalog.groups();
  for (std::size_t g = 0; g < groups.size() && g < abi::kMaxTrackedGroups; ++g) {
    // Release: pairs with OpInFlight's acquire, which then reads a settled phase word.
    groups[g].desc->runtime->tracked_index.store(static_cast<std::uint8_t>(g),
                                                 std::memory_order_release);
  }
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
