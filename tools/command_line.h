// The one reader of the arguments of every command of tools/: "--name value" and "--name=value"
// alike, flags that refuse a value, -h/--help, and one form for every message.
//
// The project's own rather than CLI11: each command keeps its hand-written --help, which states
// every range and what each value means, and its messages name the option and the rejected text
// in the form "repatch <command>: <option> <what was wanted>"; bad usage is exit status 2.
#ifndef REPATCH_TOOLS_COMMAND_LINE_H_
#define REPATCH_TOOLS_COMMAND_LINE_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace repatch::tools {

/// Takes an option's value: nothing when it was taken, else what the option wants, worded to
/// follow the option's name ("wants a number, got 'x'").
using ValueReader = std::function<std::optional<std::string>(std::string_view value)>;

class CommandLine {
 public:
  /// `command` prefixes every message ("repatch stress"); `usage` is the --help text.
  CommandLine(std::string command, const char* usage)
      : command_(std::move(command)), usage_(usage) {}

  /// "--name" without a value: sets `*set` to true.
  CommandLine& flag(std::string name, bool* set);
  /// "--name VALUE" or "--name=VALUE": hands VALUE to `read`. A repeated option is read again.
  CommandLine& option(std::string name, ValueReader read);

  /// Reads the arguments after the command's name. Returns nothing to go on, or the exit status
  /// to stop with: 0 after -h or --help (the usage went to stdout), 2 after bad usage (the reason
  /// went to stderr).
  std::optional<int> parse(int argc, char** argv) const;

  /// Prints "<command>: <message>" to stderr and returns 2, the exit status of bad usage: for the
  /// checks that look at several options once parse() has read them all.
  int usage_error(const std::string& message) const;

 private:
  struct Option {
    std::string name;
    bool takes_value;
    ValueReader read;
  };
  const Option* find(std::string_view name) const;

  std::string command_;
  const char* usage_;
  std::vector<Option> options_;
};

/// "'text'", cut and with non-printable bytes replaced (trigger/text_fields.h excerpt()), for
/// messages that quote what a person typed.
std::string quoted(std::string_view text);

// Readers for the kinds of value the commands take.

/// A finite decimal number ("12", "0.5", "1e3").
ValueReader number_into(double* out);
/// A whole decimal number >= 0.
ValueReader whole_into(std::uint64_t* out);
/// A whole decimal number from 0 to 1000000000 (the command checks its own range later).
ValueReader count_into(int* out);
/// Seconds as a decimal number, 0 to 1e9, rounded to milliseconds.
ValueReader seconds_into(std::chrono::milliseconds* out);
/// The comma-separated names, empty ones dropped ("a,,b" is a and b).
std::vector<std::string> comma_list(std::string_view text);

/// One of a fixed set of words, each with the value it stands for.
template <typename T>
ValueReader choice_into(T* out, std::initializer_list<std::pair<const char*, T>> choices) {
  std::vector<std::pair<std::string, T>> known(choices.begin(), choices.end());
  return [out, known = std::move(known)](std::string_view value) -> std::optional<std::string> {
    std::string names;
    for (const auto& [name, meaning] : known) {
      if (value == name) {
        *out = meaning;
        return std::nullopt;
      }
      names += (names.empty() ? "" : ", ") + name;
    }
    return "is one of " + names + ", not " + quoted(value);
  };
}

}  // namespace repatch::tools

#endif  // REPATCH_TOOLS_COMMAND_LINE_H_
