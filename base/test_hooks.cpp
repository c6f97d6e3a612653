#include "base/test_hooks.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string_view>

namespace repatch::test {

#ifdef REPATCH_TEST_HOOKS
const char* handler_name(Handler handler) {
  switch (handler) {
    case Handler::kStop:
      return "stop";
    case Handler::kInt3Completion:
      return "int3_completion";
    case Handler::kInt3Rewind:
      return "int3_rewind";
    case Handler::kNmiCompletion:
      return "nmi_completion";
    case Handler::kQuiescenceCheck:
      return "quiescence_check";
    case Handler::kAckTimeout:
      return "ack_timeout";
    case Handler::kOnlineGate:
      return "online_gate";
    case Handler::kWxAlias:
      return "wx_alias";
    case Handler::kTlbDrain:
      return "tlb_drain";
    case Handler::kLockConvert:
      return "lock_convert";
    case Handler::kSleeperWake:
      return "sleeper_wake";
    case Handler::kStateCheck:
      return "state_check";
    case Handler::kInOpDeadline:
      return "in_op_deadline";
    case Handler::kThreadMarks:
      return "thread_marks";
    case Handler::kModuleWait:
      return "module_wait";
    case Handler::kModuleGrace:
      return "module_grace";
    case Handler::kCount:
      break;
  }
  return "unknown";
}

namespace {

// Parsed before main(): a misspelt name must stop the test run, not quietly test nothing.
std::uint32_t parse_disabled() {
  const char* value = std::getenv("REPATCH_TEST_DISABLE");
  if (value == nullptr) return 0;
  std::uint32_t mask = 0;
  std::string_view rest(value);
  while (!rest.empty()) {
    const std::size_t comma = rest.find(',');
    const std::string_view name = rest.substr(0, comma);
    rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
    if (name.empty()) continue;
    bool known = false;
    for (std::uint8_t h = 0; h < static_cast<std::uint8_t>(Handler::kCount); ++h) {
      if (name == handler_name(static_cast<Handler>(h))) {
        mask |= 1u << h;
        known = true;
      }
    }
    if (!known) {
      std::fprintf(stderr, "REPATCH_TEST_DISABLE: unknown handler '%.*s'; the handlers are:",
                   static_cast<int>(name.size()), name.data());
      for (std::uint8_t h = 0; h < static_cast<std::uint8_t>(Handler::kCount); ++h) {
        std::fprintf(stderr, " %s", handler_name(static_cast<Handler>(h)));
      }
      std::fprintf(stderr, "\n");
      std::exit(2);
    }
  }
  return mask;
}

const std::uint32_t g_disabled = parse_disabled();
std::atomic<InjectionHook> g_hook{nullptr};
std::atomic<void*> g_hook_arg{nullptr};

}  // namespace

bool disabled(Handler handler) noexcept {
  return (g_disabled >> static_cast<std::uint8_t>(handler)) & 1u;
}

void set_injection(InjectionHook hook, void* arg) {
  // The argument first: the primary loads the hook, then (acquire) the argument it came with.
  g_hook_arg.store(arg, std::memory_order_relaxed);
  g_hook.store(hook, std::memory_order_release);
}

void inject(Point point, std::uint32_t sites_done) noexcept {
  if (InjectionHook hook = g_hook.load(std::memory_order_acquire)) {
    hook(point, sites_done, g_hook_arg.load(std::memory_order_relaxed));
  }
}
#endif

}  // namespace repatch::test
