// The microcode revision as the kernel reports it: /proc/cpuinfo "microcode" lines and
// /sys/devices/system/cpu/cpuN/microcode/version.
#ifndef REPATCH_TRIGGER_MICROCODE_TEXT_H_
#define REPATCH_TRIGGER_MICROCODE_TEXT_H_

#include <string>
#include <string_view>
#include <vector>

#include "repatch/error.h"

namespace repatch::triggers {

/// The revision of each "processor" block of /proc/cpuinfo, in file order, as "0x<hex>"
/// (lower case, no leading zeros). Empty when no block has a "microcode" line (many VMs, other
/// architectures). Fails with kInvalidArgument, naming the line, when a microcode value is not a
/// hexadecimal number, a block has two, or some blocks have one and others do not.
Result<std::vector<std::string>> parse_cpuinfo_microcode(std::string_view text);

/// The contents of a sysfs microcode/version file ("0xf0\n") as "0x<hex>". Fails with
/// kInvalidArgument when it is not one hexadecimal number.
Result<std::string> parse_microcode_version(std::string_view text);

}  // namespace repatch::triggers

#endif  // REPATCH_TRIGGER_MICROCODE_TEXT_H_
