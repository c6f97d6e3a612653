// Where code runs: normal context, or inside a signal handler (an IPI, an NMI or a #BP of the
// modelled guest). Handlers must not take locks that ordinary code holds nor allocate, so code that
// does either says so with base::assert_normal_context(), in the spirit of the kernel's
// lockdep_assert_held and might_sleep.
//
// The handlers that the process installs (sync/signals.cpp, engine/int3_handler.cpp) count
// themselves in a thread-local depth with a SignalHandlerScope; the checks read it. The depth is
// kept in every build (one add and one subtract per handler), the checks only in builds without
// NDEBUG (the unoptimised test build), where a violation prints its place and aborts.
#ifndef REPATCH_BASE_CONTEXT_H_
#define REPATCH_BASE_CONTEXT_H_

namespace repatch::base {

/// A place in the source, filled in by default arguments at the call. (std::source_location
/// needs a builtin that clang 14 lacks; these builtins are in both compilers.)
struct CodePlace {
  const char* file;
  unsigned line;
  const char* function;

  static constexpr CodePlace here(const char* file = __builtin_FILE(),
                                  unsigned line = __builtin_LINE(),
                                  const char* function = __builtin_FUNCTION()) {
    return {file, line, function};
  }
};

/// Whether this thread is inside one of the process's signal handlers. Async-signal-safe.
bool in_signal_handler() noexcept;

/// Counts a handler in for its lifetime: the first object of every handler the process installs.
class SignalHandlerScope {
 public:
  SignalHandlerScope() noexcept;
  ~SignalHandlerScope();
  SignalHandlerScope(const SignalHandlerScope&) = delete;
  SignalHandlerScope& operator=(const SignalHandlerScope&) = delete;
};

/// Writes "repatch: <what> at <file>:<line>" to stderr without allocating, then aborts.
/// Async-signal-safe.
[[noreturn]] void context_violation(const char* what, const CodePlace& where) noexcept;

/// In builds without NDEBUG, stops the program when called from a signal handler: the code after
/// it takes a lock, allocates or waits, none of which a handler may do.
inline void assert_normal_context([[maybe_unused]] const CodePlace& where = CodePlace::here()) {
#ifndef NDEBUG
  if (in_signal_handler()) {
    context_violation("normal-context code called from a signal handler", where);
  }
#endif
}

}  // namespace repatch::base

#endif  // REPATCH_BASE_CONTEXT_H_
