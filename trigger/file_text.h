// Reading a whole small file (/proc, /sys, a trace) into a string.
#ifndef REPATCH_TRIGGER_FILE_TEXT_H_
#define REPATCH_TRIGGER_FILE_TEXT_H_

#include <cstddef>
#include <optional>
#include <string>

#include "repatch/error.h"

namespace repatch::triggers {

/// The contents of `path`, or std::nullopt when it does not exist (ENOENT, ENOTDIR). Fails with
/// kSystem naming the file and errno's text for any other error, and kInvalidArgument when it is
/// longer than `max_bytes`. /proc files report size 0, so the file is read until its end.
Result<std::optional<std::string>> read_file_text(const std::string& path,
                                                  std::size_t max_bytes = 16u << 20);

}  // namespace repatch::triggers

#endif  // REPATCH_TRIGGER_FILE_TEXT_H_
