#include "guest/machine.h"

#include <atomic>
#include <string>

#include "guest/hypervisor.h"
#include "guest/lock_state.h"
#include "guest/tlb.h"
#include "guest/tlb_group_state.h"

namespace repatch::guest {
namespace {

// Release in set_machine_nmi_hook pairs with the acquire in the handler: a hook runs only after
// what its setter wrote before setting it is visible.
std::atomic<sync::InterruptHandler> g_nmi_hook{nullptr};

void machine_nmi(sync::VcpuId self, void* ucontext) {
  tlb::on_interrupt(self);
  if (sync::InterruptHandler hook = g_nmi_hook.load(std::memory_order_acquire); hook != nullptr) {
    hook(self, ucontext);
  }
}

Error step_failed(const char* step, const Error& error) {
  return Error(error.code(), std::string(step) + ": " + error.message());
}

}  // namespace

Result<Engine*> boot_machine(const BootOptions& options) {
  Result<Engine*> engine = boot(options);
  if (!engine.ok()) return step_failed("boot", engine.error());
  // It registers the spinlock GroupState too.
  if (Status s = adopt_engine_variant(); !s.ok()) {
    return step_failed("adopting the spinlock encoding", s.error());
  }
  if (Status s = engine.value()->set_group_state("tlb", &tlb::group_state()); !s.ok()) {
    return step_failed("registering the tlb state", s.error());
  }
  tlb::page_table_reset();
  tlb::tlbs_reset();
  if (Status s = hypervisor::install(); !s.ok()) {
    return step_failed("installing the simulated hypervisor", s.error());
  }
  hypervisor::set_resume_hook(&tlb::resume_hook);
  sync::set_nmi_handler(&machine_nmi);
  return engine.value();
}

void set_machine_nmi_hook(sync::InterruptHandler hook) {
  g_nmi_hook.store(hook, std::memory_order_release);
}

}  // namespace repatch::guest
