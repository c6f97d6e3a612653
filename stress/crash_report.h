// "No crash": a crash ends the run, and the process says where before it dies.
//
// The handlers of SIGSEGV, SIGBUS, SIGILL and SIGFPE write one line to stderr (the signal, the
// faulting thread, its vCPU if any, RIP and the fault address), then raise the signal again with
// the default action restored, so that the process dies of it as it would have (exit status
// 128 + signal in a shell, a core dump where enabled).
#ifndef REPATCH_STRESS_CRASH_REPORT_H_
#define REPATCH_STRESS_CRASH_REPORT_H_

#include "repatch/error.h"

namespace repatch::stress {

/// Installs the handlers (on the alternate signal stack where the thread has one). Normal
/// context, once. Fails with kSystem when sigaction fails.
Status install_crash_report();

}  // namespace repatch::stress

#endif  // REPATCH_STRESS_CRASH_REPORT_H_
