// The repatch command.
#include <cstdio>
#include <cstring>
#include <string_view>

#include "tools/monitor_command.h"
#include "tools/status_command.h"
#include "tools/stress_command.h"

namespace {

constexpr const char* kUsage =
    "usage: repatch <command> [options]\n"
    "\n"
    "repatch keeps the table of every call site of a guest kernel's hot operations and switches\n"
    "groups of them between implementations while the program runs. This command carries a\n"
    "demo guest and works on it.\n"
    "\n"
    "commands:\n"
    "  status     boot the demo guest and list its groups and sites\n"
    "  stress     run the guest workload while groups switch; check and report\n"
    "  monitor    show this machine's oversubscription hints and what the trigger would do\n"
    "\n"
    "  repatch <command> --help    help for one command\n"
    "  repatch --version           print the version\n";

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fputs(kUsage, stderr);
    return 2;
  }
  const std::string_view command = argv[1];
  if (command == "-h" || command == "--help" || command == "help") {
    std::fputs(kUsage, stdout);
    return 0;
  }
  if (command == "--version") {
    std::printf("repatch %s\n", REPATCH_VERSION);
    return 0;
  }
  if (command == "status") return repatch::tools::status_command(argc - 2, argv + 2);
  if (command == "stress") return repatch::tools::stress_command(argc - 2, argv + 2);
  if (command == "monitor") return repatch::tools::monitor_command(argc - 2, argv + 2);
  std::fprintf(stderr, "repatch: unknown command '%s'\n\n%s", argv[1], kUsage);
  return 2;
}
