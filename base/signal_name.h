// Signal numbers as text for error messages and reports. The real-time signals have no fixed
// numbers (glibc keeps the first few for itself and moves SIGRTMIN past them), so a number alone
// does not tell a person which signal a program should leave alone, nor does a name alone tell
// them what to pass to kill(1): both are given.
#ifndef REPATCH_BASE_SIGNAL_NAME_H_
#define REPATCH_BASE_SIGNAL_NAME_H_

#include <string>

namespace repatch::text {

/// "SIGTRAP (5)", "SIGRTMIN (34)", "SIGRTMIN+3 (37)", "SIGRTMAX (64)"; "signal 99" for a number
/// that is no signal. Allocates: not for signal handlers.
std::string signal_name(int sig);

/// The range the real-time signals take in this process: "SIGRTMIN (34) to SIGRTMAX (64)".
std::string realtime_signal_range();

}  // namespace repatch::text

#endif  // REPATCH_BASE_SIGNAL_NAME_H_
