// `repatch stress`: run the guest workload on vCPU threads while groups switch, NMIs arrive and
// the simulated hypervisor preempts, check every invariant, and report.
#ifndef REPATCH_TOOLS_STRESS_COMMAND_H_
#define REPATCH_TOOLS_STRESS_COMMAND_H_

namespace repatch::tools {

/// Runs `repatch stress` with the arguments after "stress". Returns the exit status (it may also
/// end the process itself with status 1 when vCPU threads are stuck and cannot be joined).
int stress_command(int argc, char** argv);

/// The help text of `repatch stress`.
const char* stress_usage();

}  // namespace repatch::tools

#endif  // REPATCH_TOOLS_STRESS_COMMAND_H_
