// errno values as text for error messages. strerror() may fill a static buffer shared by all
// threads and is not async-signal-safe, and the GNU and POSIX strerror_r differ; these helpers read
// glibc's constant tables instead, so the same words appear in every message, whichever thread or
// context built it.
#ifndef REPATCH_BASE_ERRNO_TEXT_H_
#define REPATCH_BASE_ERRNO_TEXT_H_

#include <string>

namespace repatch::text {

/// errno's symbolic name, "ENOMEM"; "an unknown errno" for a value with none. Async-signal-safe:
/// returns a pointer to a constant string, allocates nothing.
const char* errno_name(int err) noexcept;

/// errno's untranslated description, "Cannot allocate memory"; "Unknown error" for a value with
/// none. Async-signal-safe like errno_name().
const char* errno_description(int err) noexcept;

/// "Cannot allocate memory (ENOMEM)", or "Unknown error (errno 4321)": the description a person
/// reads and the name they can search for. Allocates: not for signal handlers or a stopped machine.
std::string errno_text(int err);

}  // namespace repatch::text

#endif  // REPATCH_BASE_ERRNO_TEXT_H_
