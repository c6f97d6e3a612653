// The hint trace: readings as text, one per line, for recording a host and replaying it
// (docs/hint-trace.md describes the format for people).
#ifndef REPATCH_TRIGGER_HINT_TRACE_H_
#define REPATCH_TRIGGER_HINT_TRACE_H_

#include <string_view>
#include <vector>

#include "repatch/error.h"
#include "repatch/triggers.h"

namespace repatch::triggers {

/// Inputs larger than this are refused (a day at one reading per second is about 6 MB).
inline constexpr std::size_t kMaxTraceBytes = 64u << 20;

/// Parses a whole trace. Fails with kInvalidArgument naming the first bad line ("line 7: ...")
/// and what is wrong: a time that is not a number of milliseconds or goes backwards, a field
/// without '=', an unknown or repeated key, a value out of range; or the whole input when it is
/// larger than kMaxTraceBytes or holds a NUL byte (a binary file).
Result<std::vector<HintReading>> parse_hint_trace(std::string_view text);

}  // namespace repatch::triggers

#endif  // REPATCH_TRIGGER_HINT_TRACE_H_
