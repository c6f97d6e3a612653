// A vCPU's alternate signal stack (internal to sync/).
//
// IPI, NMI and #BP handlers run on it (SA_ONSTACK), nested: the kernel keeps pushing frames on the
// alternate stack while the thread is already on it, so one stack holds IPI -> NMI -> SIGTRAP
// frames (a few KiB each with the extended FPU state) plus the handlers' own use. A guard page
// below it turns an overflow into a SIGSEGV at the faulting access instead of silent corruption
// of whatever the mapping below happens to be.
#ifndef REPATCH_SYNC_ALT_STACK_H_
#define REPATCH_SYNC_ALT_STACK_H_

#include <signal.h>

#include <cstddef>

#include "repatch/error.h"

namespace repatch::sync::detail {

/// Usable bytes of every vCPU's alternate stack (the guard page comes on top).
std::size_t alt_stack_size();

class AltStack {
 public:
  /// Maps a stack with a guard page and makes it the calling thread's alternate signal stack,
  /// remembering the one it replaces. Normal context, not on an alternate stack.
  Status install();
  /// Disables it (SS_DISABLE), puts back the stack it replaced, if any, and unmaps it. Must run
  /// on the thread that installed it, outside any handler running on it. Idempotent.
  void release();

  bool installed() const { return mapping_ != nullptr; }

 private:
  void* mapping_ = nullptr;  // guard page + stack
  std::size_t mapping_size_ = 0;
  stack_t previous_{};
};

}  // namespace repatch::sync::detail

#endif  // REPATCH_SYNC_ALT_STACK_H_
