#include "base/signal_name.h"

#include <signal.h>
#include <string.h>

namespace repatch::text {

std::string signal_name(int sig) {
  const std::string number = " (" + std::to_string(sig) + ")";
  if (sig >= SIGRTMIN && sig <= SIGRTMAX) {
    // Named from whichever end is nearer, as kill -l does, so that SIGRTMAX-1 reads as such.
    if (sig == SIGRTMIN) return "SIGRTMIN" + number;
    if (sig == SIGRTMAX) return "SIGRTMAX" + number;
    if (sig - SIGRTMIN <= SIGRTMAX - sig) {
      return "SIGRTMIN+" + std::to_string(sig - SIGRTMIN) + number;
    }
    return "SIGRTMAX-" + std::to_string(SIGRTMAX - sig) + number;
  }
  // sigabbrev_np (glibc 2.32) reads a constant table; it returns null for a number with no name
  // (the real-time ones included).
  if (const char* abbrev = sigabbrev_np(sig)) return std::string("SIG") + abbrev + number;
  return "signal " + std::to_string(sig);
}

std::string realtime_signal_range() {
  return signal_name(SIGRTMIN) + " to " + signal_name(SIGRTMAX);
}

}  // namespace repatch::text
