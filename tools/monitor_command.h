// `repatch monitor`: the real hint sources of this machine and what the policy would decide.
#ifndef REPATCH_TOOLS_MONITOR_COMMAND_H_
#define REPATCH_TOOLS_MONITOR_COMMAND_H_

namespace repatch::tools {

/// Runs `repatch monitor` with the arguments after "monitor". Returns the exit status.
int monitor_command(int argc, char** argv);

}  // namespace repatch::tools

#endif  // REPATCH_TOOLS_MONITOR_COMMAND_H_
