#include "base/context.h"

#include <unistd.h>

#include <cstdlib>
#include <cstring>

namespace repatch::base {
namespace {

// Initial-exec, as the vCPU pointer in sync/vcpu.cpp: a handler's access is one %fs-relative load
// or store, with no call to __tls_get_addr (which may allocate). Signed, so that an unbalanced
// scope shows as a negative depth in a debugger rather than wrapping.
[[gnu::tls_model("initial-exec")]] thread_local int t_signal_depth = 0;

void write_all(const char* text) noexcept {
  std::size_t left = std::strlen(text);
  while (left > 0) {
    const ssize_t n = ::write(STDERR_FILENO, text, left);
    if (n <= 0) return;
    text += n;
    left -= static_cast<std::size_t>(n);
  }
}

}  // namespace

bool in_signal_handler() noexcept {
  return t_signal_depth > 0;
}

SignalHandlerScope::SignalHandlerScope() noexcept {
  ++t_signal_depth;
}

SignalHandlerScope::~SignalHandlerScope() {
  --t_signal_depth;
}

void context_violation(const char* what, const CodePlace& where) noexcept {
  // The line in decimal, by hand: no formatting function is async-signal-safe.
  char line[12];
  char* digit = line + sizeof line;
  *--digit = '\0';
  unsigned n = where.line;
  do {
    *--digit = static_cast<char>('0' + n % 10);
    n /= 10;
  } while (n != 0 && digit > line);
  write_all("repatch: ");
  write_all(what);
  write_all(" at ");
  write_all(where.file);
  write_all(":");
  write_all(digit);
  write_all(" (");
  write_all(where.function);
  write_all(")\n");
  std::abort();
}

}  // namespace repatch::base
