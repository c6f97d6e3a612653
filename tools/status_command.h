// `repatch status`: boot the demo guest and show every group and site.
#ifndef REPATCH_TOOLS_STATUS_COMMAND_H_
#define REPATCH_TOOLS_STATUS_COMMAND_H_

namespace repatch::tools {

/// Runs `repatch status` with the arguments after "status". Returns the exit status.
int status_command(int argc, char** argv);

/// The help text of `repatch status`.
const char* status_usage();

}  // namespace repatch::tools

#endif  // REPATCH_TOOLS_STATUS_COMMAND_H_
