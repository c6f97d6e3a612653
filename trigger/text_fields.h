// Splitting and reading the numbers of kernel text files (/proc, /sys) and traces.
//
// Every parser of trigger/ takes a file's contents as a string, so that tests and fuzzers feed it
// anything; these helpers never read past the view and never throw.
#ifndef REPATCH_TRIGGER_TEXT_FIELDS_H_
#define REPATCH_TRIGGER_TEXT_FIELDS_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace repatch::triggers::text {

/// The lines of `text` without their '\n' (a final line without one counts; a trailing '\n' adds
/// no empty line). Line i of the result is line i + 1 for people.
std::vector<std::string_view> lines(std::string_view text);

/// The blank-separated words of `line` (spaces and tabs).
std::vector<std::string_view> words(std::string_view line);

/// `s` without leading and trailing blanks (spaces, tabs, '\r').
std::string_view trim(std::string_view s);

/// A whole unsigned decimal number; nullopt for anything else (sign, blanks, overflow).
std::optional<std::uint64_t> parse_u64(std::string_view s);

/// A whole "0x..." or bare hexadecimal number (either case); nullopt for anything else.
std::optional<std::uint64_t> parse_hex_u64(std::string_view s);

/// A whole finite decimal number ("12", "0.5", "1e3"); nullopt for anything else (nan, inf,
/// blanks).
std::optional<double> parse_double(std::string_view s);

/// `s` shortened to at most 60 characters, with non-printable bytes as '?', for messages.
std::string excerpt(std::string_view s);

}  // namespace repatch::triggers::text

#endif  // REPATCH_TRIGGER_TEXT_FIELDS_H_
